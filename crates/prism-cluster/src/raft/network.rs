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
//! is simply sent again under a new transfer id; the receiver drops a group's older transfer
//! when a newer one starts.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Raft, Snapshot, Vote};
use parking_lot::Mutex;
use prism_core::shard::snapshot::{SnapshotManifest, MANIFEST};
use serde::{Deserialize, Serialize};

use super::snapshot::{Meta, ShardSnapshot};
use super::types::{Node, ShardRaft};
use crate::network::Network;
use crate::rpc::{Answer, Envelope, GroupId, Request, RpcError};

/// Bytes of a snapshot file per call.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// A Raft message of one group.
#[derive(Debug, Serialize, Deserialize)]
enum RaftRequest {
    AppendEntries(AppendEntriesRequest<ShardRaft>),
    Vote(VoteRequest<u64>),
    /// Bytes of one file of snapshot transfer `transfer`, at `offset`.
    SnapshotChunk {
        transfer: String,
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
    Snapshot(SnapshotResponse<u64>),
    /// The receiving group refused or failed: why.
    Refused(String),
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("raft messages serialize")
}

/// Makes the clients one group's Raft core talks to its peers with.
pub struct GroupNetwork {
    network: Arc<dyn Network>,
    group: GroupId,
}

impl GroupNetwork {
    pub fn new(network: Arc<dyn Network>, group: GroupId) -> Self {
        GroupNetwork { network, group }
    }
}

impl RaftNetworkFactory<ShardRaft> for GroupNetwork {
    type Network = GroupClient;

    async fn new_client(&mut self, target: u64, node: &Node) -> GroupClient {
        GroupClient {
            network: self.network.clone(),
            group: self.group.clone(),
            target,
            address: node.addr.clone(),
            transfers: 0,
        }
    }
}

/// One group's messages to one peer.
pub struct GroupClient {
    network: Arc<dyn Network>,
    group: GroupId,
    target: u64,
    address: String,
    transfers: u64,
}

/// Why a call failed, before openraft's error types wrap it.
#[derive(Debug)]
enum CallError {
    /// Never reached the peer (or no answer in time): openraft backs off.
    Unreachable(RpcError),
    /// The peer answered with an error.
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl std::error::Error for CallError {}

impl GroupClient {
    async fn call(
        &self,
        request: &RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftReply, CallError> {
        let envelope = Envelope {
            group: Some(self.group.clone()),
            request: Request::Raft {
                message: encode(request),
            },
        };
        let reply = tokio::time::timeout(
            option.hard_ttl(),
            self.network.call(&self.address, envelope),
        )
        .await
        .map_err(|_| {
            CallError::Unreachable(RpcError::Unavailable(format!(
                "no answer from node {} within {:?}",
                self.target,
                option.hard_ttl()
            )))
        })?;
        match reply {
            Ok(Answer::Raft { message }) => match postcard::from_bytes(&message) {
                Ok(RaftReply::Refused(why)) => Err(CallError::Refused(why)),
                Ok(reply) => Ok(reply),
                Err(e) => Err(CallError::Refused(format!("undecodable raft reply: {e}"))),
            },
            Ok(other) => Err(CallError::Refused(format!(
                "unexpected answer to a raft message: {other:?}"
            ))),
            Err(e @ RpcError::Unavailable(_)) => Err(CallError::Unreachable(e)),
            Err(e) => Err(CallError::Refused(e.to_string())),
        }
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, Node, E> {
        match e {
            CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Refused(_) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    /// Sends every file of `snapshot`'s directory, the manifest first.
    async fn send_files(
        &self,
        transfer: &str,
        dir: &Path,
        option: &RPCOption,
    ) -> Result<(), CallError> {
        let manifest_bytes = std::fs::read(dir.join(MANIFEST)).map_err(|e| {
            CallError::Refused(format!(
                "cannot read the snapshot manifest in {}: {e}",
                dir.display()
            ))
        })?;
        let manifest: SnapshotManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| CallError::Refused(format!("unreadable snapshot manifest: {e}")))?;
        let mut paths = vec![MANIFEST.to_string()];
        paths.extend(manifest.files.iter().map(|f| f.path.clone()));
        for path in paths {
            let mut file = std::fs::File::open(dir.join(&path)).map_err(|e| {
                CallError::Refused(format!("cannot read snapshot file {path}: {e}"))
            })?;
            let mut offset = 0u64;
            loop {
                let mut bytes = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = read_full(&mut file, &mut bytes).map_err(|e| {
                    CallError::Refused(format!("cannot read snapshot file {path}: {e}"))
                })?;
                bytes.truncate(n);
                // An empty file still sends one (empty) chunk, so that it exists there.
                if n > 0 || offset == 0 {
                    let chunk = RaftRequest::SnapshotChunk {
                        transfer: transfer.to_string(),
                        path: path.clone(),
                        offset,
                        bytes,
                    };
                    match self.call(&chunk, option).await? {
                        RaftReply::ChunkStored => {}
                        other => {
                            return Err(CallError::Refused(format!(
                                "unexpected answer to a snapshot chunk: {other:?}"
                            )))
                        }
                    }
                }
                offset += n as u64;
                if n < SNAPSHOT_CHUNK_BYTES {
                    break;
                }
            }
        }
        Ok(())
    }
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

impl RaftNetwork<ShardRaft> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShardRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        match self.call(&RaftRequest::AppendEntries(rpc), &option).await {
            Ok(RaftReply::AppendEntries(response)) => Ok(response),
            Ok(other) => Err(self.rpc_error(CallError::Refused(format!(
                "unexpected answer to append-entries: {other:?}"
            )))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        match self.call(&RaftRequest::Vote(rpc), &option).await {
            Ok(RaftReply::Vote(response)) => Ok(response),
            Ok(other) => Err(self.rpc_error(CallError::Refused(format!(
                "unexpected answer to a vote: {other:?}"
            )))),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<ShardRaft>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<ShardRaft, Fatal<u64>>> {
        self.transfers += 1;
        let transfer = format!("{}-{}", snapshot.meta.snapshot_id, self.transfers);
        let dir = snapshot.snapshot.dir().to_path_buf();
        let meta = snapshot.meta.clone();
        let send = async {
            self.send_files(&transfer, &dir, &option).await?;
            let done = RaftRequest::SnapshotDone {
                transfer: transfer.clone(),
                vote,
                meta,
            };
            match self.call(&done, &option).await? {
                RaftReply::Snapshot(response) => Ok(response),
                other => Err(CallError::Refused(format!(
                    "unexpected answer to a snapshot: {other:?}"
                ))),
            }
        };
        // The handle keeps the snapshot's files while they are read.
        let _keep = snapshot.snapshot;
        tokio::select! {
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
struct Reception {
    transfer: String,
    snapshot: Box<ShardSnapshot>,
}

/// The groups of this node, answering their peers' Raft messages.
#[derive(Default)]
pub struct RaftHost {
    groups: Mutex<HashMap<GroupId, Raft<ShardRaft>>>,
    receptions: Mutex<HashMap<GroupId, Arc<tokio::sync::Mutex<Option<Reception>>>>>,
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
    pub fn add(&self, group: GroupId, raft: Raft<ShardRaft>) {
        self.groups.lock().insert(group, raft);
    }

    pub fn remove(&self, group: &GroupId) -> Option<Raft<ShardRaft>> {
        self.receptions.lock().remove(group);
        self.groups.lock().remove(group)
    }

    pub fn get(&self, group: &GroupId) -> Option<Raft<ShardRaft>> {
        self.groups.lock().get(group).cloned()
    }

    /// Answers one Raft message for `group`; the bytes are the envelope's opaque message.
    pub async fn handle(&self, group: &GroupId, message: &[u8]) -> Result<Answer, RpcError> {
        let Some(raft) = self.get(group) else {
            return Err(RpcError::NotFound(format!(
                "no raft group {group} on this node"
            )));
        };
        let request: RaftRequest = postcard::from_bytes(message)
            .map_err(|e| RpcError::InvalidRequest(format!("undecodable raft message: {e}")))?;
        let reply = match request {
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
                path,
                offset,
                bytes,
            } => {
                self.store_chunk(group, &raft, transfer, &path, offset, &bytes)
                    .await
            }
            RaftRequest::SnapshotDone {
                transfer,
                vote,
                meta,
            } => self.install(group, &raft, &transfer, vote, meta).await,
        };
        Ok(Answer::Raft { message: reply })
    }

    fn reception(&self, group: &GroupId) -> Arc<tokio::sync::Mutex<Option<Reception>>> {
        self.receptions
            .lock()
            .entry(group.clone())
            .or_default()
            .clone()
    }

    async fn store_chunk(
        &self,
        group: &GroupId,
        raft: &Raft<ShardRaft>,
        transfer: String,
        path: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Vec<u8> {
        let slot = self.reception(group);
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|r| r.transfer != transfer) {
            // A new transfer replaces an older, cut one (its directory goes with it).
            if offset != 0 || path != MANIFEST {
                return refused(format!(
                    "snapshot transfer {transfer} is not the one being received; send it again from the start"
                ));
            }
            match raft.begin_receiving_snapshot().await {
                Ok(snapshot) => *slot = Some(Reception { transfer, snapshot }),
                Err(e) => return refused(e),
            }
        }
        let reception = slot.as_ref().expect("set above");
        let Some(target) = inside(reception.snapshot.dir(), path) else {
            return refused(format!(
                "snapshot file path {path:?} is not a plain relative path"
            ));
        };
        let written = (|| -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(offset == 0)
                .write(true)
                .open(&target)?;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(bytes)
        })();
        match written {
            Ok(()) => encode(&RaftReply::ChunkStored),
            Err(e) => refused(format!("cannot store snapshot file {path}: {e}")),
        }
    }

    async fn install(
        &self,
        group: &GroupId,
        raft: &Raft<ShardRaft>,
        transfer: &str,
        vote: Vote<u64>,
        meta: Meta,
    ) -> Vec<u8> {
        let slot = self.reception(group);
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
        // damaged transfer is refused here, naming the file, and the leader sends it again
        // (a failed install inside openraft would stop the group).
        let dir = reception.snapshot.dir().to_path_buf();
        match tokio::task::spawn_blocking(move || prism_core::shard::snapshot::verify(&dir)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return refused(format!("the snapshot transfer is damaged: {e}")),
            Err(e) => return refused(format!("verifying the snapshot failed: {e}")),
        }
        // Files are synced by the install's staging copy; what arrived here is scratch.
        let snapshot = Snapshot {
            meta,
            snapshot: reception.snapshot,
        };
        match raft.install_full_snapshot(vote, snapshot).await {
            Ok(response) => encode(&RaftReply::Snapshot(response)),
            Err(e) => refused(e),
        }
    }
}
