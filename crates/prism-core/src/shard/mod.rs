//! A shard copy: a deterministic state machine fed by its log.
//!
//! The copy holds a tantivy index (text, keyword, numeric fields and the stored source), one
//! HNSW index per vector field, and the log id of the last entry each of them applied
//! ([`state_machine`]). One thread drives it ([`writer`]). On a single node that thread owns
//! the shard's log: it appends each group of waiting writes with one fsync (group commit),
//! applies them, and acknowledges them. Under Raft ([`Shard::open_replicated`]) the group owns
//! the log and hands committed entries over ([`Shard::apply`]). Every refresh interval the
//! thread commits tantivy with the applied state in the commit payload (a checkpoint) and
//! reloads the searcher; less often it saves the vector indexes (a second checkpoint). Restart
//! replays the log from the lower checkpoint; each component skips what it already holds.

mod bounded;
mod ids;
mod ops;
mod query;
mod query_string;
pub mod snapshot;
mod state_machine;
mod top;
mod vector_files;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use tantivy::directory::MmapDirectory;
use tantivy::schema::Field;
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyError};
use tokio::sync::{oneshot, watch};

use self::ids::IdHashes;
pub use self::ops::{version_key, Op, MAX_OPS_PER_ENTRY};
use self::query::LiveKeys;
pub use self::state_machine::{AppliedState, EntryPayload, LogEntry};
pub use self::writer::Feed;
use crate::error::{Error, Result};
use crate::log::LogId;
use crate::schema::{internal, CollectionSchema, PreparedDoc, SchemaGeneration};
use crate::search::budget::SearchBudget;
use crate::search::plan::ShardWindows;
use crate::search::{DocRef, Hit, SearchRequest, SearchResponse, ShardHits};
use crate::stats::TermStatistics;
use crate::vector::VectorIndex;

/// Tunables of a shard copy. Defaults suit a laptop and a small server alike.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// How often new writes become searchable. Default 1 s.
    pub refresh_interval: Duration,
    /// How often the vector indexes are saved when they changed. Default 10 s. Replay after a
    /// crash re-inserts at most this much work.
    pub vector_checkpoint_interval: Duration,
    /// Vectors inserted since the last vector checkpoint that make the next refresh take one
    /// before its interval: replay after a crash re-inserts at most about this many. Raised to
    /// a tenth of the vectors held, since a checkpoint rewrites whole indexes; 0 takes one at
    /// every refresh. Default 10,000.
    pub vector_checkpoint_vectors: usize,
    /// Size at which a log segment is closed and a new one begun. Default 16 MiB: the log is
    /// purged a whole segment at a time, so up to this much stays after a checkpoint.
    pub log_segment_bytes: u64,
    /// Memory the tantivy index writer may buffer. Default 128 MiB.
    pub writer_memory_bytes: usize,
    /// Writes that may wait for the writer thread before new ones are refused. Default 4096.
    pub write_queue_len: usize,
    /// A writer with nothing to commit for this long is closed, freeing its threads and
    /// buffers; the next write reopens it. Default 5 s.
    pub idle_writer_close: Duration,
    /// Open a log with a corrupt entry by cutting it there (losing that entry and every later
    /// one, which the log reports) instead of refusing to open the collection. Default off.
    pub truncate_corrupt_log: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            refresh_interval: Duration::from_secs(1),
            vector_checkpoint_interval: Duration::from_secs(10),
            vector_checkpoint_vectors: 10_000,
            log_segment_bytes: 16 << 20,
            writer_memory_bytes: 128 << 20,
            write_queue_len: 4096,
            idle_writer_close: Duration::from_secs(5),
            truncate_corrupt_log: false,
        }
    }
}

/// How far the log replay of a shard being opened has come, for `/health` and the
/// `collection_recovering` answer.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    replayed: AtomicU64,
    total: AtomicU64,
}

impl ReplayProgress {
    /// Entries replayed so far.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Entries to replay in all; 0 until the log is open.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub(crate) fn add_replayed(&self, entries: u64) {
        self.replayed.fetch_add(entries, Ordering::Relaxed);
    }
}

/// Tantivy field handles of the internal and user fields.
pub(crate) struct Fields {
    pub id: Field,
    pub key: Field,
    pub vectors: Field,
    pub source: Field,
    /// `None` in an index made before the `_idhash` column existed (see [`open_index`]).
    pub id_hash: Option<Field>,
    /// `None` in an index made before the `_hash` column existed.
    pub content_hash: Option<Field>,
    /// `_rawvec`, only in shards of [`SchemaGeneration::WithRawVectors`]: GET reads the
    /// vectors of documents written then from there.
    pub raw_vectors: Option<Field>,
    pub user: HashMap<String, Field>,
}

/// State shared by the writer thread and readers.
pub(crate) struct Shared {
    pub schema: Arc<CollectionSchema>,
    pub fields: Fields,
    pub index: Index,
    pub reader: IndexReader,
    pub vectors: BTreeMap<String, VectorIndex>,
    /// Highest log index whose effects are searchable.
    pub visible: watch::Sender<u64>,
    /// Writes applied but not yet searchable, for real-time GET: `None` marks a delete.
    pub unrefreshed: RwLock<HashMap<String, Option<Arc<PreparedDoc>>>>,
    pub live_keys: Mutex<Option<Arc<LiveKeys>>>,
    /// The id hashes of the last searcher generation that ranked, for ties.
    pub id_columns: Mutex<Option<Arc<IdHashes>>>,
    /// The searchers of recent query phases, for their fetch phases.
    pub recent_searchers: Mutex<std::collections::VecDeque<tantivy::Searcher>>,
    pub dir: PathBuf,
    /// Random per opening, so that searcher generations never repeat across reopens.
    pub instance: u64,
    /// Whether the shard takes writes, as the writer thread last found.
    pub health: RwLock<WriteHealth>,
    /// How often the writer thread woke for its timer (a settled shard sleeps without one).
    pub timer_wakeups: std::sync::atomic::AtomicU64,
    /// Whether the writer thread is waiting for work with no timer, having nothing to do.
    pub idle_without_timer: std::sync::atomic::AtomicBool,
}

static WRITERS_CLOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many idle index writers this process has closed, so that the server can return their
/// freed memory to the OS after a wave of closes.
pub fn writers_closed() -> u64 {
    WRITERS_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn count_writer_closed() {
    WRITERS_CLOSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a shard copy takes writes, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum WriteHealth {
    Ok,
    /// Writes are acknowledged; the text index is being rebuilt from its last commit and the
    /// log after a failure, and new writes become searchable once it is.
    Rebuilding(String),
    /// Writes are refused with 507 until space is freed; they resume by themselves.
    DiskFull(String),
    /// Writes are refused with 503 until a restart replays the log.
    Failed(String),
}

impl WriteHealth {
    pub fn is_ok(&self) -> bool {
        matches!(self, WriteHealth::Ok)
    }
}

pub(crate) enum Command {
    Write {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<u64>>,
    },
    Refresh {
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Checkpoint every component and link their files into the directory.
    Snapshot {
        target: PathBuf,
        reply: oneshot::Sender<Result<AppliedState>>,
    },
    AppliedState {
        reply: oneshot::Sender<Result<LogId>>,
    },
    /// Entries a Raft group committed, to apply in order.
    Apply {
        entries: Vec<LogEntry>,
        reply: oneshot::Sender<Result<AppliedState>>,
    },
    /// The applied log id and membership.
    Position {
        reply: oneshot::Sender<AppliedState>,
    },
    Shutdown {
        /// Take final checkpoints first; false when the shard's data is about to be deleted.
        checkpoint: bool,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A stored document as GET returns it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredDocument {
    pub id: String,
    pub fields: Map<String, Value>,
}

/// Counts and sizes of a shard copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ShardStats {
    pub num_docs: u64,
    pub size_bytes: u64,
    /// Highest log index searchable.
    pub visible_index: u64,
    /// Order-independent checksum of the searchable content (see [`content_hash`]); equal on
    /// two copies that applied the same entries. `None` for an index older than the column.
    pub content_checksum: Option<u64>,
}

/// The hash of one document's content: its id, its stored fields (by name) and its vectors
/// (by field). A shard's checksum is the wrapping sum over its live documents, so it does not
/// depend on the order of writes, segments or merges.
pub fn content_hash(
    doc: &crate::schema::PreparedDoc,
    stored: &serde_json::Map<String, serde_json::Value>,
) -> u64 {
    let serialized: Vec<(&str, String)> = stored
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_string()))
        .collect();
    let fields = serialized
        .iter()
        .map(|(name, json)| (*name, json.as_bytes()))
        .collect();
    hash_content(doc, fields)
}

/// [`content_hash`] from each stored field's compact JSON, as `_source` holds it.
pub(crate) fn hash_content(
    doc: &crate::schema::PreparedDoc,
    mut fields: Vec<(&str, &[u8])>,
) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(doc.id.as_bytes());
    hasher.update(&[0xff]);
    fields.sort_unstable_by_key(|(name, _)| *name);
    for (name, json) in fields {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(json);
        hasher.update(&[0xff]);
    }
    let mut vectors: Vec<&(String, Vec<f32>)> = doc.vectors.iter().collect();
    vectors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, values) in vectors {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
        hasher.update(&[0xff]);
    }
    hasher.digest()
}

/// The future of a proposed write: its log id once it is durable and applied.
pub type Proposal = std::pin::Pin<Box<dyn std::future::Future<Output = Result<LogId>> + Send>>;

/// Orders a collection's writes: the shard's own log on a single node; in cluster mode the
/// shard's Raft group, whose answer comes once a quorum holds the entry and this copy applied
/// it. Every write path goes through one.
pub trait Proposer: Send + Sync {
    fn propose(&self, ops: Vec<Op>) -> Proposal;
}

/// A single node's writes: the shard's own log, durable locally.
impl Proposer for Shard {
    fn propose(&self, ops: Vec<Op>) -> Proposal {
        let queued = self.submit(ops);
        Box::pin(async move {
            let index = queued?.await.map_err(|_| Error::ShuttingDown)??;
            Ok(LogId::new(writer::LOCAL_TERM, 0, index))
        })
    }
}

/// A shard copy on this node.
pub struct Shard {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where the state machine stood when the copy opened (after any replay).
    opened_at: AppliedState,
}

impl Shard {
    /// Opens the shard in `dir`, creating it if empty, and replays its log.
    pub fn open(dir: &Path, schema: Arc<CollectionSchema>, config: ShardConfig) -> Result<Shard> {
        Self::open_reporting(dir, schema, config, &ReplayProgress::default())
    }

    /// [`Shard::open`], counting the log entries it replays into `progress` as it goes.
    pub fn open_reporting(
        dir: &Path,
        schema: Arc<CollectionSchema>,
        config: ShardConfig,
        progress: &ReplayProgress,
    ) -> Result<Shard> {
        Self::start(dir, schema, config, progress, Feed::OwnLog)
    }

    /// Opens the copy in `dir` (creating it if empty) to be fed by a Raft group, which owns
    /// the log: nothing is replayed here, and the group applies again every entry past
    /// [`Shard::position`].
    pub fn open_replicated(
        dir: &Path,
        schema: Arc<CollectionSchema>,
        config: ShardConfig,
    ) -> Result<Shard> {
        Self::start(
            dir,
            schema,
            config,
            &ReplayProgress::default(),
            Feed::Replicated,
        )
    }

    fn start(
        dir: &Path,
        schema: Arc<CollectionSchema>,
        config: ShardConfig,
        progress: &ReplayProgress,
        feed: Feed,
    ) -> Result<Shard> {
        let (shared, state) = writer::recover(dir, schema, &config, progress, feed)?;
        let opened_at = state.position().clone();
        let (tx, rx) = crossbeam_channel::bounded(config.write_queue_len);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-writer-{}", shared.schema.name))
            .spawn(move || writer::run(state, thread_shared, rx, config))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Shard {
            shared,
            commands: tx,
            thread: Mutex::new(Some(thread)),
            opened_at,
        })
    }

    pub fn schema(&self) -> &Arc<CollectionSchema> {
        &self.shared.schema
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => Error::Overloaded,
            TrySendError::Disconnected(_) => Error::ShuttingDown,
        })
    }

    /// Queues a batch of operations. The returned receiver yields the log index once the
    /// entry is durable and applied.
    pub fn submit(&self, ops: Vec<Op>) -> Result<oneshot::Receiver<Result<u64>>> {
        if ops.len() > MAX_OPS_PER_ENTRY {
            return Err(Error::InvalidRequest(format!(
                "at most {MAX_OPS_PER_ENTRY} operations per request"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Write { ops, reply })?;
        Ok(rx)
    }

    /// Applies entries a Raft group committed, in order; those at or below the applied one
    /// are skipped. The receiver yields where the state machine then stands. The work runs on
    /// the shard's thread, so the caller's task only waits. Refused on a copy that owns its
    /// log.
    pub fn apply(&self, entries: Vec<LogEntry>) -> Result<oneshot::Receiver<Result<AppliedState>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Apply { entries, reply })?;
        Ok(rx)
    }

    /// Where the state machine stood when this copy opened: for a Raft group, what its
    /// checkpoints hold.
    pub fn opened_at(&self) -> &AppliedState {
        &self.opened_at
    }

    /// The last entry applied, with its term, and the last membership applied.
    pub fn position(&self) -> Result<oneshot::Receiver<AppliedState>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Position { reply })?;
        Ok(rx)
    }

    /// The last log entry every component applied: the state machine's applied state.
    /// Blocking.
    pub fn applied_state(&self) -> Result<LogId> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::AppliedState { reply })?;
        rx.blocking_recv().map_err(|_| Error::ShuttingDown)?
    }

    /// Builds a snapshot of this copy in `target` (created, or replaced): checkpoints of
    /// every component at the applied entry, the schema, and a manifest with the SHA-256 of
    /// every file ([`snapshot`]). Writes wait only while the checkpoints are taken and
    /// linked; hashing runs on the caller's thread. Blocking.
    pub fn build_snapshot(&self, target: &Path) -> Result<snapshot::SnapshotManifest> {
        self.build_snapshot_as(target, None)
    }

    /// [`Shard::build_snapshot`], its manifest naming `snapshot_id`. Blocking.
    pub fn build_snapshot_as(
        &self,
        target: &Path,
        snapshot_id: Option<String>,
    ) -> Result<snapshot::SnapshotManifest> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot {
            target: target.to_path_buf(),
            reply,
        })?;
        let applied = rx.blocking_recv().map_err(|_| Error::ShuttingDown)??;
        let schema = serde_json::to_vec_pretty(&*self.shared.schema).expect("schema serializes");
        crate::log::write_atomically(&target.join(snapshot::SCHEMA), &schema)?;
        snapshot::seal(target, applied, snapshot_id)
    }

    /// Writes and waits (blocking) for durability. For tools and tests outside a runtime.
    pub fn write_blocking(&self, ops: Vec<Op>) -> Result<u64> {
        self.submit(ops)?
            .blocking_recv()
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Asks for a refresh now; the receiver yields the index that became visible.
    pub fn request_refresh(&self) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Refresh { reply })?;
        Ok(rx)
    }

    /// Refreshes and waits (blocking).
    pub fn refresh_blocking(&self) -> Result<u64> {
        self.request_refresh()?
            .blocking_recv()
            .map_err(|_| Error::ShuttingDown)?
    }

    /// A receiver of the highest searchable log index, to wait on with `wait_for`.
    pub fn visible_index(&self) -> watch::Receiver<u64> {
        self.shared.visible.subscribe()
    }

    /// Runs a search against the last refreshed state, without a deadline: for tools and
    /// tests. Requests from clients go through [`Shard::search_within`].
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse> {
        self.search_within(request, &Arc::new(SearchBudget::unlimited()))
    }

    /// Runs a search against the last refreshed state until `budget` is spent; past its
    /// deadline the answer is partial and says `timed_out`.
    pub fn search_within(
        &self,
        request: &SearchRequest,
        budget: &Arc<SearchBudget>,
    ) -> Result<SearchResponse> {
        query::search(&self.shared, request, budget)
    }

    /// The query phase of a federated search: ranked documents, scored with `global`
    /// statistics when given (see [`Shard::term_statistics`]) so that scores compare across
    /// shards, each list as long as the coordinator's plan says, aggregations unfinished.
    pub fn query_phase(
        &self,
        request: &SearchRequest,
        global: Option<&TermStatistics>,
        windows: ShardWindows,
        budget: &Arc<SearchBudget>,
    ) -> Result<ShardHits> {
        query::query_phase(&self.shared, request, global, windows, budget)
    }

    /// The fetch phase: stored fields and highlights of documents ranked by a query phase
    /// of searcher `generation`. Scores are left at zero for the coordinator to fill.
    pub fn fetch(
        &self,
        request: &SearchRequest,
        generation: &str,
        docs: &[DocRef],
    ) -> Result<Vec<Hit>> {
        query::fetch(&self.shared, request, generation, docs)
    }

    /// This shard's BM25 statistics for the terms of `request`, and the generation of the
    /// searcher they describe (see [`ShardHits::generation`]).
    pub fn term_statistics(&self, request: &SearchRequest) -> Result<(TermStatistics, String)> {
        query::term_statistics(&self.shared, request)
    }

    /// The current version of a document, including writes not yet refreshed.
    pub fn get(&self, id: &str) -> Result<Option<StoredDocument>> {
        query::get(&self.shared, id)
    }

    /// Every searchable document, in batches of up to `batch`, as [`Shard::get`] returns it;
    /// `each` returns false to stop. Blocking.
    pub fn scan(
        &self,
        batch: usize,
        mut each: impl FnMut(Vec<StoredDocument>) -> Result<bool>,
    ) -> Result<u64> {
        query::scan(&self.shared, batch.max(1), &mut each)
    }

    /// How many times the copy's writer thread woke for its refresh timer. A settled copy
    /// (everything committed and saved, its writer closed) waits for work with no timer.
    pub fn timer_wakeups(&self) -> u64 {
        self.shared
            .timer_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the copy is settled: its writer thread waits for the next command with no
    /// timer. Any command ends that until the copy settles again.
    pub fn is_settled(&self) -> bool {
        self.shared
            .idle_without_timer
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the shard takes writes.
    pub fn health(&self) -> WriteHealth {
        self.shared.health.read().clone()
    }

    pub fn stats(&self) -> ShardStats {
        let searcher = self.shared.reader.searcher();
        ShardStats {
            num_docs: searcher.num_docs(),
            size_bytes: dir_size(&self.shared.dir),
            visible_index: *self.shared.visible.borrow(),
            content_checksum: self
                .shared
                .fields
                .content_hash
                .and_then(|_| content_checksum(&searcher)),
        }
    }

    /// The vector index of a field, for benchmarks and diagnostics.
    pub fn vector_index(&self, field: &str) -> Option<&VectorIndex> {
        self.shared.vectors.get(field)
    }

    /// Flushes everything to a checkpoint and stops the writer thread.
    pub fn close(&self) -> Result<()> {
        self.stop(true)
    }

    /// Stops the writer thread without final checkpoints, for a shard about to be deleted: it
    /// succeeds on a full disk or a failed shard, where checkpointing cannot.
    pub fn close_for_delete(&self) -> Result<()> {
        self.stop(false)
    }

    fn stop(&self, checkpoint: bool) -> Result<()> {
        let Some(thread) = self.thread.lock().take() else {
            return Ok(());
        };
        let (reply, rx) = oneshot::channel();
        // A blocking send: shutdown must not be refused because the queue is full.
        let sent = self
            .commands
            .send(Command::Shutdown { checkpoint, reply })
            .is_ok();
        // The writer replies before it exits, so after the join the reply is there: no
        // blocking receive, which would panic when a shard is dropped inside a runtime.
        let _ = thread.join();
        let mut rx = rx;
        if sent {
            rx.try_recv().unwrap_or(Err(Error::ShuttingDown))
        } else {
            Ok(())
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing shard failed");
        }
    }
}

pub(crate) fn open_reader(index: &Index) -> Result<IndexReader> {
    Ok(index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?)
}

/// The wrapping sum of the `_hash` column over the live documents a searcher sees.
fn content_checksum(searcher: &tantivy::Searcher) -> Option<u64> {
    let mut sum = 0u64;
    for segment in searcher.segment_readers() {
        let column = segment
            .fast_fields()
            .u64(crate::schema::internal::CONTENT_HASH)
            .ok()?;
        let mut add = |doc| sum = sum.wrapping_add(column.first(doc).unwrap_or(0));
        match segment.alive_bitset() {
            Some(alive) => alive.iter_alive().for_each(&mut add),
            None => (0..segment.max_doc()).for_each(&mut add),
        }
    }
    Some(sum)
}

/// Opens the shard's tantivy index, creating it with the current schema if there is none.
///
/// A tantivy index cannot gain a field, so an index of an older [`SchemaGeneration`] keeps its
/// schema and is accepted as it is. Before `_idhash`, ranking hashes `_id` instead of reading
/// the column, so it ranks exactly as a new index, only slower on queries with many ties;
/// with `_rawvec`, GET reads the vectors of documents written then from there.
/// Refusing such an index would break the promise that a data directory that opened once
/// always opens again. Any other difference is refused.
pub(crate) fn open_index(directory: MmapDirectory, schema: &CollectionSchema) -> Result<Index> {
    match Index::open_or_create(directory.clone(), schema.tantivy_schema()) {
        Err(TantivyError::SchemaError(message)) => {
            let index = Index::open(directory)?;
            let older = [
                SchemaGeneration::WithRawVectors,
                SchemaGeneration::BeforeIdHash,
            ];
            let Some(generation) = older
                .into_iter()
                .find(|g| index.schema() == schema.tantivy_schema_of(*g))
            else {
                return Err(TantivyError::SchemaError(message).into());
            };
            if generation == SchemaGeneration::BeforeIdHash {
                tracing::warn!(
                    collection = %schema.name,
                    "this shard's text index predates the _idhash column: ties are ranked by hashing _id at query time, slower on queries with many ties; re-create the collection to add the column"
                );
            }
            Ok(index)
        }
        other => Ok(other?),
    }
}

pub(crate) fn resolve_fields(schema: &tantivy::schema::Schema, user: &CollectionSchema) -> Fields {
    let get = |name: &str| {
        schema
            .get_field(name)
            .expect("field built from the same schema")
    };
    Fields {
        id: get(internal::ID),
        key: get(internal::KEY),
        vectors: get(internal::VECTORS),
        source: get(internal::SOURCE),
        id_hash: schema.get_field(internal::ID_HASH).ok(),
        content_hash: schema.get_field(internal::CONTENT_HASH).ok(),
        raw_vectors: schema.get_field(internal::RAW_VECTORS).ok(),
        user: user
            .fields
            .keys()
            .filter_map(|n| schema.get_field(n).ok().map(|f| (n.clone(), f)))
            .collect(),
    }
}

/// Bytes used by all files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += dir_size(&entry.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

#[cfg(test)]
mod differential_tests;
#[cfg(test)]
mod tests;
