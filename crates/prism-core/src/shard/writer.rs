//! The driver of a shard copy's state machine, on a thread of its own: recovery, and then
//! either the single node's group-commit loop over the shard's own log, or the entries a Raft
//! group hands over ([`Command::Apply`]); periodic refreshes and checkpoints in both.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Mutex, RwLock};
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::Index;
use tokio::sync::{oneshot, watch};

use super::ops::{self, Op};
use super::state_machine::{vectors_dir, AppliedState, StateMachine, TextCheckpoint};
use super::{
    open_reader, resolve_fields, snapshot, vector_files, Command, ReplayProgress, ShardConfig,
    Shared, WriteHealth,
};
use crate::error::{Error, Result};
use crate::log::{create_dir_durable, LogId, OpenOptions, ShardLog, MAX_ENTRY_BYTES};
use crate::schema::CollectionSchema;
use crate::vector::VectorIndex;

/// The term of entries a single node appends: its log has one leader, itself, forever.
pub(crate) const LOCAL_TERM: u64 = 1;

/// The most writes combined into one fsync.
const MAX_GROUP: usize = 1024;

/// State owned by the writer thread alone: the state machine, and the log that feeds it on a
/// single node (`None` when a Raft group owns the log and hands entries over).
pub(crate) struct WriterState {
    log: Option<ShardLog>,
    machine: StateMachine,
    /// Set when a durable entry could not be applied to the vector indexes, or the log can
    /// take no more writes: memory may hold part of an entry, so the shard stops writing and
    /// checkpointing until a restart replays the log.
    failed: Option<String>,
    /// Set when a component found the disk full: writes are refused (507) until a
    /// background checkpoint succeeds again.
    disk_full: Option<String>,
}

/// Indexing threads of one writer: two keep bulk ingest near tantivy's own speed on a small
/// machine (one measured 0.63x the docs/s of two on 2 cores); more would multiply a node's
/// threads by its collections. One merge thread. The memory budget is shared, as tantivy's
/// `Index::writer` shares it.
pub(crate) const INDEXING_THREADS: usize = 2;

fn writer_options(config: &ShardConfig) -> IndexWriterOptions {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, INDEXING_THREADS);
    IndexWriterOptions::builder()
        .memory_budget_per_thread((config.writer_memory_bytes / threads).max(15 << 20))
        .num_worker_threads(threads)
        .num_merge_threads(1)
        .build()
}

/// Who feeds a shard copy's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The shard's own log under `log/`, appended by this node alone (the single node).
    OwnLog,
    /// A Raft group, which owns the log and hands committed entries over; after a restart it
    /// applies again every entry past the state machine's applied state.
    Replicated,
}

/// Opens every component of the shard and, on its own log, replays it past their checkpoints.
pub(crate) fn recover(
    dir: &Path,
    schema: Arc<CollectionSchema>,
    config: &ShardConfig,
    progress: &ReplayProgress,
    feed: Feed,
) -> Result<(Arc<Shared>, WriterState)> {
    let started = Instant::now();
    let index_dir = dir.join("index");
    create_dir_durable(&index_dir)?;
    let mmap = MmapDirectory::open(&index_dir)
        .map_err(|e| Error::io(&index_dir, std::io::Error::other(e.to_string())))?;
    let index: Index = super::open_index(mmap, &schema)?;
    crate::analysis::register(index.tokenizers());
    let (text_checkpoint, text_position) = match index.load_metas()?.payload {
        Some(p) => {
            let checkpoint =
                serde_json::from_str::<TextCheckpoint>(&p).map_err(|e| Error::Corrupt {
                    path: index_dir.clone(),
                    message: format!("bad commit payload {p:?}: {e}"),
                })?;
            let position = checkpoint
                .position
                .unwrap_or_else(|| AppliedState::of_local_index(checkpoint.applied_index));
            (checkpoint.applied_index, position)
        }
        None => (0, AppliedState::default()),
    };

    let loaded = load_vectors(dir, &schema);
    let (log, recovery) = match feed {
        Feed::OwnLog => {
            let (log, recovery) = ShardLog::open(
                &dir.join("log"),
                OpenOptions {
                    segment_bytes: config.log_segment_bytes,
                    truncate_corrupt: config.truncate_corrupt_log,
                },
            )?;
            (Some(log), Some(recovery))
        }
        Feed::Replicated => (None, None),
    };
    let LoadedVectors {
        indexes: vectors,
        keys: vector_keys,
        checkpoint: vector_checkpoint,
        position: vector_position,
        files: vector_files,
        unchecked: vectors_unchecked,
    } = match (loaded, &log) {
        (Ok(loaded), _) => loaded,
        // A damaged vector checkpoint is only a cache of the log: while the log still holds
        // every entry from the first, the indexes are rebuilt from it. Otherwise the
        // collection stays unavailable, naming the damaged file. A Raft group's log may have
        // been purged at any snapshot, so a replicated copy is never rebuilt this way.
        (Err(Error::Corrupt { path, message }), log) => {
            let first = log.as_ref().map_or(u64::MAX, ShardLog::first_index);
            if first > 1 {
                return Err(Error::Corrupt {
                    path,
                    message: format!(
                        "{message}. The vector index cannot be rebuilt from the log, which does not hold every entry from the first: restore the collection from a backup"
                    ),
                });
            }
            tracing::error!(shard = %dir.display(), file = %path.display(), %message, "the vector checkpoint is damaged; the vector indexes are rebuilt from the log, which holds every entry");
            fresh_vectors(&schema)?
        }
        (Err(e), _) => return Err(e),
    };
    let newest_checkpoint = text_checkpoint.max(if vectors.is_empty() {
        0
    } else {
        vector_checkpoint
    });

    let writer_options = writer_options(config);
    let reader = open_reader(&index)?;
    let tantivy_schema = index.schema();
    let fields = resolve_fields(&tantivy_schema, &schema);
    let (visible, _) = watch::channel(text_checkpoint);
    let shared = Arc::new(Shared {
        schema,
        fields,
        index,
        reader,
        vectors,
        visible,
        unrefreshed: RwLock::new(HashMap::new()),
        live_keys: Mutex::new(None),
        id_columns: Mutex::new(None),
        recent_searchers: Mutex::new(Default::default()),
        dir: dir.to_path_buf(),
        instance: opening_nonce(dir),
        health: RwLock::new(WriteHealth::Ok),
        timer_wakeups: Default::default(),
        idle_without_timer: Default::default(),
    });
    // The state machine stands where the older of the two checkpoints does.
    let position = if shared.vectors.is_empty() {
        text_position.clone()
    } else {
        std::cmp::min_by_key(text_position.clone(), vector_position.clone(), |p| {
            p.applied
        })
    };
    let mut machine = StateMachine {
        applied: text_checkpoint.min(vector_checkpoint),
        writer: None,
        writer_options,
        text_broken: None,
        last_write: Instant::now(),
        text_checkpoint,
        vector_checkpoint,
        vector_keys,
        pending_removals: Vec::new(),
        vectors_saved_at: Instant::now(),
        // A checkpoint without checksums is rewritten, with them, at the next save.
        vectors_dirty: vectors_unchecked,
        vectors_since_checkpoint: 0,
        vector_files,
        position,
        text_position,
        vector_position,
    };
    let mut disk_full = None;
    let replayed = match (&log, recovery) {
        (Some(log), Some(recovery)) => replay_own_log(
            &shared,
            &mut machine,
            log,
            &recovery,
            config,
            progress,
            newest_checkpoint,
            &mut disk_full,
        )?,
        _ => 0,
    };
    shared.visible.send_replace(machine.text_checkpoint);
    let state = WriterState {
        log,
        machine,
        failed: None,
        disk_full,
    };
    state.publish_health(&shared);
    tracing::info!(
        shard = %dir.display(),
        ?feed,
        text_checkpoint,
        vector_checkpoint = if shared.vectors.is_empty() { None } else { Some(vector_checkpoint) },
        replayed,
        ms = started.elapsed().as_millis() as u64,
        "shard opened"
    );
    Ok((shared, state))
}

/// Applies the committed entries of the shard's own log past the checkpoints; returns how
/// many. A full disk met while making them searchable is recorded in `disk_full`.
#[allow(clippy::too_many_arguments)]
fn replay_own_log(
    shared: &Shared,
    machine: &mut StateMachine,
    log: &ShardLog,
    recovery: &crate::log::Recovery,
    config: &ShardConfig,
    progress: &ReplayProgress,
    newest_checkpoint: u64,
    disk_full: &mut Option<String>,
) -> Result<u64> {
    let dir = &shared.dir;
    // A repair that cut the log below a checkpoint (--truncate-corrupt-log): the components
    // keep what they checkpointed, and the log continues above the newest checkpoint so that
    // no index (and version key) is used twice.
    let cut_below_checkpoint = config.truncate_corrupt_log && log.last_index() < newest_checkpoint;
    if let Some(lost) = &recovery.lost {
        tracing::error!(shard = %dir.display(), ?lost, "the log was cut at a corrupt entry");
    }
    if log.last_index() < newest_checkpoint && !cut_below_checkpoint {
        return Err(Error::Corrupt {
            path: dir.join("log"),
            message: format!(
                "the log ends at entry {} but a checkpoint covers entry {newest_checkpoint}; the log was lost or replaced. Restore the shard directory from a backup",
                log.last_index()
            ),
        });
    }
    // Only committed entries are applied; a single node records no commit index, because
    // everything durable on it is committed.
    let replay_through = match log.hard_state().committed {
        Some(committed) => committed.index.min(log.last_index()),
        None => log.last_index(),
    };
    progress.set_total(replay_through.saturating_sub(machine.applied));
    let mut replayed = 0u64;
    // Entries are applied in batches, so that the vectors of many small entries are inserted
    // in parallel (one entry's alone often are too few to spread over the cores).
    let mut batch: Vec<(LogId, Vec<Op>)> = Vec::new();
    let (mut batch_vectors, mut batch_bytes) = (0, 0);
    // Without vector fields there is nothing to spread over the cores: entries apply one by
    // one, holding one decoded entry at a time.
    let batch_entries = if shared.vectors.is_empty() {
        1
    } else {
        REPLAY_BATCH_ENTRIES
    };
    let mut apply_batch = |batch: &mut Vec<(LogId, Vec<Op>)>, machine: &mut StateMachine| {
        let entries: Vec<(LogId, &[Op])> = batch.iter().map(|(i, o)| (*i, o.as_slice())).collect();
        machine.apply(shared, &entries, false)?;
        progress.add_replayed(entries.len() as u64);
        replayed += entries.len() as u64;
        batch.clear();
        Ok::<_, Error>(())
    };
    log.read_from(machine.applied + 1, replay_through, |entry| {
        let ops = ops::decode(&entry.payload)?;
        batch_vectors += ops.iter().map(Op::vector_count).sum::<usize>();
        batch_bytes += entry.payload.len();
        batch.push((entry.id, ops));
        if batch_vectors >= REPLAY_BATCH_VECTORS
            || batch.len() >= batch_entries
            || batch_bytes >= REPLAY_BATCH_BYTES
        {
            (batch_vectors, batch_bytes) = (0, 0);
            apply_batch(&mut batch, machine)?;
        }
        Ok(())
    })?;
    apply_batch(&mut batch, machine)?;
    if cut_below_checkpoint {
        tracing::error!(
            shard = %dir.display(),
            lost_from = log.last_index() + 1,
            lost_through = newest_checkpoint,
            text_checkpoint = machine.text_checkpoint,
            vector_checkpoint = if shared.vectors.is_empty() { None } else { Some(machine.vector_checkpoint) },
            "the cut log ends below a checkpoint: entries in this range are kept only by the components whose checkpoint covers them (text or vectors), the others lost them"
        );
        machine.applied = newest_checkpoint;
        machine.position = AppliedState::of_local_index(newest_checkpoint);
    }
    if replayed > 0 || cut_below_checkpoint {
        // Make the replayed writes searchable. The vector checkpoint waits for its interval:
        // saving every index here would put a full rewrite on the restart path.
        if let Err(e) = machine.refresh(shared, Some(log)) {
            // The log still holds every replayed entry; the writer thread retries.
            if !e.is_disk_full() {
                return Err(e);
            }
            tracing::warn!(error = %e, shard = %dir.display(), "the disk is full: replayed writes stay unsearchable and new writes are refused until space is freed");
            *disk_full = Some(e.cause());
        }
    }
    if cut_below_checkpoint {
        // Both checkpoints reach the newest one before the log skips ahead to it: a crash in
        // between leaves a log that ends below a checkpoint, which this flag repairs again.
        machine.save_vectors(shared)?;
        log.purge(LogId::new(LOCAL_TERM, 0, newest_checkpoint))?;
    }
    Ok(replayed)
}

/// Vectors that make a replay batch: enough to keep every core inserting.
const REPLAY_BATCH_VECTORS: usize = 2048;
/// Entries that make a replay batch at most, whatever their vectors.
const REPLAY_BATCH_ENTRIES: usize = 1024;
/// Encoded bytes that make a replay batch at most: entries of large documents without
/// vectors must not pile up (an entry may be hundreds of MiB).
const REPLAY_BATCH_BYTES: usize = 32 << 20;

struct LoadedVectors {
    indexes: BTreeMap<String, VectorIndex>,
    keys: HashMap<String, u64>,
    /// Last entry the saved indexes include; `u64::MAX` when there are no vector fields.
    checkpoint: u64,
    /// The applied state the checkpoint records.
    position: AppliedState,
    files: Option<String>,
    /// Loaded from a checkpoint of an older version, without checksums: the next save
    /// rewrites it with them.
    unchecked: bool,
}

/// Empty vector indexes for every vector field of `schema`, as from before the first entry.
fn fresh_vectors(schema: &CollectionSchema) -> Result<LoadedVectors> {
    let mut indexes = BTreeMap::new();
    for (name, params) in schema.vector_fields() {
        indexes.insert(name.to_string(), VectorIndex::new(params)?);
    }
    Ok(LoadedVectors {
        checkpoint: if indexes.is_empty() { u64::MAX } else { 0 },
        indexes,
        keys: HashMap::new(),
        position: AppliedState::default(),
        files: None,
        unchecked: false,
    })
}

/// Reads `vectors/CHECKPOINT` (see [`vector_files`]) and loads that checkpoint, each file
/// checked against its checksum before usearch reads it. A damaged file is
/// [`Error::Corrupt`] naming it; [`recover`] then rebuilds the indexes from the log if it can.
fn load_vectors(dir: &Path, schema: &CollectionSchema) -> Result<LoadedVectors> {
    if schema.vector_fields().next().is_none() {
        return fresh_vectors(schema);
    }
    let root = vectors_dir(dir);
    let Some(pointer) = vector_files::read_pointer(&root)? else {
        return fresh_vectors(schema);
    };
    let ckpt_dir = root.join(&pointer.files);
    let verified = vector_files::verify(&ckpt_dir)?;
    if pointer.checked && verified.is_none() {
        return Err(Error::Corrupt {
            path: ckpt_dir.join(vector_files::CHECKSUMS),
            message: format!(
                "the vector checkpoint's checksum list is missing ({} names a checked checkpoint)",
                root.join(vector_files::POINTER).display()
            ),
        });
    }
    // A checked checkpoint holds exactly the files it lists; an older one, what is there.
    let holds = |name: &str| match &verified {
        Some(verified) => verified.holds(name),
        None => ckpt_dir.join(name).exists(),
    };
    let mut indexes = BTreeMap::new();
    for (name, p) in schema.vector_fields() {
        let file = format!("{name}.usearch");
        let index = if holds(&file) {
            VectorIndex::load(p, &ckpt_dir.join(&file))?
        } else {
            // A field added after this checkpoint: it starts empty.
            VectorIndex::new(p)?
        };
        indexes.insert(name.to_string(), index);
    }
    let keys_path = ckpt_dir.join("keys.bin");
    if !holds("keys.bin") {
        return Err(Error::Corrupt {
            path: keys_path,
            message: "the vector checkpoint has no key map".into(),
        });
    }
    let bytes = fs::read(&keys_path).map_err(|e| Error::io(&keys_path, e))?;
    let keys = postcard::from_bytes(&bytes).map_err(|e| Error::Corrupt {
        path: keys_path,
        message: e.to_string(),
    })?;
    Ok(LoadedVectors {
        indexes,
        keys,
        checkpoint: pointer.applied,
        position: pointer
            .position
            .unwrap_or_else(|| AppliedState::of_local_index(pointer.applied)),
        files: Some(pointer.files),
        unchecked: verified.is_none(),
    })
}

fn failed_error(shared: &Shared, reason: &str) -> Error {
    Error::StorageFailed {
        path: shared.dir.clone(),
        message: format!("the shard stopped writing: {reason}"),
    }
}

fn disk_full_error(shared: &Shared, reason: &str) -> Error {
    Error::InsufficientStorage {
        path: shared.dir.clone(),
        message: format!("writes are refused until a checkpoint succeeds again; cause: {reason}"),
    }
}

/// The writer thread: group commit, apply, periodic refresh and checkpoints.
pub(crate) fn run(
    mut state: WriterState,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    config: ShardConfig,
) {
    let mut next_refresh = Instant::now() + config.refresh_interval;
    let mut deferred: Vec<Command> = Vec::new();
    loop {
        let command = match deferred.pop() {
            Some(c) => Ok(c),
            // Nothing a refresh or checkpoint would do: wait for work with no timer, so that
            // hundreds of idle copies on a node cost no wake-ups. The refresh cadence starts
            // again from the command that ends the wait.
            None if state.settled(&shared) => {
                shared.idle_without_timer.store(true, Ordering::Release);
                let command = commands.recv().map_err(|_| RecvTimeoutError::Disconnected);
                shared.idle_without_timer.store(false, Ordering::Release);
                next_refresh = Instant::now() + config.refresh_interval;
                command
            }
            None => commands.recv_timeout(next_refresh.saturating_duration_since(Instant::now())),
        };
        match command {
            Ok(Command::Write { ops, reply }) => {
                let mut group = vec![(ops, reply)];
                while group.len() < MAX_GROUP {
                    match commands.try_recv() {
                        Ok(Command::Write { ops, reply }) => group.push((ops, reply)),
                        Ok(other) => {
                            deferred.push(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                state.write_group(&shared, group);
            }
            Ok(Command::Refresh { reply }) => {
                let result = match &state.failed {
                    Some(reason) => Err(failed_error(&shared, reason)),
                    None => state.checkpoint_text(&shared),
                };
                let _ = reply.send(result);
                next_refresh = Instant::now() + config.refresh_interval;
            }
            Ok(Command::Snapshot { target, reply }) => {
                let _ = reply.send(state.snapshot(&shared, &target));
                next_refresh = Instant::now() + config.refresh_interval;
            }
            Ok(Command::AppliedState { reply }) => {
                let _ = reply.send(state.applied_id());
            }
            Ok(Command::Apply { entries, reply }) => {
                let _ = reply.send(state.apply_handed_over(&shared, &entries));
            }
            Ok(Command::Position { reply }) => {
                let _ = reply.send(state.machine.position.clone());
            }
            Ok(Command::Shutdown { checkpoint, reply }) => {
                let result = if checkpoint {
                    state.shutdown(&shared)
                } else {
                    state.discard();
                    Ok(())
                };
                let _ = reply.send(result);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                shared
                    .timer_wakeups
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(e) = state.shutdown(&shared) {
                    tracing::error!(error = %e, "final checkpoint failed; the log still holds every write");
                }
                return;
            }
        }
        if Instant::now() >= next_refresh {
            if let Err(e) = state.background_checkpoint(&shared, &config) {
                tracing::error!(error = %e, shard = %shared.dir.display(), "checkpoint failed; writes stay durable in the log and it is retried");
            }
            next_refresh = Instant::now() + config.refresh_interval;
        }
    }
}

type Reply = oneshot::Sender<Result<u64>>;

impl WriterState {
    /// Where the state machine stands.
    pub(crate) fn position(&self) -> &AppliedState {
        &self.machine.position
    }

    /// Applies entries a Raft group committed, skipping those applied already, and answers
    /// where the state machine stands. A failure stops the copy until a restart, which
    /// applies the entries again from the group's log.
    fn apply_handed_over(
        &mut self,
        shared: &Shared,
        entries: &[super::LogEntry],
    ) -> Result<AppliedState> {
        if let Some(reason) = &self.failed {
            return Err(failed_error(shared, reason));
        }
        if self.log.is_some() {
            return Err(Error::InvalidRequest(
                "this shard copy owns its log: entries are applied as it appends them".into(),
            ));
        }
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.machine.apply_entries(shared, entries, true)
        }))
        .unwrap_or_else(|_| Err(Error::Vector("applying the entries panicked".into())));
        // Without a log of its own, a copy cannot rebuild a failed text writer: like any
        // failure to apply, it stops the copy, and a restart applies the entries again.
        let applied = applied.and_then(|()| match &self.machine.text_broken {
            Some(reason) => Err(Error::StorageFailed {
                path: shared.dir.join("index"),
                message: reason.clone(),
            }),
            None => Ok(()),
        });
        if let Err(e) = applied {
            tracing::error!(error = %e, shard = %shared.dir.display(), "applying committed entries failed; the copy stops until restart");
            self.failed = Some(format!("applying committed entries failed: {e}"));
            self.publish_health(shared);
            return Err(failed_error(shared, &e.cause()));
        }
        self.publish_health(shared);
        Ok(self.machine.position.clone())
    }

    fn write_group(&mut self, shared: &Shared, group: Vec<(Vec<Op>, Reply)>) {
        let refusal = match (&self.failed, &self.disk_full, &self.log) {
            (Some(reason), _, _) => Some(failed_error(shared, reason)),
            (None, Some(reason), _) => Some(disk_full_error(shared, reason)),
            (None, None, None) => Some(Error::InvalidRequest(
                "this shard copy is fed by its Raft group: propose writes to the group".into(),
            )),
            (None, None, Some(_)) => None,
        };
        if let Some(refusal) = refusal {
            let message = refusal.cause();
            let failed = refusal.code() == "storage_failed";
            if let Error::InvalidRequest(message) = &refusal {
                for (_, reply) in group {
                    let _ = reply.send(Err(Error::InvalidRequest(message.clone())));
                }
                return;
            }
            for (_, reply) in group {
                let path = shared.dir.clone();
                let message = message.clone();
                let error = if failed {
                    Error::StorageFailed { path, message }
                } else {
                    Error::InsufficientStorage { path, message }
                };
                let _ = reply.send(Err(error));
            }
            return;
        }
        let mut accepted = Vec::with_capacity(group.len());
        let mut payloads = Vec::with_capacity(group.len());
        for (ops, reply) in group {
            let payload = ops::encode(&ops);
            if payload.len() > MAX_ENTRY_BYTES {
                let _ = reply.send(Err(Error::InvalidRequest(format!(
                    "the write encodes to {} bytes, over the {MAX_ENTRY_BYTES}-byte limit; split it",
                    payload.len()
                ))));
                continue;
            }
            payloads.push(payload);
            accepted.push((ops, reply));
        }
        if accepted.is_empty() {
            return;
        }
        let log = self.log.as_ref().expect("refused above without a log");
        let first = match log.append_next(LOCAL_TERM, 0, &payloads) {
            Ok(first) => first.index,
            Err(e) => {
                tracing::error!(error = %e, "log append failed; the writes were refused and not applied");
                if log.is_poisoned() {
                    self.failed = Some(e.cause());
                } else if e.is_disk_full() {
                    self.disk_full = Some(e.cause());
                }
                self.publish_health(shared);
                let message = e.cause();
                for (_, reply) in accepted {
                    let error = match &e {
                        Error::InsufficientStorage { path, .. } => Error::InsufficientStorage {
                            path: path.clone(),
                            message: message.clone(),
                        },
                        _ => Error::StorageFailed {
                            path: shared.dir.join("log"),
                            message: message.clone(),
                        },
                    };
                    let _ = reply.send(Err(error));
                }
                return;
            }
        };
        // Every entry is durable now, so every one is acknowledged, even when applying fails:
        // the restart's replay (or the text repair) applies it.
        if self.failed.is_none() {
            let entries: Vec<(LogId, &[Op])> = accepted
                .iter()
                .enumerate()
                .map(|(i, (ops, _))| (LogId::new(LOCAL_TERM, 0, first + i as u64), ops.as_slice()))
                .collect();
            // A panic in a component must not drop the replies of durable writes.
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.machine.apply(shared, &entries, true)
            }))
            .unwrap_or_else(|_| Err(Error::Vector("applying the entries panicked".into())));
            if let Err(e) = applied {
                let last = first + entries.len() as u64 - 1;
                tracing::error!(error = %e, first, last, "applying durable log entries to the vector index failed; the shard stops writing until restart");
                self.failed = Some(format!("applying entries {first}–{last} failed: {e}"));
            }
        }
        for (i, (_, reply)) in accepted.into_iter().enumerate() {
            let _ = reply.send(Ok(first + i as u64));
        }
        self.publish_health(shared);
    }

    /// Tells readers and `/health` whether the shard takes writes.
    fn publish_health(&self, shared: &Shared) {
        let health = match (&self.failed, &self.disk_full, &self.machine.text_broken) {
            (Some(reason), _, _) => WriteHealth::Failed(reason.clone()),
            (None, Some(reason), _) => WriteHealth::DiskFull(reason.clone()),
            (None, None, Some(reason)) => WriteHealth::Rebuilding(reason.clone()),
            (None, None, None) => WriteHealth::Ok,
        };
        if *shared.health.read() == health {
            return;
        }
        tracing::info!(shard = %shared.dir.display(), health = ?health, "write health changed");
        *shared.health.write() = health;
    }

    /// A refresh: commits the text index; a full disk found there refuses writes until the
    /// next success.
    fn checkpoint_text(&mut self, shared: &Shared) -> Result<u64> {
        let result = self.machine.refresh(shared, self.log.as_ref());
        match &result {
            Ok(_) => self.disk_full = None,
            Err(e) if e.is_disk_full() => self.disk_full = Some(e.cause()),
            Err(_) => {}
        }
        self.publish_health(shared);
        result
    }

    fn background_checkpoint(&mut self, shared: &Shared, config: &ShardConfig) -> Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        let was_full = self.disk_full.take();
        let result = self.checkpoints(shared, config, was_full.is_some());
        if let Err(e) = &result {
            if e.is_disk_full() {
                self.disk_full = Some(e.cause());
            } else {
                self.disk_full = was_full;
            }
        }
        self.publish_health(shared);
        result
    }

    fn checkpoints(&mut self, shared: &Shared, config: &ShardConfig, retry: bool) -> Result<()> {
        self.machine.refresh(shared, self.log.as_ref())?;
        // After a full disk the vector checkpoint is retried at once: it is what frees the log.
        // Bounding it by vectors as well as by time bounds the replay after a crash.
        if retry
            || self.machine.vectors_saved_at.elapsed() >= config.vector_checkpoint_interval
            || self.machine.vectors_since_checkpoint
                >= self.machine.vector_save_threshold(shared, config)
        {
            self.machine.save_vectors(shared)?;
        }
        // A Raft group purges its own log, after its snapshots.
        if let Some(log) = &self.log {
            log.purge_through(self.machine.checkpointed_through())?;
        }
        self.machine.close_idle_writer(config.idle_writer_close);
        Ok(())
    }

    /// Whether the timer has nothing to do: not failing, the disk not full, every component
    /// checkpointed with the writer closed, and the shard's own log purged through the
    /// checkpoints (a purge that failed is retried by the timer). A failed copy waits for
    /// commands only.
    fn settled(&self, shared: &Shared) -> bool {
        let purged = self.log.as_ref().is_none_or(|log| {
            let through = self.machine.checkpointed_through();
            through < log.first_index()
                || log
                    .hard_state()
                    .last_purged
                    .is_some_and(|p| p.index >= through)
        });
        self.failed.is_some()
            || (self.disk_full.is_none() && purged && self.machine.settled(shared))
    }

    /// The log id of the last entry every component applied (index 0 when none).
    fn applied_id(&self) -> Result<LogId> {
        Ok(self.machine.position.applied.unwrap_or(LogId::new(0, 0, 0)))
    }

    /// Checkpoints every component at the applied entry and links their files into
    /// `target`: the content of a snapshot, which the caller seals.
    fn snapshot(&mut self, shared: &Shared, target: &Path) -> Result<AppliedState> {
        if let Some(reason) = &self.failed {
            return Err(failed_error(shared, reason));
        }
        self.checkpoint_text(shared)?;
        self.machine.save_vectors(shared)?;
        let applied = self.machine.position.clone();
        let _ = fs::remove_dir_all(target);
        create_dir_durable(target)?;
        snapshot::link_text_index(&shared.index, &shared.dir.join("index"), target)?;
        if let (false, Some(files)) = (shared.vectors.is_empty(), &self.machine.vector_files) {
            snapshot::link_vectors(
                &vectors_dir(&shared.dir),
                files,
                self.machine.vector_checkpoint,
                &self.machine.vector_position,
                target,
            )?;
        }
        Ok(applied)
    }

    /// Stops without checkpoints, waiting for merges (which hold files open).
    fn discard(mut self) {
        if let Some(writer) = self.machine.writer.take() {
            let _ = writer.wait_merging_threads();
        }
    }

    /// Takes final checkpoints and waits for background merges, which hold files open.
    fn shutdown(self, shared: &Shared) -> Result<()> {
        let WriterState {
            log,
            mut machine,
            failed,
            disk_full: _,
        } = self;
        if let Some(reason) = failed {
            // Checkpointing a half-applied state would make it permanent; the log replays it.
            return Err(failed_error(shared, &reason));
        }
        machine.refresh(shared, log.as_ref())?;
        machine.save_vectors(shared)?;
        if let Some(log) = &log {
            log.purge_through(machine.checkpointed_through())?;
        }
        if let Some(writer) = machine.writer.take() {
            writer.wait_merging_threads()?;
        }
        Ok(())
    }
}

/// A value that differs between two openings of a shard, in one process or across restarts.
fn opening_nonce(dir: &Path) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    xxhash_rust::xxh3::xxh3_64(format!("{}:{now}:{}", std::process::id(), dir.display()).as_bytes())
}
