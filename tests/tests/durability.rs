//! Durability at the disk level: power loss (everything not fsynced is lost, through the
//! `prism-crashfs` FUSE layer) and corrupt logs. Each test drives the real server binary.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_crashfs::CrashFs;
use prism_tests::{wait_until, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// What a client knows about one document: the value of its last acknowledged write (`None`
/// for a delete, or never written), and the write in flight when the power went.
#[derive(Clone, Debug, Default)]
struct Known {
    acked: Option<Option<u64>>,
    in_flight: Option<Option<u64>>,
}

const WRITERS: usize = 3;
const IDS_PER_WRITER: u64 = 60;

fn doc_id(writer: usize, n: u64) -> String {
    format!("w{writer}-{n}")
}

fn fields_of(version: u64) -> Value {
    json!({
        "body": format!("version {version} {}", "lorem ipsum dolor sit amet ".repeat(8)),
        "version": version,
        "emb": [version as f32, 1.0, (version % 7) as f32, 0.5],
    })
}

/// One writer: upsert batches and deletes on its own ids (so each id's writes are ordered),
/// recording what was acknowledged. Stops at the first failed request (the power is gone)
/// and leaves that write recorded as in flight.
fn write_until_cut(server_url: String, writer: usize, known: Arc<Mutex<HashMap<String, Known>>>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(writer as u64);
    let mut version = (writer as u64) << 32;
    let mut live: Vec<String> = known
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, k)| id.starts_with(&format!("w{writer}-")) && k.acked.flatten().is_some())
        .map(|(id, _)| id.clone())
        .collect();
    loop {
        // One write in five is a delete of a live document.
        let batch: Vec<(String, Option<u64>)> = if !live.is_empty() && rng.gen_range(0..5) == 0 {
            vec![(live.swap_remove(rng.gen_range(0..live.len())), None)]
        } else {
            let mut ids: Vec<String> = (0..rng.gen_range(1..20))
                .map(|_| doc_id(writer, rng.gen_range(0..IDS_PER_WRITER)))
                .collect();
            ids.sort();
            ids.dedup();
            ids.into_iter()
                .map(|id| {
                    version += 1;
                    (id, Some(version))
                })
                .collect()
        };
        {
            let mut known = known.lock().unwrap();
            for (id, value) in &batch {
                known.entry(id.clone()).or_default().in_flight = Some(*value);
            }
        }
        let answer = match &batch[..] {
            [(id, None)] => client
                .delete(format!("{server_url}/collections/docs/documents/{id}"))
                .send(),
            _ => {
                let docs: Vec<Value> = batch
                    .iter()
                    .map(|(id, v)| json!({"id": id, "fields": fields_of(v.unwrap())}))
                    .collect();
                client
                    .post(format!("{server_url}/collections/docs/documents"))
                    .json(&json!({ "documents": docs }))
                    .send()
            }
        };
        let Ok(answer) = answer else {
            return;
        };
        let status = answer.status();
        let body: Value = answer.json().unwrap_or(Value::Null);
        if status.is_server_error() {
            return;
        }
        assert!(
            status.is_success() && body["failed_docs"].as_u64().unwrap_or(0) == 0,
            "a write was refused for another reason than the power cut: {status} {body}"
        );
        let mut known = known.lock().unwrap();
        for (id, value) in batch {
            let entry = known.get_mut(&id).unwrap();
            entry.acked = Some(value);
            entry.in_flight = None;
            if value.is_some() && !live.contains(&id) {
                live.push(id);
            }
        }
    }
}

fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
}

/// Acceptance: a power cut in the middle of concurrent writes, refreshes, vector checkpoints
/// and log purges loses no acknowledged write; each document has its last acknowledged value
/// (or the value of the write in flight when the power went).
#[test]
fn power_loss_keeps_every_acknowledged_write() {
    assert!(
        fuse_available(),
        "/dev/fuse is missing: this test needs FUSE to simulate a power loss (run it where /dev/fuse exists, as root)"
    );
    let root = tempfile::tempdir().unwrap();
    let backing = root.path().join("disk");
    let mount = root.path().join("mnt");
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    let mut rounds = Vec::new();
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    for round in 0..2 {
        let fs = CrashFs::mount(&backing, &mount).expect("mount the crash filesystem");
        let mut server = Server::start(
            &mount.join("data"),
            &[
                ("PRISM_REFRESH_INTERVAL_MS", "100"),
                ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "300"),
                ("PRISM_LOG_SEGMENT_BYTES", "1048576"),
                ("PRISM_WRITER_MEMORY_BYTES", "16777216"),
            ],
        );
        if round == 0 {
            let (status, body) = server.put_json(
                "/collections/docs",
                &json!({"fields": {"body": {"type": "text"}, "version": {"type": "u64"},
                    "emb": {"type": "vector", "dimension": 4, "distance": "l2"}}}),
            );
            assert_eq!(status, 201, "{body}");
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let url = server.url("");
                let known = known.clone();
                std::thread::spawn(move || write_until_cut(url, w, known))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2500 + 500 * round));
        // The power goes while the server runs: from this instant the disk keeps only what
        // was fsynced, and every later I/O fails; then the process dies.
        let report = fs.power_cut().expect("power cut");
        server.kill();
        for w in writers {
            w.join().unwrap();
        }
        rounds.push(report.to_string());

        let mut server = Server::start(&backing.join("data"), &[]);
        let shared_known = known.clone();
        let known = known.lock().unwrap().clone();
        // What each id reads after the cut: the next round starts from it, since a write in
        // flight at the cut may or may not have been applied.
        let mut observed: HashMap<String, Option<u64>> = HashMap::new();
        let acked = known.values().filter(|k| k.acked.is_some()).count();
        assert!(
            acked > 50,
            "too few acknowledged writes to mean anything: {acked}"
        );
        let started = Instant::now();
        for (id, k) in &known {
            let (status, doc) = server.get(&format!("/collections/docs/documents/{id}"));
            let found = match status {
                200 => Some(doc["fields"]["version"].as_u64().expect("version")),
                404 => None,
                other => panic!("GET {id} answered {other}: {doc}"),
            };
            let allowed: Vec<Option<u64>> = k
                .acked
                .iter()
                .copied()
                .chain(k.in_flight)
                .chain(if k.acked.is_none() { Some(None) } else { None })
                .collect();
            assert!(
                allowed.contains(&found),
                "round {round}: {id} reads {found:?} after the power cut; acknowledged {:?}, in flight {:?}",
                k.acked,
                k.in_flight
            );
            if let Some(v) = found {
                let read: Vec<f32> = serde_json::from_value(doc["fields"]["emb"].clone()).unwrap();
                let written: Vec<f32> =
                    serde_json::from_value(fields_of(v)["emb"].clone()).unwrap();
                prism_tests::assert_vector_as_written(&read, &written);
            }
            observed.insert(id.clone(), found);
        }
        for (id, found) in observed {
            let mut shared = shared_known.lock().unwrap();
            let entry = shared.get_mut(&id).unwrap();
            entry.acked = Some(found);
            entry.in_flight = None;
        }
        // Searches agree with gets: every live document is found by its version.
        let live: Vec<u64> = known
            .values()
            .filter_map(|k| k.acked.flatten().filter(|_| k.in_flight.is_none()))
            .collect();
        let (status, body) = server.post_json("/collections/docs/refresh", &json!({}));
        assert!(status == 200, "{body}");
        for v in live.iter().take(20) {
            let (_, hits) = server.post_json(
                "/collections/docs/search",
                &json!({"filter": format!("version:{v}"), "limit": 1}),
            );
            assert_eq!(hits["total"], json!(1), "version {v}: {hits}");
        }
        eprintln!(
            "round {round}: {acked} documents checked in {:?}; {}",
            started.elapsed(),
            rounds.last().unwrap()
        );
        server.stop();
    }
}

fn segment_files(server: &Server, collection: &str) -> Vec<std::path::PathBuf> {
    let dir = server
        .data_dir
        .join("collections")
        .join(collection)
        .join("shards/0/log");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Two collections with text and vectors, written in many small requests. The vector
/// checkpoint interval is long, so the log keeps every entry until the kill.
fn two_collections(dir: &Path) -> Server {
    let server = Server::start(
        dir,
        &[
            ("PRISM_REFRESH_INTERVAL_MS", "100"),
            ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "600000"),
        ],
    );
    for name in ["hurt", "fine"] {
        let (status, body) = server.put_json(
            &format!("/collections/{name}"),
            &json!({"fields": {"body": {"type": "text"}, "version": {"type": "u64"},
                "emb": {"type": "vector", "dimension": 4, "distance": "l2"}}}),
        );
        assert_eq!(status, 201, "{body}");
        for v in 0..30u64 {
            let (status, body) = server.post_json(
                &format!("/collections/{name}/documents"),
                &json!({"documents": [{"id": format!("d{v}"), "fields": fields_of(v)}]}),
            );
            assert_eq!(status, 201, "{body}");
        }
    }
    server
}

/// [`two_collections`], SIGKILLed, and the newest log segment of collection "hurt".
fn killed_with_a_log(dir: &Path) -> (Server, std::path::PathBuf) {
    let mut server = two_collections(&dir.join("data"));
    server.kill();
    let segment = segment_files(&server, "hurt").pop().expect("a log segment");
    (server, segment)
}

/// Asserts the collection answers `503 collection_unavailable`, and returns the answer.
fn assert_unavailable(server: &Server, collection: &str) -> Value {
    let (status, body) = server.get(&format!("/collections/{collection}"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"]["code"],
        json!("collection_unavailable"),
        "{body}"
    );
    body
}

fn assert_all_there(server: &Server, collection: &str, count: u64) {
    for v in 0..count {
        let (status, doc) = server.get(&format!("/collections/{collection}/documents/d{v}"));
        assert_eq!(status, 200, "{collection}/d{v} lost: {doc}");
        assert_eq!(doc["fields"]["version"], json!(v));
    }
}

/// Acceptance: a byte flipped in the middle of a segment is corruption: that collection
/// refuses to open with the file and offset, the other collection serves, nothing on disk
/// changes; `--truncate-corrupt-log` then opens it with the entries before the damage.
#[test]
fn a_corrupt_log_fails_its_collection_only_and_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, segment) = killed_with_a_log(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    server.start_again();
    let body = assert_unavailable(&server, "hurt");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&segment.display().to_string()),
        "{message}"
    );
    assert!(message.contains("byte offset"), "{message}");
    assert!(message.contains("--truncate-corrupt-log"), "{message}");
    assert_all_there(&server, "fine", 30);
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], json!("degraded"), "{body}");
    server.kill();
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "a refusal changes nothing"
    );

    // The explicit repair: cut at the damage, keep what came before.
    let mut repaired = Server::start_with_args(&server.data_dir, &[], &["--truncate-corrupt-log"]);
    let (status, body) = repaired.get("/collections/hurt");
    assert_eq!(status, 200, "{body}");
    // The damaged entry is in the second half of the file, so the first documents' entries
    // are intact. Later ones survive where a checkpoint (here the text index) holds them.
    for v in 0..10u64 {
        let (status, doc) = repaired.get(&format!("/collections/hurt/documents/d{v}"));
        assert_eq!(status, 200, "d{v} was written before the damage: {doc}");
    }
    for v in 10..30u64 {
        let status = repaired.get(&format!("/collections/hurt/documents/d{v}")).0;
        assert!(status == 200 || status == 404, "d{v}: {status}");
    }
    // The repaired log takes writes above everything checkpointed, and they survive a crash.
    let (status, body) = repaired.post_json(
        "/collections/hurt/documents",
        &json!({"documents": [{"id": "after-repair", "fields": fields_of(77)}]}),
    );
    assert_eq!(status, 201, "{body}");
    repaired.kill();
    repaired.start_again();
    let (status, doc) = repaired.get("/collections/hurt/documents/after-repair");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["fields"]["version"], json!(77));
    let (status, doc) = repaired.get("/collections/hurt/documents/d0");
    assert_eq!(status, 200, "{doc}");
    assert_all_there(&repaired, "fine", 30);
    repaired.stop();
}

/// Acceptance: a torn tail (a crash inside an append) is cut and every acknowledged write
/// is there.
#[test]
fn a_torn_tail_is_cut_and_the_node_serves() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, segment) = killed_with_a_log(dir.path());
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    // A frame header that promises more bytes than follow.
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
        .unwrap();
    drop(file);
    server.start_again();
    assert_all_there(&server, "hurt", 30);
    assert_all_there(&server, "fine", 30);
    let (status, body) = server.post_json(
        "/collections/hurt/documents",
        &json!({"documents": [{"id": "after", "fields": fields_of(99)}]}),
    );
    assert_eq!(status, 201, "{body}");
    server.stop();
}

/// Acceptance: an entry that passes its checksum but cannot be applied (here: a payload no
/// version of Prism wrote) fails its collection, not the node, and changes nothing on disk.
#[test]
fn an_entry_that_cannot_be_applied_fails_its_collection_only() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, segment) = killed_with_a_log(dir.path());
    let bytes = std::fs::read(&segment).unwrap();
    // Find the last frame's index by walking the frames after the 24-byte segment header.
    let mut offset = 24usize;
    let mut last = None;
    while offset + 32 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let index = u64::from_le_bytes(bytes[offset + 24..offset + 32].try_into().unwrap());
        last = Some((
            u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap()),
            index,
        ));
        offset += 32 + len;
    }
    let (term, index) = last.expect("the log holds entries");
    let payload = b"\xff\xff\xff\xff not an encoded write";
    let mut ids = Vec::new();
    ids.extend_from_slice(&term.to_le_bytes());
    ids.extend_from_slice(&0u64.to_le_bytes());
    ids.extend_from_slice(&(index + 1).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&ids);
    hasher.update(payload);
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&hasher.finalize().to_le_bytes());
    frame.extend_from_slice(&ids);
    frame.extend_from_slice(payload);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&frame)
        .unwrap();
    let before = std::fs::read(&segment).unwrap();

    server.start_again();
    assert_unavailable(&server, "hurt");
    assert_all_there(&server, "fine", 30);
    server.kill();
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        before,
        "nothing was cut or rewritten"
    );
}

/// Acceptance (#10): after SIGKILL the port answers at once; a collection whose log is still
/// replaying answers `503 collection_recovering` with its progress, `/health` says
/// `recovering` with the same progress, and once it is ready every acknowledged write is
/// searchable.
#[test]
fn a_restarting_node_listens_at_once_and_reports_its_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &dir.path().join("data"),
        &[
            ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "3600000"),
            ("PRISM_VECTOR_CHECKPOINT_VECTORS", "100000000"),
        ],
    );
    let dimension = 96;
    let (status, body) = server.put_json(
        "/collections/slow",
        &json!({"fields": {"body": {"type": "text"},
            "emb": {"type": "vector", "dimension": dimension}}}),
    );
    assert_eq!(status, 201, "{body}");
    // Enough vectors that their replay takes seconds, not milliseconds.
    let (batches, per_batch) = (30, 500);
    for b in 0..batches {
        let documents: Vec<Value> = (0..per_batch)
            .map(|i| {
                let n = b * per_batch + i;
                let emb: Vec<f64> = (0..dimension)
                    .map(|d| ((n * 7919 + d * 104_729) % 1000) as f64 / 1000.0 - 0.5)
                    .collect();
                json!({"id": format!("d{n}"), "fields": {"body": format!("doc {n}"), "emb": emb}})
            })
            .collect();
        let (status, body) = server.post_json(
            "/collections/slow/documents",
            &json!({ "documents": documents }),
        );
        assert_eq!(status, 201, "{body}");
    }
    let search_url = server.url("/collections/slow/search");
    let client = server.client.clone();
    let mut during_replay: Vec<(Value, u16, Value)> = Vec::new();
    let mut healths: Vec<Value> = Vec::new();
    // On a loaded machine the first answer can come after a short replay: kill and start
    // again (the log still holds every entry) until a request lands during the replay.
    for _attempt in 0..4 {
        server.kill();
        server.start_again_unready();
        server.wait_ready(|health| {
            if health["status"] == "recovering" {
                healths.push(health.clone());
            }
            if health["status"] == "recovering" && during_replay.len() < 3 {
                let answer = client
                    .post(&search_url)
                    .json(&json!({"query": "doc", "limit": 1}))
                    .send()
                    .unwrap();
                let status = answer.status().as_u16();
                during_replay.push((health.clone(), status, answer.json().unwrap()));
            }
        });
        if during_replay.iter().any(|(_, status, _)| *status == 503) {
            break;
        }
    }
    let (health, status, body) = during_replay
        .first()
        .expect("/health answered while the log replayed");
    assert_eq!(
        health["recovering"][0]["collection"],
        json!("slow"),
        "{health}"
    );
    // The total is known once the log is open (0 until then), and the count moves up to it.
    assert!(
        healths
            .iter()
            .any(|h| h["recovering"][0]["total_entries"] == json!(batches)),
        "{healths:?}"
    );
    assert!(
        healths.iter().all(|h| {
            let entry = &h["recovering"][0];
            entry["replayed_entries"].as_u64() <= entry["total_entries"].as_u64()
        }),
        "{healths:?}"
    );
    // A search sent while /health said recovering: refused with the progress, unless the
    // replay ended in between.
    if *status != 200 {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(
            body["error"]["code"],
            json!("collection_recovering"),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("log entries replayed"), "{message}");
    }
    assert!(
        during_replay.iter().any(|(_, status, _)| *status == 503),
        "no request was refused while recovering: {during_replay:?}"
    );
    // SIGKILL in the middle of a replay loses nothing either: the next start replays again.
    server.kill();
    server.start_again_unready();
    // The first answer comes while the replay runs (it takes seconds): kill right then.
    let health_url = server.url("/health");
    wait_until(
        Duration::from_secs(60),
        "the restarted node to answer",
        || client.get(&health_url).send().ok().map(|_| ()),
    );
    server.kill();
    server.start_again();
    let (status, body) = server.get("/collections/slow");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["stats"]["num_docs"],
        json!(batches * per_batch),
        "{body}"
    );
}
