//! Corpus statistics for BM25 gathered from several shards, so that each shard scores with the
//! statistics of the whole collection and a sharded collection ranks exactly as one index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::{Field, Schema};
use tantivy::Term;

/// Document count, tokens per field and document frequency per term, summed over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermStatistics {
    pub total_docs: u64,
    /// Tokens per field name.
    pub field_tokens: BTreeMap<String, u64>,
    /// Documents containing each term, keyed by [`term_key`] (field id, type and value; every
    /// shard of a collection has the same schema, hence the same field ids).
    pub doc_freqs: BTreeMap<Vec<u8>, u64>,
}

/// The key of a term in [`TermStatistics::doc_freqs`].
pub fn term_key(term: &Term) -> Vec<u8> {
    postcard::to_stdvec(term).expect("terms serialize")
}

impl TermStatistics {
    /// Adds another shard's statistics to these.
    pub fn merge(&mut self, other: &TermStatistics) {
        self.total_docs += other.total_docs;
        for (field, n) in &other.field_tokens {
            *self.field_tokens.entry(field.clone()).or_default() += n;
        }
        for (term, n) in &other.doc_freqs {
            *self.doc_freqs.entry(term.clone()).or_default() += n;
        }
    }

    /// The sum of many shards' statistics.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a TermStatistics>) -> TermStatistics {
        let mut out = TermStatistics::default();
        for s in all {
            out.merge(s);
        }
        out
    }
}

/// Serves [`TermStatistics`] to tantivy's BM25 scorer. A term or field the statistics do not
/// cover falls back to the local shard's own figure, so a query never scores with zeros.
pub struct GlobalStatistics<'a> {
    pub stats: &'a TermStatistics,
    pub schema: &'a Schema,
    pub local: &'a dyn Bm25StatisticsProvider,
}

impl Bm25StatisticsProvider for GlobalStatistics<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        match self
            .stats
            .field_tokens
            .get(self.schema.get_field_name(field))
        {
            Some(n) => Ok(*n),
            None => self.local.total_num_tokens(field),
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        if self.stats.total_docs > 0 {
            Ok(self.stats.total_docs)
        } else {
            self.local.total_num_docs()
        }
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        match self.stats.doc_freqs.get(&term_key(term)) {
            Some(n) => Ok(*n),
            None => self.local.doc_freq(term),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_every_figure() {
        let a = TermStatistics {
            total_docs: 10,
            field_tokens: [("title".to_string(), 100)].into(),
            doc_freqs: [(vec![1, 2], 3)].into(),
        };
        let b = TermStatistics {
            total_docs: 5,
            field_tokens: [("title".to_string(), 50), ("body".to_string(), 7)].into(),
            doc_freqs: [(vec![1, 2], 1), (vec![9], 2)].into(),
        };
        let sum = TermStatistics::sum([&a, &b]);
        assert_eq!(sum.total_docs, 15);
        assert_eq!(sum.field_tokens["title"], 150);
        assert_eq!(sum.field_tokens["body"], 7);
        assert_eq!(sum.doc_freqs[&vec![1, 2]], 4);
        assert_eq!(sum.doc_freqs[&vec![9]], 2);
    }
}
