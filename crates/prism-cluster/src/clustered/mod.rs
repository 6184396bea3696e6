//! Cluster mode (Layer 3) on one node: the metadata group every node holds a copy of, the
//! shard groups the metadata places here, joining a cluster, writes routed to each shard's
//! leader and acknowledged once a majority committed them, and reads from one copy per shard
//! with a retry on another. The decisions are pure (`plan`, `writes`); this module carries
//! them out over the node's [`GroupNode`] and its [`Network`].

pub mod consistency;
pub mod plan;
pub mod replication_lag;
pub mod writes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use parking_lot::Mutex;
use prism_core::engine::Engine;
use prism_core::schema::CollectionSchema;
use prism_core::search::SearchRequest;
use prism_core::shard::{Op, ShardConfig};
use tokio::time::Instant;

use crate::config::QueryConfig;
use crate::coordinator::{Coordinator, FederatedSearch, RpcShardClient, SearchError, ShardCopy};
use crate::metadata::{
    CollectionMeta, MetaCommand, MetaResponse, MetadataState, NodeInfo, NodeState,
};
use crate::network::{Handler, Network};
use crate::node::EngineHandler;
use crate::raft::groups::{CopyState, GroupNode, Liveness, ReadIndex};
use crate::raft::metadata_group::{metadata_voter_count, MetaGroup, MetaRole, MetaView};
use crate::raft::network::RaftHost;
use crate::raft::proposal::Proposed;
use crate::raft::quiescence::{Role, Timing};
use crate::rpc::{Answer, CopyReport, Envelope, GroupId, Json, NodeId, Reply, Request, RpcError};
use consistency::{fresh_enough, read_allowed_in_partition, ReadConsistency, ReadLevel};
use plan::{plan, LocalCopy, Step, PROMOTE_WITHIN};
use writes::{reaches_majority, split_by_shard, verdict, ShardOutcome, WriteVerdict};

/// How one node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's name (`--node-id`), which its certificate names.
    pub name: String,
    /// The QUIC address other nodes reach it at.
    pub address: String,
    /// Addresses of nodes to join through (`--peers`).
    pub peers: Vec<String>,
    /// Start a new cluster with this node alone, unless it belongs to one already.
    pub bootstrap: bool,
    /// Where the metadata and the shard copies live.
    pub root: PathBuf,
    pub shard: ShardConfig,
    /// Bound of every write and metadata change (`request_timeout_ms`).
    pub request_timeout: Duration,
    pub query: QueryConfig,
    pub timing: Timing,
    /// `[cluster.consistency] allow_stale_reads`: whether a node in a minority partition
    /// serves reads that may be stale.
    pub allow_stale_reads: bool,
}

/// A node's Raft id: its name and the incarnation drawn when its data directory was first
/// used. A node whose disk was wiped comes back under a new id, so it never votes with a
/// former self's promises it no longer holds; its name stays taken until the old node is
/// removed.
pub fn node_id_of(name: &str, incarnation: u64) -> u64 {
    let mut bytes = name.as_bytes().to_vec();
    bytes.extend_from_slice(&incarnation.to_le_bytes());
    (xxhash_rust::xxh3::xxh3_64(&bytes) >> 1).max(1)
}

/// The file under the cluster root that names the node and its incarnation.
const IDENTITY_FILE: &str = "NODE";

/// Written when this node bootstraps a cluster: its single-node collections are to be
/// migrated (each done once `migrated/<name>` exists).
const MIGRATION_PENDING: &str = "MIGRATE-SINGLE-NODE";

/// This data directory's node id: read from `root/NODE`, or drawn and written durably on its
/// first start. A directory that belongs to another name is refused.
fn load_or_create_id(root: &std::path::Path, name: &str) -> Result<u64, String> {
    let path = root.join(IDENTITY_FILE);
    // A node whose metadata is gone holds none of the promises its id made (votes, entries):
    // it must not come back under that id.
    let metadata_lost = !root.join("metadata").exists();
    match std::fs::read_to_string(&path) {
        Ok(text) if metadata_lost => {
            tracing::warn!(file = %path.display(), was = %text.trim(), "this node's metadata is gone: it takes a new id, and its name must be freed (DELETE /cluster/nodes/<name>) before it can join again");
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
            load_or_create_id(root, name)
        }
        Ok(text) => {
            let (stored, incarnation) = text
                .trim()
                .rsplit_once(' ')
                .and_then(|(n, i)| Some((n, i.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("{} is damaged: {text:?}", path.display()))?;
            if stored != name {
                return Err(format!(
                    "this data directory belongs to node {stored:?}, not {name:?}: start it with --node-id {stored}, or give {name} its own --data-dir"
                ));
            }
            Ok(node_id_of(name, incarnation))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let incarnation: u64 = rand::random();
            prism_core::log::create_dir_durable(root).map_err(|e| e.to_string())?;
            prism_core::log::write_atomically(&path, format!("{name} {incarnation}\n").as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(node_id_of(name, incarnation))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// How long a leader may have gone without hearing from a majority before a proposal asks
/// one first (see `raft::proposal`).
const QUORUM_WINDOW: Duration = Duration::from_millis(1000);

/// A node that has not answered pings for this long is dead rather than suspect.
const DEAD_AFTER: Duration = Duration::from_secs(5);

/// How long `POST /cluster/election` waits for the asked node to win before it asks again:
/// past a follower's lease on the old leader and an election round.
const ELECTION_SETTLES: Duration = Duration::from_millis(1200);

/// How many elections `POST /cluster/election` starts on the asked node at most.
const ELECTION_ATTEMPTS: u32 = 3;

/// How long an election asked of a copy waits for it to hold its leader's whole log before
/// refusing (spec 004's promotion barrier).
const PROMOTION_BARRIER: Duration = Duration::from_secs(2);

/// How long a leader waits between two attempts to hand a group over: an attempt that
/// fails still raises the group's term and may depose this leader for a moment.
const HAND_OFF_EVERY: Duration = Duration::from_secs(10);

/// One node of a cluster.
pub struct ClusterNode {
    settings: Settings,
    id: u64,
    host: Arc<RaftHost>,
    groups: Arc<GroupNode>,
    meta: MetaGroup,
    network: Arc<dyn Network>,
    reads: EngineHandler,
    coordinator: Coordinator<RpcShardClient<Arc<dyn Network>>>,
    /// The leader a shard write last found, by group.
    leader_hints: Mutex<HashMap<GroupId, u64>>,
    last_hand_off: Mutex<HashMap<GroupId, Instant>>,
    /// Copies that could not be opened, and why.
    failures: Mutex<BTreeMap<GroupId, String>>,
    suspected_since: Mutex<HashMap<u64, Instant>>,
    /// Each copy's last log index and since when it has not changed.
    log_growth: Mutex<HashMap<GroupId, (Option<u64>, Instant)>>,
    /// Collections being migrated from this node's single-node data: client writes wait, so
    /// that a migrated (older) document never overwrites a newer write.
    migrating: Mutex<BTreeSet<String>>,
    /// By group: when this node's copy last held everything its leader had applied, and
    /// that index (`bounded` reads).
    freshness: Mutex<HashMap<GroupId, (Instant, u64)>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// Answers other nodes' calls for a [`ClusterNode`] that may not be started yet.
#[derive(Default)]
pub struct ClusterHandler {
    node: std::sync::OnceLock<Weak<ClusterNode>>,
}

impl ClusterHandler {
    pub fn serve(&self, node: &Arc<ClusterNode>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

#[async_trait]
impl Handler for ClusterHandler {
    async fn handle(&self, from: NodeId, envelope: Envelope) -> Reply {
        match self.node.get().and_then(Weak::upgrade) {
            Some(node) => node.handle(from, envelope).await,
            None => Err(RpcError::Unavailable(
                "the node is starting its cluster mode".into(),
            )),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Voter => "follower",
        Role::Learner => "learner",
        Role::Stopped => "stopped",
    }
}

/// A node as `/cluster/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub address: String,
    /// leader, follower, learner, candidate, suspect or dead.
    pub state: String,
}

/// `/cluster/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStatus {
    pub leader: Option<String>,
    pub term: u64,
    pub nodes: Vec<NodeStatus>,
    pub healthy: bool,
}

/// What a cluster write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub verdict: WriteVerdict,
    /// Operations per shard, to count the refused documents of a partly refused write.
    pub ops_per_shard: BTreeMap<u32, Vec<String>>,
}

impl ClusterNode {
    /// Starts cluster mode on this node: its metadata copy, then bootstrap or join, then the
    /// loop that keeps its shard copies as the metadata places them. `host` must answer the
    /// network's calls to this node, through a [`ClusterHandler`] served with the result.
    pub async fn start(
        settings: Settings,
        engine: Arc<Engine>,
        host: Arc<RaftHost>,
        network: Arc<dyn Network>,
    ) -> Result<Arc<ClusterNode>, String> {
        let id = {
            let (root, name) = (settings.root.clone(), settings.name.clone());
            tokio::task::spawn_blocking(move || load_or_create_id(&root, &name))
                .await
                .map_err(|e| e.to_string())??
        };
        let groups = Arc::new(GroupNode::new(
            id,
            host.clone(),
            &settings.root,
            network.clone(),
            Liveness::Quiet(settings.timing),
        )?);
        let meta = groups.open_metadata().await?;
        let fresh = !meta.was_member_at_open();
        if fresh && !settings.bootstrap && settings.peers.is_empty() {
            groups.shutdown().await;
            meta.shutdown().await;
            return Err("this node belongs to no cluster yet: start the first node with --bootstrap, and the others with --peers naming a running node".into());
        }
        let node = Arc::new(ClusterNode {
            reads: EngineHandler {
                engine,
                node_id: settings.name.clone(),
                raft: Some(host.clone()),
                groups: Some(groups.clone()),
            },
            coordinator: Coordinator::new(
                RpcShardClient {
                    network: network.clone(),
                },
                settings.query.stats_cache_entries,
            ),
            settings,
            id,
            host,
            groups,
            meta,
            network,
            leader_hints: Mutex::default(),
            last_hand_off: Mutex::default(),
            failures: Mutex::default(),
            suspected_since: Mutex::default(),
            log_growth: Mutex::default(),
            migrating: Mutex::default(),
            freshness: Mutex::default(),
            tasks: Mutex::default(),
        });
        if fresh && node.settings.bootstrap {
            node.meta.bootstrap(id, &node.settings.address).await?;
            tracing::info!(node = %node.settings.name, id, "bootstrapped a new cluster");
        } else if fresh {
            let joining = node.clone();
            let task = tokio::spawn(async move { joining.join().await });
            node.tasks.lock().push(task.abort_handle());
        }
        // Only the node that founds the cluster brings its single-node collections in: a
        // joining node's old collections would overwrite the cluster's newer writes.
        let migration_marker = node.settings.root.join(MIGRATION_PENDING);
        if fresh && node.settings.bootstrap {
            let marker = migration_marker.clone();
            tokio::task::spawn_blocking(move || {
                prism_core::log::write_atomically(
                    &marker,
                    b"the single-node collections of this data directory become the cluster's\n",
                )
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write {}: {e}", migration_marker.display()))?;
        }
        if migration_marker.exists() {
            let migrating = node.clone();
            let task = tokio::spawn(async move { migrating.migrate_local_collections().await });
            node.tasks.lock().push(task.abort_handle());
        }
        let reconciling = Arc::downgrade(&node);
        let task = tokio::spawn(async move { reconcile_loop(reconciling).await });
        node.tasks.lock().push(task.abort_handle());
        Ok(node)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The metadata as this node applied it.
    pub fn metadata(&self) -> MetadataState {
        self.meta.state().0
    }

    pub fn meta_view(&self) -> MetaView {
        self.meta.view()
    }

    /// Every shard copy this node holds, with its Raft state.
    pub fn copy_states(&self) -> BTreeMap<GroupId, CopyState> {
        self.groups
            .states()
            .into_iter()
            .filter(|(g, _)| !g.is_metadata())
            .collect()
    }

    /// Asks the peers in `--peers`, in turn, to add this node, until one does.
    async fn join(self: Arc<Self>) {
        let mut attempts = 0u64;
        loop {
            if self.meta.view().members.contains_key(&self.id) {
                tracing::info!("this node is a member of the cluster's metadata group");
                return;
            }
            for peer in &self.settings.peers {
                let ask = Envelope {
                    group: None,
                    request: Request::Join {
                        id: self.id,
                        name: self.settings.name.clone(),
                        address: self.settings.address.clone(),
                    },
                };
                let answer = tokio::time::timeout(
                    self.settings.request_timeout,
                    self.network.call(peer, ask),
                )
                .await;
                match answer {
                    Ok(Ok(Answer::Joined)) => {
                        tracing::info!(%peer, "joined the cluster");
                        return;
                    }
                    Ok(Ok(other)) => {
                        tracing::warn!(%peer, ?other, "unexpected answer to a join request")
                    }
                    Ok(Err(e)) if attempts.is_multiple_of(10) => {
                        tracing::warn!(%peer, error = %e, "cannot join the cluster through this peer yet; retrying")
                    }
                    Err(_) if attempts.is_multiple_of(10) => {
                        tracing::warn!(%peer, "no answer to the join request; retrying")
                    }
                    _ => {}
                }
            }
            attempts += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Spec 003's path from a single node to a cluster: the collections this node served
    /// alone (`data_dir/collections`) become the cluster's, with their documents, at one
    /// copy per shard on this node; raising the replication factor then copies them to
    /// other nodes. A collection is done once `cluster/migrated/<name>` exists; an
    /// interrupted migration starts again at the next start (upserts by id are idempotent).
    async fn migrate_local_collections(self: Arc<Self>) {
        let engine = self.reads.engine.clone();
        while !engine.recovering().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pending: Vec<_> = engine
            .collections()
            .into_iter()
            .filter(|c| !self.settings.root.join("migrated").join(c.name()).exists())
            .collect();
        self.migrating
            .lock()
            .extend(pending.iter().map(|c| c.name().to_string()));
        for collection in pending {
            let name = collection.name().to_string();
            let marker = self.settings.root.join("migrated").join(&name);
            let started = std::time::Instant::now();
            loop {
                match self.migrate_one(&collection).await {
                    Ok(documents) => {
                        let written = prism_core::log::create_dir_durable(
                            &self.settings.root.join("migrated"),
                        )
                        .and_then(|()| prism_core::log::write_atomically(&marker, b"done\n"));
                        if let Err(e) = written {
                            tracing::warn!(collection = %name, error = %e, "migrated, but the marker could not be written: the migration runs again (harmlessly) at the next start");
                        }
                        tracing::info!(collection = %name, documents, ms = started.elapsed().as_millis() as u64, "single-node collection migrated: it is the cluster's now; its old copy under data_dir/collections is no longer used and may be deleted");
                        self.migrating.lock().remove(&name);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(collection = %name, error = %e, "migrating the single-node collection into the cluster failed; retrying in 2 s");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }
    }

    /// Copies one local collection into the cluster; returns how many documents it wrote.
    async fn migrate_one(
        &self,
        collection: &Arc<prism_core::engine::Collection>,
    ) -> Result<u64, String> {
        let schema = collection.schema().clone();
        let name = schema.name.clone();
        if !self
            .wait_for_metadata(|s| s.nodes.contains_key(&self.id))
            .await
        {
            return Err("this node is not in the cluster's metadata yet".into());
        }
        match self.collection(&name) {
            Ok(existing) if !same_schema(&existing.schema, &schema) => {
                return Err(format!(
                    "the cluster has a collection {name} with another schema; rename one of them"
                ))
            }
            Ok(_) => {}
            Err(_) => {
                self.create_collection(&schema, Some(1))
                    .await
                    .map_err(|e| format!("cannot create it in the cluster: {e}"))?;
            }
        }
        tracing::info!(collection = %name, "migrating a single-node collection into the cluster");
        let (batches, mut receive) =
            tokio::sync::mpsc::channel::<Vec<prism_core::shard::StoredDocument>>(2);
        let scanning = collection.clone();
        let scan = tokio::task::spawn_blocking(move || {
            scanning
                .shard()
                .scan(500, |docs| Ok(batches.blocking_send(docs).is_ok()))
        });
        let mut written = 0u64;
        while let Some(docs) = receive.recv().await {
            let documents: Vec<serde_json::Value> = docs
                .into_iter()
                .map(|d| serde_json::json!({"id": d.id, "fields": d.fields}))
                .collect();
            let batch = prism_core::engine::prepare_upserts(&schema, documents);
            if let Some(first) = batch.errors.first() {
                return Err(format!(
                    "document {:?} does not validate against its own schema: {}",
                    first.id, first.message
                ));
            }
            let count = batch.ops.len() as u64;
            let mut attempts = 0;
            loop {
                let outcome = self
                    .write_unfenced(&name, batch.ops.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                match outcome.verdict {
                    WriteVerdict::Acknowledged(_) => break,
                    other if attempts < 30 => {
                        attempts += 1;
                        tracing::info!(collection = %name, ?other, "a migration batch was not acknowledged; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => return Err(format!("a batch was not acknowledged: {other:?}")),
                }
            }
            written += count;
        }
        scan.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the local collection: {e}"))?;
        Ok(written)
    }

    /// Answers a call from another node.
    pub async fn handle(&self, from: NodeId, envelope: Envelope) -> Reply {
        let group = envelope.group.clone();
        match envelope.request {
            Request::Join { id, name, address } => self.add_node(id, name, address).await,
            Request::Propose { ops, within_ms } => {
                let group = group_named(group)?;
                let within = Duration::from_millis(within_ms).min(self.settings.request_timeout);
                self.propose_here(&group, ops, within).await
            }
            Request::Meta { command, within_ms } => {
                let within = Duration::from_millis(within_ms).min(self.settings.request_timeout);
                self.propose_meta_here(command, within)
                    .await
                    .map(Answer::Meta)
            }
            Request::Elect => {
                tracing::info!(group = ?group, "asked to start an election");
                match group {
                    None => self.meta.elect().await,
                    Some(group) => self.groups.elect(&group).await,
                }
                .map_err(RpcError::Unavailable)?;
                Ok(Answer::Electing)
            }
            Request::Get { id } => {
                let group = group_named(group)?;
                let shard = self.groups.shard(&group).ok_or_else(|| no_copy(&group))?;
                let doc = tokio::task::spawn_blocking(move || shard.get(&id))
                    .await
                    .map_err(|e| RpcError::Internal(e.to_string()))??;
                Ok(Answer::Document(doc.map(|d| {
                    (d.id, Json::from(&serde_json::Value::Object(d.fields)))
                })))
            }
            Request::Copies => Ok(Answer::Copies(self.local_reports().await)),
            Request::LeaveMetadata { id } => self.leave_metadata(id).await,
            Request::Progress => {
                let group = group_named(group)?;
                let state = self
                    .groups
                    .states()
                    .get(&group)
                    .cloned()
                    .ok_or_else(|| no_copy(&group))?;
                if state.role != Role::Leader {
                    return Err(RpcError::NotLeader {
                        leader: state.leader.and_then(|l| state.addresses.get(&l).cloned()),
                    });
                }
                Ok(Answer::Progress {
                    last_log: state.last_log,
                    matched: state.matched,
                })
            }
            Request::ReadIndex { confirm } => {
                let group = group_named(group)?;
                self.read_index_here(&group, confirm, self.settings.request_timeout)
                    .await
            }
            Request::ReadFence {
                applied,
                max_staleness_ms,
                searchable,
                within_ms,
            } => {
                let group = group_named(group)?;
                let within = Duration::from_millis(within_ms).min(self.settings.request_timeout);
                self.fence_here(
                    &group,
                    applied,
                    max_staleness_ms.map(Duration::from_millis),
                    searchable,
                    Instant::now() + within,
                )
                .await
            }
            Request::Refresh => {
                let group = group_named(group)?;
                let shard = self.groups.shard(&group).ok_or_else(|| no_copy(&group))?;
                let visible = shard
                    .request_refresh()?
                    .await
                    .map_err(|_| RpcError::Unavailable("the shard closed".into()))??;
                Ok(Answer::Refreshed { visible })
            }
            Request::Stats { .. } | Request::Search { .. } | Request::Fetch { .. } => {
                // Only this node's own copies answer reads: never a single-node collection
                // of the same name.
                let named = group_named(group)?;
                if self.groups.shard(&named).is_none() {
                    return Err(no_copy(&named));
                }
                self.reads.handle(from, envelope).await
            }
            Request::Index { .. } => Err(RpcError::InvalidRequest(
                "a cluster-mode node takes writes as proposals to a shard's leader".into(),
            )),
            _ => self.reads.handle(from, envelope).await,
        }
    }

    /// This node's copies, reported.
    async fn local_reports(&self) -> Vec<CopyReport> {
        let states = self.copy_states();
        let mut reports = Vec::with_capacity(states.len());
        for (group, state) in states {
            let stats = match self.groups.shard(&group) {
                Some(shard) => tokio::task::spawn_blocking(move || shard.stats())
                    .await
                    .ok(),
                None => None,
            };
            reports.push(CopyReport {
                node: self.id,
                role: role_name(state.role).into(),
                term: state.term,
                leader: state.leader,
                last_log: state.last_log,
                applied: state.applied,
                num_docs: stats.map_or(0, |s| s.num_docs),
                content_checksum: stats.and_then(|s| s.content_checksum),
                visible_index: stats.map_or(0, |s| s.visible_index),
                members: state.addresses.keys().copied().collect(),
                receiving_snapshot_bytes: state.snapshot_catch_up.receiving_bytes,
                snapshots_installed: state.snapshot_catch_up.installed,
                snapshot_receptions_failed: state.snapshot_catch_up.failed,
                group,
            });
        }
        reports
    }

    /// Every copy of every group in the cluster, as each node reports its own; nodes that do
    /// not answer within the request time-out are listed in the second value.
    pub async fn all_reports(&self) -> (Vec<CopyReport>, Vec<String>) {
        let state = self.metadata();
        let calls = state.nodes.values().map(|node| async move {
            if node.id == self.id {
                return (node, Ok(self.local_reports().await));
            }
            let ask = Envelope {
                group: None,
                request: Request::Copies,
            };
            let answer = tokio::time::timeout(
                Duration::from_secs(2).min(self.settings.request_timeout),
                self.network.call(&node.address, ask),
            )
            .await;
            let reports = match answer {
                Ok(Ok(Answer::Copies(reports))) => Ok(reports),
                Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".to_string()),
            };
            (node, reports)
        });
        let mut reports = Vec::new();
        let mut silent = Vec::new();
        for (node, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(mut r) => reports.append(&mut r),
                Err(why) => silent.push(format!("{}: {why}", node.name)),
            }
        }
        (reports, silent)
    }

    /// On the metadata leader: adds node `id` (a learner of the metadata group, then a
    /// voter while voters are few). Elsewhere: forwarded to the leader.
    async fn add_node(&self, id: u64, name: String, address: String) -> Reply {
        let view = self.meta.view();
        if view.state != MetaRole::Leader {
            let leader = self.meta_leader_address(&view)?;
            let forward = Envelope {
                group: None,
                request: Request::Join { id, name, address },
            };
            return self.network.call(&leader, forward).await;
        }
        let info = NodeInfo {
            id,
            name: name.clone(),
            address: address.clone(),
            zone: None,
            rack: None,
            region: None,
            state: NodeState::Active,
        };
        let known = self.metadata().nodes.get(&id) == Some(&info);
        if !known {
            match self.propose_meta(MetaCommand::AddNode(info)).await? {
                MetaResponse::Refused(why) if why.contains("is taken") => {
                    return Err(RpcError::InvalidRequest(format!(
                        "{why}: a node named {name} belongs to the cluster under another id (its data directory was replaced?). Remove the old one first: DELETE /cluster/nodes/{name}"
                    )))
                }
                MetaResponse::Refused(why) => return Err(RpcError::InvalidRequest(why)),
                MetaResponse::Done | MetaResponse::Created(_) => {}
            }
        }
        if !view.members.contains_key(&id) {
            self.meta
                .add_learner(id, &address, self.settings.request_timeout)
                .await
                .map_err(RpcError::Unavailable)?;
            tracing::info!(node = %name, id, %address, "node joined the metadata group as a learner");
        }
        self.balance_meta_voters().await;
        Ok(Answer::Joined)
    }

    fn meta_leader_address(&self, view: &MetaView) -> Result<String, RpcError> {
        view.leader
            .and_then(|leader| view.members.get(&leader).cloned())
            .ok_or_else(|| {
                RpcError::Unavailable(
                    "the cluster has no metadata leader right now (an election may be running); retry shortly".into(),
                )
            })
    }

    /// On the metadata leader: promotes caught-up learners while voters are fewer than
    /// [`metadata_voter_count`] of the members.
    async fn balance_meta_voters(&self) {
        let view = self.meta.view();
        if view.state != MetaRole::Leader {
            return;
        }
        let target = metadata_voter_count(view.members.len());
        if view.voters.len() >= target {
            return;
        }
        let last = view.last_log.unwrap_or(0);
        let suspected = self.host.suspected();
        let mut voters = view.voters.clone();
        for (id, matched) in &view.matched {
            if voters.len() >= target {
                break;
            }
            let caught_up = matched.is_some_and(|m| m + PROMOTE_WITHIN >= last);
            if !voters.contains(id) && caught_up && !suspected.contains(id) {
                voters.insert(*id);
            }
        }
        if voters != view.voters {
            match self
                .meta
                .set_voters(voters.clone(), self.settings.request_timeout)
                .await
            {
                Ok(()) => tracing::info!(?voters, "metadata voters changed"),
                Err(e) => tracing::warn!(error = %e, "cannot change the metadata voters"),
            }
        }
    }

    /// Commits `command` through the metadata leader, wherever it is, within the request
    /// time-out.
    pub async fn propose_meta(&self, command: MetaCommand) -> Result<MetaResponse, RpcError> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RpcError::NoQuorum(format!(
                    "no metadata leader answered within {} ms",
                    self.settings.request_timeout.as_millis()
                )));
            }
            let view = self.meta.view();
            if view.state == MetaRole::Leader {
                match self.propose_meta_here(command.clone(), remaining).await {
                    // Leadership moved before anything was appended: follow it.
                    Err(RpcError::NotLeader { .. }) => {}
                    answer => return answer,
                }
            }
            let leader = view
                .leader
                .filter(|l| !self.host.suspected().contains(l))
                .and_then(|l| view.members.get(&l).cloned());
            if let Some(address) = leader {
                let forward = Envelope {
                    group: None,
                    request: Request::Meta {
                        command: command.clone(),
                        within_ms: remaining.as_millis() as u64,
                    },
                };
                let leader_id = view.leader.unwrap_or_default();
                let answer = tokio::select! {
                    answer = tokio::time::timeout(remaining, self.network.call(&address, forward)) => answer,
                    () = self.until_suspected(leader_id) => {
                        return Err(RpcError::WriteUnknown(format!(
                            "the metadata leader {address} stopped answering while it held the change"
                        )))
                    }
                };
                match answer {
                    Ok(Ok(Answer::Meta(response))) => return Ok(response),
                    Ok(Ok(other)) => {
                        return Err(RpcError::Internal(format!("unexpected answer {other:?}")))
                    }
                    // Never delivered, or the leader moved before appending: try again.
                    Ok(Err(RpcError::Unreachable(_) | RpcError::NotLeader { .. })) => {}
                    Ok(Err(RpcError::Unavailable(why))) => {
                        return Err(RpcError::WriteUnknown(format!(
                            "the metadata leader {address} did not answer: {why}"
                        )))
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(RpcError::WriteUnknown(format!(
                            "the metadata leader {address} did not answer in time"
                        )))
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Proposes `command` on this node's metadata copy, which must lead, within `within`.
    async fn propose_meta_here(
        &self,
        command: MetaCommand,
        within: Duration,
    ) -> Result<MetaResponse, RpcError> {
        let view = self.meta.view();
        if view.state != MetaRole::Leader {
            return Err(RpcError::NotLeader {
                leader: view.leader.and_then(|l| view.members.get(&l).cloned()),
            });
        }
        if !reaches_majority(&view.voters, self.id, &self.host.suspected()) {
            return Err(RpcError::NoQuorum(
                "the metadata leader reaches no majority of its voters".into(),
            ));
        }
        match self
            .meta
            .propose(command, QUORUM_WINDOW.min(within), within)
            .await
        {
            Proposed::Committed { response, .. } => Ok(response),
            Proposed::Refused {
                leader: Some(l), ..
            } if l != self.id => Err(RpcError::NotLeader {
                leader: view.members.get(&l).cloned(),
            }),
            Proposed::Refused { why, .. } => Err(RpcError::NoQuorum(why)),
            Proposed::Unknown(why) => Err(RpcError::WriteUnknown(why)),
        }
    }

    /// Waits until this node's metadata copy shows `ready`, up to the request time-out.
    pub async fn wait_for_metadata(&self, ready: impl Fn(&MetadataState) -> bool) -> bool {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            if ready(&self.metadata()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.meta.changed(Duration::from_millis(50)).await;
        }
    }

    /// Creates a collection: the metadata leader places its copies (`replication` of each
    /// shard, by default as many as there are nodes, at most 3). Returns it, and whether it
    /// is new (false when it exists with the same schema).
    pub async fn create_collection(
        &self,
        schema: &CollectionSchema,
        replication: Option<u32>,
    ) -> Result<(CollectionMeta, bool), RpcError> {
        let text = serde_json::to_string(schema).map_err(|e| RpcError::Internal(e.to_string()))?;
        let state = self.metadata();
        if let Some(existing) = state.collections.get(&schema.name) {
            if same_schema(&existing.schema, schema) {
                return Ok((existing.clone(), false));
            }
            return Err(RpcError::InvalidRequest(format!(
                "collection {} exists with another schema",
                schema.name
            )));
        }
        let nodes = state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .count()
            .max(1) as u32;
        let replication = replication.unwrap_or(nodes.min(3));
        let command = MetaCommand::CreateCollection {
            name: schema.name.clone(),
            schema: text,
            shards: schema.shards,
            replication,
        };
        match self.propose_meta(command).await? {
            MetaResponse::Created(created) => {
                let generation = created.generation;
                let name = schema.name.clone();
                self.wait_for_metadata(|s| {
                    s.collections
                        .get(&name)
                        .is_some_and(|c| c.generation >= generation)
                })
                .await;
                Ok((created, true))
            }
            MetaResponse::Refused(why) if why.ends_with("exists") => {
                let existing = self.metadata().collections.get(&schema.name).cloned();
                match existing {
                    Some(c) if same_schema(&c.schema, schema) => Ok((c, false)),
                    _ => Err(RpcError::InvalidRequest(format!(
                        "collection {} exists with another schema",
                        schema.name
                    ))),
                }
            }
            MetaResponse::Refused(why) => Err(RpcError::InvalidRequest(why)),
            MetaResponse::Done => Err(RpcError::Internal(
                "the metadata answered a create without the collection".into(),
            )),
        }
    }

    /// Deletes a collection everywhere: each node drops its copies once it applies this.
    pub async fn delete_collection(&self, name: &str) -> Result<(), RpcError> {
        match self
            .propose_meta(MetaCommand::DeleteCollection { name: name.into() })
            .await?
        {
            MetaResponse::Refused(why) => Err(RpcError::NotFound(why)),
            _ => {
                let name = name.to_string();
                self.wait_for_metadata(|s| !s.collections.contains_key(&name))
                    .await;
                Ok(())
            }
        }
    }

    /// Writes `ops` to `collection`: each shard's part is proposed to its leader, and the
    /// verdict is only as good as every shard's outcome.
    pub async fn write(&self, collection: &str, ops: Vec<Op>) -> Result<WriteOutcome, RpcError> {
        self.refuse_while_migrating(collection)?;
        self.refuse_writes_in_minority()?;
        self.write_unfenced(collection, ops).await
    }

    /// A migrating collection refuses client writes (nothing is appended).
    fn refuse_while_migrating(&self, collection: &str) -> Result<(), RpcError> {
        if self.migrating.lock().contains(collection) {
            return Err(RpcError::Unavailable(format!(
                "collection {collection} is being migrated from this node's single-node data; writes are refused (not applied) until it is done: retry shortly"
            )));
        }
        Ok(())
    }

    async fn write_unfenced(
        &self,
        collection: &str,
        ops: Vec<Op>,
    ) -> Result<WriteOutcome, RpcError> {
        let meta = self.collection(collection)?;
        let deadline = Instant::now() + self.settings.request_timeout;
        let by_shard = split_by_shard(ops, meta.shards.len() as u32);
        let ops_per_shard: BTreeMap<u32, Vec<String>> = by_shard
            .iter()
            .map(|(shard, ops)| (*shard, ops.iter().map(|o| o.id().to_string()).collect()))
            .collect();
        let proposals = by_shard.into_iter().map(|(shard, ops)| {
            let group = GroupId::shard(collection, shard, meta.generation);
            let copies: Vec<u64> = meta.shards[shard as usize].iter().map(|c| c.node).collect();
            async move {
                let outcome = self.propose_to_shard(&group, &copies, ops, deadline).await;
                (shard, outcome)
            }
        });
        let outcomes: BTreeMap<u32, ShardOutcome> = futures::future::join_all(proposals)
            .await
            .into_iter()
            .collect();
        Ok(WriteOutcome {
            verdict: verdict(meta.generation, &outcomes),
            ops_per_shard,
        })
    }

    /// The collection's metadata, or NotFound.
    pub fn collection(&self, name: &str) -> Result<CollectionMeta, RpcError> {
        self.metadata()
            .collections
            .get(name)
            .cloned()
            .ok_or_else(|| RpcError::NotFound(format!("collection {name:?} does not exist")))
    }

    fn address_of(&self, node: u64) -> Option<String> {
        if node == self.id {
            return Some(self.settings.address.clone());
        }
        self.metadata().nodes.get(&node).map(|n| n.address.clone())
    }

    fn node_at(&self, address: &str) -> Option<u64> {
        self.metadata()
            .nodes
            .values()
            .find(|n| n.address == address)
            .map(|n| n.id)
    }

    /// The copies of a group to try, best first: the leader as this node knows it, then the
    /// others; nodes the liveness driver suspects go last.
    fn candidates(&self, group: &GroupId, copies: &[u64]) -> Vec<u64> {
        let mut order: Vec<u64> = Vec::new();
        if let Some(state) = self.groups.states().get(group) {
            if state.role == Role::Leader {
                order.push(self.id);
            }
            order.extend(state.leader);
        }
        order.extend(self.leader_hints.lock().get(group).copied());
        order.extend(copies.iter().copied());
        let mut seen = BTreeSet::new();
        order.retain(|n| seen.insert(*n));
        let suspected = self.host.suspected();
        order.sort_by_key(|n| suspected.contains(n));
        order
    }

    /// [`Self::candidates`] without the nodes the liveness driver suspects (this node stays).
    fn live_candidates(&self, group: &GroupId, copies: &[u64]) -> Vec<u64> {
        let suspected = self.host.suspected();
        self.candidates(group, copies)
            .into_iter()
            .filter(|n| *n == self.id || !suspected.contains(n))
            .collect()
    }

    /// Proposes `ops` to `group`'s leader until it answers, following leader hints, until
    /// `deadline`. Only a proposal that reached a leader and was not refused can be unknown.
    async fn propose_to_shard(
        &self,
        group: &GroupId,
        copies: &[u64],
        ops: Vec<Op>,
        deadline: Instant,
    ) -> ShardOutcome {
        let mut last_refusal = String::from("no copy of the shard leads it");
        let mut round = 0usize;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return ShardOutcome::Refused(format!(
                    "no leader of {group} took the write within {} ms: {last_refusal}",
                    self.settings.request_timeout.as_millis()
                ));
            }
            // A suspected node is not asked: a call there would wait out its time-out, and
            // one sent there may have been delivered.
            let candidates = self.live_candidates(group, copies);
            if candidates.is_empty() {
                last_refusal = format!("every copy of {group} is unreachable");
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            let target = candidates[round % candidates.len()];
            round += 1;
            if target == self.id {
                let leads = self
                    .groups
                    .states()
                    .get(group)
                    .is_some_and(|s| s.role == Role::Leader);
                if leads {
                    if let Some(why) = self.majority_unreachable(group) {
                        return ShardOutcome::Refused(why);
                    }
                    match self
                        .groups
                        .write(group, ops.clone(), QUORUM_WINDOW.min(remaining), remaining)
                        .await
                    {
                        Proposed::Committed { term, index, .. } => {
                            return ShardOutcome::Committed { term, index }
                        }
                        Proposed::Refused {
                            leader: Some(l), ..
                        } if l != self.id => {
                            self.leader_hints.lock().insert(group.clone(), l);
                            round = 0;
                            continue;
                        }
                        Proposed::Refused { why, .. } => {
                            // Refused while leading: no majority answers it.
                            let still_leads = self
                                .groups
                                .states()
                                .get(group)
                                .is_some_and(|s| s.role == Role::Leader);
                            if still_leads {
                                return ShardOutcome::Refused(why);
                            }
                            last_refusal = why;
                        }
                        Proposed::Unknown(why) => return ShardOutcome::Unknown(why),
                    }
                } else {
                    last_refusal = format!("this node's copy of {group} does not lead it");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let Some(address) = self.address_of(target) else {
                last_refusal = format!("node {target} is not in the metadata");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let ask = Envelope {
                group: Some(group.clone()),
                request: Request::Propose {
                    ops: ops.clone(),
                    within_ms: remaining.as_millis() as u64,
                },
            };
            let answer = tokio::select! {
                answer = tokio::time::timeout(remaining, self.network.call(&address, ask)) => answer,
                () = self.until_suspected(target) => {
                    return ShardOutcome::Unknown(format!(
                        "{address} stopped answering while it held the write"
                    ))
                }
            };
            match answer {
                Ok(Ok(Answer::Proposed { term, index })) => {
                    self.leader_hints.lock().insert(group.clone(), target);
                    return ShardOutcome::Committed { term, index };
                }
                Ok(Ok(other)) => {
                    return ShardOutcome::Unknown(format!(
                        "unexpected answer from {address}: {other:?}"
                    ))
                }
                Ok(Err(RpcError::NotLeader { leader })) => {
                    if let Some(l) = leader.as_deref().and_then(|a| self.node_at(a)) {
                        self.leader_hints.lock().insert(group.clone(), l);
                        round = 0;
                    }
                    // Two nodes pointing at each other must not spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    last_refusal = format!("{address} does not lead {group}");
                }
                Ok(Err(RpcError::NoQuorum(why))) => return ShardOutcome::Refused(why),
                Ok(Err(RpcError::WriteUnknown(why))) => return ShardOutcome::Unknown(why),
                // Not delivered, or no copy there (yet): nothing was appended.
                Ok(Err(e @ (RpcError::Unreachable(_) | RpcError::NotFound(_)))) => {
                    last_refusal = e.to_string();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // The leader could not decode or take the write: nothing was appended.
                Ok(Err(RpcError::InvalidRequest(why))) => {
                    return ShardOutcome::Refused(format!("{address} refused the write: {why}"))
                }
                Ok(Err(e)) => {
                    return ShardOutcome::Unknown(format!(
                        "{address} failed while holding the write: {e}"
                    ))
                }
                Err(_) => {
                    return ShardOutcome::Unknown(format!(
                        "{address} did not answer within {} ms",
                        self.settings.request_timeout.as_millis()
                    ))
                }
            }
        }
    }

    /// Why this node's copy of `group`, which leads it, cannot reach a majority of its
    /// voters now, if it cannot.
    fn majority_unreachable(&self, group: &GroupId) -> Option<String> {
        let state = self.groups.states().get(group).cloned()?;
        let suspected = self.host.suspected();
        (!reaches_majority(&state.voters, self.id, &suspected)).then(|| {
            format!(
                "the leader of {group} reaches {} of its {} voters, not a majority",
                state
                    .voters
                    .iter()
                    .filter(|v| **v == self.id || !suspected.contains(v))
                    .count(),
                state.voters.len()
            )
        })
    }

    /// Returns once the liveness driver suspects `node` (it stopped answering pings): a call
    /// waiting on it would only wait out its time-out.
    async fn until_suspected(&self, node: u64) {
        loop {
            if self.host.suspected().contains(&node) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A proposal another node forwarded to this node's copy of `group`.
    async fn propose_here(&self, group: &GroupId, ops: Vec<Op>, within: Duration) -> Reply {
        // Refused before anything is appended (the caller reports it refused).
        self.refuse_while_migrating(&group.collection)
            .map_err(|e| RpcError::InvalidRequest(e.to_string()))?;
        let state = self.groups.states().get(group).cloned();
        let Some(state) = state else {
            return Err(no_copy(group));
        };
        let leader_address = |l: Option<u64>| l.and_then(|l| state.addresses.get(&l).cloned());
        if state.role != Role::Leader {
            return Err(RpcError::NotLeader {
                leader: leader_address(state.leader),
            });
        }
        if let Some(why) = self.majority_unreachable(group) {
            return Err(RpcError::NoQuorum(why));
        }
        match self
            .groups
            .write(group, ops, QUORUM_WINDOW.min(within), within)
            .await
        {
            Proposed::Committed { term, index, .. } => Ok(Answer::Proposed { term, index }),
            Proposed::Refused {
                leader: Some(l), ..
            } if l != self.id => Err(RpcError::NotLeader {
                leader: leader_address(Some(l)),
            }),
            Proposed::Refused { why, .. } => Err(RpcError::NoQuorum(why)),
            Proposed::Unknown(why) => Err(RpcError::WriteUnknown(why)),
        }
    }

    /// The copy of each shard a read goes to (this node's own first, then the leader, then
    /// the others), with the rest to retry on.
    fn read_copies(&self, collection: &str, meta: &CollectionMeta) -> Vec<ShardCopy> {
        let suspected = self.host.suspected();
        meta.shards
            .iter()
            .enumerate()
            .map(|(shard, copies)| {
                let group = GroupId::shard(collection, shard as u32, meta.generation);
                let mut order: Vec<u64> = copies.iter().map(|c| c.node).collect();
                let local = self.groups.shard(&group).is_some();
                let leader = self.groups.states().get(&group).and_then(|s| s.leader);
                let hint = self.leader_hints.lock().get(&group).copied();
                order.sort_by_key(|n| {
                    (
                        suspected.contains(n),
                        !(local && *n == self.id),
                        Some(*n) != leader && Some(*n) != hint,
                    )
                });
                let mut addresses = order.iter().filter_map(|n| self.address_of(*n));
                let node = addresses.next().unwrap_or_default();
                ShardCopy {
                    shard: shard as u32,
                    node,
                    down: None,
                    generation: meta.generation,
                    alternates: addresses.collect(),
                }
            })
            .collect()
    }

    /// Searches `collection` over one copy per shard, retrying a failed copy once on another.
    /// Above `eventual`, each shard's copy is first fenced: it serves only once it meets the
    /// read's consistency ([`consistency`]).
    pub async fn search(
        &self,
        collection: &str,
        request: &SearchRequest,
        query: &QueryConfig,
        consistency: &ReadConsistency,
        deadline: Duration,
    ) -> Result<FederatedSearch, SearchError> {
        let started = Instant::now();
        let meta = self
            .collection(collection)
            .map_err(|e| SearchError::NotFound(e.to_string()))?;
        let mut copies = self.read_copies(collection, &meta);
        if consistency.level != ReadLevel::Eventual {
            // The fences get at most half the time: the search needs the rest.
            let fence_deadline = started + deadline / 2;
            let fenced = copies.into_iter().map(|copy| {
                let group = GroupId::shard(collection, copy.shard, meta.generation);
                let nodes: Vec<u64> = meta.shards[copy.shard as usize]
                    .iter()
                    .map(|c| c.node)
                    .collect();
                async move {
                    self.fence_copy(&group, &nodes, copy, consistency, true, fence_deadline)
                        .await
                }
            });
            copies = Vec::new();
            for fenced in futures::future::join_all(fenced).await {
                match fenced {
                    Ok(copy) => copies.push(copy),
                    // A shard left out would drop the very writes the level promises.
                    Err(e) => {
                        return Err(SearchError::Unavailable {
                            message: e.to_string(),
                            status: Default::default(),
                        })
                    }
                }
            }
        }
        self.coordinator
            .search(
                collection,
                request,
                &copies,
                query,
                deadline.saturating_sub(started.elapsed()),
            )
            .await
            .map(|(answer, _)| answer)
    }

    /// A document by id from one copy of its shard that meets `consistency`, retried once on
    /// another.
    pub async fn get(
        &self,
        collection: &str,
        id: &str,
        consistency: &ReadConsistency,
    ) -> Result<Option<(String, serde_json::Value)>, RpcError> {
        let deadline = Instant::now() + self.settings.request_timeout;
        let meta = self.collection(collection)?;
        let shard = prism_core::routing::shard_for(id, meta.shards.len() as u32);
        let mut copy = self.read_copies(collection, &meta)[shard as usize].clone();
        let group = GroupId::shard(collection, shard, meta.generation);
        if consistency.level != ReadLevel::Eventual {
            let nodes: Vec<u64> = meta.shards[shard as usize].iter().map(|c| c.node).collect();
            // Half the time at most: the read needs the rest.
            let fence_deadline = Instant::now() + self.settings.request_timeout / 2;
            copy = self
                .fence_copy(&group, &nodes, copy, consistency, false, fence_deadline)
                .await?;
        }
        let mut last = RpcError::Unavailable(format!("no copy of {group} answered"));
        for address in std::iter::once(&copy.node)
            .chain(copy.alternates.iter())
            .take(2)
        {
            let ask = Envelope {
                group: Some(group.clone()),
                request: Request::Get { id: id.to_string() },
            };
            let call = self.network.call(address, ask);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(self.settings.request_timeout / 2), call).await {
                Ok(Ok(Answer::Document(doc))) => {
                    return doc
                        .map(|(id, fields)| Ok((id, serde_json::Value::try_from(fields)?)))
                        .transpose()
                }
                Ok(Ok(other)) => last = RpcError::Internal(format!("unexpected answer {other:?}")),
                Ok(Err(e)) => last = e,
                Err(_) => last = RpcError::Unavailable(format!("{address} did not answer in time")),
            }
        }
        Err(last)
    }

    /// How many of the metadata group's voters this node reaches (itself included, and
    /// those the liveness driver does not suspect), of how many.
    fn metadata_reach(&self) -> (usize, usize) {
        let view = self.meta.view();
        let suspected = self.host.suspected();
        let reachable = view
            .voters
            .iter()
            .filter(|v| **v == self.id || !suspected.contains(v))
            .count();
        (reachable, view.voters.len())
    }

    /// `partition_behavior = "read_only"`: a node that reaches only a minority of the
    /// cluster refuses writes before proposing anything, so they are never applied.
    fn refuse_writes_in_minority(&self) -> Result<(), RpcError> {
        let (reachable, voters) = self.metadata_reach();
        if voters > 0 && reachable * 2 <= voters {
            return Err(RpcError::NoQuorum(format!(
                "this node reaches {reachable} of the cluster's {voters} voters: it is in a \
                 minority partition, which is read-only ([cluster.consistency] \
                 partition_behavior = \"read_only\"); the write was not applied. Write through a \
                 node in the majority"
            )));
        }
        Ok(())
    }

    /// Whether this node may serve a read at `level` now: in a minority partition only a
    /// read that may be stale, and only with `allow_stale_reads`.
    pub fn read_allowed(&self, level: ReadLevel) -> Result<(), RpcError> {
        let (reachable, voters) = self.metadata_reach();
        read_allowed_in_partition(level, reachable, voters, self.settings.allow_stale_reads)
            .map_err(RpcError::NoQuorum)
    }

    /// `copy` (a shard's copies in read order) narrowed to the first that meets
    /// `consistency`, with no alternate left (another copy could not be trusted to). Fails
    /// `NoQuorum` when no leader confirmed a strong read's index, and `Unavailable` when no
    /// copy met the floor by `deadline`. The first copies get half the time left each, so
    /// that a slow one leaves time for the next.
    async fn fence_copy(
        &self,
        group: &GroupId,
        nodes: &[u64],
        copy: ShardCopy,
        consistency: &ReadConsistency,
        searchable: bool,
        deadline: Instant,
    ) -> Result<ShardCopy, RpcError> {
        let mut floor = consistency.token_floor(copy.shard, copy.generation);
        if consistency.level == ReadLevel::Strong {
            let index = self
                .read_index_of(group, nodes, deadline)
                .await
                .map_err(|e| RpcError::NoQuorum(format!("no strong read of {group}: {e}")))?;
            floor = floor.max(index);
        }
        let candidates: Vec<NodeId> = std::iter::once(copy.node.clone())
            .chain(copy.alternates.iter().cloned())
            .filter(|a| !a.is_empty())
            .collect();
        let mut last = format!("no copy of {group} is known");
        for (i, address) in candidates.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let slice = if i + 1 < candidates.len() {
                remaining / 2
            } else {
                remaining
            };
            let ask = Envelope {
                group: Some(group.clone()),
                request: Request::ReadFence {
                    applied: floor,
                    max_staleness_ms: consistency.max_staleness().map(|d| d.as_millis() as u64),
                    searchable,
                    // The copy's own refusal (why it cannot) must come back before the caller
                    // gives up.
                    within_ms: slice.saturating_sub(Duration::from_millis(50)).as_millis() as u64,
                },
            };
            match tokio::time::timeout(slice, self.network.call(address, ask)).await {
                Ok(Ok(Answer::Fenced { .. })) => {
                    return Ok(ShardCopy {
                        node: address.clone(),
                        down: None,
                        alternates: Vec::new(),
                        ..copy
                    })
                }
                Ok(Ok(other)) => last = format!("{address}: unexpected answer {other:?}"),
                Ok(Err(e)) => last = format!("{address}: {e}"),
                Err(_) => last = format!("{address} did not answer in time"),
            }
        }
        Err(RpcError::Unavailable(format!(
            "no copy of {group} could serve a {} read in time: {last}",
            consistency.level.as_str()
        )))
    }

    /// The linearizable read index of `group`, from its leader wherever it is (following
    /// `NotLeader` hints) until `deadline`.
    async fn read_index_of(
        &self,
        group: &GroupId,
        copies: &[u64],
        deadline: Instant,
    ) -> Result<u64, RpcError> {
        let mut last = format!("no copy of {group} leads it");
        let mut round = 0usize;
        let mut unconfirmed = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RpcError::NoQuorum(format!(
                    "no leader of {group} confirmed a read index in time: {last}"
                )));
            }
            let candidates = self.live_candidates(group, copies);
            if candidates.is_empty() {
                last = format!("every copy of {group} is unreachable");
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            let target = candidates[round % candidates.len()];
            round += 1;
            // One attempt gets at most the quorum window: a leader that died unsuspected must
            // not take the whole read with it.
            let attempt = remaining.min(QUORUM_WINDOW);
            let answer = if target == self.id {
                self.read_index_here(group, true, attempt).await
            } else if let Some(address) = self.address_of(target) {
                let ask = Envelope {
                    group: Some(group.clone()),
                    request: Request::ReadIndex { confirm: true },
                };
                tokio::select! {
                    answer = tokio::time::timeout(attempt, self.network.call(&address, ask)) => {
                        answer.unwrap_or_else(|_| {
                            Err(RpcError::Unavailable(format!("{address} did not answer in time")))
                        })
                    }
                    () = self.until_suspected(target) => {
                        Err(RpcError::Unavailable(format!("{address} stopped answering")))
                    }
                }
            } else {
                Err(RpcError::Unreachable(format!(
                    "node {target} is not in the metadata"
                )))
            };
            match answer {
                Ok(Answer::ReadIndex(index)) => {
                    self.leader_hints.lock().insert(group.clone(), target);
                    return Ok(index);
                }
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(RpcError::NotLeader { leader }) => {
                    if let Some(l) = leader.as_deref().and_then(|a| self.node_at(a)) {
                        self.leader_hints.lock().insert(group.clone(), l);
                        round = 0;
                    }
                    last = format!("node {target} does not lead {group}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // A leader that could not confirm its leadership: once more (openraft gives
                // each voter one heartbeat's time), then the read fails rather than wait.
                Err(RpcError::NoQuorum(why)) => {
                    unconfirmed += 1;
                    if unconfirmed >= 3 {
                        return Err(RpcError::NoQuorum(why));
                    }
                    last = why;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // A read is idempotent: another copy may lead by now.
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// On this node's copy of `group`, which must lead it: the read index (confirmed by a
    /// majority with `confirm`), or the index it applied.
    async fn read_index_here(&self, group: &GroupId, confirm: bool, within: Duration) -> Reply {
        let state = self
            .groups
            .states()
            .get(group)
            .cloned()
            .ok_or_else(|| no_copy(group))?;
        let leader_address = |l: Option<u64>| l.and_then(|l| state.addresses.get(&l).cloned());
        if state.role != Role::Leader {
            return Err(RpcError::NotLeader {
                leader: leader_address(state.leader),
            });
        }
        if let Some(why) = self.majority_unreachable(group) {
            return Err(RpcError::NoQuorum(why));
        }
        if !confirm {
            return Ok(Answer::ReadIndex(state.applied.unwrap_or(0)));
        }
        match self
            .groups
            .read_index(group, within.min(QUORUM_WINDOW))
            .await
        {
            ReadIndex::Confirmed(index) => Ok(Answer::ReadIndex(index)),
            ReadIndex::NotLeader { leader, .. } => Err(RpcError::NotLeader {
                leader: leader_address(leader),
            }),
            ReadIndex::NoQuorum(why) => Err(RpcError::NoQuorum(why)),
        }
    }

    /// Answers once this node's copy of `group` meets a read's floor: it applied `applied`,
    /// holds what its leader had applied at most `max_staleness` ago, and, with
    /// `searchable`, made it searchable.
    async fn fence_here(
        &self,
        group: &GroupId,
        applied: u64,
        max_staleness: Option<Duration>,
        searchable: bool,
        deadline: Instant,
    ) -> Reply {
        let mut floor = applied;
        let mut confirmed_at = None;
        if let Some(max) = max_staleness {
            let (index, asked_at) = self.staleness_floor(group, max, deadline).await?;
            floor = floor.max(index);
            confirmed_at = asked_at;
        }
        let within = deadline.saturating_duration_since(Instant::now());
        let reached = self
            .groups
            .wait_applied(group, floor, within)
            .await
            .map_err(RpcError::Unavailable)?;
        if let Some(at) = confirmed_at {
            let mut freshness = self.freshness.lock();
            let newer = freshness.get(group).is_none_or(|(known, _)| *known < at);
            if newer {
                freshness.insert(group.clone(), (at, floor));
            }
        }
        // Looked up now: a snapshot installed during the wait replaced the shard.
        let shard = self.groups.shard(group).ok_or_else(|| no_copy(group))?;
        if searchable && *shard.visible_index().borrow() < floor {
            let visible = shard
                .request_refresh()?
                .await
                .map_err(|_| RpcError::Unavailable("the shard closed".into()))??;
            if visible < floor {
                return Err(RpcError::Unavailable(format!(
                    "this copy of {group} made index {visible} searchable, not {floor}"
                )));
            }
        }
        Ok(Answer::Fenced { applied: reached })
    }

    /// The index this copy of `group` must apply to be at most `max` behind its leader, and
    /// when the leader was asked for it (`None`: known without asking). A copy known fresh
    /// within `max` needs nothing more; otherwise the leader (perhaps this copy) confirms
    /// its leadership with a majority and names its read index, so that neither a deposed
    /// leader nor one that has not applied its predecessor's entries yet can vouch.
    async fn staleness_floor(
        &self,
        group: &GroupId,
        max: Duration,
        deadline: Instant,
    ) -> Result<(u64, Option<Instant>), RpcError> {
        if let Some((at, index)) = self.freshness.lock().get(group).copied() {
            if fresh_enough(Some(at.elapsed()), max) {
                return Ok((index, None));
            }
        }
        let state = self
            .groups
            .states()
            .get(group)
            .cloned()
            .ok_or_else(|| no_copy(group))?;
        let asked_at = Instant::now();
        let within = deadline.saturating_duration_since(asked_at) / 2;
        let answer = if state.role == Role::Leader {
            self.read_index_here(group, true, within).await
        } else {
            let leader = state
                .leader
                .filter(|l| *l != self.id)
                .and_then(|l| state.addresses.get(&l).cloned())
                .ok_or_else(|| {
                    RpcError::Unavailable(format!(
                        "this copy of {group} knows no leader to measure its staleness against"
                    ))
                })?;
            let ask = Envelope {
                group: Some(group.clone()),
                request: Request::ReadIndex { confirm: true },
            };
            tokio::time::timeout(within, self.network.call(&leader, ask))
                .await
                .unwrap_or_else(|_| {
                    Err(RpcError::Unavailable(format!(
                        "its leader {leader} did not answer in time"
                    )))
                })
        };
        match answer {
            Ok(Answer::ReadIndex(index)) => Ok((index, Some(asked_at))),
            Ok(other) => Err(RpcError::Internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(RpcError::Unavailable(format!(
                "this copy of {group} cannot tell how stale it is: {e}"
            ))),
        }
    }

    /// Raises or lowers a collection's replication factor. New copies join their groups as
    /// learners, catch up (by snapshot and the log) and are promoted by the groups' leaders;
    /// `/cluster/shards` shows their progress.
    pub async fn set_replication(&self, name: &str, replication: u32) -> Result<(), RpcError> {
        self.collection(name)?;
        let command = MetaCommand::SetReplication {
            name: name.to_string(),
            replication,
        };
        match self.propose_meta(command).await? {
            MetaResponse::Refused(why) => Err(RpcError::InvalidRequest(why)),
            _ => {
                let name = name.to_string();
                self.wait_for_metadata(|s| {
                    s.collections
                        .get(&name)
                        .is_some_and(|c| c.replication == replication)
                })
                .await;
                Ok(())
            }
        }
    }

    /// Removes node `name` from the cluster: its copies are first re-created on other nodes
    /// (a voter's replacement catches up and votes before the old copy leaves its group; a
    /// learner's is added and the old copy goes, the voters holding everything), then it
    /// leaves the metadata group and the node list. Waits up to `patience`.
    pub async fn remove_node(&self, name: &str, patience: Duration) -> Result<u64, RpcError> {
        let state = self.metadata();
        let id = state
            .nodes
            .values()
            .find(|n| n.name == name)
            .map(|n| n.id)
            .ok_or_else(|| RpcError::NotFound(format!("no node named {name:?} in the cluster")))?;
        if state.nodes[&id].state != NodeState::Draining {
            if let MetaResponse::Refused(why) =
                self.propose_meta(MetaCommand::DrainNode { id }).await?
            {
                return Err(RpcError::InvalidRequest(why));
            }
        }
        tracing::info!(node = %name, id, "draining: re-creating the node's copies elsewhere");
        let deadline = Instant::now() + patience;
        loop {
            let (reports, _) = self.all_reports().await;
            // Done once every group has a leader and none counts the node. Its own copies go
            // once demoted, and a removed copy may never hear of it: they do not count.
            let state = self.metadata();
            let mut holding: BTreeSet<String> = BTreeSet::new();
            for (collection, meta) in &state.collections {
                for (shard, copies) in meta.shards.iter().enumerate() {
                    let group = GroupId::shard(collection, shard as u32, meta.generation);
                    let leader = reports
                        .iter()
                        .find(|r| r.group == group && r.role == "leader");
                    let done = copies.iter().all(|c| c.node != id)
                        && leader.is_some_and(|l| l.node != id && !l.members.contains(&id));
                    if !done {
                        holding.insert(group.to_string());
                    }
                }
            }
            if holding.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RpcError::Unavailable(format!(
                    "node {name} still holds copies of {} groups ({}); its copies are still moving, and DELETE again resumes the removal",
                    holding.len(),
                    holding.into_iter().take(5).collect::<Vec<_>>().join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let view = self.meta.view();
            if !view.members.contains_key(&id) {
                break;
            }
            let ask = Envelope {
                group: None,
                request: Request::LeaveMetadata { id },
            };
            let result = match view.state {
                MetaRole::Leader => self.leave_metadata(id).await,
                _ => match self.meta_leader_address(&view) {
                    Ok(leader) => self.network.call(&leader, ask).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                tracing::info!(error = %e, "the node's metadata membership did not change yet; retrying");
            }
            self.meta.changed(Duration::from_millis(200)).await;
        }
        if let MetaResponse::Refused(why) =
            self.propose_meta(MetaCommand::RemoveNode { id }).await?
        {
            return Err(RpcError::InvalidRequest(why));
        }
        tracing::info!(node = %name, id, "node removed from the cluster");
        Ok(id)
    }

    /// On the metadata leader: demotes node `id` if it votes (promoting a caught-up learner
    /// in its place), then removes it from the metadata group.
    async fn leave_metadata(&self, id: u64) -> Reply {
        let view = self.meta.view();
        if view.state != MetaRole::Leader {
            return Err(RpcError::NotLeader {
                leader: view.leader.and_then(|l| view.members.get(&l).cloned()),
            });
        }
        let timeout = self.settings.request_timeout;
        if view.voters.contains(&id) {
            let mut voters = view.voters.clone();
            voters.remove(&id);
            let last = view.last_log.unwrap_or(0);
            let suspected = self.host.suspected();
            let replacement = view.matched.iter().find(|(n, m)| {
                **n != id
                    && !voters.contains(n)
                    && !suspected.contains(n)
                    && m.is_some_and(|m| m + PROMOTE_WITHIN >= last)
            });
            if let Some((n, _)) = replacement {
                voters.insert(*n);
            }
            // A voter set without a majority answering could not commit its own change:
            // the metadata group would stall until those nodes return.
            if !reaches_majority(&voters, self.id, &suspected) {
                return Err(RpcError::Unavailable(format!(
                    "node {id} cannot leave the metadata group now: fewer than a majority of the voters that would remain answer ({} suspected); bring them back first",
                    suspected.len()
                )));
            }
            self.meta
                .set_voters(voters, timeout)
                .await
                .map_err(RpcError::Unavailable)?;
        }
        if self.meta.view().members.contains_key(&id) {
            self.meta
                .remove_members([id].into(), timeout)
                .await
                .map_err(RpcError::Unavailable)?;
        }
        Ok(Answer::Joined)
    }

    /// Makes what every copy of `collection` applied searchable now; a copy that does not
    /// answer within the request time-out refreshes on its own schedule. Returns the lowest
    /// searchable index over the shards' leaders (their own log indexes).
    pub async fn refresh(&self, collection: &str) -> Result<u64, RpcError> {
        let meta = self.collection(collection)?;
        let mut calls = Vec::new();
        for (shard, copies) in meta.shards.iter().enumerate() {
            let group = GroupId::shard(collection, shard as u32, meta.generation);
            for copy in copies {
                let Some(address) = self.address_of(copy.node) else {
                    continue;
                };
                let ask = Envelope {
                    group: Some(group.clone()),
                    request: Request::Refresh,
                };
                let timeout = self.settings.request_timeout;
                calls.push(async move {
                    let answer =
                        tokio::time::timeout(timeout, self.network.call(&address, ask)).await;
                    (shard, answer)
                });
            }
        }
        let mut visible: BTreeMap<usize, u64> = BTreeMap::new();
        for (shard, answer) in futures::future::join_all(calls).await {
            if let Ok(Ok(Answer::Refreshed { visible: v })) = answer {
                let entry = visible.entry(shard).or_default();
                *entry = (*entry).max(v);
            }
        }
        if visible.len() < meta.shards.len() {
            return Err(RpcError::Unavailable(format!(
                "{} of {} shards of {collection} had no copy that refreshed",
                meta.shards.len() - visible.len(),
                meta.shards.len()
            )));
        }
        Ok(visible.values().copied().min().unwrap_or(0))
    }

    /// Moves the leadership of `group` (the metadata's when `None`) to `target`, or to any
    /// other copy, by having it start an election.
    pub async fn elect(
        &self,
        group: Option<GroupId>,
        target: Option<u64>,
    ) -> Result<u64, RpcError> {
        // openraft ignores an election asked of a learner: voters only.
        let members: BTreeMap<u64, String> = match &group {
            None => {
                let view = self.meta.view();
                view.members
                    .into_iter()
                    .filter(|(id, _)| view.voters.contains(id))
                    .collect()
            }
            Some(group) => {
                let meta = self.collection(&group.collection)?;
                let copies = meta
                    .shards
                    .get(group.shard as usize)
                    .ok_or_else(|| RpcError::NotFound(format!("no shard {}", group.shard)))?;
                crate::metadata::voting_copies(copies)
                    .iter()
                    .filter_map(|c| self.address_of(c.node).map(|a| (c.node, a)))
                    .collect()
            }
        };
        let leader = match &group {
            None => self.meta.view().leader,
            Some(group) => self
                .groups
                .states()
                .get(group)
                .and_then(|s| s.leader)
                .or_else(|| self.leader_hints.lock().get(group).copied()),
        };
        let target = match target {
            Some(t) if members.contains_key(&t) => t,
            Some(t) => {
                return Err(RpcError::InvalidRequest(format!(
                    "node {t} holds no voting copy of {}",
                    group
                        .as_ref()
                        .map_or("the metadata".to_string(), |g| g.to_string())
                )))
            }
            None => {
                let suspected = self.host.suspected();
                *members
                    .keys()
                    .find(|n| Some(**n) != leader && !suspected.contains(n))
                    .ok_or_else(|| {
                        RpcError::Unavailable("no other live copy can be elected".into())
                    })?
            }
        };
        let deadline = Instant::now() + self.settings.request_timeout;
        let voters: Vec<u64> = members.keys().copied().collect();
        self.promotion_barrier(group.as_ref(), target, &voters, deadline)
            .await?;
        // An election can lose (a follower's lease on the old leader, a log one entry short):
        // ask again, a few times at most, since each lost election raises the term and
        // deposes whichever leader won meanwhile.
        let address = members[&target].clone();
        for attempt in 1..=ELECTION_ATTEMPTS {
            let ask = Envelope {
                group: group.clone(),
                request: Request::Elect,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if target == self.id {
                self.handle(self.settings.name.clone(), ask).await?;
            } else {
                tokio::time::timeout(left, self.network.call(&address, ask))
                    .await
                    .map_err(|_| RpcError::Unavailable(format!("{address} did not answer")))??;
            }
            let settle = Instant::now() + ELECTION_SETTLES;
            while Instant::now() < settle.min(deadline) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if self.leads(group.as_ref(), target, &address, deadline).await {
                    return Ok(target);
                }
            }
            if Instant::now() >= deadline || attempt == ELECTION_ATTEMPTS {
                break;
            }
        }
        Err(RpcError::Unavailable(format!(
            "node {target} started {ELECTION_ATTEMPTS} elections at most but did not become \
             the leader; its log may be behind the leader's: try again, or name another node"
        )))
    }

    /// Spec 004's promotion barrier: waits up to [`PROMOTION_BARRIER`] until node `target`
    /// holds every entry its group's leader holds, as the leader's own replication progress
    /// says (openraft matches log ids, terms included), and refuses otherwise: an election it
    /// cannot win would only raise the term and depose the leader. The metadata group's
    /// progress is known on its leader only; elsewhere its election goes ahead unchecked.
    async fn promotion_barrier(
        &self,
        group: Option<&GroupId>,
        target: u64,
        voters: &[u64],
        deadline: Instant,
    ) -> Result<(), RpcError> {
        let until = (Instant::now() + PROMOTION_BARRIER).min(deadline);
        let name = group.map_or("the metadata".to_string(), ToString::to_string);
        // The last progress the leader reported: what a refusal names.
        let mut seen: (Option<u64>, Option<u64>) = (None, None);
        loop {
            let (held, holds) = match group {
                None => {
                    let view = self.meta.view();
                    if view.leader != Some(self.id) || target == self.id {
                        return Ok(());
                    }
                    (view.last_log, view.matched.get(&target).copied().flatten())
                }
                Some(group) => match self.progress_of(group, voters, until).await {
                    Ok((leader, _, _)) if leader == target => return Ok(()),
                    Ok((_, last_log, matched)) => {
                        seen = (last_log, matched.get(&target).copied().flatten());
                        seen
                    }
                    // The leader answered before: the refusal below names what it said.
                    Err(_) if seen.0.is_some() && Instant::now() >= until => seen,
                    Err(e) if Instant::now() >= until => {
                        return Err(RpcError::Unavailable(format!(
                            "the leader of {name} did not say how far node {target} has caught \
                             up: {e}"
                        )))
                    }
                    Err(_) => (None, None),
                },
            };
            if let (Some(held), Some(holds)) = (held, holds) {
                if holds >= held {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                let holds = holds.map_or("nothing the leader knows of".to_string(), |i| {
                    format!("log index {i}")
                });
                let held = held.map_or("unknown".to_string(), |i| i.to_string());
                return Err(RpcError::NotCaughtUp(format!(
                    "node {target}'s copy of {name} holds {holds}; its leader's last index is \
                     {held}. It did not catch up within {} ms, and an election it cannot win \
                     would only depose the leader: wait until GET /cluster/shards shows it \
                     at the leader's index, then ask again",
                    PROMOTION_BARRIER.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader of `group` (found among `copies`, following hints), its last log index and
    /// each member's replication progress, by `deadline`.
    async fn progress_of(
        &self,
        group: &GroupId,
        copies: &[u64],
        deadline: Instant,
    ) -> Result<(u64, Option<u64>, BTreeMap<u64, Option<u64>>), RpcError> {
        let mut last = RpcError::Unavailable(format!("no copy of {group} leads it"));
        let mut round = 0usize;
        // At least one attempt, even past the deadline: a local leader answers at once.
        loop {
            if round > 0 && Instant::now() >= deadline {
                return Err(last);
            }
            let candidates = self.candidates(group, copies);
            let Some(&target) = candidates.get(round % candidates.len().max(1)) else {
                return Err(last);
            };
            round += 1;
            let ask = Envelope {
                group: Some(group.clone()),
                request: Request::Progress,
            };
            let answer = if target == self.id {
                self.handle(self.settings.name.clone(), ask).await
            } else if let Some(address) = self.address_of(target) {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, self.network.call(&address, ask))
                    .await
                    .unwrap_or_else(|_| {
                        Err(RpcError::Unavailable(format!(
                            "{address} did not answer in time"
                        )))
                    })
            } else {
                Err(RpcError::Unreachable(format!(
                    "node {target} is not in the metadata"
                )))
            };
            match answer {
                Ok(Answer::Progress { last_log, matched }) => {
                    self.leader_hints.lock().insert(group.clone(), target);
                    return Ok((target, last_log, matched));
                }
                Ok(other) => last = RpcError::Internal(format!("unexpected answer {other:?}")),
                Err(RpcError::NotLeader { leader }) => {
                    if let Some(l) = leader.as_deref().and_then(|a| self.node_at(a)) {
                        self.leader_hints.lock().insert(group.clone(), l);
                        round = 0;
                    }
                    last = RpcError::NotLeader { leader };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Whether node `node` (at `address`) leads `group` (the metadata group when `None`).
    async fn leads(
        &self,
        group: Option<&GroupId>,
        node: u64,
        address: &NodeId,
        deadline: Instant,
    ) -> bool {
        let Some(group) = group else {
            return self.meta.view().leader == Some(node);
        };
        if let Some(state) = self.groups.states().get(group) {
            return state.leader == Some(node);
        }
        let ask = Envelope {
            group: None,
            request: Request::Copies,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(ELECTION_SETTLES), self.network.call(address, ask))
            .await
        {
            Ok(Ok(Answer::Copies(reports))) => reports
                .iter()
                .any(|r| &r.group == group && r.role == "leader"),
            _ => false,
        }
    }

    /// `/cluster/status`: the metadata group's leader and term, and each node's state.
    pub fn status(&self) -> ClusterStatus {
        let view = self.meta.view();
        let state = self.metadata();
        let suspected = self.host.suspected();
        let now = Instant::now();
        let mut since = self.suspected_since.lock();
        since.retain(|n, _| suspected.contains(n));
        for n in &suspected {
            since.entry(*n).or_insert(now);
        }
        let mut nodes: Vec<NodeStatus> = Vec::new();
        let mut ids: BTreeSet<u64> = state.nodes.keys().copied().collect();
        ids.extend(view.members.keys().copied());
        for id in ids {
            let info = state.nodes.get(&id);
            let node_state = if id == self.id {
                view.state.as_str().to_string()
            } else if let Some(at) = since.get(&id) {
                if now.duration_since(*at) >= DEAD_AFTER {
                    "dead".into()
                } else {
                    "suspect".into()
                }
            } else if view.leader == Some(id) {
                "leader".into()
            } else if view.voters.contains(&id) {
                "follower".into()
            } else {
                "learner".into()
            };
            nodes.push(NodeStatus {
                id: info.map_or_else(|| id.to_string(), |n| n.name.clone()),
                address: info
                    .map(|n| n.address.clone())
                    .or_else(|| view.members.get(&id).cloned())
                    .unwrap_or_default(),
                state: node_state,
            });
        }
        let live_voters = view
            .voters
            .iter()
            .filter(|v| !suspected.contains(v))
            .count();
        ClusterStatus {
            leader: view.leader.map(|l| {
                state
                    .nodes
                    .get(&l)
                    .map_or_else(|| l.to_string(), |n| n.name.clone())
            }),
            term: view.term,
            healthy: view.leader.is_some() && live_voters * 2 > view.voters.len(),
            nodes,
        }
    }

    /// Why copies placed on this node could not open.
    pub fn open_failures(&self) -> BTreeMap<GroupId, String> {
        self.failures.lock().clone()
    }

    /// Stops the node's loops and groups.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.groups.shutdown().await;
        self.meta.shutdown().await;
    }

    /// One pass: the metadata leader's duties, then this node's steps.
    async fn reconcile(&self) {
        let state = self.metadata();
        if self.meta.view().state == MetaRole::Leader {
            if !state.nodes.contains_key(&self.id) {
                let me = NodeInfo {
                    id: self.id,
                    name: self.settings.name.clone(),
                    address: self.settings.address.clone(),
                    zone: None,
                    rack: None,
                    region: None,
                    state: NodeState::Active,
                };
                if let Err(e) = self.propose_meta(MetaCommand::AddNode(me)).await {
                    tracing::warn!(error = %e, "cannot record this node in the metadata");
                }
            }
            self.balance_meta_voters().await;
        }
        let local = self.local_copies();
        let steps = plan(&state, self.id, &local);
        stream::iter(steps)
            .for_each_concurrent(8, |step| self.carry_out(step, &state))
            .await;
    }

    /// This node's copies as the plan sees them, with how long each log has not grown.
    fn local_copies(&self) -> BTreeMap<GroupId, LocalCopy> {
        let now = Instant::now();
        let suspected = self.host.suspected();
        let mut growth = self.log_growth.lock();
        let local: BTreeMap<GroupId, LocalCopy> = self
            .copy_states()
            .into_iter()
            .map(|(group, s)| {
                let seen = growth.entry(group.clone()).or_insert((s.last_log, now));
                if seen.0 != s.last_log {
                    *seen = (s.last_log, now);
                }
                let idle_for = now.duration_since(seen.1);
                let copy = LocalCopy {
                    idle_for,
                    opened_empty: s.opened_empty,
                    leads: s.role == Role::Leader,
                    leader: s.leader,
                    voters: s.voters,
                    learners: s.learners,
                    last_log: s.last_log,
                    applied: s.applied,
                    matched: s.matched,
                    membership_applied: s.membership_applied,
                    suspected: suspected.clone(),
                };
                (group, copy)
            })
            .collect();
        growth.retain(|g, _| local.contains_key(g));
        self.last_hand_off
            .lock()
            .retain(|g, _| local.contains_key(g));
        local
    }

    async fn carry_out(&self, step: Step, state: &MetadataState) {
        let timeout = self.settings.request_timeout;
        let address = |node: u64| {
            state
                .nodes
                .get(&node)
                .map(|n| n.address.clone())
                .ok_or_else(|| format!("node {node} is not in the metadata"))
        };
        let (what, result) = match step {
            Step::Open { group, schema } => {
                let opened = match CollectionSchema::from_json(schema.as_bytes()) {
                    Ok(schema) => {
                        self.groups
                            .open_shard(
                                group.clone(),
                                Arc::new(schema),
                                self.settings.shard.clone(),
                            )
                            .await
                    }
                    Err(e) => Err(format!("the schema of {group} does not parse: {e}")),
                };
                match &opened {
                    Ok(()) => {
                        self.failures.lock().remove(&group);
                        tracing::info!(%group, "opened a shard copy");
                    }
                    Err(e) => {
                        self.failures.lock().insert(group.clone(), e.clone());
                    }
                }
                (format!("open {group}"), opened)
            }
            Step::Initialize { group, voters } => {
                let members: Result<Vec<(u64, NodeId)>, String> = voters
                    .iter()
                    .map(|v| address(*v).map(|a| (*v, a)))
                    .collect();
                let result = match members {
                    // A pass that saw the copy blank while an earlier initialize completed:
                    // openraft refuses the second, which is what is wanted.
                    Ok(members) => match self.groups.initialize(&group, &members).await {
                        Err(e) if e.contains("not allowed to initialize") => Ok(()),
                        other => other,
                    },
                    Err(e) => Err(e),
                };
                (format!("initialize {group}"), result)
            }
            Step::AddLearner { group, node } => {
                let result = match address(node) {
                    Ok(a) => self.groups.add_learner(&group, node, a, false).await,
                    Err(e) => Err(e),
                };
                (format!("add node {node} to {group}"), result)
            }
            Step::SetVoters { group, voters } => {
                let result = self
                    .groups
                    .set_voters(&group, voters.clone(), timeout)
                    .await;
                (format!("make {voters:?} the voters of {group}"), result)
            }
            Step::RemoveMembers { group, nodes } => {
                let result = self
                    .groups
                    .remove_members(&group, nodes.clone(), timeout)
                    .await;
                (format!("remove {nodes:?} from {group}"), result)
            }
            Step::Drop { group } => {
                let result = self.groups.drop_copy(&group).await;
                self.failures.lock().remove(&group);
                (format!("drop this node's copy of {group}"), result)
            }
            Step::HandOff { group, to } => {
                let now = Instant::now();
                let recently = self
                    .last_hand_off
                    .lock()
                    .get(&group)
                    .is_some_and(|at| now.duration_since(*at) < HAND_OFF_EVERY);
                // Only to a node that answers, and only while a majority does: otherwise the
                // election cannot complete and only deposes this leader.
                let suspected = self.host.suspected();
                let voters = self
                    .groups
                    .states()
                    .get(&group)
                    .map(|s| s.voters.clone())
                    .unwrap_or_default();
                if recently
                    || suspected.contains(&to)
                    || !reaches_majority(&voters, self.id, &suspected)
                {
                    return;
                }
                self.last_hand_off.lock().insert(group.clone(), now);
                tracing::info!(%group, to, "handing the leadership over");
                let result = match address(to) {
                    Ok(a) => {
                        let ask = Envelope {
                            group: Some(group.clone()),
                            request: Request::Elect,
                        };
                        match tokio::time::timeout(timeout, self.network.call(&a, ask)).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("{a} did not answer")),
                        }
                    }
                    Err(e) => Err(e),
                };
                (format!("hand {group} over to node {to}"), result)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot {what}");
        }
    }
}

async fn reconcile_loop(node: Weak<ClusterNode>) {
    while let Some(node) = node.upgrade() {
        // Marked before the pass: a change during it starts the next pass at once.
        let seen = node.meta.mark();
        node.reconcile().await;
        node.meta
            .changed_since(seen, Duration::from_millis(300))
            .await;
    }
}

fn group_named(group: Option<GroupId>) -> Result<GroupId, RpcError> {
    group.ok_or_else(|| RpcError::InvalidRequest("this request must name a shard group".into()))
}

fn no_copy(group: &GroupId) -> RpcError {
    RpcError::NotFound(format!("this node holds no copy of {group}"))
}

/// Whether the stored schema text describes `schema` (its name, fields and settings).
fn same_schema(stored: &str, schema: &CollectionSchema) -> bool {
    match CollectionSchema::from_json(stored.as_bytes()) {
        Ok(existing) => serde_json::to_value(&existing).ok() == serde_json::to_value(schema).ok(),
        Err(_) => false,
    }
}
