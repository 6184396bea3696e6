//! The openraft type configuration of a shard group.

use prism_core::shard::Op;
use serde::{Deserialize, Serialize};

use super::snapshot::ShardSnapshot;

/// A node as a group's membership names it.
pub type Node = openraft::BasicNode;

/// The application data of a shard group's entry: one write request's operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardWrite {
    pub ops: Vec<Op>,
}

openraft::declare_raft_types!(
    /// A shard's Raft group: entries carry document writes, snapshots are directories.
    pub ShardRaft:
        D = ShardWrite,
        R = (),
        NodeId = u64,
        Node = Node,
        SnapshotData = ShardSnapshot,
);
