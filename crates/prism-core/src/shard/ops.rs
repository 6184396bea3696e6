//! Log entry payloads: a batch of upserts and deletes, encoded compactly with postcard.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::PreparedDoc;

/// Largest number of operations in one log entry; the position within the entry is part of
/// each document version's key.
pub const MAX_OPS_PER_ENTRY: usize = 1 << KEY_POSITION_BITS;
const KEY_POSITION_BITS: u32 = 20;

/// One write operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Upsert(Arc<PreparedDoc>),
    Delete(String),
}

impl Op {
    pub fn id(&self) -> &str {
        match self {
            Op::Upsert(doc) => &doc.id,
            Op::Delete(id) => id,
        }
    }

    /// Vectors the operation inserts.
    pub fn vector_count(&self) -> usize {
        match self {
            Op::Upsert(doc) => doc.vectors.len(),
            Op::Delete(_) => 0,
        }
    }
}

/// Encodes the operations of one log entry.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    postcard::to_stdvec(ops).expect("operations always serialize")
}

/// Decodes a log entry's operations.
pub fn decode(payload: &[u8]) -> Result<Vec<Op>> {
    postcard::from_bytes(payload).map_err(|e| Error::Corrupt {
        path: Default::default(),
        message: format!("log entry does not decode: {e}"),
    })
}

/// The key of the document version written by operation `position` of entry `index`. It is
/// unique for the life of the shard and the same on every replay, so every copy and every
/// restart assigns the same keys.
pub fn version_key(index: u64, position: usize) -> u64 {
    debug_assert!(position < MAX_OPS_PER_ENTRY);
    (index << KEY_POSITION_BITS) | position as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_ordered_by_log_position() {
        assert!(version_key(1, MAX_OPS_PER_ENTRY - 1) < version_key(2, 0));
        assert_ne!(version_key(3, 1), version_key(3, 2));
    }

    #[test]
    fn round_trip() {
        let ops = vec![Op::Delete("a".into())];
        assert_eq!(decode(&encode(&ops)).unwrap(), ops);
        assert!(decode(&[0xff, 0xff]).is_err());
    }
}
