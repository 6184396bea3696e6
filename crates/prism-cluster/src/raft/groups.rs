//! A node's shard groups behind one handle that names no openraft type: each group a real
//! shard copy (`ShardStateMachine`) over its own on-disk log, hosted on the node's
//! [`RaftHost`], with the node's liveness driver (`raft::liveness`) or openraft's own timers.
//! Cluster mode and the multi-process benchmarks open groups through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use openraft::{BasicNode, ChangeMembers, Config, Raft};
use parking_lot::Mutex;
use prism_core::log::{OpenOptions, ShardLog};
use prism_core::schema::CollectionSchema;
use prism_core::shard::{Op, Shard, ShardConfig};

use super::liveness::{raft_config, watch};
use super::log_store::{reconcile, LogStore};
use super::metadata_group::MetaGroup;
use super::network::{GroupNetwork, RaftHost};
use super::proposal::{propose, Proposed};
use super::quiescence::{Role, Timing};
use super::state_machine::MetaStateMachine;
use super::state_machine::{GroupDirs, ShardSlot, ShardStateMachine};
use super::types::{ShardRaft, ShardWrite};
use crate::network::Network;
use crate::rpc::{GroupId, NodeId};

/// Who keeps a node's groups alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The node's liveness driver: idle groups go quiet, elections follow node-level pings.
    Quiet(Timing),
    /// openraft's own timers in every group: heartbeats every `heartbeat_ms`, elections after
    /// `election_ms` to twice that.
    Heartbeats { heartbeat_ms: u64, election_ms: u64 },
}

/// What a leader answered when asked for a linearizable read index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadIndex {
    Confirmed(u64),
    /// This copy does not lead (the leader it knows, if any).
    NotLeader {
        leader: Option<u64>,
        why: String,
    },
    /// It leads, but no majority confirmed that in time: it may have been deposed.
    NoQuorum(String),
}

/// One copy's state, as a caller of [`GroupNode`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyState {
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub voters: BTreeSet<u64>,
    /// Members that do not vote.
    pub learners: BTreeSet<u64>,
    /// On a leader: the last index each other member is known to hold.
    pub matched: BTreeMap<u64, Option<u64>>,
    /// The membership in effect is applied here, so a majority committed it.
    pub membership_applied: bool,
    /// Every member's network name.
    pub addresses: BTreeMap<u64, NodeId>,
    /// The copy held nothing (no log, no state) when this process opened it: only then can
    /// it be a group's first copy, to initialize. (Right after a start, openraft's metrics
    /// may not show the log yet.)
    pub opened_empty: bool,
    /// How the copy caught up by snapshot since this process started.
    pub snapshot_catch_up: super::snapshot::SnapshotCatchUp,
}

struct ShardCopy {
    raft: Raft<ShardRaft>,
    shard: ShardSlot,
    opened_empty: bool,
}

/// The shard groups of one node.
pub struct GroupNode {
    id: u64,
    root: PathBuf,
    host: Arc<RaftHost>,
    network: Arc<dyn Network>,
    config: Arc<Config>,
    groups: Mutex<BTreeMap<GroupId, ShardCopy>>,
    liveness: Option<tokio::task::AbortHandle>,
}

fn group_dir(root: &Path, group: &GroupId) -> PathBuf {
    root.join(format!(
        "{}-{}-{}",
        group.collection, group.shard, group.generation
    ))
}

impl GroupNode {
    /// Node `id`, whose `host` answers the network's calls to it, keeping its groups under
    /// `root`. Must run in a tokio runtime; the liveness driver starts here.
    pub fn new(
        id: u64,
        host: Arc<RaftHost>,
        root: &Path,
        network: Arc<dyn Network>,
        liveness: Liveness,
    ) -> Result<GroupNode, String> {
        let config = match liveness {
            Liveness::Quiet(timing) => raft_config(&timing, Config::default()),
            Liveness::Heartbeats {
                heartbeat_ms,
                election_ms,
            } => Config {
                heartbeat_interval: heartbeat_ms,
                election_timeout_min: election_ms,
                election_timeout_max: 2 * election_ms,
                ..Config::default()
            },
        };
        let config = Arc::new(config.validate().map_err(|e| e.to_string())?);
        host.set_raft_id(id);
        let driver = match liveness {
            Liveness::Quiet(timing) => {
                Some(tokio::spawn(watch(host.clone(), network.clone(), timing)).abort_handle())
            }
            Liveness::Heartbeats { .. } => None,
        };
        Ok(GroupNode {
            id,
            root: root.to_path_buf(),
            host,
            network,
            config,
            groups: Mutex::default(),
            liveness: driver,
        })
    }

    /// The host that answers this node's Raft messages and pings: the node's network handler.
    pub fn host(&self) -> Arc<RaftHost> {
        self.host.clone()
    }

    /// Opens this node's copy of `group` (creating it when new), as cluster mode must: the
    /// state machine first, then the log reconciled with it, then the Raft.
    pub async fn open_shard(
        &self,
        group: GroupId,
        schema: Arc<CollectionSchema>,
        shard_config: ShardConfig,
    ) -> Result<(), String> {
        let dirs = GroupDirs::new(&group_dir(&self.root, &group));
        let opened = super::off_workers(move || -> prism_core::Result<_> {
            let machine = ShardStateMachine::open(dirs.clone(), schema, shard_config)?;
            let (log, _) = ShardLog::open(
                &dirs.log(),
                OpenOptions {
                    segment_bytes: 16 << 20,
                    truncate_corrupt: false,
                },
            )?;
            reconcile(&log, machine.applied())?;
            let empty = log.last_log_id().is_none() && machine.applied().is_none();
            Ok((machine, log, empty))
        })
        .await;
        let (machine, log, opened_empty) =
            opened.map_err(|e| format!("cannot open {group}: {e}"))?;
        let shard = machine.shard();
        let snapshots = machine.snapshots();
        let raft = Raft::new(
            self.id,
            self.config.clone(),
            GroupNetwork::new(self.network.clone(), group.clone()),
            LogStore::new(Arc::new(log)),
            machine,
        )
        .await
        .map_err(|e| format!("cannot start the raft of {group}: {e}"))?;
        self.host.add(group.clone(), raft.clone(), snapshots);
        self.groups.lock().insert(
            group,
            ShardCopy {
                raft,
                shard,
                opened_empty,
            },
        );
        Ok(())
    }

    /// Makes `members` (node id and network name) the first membership of `group`, from this
    /// node. The other members need only have opened their copies.
    pub async fn initialize(
        &self,
        group: &GroupId,
        members: &[(u64, NodeId)],
    ) -> Result<(), String> {
        let raft = self.raft(group)?;
        let members: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|(id, name)| (*id, BasicNode::new(name)))
            .collect();
        raft.initialize(members)
            .await
            .map_err(|e| format!("cannot initialize {group}: {e}"))
    }

    /// Opens this node's copy of the metadata group (creating it when new), under
    /// `root/metadata`.
    pub async fn open_metadata(&self) -> Result<MetaGroup, String> {
        let dir = self.root.join("metadata");
        let opened = super::off_workers(move || -> Result<_, String> {
            prism_core::log::create_dir_durable(&dir).map_err(|e| e.to_string())?;
            let machine =
                MetaStateMachine::open(dir.join("snapshots")).map_err(|e| e.to_string())?;
            let (log, _) = ShardLog::open(
                &dir.join("log"),
                OpenOptions {
                    segment_bytes: 16 << 20,
                    truncate_corrupt: false,
                },
            )
            .map_err(|e| e.to_string())?;
            reconcile(&log, machine.applied()).map_err(|e| e.to_string())?;
            // Nothing ever written: this node has yet to bootstrap or join a cluster.
            let fresh = log.last_log_id().is_none() && machine.applied().is_none();
            Ok((machine, log, fresh))
        })
        .await;
        let (machine, log, fresh) =
            opened.map_err(|e| format!("cannot open the metadata group: {e}"))?;
        let snapshots = machine.snapshots();
        let reader = Arc::new(machine.reader());
        let group = GroupId::metadata();
        let raft = Raft::new(
            self.id,
            self.config.clone(),
            GroupNetwork::new(self.network.clone(), group.clone()),
            LogStore::new(Arc::new(log)),
            machine,
        )
        .await
        .map_err(|e| format!("cannot start the metadata raft: {e}"))?;
        self.host.add(group, raft.clone(), snapshots);
        Ok(MetaGroup {
            raft,
            reader,
            fresh,
        })
    }

    /// The ids of the copies `group` has in its membership: (voters, learners).
    pub fn members(&self, group: &GroupId) -> Result<(BTreeSet<u64>, BTreeSet<u64>), String> {
        let raft = self.raft(group)?;
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        Ok((voters, learners))
    }

    /// Makes `voters` the voters of `group` (this node must lead it); a voter left out stays
    /// a learner.
    pub async fn set_voters(
        &self,
        group: &GroupId,
        voters: BTreeSet<u64>,
        timeout: Duration,
    ) -> Result<(), String> {
        self.change_membership(
            group,
            ChangeMembers::ReplaceAllVoters(voters),
            true,
            timeout,
        )
        .await
    }

    /// Removes `nodes`, which must not be voters, from `group` (this node must lead it).
    pub async fn remove_members(
        &self,
        group: &GroupId,
        nodes: BTreeSet<u64>,
        timeout: Duration,
    ) -> Result<(), String> {
        self.change_membership(group, ChangeMembers::RemoveNodes(nodes), false, timeout)
            .await
    }

    async fn change_membership(
        &self,
        group: &GroupId,
        change: ChangeMembers<u64, BasicNode>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let raft = self.raft(group)?;
        tokio::time::timeout(timeout, raft.change_membership(change, retain))
            .await
            .map_err(|_| format!("the membership of {group} did not change within {timeout:?}"))?
            .map(|_| ())
            .map_err(|e| format!("cannot change the membership of {group}: {e}"))
    }

    /// Starts an election on this node's copy of `group`.
    pub async fn elect(&self, group: &GroupId) -> Result<(), String> {
        self.raft(group)?
            .trigger()
            .elect()
            .await
            .map_err(|e| format!("cannot start an election in {group}: {e}"))
    }

    /// The linearizable read index of `group`, whose copy here must lead it: openraft sends
    /// a heartbeat to every voter and answers once a majority confirmed this leadership.
    /// A read that waits until its copy applied the index sees every write committed before
    /// the read began.
    pub async fn read_index(&self, group: &GroupId, within: Duration) -> ReadIndex {
        let raft = match self.raft(group) {
            Ok(raft) => raft,
            Err(why) => return ReadIndex::NotLeader { leader: None, why },
        };
        match tokio::time::timeout(within, raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => ReadIndex::Confirmed(read.map_or(0, |id| id.index)),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
            ))) => ReadIndex::NotLeader {
                leader: forward.leader_id,
                why: format!("this copy of {group} does not lead it"),
            },
            Ok(Err(e)) => ReadIndex::NoQuorum(format!(
                "the leader of {group} could not confirm its leadership with a majority: {e}"
            )),
            Err(_) => ReadIndex::NoQuorum(format!(
                "the leader of {group} could not confirm its leadership with a majority within \
                 {} ms",
                within.as_millis()
            )),
        }
    }

    /// Waits until this node's copy of `group` has applied log index `index`, up to
    /// `within`; answers the index it applied, or why it did not get there.
    pub async fn wait_applied(
        &self,
        group: &GroupId,
        index: u64,
        within: Duration,
    ) -> Result<u64, String> {
        let mut metrics = self.raft(group)?.metrics();
        let waited = tokio::time::timeout(within, async {
            loop {
                let applied = metrics
                    .borrow_and_update()
                    .last_applied
                    .map_or(0, |id| id.index);
                if applied >= index {
                    return Ok(applied);
                }
                if metrics.changed().await.is_err() {
                    return Err(format!("the copy of {group} closed"));
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            let applied = metrics.borrow().last_applied.map_or(0, |id| id.index);
            Err(format!(
                "this copy of {group} applied index {applied}, not {index}, within {} ms",
                within.as_millis()
            ))
        })
    }

    /// Closes this node's copy of `group` and deletes its files: the copy was removed from
    /// the group, or its collection deleted.
    pub async fn drop_copy(&self, group: &GroupId) -> Result<(), String> {
        let copy = self.groups.lock().remove(group);
        let Some(copy) = copy else {
            return Ok(());
        };
        self.host.remove(group);
        let _ = copy.raft.shutdown().await;
        let shard = copy.shard.current();
        drop(copy);
        let dir = group_dir(&self.root, group);
        super::off_workers(move || -> Result<(), String> {
            shard.close_for_delete().map_err(|e| e.to_string())?;
            drop(shard);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot delete {}: {e}", dir.display())),
            }
        })
        .await
    }

    /// The groups this node holds a copy of.
    pub fn hosted(&self) -> BTreeSet<GroupId> {
        self.groups.lock().keys().cloned().collect()
    }

    /// Proposes `ops` to this node's copy of `group`, which must lead it.
    pub async fn write(
        &self,
        group: &GroupId,
        ops: Vec<Op>,
        quorum_window: Duration,
        deadline: Duration,
    ) -> Proposed<()> {
        match self.raft(group) {
            Ok(raft) => propose(&raft, ShardWrite { ops }, quorum_window, deadline).await,
            Err(why) => Proposed::Refused { why, leader: None },
        }
    }

    /// Takes a snapshot of this node's copy of `group` and purges its log up to it, so that a
    /// copy that joins later can only catch up from the snapshot. Returns the snapshot's
    /// index.
    pub async fn snapshot_and_purge(&self, group: &GroupId) -> Result<u64, String> {
        let raft = self.raft(group)?;
        let applied = raft
            .metrics()
            .borrow()
            .last_applied
            .map(|id| id.index)
            .ok_or_else(|| format!("{group} has applied nothing to snapshot"))?;
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| format!("cannot snapshot {group}: {e}"))?;
        let snapshot = raft
            .wait(Some(Duration::from_secs(600)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "the snapshot is built",
            )
            .await
            .map_err(|e| format!("the snapshot of {group} was not built: {e}"))?
            .snapshot
            .map_or(applied, |s| s.index);
        raft.trigger()
            .purge_log(snapshot)
            .await
            .map_err(|e| format!("cannot purge the log of {group}: {e}"))?;
        raft.wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= snapshot),
                "the log is purged",
            )
            .await
            .map_err(|e| format!("the log of {group} was not purged: {e}"))?;
        Ok(snapshot)
    }

    /// Adds node `id`, at network name `name`, to `group` as a learner. With `blocking`,
    /// returns once it holds the leader's log (after a snapshot, if it must).
    pub async fn add_learner(
        &self,
        group: &GroupId,
        id: u64,
        name: NodeId,
        blocking: bool,
    ) -> Result<(), String> {
        self.raft(group)?
            .add_learner(id, BasicNode::new(name), blocking)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot add node {id} to {group}: {e}"))
    }

    /// Every copy this node holds and its state.
    pub fn states(&self) -> BTreeMap<GroupId, CopyState> {
        let empty: BTreeSet<GroupId> = self
            .groups
            .lock()
            .iter()
            .filter(|(_, c)| c.opened_empty)
            .map(|(g, _)| g.clone())
            .collect();
        self.host
            .copies()
            .into_iter()
            .map(|(group, copy)| {
                let (view, addresses) = copy.view(&group);
                let voters: BTreeSet<u64> = view.voters.iter().copied().collect();
                let state = CopyState {
                    role: view.role,
                    term: view.term,
                    leader: view.leader,
                    last_log: view.last_log,
                    applied: view.applied,
                    learners: addresses
                        .keys()
                        .copied()
                        .filter(|id| !voters.contains(id))
                        .collect(),
                    voters,
                    matched: view.matched,
                    membership_applied: view.applied >= view.membership_at,
                    addresses,
                    opened_empty: empty.contains(&group),
                    snapshot_catch_up: copy.snapshot_catch_up(),
                };
                (group, state)
            })
            .collect()
    }

    /// This node's copy of `group`, for reads.
    pub fn shard(&self, group: &GroupId) -> Option<Arc<Shard>> {
        self.groups.lock().get(group).map(|c| c.shard.current())
    }

    fn raft(&self, group: &GroupId) -> Result<Raft<ShardRaft>, String> {
        self.groups
            .lock()
            .get(group)
            .map(|c| c.raft.clone())
            .ok_or_else(|| format!("no copy of {group} on node {}", self.id))
    }

    /// Stops the liveness driver and every group.
    pub async fn shutdown(&self) {
        if let Some(driver) = &self.liveness {
            driver.abort();
        }
        let copies: Vec<(GroupId, ShardCopy)> = std::mem::take(&mut *self.groups.lock())
            .into_iter()
            .collect();
        for (group, copy) in copies {
            self.host.remove(&group);
            let _ = copy.raft.shutdown().await;
        }
    }
}
