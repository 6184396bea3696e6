//! A vector checkpoint damaged on disk, bytes overwritten in place: its checksums catch it
//! before usearch reads it, so the process never aborts. The collection is unavailable
//! naming the file, or, where the log still holds every entry, rebuilt from the log; another
//! collection of the same engine serves throughout.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::search::SearchRequest;

const HURT: &str = r#"{"name": "hurt", "fields": {"title": {"type": "text"},
    "cos": {"type": "vector", "dimension": 8, "distance": "cosine"},
    "l2": {"type": "vector", "dimension": 8, "distance": "l2"}}}"#;
const FINE: &str = r#"{"name": "fine", "fields": {"title": {"type": "text"},
    "dot": {"type": "vector", "dimension": 8, "distance": "dot"}}}"#;

fn open(dir: &Path) -> Engine {
    Engine::open(EngineConfig {
        data_dir: dir.to_path_buf(),
        shard: ShardConfig {
            // Checkpoints only when the test closes the engine.
            refresh_interval: Duration::from_secs(3600),
            vector_checkpoint_interval: Duration::from_secs(3600),
            ..ShardConfig::default()
        },
        max_collections: 8,
    })
    .unwrap()
}

fn vector(rng: &mut impl Rng) -> Vec<f64> {
    (0..8).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// 150 documents with a vector in each field, some replaced and some deleted (so that the
/// checkpoint holds tombstones and a key map with history).
fn fill(engine: &Engine, name: &str, fields: &[&str]) {
    let collection = engine.collection(name).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for round in 0..3 {
        let docs: Vec<Value> = (0..150)
            .filter(|i| round == 0 || i % (round + 3) == 0)
            .map(|i| {
                let mut f = serde_json::Map::new();
                f.insert("title".into(), json!(format!("doc {i} round {round}")));
                for field in fields {
                    f.insert(field.to_string(), json!(vector(&mut rng)));
                }
                json!({"id": format!("d{i}"), "fields": f})
            })
            .collect();
        let batch = collection.prepare_upserts(docs);
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        collection.shard().write_blocking(batch.ops).unwrap();
    }
    let deletes: Vec<Op> = (0..150)
        .step_by(7)
        .map(|i| Op::Delete(format!("d{i}")))
        .collect();
    collection.shard().write_blocking(deletes).unwrap();
    collection.shard().refresh_blocking().unwrap();
}

/// The top ten of a few vector searches in each field: by graph walk, and exact (a filter
/// matching every document makes the search exact at this size).
#[derive(Debug, Default)]
struct Answers {
    walked: Vec<Vec<(String, f32)>>,
    exact: Vec<Vec<(String, f32)>>,
}

fn answers(engine: &Engine, name: &str, fields: &[&str]) -> Answers {
    let collection = engine.collection(name).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(77);
    let mut out = Answers::default();
    for field in fields {
        for _ in 0..4 {
            let values = vector(&mut rng);
            for filter in [None, Some("title:doc")] {
                let mut body = json!({"vector": {"field": field, "values": values}, "limit": 10});
                if let Some(filter) = filter {
                    body["filter"] = json!(filter);
                }
                let request = SearchRequest::from_json(body.to_string().as_bytes()).unwrap();
                let response = collection.shard().search(&request).unwrap();
                assert_eq!(response.results.len(), 10);
                let hits = response
                    .results
                    .into_iter()
                    .map(|h| (h.id, h.score))
                    .collect();
                match filter {
                    None => out.walked.push(hits),
                    Some(_) => out.exact.push(hits),
                }
            }
        }
    }
    out
}

fn same_hits(got: &[Vec<(String, f32)>], want: &[Vec<(String, f32)>]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| {
            g.len() == w.len()
                && g.iter()
                    .zip(w)
                    .all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() <= 1e-5 * (1.0 + b.1.abs()))
        })
}

/// The same answers: the very same, for indexes loaded from the same files.
fn same_answers(got: &Answers, want: &Answers) -> bool {
    same_hits(&got.walked, &want.walked) && same_hits(&got.exact, &want.exact)
}

/// The answers of indexes rebuilt from the log: the exact ones the same, and the graph
/// walks (approximate, over a graph built in another order) finding nearly all of them,
/// with the same scores.
fn rebuilt_answers(got: &Answers, want: &Answers) -> bool {
    if !same_hits(&got.exact, &want.exact) {
        return false;
    }
    let (mut found, mut total) = (0, 0);
    for (walked, exact) in got.walked.iter().zip(&want.exact) {
        for (id, score) in walked {
            if let Some((_, s)) = exact.iter().find(|(e, _)| e == id) {
                if (score - s).abs() > 1e-5 * (1.0 + s.abs()) {
                    return false;
                }
                found += 1;
            }
        }
        total += exact.len();
    }
    found * 10 >= total * 9
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn shard_dir(data: &Path, name: &str) -> PathBuf {
    data.join("collections").join(name).join("shards/0")
}

/// Every file of the current vector checkpoint of `hurt`, relative to the data directory.
fn checkpoint_files(data: &Path) -> Vec<PathBuf> {
    let vectors = shard_dir(data, "hurt").join("vectors");
    let pointer = std::fs::read_to_string(vectors.join("CHECKPOINT")).unwrap();
    let dir = vectors.join(pointer.split(' ').nth(1).unwrap());
    let mut files = vec![vectors.join("CHECKPOINT")];
    for entry in std::fs::read_dir(&dir).unwrap() {
        files.push(entry.unwrap().path());
    }
    files.sort();
    files
        .into_iter()
        .map(|f| f.strip_prefix(data).unwrap().to_path_buf())
        .collect()
}

/// Overwrites 1 to 16 bytes at a random offset of `path`, in place; whether any byte changed.
fn overwrite(path: &Path, rng: &mut impl Rng) -> bool {
    let before = std::fs::read(path).unwrap();
    let offset = rng.gen_range(0..before.len());
    let len = rng.gen_range(1..=16).min(before.len() - offset);
    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset as u64)).unwrap();
    file.write_all(&bytes).unwrap();
    drop(file);
    let after = std::fs::read(path).unwrap();
    assert_eq!(after.len(), before.len(), "in place, at the same size");
    after != before
}

/// Acceptance (#18): twenty in-place overwrites at random offsets of each file of a vector
/// checkpoint. With the log purged past the checkpoint (as after every checkpoint), each
/// damage makes `hurt` unavailable naming the file; with the log still holding every entry
/// (a crash between the vector save and the purge), `hurt` is rebuilt from it and answers as
/// before. Never a panic or an abort, and `fine` answers as before every time.
#[test]
fn damaged_vector_checkpoints_are_caught_before_usearch_reads_them() {
    let seed = std::env::var("PRISM_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    eprintln!("damage seed {seed} (PRISM_DAMAGE_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let unpurged_log = root.path().join("unpurged-log");
    let (want_hurt, want_fine) = {
        let engine = open(&pristine);
        for schema in [HURT, FINE] {
            engine
                .create_collection(CollectionSchema::from_json(schema.as_bytes()).unwrap())
                .unwrap();
        }
        fill(&engine, "hurt", &["cos", "l2"]);
        fill(&engine, "fine", &["dot"]);
        // The log before the final checkpoints purge it.
        copy_dir(&shard_dir(&pristine, "hurt").join("log"), &unpurged_log);
        let want = (
            answers(&engine, "hurt", &["cos", "l2"]),
            answers(&engine, "fine", &["dot"]),
        );
        engine.close().unwrap();
        want
    };
    let files = checkpoint_files(&pristine);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "CHECKPOINT",
        "CHECKSUMS",
        "cos.usearch",
        "cos.norms",
        "l2.usearch",
        "keys.bin",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    // Undamaged, both settings open and answer as before.
    for purged in [true, false] {
        let dir = root.path().join(format!("undamaged-{purged}"));
        copy_dir(&pristine, &dir);
        if !purged {
            let log = shard_dir(&dir, "hurt").join("log");
            std::fs::remove_dir_all(&log).unwrap();
            copy_dir(&unpurged_log, &log);
        }
        let engine = open(&dir);
        assert!(
            engine.unavailable().is_empty(),
            "{:?}",
            engine.unavailable()
        );
        assert!(same_answers(
            &answers(&engine, "hurt", &["cos", "l2"]),
            &want_hurt
        ));
        engine.close().unwrap();
    }

    let (mut unavailable, mut rebuilt, mut unchanged) = (0, 0, 0);
    for purged in [true, false] {
        for file in &files {
            for trial in 0..20 {
                let dir = root.path().join("trial");
                let _ = std::fs::remove_dir_all(&dir);
                copy_dir(&pristine, &dir);
                if !purged {
                    let log = shard_dir(&dir, "hurt").join("log");
                    std::fs::remove_dir_all(&log).unwrap();
                    copy_dir(&unpurged_log, &log);
                }
                let damaged = dir.join(file);
                let changed = overwrite(&damaged, &mut rng);
                let case = format!(
                    "{} trial {trial} (purged log: {purged}, seed {seed})",
                    file.display()
                );
                let engine = open(&dir);
                assert!(
                    same_answers(&answers(&engine, "fine", &["dot"]), &want_fine),
                    "{case}: the other collection"
                );
                match engine.unavailable().get("hurt") {
                    Some(reason) => {
                        assert!(
                            reason.contains(&damaged.display().to_string()),
                            "{case}: the reason does not name the file: {reason}"
                        );
                        assert!(purged, "{case}: the log could rebuild it: {reason}");
                        unavailable += 1;
                    }
                    None => {
                        let got = answers(&engine, "hurt", &["cos", "l2"]);
                        let right = if changed {
                            rebuilt_answers(&got, &want_hurt)
                        } else {
                            same_answers(&got, &want_hurt)
                        };
                        assert!(
                            right,
                            "{case}: wrong answers after reopening (changed: {changed}):\n{got:?}\n{want_hurt:?}"
                        );
                        // With the log purged, only an overwrite that changed nothing opens.
                        assert!(!(purged && changed), "{case}: the damage went unnoticed");
                        if changed {
                            rebuilt += 1;
                        } else {
                            unchanged += 1;
                        }
                    }
                }
                engine.close().unwrap();
            }
        }
    }
    eprintln!(
        "{unavailable} unavailable, {rebuilt} rebuilt, {unchanged} overwrites changed nothing"
    );
    assert!(
        unavailable > 100 && rebuilt > 100,
        "both outcomes were exercised"
    );
}

/// A checkpoint written before checksums (a pointer of two words, no `CHECKSUMS`) still
/// opens, and the next save writes a checked one.
#[test]
fn a_checkpoint_without_checksums_opens_and_the_next_save_adds_them() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path();
    let want = {
        let engine = open(data);
        engine
            .create_collection(CollectionSchema::from_json(HURT.as_bytes()).unwrap())
            .unwrap();
        fill(&engine, "hurt", &["cos", "l2"]);
        let want = answers(&engine, "hurt", &["cos", "l2"]);
        engine.close().unwrap();
        want
    };
    let vectors = shard_dir(data, "hurt").join("vectors");
    let pointer = std::fs::read_to_string(vectors.join("CHECKPOINT")).unwrap();
    let words: Vec<&str> = pointer.split(' ').collect();
    assert_eq!(words.len(), 3, "{pointer}");
    let old_dir = vectors.join(words[1]);
    std::fs::remove_file(old_dir.join("CHECKSUMS")).unwrap();
    std::fs::write(
        vectors.join("CHECKPOINT"),
        format!("{} {}", words[0], words[1]),
    )
    .unwrap();

    let engine = open(data);
    assert!(
        engine.unavailable().is_empty(),
        "{:?}",
        engine.unavailable()
    );
    assert!(same_answers(
        &answers(&engine, "hurt", &["cos", "l2"]),
        &want
    ));
    let collection = engine.collection("hurt").unwrap();
    let batch = collection.prepare_upserts(vec![json!({"id": "new", "fields": {
        "cos": [1, 0, 0, 0, 0, 0, 0, 0], "l2": [0, 1, 0, 0, 0, 0, 0, 0]}})]);
    collection.shard().write_blocking(batch.ops).unwrap();
    engine.close().unwrap();
    drop(engine);

    let pointer = std::fs::read_to_string(vectors.join("CHECKPOINT")).unwrap();
    let words: Vec<&str> = pointer.split(' ').collect();
    assert_eq!(words.len(), 3, "a checked pointer: {pointer}");
    assert!(vectors.join(words[1]).join("CHECKSUMS").exists());
    assert!(!old_dir.exists(), "the unchecked checkpoint was replaced");
    let engine = open(data);
    assert!(
        engine.unavailable().is_empty(),
        "{:?}",
        engine.unavailable()
    );
    assert!(engine
        .collection("hurt")
        .unwrap()
        .shard()
        .get("new")
        .unwrap()
        .is_some());
    engine.close().unwrap();
}
