//! Merging the answers of many shards into one: hits by score across shards with the
//! request's offset applied globally, totals summed, and the shard status that decides
//! between a partial answer and an error. Pure.

use prism_core::search::Hit;
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

/// Merges shard hit lists, each sorted best first and holding that shard's top
/// `offset + limit`, into the global page: by score descending; ties break on the shard's
/// position in the list, then on the hit's rank within its shard. Each shard's own order is
/// the same for any window, so consecutive pages never overlap or skip tied hits.
pub fn merge_hits(shards: Vec<Vec<Hit>>, offset: usize, limit: usize) -> Vec<Hit> {
    let mut all: Vec<(usize, usize, Hit)> = shards
        .into_iter()
        .enumerate()
        .flat_map(|(shard, hits)| {
            hits.into_iter()
                .enumerate()
                .map(move |(rank, hit)| (shard, rank, hit))
        })
        .collect();
    all.sort_by(|a, b| {
        b.2.score
            .total_cmp(&a.2.score)
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    all.into_iter()
        .skip(offset)
        .take(limit)
        .map(|(_, _, hit)| hit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32) -> Hit {
        Hit {
            id: id.into(),
            score,
            fields: Default::default(),
            highlights: None,
        }
    }

    fn ids(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn offset_applies_to_the_merged_list_not_per_shard() {
        // Each shard sent its top offset + limit = 3.
        let a = vec![hit("a1", 9.0), hit("a2", 5.0), hit("a3", 1.0)];
        let b = vec![hit("b1", 8.0), hit("b2", 7.0), hit("b3", 6.0)];
        assert_eq!(
            ids(&merge_hits(vec![a.clone(), b.clone()], 0, 3)),
            vec!["a1", "b1", "b2"]
        );
        assert_eq!(ids(&merge_hits(vec![a, b], 2, 1)), vec!["b2"]);
    }

    #[test]
    fn ties_break_on_shard_then_rank_so_pages_never_overlap() {
        let a = vec![hit("a-x", 1.0), hit("a-b", 1.0), hit("a-c", 1.0)];
        let b = vec![hit("b-a", 1.0), hit("b-z", 1.0), hit("b-y", 1.0)];
        let merged = merge_hits(vec![a.clone(), b.clone()], 0, 6);
        assert_eq!(ids(&merged), vec!["a-x", "a-b", "a-c", "b-a", "b-z", "b-y"]);
        // Page 1 from each shard's top 2, page 2 from each shard's top 4: no overlap, no gap.
        let page1 = merge_hits(vec![a[..2].to_vec(), b[..2].to_vec()], 0, 2);
        let page2 = merge_hits(vec![a.clone(), b.clone()], 2, 2);
        assert_eq!(ids(&page1), vec!["a-x", "a-b"]);
        assert_eq!(ids(&page2), vec!["a-c", "b-a"]);
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
