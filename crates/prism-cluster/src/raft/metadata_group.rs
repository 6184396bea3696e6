//! This node's copy of the metadata group (collections, the shard map, the nodes), behind a
//! handle that names no openraft type. Every node of a cluster holds one: a voter while
//! voters are few, a learner otherwise, so every node reads the metadata locally.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Raft, ServerState};

use super::proposal::{propose, Proposed};
use super::state_machine::StateReader;
use super::types::MetaRaft;
use crate::metadata::{MetaCommand, MetaResponse, MetadataState};

/// The metadata group as one node holds it.
pub struct MetaGroup {
    pub(super) raft: Raft<MetaRaft>,
    pub(super) reader: Arc<StateReader<MetadataState>>,
    /// Nothing was ever written to this copy when it opened.
    pub(super) fresh: bool,
}

/// Where this node's metadata copy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaView {
    pub me: u64,
    pub state: MetaRole,
    pub term: u64,
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Every member (voters and learners) with its address.
    pub members: BTreeMap<u64, String>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// On the leader: the last index each other member is known to hold.
    pub matched: BTreeMap<u64, Option<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Stopped,
}

impl MetaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaRole::Leader => "leader",
            MetaRole::Follower => "follower",
            MetaRole::Candidate => "candidate",
            MetaRole::Learner => "learner",
            MetaRole::Stopped => "stopped",
        }
    }
}

impl MetaGroup {
    /// The metadata as this copy applied it, and the index it applied.
    pub fn state(&self) -> (MetadataState, Option<u64>) {
        let view = self.reader.read();
        (view.state, view.applied.map(|(_, index)| index))
    }

    pub fn view(&self) -> MetaView {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let state = match (&metrics.running_state, metrics.state) {
            (Err(_), _) | (_, ServerState::Shutdown) => MetaRole::Stopped,
            (_, ServerState::Leader) => MetaRole::Leader,
            (_, ServerState::Follower) => MetaRole::Follower,
            (_, ServerState::Candidate) => MetaRole::Candidate,
            (_, ServerState::Learner) => MetaRole::Learner,
        };
        MetaView {
            me: metrics.id,
            state,
            term: metrics.current_term,
            leader: metrics.current_leader,
            voters: membership.voter_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            last_log: metrics.last_log_index,
            applied: metrics.last_applied.map(|id| id.index),
            matched: metrics
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != metrics.id)
                .map(|(id, matched)| (*id, matched.map(|m| m.index)))
                .collect(),
        }
    }

    /// Whether this copy held anything when it opened: false on a node that has yet to join
    /// or bootstrap.
    pub fn was_member_at_open(&self) -> bool {
        !self.fresh
    }

    /// What [`MetaGroup::changed_since`] compares: the applied entry, role, leader and
    /// membership of this copy now.
    pub fn mark(&self) -> MetaMark {
        MetaMark::of(&self.raft.metrics().borrow())
    }

    /// Waits until this copy applies an entry, changes role or leader, or sees a new
    /// membership; or until `most` passes.
    pub async fn changed(&self, most: Duration) {
        self.changed_since(self.mark(), most).await
    }

    /// Waits until this copy differs from `mark` (at once if it already does), or until
    /// `most` passes. Other metrics (a heartbeat's acknowledgement) change all the time and
    /// do not count.
    pub async fn changed_since(&self, mark: MetaMark, most: Duration) {
        // A clone of openraft's receiver starts at the version openraft's own copy last saw,
        // which is never marked seen: `changed()` on it returns at once. Mark it seen first,
        // after comparing, so that a change made before the call is not missed.
        let mut metrics = self.raft.metrics();
        if MetaMark::of(&metrics.borrow_and_update()) != mark {
            return;
        }
        let deadline = tokio::time::Instant::now() + most;
        let _ = tokio::time::timeout_at(deadline, async {
            while metrics.changed().await.is_ok() {
                if MetaMark::of(&metrics.borrow_and_update()) != mark {
                    return;
                }
            }
            // The group stopped: its metrics will not change again.
            tokio::time::sleep_until(deadline).await;
        })
        .await;
    }

    /// Makes this node, `id` at `address`, the one voter of a new cluster.
    pub async fn bootstrap(&self, id: u64, address: &str) -> Result<(), String> {
        let members = BTreeMap::from([(id, BasicNode::new(address))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| format!("cannot bootstrap the metadata group: {e}"))
    }

    /// Proposes `command` on this copy, which must lead the group.
    pub async fn propose(
        &self,
        command: MetaCommand,
        quorum_window: Duration,
        deadline: Duration,
    ) -> Proposed<MetaResponse> {
        propose(&self.raft, command, quorum_window, deadline).await
    }

    /// Adds node `id` at `address` as a learner and waits until it holds the log.
    pub async fn add_learner(
        &self,
        id: u64,
        address: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        tokio::time::timeout(
            timeout,
            self.raft.add_learner(id, BasicNode::new(address), true),
        )
        .await
        .map_err(|_| format!("node {id} did not catch up with the metadata within {timeout:?}"))?
        .map(|_| ())
        .map_err(|e| format!("cannot add node {id} to the metadata group: {e}"))
    }

    /// Makes `voters` the voters; other members stay learners.
    pub async fn set_voters(&self, voters: BTreeSet<u64>, timeout: Duration) -> Result<(), String> {
        tokio::time::timeout(
            timeout,
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), true),
        )
        .await
        .map_err(|_| format!("the metadata voters did not change within {timeout:?}"))?
        .map(|_| ())
        .map_err(|e| format!("cannot change the metadata voters: {e}"))
    }

    /// Removes `nodes` from the group altogether (voters must have been demoted first).
    pub async fn remove_members(
        &self,
        nodes: BTreeSet<u64>,
        timeout: Duration,
    ) -> Result<(), String> {
        tokio::time::timeout(
            timeout,
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(nodes), false),
        )
        .await
        .map_err(|_| format!("the metadata members did not change within {timeout:?}"))?
        .map(|_| ())
        .map_err(|e| format!("cannot remove metadata members: {e}"))
    }

    /// Starts an election on this copy.
    pub async fn elect(&self) -> Result<(), String> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| format!("cannot start a metadata election: {e}"))
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// How many of `nodes` nodes vote in the metadata group: the rule of every group
/// ([`crate::metadata::voter_count`]).
pub fn metadata_voter_count(nodes: usize) -> usize {
    crate::metadata::voter_count(nodes)
}

#[cfg(test)]
mod tests {
    use super::metadata_voter_count;

    #[test]
    fn voters_stay_odd_past_two_and_stop_at_five() {
        let counts: Vec<usize> = (1..=8).map(metadata_voter_count).collect();
        assert_eq!(counts, [1, 2, 3, 3, 5, 5, 5, 5]);
    }
}

/// A metadata copy's applied entry, role, leader and membership, to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMark {
    applied: Option<openraft::LogId<u64>>,
    leader: Option<u64>,
    state: ServerState,
    membership: Option<openraft::LogId<u64>>,
}

impl MetaMark {
    fn of(m: &openraft::RaftMetrics<u64, BasicNode>) -> MetaMark {
        MetaMark {
            applied: m.last_applied,
            leader: m.current_leader,
            state: m.state,
            membership: *m.membership_config.log_id(),
        }
    }
}
