//! The id hash of every document of a searcher generation, for ranking ties
//! ([`crate::rank`]): read from the `_idhash` fast column, or, in an index made before that
//! column existed, hashed from the `_id` column's bytes.

use std::sync::Arc;

use tantivy::columnar::{Column, ColumnIndex, ColumnValues, StrColumn};
use tantivy::{DocAddress, DocId, Searcher, SegmentReader};

use super::Shared;
use crate::error::{Error, Result};
use crate::schema::internal;

/// Where one segment's documents get their id hash.
#[derive(Clone)]
pub(crate) enum SegmentIdHashes {
    /// The `_idhash` column, which every document has: a direct read.
    Full(Arc<dyn ColumnValues<u64>>),
    /// The `_idhash` column in another layout tantivy chose.
    Column(Column<u64>),
    /// An index made before `_idhash` existed: the id is read from its dictionary-encoded
    /// column and hashed, a dictionary lookup per document that reaches a top-k heap.
    Ids(StrColumn),
}

impl SegmentIdHashes {
    fn open(reader: &SegmentReader, has_column: bool) -> tantivy::Result<Self> {
        let fast = reader.fast_fields();
        if !has_column {
            return fast
                .str(internal::ID)?
                .map(SegmentIdHashes::Ids)
                .ok_or_else(|| tantivy::TantivyError::FieldNotFound(internal::ID.into()));
        }
        let column = fast.u64(internal::ID_HASH)?;
        Ok(match column.index {
            ColumnIndex::Full => SegmentIdHashes::Full(column.values),
            _ => SegmentIdHashes::Column(column),
        })
    }

    /// The id hash of `doc`.
    #[inline(always)]
    pub fn get(&self, doc: DocId, buffer: &mut Vec<u8>) -> std::io::Result<u64> {
        match self {
            SegmentIdHashes::Full(values) => Ok(values.get_val(doc)),
            other => other.get_slow(doc, buffer),
        }
    }

    #[inline(never)]
    fn get_slow(&self, doc: DocId, buffer: &mut Vec<u8>) -> std::io::Result<u64> {
        match self {
            SegmentIdHashes::Full(values) => Ok(values.get_val(doc)),
            SegmentIdHashes::Column(column) => Ok(column.first(doc).unwrap_or_default()),
            SegmentIdHashes::Ids(column) => {
                buffer.clear();
                if let Some(ord) = column.term_ords(doc).next() {
                    column.ord_to_bytes(ord, buffer)?;
                }
                // The id's bytes, hashed as `rank::id_hash` hashes the string.
                Ok(xxhash_rust::xxh3::xxh3_64(buffer))
            }
        }
    }
}

/// The id-hash sources of one searcher generation, one per segment, opened once: opening a
/// column reads its metadata, and the legacy `_id` column its dictionary index.
pub(crate) struct IdHashes {
    generation: u64,
    by_segment: Vec<SegmentIdHashes>,
}

impl IdHashes {
    pub fn segment(&self, segment_ord: u32) -> &SegmentIdHashes {
        &self.by_segment[segment_ord as usize]
    }

    /// The id hash of the document at `address`.
    pub fn get(&self, address: DocAddress) -> Result<u64> {
        self.segment(address.segment_ord)
            .get(address.doc_id, &mut Vec::new())
            .map_err(|e| Error::io(format!("segment {}", address.segment_ord), e))
    }
}

/// The id hashes of `searcher`'s generation, cached until the next refresh.
pub(crate) fn id_hashes(shared: &Shared, searcher: &Searcher) -> Result<Arc<IdHashes>> {
    let generation = searcher.generation().generation_id();
    let mut cache = shared.id_columns.lock();
    if let Some(hashes) = cache.as_ref().filter(|c| c.generation == generation) {
        return Ok(hashes.clone());
    }
    let has_column = shared.fields.id_hash.is_some();
    let by_segment = searcher
        .segment_readers()
        .iter()
        .map(|reader| SegmentIdHashes::open(reader, has_column))
        .collect::<tantivy::Result<Vec<_>>>()?;
    let hashes = Arc::new(IdHashes {
        generation,
        by_segment,
    });
    *cache = Some(hashes.clone());
    Ok(hashes)
}
