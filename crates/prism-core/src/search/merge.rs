//! Merging the query-phase answers of shards into one page: hits by score across shards with
//! the request's offset applied globally, and hybrid fusion of the merged lists. A search of
//! one shard merges its one answer the same way. Pure.

use crate::rank::{best_first, TieBreak};
use crate::search::plan::Ranking;
use crate::search::{DocRef, RankedDoc, ShardHits};

/// Merges ranked lists from many shards into one, best first, in the order every list of
/// Prism follows (`crate::rank`): by score descending, then by the hash of the document
/// id ascending. That order does not depend on how the collection is sharded, so the merge
/// returns what one index would; and since each shard sends its best `offset + limit` in the
/// same order, consecutive pages never overlap or skip tied hits. Shard position and rank
/// within the shard only order two ids whose hashes collide. Returns (shard, hit).
pub fn merge_ranked<'a>(
    lists: impl IntoIterator<Item = (usize, &'a [RankedDoc])>,
) -> Vec<(usize, RankedDoc)> {
    let mut all: Vec<(usize, usize, RankedDoc)> = lists
        .into_iter()
        .flat_map(|(shard, list)| {
            list.iter()
                .enumerate()
                .map(move |(rank, hit)| (shard, rank, *hit))
        })
        .collect();
    all.sort_by(|a, b| {
        best_first((a.2.score, a.2.id_hash), (b.2.score, b.2.id_hash))
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    all.into_iter()
        .map(|(shard, _, hit)| (shard, hit))
        .collect()
}

/// A document of a hybrid fusion across shards: where it lives, and its id hash for ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Located {
    shard: usize,
    doc: DocRef,
    id_hash: u64,
}

impl TieBreak for Located {
    fn id_hash(&self) -> u64 {
        self.id_hash
    }
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
    let merged = |pick: fn(&ShardHits) -> &[RankedDoc]| {
        merge_ranked(shards.iter().map(|(shard, hits)| (*shard, pick(hits))))
    };
    let flatten = |list: Vec<(usize, RankedDoc)>| -> Vec<(usize, DocRef, f32)> {
        list.into_iter()
            .map(|(shard, hit)| (shard, hit.doc, hit.score))
            .collect()
    };
    let ranked: Vec<(usize, DocRef, f32)> = match ranking {
        Ranking::Text => flatten(merged(|h| &h.text)),
        Ranking::Vector => flatten(merged(|h| &h.vector)),
        Ranking::Hybrid {
            strategy,
            rank_window,
        } => {
            let global = |pick: fn(&ShardHits) -> &[RankedDoc]| -> Vec<(Located, f32)> {
                merged(pick)
                    .into_iter()
                    .take(*rank_window)
                    .map(|(shard, hit)| {
                        let key = Located {
                            shard,
                            doc: hit.doc,
                            id_hash: hit.id_hash,
                        };
                        (key, hit.score)
                    })
                    .collect()
            };
            strategy
                .fuse(&global(|h| &h.text), &global(|h| &h.vector))
                .into_iter()
                .map(|(key, score)| (key.shard, key.doc, score))
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
    use crate::fusion::HybridStrategy;
    use crate::rank::id_hash;
    use crate::routing::shard_for;

    use super::*;

    /// A hit whose id hash is given directly, to pin tie orders in small examples.
    fn hit(doc: DocRef, score: f32, id_hash: u64) -> RankedDoc {
        RankedDoc {
            doc,
            score,
            id_hash,
        }
    }

    fn text_hits(items: &[RankedDoc]) -> ShardHits {
        let mut text = items.to_vec();
        text.sort_by(|a, b| best_first((a.score, a.id_hash), (b.score, b.id_hash)));
        ShardHits {
            text,
            ..Default::default()
        }
    }

    fn docs(page: &[PageHit]) -> Vec<(usize, DocRef)> {
        page.iter().map(|h| (h.shard, h.doc)).collect()
    }

    #[test]
    fn offset_applies_to_the_merged_list_not_per_shard() {
        // Each shard sent its top offset + limit = 3.
        let a = text_hits(&[hit(1, 9.0, 1), hit(2, 5.0, 2), hit(3, 1.0, 3)]);
        let b = text_hits(&[hit(1, 8.0, 4), hit(2, 7.0, 5), hit(3, 6.0, 6)]);
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
    fn ties_break_on_id_hash_across_shards_not_on_shard_order() {
        // Equal scores; the id hashes interleave the two shards.
        let a = text_hits(&[hit(30, 1.0, 60), hit(10, 1.0, 20), hit(20, 1.0, 40)]);
        let b = text_hits(&[hit(5, 1.0, 10), hit(50, 1.0, 50), hit(40, 1.0, 30)]);
        let merged = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 0, 6);
        assert_eq!(
            docs(&merged),
            vec![(1, 5), (0, 10), (1, 40), (0, 20), (1, 50), (0, 30)]
        );
        // The same hits listed in the other shard order merge the same way.
        let swapped = merge_page(&[(0, &b), (1, &a)], &Ranking::Text, 0, 6);
        let by_doc = |p: &[PageHit]| p.iter().map(|h| h.doc).collect::<Vec<_>>();
        assert_eq!(by_doc(&swapped), by_doc(&merged));
        // A higher score still wins over a smaller hash.
        let c = text_hits(&[hit(7, 2.0, u64::MAX)]);
        let top = merge_page(&[(0, &a), (1, &b), (2, &c)], &Ranking::Text, 0, 2);
        assert_eq!(docs(&top), vec![(2, 7), (1, 5)]);
    }

    #[test]
    fn ties_straddling_the_page_boundary_are_decided_by_id_hash() {
        // Score 5 is tied across the cut of a top 3: hashes 2 and 3 make it, 8 and 9 do not,
        // wherever they live.
        let a = text_hits(&[hit(1, 9.0, 50), hit(2, 5.0, 9), hit(3, 5.0, 3)]);
        let b = text_hits(&[hit(1, 5.0, 8), hit(2, 5.0, 2), hit(3, 1.0, 1)]);
        let page = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 0, 3);
        assert_eq!(docs(&page), vec![(0, 1), (1, 2), (0, 3)]);
        let next = merge_page(&[(0, &a), (1, &b)], &Ranking::Text, 3, 2);
        assert_eq!(docs(&next), vec![(1, 1), (0, 2)]);
    }

    /// The shards' answers for a window: each shard's best `window` of `corpus`, in rank order.
    fn shard_answers(corpus: &[(String, f32)], shards: u32, window: usize) -> Vec<ShardHits> {
        (0..shards)
            .map(|s| {
                let mine: Vec<RankedDoc> = corpus
                    .iter()
                    .enumerate()
                    .filter(|(_, (id, _))| shard_for(id, shards) == s)
                    .map(|(i, (id, score))| hit(i as DocRef, *score, id_hash(id)))
                    .collect();
                let mut hits = text_hits(&mine);
                hits.text.truncate(window);
                hits
            })
            .collect()
    }

    #[test]
    fn sharded_pages_equal_one_index_pages_under_heavy_ties() {
        // 200 documents with only four distinct scores, as one index ranks them.
        let corpus: Vec<(String, f32)> = (0..200)
            .map(|i| {
                let id = format!("doc-{i}");
                let score = (id_hash(&id) % 4) as f32;
                (id, score)
            })
            .collect();
        let mut one_index: Vec<usize> = (0..corpus.len()).collect();
        one_index.sort_by(|&a, &b| {
            best_first(
                (corpus[a].1, id_hash(&corpus[a].0)),
                (corpus[b].1, id_hash(&corpus[b].0)),
            )
        });
        for shards in [1, 2, 3, 5] {
            for limit in [1, 7, 10, 50] {
                let mut paged = Vec::new();
                for offset in (0..corpus.len()).step_by(limit) {
                    let answers = shard_answers(&corpus, shards, offset + limit);
                    let listed: Vec<(usize, &ShardHits)> = answers.iter().enumerate().collect();
                    let page = merge_page(&listed, &Ranking::Text, offset, limit);
                    assert_eq!(
                        page.len(),
                        limit.min(corpus.len() - offset),
                        "{shards} shards, offset {offset}, limit {limit}"
                    );
                    paged.extend(page.iter().map(|h| h.doc as usize));
                }
                // Consecutive pages never overlap or skip, and equal the one index's order.
                assert_eq!(paged, one_index, "{shards} shards, pages of {limit}");
            }
        }
    }

    #[test]
    fn hybrid_fuses_the_merged_lists_as_one_index_would() {
        // Shard 0 holds t1 (doc 1) and t3 (doc 3); shard 1 holds t2 (2), t4 (4), v1 (7), v2 (8).
        // One index would hold text [t1 9, t2 8, t3 7, t4 6] and vector [v1 .9, t3 .8, v2 .7].
        let (t1, t2, t3, t4, v1, v2) = (
            id_hash("t1"),
            id_hash("t2"),
            id_hash("t3"),
            id_hash("t4"),
            id_hash("v1"),
            id_hash("v2"),
        );
        let a = ShardHits {
            text: vec![hit(1, 9.0, t1), hit(3, 7.0, t3)],
            vector: vec![hit(3, 0.8, t3)],
            ..Default::default()
        };
        let b = ShardHits {
            text: vec![hit(2, 8.0, t2), hit(4, 6.0, t4)],
            vector: vec![hit(7, 0.9, v1), hit(8, 0.7, v2)],
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
        // The same documents in the same order with the same fused scores; t1 and v1 tie
        // (each first in one list), and their id hashes order them as on one index.
        assert_eq!(got, one_index);
        assert_eq!(got[0].0, "t3", "in both lists, so first");
        // rank_window cut t4 from the text list before fusion.
        assert!(got.iter().all(|h| h.0 != "t4"));
    }

    #[test]
    fn hybrid_ties_across_shards_follow_the_id_hash() {
        // Every document is first in its shard's only list, so all fused scores tie: the
        // fused order is the id hash order, whichever shard holds which document.
        let ids = ["a", "b", "c", "d"];
        let hits = |i: usize| ShardHits {
            vector: vec![hit(i as DocRef, 1.0, id_hash(ids[i]))],
            ..Default::default()
        };
        let answers: Vec<ShardHits> = (0..ids.len()).map(hits).collect();
        let listed: Vec<(usize, &ShardHits)> = answers.iter().enumerate().collect();
        let ranking = Ranking::Hybrid {
            strategy: HybridStrategy::Weighted {
                text_weight: 0.5,
                vector_weight: 0.5,
            },
            rank_window: 10,
        };
        let page = merge_page(&listed, &ranking, 0, 10);
        let mut expected: Vec<usize> = (0..ids.len()).collect();
        expected.sort_by_key(|&i| id_hash(ids[i]));
        assert_eq!(
            page.iter().map(|h| h.shard).collect::<Vec<_>>(),
            expected,
            "{page:?}"
        );
    }

    #[test]
    fn vector_lists_merge_by_similarity() {
        let a = ShardHits {
            vector: vec![hit(1, 0.5, 1), hit(2, 0.1, 2)],
            ..Default::default()
        };
        let b = ShardHits {
            vector: vec![hit(1, 0.7, 3)],
            ..Default::default()
        };
        let page = merge_page(&[(0, &a), (2, &b)], &Ranking::Vector, 0, 2);
        assert_eq!(docs(&page), vec![(2, 1), (0, 1)]);
    }
}
