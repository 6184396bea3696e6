//! The coordinator's cache of collection-wide BM25 statistics. An entry remembers which
//! searcher generation each shard had when its statistics were gathered; a shard that answers
//! from another generation (it refreshed or reopened) makes the entry stale, so cached
//! statistics never silently drift from what one index would score with.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use prism_core::search::SearchRequest;
use prism_core::stats::TermStatistics;

/// Statistics summed over the shards that answered, and their searcher generations by shard
/// copy: (shard, member address), since one node may hold several shards of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedStats {
    pub stats: TermStatistics,
    pub generations: BTreeMap<(u32, String), String>,
}

impl CachedStats {
    /// Whether these statistics still describe every shard copy that answered, given as
    /// ((shard, member), generation). Copies that did not answer are not held against the
    /// entry: a dead node must not force every query to gather statistics twice.
    pub fn describes<'a>(
        &self,
        answered: impl IntoIterator<Item = ((u32, &'a str), &'a str)>,
    ) -> bool {
        answered.into_iter().all(|((shard, member), generation)| {
            self.generations
                .get(&(shard, member.to_string()))
                .map(String::as_str)
                == Some(generation)
        })
    }
}

/// A bounded, least-recently-used map from (collection, query terms) to statistics.
pub struct StatsCache {
    entries: Option<Mutex<LruCache<String, CachedStats>>>,
}

impl StatsCache {
    /// A cache of `capacity` entries; 0 disables caching.
    pub fn new(capacity: usize) -> StatsCache {
        StatsCache {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// The key of a request's statistics: they depend only on the collection, the query text
    /// and the fields it searches.
    pub fn key(collection: &str, request: &SearchRequest) -> String {
        format!(
            "{collection}\u{0}{}\u{0}{:?}",
            request.query.as_deref().unwrap_or_default(),
            request.fields
        )
    }

    pub fn get(&self, key: &str) -> Option<CachedStats> {
        self.entries.as_ref()?.lock().get(key).cloned()
    }

    pub fn put(&self, key: String, entry: CachedStats) {
        if let Some(entries) = &self.entries {
            entries.lock().put(key, entry);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Some(entries) = &self.entries {
            entries.lock().pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generations: &[((u32, &str), &str)]) -> CachedStats {
        CachedStats {
            stats: TermStatistics {
                total_docs: 7,
                ..Default::default()
            },
            generations: generations
                .iter()
                .map(|((s, m), g)| ((*s, m.to_string()), g.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_entry_is_stale_once_any_answering_shard_changed_generation() {
        let e = entry(&[((0, "a"), "1"), ((1, "b"), "5")]);
        assert!(e.describes([((0, "a"), "1"), ((1, "b"), "5")]));
        assert!(
            !e.describes([((0, "a"), "1"), ((1, "b"), "6")]),
            "b refreshed"
        );
        assert!(!e.describes([((0, "a"), "1"), ((2, "c"), "1")]), "c joined");
        // b did not answer (dead or slow): what answered is still described.
        assert!(e.describes([((0, "a"), "1")]));
    }

    #[test]
    fn two_shards_on_one_node_are_told_apart() {
        let e = entry(&[((0, "a"), "1"), ((1, "a"), "9")]);
        assert!(e.describes([((0, "a"), "1"), ((1, "a"), "9")]));
        assert!(
            !e.describes([((0, "a"), "1"), ((1, "a"), "10")]),
            "shard 1 on node a refreshed while shard 0 did not"
        );
        assert!(
            !e.describes([((1, "a"), "1")]),
            "shard 0's generation is not shard 1's"
        );
    }

    #[test]
    fn keys_separate_collections_queries_and_fields() {
        let request = |q: &str, fields: Option<Vec<&str>>| SearchRequest {
            query: Some(q.into()),
            fields: fields.map(|f| f.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        let k = StatsCache::key("docs", &request("hello", None));
        assert_eq!(k, StatsCache::key("docs", &request("hello", None)));
        assert_ne!(k, StatsCache::key("other", &request("hello", None)));
        assert_ne!(k, StatsCache::key("docs", &request("hello world", None)));
        assert_ne!(
            k,
            StatsCache::key("docs", &request("hello", Some(vec!["title"])))
        );
    }

    #[test]
    fn capacity_bounds_the_cache_and_zero_disables_it() {
        let cache = StatsCache::new(2);
        cache.put("x".into(), entry(&[((0, "a"), "1")]));
        cache.put("y".into(), entry(&[((0, "a"), "1")]));
        assert!(cache.get("x").is_some()); // x is now the most recent
        cache.put("z".into(), entry(&[((0, "a"), "1")]));
        assert!(
            cache.get("y").is_none(),
            "the least recently used entry went"
        );
        assert!(cache.get("x").is_some() && cache.get("z").is_some());
        cache.remove("x");
        assert!(cache.get("x").is_none());
        let off = StatsCache::new(0);
        off.put("x".into(), entry(&[]));
        assert!(off.get("x").is_none());
    }
}
