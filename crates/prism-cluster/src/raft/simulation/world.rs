//! One seeded run: the nodes, their groups, the faults, the writes and their outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use prism_core::log::durable::CrashImage;
use prism_core::log::{OpenOptions, ShardLog};
use prism_core::shard::Op;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::check::{Checker, CopyView};
use super::model::ShardModel;
use super::net::{ChaosNetwork, Faults};
use crate::metadata::{MetaCommand, MetadataState, NodeInfo, NodeState};
use crate::raft::liveness::{raft_config, watch};
use crate::raft::log_store::{reconcile, LogStore};
use crate::raft::network::{GroupNetwork, RaftHost};
use crate::raft::proposal::{propose, Proposed};
use crate::raft::quiescence::Timing;
use crate::raft::state_machine::{MemoryStateMachine, StateReader};
use crate::raft::types::{seed_this_thread, MetaRaft, Node, ShardRaft, ShardWrite};
use crate::rpc::{GroupId, NodeId};

const QUORUM_WINDOW: Duration = Duration::from_millis(1000);
const PROPOSAL_DEADLINE: Duration = Duration::from_secs(2);
/// How long the healed cluster may take to converge.
const CONVERGENCE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a seed did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub nodes: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    pub crashes: u64,
    pub all_down: u64,
    pub partitions: u64,
    pub snapshot_installs: u64,
    pub messages: u64,
    /// The run's events and final state, to compare replays.
    pub trace: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Totals {
    pub seeds: u64,
    pub five_nodes: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    pub crashes: u64,
    pub all_down: u64,
    pub partitions: u64,
    pub snapshot_installs: u64,
    pub messages: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Outcome) {
        self.seeds += 1;
        self.five_nodes += u64::from(o.nodes == 5);
        self.acknowledged += o.acknowledged;
        self.refused += o.refused;
        self.unknown += o.unknown;
        self.crashes += o.crashes;
        self.all_down += o.all_down;
        self.partitions += o.partitions;
        self.snapshot_installs += o.snapshot_installs;
        self.messages += o.messages;
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} seeds ({} of 5 nodes, the rest of 3); writes acknowledged {}, refused {}, unknown {}; crashes {} (all nodes at once {}); partitions {}; snapshot installs {}; messages {}",
            self.seeds,
            self.five_nodes,
            self.acknowledged,
            self.refused,
            self.unknown,
            self.crashes,
            self.all_down,
            self.partitions,
            self.snapshot_installs,
            self.messages
        )
    }
}

/// Runs seed `seed` for `chaos` of simulated time, then heals and checks.
pub fn run(seed: u64, chaos: Duration) -> Result<Outcome, Violation> {
    if let Ok(filter) = std::env::var("PRISM_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    seed_this_thread(seed);
    runtime.block_on(async move {
        let mut world = World::start(seed).await?;
        let outcome = world.run(chaos).await;
        world.stop().await;
        outcome
    })
}

fn name(id: u64) -> NodeId {
    format!("n{id}")
}

fn group_dir(group: &GroupId) -> String {
    if group.is_metadata() {
        "metadata".into()
    } else {
        format!("{}-{}-{}", group.collection, group.shard, group.generation)
    }
}

/// The nodes' liveness clock: slower than production's, as the chaotic network is.
const TIMING: Timing = Timing {
    ping_interval: Duration::from_millis(200),
    suspect_after: Duration::from_millis(1000),
    idle_after: Duration::from_millis(1000),
    election_spread: Duration::from_millis(300),
    election_retry: Duration::from_millis(1000),
};

fn config() -> Arc<Config> {
    let base = Config {
        install_snapshot_timeout: 1000,
        // Snapshot often and keep no log behind it, so that a copy that was away needs a
        // snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(12),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(
        raft_config(&TIMING, base)
            .validate()
            .expect("a valid config"),
    )
}

#[derive(Clone)]
enum GroupRaft {
    Meta(Raft<MetaRaft>, Arc<StateReader<MetadataState>>),
    Shard(Raft<ShardRaft>, Arc<StateReader<ShardModel>>),
}

impl GroupRaft {
    fn metrics(&self) -> RaftMetrics<u64, Node> {
        match self {
            GroupRaft::Meta(raft, _) => raft.metrics().borrow().clone(),
            GroupRaft::Shard(raft, _) => raft.metrics().borrow().clone(),
        }
    }

    /// (applied log id, content checksum, snapshots installed, the keys written).
    fn state(&self) -> (Option<(u64, u64)>, u64, u64, BTreeSet<String>) {
        match self {
            GroupRaft::Meta(_, reader) => {
                let view = reader.read();
                let keys = view.state.config.keys().cloned().collect();
                (view.applied, view.state.checksum(), view.installs, keys)
            }
            GroupRaft::Shard(_, reader) => {
                use crate::raft::state_machine::Replicated;
                let view = reader.read();
                let keys = view.state.docs.keys().cloned().collect();
                (view.applied, view.state.checksum(), view.installs, keys)
            }
        }
    }

    async fn shutdown(&self) {
        let _ = match self {
            GroupRaft::Meta(raft, _) => raft.shutdown().await,
            GroupRaft::Shard(raft, _) => raft.shutdown().await,
        };
    }

    async fn initialize(&self, members: &[u64]) -> Result<(), String> {
        let members: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|id| (*id, BasicNode::new(name(*id))))
            .collect();
        match self {
            GroupRaft::Meta(raft, _) => raft.initialize(members).await,
            GroupRaft::Shard(raft, _) => raft.initialize(members).await,
        }
        .map_err(|e| e.to_string())
    }
}

struct Copy {
    raft: GroupRaft,
    log: Arc<ShardLog>,
}

struct Running {
    host: Arc<RaftHost>,
    copies: BTreeMap<GroupId, Copy>,
    /// The node's liveness driver (`raft::liveness`), stopped with the node.
    liveness: Option<tokio::task::AbortHandle>,
}

struct SimNode {
    root: PathBuf,
    image: Arc<CrashImage>,
    running: Option<Running>,
    /// Snapshot installs of earlier incarnations.
    installs: u64,
}

/// A write and what became of it.
#[derive(Debug, Clone)]
enum Fate {
    Pending,
    Acknowledged { term: u64, index: u64 },
    Refused,
    Unknown,
}

#[derive(Default)]
struct History {
    writes: BTreeMap<GroupId, Vec<(String, Fate)>>,
}

struct World {
    rng: StdRng,
    net: ChaosNetwork,
    nodes: BTreeMap<u64, SimNode>,
    /// Every group and the nodes of its copies.
    groups: BTreeMap<GroupId, Vec<u64>>,
    history: Arc<Mutex<History>>,
    checker: Checker,
    outcome: Outcome,
    next_key: u64,
    started: Instant,
    _root: tempfile::TempDir,
}

impl World {
    async fn start(seed: u64) -> Result<World, Violation> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_5157);
        let nodes_count = if rng.gen_bool(0.5) { 3 } else { 5 };
        let net = ChaosNetwork::new(StdRng::seed_from_u64(rng.gen()));
        // tmpfs: the crash image keys files by inode, which tmpfs never reuses.
        let root = tempfile::tempdir_in("/dev/shm").expect("a directory on tmpfs");
        let mut nodes = BTreeMap::new();
        for id in 1..=nodes_count {
            let node_root = root.path().join(name(id));
            std::fs::create_dir_all(&node_root).expect("node directory");
            nodes.insert(
                id,
                SimNode {
                    image: CrashImage::watch(&node_root).expect("watch the node"),
                    root: node_root,
                    running: None,
                    installs: 0,
                },
            );
        }
        let mut world = World {
            rng,
            net,
            nodes,
            groups: BTreeMap::new(),
            history: Arc::default(),
            checker: Checker::default(),
            outcome: Outcome {
                nodes: nodes_count,
                ..Outcome::default()
            },
            next_key: 0,
            started: Instant::now(),
            _root: root,
        };
        world.trace(format!("{nodes_count} nodes"));
        let all: Vec<u64> = (1..=nodes_count).collect();
        world.groups.insert(GroupId::metadata(), all.clone());
        for id in &all {
            world.boot(*id).await?;
        }
        world.create_group(&GroupId::metadata(), &all).await?;
        // The metadata learns the nodes and places two collections.
        let mut commands: Vec<MetaCommand> = all
            .iter()
            .map(|id| {
                MetaCommand::AddNode(NodeInfo {
                    id: *id,
                    name: name(*id),
                    address: name(*id),
                    zone: None,
                    rack: None,
                    region: None,
                    state: NodeState::Active,
                })
            })
            .collect();
        for collection in ["a", "b"] {
            commands.push(MetaCommand::CreateCollection {
                name: collection.into(),
                schema: "{}".into(),
                shards: 3,
                replication: 3,
            });
        }
        for command in commands {
            world.commit_meta(command).await?;
        }
        let metadata = world.metadata_leader_state().await?;
        for (collection, meta) in &metadata.collections {
            for (shard, copies) in meta.shards.iter().enumerate() {
                let group = GroupId::shard(collection, shard as u32, meta.generation);
                let members: Vec<u64> = copies.iter().map(|c| c.node).collect();
                world.groups.insert(group.clone(), members.clone());
                for id in &members {
                    world.open_copy(*id, &group).await?;
                }
                world.create_group(&group, &members).await?;
            }
        }
        world.trace(format!("groups {:?}", world.groups));
        Ok(world)
    }

    fn trace(&mut self, event: String) {
        let at = self.started.elapsed().as_millis();
        let line = format!("{at} ms: {event} (messages {})", self.net.delivered());
        if std::env::var_os("PRISM_SIM_TRACE").is_some() {
            eprintln!("{line}");
        }
        self.outcome.trace.push(line);
    }

    /// Starts node `id` with the groups it holds (opening what its disk has).
    async fn boot(&mut self, id: u64) -> Result<(), Violation> {
        let host = Arc::new(RaftHost::new(name(id), self.rng.gen()));
        self.nodes.get_mut(&id).expect("a node").running = Some(Running {
            host: host.clone(),
            copies: BTreeMap::new(),
            liveness: None,
        });
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, members)| members.contains(&id))
            .map(|(g, _)| g.clone())
            .collect();
        for group in groups {
            self.open_copy(id, &group).await?;
        }
        let network = Arc::new(self.net.endpoint(&name(id)));
        let liveness = tokio::spawn(watch(host.clone(), network, TIMING)).abort_handle();
        let running = self.nodes.get_mut(&id).and_then(|n| n.running.as_mut());
        running.expect("the node runs").liveness = Some(liveness);
        self.net.up(&name(id), host);
        Ok(())
    }

    async fn open_copy(&mut self, id: u64, group: &GroupId) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("a node");
        let dir = node.root.join(group_dir(group));
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Violation(format!("node {id} cannot open {what} of {group}: {e}"))
        };
        let (log, _) = ShardLog::open(
            &dir.join("log"),
            OpenOptions {
                segment_bytes: 4096,
                truncate_corrupt: false,
            },
        )
        .map_err(|e| failed("the log", &e))?;
        let log = Arc::new(log);
        let network = Arc::new(self.net.endpoint(&name(id)));
        let snapshots_dir = dir.join("snapshots");
        let running = node.running.as_mut().expect("the node runs");
        let host = &running.host;
        let raft = if group.is_metadata() {
            let (raft, reader) = start_group::<MetaRaft, MetadataState>(
                id,
                group,
                &log,
                network,
                snapshots_dir,
                host,
            )
            .await
            .map_err(|e| failed("the group", &e))?;
            GroupRaft::Meta(raft, reader)
        } else {
            let (raft, reader) =
                start_group::<ShardRaft, ShardModel>(id, group, &log, network, snapshots_dir, host)
                    .await
                    .map_err(|e| failed("the group", &e))?;
            GroupRaft::Shard(raft, reader)
        };
        running.copies.insert(group.clone(), Copy { raft, log });
        Ok(())
    }

    /// Initializes a new group from its first member, its intended leader.
    async fn create_group(&mut self, group: &GroupId, members: &[u64]) -> Result<(), Violation> {
        let copy = self.copy(members[0], group).expect("the first member runs");
        copy.initialize(members)
            .await
            .map_err(|e| Violation(format!("{group} cannot be initialized: {e}")))
    }

    fn copy(&self, node: u64, group: &GroupId) -> Option<GroupRaft> {
        let running = self.nodes.get(&node)?.running.as_ref()?;
        running.copies.get(group).map(|c| c.raft.clone())
    }

    /// The copy that leads `group` in the highest term, among running nodes.
    fn leader(&self, group: &GroupId) -> Option<GroupRaft> {
        self.groups[group]
            .iter()
            .filter_map(|id| self.copy(*id, group))
            .map(|raft| (raft.metrics(), raft))
            .filter(|(m, _)| m.state == ServerState::Leader)
            .max_by_key(|(m, _)| m.current_term)
            .map(|(_, raft)| raft)
    }

    /// Commits a metadata command before any fault: retried until acknowledged.
    async fn commit_meta(&mut self, command: MetaCommand) -> Result<(), Violation> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(GroupRaft::Meta(raft, _)) = self.leader(&GroupId::metadata()) {
                let proposed =
                    propose(&raft, command.clone(), QUORUM_WINDOW, PROPOSAL_DEADLINE).await;
                if let Proposed::Committed { .. } = proposed {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Violation(format!(
            "the metadata group never committed {command:?} on a healthy network"
        )))
    }

    async fn metadata_leader_state(&self) -> Result<MetadataState, Violation> {
        match self.leader(&GroupId::metadata()) {
            Some(GroupRaft::Meta(_, reader)) => Ok(reader.read().state),
            _ => Err(Violation("no metadata leader".into())),
        }
    }

    /// Starts one write to `group` through its leader of the moment, in a task of its own.
    fn write(&mut self, group: GroupId) {
        let Some(leader) = self.leader(&group) else {
            return;
        };
        self.next_key += 1;
        let key = format!("k{}", self.next_key);
        let history = self.history.clone();
        let index = {
            let mut history = history.lock();
            let writes = history.writes.entry(group.clone()).or_default();
            writes.push((key.clone(), Fate::Pending));
            writes.len() - 1
        };
        let settle = move |fate: Fate| {
            history.lock().writes.get_mut(&group).expect("recorded")[index].1 = fate;
        };
        tokio::spawn(async move {
            let fate = match leader {
                GroupRaft::Meta(raft, _) => {
                    let command = MetaCommand::UpdateConfig {
                        key,
                        value: "v".into(),
                    };
                    fate(propose(&raft, command, QUORUM_WINDOW, PROPOSAL_DEADLINE).await)
                }
                GroupRaft::Shard(raft, _) => {
                    let write = ShardWrite {
                        ops: vec![Op::Upsert(Arc::new(
                            super::super::tests::schema()
                                .prepare_document(serde_json::json!({
                                    "id": key,
                                    "fields": {"title": "a fox", "emb": [1.0, 0.5, 0.25, 2.0]},
                                }))
                                .expect("a valid document"),
                        ))],
                    };
                    fate(propose(&raft, write, QUORUM_WINDOW, PROPOSAL_DEADLINE).await)
                }
            };
            settle(fate);
        });
    }

    async fn crash(&mut self, id: u64) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&id).expect("a node");
        let Some(running) = node.running.take() else {
            return Ok(());
        };
        // The power fails now: what is durable at this instant is what survives, and nothing
        // the node sends from now on gets out.
        let frozen = node.image.freeze();
        self.net.down(&name(id));
        running.liveness.iter().for_each(|l| l.abort());
        for (group, copy) in &running.copies {
            node.installs += copy.raft.state().2;
            copy.raft.shutdown().await;
            running.host.remove(group);
        }
        drop(running);
        // Whatever the stopped tasks still had to finish runs now; it is lost with the rest.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        // Of what the node appended after its last fsync, a seeded part may have reached the
        // disk anyway: a torn tail the log must cut (it was never acknowledged).
        let rng = &mut self.rng;
        let mut pick = |unsynced: usize| {
            if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(0..=unsynced)
            }
        };
        node.image
            .crash_torn_to(frozen, &mut pick)
            .map_err(|e| Violation(format!("node {id} cannot be crashed: {e}")))?;
        self.outcome.crashes += 1;
        Ok(())
    }

    fn up_nodes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn down_nodes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.running.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// One random step of the chaos phase.
    async fn step(&mut self) -> Result<(), Violation> {
        let groups: Vec<GroupId> = self.groups.keys().cloned().collect();
        let action = self.rng.gen_range(0..100);
        match action {
            0..=59 => {
                let group = groups[self.rng.gen_range(0..groups.len())].clone();
                self.write(group);
            }
            60..=63 => {
                let up = self.up_nodes();
                if !up.is_empty() {
                    let id = up[self.rng.gen_range(0..up.len())];
                    self.trace(format!("crash n{id}"));
                    self.crash(id).await?;
                }
            }
            64 => {
                // Power loss of every node at once: only fsynced bytes survive anywhere.
                self.trace("crash all".into());
                for id in self.up_nodes() {
                    self.crash(id).await?;
                }
                self.outcome.all_down += 1;
            }
            65..=79 => {
                let down = self.down_nodes();
                if !down.is_empty() {
                    let id = down[self.rng.gen_range(0..down.len())];
                    self.trace(format!("restart n{id}"));
                    self.boot(id).await?;
                }
            }
            80..=86 => {
                let all: Vec<NodeId> = self.nodes.keys().map(|id| name(*id)).collect();
                let size = self.rng.gen_range(1..=all.len() / 2);
                let mut side = all.clone();
                while side.len() > size {
                    side.remove(self.rng.gen_range(0..side.len()));
                }
                self.trace(format!("partition {side:?}"));
                self.net.partition(&side, &all);
                self.outcome.partitions += 1;
            }
            87..=93 => {
                self.trace("heal".into());
                self.net.heal();
            }
            _ => {
                let faults = Faults {
                    loss: self.rng.gen_range(0.0..0.1),
                    duplicate: self.rng.gen_range(0.0..0.05),
                    max_delay: Duration::from_millis(self.rng.gen_range(1..40)),
                };
                self.trace(format!("faults {faults:?}"));
                self.net.set_faults(faults);
            }
        }
        Ok(())
    }

    /// Acknowledged writes of `group`, as (term, index).
    fn acknowledged(&self, group: &GroupId) -> Vec<(u64, u64)> {
        let history = self.history.lock();
        history
            .writes
            .get(group)
            .map(|writes| {
                writes
                    .iter()
                    .filter_map(|(_, fate)| match fate {
                        Fate::Acknowledged { term, index } => Some((*term, *index)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn views(&self, group: &GroupId) -> Vec<CopyView> {
        self.groups[group]
            .iter()
            .filter_map(|id| {
                let running = self.nodes[id].running.as_ref()?;
                let copy = running.copies.get(group)?;
                let metrics = copy.raft.metrics();
                let (applied, checksum, _, _) = copy.raft.state();
                Some(CopyView {
                    node: *id,
                    leader: metrics.state == ServerState::Leader,
                    term: metrics.current_term,
                    applied,
                    checksum,
                    log: copy.log.clone(),
                })
            })
            .collect()
    }

    fn check(&mut self) -> Result<(), Violation> {
        let groups: Vec<GroupId> = self.groups.keys().cloned().collect();
        for group in groups {
            let views = self.views(&group);
            let acknowledged = self.acknowledged(&group);
            self.checker
                .check(&group, &views, &acknowledged)
                .map_err(Violation)?;
        }
        Ok(())
    }

    async fn run(&mut self, chaos: Duration) -> Result<Outcome, Violation> {
        let end = Instant::now() + chaos;
        while Instant::now() < end {
            let pause = self.rng.gen_range(10..150);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            self.step().await?;
            self.check()?;
        }
        // Heal everything and bring every node back.
        self.trace("heal all".into());
        self.net.heal();
        self.net.set_faults(Faults::NONE);
        for id in self.down_nodes() {
            self.boot(id).await?;
        }
        // Writes still in flight settle (each has its deadline).
        tokio::time::sleep(PROPOSAL_DEADLINE + Duration::from_millis(500)).await;
        self.converge().await?;
        self.final_check()?;
        self.outcome.messages = self.net.delivered();
        let history = self.history.lock();
        for writes in history.writes.values() {
            for (_, fate) in writes {
                match fate {
                    Fate::Acknowledged { .. } => self.outcome.acknowledged += 1,
                    Fate::Refused => self.outcome.refused += 1,
                    Fate::Unknown | Fate::Pending => self.outcome.unknown += 1,
                }
            }
        }
        drop(history);
        Ok(std::mem::take(&mut self.outcome))
    }

    /// Waits until every group has a leader and every copy applied the leader's last entry.
    async fn converge(&mut self) -> Result<(), Violation> {
        let deadline = Instant::now() + CONVERGENCE;
        loop {
            self.check()?;
            let lagging: Vec<String> = self
                .groups
                .keys()
                .filter(|group| !self.converged(group))
                .map(|g| g.to_string())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut detail = Vec::new();
                for (group, members) in &self.groups {
                    if self.converged(group) {
                        continue;
                    }
                    for id in members {
                        if let Some(copy) = self.copy(*id, group) {
                            let m = copy.metrics();
                            detail.push(format!(
                                "{group} n{id}: {:?} term {} last log {:?} applied {:?} running {:?}",
                                m.state, m.current_term, m.last_log_index, m.last_applied, m.running_state
                            ));
                        }
                    }
                }
                return Err(Violation(format!(
                    "groups {lagging:?} did not converge within {CONVERGENCE:?} of a healed network: {detail:#?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn converged(&self, group: &GroupId) -> bool {
        let Some(leader) = self.leader(group) else {
            return false;
        };
        let lead = leader.metrics();
        let Some(last) = lead.last_log_index else {
            return false;
        };
        self.groups[group].iter().all(|id| {
            self.copy(*id, group).is_some_and(|copy| {
                let m = copy.metrics();
                m.last_applied.map(|l| l.index) == Some(last) && m.current_term == lead.current_term
            })
        })
    }

    /// Every copy holds the same content; every acknowledged write is there, no refused one.
    fn final_check(&mut self) -> Result<(), Violation> {
        let history = self.history.lock().writes.clone();
        let groups: Vec<GroupId> = self.groups.keys().cloned().collect();
        for group in groups {
            let mut sums = BTreeSet::new();
            for id in self.groups[&group].clone() {
                let copy = self.copy(id, &group).expect("every node runs");
                let (applied, checksum, _, keys) = copy.state();
                sums.insert(checksum);
                for (key, fate) in history.get(&group).into_iter().flatten() {
                    match fate {
                        Fate::Acknowledged { term, index } if !keys.contains(key) => {
                            return Err(Violation(format!(
                                "{group}: the write {key}, acknowledged at ({term}, {index}), is missing on node {id} (applied {applied:?})"
                            )));
                        }
                        Fate::Refused if keys.contains(key) => {
                            return Err(Violation(format!(
                                "{group}: the write {key} was refused, yet node {id} applied it"
                            )));
                        }
                        _ => {}
                    }
                }
            }
            if sums.len() != 1 {
                return Err(Violation(format!(
                    "{group}: copies hold different content at the same applied entry: {sums:x?}"
                )));
            }
            let sum = *sums.first().expect("one");
            self.trace(format!("{group} checksum {sum:x}"));
        }
        let installs: u64 = self
            .nodes
            .values()
            .map(|node| {
                node.installs
                    + node.running.as_ref().map_or(0, |r| {
                        r.copies.values().map(|c| c.raft.state().2).sum::<u64>()
                    })
            })
            .sum();
        self.outcome.snapshot_installs = installs;
        Ok(())
    }

    async fn stop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(running) = node.running.take() {
                running.liveness.iter().for_each(|l| l.abort());
                for copy in running.copies.values() {
                    copy.raft.shutdown().await;
                }
            }
        }
    }
}

fn fate<R>(proposed: Proposed<R>) -> Fate {
    match proposed {
        Proposed::Committed { term, index, .. } => Fate::Acknowledged { term, index },
        Proposed::Refused { .. } => Fate::Refused,
        Proposed::Unknown(_) => Fate::Unknown,
    }
}

/// Opens a copy of `group` on node `id` as a cluster node would: the state machine, the log
/// reconciled with it, and the Raft, hosted on the node (whose liveness driver watches it).
async fn start_group<C, S>(
    id: u64,
    group: &GroupId,
    log: &Arc<ShardLog>,
    network: Arc<super::net::Endpoint>,
    snapshots_dir: PathBuf,
    host: &RaftHost,
) -> Result<(Raft<C>, Arc<StateReader<S>>), String>
where
    C: crate::raft::network::GroupConfig
        + openraft::RaftTypeConfig<D = S::Command, R = S::Response>,
    S: crate::raft::state_machine::Replicated,
    S::Command: Send,
    S::Response: Send,
{
    let machine = MemoryStateMachine::<C, S>::open(snapshots_dir).map_err(|e| e.to_string())?;
    let snapshots = machine.snapshots();
    reconcile(log, machine.applied()).map_err(|e| e.to_string())?;
    let reader = Arc::new(machine.reader());
    let raft = Raft::new(
        id,
        config(),
        GroupNetwork::new(network, group.clone()),
        LogStore::new(log.clone()),
        machine,
    )
    .await
    .map_err(|e| e.to_string())?;
    host.add(group.clone(), raft.clone(), snapshots);
    Ok((raft, reader))
}
