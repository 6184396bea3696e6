//! The top documents of a text, filter or match-all query in rank order ([`crate::rank`]):
//! by score, then by id hash, so that which of several documents tied at the k-th score make
//! the cut depends on their ids only, not on where tantivy stored them.
//!
//! Alone, it reads a segment as its [`Scan`] says: pruned by tantivy
//! (`Weight::for_each_pruning`, block-max WAND for terms), as `TopDocs` does, but with a
//! threshold one float below the k-th best score, because tantivy only passes scores strictly
//! above the threshold and documents tied with the k-th must still be compared by id hash (a
//! `tweak_score` on `TopDocs` would turn pruning off); every match scored; or, where every
//! score ties, blocks of unscored ids. Inside a tuple with other collectors (aggregations, which
//! see every match anyway) tantivy hands it every match and it keeps the same documents.
//!
//! Pruning is used only where it scores exactly as the unpruned scan ([`prunes_exactly`]):
//! ties are equalities of floats, and a score that differs in its last bit between two shard
//! layouts would order ties differently.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::fastfield::AliveBitSet;
use tantivy::query::{Query, Weight};
use tantivy::{DocAddress, DocId, DocSet, Score, SegmentOrdinal, SegmentReader, TERMINATED};

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

/// How [`TopRanked`] reads a segment when it runs alone (in a tuple, tantivy scores every
/// match and hands each to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Every match, scored, its clauses summed in tantivy's clause order.
    Full,
    /// Block-max WAND; only where [`prunes_exactly`].
    Pruned,
    /// Every match scores alike (match-all, filter-only): the top is the smallest id hashes,
    /// so matches come in blocks of ids, unscored, and their hashes are read a block at once.
    ConstantScore,
}

/// The best `offset + limit` documents in rank order, of which the first `offset` are dropped.
pub(crate) struct TopRanked {
    offset: usize,
    limit: usize,
    hashes: Arc<IdHashes>,
    scan: Scan,
}

impl TopRanked {
    /// `hashes` must describe the searcher this collector runs on.
    pub fn new(offset: usize, limit: usize, hashes: Arc<IdHashes>, scan: Scan) -> Self {
        TopRanked {
            offset,
            limit,
            hashes,
            scan,
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

/// `score`'s place in [`f32::total_cmp`]'s order, as an unsigned integer: the heap compares
/// integers, in the order [`best_first`] compares scores.
#[inline]
fn order_key(score: Score) -> u32 {
    let bits = score.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

#[inline]
fn score_of(key: u32) -> Score {
    Score::from_bits(if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// A heap entry, the greater the better: score key, then the id hash inverted (smaller
/// wins), then the doc id inverted, packed so that one integer comparison ranks.
#[inline]
fn entry(key: u32, id_hash: u64, doc: DocId) -> u128 {
    (u128::from(key) << 96) | (u128::from(!id_hash) << 32) | u128::from(!doc)
}

/// The best `k` documents of one segment.
pub(crate) struct TopRankedSegment {
    k: usize,
    segment: SegmentOrdinal,
    hashes: SegmentIdHashes,
    buffer: Vec<u8>,
    /// Hashes of one block of a constant-score scan.
    block: Vec<u64>,
    best: Best,
    /// An entry not above this cannot be among the best `k` (0 until `k` are held).
    bar: u128,
    /// Score key of `bar`: a lower one cannot enter, an equal one is compared by id hash.
    floor: u32,
    /// The pruning threshold: once `k` are held, the largest float below the worst held
    /// score, so that tantivy still passes the documents tied with it.
    threshold: Score,
    error: Option<std::io::Error>,
}

impl TopRankedSegment {
    #[inline]
    fn offer(&mut self, doc: DocId, score: Score) {
        let key = order_key(score);
        // A NaN is turned away, as tantivy's pruning does.
        if key < self.floor || score.is_nan() {
            return;
        }
        let id_hash = match self.hashes.get(doc, &mut self.buffer) {
            Ok(hash) => hash,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        self.push(entry(key, id_hash, doc));
    }

    /// Offers a block of matches that all score `score` and are alive or not per `alive`.
    fn offer_block(&mut self, docs: &[DocId], score: Score, alive: Option<&AliveBitSet>) {
        let key = order_key(score);
        if key < self.floor || score.is_nan() {
            return;
        }
        self.block.resize(docs.len(), 0);
        if let SegmentIdHashes::Full(values) = &self.hashes {
            // One dynamic call a block instead of one a document.
            values.get_vals(docs, &mut self.block);
        } else {
            for (doc, hash) in docs.iter().zip(self.block.iter_mut()) {
                match self.hashes.get(*doc, &mut self.buffer) {
                    Ok(h) => *hash = h,
                    Err(e) => {
                        self.error.get_or_insert(e);
                        return;
                    }
                }
            }
        }
        let block = std::mem::take(&mut self.block);
        for (&doc, &hash) in docs.iter().zip(&block) {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                self.push(entry(key, hash, doc));
            }
        }
        self.block = block;
    }

    #[inline]
    fn push(&mut self, entry: u128) {
        if entry <= self.bar {
            return;
        }
        let k = self.k;
        match &mut self.best {
            Best::Heap(heap) => {
                if heap.len() < k {
                    heap.push(Reverse(entry));
                    if heap.len() < k {
                        return;
                    }
                } else {
                    *heap.peek_mut().expect("a full heap of k > 0") = Reverse(entry);
                }
                self.bar = heap.peek().expect("a full heap").0;
            }
            Best::Buffer(buffer) => {
                buffer.push(entry);
                if buffer.len() < 2 * k {
                    return;
                }
                self.bar = keep_best(buffer, k);
            }
        }
        self.floor = (self.bar >> 96) as u32;
        self.threshold = just_below(score_of(self.floor));
    }
}

/// Where a segment keeps its best `k`.
enum Best {
    /// The worst on top: the bar rises with every better document, which pruning needs.
    Heap(BinaryHeap<Reverse<u128>>),
    /// Up to `2k`, cut back to the best `k` when full, as tantivy's `TopNComputer` does: a
    /// constant cost per document where nothing prunes, the bar rising every `k` documents.
    Buffer(Vec<u128>),
}

/// Cuts `entries` to their best `k` (k > 0, at least k held) and returns the worst kept.
fn keep_best(entries: &mut Vec<u128>, k: usize) -> u128 {
    let (_, kth, _) = entries.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    let kth = *kth;
    entries.truncate(k);
    kth
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
            block: Vec::new(),
            best: if self.scan == Scan::Pruned {
                Best::Heap(BinaryHeap::with_capacity(k.min(4096)))
            } else {
                Best::Buffer(Vec::with_capacity((2 * k).min(8192)))
            },
            bar: 0,
            // With k = 0 nothing may enter (every key of a number is below u32::MAX).
            floor: if k == 0 { u32::MAX } else { 0 },
            // Score::MIN as tantivy's own TopDocs starts.
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
        match self.scan {
            Scan::Pruned => weight.for_each_pruning(top.threshold, reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    top.offer(doc, score);
                }
                top.threshold
            })?,
            Scan::Full => weight.for_each(reader, &mut |doc, score| {
                if alive.is_none_or(|a| a.is_alive(doc)) {
                    top.offer(doc, score);
                }
            })?,
            Scan::ConstantScore => {
                let mut first = weight.scorer(reader, 1.0)?;
                if first.doc() == TERMINATED {
                    return Ok(top.harvest());
                }
                let score = first.score();
                weight.for_each_no_score(reader, &mut |docs| {
                    top.offer_block(docs, score, alive);
                })?;
            }
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
        let entries = match self.best {
            Best::Heap(heap) => heap.into_iter().map(|Reverse(e)| e).collect(),
            Best::Buffer(mut buffer) => {
                if buffer.len() > self.k && self.k > 0 {
                    keep_best(&mut buffer, self.k);
                }
                buffer
            }
        };
        Ok(entries
            .into_iter()
            .map(|e| Ranked {
                address: DocAddress::new(segment, !(e as u32)),
                score: score_of((e >> 96) as u32),
                id_hash: !((e >> 32) as u64),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_entries_rank_as_best_first() {
        let scores = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            0.5,
            1.0,
            1.0000001,
            7.25,
            f32::MAX,
            f32::INFINITY,
        ];
        let hashes = [0, 1, 0x8000_0000_0000_0000, u64::MAX - 1, u64::MAX];
        let mut all = Vec::new();
        for &score in &scores {
            assert_eq!(score_of(order_key(score)).to_bits(), score.to_bits());
            for &hash in &hashes {
                all.push((score, hash));
            }
        }
        for &a in &all {
            for &b in &all {
                // The greater entry is the one best_first puts first.
                let packed = entry(order_key(b.0), b.1, 3).cmp(&entry(order_key(a.0), a.1, 3));
                assert_eq!(packed, best_first(a, b), "{a:?} {b:?}");
            }
        }
        // Equal score and hash: the lower doc id is the better.
        assert!(entry(order_key(1.0), 5, 2) > entry(order_key(1.0), 5, 9));
    }
}
