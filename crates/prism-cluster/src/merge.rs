//! Merging the answers of many shards into one: hits by score across shards with the
//! request's offset applied globally, totals summed, and the shard status that decides
//! between a partial answer and an error. Pure.

use std::collections::HashMap;

use prism_core::fusion::HybridStrategy;
use prism_core::search::ShardHits;
use serde::{Deserialize, Serialize};

use crate::config::QueryConfig;

/// One shard's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFailure {
    pub shard: u32,
    pub node: String,
    pub reason: String,
}

/// How many shards answered, as the federated response reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub total: u32,
    pub successful: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ShardFailure>,
}

/// What to answer given the shard status and the `[federation.query]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    Partial,
    /// Too few shards answered; the message says why and what to do.
    Fail(String),
}

impl ShardStatus {
    pub fn verdict(&self, config: &QueryConfig) -> Verdict {
        if self.failed == 0 {
            return Verdict::Complete;
        }
        if !config.allow_partial_results {
            return Verdict::Fail(format!(
                "{} of {} shards failed and allow_partial_results is false; retry, or allow partial results",
                self.failed, self.total
            ));
        }
        if self.successful < config.min_successful_shards.max(1) {
            return Verdict::Fail(format!(
                "only {} of {} shards answered; at least {} must (min_successful_shards)",
                self.successful,
                self.total,
                config.min_successful_shards.max(1)
            ));
        }
        Verdict::Partial
    }
}

/// Merges ranked lists from many shards into one, best first: by score descending; ties
/// break on the shard's position, then on the hit's rank within its shard. Each shard's own
/// order is the same for any window, so consecutive pages never overlap or skip tied hits.
/// Returns (shard, id, score).
pub fn merge_ranked<'a>(
    lists: impl IntoIterator<Item = (usize, &'a [(String, f32)])>,
) -> Vec<(usize, String, f32)> {
    let mut all: Vec<(usize, usize, &String, f32)> = lists
        .into_iter()
        .flat_map(|(shard, list)| {
            list.iter()
                .enumerate()
                .map(move |(rank, (id, score))| (shard, rank, id, *score))
        })
        .collect();
    all.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    all.into_iter()
        .map(|(shard, _, id, score)| (shard, id.clone(), score))
        .collect()
}

/// How the shards ranked, hence how their lists combine.
#[derive(Debug, Clone, PartialEq)]
pub enum Ranking {
    /// Text, filter or match-all: one list per shard, by score.
    Text,
    /// Vector only: one list per shard, by similarity.
    Vector,
    /// Both: the merged text and vector lists, each cut to `rank_window`, fused.
    Hybrid {
        strategy: HybridStrategy,
        rank_window: usize,
    },
}

/// One hit of the final page: the shard that holds it and its global score.
#[derive(Debug, Clone, PartialEq)]
pub struct PageHit {
    pub shard: usize,
    pub id: String,
    pub score: f32,
}

/// The global page `[offset, offset + limit)` from the shards' query-phase answers, given as
/// (shard, answer). Fusion runs on the merged lists, so a hybrid query ranks as it would
/// on one index.
pub fn merge_page(
    shards: &[(usize, &ShardHits)],
    ranking: &Ranking,
    offset: usize,
    limit: usize,
) -> Vec<PageHit> {
    let merged = |pick: fn(&ShardHits) -> &[(String, f32)]| {
        merge_ranked(shards.iter().map(|(shard, hits)| (*shard, pick(hits))))
    };
    let ranked: Vec<(usize, String, f32)> = match ranking {
        Ranking::Text => merged(|h| &h.text),
        Ranking::Vector => merged(|h| &h.vector),
        Ranking::Hybrid {
            strategy,
            rank_window,
        } => {
            let mut origin: HashMap<String, usize> = HashMap::new();
            let mut global = |pick: fn(&ShardHits) -> &[(String, f32)]| -> Vec<(String, f32)> {
                merged(pick)
                    .into_iter()
                    .take(*rank_window)
                    .map(|(shard, id, score)| {
                        origin.entry(id.clone()).or_insert(shard);
                        (id, score)
                    })
                    .collect()
            };
            let text = global(|h| &h.text);
            let vector = global(|h| &h.vector);
            strategy
                .fuse(&text, &vector)
                .into_iter()
                .map(|(id, score)| (origin[&id], id, score))
                .collect()
        }
    };
    ranked
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(shard, id, score)| PageHit { shard, id, score })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(&str, f32)]) -> Vec<(String, f32)> {
        items.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    fn text_hits(items: &[(&str, f32)]) -> ShardHits {
        ShardHits {
            text: list(items),
            ..Default::default()
        }
    }

    fn ids(page: &[PageHit]) -> Vec<&str> {
        page.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn offset_applies_to_the_merged_list_not_per_shard() {
        // Each shard sent its top offset + limit = 3.
        let a = text_hits(&[("a1", 9.0), ("a2", 5.0), ("a3", 1.0)]);
        let b = text_hits(&[("b1", 8.0), ("b2", 7.0), ("b3", 6.0)]);
        let shards = [(0, &a), (1, &b)];
        assert_eq!(
            ids(&merge_page(&shards, &Ranking::Text, 0, 3)),
            vec!["a1", "b1", "b2"]
        );
        let page = merge_page(&shards, &Ranking::Text, 2, 1);
        assert_eq!(
            page,
            vec![PageHit {
                shard: 1,
                id: "b2".into(),
                score: 7.0
            }]
        );
    }

    #[test]
    fn ties_break_on_shard_then_rank_so_pages_never_overlap() {
        let a = text_hits(&[("a-x", 1.0), ("a-b", 1.0), ("a-c", 1.0)]);
        let b = text_hits(&[("b-a", 1.0), ("b-z", 1.0), ("b-y", 1.0)]);
        let merged = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 0, 6);
        assert_eq!(ids(&merged), vec!["a-x", "a-b", "a-c", "b-a", "b-z", "b-y"]);
        // Page 1 from each shard's top 2, page 2 from each shard's top 4: no overlap, no gap.
        let a2 = text_hits(&[("a-x", 1.0), ("a-b", 1.0)]);
        let b2 = text_hits(&[("b-a", 1.0), ("b-z", 1.0)]);
        let page1 = merge_page(&[(0, &a2), (1, &b2)], &Ranking::Text, 0, 2);
        let page2 = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 2, 2);
        assert_eq!(ids(&page1), vec!["a-x", "a-b"]);
        assert_eq!(ids(&page2), vec!["a-c", "b-a"]);
    }

    #[test]
    fn hybrid_fuses_the_merged_lists_as_one_index_would() {
        // One index would hold text [t1 9, t2 8, t3 7, t4 6] and vector [v1 .9, t3 .8, v2 .7].
        let a = ShardHits {
            text: list(&[("t1", 9.0), ("t3", 7.0)]),
            vector: list(&[("t3", 0.8)]),
            ..Default::default()
        };
        let b = ShardHits {
            text: list(&[("t2", 8.0), ("t4", 6.0)]),
            vector: list(&[("v1", 0.9), ("v2", 0.7)]),
            ..Default::default()
        };
        let strategy = HybridStrategy::Rrf { rrf_k: 60.0 };
        let one_index = strategy.fuse(
            &list(&[("t1", 9.0), ("t2", 8.0), ("t3", 7.0)]),
            &list(&[("v1", 0.9), ("t3", 0.8), ("v2", 0.7)]),
        );
        let ranking = Ranking::Hybrid {
            strategy,
            rank_window: 3,
        };
        let page = merge_page(&[(0, &a), (1, &b)], &ranking, 0, 10);
        let got: Vec<(String, f32)> = page.iter().map(|h| (h.id.clone(), h.score)).collect();
        assert_eq!(got, one_index);
        // t3 ranks first (in both lists) and is fetched from shard 0, v1 from shard 1.
        assert_eq!((page[0].id.as_str(), page[0].shard), ("t3", 0));
        let v1 = page.iter().find(|h| h.id == "v1").unwrap();
        assert_eq!(v1.shard, 1);
        // rank_window cut t4 from the text list before fusion.
        assert!(page.iter().all(|h| h.id != "t4"));
    }

    #[test]
    fn vector_lists_merge_by_similarity() {
        let a = ShardHits {
            vector: list(&[("a", 0.5), ("c", 0.1)]),
            ..Default::default()
        };
        let b = ShardHits {
            vector: list(&[("b", 0.7)]),
            ..Default::default()
        };
        let page = merge_page(&[(0, &a), (2, &b)], &Ranking::Vector, 0, 2);
        assert_eq!(ids(&page), vec!["b", "a"]);
        assert_eq!(page[0].shard, 2);
    }

    #[test]
    fn verdicts_follow_the_partial_result_settings() {
        let status = |ok: u32, failed: u32| ShardStatus {
            total: ok + failed,
            successful: ok,
            failed,
            failures: Vec::new(),
        };
        let allow = QueryConfig::default();
        assert_eq!(status(3, 0).verdict(&allow), Verdict::Complete);
        assert_eq!(status(2, 1).verdict(&allow), Verdict::Partial);
        assert!(matches!(status(0, 3).verdict(&allow), Verdict::Fail(_)));
        let strict = QueryConfig {
            allow_partial_results: false,
            ..QueryConfig::default()
        };
        assert!(
            matches!(status(2, 1).verdict(&strict), Verdict::Fail(m) if m.contains("allow_partial_results"))
        );
        let two = QueryConfig {
            min_successful_shards: 2,
            ..QueryConfig::default()
        };
        assert!(
            matches!(status(1, 2).verdict(&two), Verdict::Fail(m) if m.contains("min_successful_shards"))
        );
    }
}
