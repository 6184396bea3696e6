//! The writer side of a shard copy: recovery, the group-commit loop, apply, checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::schema::Field;
use tantivy::{Index, IndexWriter, TantivyDocument, Term};
use tokio::sync::{oneshot, watch};

use super::ops::{self, version_key, Op};
use super::{
    open_reader, resolve_fields, snapshot, vector_files, Command, ReplayProgress, ShardConfig,
    Shared, WriteHealth,
};
use crate::error::{Error, Result};
use crate::log::{
    create_dir_durable, sync_dir, write_atomically, LogId, OpenOptions, ShardLog, MAX_ENTRY_BYTES,
};
use crate::schema::{parse_date, CollectionSchema, FieldType, PreparedDoc};
use crate::vector::VectorIndex;

/// The tantivy commit payload: the checkpoint of the text index.
#[derive(Debug, Serialize, Deserialize)]
struct TextCheckpoint {
    applied_index: u64,
}

/// The term of entries a single node appends: its log has one leader, itself, forever.
pub(crate) const LOCAL_TERM: u64 = 1;

/// The most writes combined into one fsync.
const MAX_GROUP: usize = 1024;

/// State owned by the writer thread alone: the log and the state machine it feeds.
pub(crate) struct WriterState {
    log: ShardLog,
    machine: StateMachine,
    /// Set when a durable entry could not be applied to the vector indexes, or the log can
    /// take no more writes: memory may hold part of an entry, so the shard stops writing and
    /// checkpointing until a restart replays the log.
    failed: Option<String>,
    /// Set when a component found the disk full: writes are refused (507) until a
    /// background checkpoint succeeds again.
    disk_full: Option<String>,
}

/// The components of a shard copy and how far each has applied the log. Raft's state machine
/// will wrap exactly this.
pub(crate) struct StateMachine {
    /// `None` after the writer failed (tantivy leaves a writer that hit an I/O error unable
    /// to tell which documents it lost): entries above `text_checkpoint` are then re-added
    /// from the log into a fresh writer before the next commit.
    writer: Option<IndexWriter>,
    writer_options: IndexWriterOptions,
    /// Why the writer was dropped, while it is.
    text_broken: Option<String>,
    /// When the last entry was applied, to close an idle writer and free its threads.
    last_write: Instant,
    /// Last entry applied to all components.
    applied: u64,
    /// Last entry included in the durable tantivy commit.
    text_checkpoint: u64,
    /// Last entry included in the saved vector indexes (`u64::MAX` without vector fields).
    vector_checkpoint: u64,
    /// Current version key of each document that has vectors.
    vector_keys: HashMap<String, u64>,
    /// Old versions to tombstone in the vector indexes once the searcher no longer sees them.
    pending_removals: Vec<u64>,
    vectors_saved_at: Instant,
    /// The vector indexes changed since the last save.
    vectors_dirty: bool,
    /// Vectors inserted since the last save: what a crash now would make the replay redo.
    vectors_since_checkpoint: usize,
    /// Directory (under `vectors/`) of the files of the current vector checkpoint.
    vector_files: Option<String>,
}

fn vectors_dir(dir: &Path) -> PathBuf {
    dir.join("vectors")
}

fn vector_checkpoint_dir(dir: &Path, index: u64) -> PathBuf {
    vectors_dir(dir).join(format!("ckpt-{index:020}"))
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

/// Opens every component of the shard and replays the log past its checkpoints.
pub(crate) fn recover(
    dir: &Path,
    schema: Arc<CollectionSchema>,
    config: &ShardConfig,
    progress: &ReplayProgress,
) -> Result<(Arc<Shared>, WriterState)> {
    let started = Instant::now();
    let index_dir = dir.join("index");
    create_dir_durable(&index_dir)?;
    let mmap = MmapDirectory::open(&index_dir)
        .map_err(|e| Error::io(&index_dir, std::io::Error::other(e.to_string())))?;
    let index: Index = super::open_index(mmap, &schema)?;
    crate::analysis::register(index.tokenizers());
    let text_checkpoint = match index.load_metas()?.payload {
        Some(p) => {
            serde_json::from_str::<TextCheckpoint>(&p)
                .map_err(|e| Error::Corrupt {
                    path: index_dir.clone(),
                    message: format!("bad commit payload {p:?}: {e}"),
                })?
                .applied_index
        }
        None => 0,
    };

    let loaded = load_vectors(dir, &schema);
    let (log, recovery) = ShardLog::open(
        &dir.join("log"),
        OpenOptions {
            segment_bytes: config.log_segment_bytes,
            truncate_corrupt: config.truncate_corrupt_log,
        },
    )?;
    let LoadedVectors {
        indexes: vectors,
        keys: vector_keys,
        checkpoint: vector_checkpoint,
        files: vector_files,
        unchecked: vectors_unchecked,
    } = match loaded {
        Ok(loaded) => loaded,
        // A damaged vector checkpoint is only a cache of the log: while the log still holds
        // every entry from the first, the indexes are rebuilt from it. Otherwise the
        // collection stays unavailable, naming the damaged file.
        Err(Error::Corrupt { path, message }) => {
            let first = log.first_index();
            if first > 1 {
                return Err(Error::Corrupt {
                    path,
                    message: format!(
                        "{message}. The vector index cannot be rebuilt from the log, which starts at entry {first}: restore the collection from a backup"
                    ),
                });
            }
            tracing::error!(shard = %dir.display(), file = %path.display(), %message, "the vector checkpoint is damaged; the vector indexes are rebuilt from the log, which holds every entry");
            fresh_vectors(&schema)?
        }
        Err(e) => return Err(e),
    };
    let newest_checkpoint = text_checkpoint.max(if vectors.is_empty() {
        0
    } else {
        vector_checkpoint
    });
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
    });
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
    };

    // Only committed entries are applied. In cluster mode the log may end with entries no
    // quorum accepted, and the consensus layer applies the rest once they commit; a single
    // node records no commit index, because everything durable on it is committed.
    let replay_through = match log.hard_state().committed {
        Some(committed) => committed.index.min(log.last_index()),
        None => log.last_index(),
    };
    progress.set_total(replay_through.saturating_sub(machine.applied));
    let mut replayed = 0u64;
    // Entries are applied in batches, so that the vectors of many small entries are inserted
    // in parallel (one entry's alone often are too few to spread over the cores).
    let mut batch: Vec<(u64, Vec<Op>)> = Vec::new();
    let (mut batch_vectors, mut batch_bytes) = (0, 0);
    // Without vector fields there is nothing to spread over the cores: entries apply one by
    // one, holding one decoded entry at a time.
    let batch_entries = if shared.vectors.is_empty() {
        1
    } else {
        REPLAY_BATCH_ENTRIES
    };
    let mut apply_batch = |batch: &mut Vec<(u64, Vec<Op>)>, machine: &mut StateMachine| {
        let entries: Vec<(u64, &[Op])> = batch.iter().map(|(i, o)| (*i, o.as_slice())).collect();
        machine.apply(&shared, &entries, false)?;
        progress.add_replayed(entries.len() as u64);
        replayed += entries.len() as u64;
        batch.clear();
        Ok::<_, Error>(())
    };
    log.read_from(machine.applied + 1, replay_through, |entry| {
        let ops = ops::decode(&entry.payload)?;
        batch_vectors += ops.iter().map(Op::vector_count).sum::<usize>();
        batch_bytes += entry.payload.len();
        batch.push((entry.id.index, ops));
        if batch_vectors >= REPLAY_BATCH_VECTORS
            || batch.len() >= batch_entries
            || batch_bytes >= REPLAY_BATCH_BYTES
        {
            (batch_vectors, batch_bytes) = (0, 0);
            apply_batch(&mut batch, &mut machine)?;
        }
        Ok(())
    })?;
    apply_batch(&mut batch, &mut machine)?;
    if cut_below_checkpoint {
        tracing::error!(
            shard = %dir.display(),
            lost_from = log.last_index() + 1,
            lost_through = newest_checkpoint,
            text_checkpoint,
            vector_checkpoint = if shared.vectors.is_empty() { None } else { Some(vector_checkpoint) },
            "the cut log ends below a checkpoint: entries in this range are kept only by the components whose checkpoint covers them (text or vectors), the others lost them"
        );
        machine.applied = newest_checkpoint;
    }
    let mut disk_full = None;
    if replayed > 0 || cut_below_checkpoint {
        // Make the replayed writes searchable. The vector checkpoint waits for its interval:
        // saving every index here would put a full rewrite on the restart path.
        if let Err(e) = machine.refresh(&shared, &log) {
            // The log still holds every replayed entry; the writer thread retries.
            if !e.is_disk_full() {
                return Err(e);
            }
            tracing::warn!(error = %e, shard = %dir.display(), "the disk is full: replayed writes stay unsearchable and new writes are refused until space is freed");
            disk_full = Some(e.cause());
        }
    }
    if cut_below_checkpoint {
        // Both checkpoints reach the newest one before the log skips ahead to it: a crash in
        // between leaves a log that ends below a checkpoint, which this flag repairs again.
        machine.save_vectors(&shared)?;
        log.purge(LogId::new(LOCAL_TERM, 0, newest_checkpoint))?;
    }
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
        text_checkpoint,
        vector_checkpoint = if shared.vectors.is_empty() { None } else { Some(vector_checkpoint) },
        replayed,
        ms = started.elapsed().as_millis() as u64,
        "shard opened"
    );
    Ok((shared, state))
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
        files: Some(pointer.files),
        unchecked: verified.is_none(),
    })
}

impl StateMachine {
    /// Applies entries, in log order, to each component that has not applied them yet; the
    /// vectors of all of them are inserted at once, spread over the cores. A text index
    /// failure drops the writer (see [`StateMachine::writer`]) rather than failing the entry:
    /// the entry is durable, and [`StateMachine::repair_text`] re-adds it from the log.
    pub(crate) fn apply(
        &mut self,
        shared: &Shared,
        entries: &[(u64, &[Op])],
        live: bool,
    ) -> Result<()> {
        self.last_write = Instant::now();
        let mut inserts: Vec<(&VectorIndex, u64, &[f32])> = Vec::new();
        for &(index, ops) in entries {
            if index > self.text_checkpoint && self.text_broken.is_none() {
                if let Err(e) = self.apply_text(shared, index, ops) {
                    self.break_text(shared, &e);
                }
            }
            if !shared.vectors.is_empty() && index > self.vector_checkpoint {
                self.index_vectors(shared, index, ops, &mut inserts);
            }
        }
        if !inserts.is_empty() {
            self.vectors_dirty = true;
            self.vectors_since_checkpoint += inserts.len();
            insert_vectors(&inserts)?;
        }
        if live {
            let mut overlay = shared.unrefreshed.write();
            for (_, ops) in entries {
                for op in ops.iter() {
                    let value = match op {
                        Op::Upsert(doc) => Some(doc.clone()),
                        Op::Delete(_) => None,
                    };
                    overlay.insert(op.id().to_string(), value);
                }
            }
        }
        if let Some((last, _)) = entries.last() {
            self.applied = self.applied.max(*last);
        }
        Ok(())
    }

    /// Moves the vector keys of one entry's documents and collects its vectors to insert.
    fn index_vectors<'a>(
        &mut self,
        shared: &'a Shared,
        index: u64,
        ops: &'a [Op],
        inserts: &mut Vec<(&'a VectorIndex, u64, &'a [f32])>,
    ) {
        for (position, op) in ops.iter().enumerate() {
            let key = version_key(index, position);
            let id = op.id();
            let old = match op {
                Op::Upsert(doc) if !doc.vectors.is_empty() => {
                    self.vector_keys.insert(id.to_string(), key)
                }
                _ => self.vector_keys.remove(id),
            };
            if let Some(old) = old {
                self.pending_removals.push(old);
                self.vectors_dirty = true;
            }
            if let Op::Upsert(doc) = op {
                for (field, values) in &doc.vectors {
                    if let Some(vi) = shared.vectors.get(field) {
                        inserts.push((vi, key, values.as_slice()));
                    }
                }
            }
        }
    }

    /// The writer, opened on first use after start, an idle close or a failure.
    fn writer(&mut self, shared: &Shared) -> Result<&mut IndexWriter> {
        if self.writer.is_none() {
            let writer = shared
                .index
                .writer_with_options(self.writer_options.clone())
                .map_err(|e| Error::from(e).classify_storage(&shared.dir))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }

    fn apply_text(&mut self, shared: &Shared, index: u64, ops: &[Op]) -> Result<()> {
        let writer = self.writer(shared)?;
        for (position, op) in ops.iter().enumerate() {
            writer.delete_term(Term::from_field_text(shared.fields.id, op.id()));
            if let Op::Upsert(doc) = op {
                match build_document(shared, version_key(index, position), doc) {
                    Ok(document) => {
                        writer.add_document(document)?;
                    }
                    // Validation runs before the log append, so this is a document an older
                    // version accepted. Skipping it keeps the shard able to open.
                    Err(e) => {
                        tracing::error!(error = %e, index, "skipping a logged document the schema cannot index")
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops a failed writer. Its uncommitted documents are lost to it, but not to the log:
    /// `text_checkpoint` stays where the last good commit left it.
    fn break_text(&mut self, shared: &Shared, error: &Error) {
        tracing::error!(error = %error, shard = %shared.dir.display(), checkpoint = self.text_checkpoint, "the text index writer failed; it is rebuilt from its last commit and the log");
        self.writer = None;
        self.text_broken = Some(error.to_string());
    }

    /// Re-adds every entry after the text checkpoint to a fresh writer.
    fn repair_text(&mut self, shared: &Shared, log: &ShardLog) -> Result<()> {
        let through = self.applied;
        let from = self.text_checkpoint + 1;
        self.writer(shared)?;
        log.read_from(from, through, |entry| {
            let ops = ops::decode(&entry.payload)?;
            self.apply_text(shared, entry.id.index, &ops)
        })?;
        tracing::info!(shard = %shared.dir.display(), from, through, "text index writer rebuilt from the log");
        self.text_broken = None;
        Ok(())
    }

    /// Commits the text index with the applied index as payload, reloads the searcher, and
    /// retires vectors of replaced versions. A failed commit leaves the checkpoint where it
    /// was and drops the writer.
    pub(crate) fn refresh(&mut self, shared: &Shared, log: &ShardLog) -> Result<u64> {
        if self.text_broken.is_some() {
            if let Err(e) = self.repair_text(shared, log) {
                self.writer = None;
                return Err(e.classify_storage(&shared.dir));
            }
        }
        if self.applied > self.text_checkpoint || !self.pending_removals.is_empty() {
            if self.applied > self.text_checkpoint {
                if let Err(e) = self.commit_text(shared) {
                    self.break_text(shared, &e);
                    return Err(e.classify_storage(&shared.dir));
                }
                self.text_checkpoint = self.applied;
            }
            shared.reader.reload()?;
            // The new searcher no longer sees the old versions, so their vectors can go.
            let removals = std::mem::take(&mut self.pending_removals);
            for vi in shared.vectors.values() {
                vi.remove_many(&removals)?;
            }
            shared.unrefreshed.write().clear();
        }
        shared.visible.send_replace(self.text_checkpoint);
        Ok(self.text_checkpoint)
    }

    fn commit_text(&mut self, shared: &Shared) -> Result<()> {
        let payload = serde_json::to_string(&TextCheckpoint {
            applied_index: self.applied,
        })
        .expect("checkpoint serializes");
        let mut commit = self.writer(shared)?.prepare_commit()?;
        commit.set_payload(&payload);
        commit.commit()?;
        Ok(())
    }

    /// Closes the writer once everything is committed and no write came for `idle`: an idle
    /// collection then holds no indexing or merge threads.
    fn close_idle_writer(&mut self, idle: std::time::Duration) {
        if self.writer.is_some()
            && self.applied == self.text_checkpoint
            && self.last_write.elapsed() >= idle
        {
            // Dropping a writer does not wait for its merge threads, whose last task could
            // still rewrite meta.json under the next writer.
            if let Some(writer) = self.writer.take() {
                if let Err(e) = writer.wait_merging_threads() {
                    tracing::warn!(error = %e, "a merge of an idle writer failed; its segments stay as they were");
                }
            }
            super::count_writer_closed();
        }
    }

    /// Records a vector checkpoint at the applied index. The indexes are rewritten only when
    /// they changed since the last save; otherwise the pointer alone moves forward, so that
    /// text-only writes never cost a full vector save.
    pub(crate) fn save_vectors(&mut self, shared: &Shared) -> Result<()> {
        self.vectors_saved_at = Instant::now();
        if shared.vectors.is_empty() || self.vector_checkpoint == self.applied {
            return Ok(());
        }
        let started = Instant::now();
        let root = vectors_dir(&shared.dir);
        let files = match (&self.vector_files, self.vectors_dirty) {
            (Some(dir), false) => dir.clone(),
            _ => {
                let target = vector_checkpoint_dir(&shared.dir, self.applied);
                if let Err(e) = self.write_vector_files(shared, &target) {
                    // A partial checkpoint is useless and may be what filled the disk.
                    let _ = fs::remove_dir_all(&target);
                    return Err(e.classify_storage(&target));
                }
                target
                    .file_name()
                    .expect("checkpoint dir name")
                    .to_string_lossy()
                    .to_string()
            }
        };
        if let Err(e) = vector_files::write_pointer(&root, self.applied, &files) {
            let _ = fs::remove_file(root.join(vector_files::POINTER).with_extension("tmp"));
            if self.vector_files.as_deref() != Some(files.as_str()) {
                let _ = fs::remove_dir_all(root.join(&files));
            }
            return Err(e);
        }
        self.vector_checkpoint = self.applied;
        self.vectors_dirty = false;
        self.vectors_since_checkpoint = 0;
        // Older checkpoints are no longer needed.
        if self.vector_files.as_deref() != Some(files.as_str()) {
            if let Ok(entries) = fs::read_dir(&root) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() && entry.file_name().to_string_lossy() != files {
                        let _ = fs::remove_dir_all(entry.path());
                    }
                }
            }
            self.vector_files = Some(files);
        }
        tracing::debug!(
            index = self.applied,
            ms = started.elapsed().as_millis() as u64,
            "vector checkpoint saved"
        );
        Ok(())
    }

    fn write_vector_files(&self, shared: &Shared, target: &Path) -> Result<()> {
        let _ = fs::remove_dir_all(target);
        create_dir_durable(target)?;
        for (name, vi) in &shared.vectors {
            vi.save(&target.join(format!("{name}.usearch")))?;
        }
        let keys = postcard::to_stdvec(&self.vector_keys).expect("key map serializes");
        write_atomically(&target.join("keys.bin"), &keys)?;
        vector_files::write_checksums(target)?;
        sync_dir(target)?;
        sync_dir(&vectors_dir(&shared.dir))
    }

    /// Vectors inserted since the last save that make the next refresh save again: the
    /// configured count, raised to a tenth of the vectors held, so that a save (which rewrites
    /// every index) never costs more than ten times the vectors it covers. 0 saves at every
    /// refresh.
    fn vector_save_threshold(&self, shared: &Shared, config: &ShardConfig) -> usize {
        if config.vector_checkpoint_vectors == 0 {
            return 0;
        }
        let held: usize = shared.vectors.values().map(VectorIndex::len).sum();
        config.vector_checkpoint_vectors.max(held / 10)
    }

    /// The entry through which every component's checkpoint has passed.
    fn checkpointed_through(&self) -> u64 {
        self.text_checkpoint.min(self.vector_checkpoint)
    }
}

/// HNSW inserts dominate vector ingest, so a large batch is spread over the cores; the graph
/// takes concurrent inserts.
fn insert_vectors(inserts: &[(&VectorIndex, u64, &[f32])]) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || inserts.len() < 64 {
        return inserts
            .iter()
            .try_for_each(|(vi, key, values)| vi.add(*key, values));
    }
    let chunk = inserts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = inserts
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .try_for_each(|(vi, key, values)| vi.add(*key, values))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(Error::Vector("a vector insert thread panicked".into())))
        })
    })
}

fn build_document(shared: &Shared, key: u64, doc: &PreparedDoc) -> Result<TantivyDocument> {
    let fields = &shared.fields;
    let mut out = TantivyDocument::default();
    out.add_text(fields.id, &doc.id);
    out.add_u64(fields.key, key);
    if let Some(field) = fields.id_hash {
        out.add_u64(field, crate::rank::id_hash(&doc.id));
    }
    for (name, _) in &doc.vectors {
        out.add_text(fields.vectors, name);
    }
    // `_source` is the stored fields as one compact JSON object, written once; the content
    // hash reads each field's value from it rather than serializing it again.
    let mut source: Vec<u8> = Vec::with_capacity(256);
    source.push(b'{');
    let mut spans: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
    for (name, value) in &doc.source {
        let Some(def) = shared.schema.fields.get(name) else {
            continue;
        };
        if def.stored {
            if !spans.is_empty() {
                source.push(b',');
            }
            serde_json::to_writer(&mut source, name).expect("JSON strings serialize");
            source.push(b':');
            let start = source.len();
            serde_json::to_writer(&mut source, value).expect("JSON values serialize");
            spans.push((name.as_str(), start..source.len()));
        }
        if let Some(&field) = fields.user.get(name) {
            add_values(&mut out, field, def.field_type, value).map_err(|message| {
                Error::InvalidDocument {
                    id: doc.id.clone(),
                    message,
                }
            })?;
        }
    }
    source.push(b'}');
    if let Some(field) = fields.content_hash {
        let parts = spans
            .iter()
            .map(|(name, range)| (*name, &source[range.clone()]))
            .collect();
        out.add_u64(field, super::hash_content(doc, parts));
    }
    let source = String::from_utf8(source).expect("serde_json writes UTF-8");
    out.add_text(fields.source, source);
    Ok(out)
}

fn add_values(
    doc: &mut TantivyDocument,
    field: Field,
    ty: FieldType,
    value: &Value,
) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                add_values(doc, field, ty, item)?;
            }
        }
        Value::Null => {}
        _ => match ty {
            FieldType::Text | FieldType::Keyword => {
                doc.add_text(field, value.as_str().unwrap_or_default())
            }
            FieldType::I64 => doc.add_i64(field, value.as_i64().ok_or("not an i64")?),
            FieldType::U64 => doc.add_u64(field, value.as_u64().ok_or("not a u64")?),
            FieldType::F64 => doc.add_f64(field, value.as_f64().ok_or("not an f64")?),
            FieldType::Bool => doc.add_bool(field, value.as_bool().ok_or("not a bool")?),
            FieldType::Date => doc.add_date(field, parse_date(value)?),
            FieldType::Vector => {}
        },
    }
    Ok(())
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
            Err(RecvTimeoutError::Timeout) => {}
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
    fn write_group(&mut self, shared: &Shared, group: Vec<(Vec<Op>, Reply)>) {
        let refusal = match (&self.failed, &self.disk_full) {
            (Some(reason), _) => Some(failed_error(shared, reason)),
            (None, Some(reason)) => Some(disk_full_error(shared, reason)),
            (None, None) => None,
        };
        if let Some(refusal) = refusal {
            let message = refusal.cause();
            let failed = refusal.code() == "storage_failed";
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
        let first = match self.log.append_next(LOCAL_TERM, 0, &payloads) {
            Ok(first) => first.index,
            Err(e) => {
                tracing::error!(error = %e, "log append failed; the writes were refused and not applied");
                if self.log.is_poisoned() {
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
            let entries: Vec<(u64, &[Op])> = accepted
                .iter()
                .enumerate()
                .map(|(i, (ops, _))| (first + i as u64, ops.as_slice()))
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
        let result = self.machine.refresh(shared, &self.log);
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
        self.machine.refresh(shared, &self.log)?;
        // After a full disk the vector checkpoint is retried at once: it is what frees the log.
        // Bounding it by vectors as well as by time bounds the replay after a crash.
        if retry
            || self.machine.vectors_saved_at.elapsed() >= config.vector_checkpoint_interval
            || self.machine.vectors_since_checkpoint
                >= self.machine.vector_save_threshold(shared, config)
        {
            self.machine.save_vectors(shared)?;
        }
        self.log
            .purge_through(self.machine.checkpointed_through())?;
        self.machine.close_idle_writer(config.idle_writer_close);
        Ok(())
    }

    /// The log id of the last entry every component applied.
    fn applied_id(&self) -> Result<LogId> {
        let applied = self.machine.applied;
        let term = if applied == 0 { 0 } else { LOCAL_TERM };
        Ok(self
            .log
            .log_id_at(applied)?
            .unwrap_or(LogId::new(term, 0, applied)))
    }

    /// Checkpoints every component at the applied entry and links their files into
    /// `target`: the content of a snapshot, which the caller seals.
    fn snapshot(&mut self, shared: &Shared, target: &Path) -> Result<LogId> {
        if let Some(reason) = &self.failed {
            return Err(failed_error(shared, reason));
        }
        self.checkpoint_text(shared)?;
        self.machine.save_vectors(shared)?;
        let applied = self.applied_id()?;
        let _ = fs::remove_dir_all(target);
        create_dir_durable(target)?;
        snapshot::link_text_index(&shared.index, &shared.dir.join("index"), target)?;
        if let (false, Some(files)) = (shared.vectors.is_empty(), &self.machine.vector_files) {
            snapshot::link_vectors(
                &vectors_dir(&shared.dir),
                files,
                self.machine.vector_checkpoint,
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
        machine.refresh(shared, &log)?;
        machine.save_vectors(shared)?;
        log.purge_through(machine.checkpointed_through())?;
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
