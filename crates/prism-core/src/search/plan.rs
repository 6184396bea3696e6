//! The one search plan: which lists every shard computes in the query phase, how many hits
//! each holds, and how the coordinator combines them into the page. A search of one shard and
//! a federated search of many run the same plan; only the shard count differs. Pure.

use serde::{Deserialize, Serialize};

use crate::fusion::HybridStrategy;
use crate::search::SearchRequest;

/// The largest vector over-fetch a plan asks of a shard: `shard_oversample` is clamped to it,
/// and shards refuse larger windows.
pub const MAX_OVERSAMPLE: f32 = 16.0;

/// How the shards' lists combine.
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

/// How many hits each list of a shard's query phase holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardWindows {
    /// Text hits the shard's collector skips. Only a lone shard skips: across shards the
    /// offset is global, so the merge applies it.
    pub text_offset: usize,
    /// Text hits returned after the skipped ones; 0 when the request has no text list.
    pub text_limit: usize,
    /// Vector hits returned; 0 when the request has no vector.
    pub vector_k: usize,
}

/// What a search asks of every shard, and how the answers become the page.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub ranking: Ranking,
    pub windows: ShardWindows,
    /// Hits of the merged (or fused) list skipped before the page.
    pub merge_offset: usize,
    /// The page size.
    pub limit: usize,
}

/// Whether a request has a text query; an empty or blank one searches nothing.
pub fn has_text_query(request: &SearchRequest) -> bool {
    request
        .query
        .as_deref()
        .is_some_and(|q| !q.trim().is_empty())
}

impl SearchPlan {
    /// The plan of `request` over `shards` shards. Vector lists over-fetch by `oversample`
    /// (between 1 and [`MAX_OVERSAMPLE`]) when there is more than one shard, because each shard's approximate
    /// top-k is less exact than one index's.
    pub fn new(request: &SearchRequest, shards: usize, oversample: f32) -> SearchPlan {
        let window = request.offset + request.limit;
        let ranking = match (has_text_query(request), request.vector.is_some()) {
            (_, false) => Ranking::Text,
            (false, true) => Ranking::Vector,
            (true, true) => Ranking::Hybrid {
                strategy: request.hybrid.clone().unwrap_or_default(),
                rank_window: request.rank_window(),
            },
        };
        let over = |k: usize| -> usize {
            if shards <= 1 {
                k
            } else {
                ((k as f64) * f64::from(oversample.clamp(1.0, MAX_OVERSAMPLE))).ceil() as usize
            }
        };
        let (windows, merge_offset) = match &ranking {
            Ranking::Text if shards <= 1 => (
                ShardWindows {
                    text_offset: request.offset,
                    text_limit: request.limit,
                    vector_k: 0,
                },
                0,
            ),
            Ranking::Text => (
                ShardWindows {
                    text_offset: 0,
                    text_limit: window,
                    vector_k: 0,
                },
                request.offset,
            ),
            Ranking::Vector => (
                ShardWindows {
                    text_offset: 0,
                    text_limit: 0,
                    vector_k: over(window),
                },
                request.offset,
            ),
            Ranking::Hybrid { rank_window, .. } => (
                ShardWindows {
                    text_offset: 0,
                    text_limit: *rank_window,
                    vector_k: over(*rank_window),
                },
                request.offset,
            ),
        };
        SearchPlan {
            ranking,
            windows,
            merge_offset,
            limit: request.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::VectorQuery;

    fn request(query: Option<&str>, vector: bool, offset: usize, limit: usize) -> SearchRequest {
        SearchRequest {
            query: query.map(String::from),
            vector: vector.then(|| VectorQuery::Values(vec![1.0, 0.0])),
            offset,
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn one_shard_text_skips_the_offset_in_its_collector() {
        let plan = SearchPlan::new(&request(Some("a"), false, 20, 10), 1, 3.0);
        assert_eq!(plan.ranking, Ranking::Text);
        let want = ShardWindows {
            text_offset: 20,
            text_limit: 10,
            vector_k: 0,
        };
        assert_eq!((plan.windows, plan.merge_offset, plan.limit), (want, 0, 10));
    }

    #[test]
    fn many_shards_return_their_best_window_and_the_merge_applies_the_offset() {
        let plan = SearchPlan::new(&request(Some("a"), false, 20, 10), 3, 3.0);
        let want = ShardWindows {
            text_offset: 0,
            text_limit: 30,
            vector_k: 0,
        };
        assert_eq!((plan.windows, plan.merge_offset), (want, 20));
        // A blank query is a match-all, still a text-ranked list.
        let blank = SearchPlan::new(&request(Some("  "), false, 0, 5), 3, 3.0);
        assert_eq!(blank.ranking, Ranking::Text);
        assert_eq!(blank.windows.text_limit, 5);
    }

    #[test]
    fn vector_lists_over_fetch_only_across_shards() {
        let one = SearchPlan::new(&request(None, true, 5, 10), 1, 2.5);
        assert_eq!(one.ranking, Ranking::Vector);
        assert_eq!((one.windows.vector_k, one.merge_offset), (15, 5));
        let three = SearchPlan::new(&request(Some(""), true, 5, 10), 3, 2.5);
        assert_eq!(three.ranking, Ranking::Vector);
        assert_eq!((three.windows.vector_k, three.windows.text_limit), (38, 0));
        // An oversample below 1 never under-fetches.
        let under = SearchPlan::new(&request(None, true, 0, 10), 3, 0.2);
        assert_eq!(under.windows.vector_k, 10);
    }

    #[test]
    fn hybrid_takes_the_rank_window_from_both_lists() {
        let mut r = request(Some("a"), true, 0, 10);
        let plan = SearchPlan::new(&r, 1, 3.0);
        assert_eq!(
            plan.ranking,
            Ranking::Hybrid {
                strategy: HybridStrategy::default(),
                rank_window: 100
            }
        );
        assert_eq!((plan.windows.text_limit, plan.windows.vector_k), (100, 100));
        r.rank_window_size = Some(20);
        r.offset = 30;
        let plan = SearchPlan::new(&r, 2, 1.5);
        // The window is at least offset + limit, and the vector side over-fetches.
        assert_eq!((plan.windows.text_limit, plan.windows.vector_k), (40, 60));
        assert_eq!(plan.merge_offset, 30);
    }
}
