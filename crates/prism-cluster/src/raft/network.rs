//! openraft's network over the cluster's [`Network`]: each Raft message of a group travels in
//! one RPC envelope tagged with the group, as opaque bytes that only this module encodes, so
//! that openraft's types stay inside `raft`.
//!
//! A snapshot travels as its files: the manifest first, then every file in chunks of
//! [`SNAPSHOT_CHUNK_BYTES`], one call each (over QUIC, each call is a stream of its own, so a
//! transfer shares the connection's flow control with the group's other traffic). Memory on
//! both sides is one chunk. The receiver writes the chunks into a directory openraft gave it
//! (`begin_receiving_snapshot`) and installs once every file arrived; the install checks each
//! file's SHA-256 against the manifest and refuses a damaged one, naming it. A cut transfer
//! is sent again under a new transfer id; the receiver drops a group's older transfer when a
//! newer one starts, and refuses a transfer from a leader whose vote is older than the one it
//! knows. A chunk that fails is retried a few times before the transfer is given up.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftTypeConfig, ServerState, Snapshot, Vote};
use parking_lot::Mutex;
use prism_core::shard::snapshot::{SnapshotManifest, MANIFEST};
use serde::{Deserialize, Serialize};

use super::quiescence::{CopyView, Role};
use super::snapshot::{meta_of, Meta, ShardSnapshot, SnapshotCatchUp, SnapshotStore};
use super::types::{Node, SeededTokio};
use super::{drop_off_workers, off_workers};
use crate::network::Network;
use crate::rpc::{Answer, Envelope, GroupId, NodeId, Request, RpcError};

/// Bytes of a snapshot file per call.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Attempts of one chunk before a transfer is given up (and sent again from the start).
const CHUNK_ATTEMPTS: usize = 3;

/// The pause after a failed snapshot transfer before openraft may start it again.
const TRANSFER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long an install may take once every file arrived: the receiver verifies every file,
/// copies the state files and reopens the shard before it answers. A fixed part, plus the
/// snapshot's size at a slow disk's pace; a lost answer then delays the follower by about
/// that, not by a fixed ten minutes.
fn install_deadline(bytes: u64) -> std::time::Duration {
    const BASE: std::time::Duration = std::time::Duration::from_secs(10);
    const BYTES_PER_SECOND: u64 = 16 << 20;
    BASE + std::time::Duration::from_millis(bytes.saturating_mul(1000) / BYTES_PER_SECOND)
}

/// What a group's type configuration is for this network: numeric node ids, snapshots as
/// directories, openraft's entries, on the shared runtime. Shard groups and the metadata group
/// both are.
pub trait GroupConfig:
    RaftTypeConfig<
    NodeId = u64,
    Node = Node,
    SnapshotData = ShardSnapshot,
    Entry = openraft::Entry<Self>,
    AsyncRuntime = SeededTokio,
    Responder = openraft::impls::OneshotResponder<Self>,
>
{
}

impl<C> GroupConfig for C where
    C: RaftTypeConfig<
        NodeId = u64,
        Node = Node,
        SnapshotData = ShardSnapshot,
        Entry = openraft::Entry<C>,
        AsyncRuntime = SeededTokio,
        Responder = openraft::impls::OneshotResponder<C>,
    >
{
}

/// A Raft message of one group.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
enum RaftRequest<C: RaftTypeConfig> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<u64>),
    /// Bytes of one file of snapshot transfer `transfer`, at `offset`, from a leader at
    /// `vote`.
    SnapshotChunk {
        transfer: String,
        vote: Vote<u64>,
        path: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Every file of transfer `transfer` was sent: install it.
    SnapshotDone {
        transfer: String,
        vote: Vote<u64>,
        meta: Meta,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum RaftReply {
    AppendEntries(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    ChunkStored,
    /// The receiver follows a newer leader (or candidate): the sender learns of it as
    /// openraft would from its own snapshot reply, and steps down.
    HigherVote(Vote<u64>),
    Snapshot(SnapshotResponse<u64>),
    /// The receiving group refused or failed: why.
    Refused(String),
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("raft messages serialize")
}

/// Makes the clients one group's Raft core talks to its peers with.
pub struct GroupNetwork<C> {
    network: Arc<dyn Network>,
    group: GroupId,
    config: PhantomData<C>,
}

impl<C> GroupNetwork<C> {
    pub fn new(network: Arc<dyn Network>, group: GroupId) -> Self {
        GroupNetwork {
            network,
            group,
            config: PhantomData,
        }
    }
}

impl<C: GroupConfig> RaftNetworkFactory<C> for GroupNetwork<C> {
    type Network = GroupClient<C>;

    async fn new_client(&mut self, target: u64, node: &Node) -> GroupClient<C> {
        GroupClient {
            network: self.network.clone(),
            group: self.group.clone(),
            target,
            address: node.addr.clone(),
            transfers: 0,
            config: PhantomData,
        }
    }
}

/// One group's messages to one peer.
pub struct GroupClient<C> {
    network: Arc<dyn Network>,
    group: GroupId,
    target: u64,
    address: String,
    transfers: u64,
    config: PhantomData<C>,
}

/// Why a call failed, before openraft's error types wrap it.
#[derive(Debug)]
enum CallError {
    /// Never reached the peer, or no such group there: openraft backs off.
    Unreachable(RpcError),
    /// A snapshot call got no answer within its deadline.
    TimedOut(String),
    /// The peer answered with an error.
    Refused(String),
    /// The peer knows a newer vote than the sender's.
    HigherVote(Vote<u64>),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::TimedOut(why) => write!(f, "timed out: {why}"),
            CallError::Refused(why) => write!(f, "refused: {why}"),
            CallError::HigherVote(vote) => write!(f, "the peer knows a newer vote: {vote}"),
        }
    }
}

impl std::error::Error for CallError {}

impl<C: GroupConfig> GroupClient<C> {
    /// One call. openraft bounds append-entries and votes itself (and counts its own
    /// timeout as such, without backing off); snapshot calls pass their own `deadline`.
    async fn call(
        &self,
        request: &RaftRequest<C>,
        deadline: Option<std::time::Duration>,
    ) -> Result<RaftReply, CallError> {
        let envelope = Envelope {
            group: Some(self.group.clone()),
            request: Request::Raft {
                message: encode(request),
                to: self.target,
            },
        };
        let call = self.network.call(&self.address, envelope);
        let reply = match deadline {
            None => call.await,
            Some(deadline) => tokio::time::timeout(deadline, call).await.map_err(|_| {
                CallError::TimedOut(format!(
                    "no answer from node {} within {deadline:?}",
                    self.target
                ))
            })?,
        };
        match reply {
            Ok(Answer::Raft { message }) => match postcard::from_bytes(&message) {
                Ok(RaftReply::Refused(why)) => Err(CallError::Refused(why)),
                Ok(reply) => Ok(reply),
                Err(e) => Err(CallError::Refused(format!("undecodable raft reply: {e}"))),
            },
            Ok(other) => Err(CallError::Refused(format!(
                "unexpected answer to a raft message: {other:?}"
            ))),
            // No such group there (not created yet, or deleted): back off as from a node
            // that cannot be reached.
            Err(
                e @ (RpcError::Unavailable(_) | RpcError::Unreachable(_) | RpcError::NotFound(_)),
            ) => Err(CallError::Unreachable(e)),
            Err(e) => Err(CallError::Refused(e.to_string())),
        }
    }

    /// One message openraft bounds itself (append-entries, a vote), and its expected reply:
    /// `expected` gives back any other reply, which is refused naming `what`.
    async fn exchange<T>(
        &self,
        request: &RaftRequest<C>,
        what: &str,
        expected: impl FnOnce(RaftReply) -> Result<T, RaftReply>,
    ) -> Result<T, RPCError<u64, Node, RaftError<u64>>> {
        match self.call(request, None).await.map(expected) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(other)) => Err(self.rpc_error(CallError::Refused(format!(
                "unexpected answer to {what}: {other:?}"
            )))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, Node, E> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::TimedOut(_) | CallError::Refused(_) | CallError::HigherVote(_) => {
                RPCError::Network(NetworkError::new(&e))
            }
        }
    }

    /// Sends every file of `snapshot`'s directory, the manifest first, and returns the bytes
    /// sent. Files are read on the blocking pool, a chunk at a time.
    async fn send_files(
        &self,
        transfer: &str,
        vote: Vote<u64>,
        dir: &Path,
        option: &RPCOption,
    ) -> Result<u64, CallError> {
        let manifest_path = dir.join(MANIFEST);
        let manifest = off_workers(move || std::fs::read(&manifest_path))
            .await
            .map_err(|e| {
                CallError::Refused(format!(
                    "cannot read the snapshot manifest in {}: {e}",
                    dir.display()
                ))
            })?;
        let manifest: SnapshotManifest = serde_json::from_slice(&manifest)
            .map_err(|e| CallError::Refused(format!("unreadable snapshot manifest: {e}")))?;
        let bytes = manifest.files.iter().map(|f| f.bytes).sum();
        let mut paths = vec![MANIFEST.to_string()];
        paths.extend(manifest.files.iter().map(|f| f.path.clone()));
        for path in paths {
            let file_path = dir.join(&path);
            let mut offset = 0u64;
            loop {
                let at = offset;
                let read_path = file_path.clone();
                let bytes = off_workers(move || read_chunk(&read_path, at))
                    .await
                    .map_err(|e| {
                        CallError::Refused(format!("cannot read snapshot file {path}: {e}"))
                    })?;
                let n = bytes.len();
                // An empty file still sends one (empty) chunk, so that it exists there.
                if n > 0 || offset == 0 {
                    let chunk = RaftRequest::SnapshotChunk {
                        transfer: transfer.to_string(),
                        vote,
                        path: path.clone(),
                        offset,
                        bytes,
                    };
                    self.send_chunk(&chunk, option).await?;
                }
                offset += n as u64;
                if n < SNAPSHOT_CHUNK_BYTES {
                    break;
                }
            }
        }
        Ok(bytes)
    }

    /// One chunk, tried up to [`CHUNK_ATTEMPTS`] times (storing a chunk again is harmless).
    async fn send_chunk(
        &self,
        chunk: &RaftRequest<C>,
        option: &RPCOption,
    ) -> Result<(), CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(chunk, Some(option.hard_ttl())).await {
                Ok(RaftReply::ChunkStored) => return Ok(()),
                Ok(RaftReply::HigherVote(vote)) => return Err(CallError::HigherVote(vote)),
                Ok(other) => {
                    return Err(CallError::Refused(format!(
                        "unexpected answer to a snapshot chunk: {other:?}"
                    )))
                }
                Err(e @ CallError::Refused(_)) => return Err(e),
                Err(e) if attempt >= CHUNK_ATTEMPTS => return Err(e),
                Err(_) => {}
            }
        }
    }
}

/// Up to [`SNAPSHOT_CHUNK_BYTES`] of the file at `path` from `offset`.
fn read_chunk(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let n = read_full(&mut file, &mut bytes)?;
    bytes.truncate(n);
    Ok(bytes)
}

/// Reads until `buffer` is full or the file ends.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl<C: GroupConfig> RaftNetwork<C> for GroupClient<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        self.exchange(
            &RaftRequest::AppendEntries(rpc),
            "append-entries",
            |reply| match reply {
                RaftReply::AppendEntries(response) => Ok(response),
                other => Err(other),
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        self.exchange(&RaftRequest::Vote(rpc), "a vote", |reply| match reply {
            RaftReply::Vote(response) => Ok(response),
            other => Err(other),
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<C>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<C, Fatal<u64>>> {
        self.transfers += 1;
        // Unique across clients and restarts: openraft makes a client per replication stream.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let transfer = format!("{}-{nanos:x}-{}", snapshot.meta.snapshot_id, self.transfers);
        let dir = snapshot.snapshot.dir().to_path_buf();
        let meta = snapshot.meta.clone();
        let send = async {
            let sent = async {
                let bytes = self.send_files(&transfer, vote, &dir, &option).await?;
                let done = RaftRequest::SnapshotDone {
                    transfer: transfer.clone(),
                    vote,
                    meta,
                };
                match self.call(&done, Some(install_deadline(bytes))).await? {
                    RaftReply::Snapshot(response) => Ok(response),
                    RaftReply::HigherVote(vote) => Err(CallError::HigherVote(vote)),
                    other => Err(CallError::Refused(format!(
                        "unexpected answer to a snapshot: {other:?}"
                    ))),
                }
            }
            .await;
            match sent {
                // openraft steps down when the reply carries a newer vote than its own.
                Err(CallError::HigherVote(vote)) => Ok(SnapshotResponse::new(vote)),
                Err(e) => {
                    tracing::warn!(group = %self.group, target = self.target, error = %e, "a snapshot transfer failed; it is sent again");
                    // openraft sends the snapshot again at once: pause first, so that a
                    // receiver that keeps refusing is not hammered.
                    tokio::time::sleep(TRANSFER_RETRY_PAUSE).await;
                    Err(e)
                }
                ok => ok,
            }
        };
        // The handle keeps the snapshot's files while they are read.
        let _keep = snapshot.snapshot;
        tokio::select! {
            // In a fixed order: a seeded run must not depend on tokio's random pick.
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => match sent {
                Ok(response) => Ok(response),
                Err(e @ CallError::Unreachable(_)) => {
                    Err(StreamingError::Unreachable(Unreachable::new(&e)))
                }
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            },
        }
    }
}

/// A snapshot being received by one group.
pub(crate) struct Reception {
    transfer: String,
    vote: Vote<u64>,
    snapshot: Box<ShardSnapshot>,
    /// Names the reception in the group's catch-up counts.
    ticket: u64,
}

pub(crate) type ReceptionSlot = Arc<tokio::sync::Mutex<Option<Reception>>>;

/// A group this node hosts, whatever its type configuration.
pub(crate) trait HostedGroup: Send + Sync {
    fn answer<'a>(
        &'a self,
        reception: ReceptionSlot,
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, RpcError>> + Send + 'a>>;

    fn as_any(&self) -> &dyn Any;

    /// The copy as liveness sees it, and the address of every member.
    fn view(&self, group: &GroupId) -> (CopyView, BTreeMap<u64, String>);

    /// Runs or stops openraft's own election timer (the liveness driver decides).
    fn set_election_timer(&self, on: bool);

    fn set_heartbeats(&self, on: bool);

    fn elect(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// How the copy caught up by snapshot.
    fn snapshot_catch_up(&self) -> SnapshotCatchUp;
}

struct Hosted<C: GroupConfig> {
    raft: Raft<C>,
    snapshots: Arc<SnapshotStore>,
}

impl<C: GroupConfig> HostedGroup for Hosted<C> {
    fn answer<'a>(
        &'a self,
        reception: ReceptionSlot,
        message: &'a [u8],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, RpcError>> + Send + 'a>> {
        Box::pin(answer(&self.raft, &self.snapshots, reception, message))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn snapshot_catch_up(&self) -> SnapshotCatchUp {
        self.snapshots.catch_up()
    }

    fn view(&self, group: &GroupId) -> (CopyView, BTreeMap<u64, String>) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let role = match (&metrics.running_state, metrics.state) {
            (Err(_), _) | (_, ServerState::Shutdown) => Role::Stopped,
            (_, ServerState::Leader) => Role::Leader,
            (_, ServerState::Follower | ServerState::Candidate) => Role::Voter,
            (_, ServerState::Learner) => Role::Learner,
        };
        let membership = metrics.membership_config.membership();
        let me = metrics.id;
        let view = CopyView {
            group: group.clone(),
            me,
            role,
            term: metrics.current_term,
            leader: metrics.current_leader,
            voters: membership.voter_ids().collect(),
            last_log: metrics.last_log_index,
            applied: metrics.last_applied.map(|id| id.index),
            membership_at: metrics.membership_config.log_id().map(|id| id.index),
            matched: metrics
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != me)
                .map(|(id, matched)| (*id, matched.map(|m| m.index)))
                .collect(),
            woken: false,
        };
        let addresses = membership
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        (view, addresses)
    }

    fn set_election_timer(&self, on: bool) {
        self.raft.runtime_config().elect(on);
    }

    fn set_heartbeats(&self, on: bool) {
        self.raft.runtime_config().heartbeat(on);
    }

    fn elect(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // A stopped group reports it through its metrics, which the next look sees.
            let _ = self.raft.trigger().elect().await;
        })
    }
}

/// The groups of this node, answering their peers' Raft messages and pings.
pub struct RaftHost {
    node: NodeId,
    incarnation: u64,
    groups: Mutex<HashMap<GroupId, Arc<dyn HostedGroup>>>,
    receptions: Mutex<HashMap<GroupId, ReceptionSlot>>,
    /// Groups a follower asked to heartbeat again since the liveness driver last looked.
    wakes: Mutex<BTreeSet<GroupId>>,
    /// The groups this node leads, as the liveness driver last saw them, and the version of
    /// that list (from 1, so that a peer holding none, 0, always gets it).
    leading: Mutex<(u64, BTreeSet<GroupId>)>,
    /// Peer nodes the liveness driver suspects (no answer to its pings lately).
    suspected: Mutex<BTreeSet<u64>>,
    /// This node's Raft id, once known (0 before): pings for another id are refused.
    raft_id: std::sync::atomic::AtomicU64,
}

fn refused(why: impl std::fmt::Display) -> Vec<u8> {
    encode(&RaftReply::Refused(why.to_string()))
}

/// A path inside a snapshot directory, never outside it.
fn inside(dir: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    (plain && !path.is_empty()).then(|| dir.join(relative))
}

impl RaftHost {
    /// The host of node `node` in its incarnation `incarnation`, which must differ at each
    /// start of the node (peers learn from it that the node restarted).
    pub fn new(node: NodeId, incarnation: u64) -> Self {
        RaftHost {
            node,
            incarnation,
            groups: Mutex::default(),
            receptions: Mutex::default(),
            wakes: Mutex::default(),
            leading: Mutex::new((1, BTreeSet::new())),
            suspected: Mutex::default(),
            raft_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// This node's Raft id: pings meant for another id are refused from now on.
    pub fn set_raft_id(&self, id: u64) {
        self.raft_id.store(id, std::sync::atomic::Ordering::Relaxed);
    }

    /// Peer nodes that did not answer the liveness driver's pings lately: a request sent there
    /// would likely wait out its time-out.
    pub fn suspected(&self) -> BTreeSet<u64> {
        self.suspected.lock().clone()
    }

    pub(crate) fn set_suspected(&self, nodes: BTreeSet<u64>) {
        *self.suspected.lock() = nodes;
    }

    /// This node now leads `groups`.
    pub(crate) fn set_leading(&self, groups: BTreeSet<GroupId>) {
        let mut leading = self.leading.lock();
        if leading.1 != groups {
            *leading = (leading.0 + 1, groups);
        }
    }

    /// The groups woken since the last call.
    pub(crate) fn take_wakes(&self) -> BTreeSet<GroupId> {
        std::mem::take(&mut *self.wakes.lock())
    }

    /// Every hosted group, in the order of their ids (a seeded run must not depend on a hash
    /// map's order).
    pub(crate) fn copies(&self) -> Vec<(GroupId, Arc<dyn HostedGroup>)> {
        let mut copies: Vec<_> = self
            .groups
            .lock()
            .iter()
            .map(|(id, group)| (id.clone(), group.clone()))
            .collect();
        copies.sort_by(|a, b| a.0.cmp(&b.0));
        copies
    }

    /// Answers for `group`, whose state machine keeps its snapshots in `snapshots`.
    pub fn add<C: GroupConfig>(
        &self,
        group: GroupId,
        raft: Raft<C>,
        snapshots: Arc<SnapshotStore>,
    ) {
        self.groups
            .lock()
            .insert(group, Arc::new(Hosted { raft, snapshots }));
    }

    /// Stops answering for `group`; true when it was hosted.
    pub fn remove(&self, group: &GroupId) -> bool {
        if let Some(reception) = self.receptions.lock().remove(group) {
            drop_off_workers(reception);
        }
        self.groups.lock().remove(group).is_some()
    }

    /// The Raft of `group`, when it is hosted with configuration `C`.
    pub fn get<C: GroupConfig>(&self, group: &GroupId) -> Option<Raft<C>> {
        let hosted = self.groups.lock().get(group).cloned()?;
        let raft = hosted.as_any().downcast_ref::<Hosted<C>>()?.raft.clone();
        Some(raft)
    }

    /// Answers one Raft message for `group`; the bytes are the envelope's opaque message.
    pub async fn handle(
        &self,
        group: &GroupId,
        message: &[u8],
        to: u64,
    ) -> Result<Answer, RpcError> {
        let Some(hosted) = self.groups.lock().get(group).cloned() else {
            return Err(RpcError::NotFound(format!(
                "no raft group {group} on this node"
            )));
        };
        let me = hosted.view(group).0.me;
        if me != to {
            return Err(RpcError::NotFound(format!(
                "a message of {group} for raft node {to} reached node {me}: this node restarted under another id"
            )));
        }
        let reception = self
            .receptions
            .lock()
            .entry(group.clone())
            .or_default()
            .clone();
        let reply = hosted.answer(reception, message).await?;
        Ok(Answer::Raft { message: reply })
    }
}

async fn answer<C: GroupConfig>(
    raft: &Raft<C>,
    snapshots: &Arc<SnapshotStore>,
    reception: ReceptionSlot,
    message: &[u8],
) -> Result<Vec<u8>, RpcError> {
    let request: RaftRequest<C> = postcard::from_bytes(message)
        .map_err(|e| RpcError::InvalidRequest(format!("undecodable raft message: {e}")))?;
    Ok(match request {
        RaftRequest::AppendEntries(rpc) => match raft.append_entries(rpc).await {
            Ok(response) => encode(&RaftReply::AppendEntries(response)),
            Err(e) => refused(e),
        },
        RaftRequest::Vote(rpc) => match raft.vote(rpc).await {
            Ok(response) => encode(&RaftReply::Vote(response)),
            Err(e) => refused(e),
        },
        RaftRequest::SnapshotChunk {
            transfer,
            vote,
            path,
            offset,
            bytes,
        } => {
            let chunk = Chunk {
                transfer,
                vote,
                path,
                offset,
                bytes,
            };
            store_chunk(raft, snapshots, &reception, chunk).await
        }
        RaftRequest::SnapshotDone {
            transfer,
            vote,
            meta,
        } => install(raft, snapshots, &reception, &transfer, vote, meta).await,
    })
}

/// One received piece of a snapshot file.
struct Chunk {
    transfer: String,
    vote: Vote<u64>,
    path: String,
    offset: u64,
    bytes: Vec<u8>,
}

async fn store_chunk<C: GroupConfig>(
    raft: &Raft<C>,
    snapshots: &SnapshotStore,
    reception: &ReceptionSlot,
    chunk: Chunk,
) -> Vec<u8> {
    let Chunk {
        transfer,
        vote,
        path,
        offset,
        bytes,
    } = chunk;
    let mut slot = reception.lock().await;
    if slot.as_ref().is_none_or(|r| r.transfer != transfer) {
        // A leader older than the one this node follows (a deposed one whose chunks
        // arrive late) must not replace the current transfer, and learns that it is deposed.
        let known = raft.metrics().borrow().vote;
        let newest = match slot.as_ref() {
            Some(r) if r.vote > known => r.vote,
            _ => known,
        };
        if vote < newest {
            return encode(&RaftReply::HigherVote(newest));
        }
        if offset != 0 || path != MANIFEST {
            return refused(format!(
                "snapshot transfer {transfer} is not the one being received; send it again from the start"
            ));
        }
        match raft.begin_receiving_snapshot().await {
            Ok(snapshot) => {
                // The transfer it replaces is dropped, and its directory removed, off the
                // async workers.
                let ticket = snapshots.reception_started(slot.is_some());
                let replaced = slot.replace(Reception {
                    transfer,
                    vote,
                    snapshot,
                    ticket,
                });
                if let Some(replaced) = replaced {
                    drop_off_workers(replaced);
                }
            }
            Err(e) => return refused(e),
        }
    }
    let reception = slot.as_ref().expect("set above");
    let ticket = reception.ticket;
    let Some(target) = inside(reception.snapshot.dir(), &path) else {
        return refused(format!(
            "snapshot file path {path:?} is not a plain relative path"
        ));
    };
    let length = bytes.len() as u64;
    let written = off_workers(move || -> std::io::Result<()> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(offset == 0)
            .write(true)
            .open(&target)?;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&bytes)
    })
    .await;
    match written {
        Ok(()) => {
            snapshots.received(ticket, length);
            encode(&RaftReply::ChunkStored)
        }
        Err(e) => refused(format!("cannot store snapshot file {path}: {e}")),
    }
}

async fn install<C: GroupConfig>(
    raft: &Raft<C>,
    snapshots: &Arc<SnapshotStore>,
    slot: &ReceptionSlot,
    transfer: &str,
    vote: Vote<u64>,
    meta: Meta,
) -> Vec<u8> {
    let reception = {
        let mut slot = slot.lock().await;
        match slot.take() {
            Some(r) if r.transfer == transfer => r,
            other => {
                *slot = other;
                return refused(format!(
                    "snapshot transfer {transfer} is not the one being received; send it again"
                ));
            }
        }
    };
    // Every file is checked against the manifest before openraft sees the snapshot: a
    // damaged transfer is refused here, naming the file, and the leader sends it again (a
    // failed install inside openraft would stop the group).
    let dir = reception.snapshot.dir().to_path_buf();
    let verified = off_workers(move || prism_core::shard::snapshot::verify(&dir)).await;
    let problem = match verified {
        Ok(manifest) => match meta_of(&manifest) {
            Ok(found) if found == meta => None,
            Ok(found) => Some(format!(
                "the snapshot's files hold {:?} (snapshot {}), not what the leader announced ({:?}, snapshot {})",
                found.last_log_id, found.snapshot_id, meta.last_log_id, meta.snapshot_id
            )),
            Err(e) => Some(e),
        },
        Err(e) => Some(format!("the snapshot transfer is damaged: {e}")),
    };
    if let Some(problem) = problem {
        tracing::warn!(%problem, "a snapshot transfer was refused; the leader sends it again");
        snapshots.reception_ended(reception.ticket, false);
        drop_off_workers(reception);
        return refused(problem);
    }
    // A newer leader may have appeared while the files travelled.
    let known = raft.metrics().borrow().vote;
    if vote < known {
        snapshots.reception_ended(reception.ticket, false);
        drop_off_workers(reception);
        return encode(&RaftReply::HigherVote(known));
    }
    // Durable and current before openraft sees it: openraft 0.9 purges the log up to the
    // snapshot as soon as it hands it to the state machine, before the install is durable.
    // After a crash in between, the state machine opens from this snapshot (the log no
    // longer holds what it covers).
    let store = snapshots.clone();
    let ticket = reception.ticket;
    let received = reception.snapshot;
    let current = meta.clone();
    // Off the async workers: making it current may remove the snapshot it replaces.
    let published = off_workers(move || -> std::io::Result<ShardSnapshot> {
        let dir = received.dir().to_path_buf();
        super::snapshot::sync_tree(&dir)?;
        let published = store.publish(&dir)?;
        drop(received);
        store.set_current(current, published.clone());
        Ok(published)
    })
    .await;
    let published = match published {
        Ok(published) => published,
        Err(e) => {
            snapshots.reception_ended(ticket, false);
            return refused(format!("cannot keep the received snapshot: {e}"));
        }
    };
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(published),
    };
    let installed = raft.install_full_snapshot(vote, snapshot).await;
    // openraft answers Ok without installing to a newer leader's vote.
    snapshots.reception_ended(
        ticket,
        installed
            .as_ref()
            .is_ok_and(|response| response.vote <= vote),
    );
    match installed {
        Ok(response) => encode(&RaftReply::Snapshot(response)),
        Err(e) => refused(e),
    }
}

/// A node that answers Raft messages and pings only (the engine's handler answers the rest
/// on a full node).
#[async_trait::async_trait]
impl crate::network::Handler for RaftHost {
    async fn handle(&self, _from: NodeId, envelope: Envelope) -> crate::rpc::Reply {
        match (&envelope.group, &envelope.request) {
            (Some(group), Request::Raft { message, to }) => {
                RaftHost::handle(self, group, message, *to).await
            }
            (Some(group), Request::Wake) => {
                if !self.groups.lock().contains_key(group) {
                    return Err(RpcError::NotFound(format!(
                        "no raft group {group} on this node"
                    )));
                }
                self.wakes.lock().insert(group.clone());
                Ok(Answer::Woken)
            }
            (None, Request::Ping) => Ok(Answer::Pong {
                node_id: self.node.clone(),
            }),
            (None, Request::Leaders { known, to }) => {
                let me = self.raft_id.load(std::sync::atomic::Ordering::Relaxed);
                if *to != 0 && me != 0 && *to != me {
                    return Err(RpcError::NotFound(format!(
                        "a ping for raft node {to} reached node {me}: that node restarted under another id"
                    )));
                }
                let (version, groups) = self.leading.lock().clone();
                Ok(Answer::Leaders {
                    incarnation: self.incarnation,
                    version,
                    groups: (*known != version).then(|| groups.into_iter().collect()),
                })
            }
            _ => Err(RpcError::InvalidRequest(
                "raft messages and pings only".into(),
            )),
        }
    }
}
