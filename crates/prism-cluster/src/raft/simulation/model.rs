//! A shard's documents as a deterministic model: id → digest of the prepared document.

use std::collections::BTreeMap;

use prism_core::shard::Op;
use serde::{Deserialize, Serialize};

use super::super::state_machine::Replicated;
use super::super::types::ShardWrite;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardModel {
    pub docs: BTreeMap<String, u64>,
}

impl Replicated for ShardModel {
    type Command = ShardWrite;
    type Response = ();

    fn apply(&mut self, write: &ShardWrite) {
        for op in &write.ops {
            match op {
                Op::Upsert(doc) => {
                    let bytes = postcard::to_stdvec(doc.as_ref()).expect("documents serialize");
                    self.docs
                        .insert(doc.id.clone(), xxhash_rust::xxh3::xxh3_64(&bytes));
                }
                Op::Delete(id) => {
                    self.docs.remove(id);
                }
            }
        }
    }

    fn checksum(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&postcard::to_stdvec(self).expect("models serialize"))
    }
}
