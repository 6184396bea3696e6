//! A state machine held in memory and made durable by its snapshots: the metadata group's.
//! Applying changes the state in place; a snapshot writes the whole state as one file in a
//! snapshot directory sealed with its manifest (the same format a shard's snapshot has, so
//! the same network streams it). At open, the newest published snapshot is the state and its
//! position; openraft applies the committed entries after it again from the log.

use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use prism_core::shard::{snapshot as shard_snapshot, AppliedState};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::log_store::to_core;
use super::super::network::GroupConfig;
use super::super::snapshot::{encode_membership, meta_of, Meta, ShardSnapshot, SnapshotStore};
use super::super::types::{MetaRaft, Node};
use super::{any, install_error, receiving};
use crate::metadata::{MetaCommand, MetaResponse, MetadataState};

type Membership = StoredMembership<u64, Node>;

/// The file that holds the state in a snapshot directory.
const STATE_FILE: &str = "state.postcard";

/// A deterministic state: the same commands in the same order give the same state, and the
/// same [`Replicated::checksum`], on every copy.
pub trait Replicated:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    type Command;
    type Response: DefaultResponse;
    fn apply(&mut self, command: &Self::Command) -> Self::Response;
    fn checksum(&self) -> u64;
}

impl Replicated for MetadataState {
    type Command = MetaCommand;
    type Response = MetaResponse;

    fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        MetadataState::apply(self, command)
    }

    fn checksum(&self) -> u64 {
        MetadataState::checksum(self)
    }
}

/// The state and where it stands.
#[derive(Default, Clone)]
struct Applied<S> {
    state: S,
    last: Option<LogId<u64>>,
    membership: Membership,
    /// Snapshots installed from a leader since open.
    installs: u64,
}

/// A [`Replicated`] state as a Raft group's state machine.
pub struct MemoryStateMachine<C, S> {
    applied: Arc<Mutex<Applied<S>>>,
    snapshots: Arc<SnapshotStore>,
    config: std::marker::PhantomData<C>,
}

/// The metadata group's state machine.
pub type MetaStateMachine = MemoryStateMachine<MetaRaft, MetadataState>;

/// What a copy holds, for reads and checks: its state and last applied log id (as
/// (term, index)), taken together.
pub struct StateView<S> {
    pub state: S,
    pub applied: Option<(u64, u64)>,
    /// Snapshots installed from a leader since the state machine opened.
    pub installs: u64,
}

/// A handle for reading the state while the group runs.
pub struct StateReader<S>(Arc<Mutex<Applied<S>>>);

impl<S: Clone> StateReader<S> {
    pub fn read(&self) -> StateView<S> {
        let applied = self.0.lock();
        StateView {
            state: applied.state.clone(),
            applied: applied.last.map(|id| (id.leader_id.term, id.index)),
            installs: applied.installs,
        }
    }
}

fn read_snapshot<S: DeserializeOwned>(dir: &std::path::Path) -> Result<S, AnyError> {
    let bytes = std::fs::read(dir.join(STATE_FILE)).map_err(any)?;
    postcard::from_bytes(&bytes).map_err(any)
}

impl<C, S: Replicated> MemoryStateMachine<C, S> {
    /// Opens the state machine whose snapshots are kept in `snapshots_dir`. Blocking.
    pub fn open(snapshots_dir: PathBuf) -> std::io::Result<Self> {
        let snapshots = SnapshotStore::open(&snapshots_dir)?;
        let applied = match snapshots.current() {
            Some((meta, snapshot)) => Applied {
                state: read_snapshot(snapshot.dir()).map_err(std::io::Error::other)?,
                last: meta.last_log_id,
                membership: meta.last_membership,
                installs: 0,
            },
            None => Applied::default(),
        };
        Ok(MemoryStateMachine {
            applied: Arc::new(Mutex::new(applied)),
            snapshots: Arc::new(snapshots),
            config: std::marker::PhantomData,
        })
    }

    /// The last applied log id: before the group starts, `log_store::reconcile` makes the log
    /// agree with it.
    pub fn applied(&self) -> Option<LogId<u64>> {
        self.applied.lock().last
    }

    /// The group's snapshots (the network keeps received ones here).
    pub fn snapshots(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }

    pub fn reader(&self) -> StateReader<S> {
        StateReader(self.applied.clone())
    }
}

/// Builds snapshots of a [`MemoryStateMachine`].
pub struct MemorySnapshotBuilder<S> {
    applied: Arc<Mutex<Applied<S>>>,
    snapshots: Arc<SnapshotStore>,
}

impl<C, S> RaftSnapshotBuilder<C> for MemorySnapshotBuilder<S>
where
    C: GroupConfig,
    S: Replicated,
{
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let write_error = |e: AnyError| StorageError::from(StorageIOError::write_snapshot(None, e));
        let Applied {
            state,
            last,
            membership,
            ..
        } = self.applied.lock().clone();
        let (id, dir) = self.snapshots.new_dir("built");
        // Small enough (the metadata) to write in place.
        let built = (|| -> Result<(Meta, ShardSnapshot), AnyError> {
            prism_core::log::create_dir_durable(&dir).map_err(any)?;
            let bytes = postcard::to_stdvec(&state).map_err(any)?;
            prism_core::log::write_atomically(&dir.join(STATE_FILE), &bytes).map_err(any)?;
            let position = AppliedState {
                applied: last.as_ref().map(to_core),
                membership: Some(encode_membership(&membership)),
            };
            let manifest = shard_snapshot::seal(&dir, position, Some(id)).map_err(any)?;
            let meta = meta_of(&manifest).map_err(any)?;
            let snapshot = self.snapshots.publish(&dir).map_err(any)?;
            self.snapshots.set_current(meta.clone(), snapshot.clone());
            Ok((meta, snapshot))
        })();
        let (meta, snapshot) = built.map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            write_error(e)
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        })
    }
}

impl<C, S> RaftStateMachine<C> for MemoryStateMachine<C, S>
where
    C: GroupConfig + RaftTypeConfig<D = S::Command, R = S::Response>,
    S: Replicated,
    S::Command: Send,
    S::Response: Send,
{
    type SnapshotBuilder = MemorySnapshotBuilder<S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let applied = self.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<S::Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.lock();
        let mut responses = Vec::new();
        for entry in entries {
            // openraft wants a response for every entry it hands over; an entry at or
            // below what is applied (none should come) changes nothing.
            let again = applied.last.is_some_and(|last| entry.log_id <= last);
            if !again {
                applied.last = Some(entry.log_id);
            }
            match entry.payload {
                EntryPayload::Normal(command) if !again => {
                    responses.push(applied.state.apply(&command));
                    continue;
                }
                EntryPayload::Membership(membership) if !again => {
                    applied.membership = Membership::new(Some(entry.log_id), membership);
                }
                _ => {}
            }
            responses.push(S::Response::default_response());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MemorySnapshotBuilder {
            applied: self.applied.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<ShardSnapshot>, StorageError<u64>> {
        receiving(&self.snapshots)
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<ShardSnapshot>,
    ) -> Result<(), StorageError<u64>> {
        let install_error = install_error(meta);
        let received = *snapshot;
        let installed = (|| -> Result<(S, ShardSnapshot), AnyError> {
            let manifest = shard_snapshot::verify(received.dir()).map_err(any)?;
            let found = meta_of(&manifest).map_err(any)?;
            if found.last_log_id != meta.last_log_id
                || found.last_membership != meta.last_membership
            {
                return Err(any(format!(
                    "the snapshot in {} holds {:?}, not what its metadata says ({:?})",
                    received.dir().display(),
                    found.last_log_id,
                    meta.last_log_id
                )));
            }
            let state: S = read_snapshot(received.dir())?;
            let published = super::keep(&self.snapshots, received)?;
            Ok((state, published))
        })();
        let (state, published) = installed.map_err(install_error)?;
        {
            let mut applied = self.applied.lock();
            applied.state = state;
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.installs += 1;
        }
        if !self.snapshots.is_current(&published) {
            self.snapshots.set_current(meta.clone(), published);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(self.snapshots.current().map(|(meta, snapshot)| Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        }))
    }
}

/// The response to an entry that carries no command (blank, membership).
pub trait DefaultResponse {
    fn default_response() -> Self;
}

impl DefaultResponse for MetaResponse {
    fn default_response() -> Self {
        MetaResponse::Done
    }
}

impl DefaultResponse for () {
    fn default_response() -> Self {}
}
