//! A query that stops when its search's budget is spent. It wraps the query a collector runs
//! and checks the [`SearchBudget`] before each segment and, inside the segment's scorer loop,
//! about once a millisecond ([`CheckInterval`]); once spent, the scorer ends the segment as if
//! it had no more matches, so every collector (top documents, count, aggregations) finishes
//! with what it saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::query::{
    BooleanQuery, EnableScoring, Explanation, Occur, Query, Scorer, TermQuery, Weight,
};
use tantivy::{
    DocId, DocSet, Score, SeekDangerResult, SegmentReader, COLLECT_BLOCK_BUFFER_LEN, TERMINATED,
};

use crate::search::budget::SearchBudget;

/// How many documents pass between two checks of the budget. A check reads the clock (about
/// 20 ns), so cheap scorer loops check every few thousand documents; a scorer that spends
/// milliseconds on one document (a long phrase with slop, hundreds of clauses) checks after
/// each. The interval doubles while checks come less than a millisecond apart and halves
/// when they come more than four apart.
#[derive(Debug, Clone, Copy)]
struct CheckInterval {
    every: u32,
    until_check: u32,
    last_check: Instant,
}

const MOST_DOCS_BETWEEN_CHECKS: u32 = 4096;

impl CheckInterval {
    fn new() -> Self {
        CheckInterval {
            every: 1,
            until_check: 1,
            last_check: Instant::now(),
        }
    }

    /// Counts `docs`; true when the budget is due for a check.
    fn due(&mut self, docs: u32) -> bool {
        if self.until_check > docs {
            self.until_check -= docs;
            return false;
        }
        let now = Instant::now();
        let since = now.duration_since(self.last_check);
        if since < Duration::from_millis(1) {
            self.every = (self.every * 2).min(MOST_DOCS_BETWEEN_CHECKS);
        } else if since > Duration::from_millis(4) {
            self.every = (self.every / 2).max(1);
        }
        self.last_check = now;
        self.until_check = self.every;
        true
    }
}

/// `inner`, stopped when `budget` is spent.
pub(crate) struct BoundedQuery {
    inner: Box<dyn Query>,
    budget: Arc<SearchBudget>,
    /// A lone term counts its matches from its document frequency, without a scorer loop.
    counts_without_scan: bool,
    /// Terms and boolean queries prune (block-max WAND) in tantivy's own loop, which calls
    /// back for every competitive document; other queries prune here, over the bounded scorer.
    prunes_natively: bool,
}

impl BoundedQuery {
    /// `query` with every clause bounded too. A union or an intersection advances its
    /// clauses over a window of thousands of documents in one step, so a check above it
    /// alone comes too late when each clause costs milliseconds a document (a phrase with
    /// slop): every clause of a boolean query is wrapped, down the tree. Terms and boolean
    /// queries of terms only are left bare, so that a union of terms keeps block-max WAND and
    /// a count over one costs no extra layer per document, and so are exclusions.
    pub(crate) fn around(query: &dyn Query, budget: &Arc<SearchBudget>) -> Self {
        BoundedQuery::new(bound_clauses(query, budget), budget.clone())
    }

    pub(crate) fn new(inner: Box<dyn Query>, budget: Arc<SearchBudget>) -> Self {
        let counts_without_scan = inner.is::<TermQuery>();
        let prunes_natively = counts_without_scan || inner.is::<BooleanQuery>();
        BoundedQuery {
            inner,
            budget,
            counts_without_scan,
            prunes_natively,
        }
    }
}

/// A term, or a boolean query of terms at any depth: each step of its scorer costs little,
/// so the check above it comes in time, and an extra layer per document would only cost.
fn only_terms(query: &dyn Query) -> bool {
    if query.is::<TermQuery>() {
        return true;
    }
    query
        .downcast_ref::<BooleanQuery>()
        .is_some_and(|b| b.clauses().iter().all(|(_, q)| only_terms(q.as_ref())))
}

/// `query` with each clause of a boolean query (at any depth) bounded, terms and unions of
/// terms excepted.
fn bound_clauses(query: &dyn Query, budget: &Arc<SearchBudget>) -> Box<dyn Query> {
    let Some(boolean) = query.downcast_ref::<BooleanQuery>() else {
        return query.box_clone();
    };
    let clauses = boolean
        .clauses()
        .iter()
        .map(|(occur, clause)| {
            // An exclusion that stopped early would let through documents it excludes:
            // `MustNot` clauses run unbounded (they are only ever asked about candidates).
            let bounded: Box<dyn Query> = if only_terms(clause.as_ref()) || *occur == Occur::MustNot
            {
                clause.box_clone()
            } else {
                Box::new(BoundedQuery::new(
                    bound_clauses(clause.as_ref(), budget),
                    budget.clone(),
                ))
            };
            (*occur, bounded)
        })
        .collect();
    Box::new(BooleanQuery::with_minimum_required_clauses(
        clauses,
        boolean.get_minimum_number_should_match(),
    ))
}

impl Clone for BoundedQuery {
    fn clone(&self) -> Self {
        BoundedQuery {
            inner: self.inner.box_clone(),
            budget: self.budget.clone(),
            counts_without_scan: self.counts_without_scan,
            prunes_natively: self.prunes_natively,
        }
    }
}

impl std::fmt::Debug for BoundedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedQuery")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Query for BoundedQuery {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(BoundedWeight {
            inner: self.inner.weight(enable_scoring)?,
            budget: self.budget.clone(),
            counts_without_scan: self.counts_without_scan,
            prunes_natively: self.prunes_natively,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a tantivy::Term, bool)) {
        self.inner.query_terms(visitor)
    }
}

struct BoundedWeight {
    inner: Box<dyn Weight>,
    budget: Arc<SearchBudget>,
    counts_without_scan: bool,
    prunes_natively: bool,
}

impl Weight for BoundedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let inner = self.inner.scorer(reader, boost)?;
        let mut scorer = BoundedScorer {
            inner,
            budget: self.budget.clone(),
            interval: CheckInterval::new(),
            stopped: false,
        };
        // Between segments: a spent budget skips the segment.
        if self.budget.exhausted() {
            scorer.stopped = true;
        }
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        if self.budget.exhausted() {
            return Ok(0);
        }
        if self.counts_without_scan {
            return self.inner.count(reader);
        }
        let mut scorer = self.scorer(reader, 1.0)?;
        Ok(match reader.alive_bitset() {
            Some(alive) => scorer.count(alive),
            None => scorer.count_including_deleted(),
        })
    }

    // `for_each` and `for_each_no_score` keep tantivy's defaults, which run through `scorer`
    // above and so are bounded too; `for_each_pruning` keeps the inner weight's own
    // (block-max WAND) and is bounded by its callback, which every competitive document
    // reaches.
    fn for_each_pruning(
        &self,
        threshold: Score,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(DocId, Score) -> Score,
    ) -> tantivy::Result<()> {
        if self.budget.exhausted() {
            return Ok(());
        }
        if !self.prunes_natively {
            // tantivy's default loop over the inner scorer would not stop: loop over ours.
            let mut scorer = self.scorer(reader, 1.0)?;
            let mut threshold = threshold;
            let mut doc = scorer.doc();
            while doc != TERMINATED {
                let score = scorer.score();
                if score > threshold {
                    threshold = callback(doc, score);
                }
                doc = scorer.advance();
            }
            return Ok(());
        }
        let mut interval = CheckInterval::new();
        let budget = &self.budget;
        let mut stopped = false;
        self.inner
            .for_each_pruning(threshold, reader, &mut |doc, score| {
                if stopped || (interval.due(1) && budget.exhausted()) {
                    stopped = true;
                    // A threshold no score reaches makes the pruning scorer skip the rest.
                    return Score::INFINITY;
                }
                callback(doc, score)
            })
    }
}

struct BoundedScorer {
    inner: Box<dyn Scorer>,
    budget: Arc<SearchBudget>,
    interval: CheckInterval,
    stopped: bool,
}

impl BoundedScorer {
    /// Counts `docs` toward the next check; true once the budget is spent.
    fn spent(&mut self, docs: u32) -> bool {
        if self.stopped {
            return true;
        }
        if self.interval.due(docs) {
            self.stopped = self.budget.exhausted();
        }
        self.stopped
    }
}

impl DocSet for BoundedScorer {
    fn advance(&mut self) -> DocId {
        if self.spent(1) {
            return TERMINATED;
        }
        self.inner.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.spent(1) {
            return TERMINATED;
        }
        self.inner.seek(target)
    }

    fn seek_danger(&mut self, target: DocId) -> SeekDangerResult {
        if self.spent(1) {
            return SeekDangerResult::SeekLowerBound(TERMINATED);
        }
        self.inner.seek_danger(target)
    }

    fn fill_buffer(&mut self, buffer: &mut [DocId; COLLECT_BLOCK_BUFFER_LEN]) -> usize {
        if self.spent(COLLECT_BLOCK_BUFFER_LEN as u32) {
            return 0;
        }
        self.inner.fill_buffer(buffer)
    }

    fn doc(&self) -> DocId {
        if self.stopped {
            return TERMINATED;
        }
        self.inner.doc()
    }

    fn size_hint(&self) -> u32 {
        self.inner.size_hint()
    }

    // Counting takes the inner scorer's documents a block at a time (its own `fill_buffer`,
    // one budget check per block): the default loop of one virtual `advance` per document
    // cost a match-all count over 31k documents about 150 µs.
    fn count(&mut self, alive_bitset: &tantivy::fastfield::AliveBitSet) -> u32 {
        let mut buffer = [0; COLLECT_BLOCK_BUFFER_LEN];
        let mut count = 0;
        loop {
            let filled = self.fill_buffer(&mut buffer);
            count += buffer[..filled]
                .iter()
                .filter(|&&doc| alive_bitset.is_alive(doc))
                .count() as u32;
            if filled < COLLECT_BLOCK_BUFFER_LEN {
                return count;
            }
        }
    }

    fn count_including_deleted(&mut self) -> u32 {
        let mut buffer = [0; COLLECT_BLOCK_BUFFER_LEN];
        let mut count = 0;
        loop {
            let filled = self.fill_buffer(&mut buffer);
            count += filled as u32;
            if filled < COLLECT_BLOCK_BUFFER_LEN {
                return count;
            }
        }
    }

    fn cost(&self) -> u64 {
        self.inner.cost()
    }
}

impl Scorer for BoundedScorer {
    fn score(&mut self) -> Score {
        self.inner.score()
    }
}
