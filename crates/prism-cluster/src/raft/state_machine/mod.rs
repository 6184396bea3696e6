//! openraft's `RaftStateMachine` and `RaftSnapshotBuilder` over a shard copy of
//! `prism-core`, fed by its Raft group ([`Shard::open_replicated`]).
//!
//! A group's directory holds `state/` (the shard's state machine files: the text index and
//! the vector checkpoints, whose checkpoints record the applied log id and membership),
//! `snapshots/` ([`SnapshotStore`]) and the group's log, which is the log store's. Applying
//! runs on the shard's own thread: this adapter's task only waits for it, and openraft runs
//! the adapter on its state machine task, apart from the group's Raft core. Installing a
//! snapshot replaces `state/` only; the log and the vote are never touched.
//!
//! [`MemoryStateMachine`] is the other kind: a small deterministic state held in memory and
//! made durable by its snapshots, the metadata group's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::RwLock;
use prism_core::schema::CollectionSchema;
use prism_core::shard::{self, snapshot as shard_snapshot, Shard, ShardConfig};

use super::log_store::{from_core, to_core};
use super::snapshot::{
    decode_membership, encode_membership, meta_of, sync_tree, Meta, ShardSnapshot, SnapshotStore,
};
use super::types::{Node, ShardRaft};

mod memory;
pub use memory::{
    DefaultResponse, MemorySnapshotBuilder, MemoryStateMachine, MetaStateMachine, Replicated,
    StateReader, StateView,
};

type Membership = StoredMembership<u64, Node>;

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// The shard copy a group currently feeds. Installing a snapshot replaces it; readers take
/// the current one for each request.
#[derive(Clone)]
pub struct ShardSlot(Arc<RwLock<Arc<Shard>>>);

impl ShardSlot {
    pub fn current(&self) -> Arc<Shard> {
        self.0.read().clone()
    }

    fn replace(&self, shard: Arc<Shard>) -> Arc<Shard> {
        std::mem::replace(&mut *self.0.write(), shard)
    }
}

/// Where a group keeps its files.
#[derive(Debug, Clone)]
pub struct GroupDirs {
    pub root: PathBuf,
}

impl GroupDirs {
    pub fn new(root: &Path) -> Self {
        GroupDirs {
            root: root.to_path_buf(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn log(&self) -> PathBuf {
        self.root.join("log")
    }
}

/// A shard copy as a Raft group's state machine.
pub struct ShardStateMachine {
    dirs: GroupDirs,
    schema: Arc<CollectionSchema>,
    config: ShardConfig,
    shard: ShardSlot,
    snapshots: Arc<SnapshotStore>,
    /// Held shared by a snapshot build and exclusively by an install, which replaces the
    /// shard the build reads (openraft runs builds in a task of their own).
    replacing: Arc<tokio::sync::RwLock<()>>,
}

/// Runs blocking work (file I/O, joins) off the async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AnyError> + Send + 'static,
) -> Result<T, AnyError> {
    super::off_workers(work).await
}

impl ShardStateMachine {
    /// Opens the group's state machine in `dirs` (created if empty), finishing a snapshot
    /// install a crash interrupted. A kept snapshot newer than the state is installed first:
    /// the network keeps a received snapshot before openraft purges the log behind it, so the
    /// log may no longer hold what the snapshot covers. Blocking.
    pub fn open(
        dirs: GroupDirs,
        schema: Arc<CollectionSchema>,
        config: ShardConfig,
    ) -> prism_core::Result<Self> {
        prism_core::log::create_dir_durable(&dirs.root)?;
        shard_snapshot::finish_interrupted_install(&dirs.state())?;
        let mut shard = Shard::open_replicated(&dirs.state(), schema.clone(), config.clone())?;
        let snapshots = SnapshotStore::open(&dirs.snapshots())
            .map_err(|e| prism_core::Error::io(dirs.snapshots(), e))?;
        if let Some((meta, kept)) = snapshots.current() {
            if meta.last_log_id > shard.opened_at().applied.map(from_core) {
                tracing::info!(snapshot = %meta.snapshot_id, "installing a kept snapshot newer than the state machine");
                let manifest = shard_snapshot::verify(kept.dir())?;
                shard.close_for_delete()?;
                drop(shard);
                let staging = shard_snapshot::stage(kept.dir(), &manifest, &dirs.state(), None)?;
                shard_snapshot::swap_in(&staging, &dirs.state())?;
                shard = Shard::open_replicated(&dirs.state(), schema.clone(), config.clone())?;
            }
        }
        Ok(ShardStateMachine {
            dirs,
            schema,
            config,
            shard: ShardSlot(Arc::new(RwLock::new(Arc::new(shard)))),
            snapshots: Arc::new(snapshots),
            replacing: Arc::new(tokio::sync::RwLock::new(())),
        })
    }

    /// The applied log id the shard opened at: before the group starts,
    /// `log_store::reconcile` makes the log agree with it.
    pub fn applied(&self) -> Option<LogId<u64>> {
        self.shard.current().opened_at().applied.map(from_core)
    }

    /// The group's snapshots (the network keeps received ones here).
    pub fn snapshots(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }

    /// The shard copy, for reads.
    pub fn shard(&self) -> ShardSlot {
        self.shard.clone()
    }

    /// Hands `entries` to the shard's thread and waits until they are applied. A full command
    /// queue is waited out: committed entries are never refused.
    async fn apply_to_shard(
        &self,
        entries: Vec<shard::LogEntry>,
    ) -> Result<shard::AppliedState, StorageError<u64>> {
        let last = entries.last().map(|e| from_core(e.id));
        let failed = |e: &dyn std::fmt::Display| -> StorageError<u64> {
            match last {
                Some(id) => StorageIOError::apply(id, any(e)).into(),
                None => StorageIOError::write_state_machine(any(e)).into(),
            }
        };
        let receiver = loop {
            match self.shard.current().apply(entries.clone()) {
                Ok(receiver) => break receiver,
                Err(prism_core::Error::Overloaded) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(failed(&e)),
            }
        };
        match receiver.await {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(e)) => Err(failed(&e)),
            Err(_) => Err(failed(&"the shard stopped while applying")),
        }
    }
}

/// Builds snapshots of a group's shard copy.
pub struct ShardSnapshotBuilder {
    shard: ShardSlot,
    snapshots: Arc<SnapshotStore>,
    replacing: Arc<tokio::sync::RwLock<()>>,
}

impl RaftSnapshotBuilder<ShardRaft> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ShardRaft>, StorageError<u64>> {
        let _no_install = self.replacing.read().await;
        let shard = self.shard.current();
        let snapshots = self.snapshots.clone();
        let (id, dir) = snapshots.new_dir("built");
        let write_error = |e: AnyError| StorageError::from(StorageIOError::write_snapshot(None, e));
        let (meta, snapshot) = blocking(move || {
            let built = shard
                .build_snapshot_as(&dir, Some(id))
                .and_then(|manifest| {
                    meta_of(&manifest).map_err(|message| prism_core::Error::Corrupt {
                        path: dir.clone(),
                        message,
                    })
                });
            let meta = match built {
                Ok(meta) => meta,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(any(e));
                }
            };
            let snapshot = snapshots.publish(&dir).map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                any(e)
            })?;
            snapshots.set_current(meta.clone(), snapshot.clone());
            Ok((meta, snapshot))
        })
        .await
        .map_err(write_error)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        })
    }
}

/// The entry as the shard's state machine takes it.
fn to_shard_entry(entry: openraft::Entry<ShardRaft>) -> shard::LogEntry {
    let id = to_core(&entry.log_id);
    let payload = match entry.payload {
        EntryPayload::Blank => shard::EntryPayload::Blank,
        EntryPayload::Normal(write) => shard::EntryPayload::Write(write.ops),
        EntryPayload::Membership(membership) => shard::EntryPayload::Membership(encode_membership(
            &Membership::new(Some(entry.log_id), membership),
        )),
    };
    shard::LogEntry { id, payload }
}

impl RaftStateMachine<ShardRaft> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let read_error = |e: &dyn std::fmt::Display| -> StorageError<u64> {
            StorageIOError::read_state_machine(any(e)).into()
        };
        let position = self
            .shard
            .current()
            .position()
            .map_err(|e| read_error(&e))?
            .await
            .map_err(|_| read_error(&"the shard stopped"))?;
        let membership =
            decode_membership(position.membership.as_deref()).map_err(|e| read_error(&e))?;
        Ok((position.applied.map(from_core), membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<ShardRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<shard::LogEntry> = entries.into_iter().map(to_shard_entry).collect();
        let count = entries.len();
        if count > 0 {
            self.apply_to_shard(entries).await?;
        }
        Ok(vec![(); count])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ShardSnapshotBuilder {
            shard: self.shard.clone(),
            snapshots: self.snapshots.clone(),
            replacing: self.replacing.clone(),
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
        let _no_build = self.replacing.write().await;
        let received = *snapshot;
        let (state_dir, expected) = (self.dirs.state(), meta.clone());
        let snapshots = self.snapshots.clone();
        // 1. Verify every file, stage a copy of the state machine's files beside `state/`,
        //    and keep the snapshot (published) to serve it. A crash from here until the swap
        //    leaves the old state and a newer snapshot, which the next open forgets.
        let (staging, published) = blocking(move || {
            let source = received.dir().to_path_buf();
            let manifest = shard_snapshot::verify(&source).map_err(any)?;
            let found = meta_of(&manifest).map_err(any)?;
            if found.last_log_id != expected.last_log_id
                || found.last_membership != expected.last_membership
            {
                return Err(any(format!(
                    "the snapshot in {} holds {:?} with membership {:?}, not what its metadata says ({:?}, {:?})",
                    source.display(),
                    found.last_log_id,
                    found.last_membership,
                    expected.last_log_id,
                    expected.last_membership
                )));
            }
            let staging =
                shard_snapshot::stage(&source, &manifest, &state_dir, None).map_err(any)?;
            let published = keep(&snapshots, received)?;
            Ok((staging, published))
        })
        .await
        .map_err(install_error.clone())?;
        // 2. Swap it in: only this shard's writes and reads wait.
        let (schema, config, slot) = (self.schema.clone(), self.config.clone(), self.shard.clone());
        let (state_dir, snapshots, meta) =
            (self.dirs.state(), self.snapshots.clone(), meta.clone());
        let old = slot.current();
        blocking(move || {
            old.close_for_delete().map_err(any)?;
            shard_snapshot::swap_in(&staging, &state_dir).map_err(any)?;
            let shard = Shard::open_replicated(&state_dir, schema, config).map_err(any)?;
            slot.replace(Arc::new(shard));
            if !snapshots.is_current(&published) {
                snapshots.set_current(meta, published);
            }
            Ok(())
        })
        .await
        .map_err(install_error)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ShardRaft>>, StorageError<u64>> {
        Ok(self.snapshots.current().map(|(meta, snapshot)| Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        }))
    }
}

/// A scratch directory for a snapshot being received.
// openraft's own error type, as its trait methods return it.
#[allow(clippy::result_large_err)]
fn receiving(snapshots: &SnapshotStore) -> Result<Box<ShardSnapshot>, StorageError<u64>> {
    let (_, dir) = snapshots.new_dir("receiving");
    std::fs::create_dir_all(&dir)
        .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, any(e))))?;
    Ok(Box::new(snapshots.scratch(dir)))
}

/// How an install of the snapshot `meta` describes its failures.
fn install_error(meta: &Meta) -> impl Fn(AnyError) -> StorageError<u64> + Clone {
    let signature = Some(meta.signature());
    move |e: AnyError| StorageError::from(StorageIOError::write_snapshot(signature.clone(), e))
}

/// The received snapshot, kept (published) to serve it: as it is when the network already
/// published it, else a durable copy of its own.
fn keep(snapshots: &SnapshotStore, received: ShardSnapshot) -> Result<ShardSnapshot, AnyError> {
    if snapshots.is_current(&received) {
        return Ok(received);
    }
    let own = snapshots.new_dir("installed").1;
    copy_or_move_into(&received, &own)?;
    // The reception's files were written without fsyncs: the kept copy serves other
    // followers after a restart, so it must be whole.
    sync_tree(&own).map_err(any)?;
    snapshots.publish(&own).map_err(any)
}

/// Puts a received snapshot's files in `own`: renamed when they are this group's own
/// reception, linked (or copied) file by file when another holder still uses them.
fn copy_or_move_into(received: &ShardSnapshot, own: &Path) -> Result<(), AnyError> {
    let source = received.dir();
    let ours = source.parent() == own.parent()
        && source
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("receiving-"));
    if ours {
        std::fs::rename(source, own).map_err(any)?;
        return Ok(());
    }
    copy_tree(source, own).map_err(any)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    prism_core::log::sync_dir(to).map_err(std::io::Error::other)
}
