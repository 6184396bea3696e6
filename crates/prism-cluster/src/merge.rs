//! Merging the answers of many shards into one: hits by score across shards with the
//! request's offset applied globally, totals summed, and the shard status that decides
//! between a partial answer and an error. Pure.

use prism_core::fusion::HybridStrategy;
use prism_core::search::{DocRef, ShardHits};
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
/// Returns (shard, document, score).
pub fn merge_ranked<'a>(
    lists: impl IntoIterator<Item = (usize, &'a [(DocRef, f32)])>,
) -> Vec<(usize, DocRef, f32)> {
    let mut all: Vec<(usize, usize, DocRef, f32)> = lists
        .into_iter()
        .flat_map(|(shard, list)| {
            list.iter()
                .enumerate()
                .map(move |(rank, (doc, score))| (shard, rank, *doc, *score))
        })
        .collect();
    all.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    all.into_iter()
        .map(|(shard, _, doc, score)| (shard, doc, score))
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

/// One hit of the final page: the shard that holds it, the document in that shard's
/// query-phase searcher, and its global score.
#[derive(Debug, Clone, PartialEq)]
pub struct PageHit {
    pub shard: usize,
    pub doc: DocRef,
    pub score: f32,
}

/// The global page `[offset, offset + limit)` from the shards' query-phase answers, given as
/// (shard, answer). Fusion runs on the merged lists, so a hybrid query ranks as it would
/// on one index; a document is keyed by (shard, reference), as it lives in one shard.
pub fn merge_page(
    shards: &[(usize, &ShardHits)],
    ranking: &Ranking,
    offset: usize,
    limit: usize,
) -> Vec<PageHit> {
    let merged = |pick: fn(&ShardHits) -> &[(DocRef, f32)]| {
        merge_ranked(shards.iter().map(|(shard, hits)| (*shard, pick(hits))))
    };
    let ranked: Vec<(usize, DocRef, f32)> = match ranking {
        Ranking::Text => merged(|h| &h.text),
        Ranking::Vector => merged(|h| &h.vector),
        Ranking::Hybrid {
            strategy,
            rank_window,
        } => {
            let global = |pick: fn(&ShardHits) -> &[(DocRef, f32)]| -> Vec<((usize, DocRef), f32)> {
                merged(pick)
                    .into_iter()
                    .take(*rank_window)
                    .map(|(shard, doc, score)| ((shard, doc), score))
                    .collect()
            };
            strategy
                .fuse(&global(|h| &h.text), &global(|h| &h.vector))
                .into_iter()
                .map(|((shard, doc), score)| (shard, doc, score))
                .collect()
        }
    };
    ranked
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(shard, doc, score)| PageHit { shard, doc, score })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[(DocRef, f32)]) -> Vec<(DocRef, f32)> {
        items.to_vec()
    }

    fn text_hits(items: &[(DocRef, f32)]) -> ShardHits {
        ShardHits {
            text: list(items),
            ..Default::default()
        }
    }

    fn docs(page: &[PageHit]) -> Vec<(usize, DocRef)> {
        page.iter().map(|h| (h.shard, h.doc)).collect()
    }

    #[test]
    fn offset_applies_to_the_merged_list_not_per_shard() {
        // Each shard sent its top offset + limit = 3.
        let a = text_hits(&[(1, 9.0), (2, 5.0), (3, 1.0)]);
        let b = text_hits(&[(1, 8.0), (2, 7.0), (3, 6.0)]);
        let shards = [(0, &a), (1, &b)];
        assert_eq!(
            docs(&merge_page(&shards, &Ranking::Text, 0, 3)),
            vec![(0, 1), (1, 1), (1, 2)]
        );
        let page = merge_page(&shards, &Ranking::Text, 2, 1);
        assert_eq!(
            page,
            vec![PageHit {
                shard: 1,
                doc: 2,
                score: 7.0
            }]
        );
    }

    #[test]
    fn ties_break_on_shard_then_rank_so_pages_never_overlap() {
        let a = text_hits(&[(30, 1.0), (10, 1.0), (20, 1.0)]);
        let b = text_hits(&[(5, 1.0), (50, 1.0), (40, 1.0)]);
        let merged = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 0, 6);
        assert_eq!(
            docs(&merged),
            vec![(0, 30), (0, 10), (0, 20), (1, 5), (1, 50), (1, 40)]
        );
        // Page 1 from each shard's top 2, page 2 from each shard's top 4: no overlap, no gap.
        let a2 = text_hits(&[(30, 1.0), (10, 1.0)]);
        let b2 = text_hits(&[(5, 1.0), (50, 1.0)]);
        let page1 = merge_page(&[(0, &a2), (1, &b2)], &Ranking::Text, 0, 2);
        let page2 = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 2, 2);
        assert_eq!(docs(&page1), vec![(0, 30), (0, 10)]);
        assert_eq!(docs(&page2), vec![(0, 20), (1, 5)]);
    }

    #[test]
    fn hybrid_fuses_the_merged_lists_as_one_index_would() {
        // Shard 0 holds t1 (doc 1) and t3 (doc 3); shard 1 holds t2 (2), t4 (4), v1 (7), v2 (8).
        // One index would hold text [t1 9, t2 8, t3 7, t4 6] and vector [v1 .9, t3 .8, v2 .7].
        let a = ShardHits {
            text: list(&[(1, 9.0), (3, 7.0)]),
            vector: list(&[(3, 0.8)]),
            ..Default::default()
        };
        let b = ShardHits {
            text: list(&[(2, 8.0), (4, 6.0)]),
            vector: list(&[(7, 0.9), (8, 0.7)]),
            ..Default::default()
        };
        let strategy = HybridStrategy::Rrf { rrf_k: 60.0 };
        let one_index = strategy.fuse(
            &[("t1", 9.0), ("t2", 8.0), ("t3", 7.0)],
            &[("v1", 0.9), ("t3", 0.8), ("v2", 0.7)],
        );
        let name = |shard: usize, doc: DocRef| -> &'static str {
            match (shard, doc) {
                (0, 1) => "t1",
                (0, 3) => "t3",
                (1, 2) => "t2",
                (1, 4) => "t4",
                (1, 7) => "v1",
                (1, 8) => "v2",
                other => panic!("unknown document {other:?}"),
            }
        };
        let ranking = Ranking::Hybrid {
            strategy,
            rank_window: 3,
        };
        let page = merge_page(&[(0, &a), (1, &b)], &ranking, 0, 10);
        let got: Vec<(&str, f32)> = page
            .iter()
            .map(|h| (name(h.shard, h.doc), h.score))
            .collect();
        // Same documents, same fused scores (ties may order differently: ids vs references).
        fn sorted(mut v: Vec<(&'static str, f32)>) -> Vec<(&'static str, f32)> {
            v.sort_by(|x, y| x.0.cmp(y.0));
            v
        }
        assert_eq!(sorted(got.clone()), sorted(one_index.clone()));
        assert_eq!(got[0], one_index[0]);
        assert_eq!(got[0].0, "t3", "in both lists, so first");
        // rank_window cut t4 from the text list before fusion.
        assert!(got.iter().all(|h| h.0 != "t4"));
    }

    #[test]
    fn vector_lists_merge_by_similarity() {
        let a = ShardHits {
            vector: list(&[(1, 0.5), (2, 0.1)]),
            ..Default::default()
        };
        let b = ShardHits {
            vector: list(&[(1, 0.7)]),
            ..Default::default()
        };
        let page = merge_page(&[(0, &a), (2, &b)], &Ranking::Vector, 0, 2);
        assert_eq!(docs(&page), vec![(2, 1), (0, 1)]);
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
