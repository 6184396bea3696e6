//! The one order of search results: score descending, then the document id's stable hash
//! ascending. A shard's text and vector top-k (including which of several documents tied at
//! the k-th score make the cut), hybrid fusion, the federation's merge and every page follow
//! it. The hash depends on nothing but the id, so a sharded collection returns the ids one
//! index would, and a restart, a segment merge or a re-index in another order never reorders
//! ties. Pure.
//!
//! ```
//! use prism_core::rank::{best_first, id_hash};
//! let mut hits = vec![(1.0, id_hash("b")), (2.0, id_hash("z")), (1.0, id_hash("a"))];
//! hits.sort_by(|x, y| best_first(*x, *y));
//! assert_eq!(hits[0].0, 2.0);
//! assert!(hits[1].1 < hits[2].1, "equal scores: the smaller id hash first");
//! ```

use std::cmp::Ordering;

/// The tie-break key of a document: xxh3-64 of its id, the hash that also routes it to its
/// shard. Ids whose hashes collide (about one pair in 2^64) order arbitrarily among
/// themselves.
pub fn id_hash(id: &str) -> u64 {
    crate::routing::stable_hash(id)
}

/// Best first: the higher score, then the smaller id hash. Scores compare with
/// [`f32::total_cmp`], so this is a total order on any input.
pub fn best_first(a: (f32, u64), b: (f32, u64)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// A ranked item that knows the id hash of its document, so that fusion breaks ties as every
/// other list does.
pub trait TieBreak {
    fn id_hash(&self) -> u64;
}

impl TieBreak for str {
    fn id_hash(&self) -> u64 {
        id_hash(self)
    }
}

impl TieBreak for String {
    fn id_hash(&self) -> u64 {
        id_hash(self)
    }
}

impl<T: TieBreak + ?Sized> TieBreak for &T {
    fn id_hash(&self) -> u64 {
        (**self).id_hash()
    }
}

/// The largest score below `score`. tantivy's pruning passes a collector only scores strictly
/// above its threshold; a threshold just below the k-th best score lets the documents tied
/// with it through, for the id hash to decide between them.
pub(crate) fn just_below(score: f32) -> f32 {
    // f32::next_down, stable only since Rust 1.86 (this workspace supports 1.85).
    if score.is_nan() || score == f32::NEG_INFINITY {
        return score;
    }
    if score == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = score.to_bits();
    f32::from_bits(if score > 0.0 { bits - 1 } else { bits + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_break_on_the_id_hash_ascending() {
        let (a, b) = (id_hash("doc-1"), id_hash("doc-2"));
        let (lo, hi) = (a.min(b), a.max(b));
        assert_eq!(best_first((1.0, lo), (1.0, hi)), Ordering::Less);
        assert_eq!(best_first((1.0, hi), (1.0, lo)), Ordering::Greater);
        assert_eq!(best_first((2.0, hi), (1.0, lo)), Ordering::Less);
        assert_eq!(best_first((1.0, lo), (1.0, lo)), Ordering::Equal);
    }

    #[test]
    fn the_hash_is_the_routing_hash_and_is_pinned() {
        // Changing it would reorder every tie of every existing index and mix orders in a
        // federation of old and new nodes.
        assert_eq!(id_hash(""), 0x2d06800538d394c2);
        assert_eq!(id_hash("doc1"), crate::routing::stable_hash("doc1"));
        assert_eq!("doc1".id_hash(), String::from("doc1").id_hash());
    }

    #[test]
    fn just_below_is_the_next_float_down() {
        for x in [
            1.0f32,
            0.5,
            3.7e-3,
            12345.678,
            -1.0,
            -2.5e-7,
            f32::MAX,
            f32::MIN_POSITIVE,
        ] {
            let below = just_below(x);
            assert!(below < x, "{x}");
            // Nothing lies strictly between.
            let mid = below / 2.0 + x / 2.0;
            assert!(mid == below || mid == x, "{x}: {below} < {mid} < {x}");
        }
        assert!(just_below(0.0) < 0.0 && just_below(0.0) > -1e-40);
        assert!(just_below(-0.0) < -0.0);
        assert_eq!(just_below(f32::MIN), f32::NEG_INFINITY);
    }
}
