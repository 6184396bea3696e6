//! The collections of one node and the data directory that holds them.
//!
//! Layout: `data_dir/LOCK`, and `data_dir/collections/<name>/collection.json` plus
//! `data_dir/collections/<name>/shards/<n>/` for each local shard copy.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs4::fs_std::FileExt;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::log::LogId;
use crate::log::{create_dir_durable, sync_dir};
use crate::schema::{validate_collection_name, CollectionSchema};
use crate::shard::{
    snapshot, Op, Proposer, ReplayProgress, Shard, ShardConfig, ShardStats, WriteHealth,
};

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub shard: ShardConfig,
    /// Most collections this node holds; a create beyond it is refused before anything is
    /// written. The server derives it from the process limits (see [`crate::limits`]).
    pub max_collections: usize,
}

/// Why one document of a batch was refused.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DocumentError {
    pub id: String,
    pub code: String,
    pub message: String,
}

/// A collection held by this node. On a single node all of its data lives in one local shard
/// copy; `schema.shards` governs how a cluster splits it.
pub struct Collection {
    schema: Arc<CollectionSchema>,
    shard: Shard,
    dir: PathBuf,
}

impl Collection {
    pub fn name(&self) -> &str {
        &self.schema.name
    }

    pub fn schema(&self) -> &Arc<CollectionSchema> {
        &self.schema
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn stats(&self) -> ShardStats {
        let mut stats = self.shard.stats();
        stats.size_bytes = crate::shard::dir_size(&self.dir);
        stats
    }

    /// Who orders this collection's writes (see [`Proposer`]): its shard's own log on a
    /// single node.
    fn proposer(&self) -> &dyn Proposer {
        &self.shard
    }

    /// The one write path, for HTTP and for other nodes' calls alike: proposes `ops`, waits
    /// until they are durable and applied, then for search visibility as `refresh` asks.
    /// A refresh that does not happen does not undo the write: the receipt says why the
    /// write is not searchable yet.
    pub async fn write(&self, ops: Vec<Op>, refresh: Refresh) -> Result<WriteReceipt> {
        let log_id = self.proposer().propose(ops).await?;
        let not_searchable = self.visibility(log_id.index, refresh).await.err();
        Ok(WriteReceipt {
            log_id,
            not_searchable,
        })
    }

    /// Waits until log index `index` is searchable as `refresh` asks; Err says why not.
    async fn visibility(&self, index: u64, refresh: Refresh) -> std::result::Result<(), String> {
        let shard = &self.shard;
        match refresh {
            Refresh::No => Ok(()),
            Refresh::WaitFor => {
                let mut visible = shard.visible_index();
                let deadline = tokio::time::Instant::now() + WAIT_FOR_LIMIT;
                loop {
                    let step = tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        visible.wait_for(|v| *v >= index),
                    )
                    .await;
                    match step {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(_)) => return Err("the shard closed".into()),
                        Err(_) => {}
                    }
                    // A shard that cannot checkpoint will not make the write visible soon:
                    // say so now instead of at the deadline.
                    let health = shard.health();
                    if matches!(health, WriteHealth::DiskFull(_) | WriteHealth::Failed(_)) {
                        return Err(format!("{health:?}"));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("no refresh within {WAIT_FOR_LIMIT:?}"));
                    }
                }
            }
            Refresh::Now => match shard.request_refresh() {
                Ok(rx) => rx
                    .await
                    .unwrap_or(Err(Error::ShuttingDown))
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Validates documents; valid ones become upserts, invalid ones are counted, and the
    /// first [`MAX_REPORTED_ERRORS`] of them reported per id (an answer must not grow with a
    /// hostile batch).
    pub fn prepare_upserts(&self, documents: Vec<Value>) -> PreparedBatch {
        prepare_upserts(&self.schema, documents)
    }
}

/// Validates documents against `schema`; valid ones become upserts, invalid ones are
/// counted, and the first [`MAX_REPORTED_ERRORS`] of them reported per id.
pub fn prepare_upserts(schema: &CollectionSchema, documents: Vec<Value>) -> PreparedBatch {
    let mut ops = Vec::with_capacity(documents.len());
    let mut errors = Vec::new();
    let mut failed = 0;
    for doc in documents {
        match schema.prepare_document(doc) {
            Ok(prepared) => ops.push(Op::Upsert(Arc::new(prepared))),
            Err(_) if errors.len() >= MAX_REPORTED_ERRORS => failed += 1,
            Err(e) => {
                failed += 1;
                let id = match &e {
                    Error::InvalidDocument { id, .. } => id.clone(),
                    _ => String::new(),
                };
                let message = match &e {
                    Error::InvalidDocument { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                errors.push(DocumentError {
                    id,
                    code: e.code().to_string(),
                    message,
                });
            }
        }
    }
    PreparedBatch {
        ops,
        errors,
        failed,
    }
}

/// When a write returns relative to search visibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Refresh {
    /// Once durable (the default).
    #[default]
    No,
    /// Once a scheduled refresh made it searchable.
    WaitFor,
    /// After refreshing now.
    Now,
}

/// Longest a [`Refresh::WaitFor`] write waits for visibility after it is durable.
pub const WAIT_FOR_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// An acknowledged write: durable and applied at `log_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    pub log_id: LogId,
    /// Why the refresh the write asked for did not make it searchable, if it did not.
    pub not_searchable: Option<String>,
}

/// The most per-document errors an answer reports in full; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// A validated batch: the operations to write and the documents refused.
#[derive(Debug)]
pub struct PreparedBatch {
    pub ops: Vec<Op>,
    /// The first [`MAX_REPORTED_ERRORS`] refusals.
    pub errors: Vec<DocumentError>,
    /// How many documents were refused in all.
    pub failed: usize,
}

/// The node's collections.
pub struct Engine {
    config: EngineConfig,
    collections: RwLock<BTreeMap<String, Arc<Collection>>>,
    /// Collections whose data could not be opened, with the reason. They stay on disk and
    /// are reported; the rest of the node serves.
    unavailable: RwLock<BTreeMap<String, String>>,
    /// Collections found on disk and not opened yet (see [`Engine::recover`]): their requests
    /// are answered `collection_recovering` with this progress.
    recovering: RwLock<BTreeMap<String, Arc<Recovery>>>,
    /// Set by [`Engine::close`]: a recovery still running closes what it opens.
    closed: std::sync::atomic::AtomicBool,
    /// One snapshot install at a time: installs stage into a fixed directory beside the shard.
    installing: parking_lot::Mutex<()>,
    _lock: File,
}

fn write_schema(path: &Path, schema: &CollectionSchema) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(schema).expect("schema serializes");
    fs::write(path, bytes)
        .and_then(|_| File::open(path)?.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn collection_dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// A collection waiting for, or in, its opening replay.
#[derive(Debug)]
pub struct Recovery {
    pub progress: ReplayProgress,
    /// Set when its replay began.
    started: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// What `/health` reports of a recovering collection.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecoveryStatus {
    pub collection: String,
    /// `waiting` (another collection replays first) or `replaying`.
    #[schema(value_type = String)]
    pub state: &'static str,
    pub replayed_entries: u64,
    pub total_entries: u64,
    pub elapsed_ms: u64,
}

impl Recovery {
    fn status(&self, collection: &str) -> RecoveryStatus {
        let started = *self.started.lock();
        RecoveryStatus {
            collection: collection.to_string(),
            state: if started.is_some() {
                "replaying"
            } else {
                "waiting"
            },
            replayed_entries: self.progress.replayed(),
            total_entries: self.progress.total(),
            elapsed_ms: started.map_or(0, |s| s.elapsed().as_millis() as u64),
        }
    }
}

impl Engine {
    /// Locks the data directory and opens every collection in it.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        let engine = Self::open_deferred(config)?;
        engine.recover();
        Ok(engine)
    }

    /// Locks the data directory and lists its collections without opening them: each
    /// answers `collection_recovering` until [`Engine::recover`] has opened it, so that a
    /// server can listen (and report progress) while logs replay.
    pub fn open_deferred(config: EngineConfig) -> Result<Engine> {
        let root = &config.data_dir;
        let collections_dir = root.join("collections");
        create_dir_durable(&collections_dir)?;
        let lock_path = root.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::DataDirLocked {
                    path: root.clone(),
                    reason: "another process holds LOCK".into(),
                })
            }
            Err(e) => {
                return Err(Error::DataDirLocked {
                    path: root.clone(),
                    reason: e.to_string(),
                })
            }
        }
        let engine = Engine {
            config,
            collections: RwLock::new(BTreeMap::new()),
            unavailable: RwLock::new(BTreeMap::new()),
            recovering: RwLock::new(BTreeMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            installing: parking_lot::Mutex::new(()),
            _lock: lock,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&collections_dir).map_err(|e| Error::io(&collections_dir, e))? {
            let entry = entry.map_err(|e| Error::io(&collections_dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.path().is_dir() {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a collection directory");
                continue;
            }
            if name.starts_with('.') {
                // Leftovers of an interrupted create or delete.
                let _ = fs::remove_dir_all(entry.path());
                continue;
            }
            names.push(name);
        }
        if names.len() > engine.config.max_collections {
            tracing::warn!(
                collections = names.len(),
                limit = engine.config.max_collections,
                "the data directory holds more collections than this process's limits allow; opening them all, but creates are refused"
            );
        }
        for name in names {
            let recovery = Recovery {
                progress: ReplayProgress::default(),
                started: parking_lot::Mutex::new(None),
            };
            engine.recovering.write().insert(name, Arc::new(recovery));
        }
        Ok(engine)
    }

    /// Opens every collection [`Engine::open_deferred`] found, one after the other (each
    /// replay spreads its vector inserts over the cores), each becoming available as soon as
    /// it is open. One bad collection never stops the node: it is reported unavailable.
    /// Blocking.
    pub fn recover(&self) {
        let waiting: Vec<(String, Arc<Recovery>)> = self
            .recovering
            .read()
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, recovery) in waiting {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            *recovery.started.lock() = Some(std::time::Instant::now());
            let opened = self.open_existing(self.collections_dir().join(&name), &recovery.progress);
            let mut collections = self.collections.write();
            self.recovering.write().remove(&name);
            match opened {
                Ok(collection) if self.closed.load(std::sync::atomic::Ordering::SeqCst) => {
                    drop(collections);
                    if let Err(e) = collection.shard.close() {
                        tracing::error!(collection = %name, error = %e, "closing a collection opened during shutdown failed");
                    }
                }
                Ok(collection) => {
                    collections.insert(name, collection);
                }
                Err(e) => {
                    tracing::error!(collection = %name, error = %e, "collection could not be opened; it is reported as unavailable and left on disk");
                    self.unavailable.write().insert(name, e.to_string());
                }
            }
        }
    }

    /// Whether [`Engine::close`] ran: no collection opens any more.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The collections not open yet, with their replay progress.
    pub fn recovering(&self) -> Vec<RecoveryStatus> {
        self.recovering
            .read()
            .iter()
            .map(|(name, r)| r.status(name))
            .collect()
    }

    fn recovering_error(&self, name: &str) -> Option<Error> {
        let recovering = self.recovering.read();
        let status = recovering.get(name)?.status(name);
        Some(Error::CollectionRecovering {
            name: name.to_string(),
            replayed: status.replayed_entries,
            total: status.total_entries,
            elapsed_ms: status.elapsed_ms,
        })
    }

    fn open_existing(&self, dir: PathBuf, progress: &ReplayProgress) -> Result<Arc<Collection>> {
        let schema_path = dir.join("collection.json");
        let bytes = fs::read(&schema_path).map_err(|e| Error::io(&schema_path, e))?;
        let schema = CollectionSchema::from_json(&bytes).map_err(|e| Error::Corrupt {
            path: schema_path.clone(),
            message: e.to_string(),
        })?;
        self.open_collection(dir, schema, progress)
    }

    /// Collections that could not be opened, with the reason.
    pub fn unavailable(&self) -> BTreeMap<String, String> {
        self.unavailable.read().clone()
    }

    pub fn max_collections(&self) -> usize {
        self.config.max_collections
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    fn collections_dir(&self) -> PathBuf {
        self.config.data_dir.join("collections")
    }

    /// Opens a collection's shard. A panic inside a component (a bug, or data it cannot
    /// read) becomes an error, so that it fails this collection alone.
    fn open_collection(
        &self,
        dir: PathBuf,
        schema: CollectionSchema,
        progress: &ReplayProgress,
    ) -> Result<Arc<Collection>> {
        let schema = Arc::new(schema);
        let shard_dir = dir.join("shards").join("0");
        let config = self.config.shard.clone();
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            snapshot::finish_interrupted_install(&shard_dir)?;
            Shard::open_reporting(&shard_dir, schema.clone(), config, progress)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::Corrupt {
                path: shard_dir.clone(),
                message: format!(
                    "opening the shard panicked: {}",
                    crate::error::panic_message(&*panic)
                ),
            })
        });
        Ok(Arc::new(Collection {
            schema,
            shard: opened?,
            dir,
        }))
    }

    /// Creates a collection. Creating one that exists with an identical schema is a no-op
    /// that returns `false`; a different schema is refused.
    pub fn create_collection(&self, schema: CollectionSchema) -> Result<(Arc<Collection>, bool)> {
        schema.validate()?;
        let mut collections = self.collections.write();
        // Checked under the lock `close` takes: nothing opens after it.
        if self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        if let Some(existing) = collections.get(&schema.name) {
            return if **existing.schema() == schema {
                Ok((existing.clone(), false))
            } else {
                Err(Error::CollectionExists(schema.name))
            };
        }
        if let Some(recovering) = self.recovering_error(&schema.name) {
            return Err(recovering);
        }
        if let Some(reason) = self.unavailable.read().get(&schema.name) {
            return Err(Error::CollectionUnavailable {
                name: schema.name.clone(),
                reason: reason.clone(),
            });
        }
        let held = collections.len() + self.unavailable.read().len() + self.recovering.read().len();
        if held >= self.config.max_collections {
            return Err(Error::LimitExceeded(format!(
                "this node holds {held} collections, its limit of {}; the limit follows the open-file and memory-map limits of the process (ulimit -n, vm.max_map_count) and server.max_collections: raise them, or delete a collection",
                self.config.max_collections
            )));
        }
        let root = self.collections_dir();
        let staging = root.join(format!(".creating-{}", schema.name));
        let _ = fs::remove_dir_all(&staging);
        let built = create_dir_durable(&staging)
            .and_then(|_| write_schema(&staging.join("collection.json"), &schema))
            .and_then(|_| create_dir_durable(&staging.join("shards").join("0")));
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let dir = root.join(&schema.name);
        fs::rename(&staging, &dir).map_err(|e| Error::io(&dir, e))?;
        sync_dir(&root)?;
        match self.open_collection(dir.clone(), schema, &ReplayProgress::default()) {
            Ok(collection) => {
                collections.insert(collection.name().to_string(), collection.clone());
                Ok((collection, true))
            }
            Err(e) => {
                // A create that fails leaves nothing behind.
                let trash = root.join(format!(".deleting-{}", collection_dir_name(&dir)));
                if fs::rename(&dir, &trash).is_ok() {
                    let _ = sync_dir(&root);
                    let _ = fs::remove_dir_all(&trash);
                } else {
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(e)
            }
        }
    }

    /// Replaces a collection's shard copy with the snapshot in `snapshot_dir` (see
    /// [`Shard::build_snapshot`]) while the node serves: every file is verified against the
    /// manifest and staged first, so a damaged snapshot or one of another schema changes
    /// nothing. Then the old copy closes and the new one opens in its place; requests that
    /// hold the old copy finish on it. A crash at any point leaves the old copy or the new
    /// one. Blocking.
    pub fn install_snapshot(&self, name: &str, snapshot_dir: &Path) -> Result<Arc<Collection>> {
        let _one_at_a_time = self.installing.lock();
        let current = self.collection(name)?;
        let manifest = snapshot::verify(snapshot_dir)?;
        let schema_path = snapshot_dir.join(snapshot::SCHEMA);
        let bytes = fs::read(&schema_path).map_err(|e| Error::io(&schema_path, e))?;
        let theirs = CollectionSchema::from_json(&bytes).map_err(|e| Error::Corrupt {
            path: schema_path.clone(),
            message: e.to_string(),
        })?;
        if theirs != **current.schema() {
            return Err(Error::InvalidRequest(format!(
                "the snapshot in {} was taken under another schema of {name:?}; install it into a collection created with that schema",
                snapshot_dir.display()
            )));
        }
        let shard_dir = current.dir.join("shards").join("0");
        let log_options = crate::log::OpenOptions {
            segment_bytes: self.config.shard.log_segment_bytes,
            truncate_corrupt: false,
        };
        let staging = snapshot::stage(snapshot_dir, &manifest, &shard_dir, Some(log_options))?;
        let mut collections = self.collections.write();
        if !collections
            .get(name)
            .is_some_and(|c| Arc::ptr_eq(c, &current))
        {
            let _ = fs::remove_dir_all(&staging);
            return Err(Error::InvalidRequest(format!(
                "collection {name:?} was deleted or replaced during the install; retry it"
            )));
        }
        collections.remove(name);
        // Its data is being replaced: no final checkpoint.
        if let Err(e) = current.shard.close_for_delete() {
            tracing::warn!(collection = name, error = %e, "stopping the replaced shard copy failed");
        }
        let swapped = snapshot::swap_in(&staging, &shard_dir);
        let schema = (**current.schema()).clone();
        let opened = swapped.and_then(|_| {
            self.open_collection(current.dir.clone(), schema, &ReplayProgress::default())
        });
        match opened {
            Ok(collection) => {
                collections.insert(name.to_string(), collection.clone());
                tracing::info!(collection = name, applied = ?manifest.applied, files = manifest.files.len(), "snapshot installed");
                Ok(collection)
            }
            Err(e) => {
                self.unavailable
                    .write()
                    .insert(name.to_string(), format!("a snapshot install failed: {e}"));
                Err(e)
            }
        }
    }

    /// Removes a collection and all of its data.
    pub fn delete_collection(&self, name: &str) -> Result<()> {
        validate_collection_name(name)?;
        let root = self.collections_dir();
        let mut collections = self.collections.write();
        if let Some(recovering) = self.recovering_error(name) {
            return Err(recovering);
        }
        let dir = match collections.get(name) {
            Some(collection) => collection.dir.clone(),
            None if self.unavailable.read().contains_key(name) => root.join(name),
            None => return Err(Error::CollectionNotFound(name.to_string())),
        };
        if let Some(collection) = collections.remove(name) {
            // The data is going: no final checkpoint, which a full disk or a failed shard
            // could not take anyway.
            if let Err(e) = collection.shard.close_for_delete() {
                tracing::warn!(collection = name, error = %e, "stopping the shard of a deleted collection failed");
            }
        }
        let trash = root.join(format!(".deleting-{name}"));
        let _ = fs::remove_dir_all(&trash);
        let moved = fs::rename(&dir, &trash)
            .map_err(|e| Error::io(&dir, e))
            .and_then(|_| sync_dir(&root));
        if let Err(e) = moved {
            // Still on disk: report it, so that the delete can be retried.
            self.unavailable
                .write()
                .insert(name.to_string(), format!("a delete failed: {e}"));
            return Err(e);
        }
        self.unavailable.write().remove(name);
        drop(collections);
        // The rename is durable, so the delete happened; leftovers go at the next open.
        if let Err(e) = fs::remove_dir_all(&trash) {
            tracing::warn!(path = %trash.display(), error = %e, "removing a deleted collection's files failed; they are removed at the next start");
        }
        Ok(())
    }

    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        validate_collection_name(name)?;
        // Held while `recovering` is read: a recovery moves a collection from there to here
        // under this lock, so one of the two has it.
        let collections = self.collections.read();
        if let Some(c) = collections.get(name) {
            return Ok(c.clone());
        }
        if let Some(recovering) = self.recovering_error(name) {
            return Err(recovering);
        }
        drop(collections);
        match self.unavailable.read().get(name) {
            Some(reason) => Err(Error::CollectionUnavailable {
                name: name.to_string(),
                reason: reason.clone(),
            }),
            None => Err(Error::CollectionNotFound(name.to_string())),
        }
    }

    pub fn collections(&self) -> Vec<Arc<Collection>> {
        self.collections.read().values().cloned().collect()
    }

    /// Checkpoints and closes every collection. A recovery still running opens no more
    /// collections and closes the one it is opening.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let collections: Vec<_> = std::mem::take(&mut *self.collections.write())
            .into_values()
            .collect();
        let mut first_error = None;
        for c in collections {
            if let Err(e) = c.shard.close() {
                tracing::error!(collection = c.name(), error = %e, "closing collection failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod tests;
