//! Snapshots between engines: build on one node, install on another while it serves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::search::SearchRequest;

const SCHEMA: &str = r#"{"name": "docs", "fields": {
    "title": {"type": "text"}, "tag": {"type": "keyword"},
    "emb": {"type": "vector", "dimension": 3, "distance": "cosine"}}}"#;

fn engine(dir: &Path) -> Engine {
    let engine = Engine::open(EngineConfig {
        data_dir: dir.to_path_buf(),
        shard: ShardConfig {
            // Checkpoints only when a test takes them.
            refresh_interval: Duration::from_secs(3600),
            vector_checkpoint_interval: Duration::from_secs(3600),
            ..ShardConfig::default()
        },
        max_collections: 8,
    })
    .unwrap();
    engine
        .create_collection(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap())
        .unwrap();
    engine
}

/// Writes documents `from..to` of a deterministic set (every third one deleted again).
fn write(engine: &Engine, from: usize, to: usize, title: &str) {
    let collection = engine.collection("docs").unwrap();
    let docs: Vec<Value> = (from..to)
        .map(|i| {
            json!({"id": format!("d{i}"), "fields": {"title": format!("{title} {i}"),
                "tag": format!("t{}", i % 4), "emb": [1.0, i as f64, 0.5]}})
        })
        .collect();
    let batch = collection.prepare_upserts(docs);
    collection.shard().write_blocking(batch.ops).unwrap();
    let deletes: Vec<Op> = (from..to)
        .step_by(3)
        .map(|i| Op::Delete(format!("d{i}")))
        .collect();
    collection.shard().write_blocking(deletes).unwrap();
    collection.shard().refresh_blocking().unwrap();
}

fn checksum(engine: &Engine) -> (u64, Option<u64>) {
    let stats = engine.collection("docs").unwrap().stats();
    (stats.num_docs, stats.content_checksum)
}

fn top_ids(engine: &Engine, body: serde_json::Value) -> Vec<String> {
    let request = SearchRequest::from_json(body.to_string().as_bytes()).unwrap();
    let collection = engine.collection("docs").unwrap();
    let response = collection.shard().search(&request).unwrap();
    response.results.into_iter().map(|h| h.id).collect()
}

#[test]
fn a_snapshot_installed_on_another_node_holds_the_same_content_and_takes_writes() {
    let (a_dir, b_dir, snap) = (tempdir(), tempdir(), tempdir());
    let a = engine(a_dir.path());
    write(&a, 0, 300, "alpha");
    let b = engine(b_dir.path());
    write(&b, 1000, 1010, "other");
    let target = snap.path().join("s1");
    let manifest = snapshot(&a, &target);
    let applied = a
        .collection("docs")
        .unwrap()
        .shard()
        .applied_state()
        .unwrap();
    assert_eq!(manifest.applied, applied);
    assert!(applied.index >= 2, "{applied:?}");
    // Every file of both components is listed with its SHA-256.
    assert!(manifest.files.iter().any(|f| f.path == "index/meta.json"));
    assert!(manifest
        .files
        .iter()
        .any(|f| f.path.ends_with("emb.usearch")));
    assert!(manifest.files.iter().all(|f| f.sha256.len() == 64));
    // The copy's tantivy manages (and so garbage-collects) the files it receives.
    assert!(manifest
        .files
        .iter()
        .any(|f| f.path == "index/.managed.json"));

    b.install_snapshot("docs", &target).unwrap();
    assert_eq!(checksum(&b), checksum(&a));
    let queries = [
        json!({"query": "alpha", "limit": 20}),
        json!({"vector": [1.0, 40.0, 0.5], "limit": 5}),
        json!({"query": "alpha 7", "vector": [1.0, 7.0, 0.5], "limit": 10}),
    ];
    for q in &queries {
        assert_eq!(top_ids(&b, q.clone()), top_ids(&a, q.clone()), "{q}");
    }
    let installed = b.collection("docs").unwrap();
    assert_eq!(installed.shard().applied_state().unwrap(), applied);
    assert!(
        installed.shard().get("d1000").unwrap().is_none(),
        "the old copy is gone"
    );

    // Both copies take the same next writes and stay equal, also across a restart.
    write(&a, 300, 320, "beta");
    write(&b, 300, 320, "beta");
    assert_eq!(checksum(&b), checksum(&a));
    let next = b
        .collection("docs")
        .unwrap()
        .shard()
        .applied_state()
        .unwrap();
    assert!(next.index > applied.index);
    b.close().unwrap();
    drop(b);
    let b = Engine::open(EngineConfig {
        data_dir: b_dir.path().to_path_buf(),
        shard: ShardConfig::default(),
        max_collections: 8,
    })
    .unwrap();
    assert_eq!(checksum(&b), checksum(&a));
    let shards = b_dir.path().join("collections/docs/shards");
    let leftovers: Vec<_> = fs::read_dir(&shards)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["0"], "no staging or replaced copy is left");
}

/// Builds a snapshot of `engine`'s collection in `target`.
fn snapshot(engine: &Engine, target: &Path) -> snapshot::SnapshotManifest {
    let collection = engine.collection("docs").unwrap();
    collection.shard().build_snapshot(target).unwrap()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_damaged_or_foreign_snapshot_is_refused_and_changes_nothing() {
    let (a_dir, b_dir, snap) = (tempdir(), tempdir(), tempdir());
    let a = engine(a_dir.path());
    write(&a, 0, 100, "alpha");
    let b = engine(b_dir.path());
    write(&b, 0, 10, "other");
    let before = checksum(&b);
    let target = snap.path().join("s");
    let manifest = snapshot(&a, &target);

    // A flipped byte in the largest file.
    let largest = manifest.files.iter().max_by_key(|f| f.bytes).unwrap();
    let path = target.join(&largest.path);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    // Links share the data with the source copy: replace the file rather than edit it.
    fs::remove_file(&path).unwrap();
    fs::write(&path, &bytes).unwrap();
    let refused = b.install_snapshot("docs", &target).err().expect("refused");
    assert_eq!(refused.code(), "corrupt_data");
    assert!(refused.to_string().contains(&largest.path), "{refused}");
    assert_eq!(checksum(&b), before);
    bytes[middle] ^= 0x40;
    fs::remove_file(&path).unwrap();
    fs::write(&path, &bytes).unwrap();

    // A file the manifest does not list.
    fs::write(target.join("index/extra"), b"x").unwrap();
    let refused = b.install_snapshot("docs", &target).err().expect("refused");
    assert!(
        refused
            .to_string()
            .contains("not in the snapshot's manifest"),
        "{refused}"
    );
    fs::remove_file(target.join("index/extra")).unwrap();

    // Another schema.
    let c_dir = tempdir();
    let c = Engine::open(EngineConfig {
        data_dir: c_dir.path().to_path_buf(),
        shard: ShardConfig::default(),
        max_collections: 8,
    })
    .unwrap();
    c.create_collection(
        CollectionSchema::from_json(br#"{"name": "docs", "fields": {"title": {"type": "text"}}}"#)
            .unwrap(),
    )
    .unwrap();
    let refused = c.install_snapshot("docs", &target).err().expect("refused");
    assert_eq!(refused.code(), "invalid_request");
    assert!(refused.to_string().contains("another schema"));

    // Intact again, it installs; nothing of the refusals is left behind.
    assert_eq!(checksum(&b), before);
    b.install_snapshot("docs", &target).unwrap();
    assert_eq!(checksum(&b), checksum(&a));
}

#[test]
fn searches_keep_answering_while_a_snapshot_is_installed() {
    let (a_dir, b_dir, snap) = (tempdir(), tempdir(), tempdir());
    let a = engine(a_dir.path());
    write(&a, 0, 200, "alpha");
    let b = Arc::new(engine(b_dir.path()));
    write(&b, 0, 200, "beta");
    let target = snap.path().join("s");
    snapshot(&a, &target);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let searchers: Vec<_> = (0..2)
        .map(|_| {
            let (b, stop, answered) = (b.clone(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let request =
                    SearchRequest::from_json(br#"{"query": "alpha OR beta", "limit": 5}"#).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // Each search holds the copy it found until it finishes.
                    let collection = b.collection("docs").unwrap();
                    let response = collection.shard().search(&request).unwrap();
                    assert_eq!(response.results.len(), 5);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while answered.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    b.install_snapshot("docs", &target).unwrap();
    let at_install = answered.load(Ordering::Relaxed);
    while answered.load(Ordering::Relaxed) < at_install + 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for s in searchers {
        s.join().expect("no search failed during the install");
    }
    assert_eq!(checksum(&b), checksum(&a));
    assert!(top_ids(&b, json!({"query": "beta", "limit": 5})).is_empty());
}

#[test]
fn an_install_interrupted_by_a_crash_completes_or_undoes_at_the_next_open() {
    let (a_dir, b_dir, snap) = (tempdir(), tempdir(), tempdir());
    let a = engine(a_dir.path());
    write(&a, 0, 50, "alpha");
    let target = snap.path().join("s");
    let manifest = snapshot(&a, &target);
    let b = engine(b_dir.path());
    write(&b, 0, 5, "beta");
    let old = checksum(&b);
    b.close().unwrap();
    drop(b);
    let shard_dir = b_dir.path().join("collections/docs/shards/0");
    let options = || crate::log::OpenOptions {
        segment_bytes: 64 << 20,
        truncate_corrupt: false,
    };

    // Staged but not marked complete: the old copy stays.
    let staging = snapshot::stage(&target, &manifest, &shard_dir, Some(options())).unwrap();
    fs::remove_file(staging.join(snapshot::STAGED)).unwrap();
    let b = engine(b_dir.path());
    assert_eq!(checksum(&b), old);
    assert!(!staging.exists());
    b.close().unwrap();
    drop(b);

    // Staged, and the old copy already moved aside: the install completes.
    snapshot::stage(&target, &manifest, &shard_dir, Some(options())).unwrap();
    fs::rename(&shard_dir, snapshot::replaced_dir(&shard_dir)).unwrap();
    let b = engine(b_dir.path());
    assert_eq!(checksum(&b), checksum(&a));
    assert!(!snapshot::replaced_dir(&shard_dir).exists());
}

#[test]
fn a_deferred_open_answers_recovering_until_the_replay_is_done() {
    let dir = tempdir();
    let config = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        shard: ShardConfig {
            refresh_interval: Duration::from_secs(3600),
            vector_checkpoint_interval: Duration::from_secs(3600),
            vector_checkpoint_vectors: usize::MAX,
            ..ShardConfig::default()
        },
        max_collections: 8,
    };
    {
        let first = Engine::open(config.clone()).unwrap();
        first
            .create_collection(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap())
            .unwrap();
        // Many small entries: each one doc, so the replay batches them.
        for i in 0..300 {
            let collection = first.collection("docs").unwrap();
            let angle = i as f64 * 0.02;
            let doc = json!({"id": format!("d{i}"), "fields": {"title": format!("t {i}"),
                "emb": [angle.cos(), angle.sin(), 0.0]}});
            let batch = collection.prepare_upserts(vec![doc]);
            collection.shard().write_blocking(batch.ops).unwrap();
        }
        // A crash: no final checkpoint, so every entry replays.
        let collection = first.collection("docs").unwrap();
        collection.shard().close_for_delete().unwrap();
    }
    let engine = Engine::open_deferred(config).unwrap();
    let recovering = engine.collection("docs").err().expect("not open yet");
    assert_eq!(recovering.code(), "collection_recovering");
    assert!(recovering.to_string().contains("Retry"), "{recovering}");
    assert_eq!(engine.recovering()[0].state, "waiting");
    let schema = CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap();
    assert_eq!(
        engine.create_collection(schema).err().unwrap().code(),
        "collection_recovering"
    );
    assert_eq!(
        engine.delete_collection("docs").err().unwrap().code(),
        "collection_recovering"
    );
    engine.recover();
    assert!(engine.recovering().is_empty());
    let collection = engine.collection("docs").unwrap();
    assert_eq!(collection.stats().num_docs, 300);
    let angle = 299.0f64 * 0.02;
    let hit = top_ids(
        &engine,
        json!({"vector": [angle.cos(), angle.sin(), 0.0], "limit": 1}),
    );
    assert_eq!(hit, vec!["d299"]);
}

#[test]
fn a_replay_reports_its_progress() {
    let dir = tempdir();
    let schema = Arc::new(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap());
    let config = ShardConfig {
        refresh_interval: Duration::from_secs(3600),
        vector_checkpoint_interval: Duration::from_secs(3600),
        vector_checkpoint_vectors: usize::MAX,
        ..ShardConfig::default()
    };
    let shard = Shard::open(dir.path(), schema.clone(), config.clone()).unwrap();
    for i in 0..50 {
        let doc =
            json!({"id": format!("d{i}"), "fields": {"title": "t", "emb": [1.0, i as f64, 0.5]}});
        let prepared = schema.prepare_document(doc).unwrap();
        shard
            .write_blocking(vec![Op::Upsert(Arc::new(prepared))])
            .unwrap();
    }
    shard.close_for_delete().unwrap();
    drop(shard);
    let progress = ReplayProgress::default();
    let shard = Shard::open_reporting(dir.path(), schema, config, &progress).unwrap();
    assert_eq!((progress.replayed(), progress.total()), (50, 50));
    assert_eq!(shard.stats().num_docs, 50);
}
