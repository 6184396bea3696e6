//! The top documents of a text, filter or match-all query in rank order ([`crate::rank`]):
//! by score, then by id hash, so that which of several documents tied at the k-th score make
//! the cut depends on their ids only, not on where tantivy stored them.
//!
//! Alone, the collector drives tantivy's pruning (`Weight::for_each_pruning`, block-max WAND
//! for unions of terms), as `TopDocs` does, but with a threshold one float below the k-th best
//! score: tantivy only passes scores strictly above the threshold, and documents tied with the
//! k-th must still reach the heap for their id hash to be compared. A `tweak_score` on
//! `TopDocs` would turn pruning off. Inside a tuple with other collectors (aggregations, which
//! see every match anyway) it collects every match and keeps the same documents.
//!
//! Pruning is used only where it scores exactly as the unpruned scan ([`prunes_exactly`]):
//! ties are equalities of floats, and a score that differs in its last bit between two shard
//! layouts would order ties differently.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::query::{Query, Weight};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

use super::ids::{IdHashes, SegmentIdHashes};
use crate::rank::{best_first, just_below};

/// A ranked document of one searcher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ranked {
    pub address: DocAddress,
    pub score: f32,
    pub id_hash: u64,
}

impl Ranked {
    /// Rank order, then the address: two ids whose hashes collide still order one way.
    pub fn cmp_rank(&self, other: &Self) -> Ordering {
        best_first((self.score, self.id_hash), (other.score, other.id_hash))
            .then(self.address.cmp(&other.address))
    }
}

/// Whether block-max WAND scores every document of `query` bit for bit as the unpruned scan
/// does. WAND adds the term scores of a union in the order its posting lists happen to stand
/// at that document, which depends on the segment's layout; the unpruned union adds them in
/// clause order. Two summands commute, so a query of at most two terms scores alike either
/// way (other clauses, such as a filter's constant 0, take tantivy's unspecialised path,
/// which sums in clause order); longer ones are collected unpruned, so that a sharded
/// collection's scores, hence its ties, equal one index's.
pub(crate) fn prunes_exactly(query: &dyn Query) -> bool {
    let mut terms = 0;
    query.query_terms(&mut |_, _| terms += 1);
    terms <= 2
}

/// The best `offset + limit` documents in rank order, of which the first `offset` are dropped.
pub(crate) struct TopRanked {
    offset: usize,
    limit: usize,
    hashes: Arc<IdHashes>,
    prune: bool,
}

impl TopRanked {
    /// `hashes` must describe the searcher this collector runs on. `prune`: see
    /// [`prunes_exactly`].
    pub fn new(offset: usize, limit: usize, hashes: Arc<IdHashes>, prune: bool) -> Self {
        TopRanked {
            offset,
            limit,
            hashes,
            prune,
        }
    }

    fn k(&self) -> usize {
        if self.limit == 0 {
            0
        } else {
            self.offset + self.limit
        }
    }
}

/// A heap entry; the greater is the better.
#[derive(Clone, Copy)]
struct Entry {
    score: Score,
    id_hash: u64,
    doc: DocId,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        best_first((other.score, other.id_hash), (self.score, self.id_hash))
            .then(other.doc.cmp(&self.doc))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

/// The best `k` documents of one segment.
pub(crate) struct TopRankedSegment {
    k: usize,
    segment: SegmentOrdinal,
    hashes: SegmentIdHashes,
    buffer: Vec<u8>,
    /// The worst of the best `k` is on top.
    heap: BinaryHeap<Reverse<Entry>>,
    /// Only scores above this can enter: once `k` are held, the largest float below the
    /// worst held score, so that a document tied with it is still compared by id hash.
    threshold: Score,
    error: Option<std::io::Error>,
}

impl TopRankedSegment {
    #[inline]
    fn offer(&mut self, doc: DocId, score: Score) {
        // A NaN compares as nothing and is turned away, as tantivy's pruning does.
        if score.partial_cmp(&self.threshold) != Some(Ordering::Greater) {
            return;
        }
        let id_hash = match self.hashes.get(doc, &mut self.buffer) {
            Ok(hash) => hash,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        let entry = Entry {
            score,
            id_hash,
            doc,
        };
        if self.heap.len() < self.k {
            self.heap.push(Reverse(entry));
            if self.heap.len() < self.k {
                return;
            }
        } else {
            let mut worst = self.heap.peek_mut().expect("a full heap of k > 0");
            if entry <= worst.0 {
                return;
            }
            *worst = Reverse(entry);
        }
        let worst = self.heap.peek().expect("a full heap").0.score;
        self.threshold = just_below(worst);
    }
}

impl Collector for TopRanked {
    type Fruit = Vec<Ranked>;
    type Child = TopRankedSegment;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        _reader: &SegmentReader,
    ) -> tantivy::Result<TopRankedSegment> {
        let k = self.k();
        Ok(TopRankedSegment {
            k,
            segment,
            hashes: self.hashes.segment(segment).clone(),
            buffer: Vec::new(),
            heap: BinaryHeap::with_capacity(k.min(4096)),
            // Score::MIN as tantivy's own TopDocs starts; with k = 0 nothing may enter.
            threshold: if k == 0 { Score::INFINITY } else { Score::MIN },
            error: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(
        &self,
        segments: Vec<tantivy::Result<Vec<Ranked>>>,
    ) -> tantivy::Result<Vec<Ranked>> {
        let mut all = Vec::new();
        for segment in segments {
            all.extend(segment?);
        }
        all.sort_by(Ranked::cmp_rank);
        all.truncate(self.k());
        Ok(all.split_off(self.offset.min(all.len())))
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<tantivy::Result<Vec<Ranked>>> {
        let mut top = self.for_segment(segment, reader)?;
        if top.k == 0 {
            return Ok(top.harvest());
        }
        let alive = reader.alive_bitset();
        if self.prune {
            weight.for_each_pruning(top.threshold, reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    top.offer(doc, score);
                }
                top.threshold
            })?;
        } else {
            weight.for_each(reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    top.offer(doc, score);
                }
            })?;
        }
        Ok(top.harvest())
    }
}

impl SegmentCollector for TopRankedSegment {
    type Fruit = tantivy::Result<Vec<Ranked>>;

    fn collect(&mut self, doc: DocId, score: Score) {
        self.offer(doc, score);
    }

    fn harvest(self) -> tantivy::Result<Vec<Ranked>> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        let segment = self.segment;
        Ok(self
            .heap
            .into_iter()
            .map(|Reverse(e)| Ranked {
                address: DocAddress::new(segment, e.doc),
                score: e.score,
                id_hash: e.id_hash,
            })
            .collect())
    }
}
