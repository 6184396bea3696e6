//! The shard's state machine: what applying a log entry does to each component (the text
//! index, the vector indexes, the overlay real-time reads see), and how far each component's
//! durable checkpoint has come. Drivers feed it: the single node's writer thread from its own
//! log ([`super::writer`]), and a Raft group through [`super::Shard::apply`].
//!
//! Applying is idempotent: an entry at or below the applied one changes nothing. Each
//! checkpoint records the applied log id and the last membership with it, so that a restart
//! knows exactly which entries to apply again.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tantivy::indexer::IndexWriterOptions;
use tantivy::schema::Field;
use tantivy::{IndexWriter, TantivyDocument, Term};

use super::ops::{self, version_key, Op};
use super::{vector_files, ShardConfig, Shared};
use crate::error::{Error, Result};
use crate::log::{create_dir_durable, sync_dir, write_atomically, LogId, ShardLog};
use crate::schema::{parse_date, FieldType, PreparedDoc};
use crate::vector::VectorIndex;

/// One entry of a shard's log, as its state machine applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub id: LogId,
    pub payload: EntryPayload,
}

/// What an entry asks of the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryPayload {
    /// Nothing (a new leader's first entry): only the applied id moves.
    Blank,
    /// A change of the group's members, encoded by the consensus layer. The shard keeps the
    /// last one applied, with its checkpoints.
    Membership(Vec<u8>),
    /// Document writes.
    Write(Vec<Op>),
}

/// Where a state machine stands: the last entry applied and the last membership applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub applied: Option<LogId>,
    pub membership: Option<Vec<u8>>,
}

impl AppliedState {
    /// The position of a checkpoint written before positions were kept: a single node's,
    /// whose entries all have the local term.
    pub(super) fn of_local_index(index: u64) -> Self {
        AppliedState {
            applied: (index > 0).then(|| LogId::new(super::writer::LOCAL_TERM, 0, index)),
            membership: None,
        }
    }
}

/// The tantivy commit payload: the checkpoint of the text index.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TextCheckpoint {
    pub(super) applied_index: u64,
    /// Absent in checkpoints written before log ids and memberships were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) position: Option<AppliedState>,
}

/// The components of a shard copy and how far each has applied the log.
pub(crate) struct StateMachine {
    /// `None` after the writer failed (tantivy leaves a writer that hit an I/O error unable
    /// to tell which documents it lost): entries above `text_checkpoint` are then re-added
    /// from the log into a fresh writer before the next commit.
    pub(super) writer: Option<IndexWriter>,
    pub(super) writer_options: IndexWriterOptions,
    /// Why the writer was dropped, while it is.
    pub(super) text_broken: Option<String>,
    /// When the last entry was applied, to close an idle writer and free its threads.
    pub(super) last_write: Instant,
    /// Last entry applied to all components.
    pub(super) applied: u64,
    /// Last entry included in the durable tantivy commit.
    pub(super) text_checkpoint: u64,
    /// Last entry included in the saved vector indexes (`u64::MAX` without vector fields).
    pub(super) vector_checkpoint: u64,
    /// Current version key of each document that has vectors.
    pub(super) vector_keys: HashMap<String, u64>,
    /// Old versions to tombstone in the vector indexes once the searcher no longer sees them.
    pub(super) pending_removals: Vec<u64>,
    pub(super) vectors_saved_at: Instant,
    /// The vector indexes changed since the last save.
    pub(super) vectors_dirty: bool,
    /// Vectors inserted since the last save: what a crash now would make the replay redo.
    pub(super) vectors_since_checkpoint: usize,
    /// Directory (under `vectors/`) of the files of the current vector checkpoint.
    pub(super) vector_files: Option<String>,
    /// The last entry applied (with its term) and the last membership applied.
    pub(super) position: AppliedState,
    /// What the durable text commit and the vector checkpoint record of it.
    pub(super) text_position: AppliedState,
    pub(super) vector_position: AppliedState,
}

pub(super) fn vectors_dir(dir: &Path) -> PathBuf {
    dir.join("vectors")
}

fn vector_checkpoint_dir(dir: &Path, index: u64) -> PathBuf {
    vectors_dir(dir).join(format!("ckpt-{index:020}"))
}

impl StateMachine {
    /// Applies entries, in log order, to each component that has not applied them yet; the
    /// vectors of all of them are inserted at once, spread over the cores. A text index
    /// failure drops the writer (see [`StateMachine::writer`]) rather than failing the entry:
    /// the entry is durable, and [`StateMachine::repair_text`] re-adds it from the log.
    pub(crate) fn apply(
        &mut self,
        shared: &Shared,
        entries: &[(LogId, &[Op])],
        live: bool,
    ) -> Result<()> {
        self.last_write = Instant::now();
        let mut inserts: Vec<(&VectorIndex, u64, &[f32])> = Vec::new();
        for &(id, ops) in entries {
            let index = id.index;
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
            self.advance_to(*last);
        }
        Ok(())
    }

    /// Records `id` as the last entry applied.
    fn advance_to(&mut self, id: LogId) {
        self.applied = self.applied.max(id.index);
        self.position.applied = Some(id);
    }

    /// True when `id` was applied already: replaying it again must change nothing (a usearch
    /// index refuses a key it holds).
    pub(super) fn has_applied(&self, id: LogId) -> bool {
        self.position
            .applied
            .is_some_and(|applied| id.index <= applied.index)
    }

    /// Applies entries of a replicated log in order, skipping those applied already; runs of
    /// writes are applied together, so that their vectors are inserted in parallel.
    pub(crate) fn apply_entries(
        &mut self,
        shared: &Shared,
        entries: &[LogEntry],
        live: bool,
    ) -> Result<()> {
        let mut writes: Vec<(LogId, &[Op])> = Vec::new();
        for entry in entries {
            if self.has_applied(entry.id) {
                continue;
            }
            match &entry.payload {
                EntryPayload::Write(ops) => writes.push((entry.id, ops.as_slice())),
                EntryPayload::Blank => {
                    self.apply(shared, &writes, live)?;
                    writes.clear();
                    self.advance_to(entry.id);
                }
                EntryPayload::Membership(membership) => {
                    self.apply(shared, &writes, live)?;
                    writes.clear();
                    self.advance_to(entry.id);
                    self.position.membership = Some(membership.clone());
                }
            }
        }
        self.apply(shared, &writes, live)
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

    /// Re-adds every entry after the text checkpoint to a fresh writer. A replicated shard has
    /// no log of its own to read: it fails, and a restart re-applies from the Raft log.
    fn repair_text(&mut self, shared: &Shared, log: Option<&ShardLog>) -> Result<()> {
        let Some(log) = log else {
            return Err(Error::StorageFailed {
                path: shared.dir.clone(),
                message: format!(
                    "the text index writer failed ({}); restart the node to re-apply the entries from the Raft log",
                    self.text_broken.as_deref().unwrap_or("unknown cause")
                ),
            });
        };
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
    pub(crate) fn refresh(&mut self, shared: &Shared, log: Option<&ShardLog>) -> Result<u64> {
        if self.text_broken.is_some() {
            if let Err(e) = self.repair_text(shared, log) {
                self.writer = None;
                return Err(e.classify_storage(&shared.dir));
            }
        }
        let text_behind =
            self.applied > self.text_checkpoint || self.position != self.text_position;
        if text_behind || !self.pending_removals.is_empty() {
            if text_behind {
                if let Err(e) = self.commit_text(shared) {
                    self.break_text(shared, &e);
                    return Err(e.classify_storage(&shared.dir));
                }
                self.text_checkpoint = self.applied;
                self.text_position = self.position.clone();
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
            position: Some(self.position.clone()),
        })
        .expect("checkpoint serializes");
        let mut commit = self.writer(shared)?.prepare_commit()?;
        commit.set_payload(&payload);
        commit.commit()?;
        Ok(())
    }

    /// Whether a refresh and a checkpoint would do nothing: the text index committed at the
    /// applied entry with its writer closed, no vector left to retire, and the vector indexes
    /// saved at the applied entry.
    pub(super) fn settled(&self, shared: &Shared) -> bool {
        self.writer.is_none()
            && self.text_broken.is_none()
            && self.applied == self.text_checkpoint
            && self.position == self.text_position
            && self.pending_removals.is_empty()
            && (shared.vectors.is_empty()
                || (self.vector_checkpoint == self.applied
                    && self.vector_position == self.position))
    }

    /// Closes the writer once everything is committed and no write came for `idle`: an idle
    /// collection then holds no indexing or merge threads.
    pub(super) fn close_idle_writer(&mut self, idle: std::time::Duration) {
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
        if shared.vectors.is_empty()
            || (self.vector_checkpoint == self.applied && self.vector_position == self.position)
        {
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
        if let Err(e) = vector_files::write_pointer(&root, self.applied, &files, &self.position) {
            let _ = fs::remove_file(root.join(vector_files::POINTER).with_extension("tmp"));
            if self.vector_files.as_deref() != Some(files.as_str()) {
                let _ = fs::remove_dir_all(root.join(&files));
            }
            return Err(e);
        }
        self.vector_checkpoint = self.applied;
        self.vector_position = self.position.clone();
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
    pub(super) fn vector_save_threshold(&self, shared: &Shared, config: &ShardConfig) -> usize {
        if config.vector_checkpoint_vectors == 0 {
            return 0;
        }
        let held: usize = shared.vectors.values().map(VectorIndex::len).sum();
        config.vector_checkpoint_vectors.max(held / 10)
    }

    /// The entry through which every component's checkpoint has passed.
    pub(super) fn checkpointed_through(&self) -> u64 {
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
