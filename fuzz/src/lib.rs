//! Fixtures shared by the fuzz targets: the collection schema they use, a small shard opened
//! once per process, and a worker thread with the stack the server runs requests on.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prism_core::schema::CollectionSchema;
use prism_core::search::SearchRequest;
use prism_core::shard::{Op, Shard, ShardConfig};

/// The fuzzed collection: every field type, a fast text field for term aggregations, and one
/// 3-d cosine vector field (so that a bare vector array names it).
pub const SCHEMA_JSON: &str = r#"{
  "name": "fuzz",
  "fields": {
    "title": {"type": "text"},
    "body": {"type": "text", "analyzer": "default"},
    "category": {"type": "text", "analyzer": "raw", "fast": true},
    "tag": {"type": "keyword"},
    "year": {"type": "i64"},
    "views": {"type": "u64"},
    "price": {"type": "f64"},
    "in_stock": {"type": "bool"},
    "published": {"type": "date"},
    "embedding": {"type": "vector", "dimension": 3, "distance": "cosine"}
  }
}"#;

/// The documents of the shard, written in two batches (two segments), with one document
/// overwritten and one deleted in between so that dead versions exist too.
const FIRST_BATCH: &str = r#"[
  {"id": "1", "fields": {"title": "The quick brown fox", "body": "jumps over the lazy dog",
    "category": "animals", "tag": ["fox", "animal"], "year": 2020, "views": 100, "price": 9.5,
    "in_stock": true, "published": "2020-01-02T03:04:05Z", "embedding": [1, 0, 0]}},
  {"id": "2", "fields": {"title": "Rust search engines", "body": "tantivy and HNSW vectors",
    "category": "tech", "tag": "rust", "year": 2023, "views": 5000, "price": 0.0,
    "in_stock": false, "published": 1700000000, "embedding": [0, 1, 0]}},
  {"id": "3", "fields": {"title": "Hybrid ranking with RRF", "body": "reciprocal rank fusion",
    "category": "tech", "tag": ["search", "ranking"], "year": 2024, "views": 42,
    "price": 19.99, "in_stock": true, "published": "2024-02-29T12:00:00+01:00",
    "embedding": [0.5, 0.5, 0.1]}},
  {"id": "4", "fields": {"title": "Old news", "body": "deleted later", "tag": "gone",
    "year": 1999, "embedding": [0, 0, 1]}}
]"#;

const SECOND_BATCH: &str = r#"[
  {"id": "1", "fields": {"title": "The quick brown fox, revised", "body": "still lazy",
    "category": "animals", "tag": ["fox"], "year": 2021, "views": 101, "price": 10.0,
    "in_stock": true, "published": "2021-06-30T00:00:00Z", "embedding": [0.9, 0.1, 0]}},
  {"id": "5", "fields": {"title": "Text only document", "body": "no vector at all",
    "category": "misc", "tag": "text", "year": -5, "views": 0, "price": -1.25,
    "in_stock": false, "published": "1970-01-01T00:00:00Z"}},
  {"id": "6", "fields": {"embedding": [-1, 0.25, 0.75]}},
  {"id": "7", "fields": {"title": "Élan vital, naïve café", "body": "日本語のテキスト",
    "category": "i18n", "tag": ["ünïcode", "日本"], "year": 1677, "price": 1e300,
    "published": "2262-04-10T23:59:59Z", "embedding": [0.1, -0.2, 0.3]}},
  {"id": "8", "fields": {"title": "fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy fox dog lazy",
    "body": "the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog the quick brown fox jumps over the lazy dog",
    "year": 2000}}
]"#;

/// The stack of a tokio blocking thread, where the server runs searches and schema changes:
/// an input must not need more than that.
pub const SERVER_STACK_BYTES: usize = 2 << 20;

/// The schema of [`SCHEMA_JSON`].
pub fn schema() -> &'static Arc<CollectionSchema> {
    static SCHEMA: OnceLock<Arc<CollectionSchema>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Arc::new(CollectionSchema::from_json(SCHEMA_JSON.as_bytes()).expect("fixture schema"))
    })
}

struct Fixture {
    shard: Shard,
    // Keeps the directory for the life of the process (statics are never dropped, so it is
    // left behind at exit: `.ci/fuzz` points TMPDIR at a directory it removes).
    _dir: tempfile::TempDir,
}

/// A shard of [`schema`] holding the fixture documents, opened once per process.
pub fn shard() -> &'static Shard {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    &FIXTURE
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("prism-fuzz-shard-")
                .tempdir()
                .expect("temporary directory");
            // Nothing happens in the background: the fixture refreshes explicitly, so that
            // coverage depends on the input alone.
            let config = ShardConfig {
                refresh_interval: Duration::from_secs(24 * 3600),
                vector_checkpoint_interval: Duration::from_secs(24 * 3600),
                idle_writer_close: Duration::from_secs(24 * 3600),
                writer_memory_bytes: 16 << 20,
                ..ShardConfig::default()
            };
            let shard = Shard::open(dir.path(), schema().clone(), config).expect("open shard");
            let upserts = |batch: &str| -> Vec<Op> {
                let docs: Vec<serde_json::Value> = serde_json::from_str(batch).expect("fixture");
                docs.into_iter()
                    .map(|d| {
                        Op::Upsert(Arc::new(
                            schema().prepare_document(d).expect("fixture document"),
                        ))
                    })
                    .collect()
            };
            shard.write_blocking(upserts(FIRST_BATCH)).expect("write");
            shard.refresh_blocking().expect("refresh");
            let mut second = upserts(SECOND_BATCH);
            second.push(Op::Delete("4".into()));
            shard.write_blocking(second).expect("write");
            shard.refresh_blocking().expect("refresh");
            let all = shard
                .search(&SearchRequest {
                    limit: 10,
                    ..SearchRequest::default()
                })
                .expect("match-all search");
            assert_eq!(
                all.total, 7,
                "the fixture shard holds documents 1, 2, 3, 5, 6, 7 and 8 (a long text for phrases with slop)"
            );
            Fixture { shard, _dir: dir }
        })
        .shard
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on a long-lived thread with [`SERVER_STACK_BYTES`] of stack and returns its
/// result. A panic there aborts the process like one on the fuzzer's thread (libfuzzer-sys's
/// panic hook), and a stack overflow is a crash, so either is reported as the input's.
pub fn on_server_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static WORKER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fuzz-server-stack".into())
            .stack_size(SERVER_STACK_BYTES)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn worker thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::sync_channel(1);
    worker
        .lock()
        .expect("worker lock")
        .send(Box::new(move || {
            let _ = reply.send(f());
        }))
        .expect("worker thread alive");
    result.recv().expect("worker thread finished the job")
}
