//! The single node tried as a hostile or careless user would: a full disk, vector search
//! during heavy ingest, and requests built to take the server down. Every answer must be
//! true: acknowledged means durable, refused means never applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_tests::{wait_until, ApiDocument, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// A tmpfs of `mib` MiB mounted for the test's lifetime (root only).
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs {
            dir,
            _parent: parent,
        })
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn fill(path: &Path, leave_free: u64, disk: &Tmpfs) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 1 << 16];
    while disk.free_bytes() > leave_free + chunk.len() as u64 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

fn total(server: &Server, collection: &str) -> u64 {
    let (status, body) = server.post_json(
        &format!("/collections/{collection}/search"),
        &json!({"limit": 1}),
    );
    assert_eq!(status, 200, "{body}");
    body["total"].as_u64().unwrap()
}

fn text_of(n: u64) -> String {
    format!("document {n} {}", "lorem ipsum dolor sit amet ".repeat(20))
}

/// Acceptance 1: fill the disk while writing; answers are 507, writes resume by themselves
/// once space is freed, and after a crash every acknowledged document is there and nothing
/// refused is.
#[test]
fn full_disk_refuses_writes_then_resumes_and_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let disk = Tmpfs::mount(48).expect("mount a 48 MiB tmpfs");
    let data = disk.dir.join("data");
    let mut server = Server::start(
        &data,
        &[
            ("PRISM_REFRESH_INTERVAL_MS", "200"),
            ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "1000"),
            ("PRISM_LOG_SEGMENT_BYTES", "1048576"),
            ("PRISM_WRITER_MEMORY_BYTES", "16777216"),
        ],
    );
    let (s, b) = server.put_json(
        "/collections/text",
        &json!({"fields": {"body": {"type": "text"}, "n": {"type": "i64"}}}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.put_json(
        "/collections/vec",
        &json!({"fields": {"body": {"type": "text"}, "e": {"type": "vector", "dimension": 16, "distance": "cosine"}}}),
    );
    assert_eq!(s, 201, "{b}");

    let mut acked: HashMap<&str, u64> = HashMap::from([("text", 0), ("vec", 0)]);
    let mut next = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut write = |server: &Server, collection: &'static str, acked: &mut HashMap<&str, u64>| {
        let docs: Vec<Value> = (0..40)
            .map(|_| {
                next += 1;
                let mut fields = json!({"body": text_of(next)});
                if collection == "vec" {
                    fields["e"] =
                        json!((0..16).map(|_| rng.gen::<f32>() + 0.01).collect::<Vec<_>>());
                } else {
                    fields["n"] = json!(next);
                }
                json!({"id": format!("{collection}-{next}"), "fields": fields})
            })
            .collect();
        let (status, body) = server.post_json(
            &format!("/collections/{collection}/documents"),
            &json!({ "documents": docs }),
        );
        match status {
            201 => {
                *acked.get_mut(collection).unwrap() += 40;
            }
            507 => assert_eq!(body["error"]["code"], "insufficient_storage", "{body}"),
            other => panic!("a write on a full disk answered {other}: {body}"),
        }
        status
    };

    // Some writes land, then the disk is filled to its last few hundred KiB.
    for _ in 0..10 {
        assert_eq!(write(&server, "text", &mut acked), 201);
        assert_eq!(write(&server, "vec", &mut acked), 201);
    }
    let ballast = disk.dir.join("ballast");
    fill(&ballast, 256 << 10, &disk);

    let mut refused = 0;
    let mut degraded_seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused < 20 && Instant::now() < deadline {
        for collection in ["text", "vec"] {
            if write(&server, collection, &mut acked) == 507 {
                refused += 1;
            }
        }
        let (_, health) = server.get("/health");
        if health["status"] == "degraded" {
            degraded_seen = true;
            assert!(
                health["degraded"][0]["write"]["reason"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty()),
                "{health}"
            );
        }
    }
    assert!(refused >= 20, "the full disk never refused writes");
    assert!(degraded_seen, "/health never reported the full disk");

    // Space comes back: writes resume with no restart.
    std::fs::remove_file(&ballast).unwrap();
    for collection in ["text", "vec"] {
        wait_until(Duration::from_secs(30), "writes to resume", || {
            (write(&server, collection, &mut acked) == 201).then_some(())
        });
    }
    for _ in 0..5 {
        assert_eq!(write(&server, "text", &mut acked), 201);
        assert_eq!(write(&server, "vec", &mut acked), 201);
    }
    wait_until(Duration::from_secs(30), "health to be ok again", || {
        (server.get("/health").1["status"] == "ok").then_some(())
    });
    for collection in ["text", "vec"] {
        let (s, b) = server.post_json(&format!("/collections/{collection}/refresh"), &json!({}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(
            total(&server, collection),
            acked[collection],
            "{collection} before the crash"
        );
    }

    // A crash, then every acknowledged document is there and no refused one.
    server.restart();
    for collection in ["text", "vec"] {
        assert_eq!(
            total(&server, collection),
            acked[collection],
            "{collection} after the crash"
        );
    }
    let (s, doc) = server.get("/collections/vec/documents/vec-41");
    assert_eq!(s, 200, "{doc}");
    assert_eq!(doc["fields"]["e"].as_array().map(Vec::len), Some(16));
}

/// The last acknowledged state of every id: a vector, or deleted.
type Truth = Arc<Mutex<HashMap<String, Option<Vec<f32>>>>>;

/// What every stress client thread shares.
#[derive(Clone)]
struct Clients {
    server: Arc<Server>,
    truth: Truth,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU64>,
}

fn vector(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Acceptance 2: two writers upsert, update and delete while three readers search and GET,
/// growing the index far past its initial capacity: no 5xx, no crash, and after a crash
/// every acknowledged id holds its last acknowledged vector.
#[test]
fn vector_search_during_ingest_is_safe_and_durable() {
    const DIM: usize = 64;
    let seconds: u64 = std::env::var("PRISM_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("PRISM_REFRESH_INTERVAL_MS", "100"),
            ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "2000"),
        ],
    );
    let (s, b) = server.put_json(
        "/collections/v",
        &json!({"fields": {
            "title": {"type": "text"},
            "tag": {"type": "keyword"},
            "e": {"type": "vector", "dimension": DIM, "distance": "cosine", "m": 8, "ef_construction": 32}
        }}),
    );
    assert_eq!(s, 201, "{b}");
    let server = Arc::new(server);
    let truth: Truth = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(AtomicU64::new(0));

    let clients = Clients {
        server: server.clone(),
        truth: truth.clone(),
        stop: stop.clone(),
        failures: failures.clone(),
        requests: requests.clone(),
    };
    let mut threads = Vec::new();
    for writer in 0..2u64 {
        let Clients {
            server,
            truth,
            stop,
            failures,
            requests,
        } = clients.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            let mut mine: Vec<String> = Vec::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut docs = Vec::new();
                let mut batch: Vec<(String, Option<Vec<f32>>)> = Vec::new();
                for _ in 0..rng.gen_range(150..200) {
                    next += 1;
                    let id = format!("w{writer}-{next}");
                    let v = vector(&mut rng, DIM);
                    docs.push(json!({"id": id, "fields": {"title": format!("doc {next}"), "tag": format!("t{}", next % 5), "e": v}}));
                    batch.push((id.clone(), Some(v)));
                    mine.push(id);
                }
                // Updates of existing ids, in the same batch.
                for _ in 0..20.min(mine.len().saturating_sub(200)) {
                    let id = mine[rng.gen_range(0..mine.len() - 200)].clone();
                    if batch.iter().any(|(b, _)| *b == id) {
                        continue;
                    }
                    let v = vector(&mut rng, DIM);
                    docs.push(json!({"id": id, "fields": {"title": "updated", "tag": "t9", "e": v}}));
                    batch.push((id, Some(v)));
                }
                let (status, body) =
                    server.post_json("/collections/v/documents", &json!({ "documents": docs }));
                requests.fetch_add(1, Ordering::Relaxed);
                if status != 201 {
                    failures.lock().unwrap().push(format!("upsert: {status} {body}"));
                    continue;
                }
                let mut t = truth.lock().unwrap();
                for (id, v) in batch {
                    t.insert(id, v);
                }
                drop(t);
                // A delete of an existing id.
                if mine.len() > 400 {
                    let id = mine.swap_remove(rng.gen_range(0..mine.len() - 300));
                    let (status, body) = server.delete(&format!("/collections/v/documents/{id}"));
                    requests.fetch_add(1, Ordering::Relaxed);
                    match status {
                        200 => {
                            truth.lock().unwrap().insert(id, None);
                        }
                        404 => {}
                        _ => failures
                            .lock()
                            .unwrap()
                            .push(format!("delete: {status} {body}")),
                    }
                }
            }
        }));
    }
    for reader in 0..3u64 {
        let Clients {
            server,
            truth,
            stop,
            failures,
            requests,
        } = clients.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + reader);
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let q = vector(&mut rng, DIM);
                let body = match round % 4 {
                    0 => json!({"vector": q, "limit": 10}),
                    1 => json!({"query": "doc", "vector": q, "limit": 10, "hybrid": {"strategy": "rrf"}}),
                    2 => json!({"vector": q, "filter": "tag:t3", "limit": 10}),
                    _ => json!({"vector": q, "limit": 50, "offset": 10}),
                };
                let (status, answer) = server.post_json("/collections/v/search", &body);
                requests.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("search {body}: {status} {answer}"));
                }
                let id = {
                    let t = truth.lock().unwrap();
                    (!t.is_empty()).then(|| {
                        let skip = rng.gen_range(0..t.len());
                        t.keys().nth(skip).cloned()
                    })
                };
                if let Some(Some(id)) = id {
                    let (status, answer) = server.get(&format!("/collections/v/documents/{id}"));
                    requests.fetch_add(1, Ordering::Relaxed);
                    if status != 200 && status != 404 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("get {id}: {status} {answer}"));
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let truth = truth.lock().unwrap().clone();
    let live = truth.values().filter(|v| v.is_some()).count();
    eprintln!(
        "vector stress: {} requests in {seconds} s, {} ids ({live} live)",
        requests.load(Ordering::Relaxed),
        truth.len()
    );
    assert!(
        live > 3000,
        "the index must grow well past its initial capacity of 1024"
    );

    drop(clients);
    let mut server = Arc::try_unwrap(server).ok().expect("clients are done");
    server.restart();
    let (s, b) = server.post_json("/collections/v/search", &json!({"limit": 1}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["total"].as_u64(),
        Some(live as u64),
        "live documents after the crash"
    );
    for (id, expected) in &truth {
        let (status, doc) = server.get(&format!("/collections/v/documents/{id}"));
        match expected {
            None => assert_eq!(status, 404, "{id} was deleted: {doc}"),
            Some(v) => {
                assert_eq!(status, 200, "{id}: {doc}");
                let got: Vec<f32> = doc["fields"]["e"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{id} has no vector: {doc}"))
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(got.len(), DIM);
                for (a, b) in got.iter().zip(v) {
                    assert!((a - b).abs() < 1e-5, "{id} holds another vector");
                }
            }
        }
    }
}

/// Raw HTTP/1.1 over a socket, for requests reqwest will not build (long URIs, partial
/// requests). Returns the status and body.
fn raw_request(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A hostile request: its name, method, path, body, and the status and code it must get.
type Case = (
    &'static str,
    &'static str,
    String,
    Vec<u8>,
    u16,
    &'static str,
);

/// Acceptance 3: requests built to crash, exhaust or confuse the server each get a JSON 4xx
/// with a stable code; the server stays up and its state is unchanged.
#[test]
fn hostile_requests_get_json_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("PRISM_MAX_BODY_BYTES", "33554432"),
            ("PRISM_HEADER_READ_TIMEOUT_MS", "1000"),
            ("PRISM_BODY_READ_TIMEOUT_MS", "1000"),
        ],
    );
    let (s, b) = server.put_json(
        "/collections/h",
        &json!({"fields": {"title": {"type": "text"}, "tag": {"type": "keyword"}, "year": {"type": "i64"},
            "when": {"type": "date"}, "e": {"type": "vector", "dimension": 3, "distance": "cosine"}}}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.post_json(
        "/collections/h/documents?refresh=true",
        &json!({"documents": [
            {"id": "a", "fields": {"title": "alpha beta", "tag": "x", "year": 2020, "e": [1, 0, 0]}},
            {"id": "b", "fields": {"title": "beta gamma", "tag": "y", "year": 2021, "e": [0, 1, 0]}}
        ]}),
    );
    assert_eq!(s, 201, "{b}");
    let before = server.get("/collections/h").1;

    let nested = |open: &str, n: usize| format!("{}x{}", open.repeat(n), ")".repeat(n));
    let search = "/collections/h/search";
    let docs = "/collections/h/documents";
    let mut cases: Vec<Case> = vec![
        ("query nested 3,000 deep", "POST", search.into(), json!({"query": nested("(", 3000)}).to_string().into_bytes(), 400, "invalid_query"),
        ("filter nested 3,000 deep", "POST", search.into(), json!({"filter": nested("(", 3000)}).to_string().into_bytes(), 400, "invalid_query"),
        ("field group nested 3,000 deep", "POST", search.into(), json!({"query": nested("title:(", 3000)}).to_string().into_bytes(), 400, "invalid_query"),
        ("NOT repeated 10,000 times", "POST", search.into(), json!({"query": format!("{}x", "NOT ".repeat(10_000))}).to_string().into_bytes(), 400, "invalid_query"),
        ("NOT chained 40 deep", "POST", search.into(), json!({"query": format!("{}x", "NOT ".repeat(40))}).to_string().into_bytes(), 400, "invalid_query"),
        ("minus chained 500 deep", "POST", search.into(), json!({"query": format!("{}x", "-".repeat(500))}).to_string().into_bytes(), 400, "invalid_query"),
        ("5,000 clauses", "POST", search.into(), json!({"query": "beta OR ".repeat(2500)}).to_string().into_bytes(), 400, "invalid_query"),
        ("empty range aggregation", "POST", search.into(), json!({"limit": 0, "aggregations": {"r": {"range": {"field": "year", "ranges": []}}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("zero histogram interval", "POST", search.into(), json!({"limit": 0, "aggregations": {"h": {"histogram": {"field": "year", "interval": 0}}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("aggregation on an unknown field", "POST", search.into(), json!({"limit": 0, "aggregations": {"t": {"terms": {"field": "nope"}}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("aggregation on a vector field", "POST", search.into(), json!({"limit": 0, "aggregations": {"t": {"terms": {"field": "e"}}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("aggregation on a non-fast text field", "POST", search.into(), json!({"limit": 0, "aggregations": {"t": {"terms": {"field": "title"}}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("filter aggregation nested 3,000 deep", "POST", search.into(), json!({"limit": 0, "aggregations": {"f": {"filter": nested("(", 3000)}}}).to_string().into_bytes(), 400, "invalid_query"),
        ("sub-aggregations 20 deep", "POST", search.into(), {
            let mut a = json!({"t": {"terms": {"field": "tag"}}});
            for _ in 0..20 { a = json!({"t": {"terms": {"field": "tag"}, "aggs": a}}); }
            json!({"limit": 0, "aggregations": a}).to_string().into_bytes()
        }, 400, "invalid_query"),
        ("search body that is an array", "POST", search.into(), b"[\"beta\", null, null, null, 10]".to_vec(), 400, "invalid_query"),
        ("search body with a duplicate key", "POST", search.into(), br#"{"query": "beta", "query": "alpha"}"#.to_vec(), 400, "invalid_query"),
        ("unknown parameter on search", "POST", format!("{search}?timeout=1ms"), json!({"query": "beta"}).to_string().into_bytes(), 400, "invalid_parameter"),
        ("unknown parameter on index", "POST", format!("{docs}?routing=x"), json!({"documents": [{"id": "p", "fields": {"title": "t"}}]}).to_string().into_bytes(), 400, "invalid_parameter"),
        ("unknown pipeline on index", "POST", format!("{docs}?pipeline=x"), json!({"documents": [{"id": "p", "fields": {"title": "t"}}]}).to_string().into_bytes(), 400, "unknown_pipeline"),
        ("duplicate refresh parameter", "POST", format!("{docs}?refresh=true&refresh=false"), json!({"documents": [{"id": "p", "fields": {"title": "t"}}]}).to_string().into_bytes(), 400, "invalid_parameter"),
        ("bad refresh value", "POST", format!("{docs}?refresh=soon"), json!({"documents": [{"id": "p", "fields": {"title": "t"}}]}).to_string().into_bytes(), 400, "invalid_parameter"),
        ("a document with a duplicate id key", "POST", docs.into(), br#"{"documents": [{"id": "p", "id": "q", "fields": {"title": "t"}}]}"#.to_vec(), 400, "malformed_json"),
        ("a schema with a duplicate field", "PUT", "/collections/dup".into(), br#"{"fields": {"a": {"type": "text"}, "a": {"type": "i64"}}}"#.to_vec(), 400, "malformed_json"),
        ("epoch seconds past 2262", "POST", docs.into(), json!({"documents": [{"id": "p", "fields": {"when": 1e10 as i64}}]}).to_string().into_bytes(), 400, "invalid_documents"),
        ("epoch seconds before 1677", "POST", docs.into(), json!({"documents": [{"id": "p", "fields": {"when": -1e10 as i64}}]}).to_string().into_bytes(), 400, "invalid_documents"),
        ("an RFC 3339 date in year 9999", "POST", docs.into(), json!({"documents": [{"id": "p", "fields": {"when": "9999-01-01T00:00:00Z"}}]}).to_string().into_bytes(), 400, "invalid_documents"),
        ("a 100 KB keyword", "POST", docs.into(), json!({"documents": [{"id": "p", "fields": {"tag": "k".repeat(100_000)}}]}).to_string().into_bytes(), 400, "invalid_documents"),
        ("4 M invalid documents", "POST", docs.into(), {
            let mut b = b"{\"documents\":[".to_vec();
            b.extend(std::iter::repeat_n(&b"1,"[..], 4_000_000).flatten());
            b.extend(b"1]}");
            b
        }, 400, "too_many_documents"),
        ("1 M invalid documents", "POST", docs.into(), {
            let mut b = b"{\"documents\":[".to_vec();
            b.extend(std::iter::repeat_n(&b"1,"[..], 999_999).flatten());
            b.extend(b"1]}");
            b
        }, 400, "invalid_documents"),
        ("an unknown route", "GET", "/nope".into(), vec![], 404, "not_found"),
        ("a collection name that is not UTF-8", "POST", "/collections/%FF/search".into(), json!({"query": "beta"}).to_string().into_bytes(), 400, "invalid_path"),
        ("a document id that is not UTF-8", "GET", "/collections/h/documents/%C3%28".into(), vec![], 400, "invalid_path"),
        ("an index body with an unknown key", "POST", docs.into(), json!({"documents": [{"id": "p", "fields": {"title": "t"}}], "routing": "x"}).to_string().into_bytes(), 400, "invalid_request"),
    ];
    // The largest request the limits admit still runs.
    cases.push((
        "query at the depth limit",
        "POST",
        search.into(),
        json!({"query": nested("(", 31)}).to_string().into_bytes(),
        200,
        "",
    ));
    cases.push((
        "query at the clause limit",
        "POST",
        search.into(),
        json!({"query": "beta ".repeat(1000)})
            .to_string()
            .into_bytes(),
        200,
        "",
    ));
    cases.push((
        "NOT chained to the limit",
        "POST",
        search.into(),
        json!({"query": format!("beta AND {}alpha", "NOT ".repeat(30))})
            .to_string()
            .into_bytes(),
        200,
        "",
    ));

    let rss_before = server.peak_rss_bytes().unwrap();
    for (name, method, path, body, status, code) in cases {
        let (got, answer) = server.send_raw(method, &path, body);
        assert_eq!(got, status, "{name}: {answer}");
        if !code.is_empty() {
            assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{name}: no message");
            let size = answer.to_string().len();
            assert!(size < 64 << 10, "{name}: a {size}-byte error answer");
        }
        let (h, _) = server.get("/health");
        assert_eq!(h, 200, "the server is down after {name}");
    }
    let rss_after = server.peak_rss_bytes().unwrap();
    eprintln!(
        "hostile table: peak RSS {} MiB -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (1536 << 20),
        "hostile batches raised the peak RSS from {rss_before} to {rss_after}"
    );

    // The 1 M batch reports 100 errors in full and counts the rest.
    let mut b = b"{\"documents\":[".to_vec();
    b.extend(std::iter::repeat_n(&b"1,"[..], 9_999).flatten());
    b.extend(b"1]}");
    let (_, answer) = server.send_raw("POST", docs, b);
    assert_eq!(
        answer["error"]["details"]["errors"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    assert_eq!(answer["error"]["details"]["failed_docs"], 10_000);

    // A body over max_body_bytes is refused from its Content-Length, unread.
    let (status, body) = raw_request(
        server.port,
        b"POST /collections/h/documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 41943040\r\n\r\n{\"documents\": [",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");

    // URIs: a long one gets a JSON 414; past hyper's own 64 KiB limit, a bare 414.
    let long = format!(
        "GET /collections/h?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, body) = raw_request(server.port, long.as_bytes());
    assert_eq!(status, 414);
    assert!(body.contains("uri_too_long"), "{body}");
    let longer = format!(
        "GET /collections/h?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(100_000)
    );
    assert_eq!(raw_request(server.port, longer.as_bytes()).0, 414);

    // A body that stops arriving gets 408; headers that stop arriving are cut off.
    let (status, body) = raw_request(
        server.port,
        b"POST /collections/h/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":",
    );
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_timeout"), "{body}");
    let started = Instant::now();
    let slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            s.write_all(b"POST /collections/h/search HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    for mut s in slow {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server: a read returns 0 bytes (or a reset).
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(10),
        "slow clients were held for {held:?}"
    );

    // Nothing above changed the collection.
    let after = server.get("/collections/h").1;
    assert_eq!(before["stats"]["num_docs"], after["stats"]["num_docs"]);
    assert_eq!(before["schema"], after["schema"]);
    assert_eq!(server.get("/collections/dup").0, 404);
    assert_eq!(server.get("/collections/h/documents/p").0, 404);
}

/// Threads, memory maps, open files and resident memory of a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: u64,
    maps: u64,
    fds: u64,
    rss_mib: u64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Usage {
        threads: field("Threads:"),
        maps: std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .count() as u64,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64,
        rss_mib: field("VmRSS:") / 1024,
    }
}

/// Threads of a node whose writers are all closed: one writer thread per collection.
fn scale_threads(collections: usize) -> u64 {
    collections as u64 + 64
}

/// Acceptance 4: 1,000 collections on one node, with their threads, maps, open files, memory
/// and restart time recorded; a create beyond the limit is refused and leaves nothing.
#[test]
fn a_thousand_collections_fit_and_the_limit_is_enforced() {
    let count: usize = std::env::var("PRISM_LIMITS_COLLECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limit = count.to_string();
    let mut server = Server::start(&data, &[("PRISM_MAX_COLLECTIONS", &limit)]);
    let (_, health) = server.get("/health");
    assert_eq!(health["max_collections"], count, "{health}");
    let started = Instant::now();
    for i in 0..count {
        let (s, b) = server.put_json(
            &format!("/collections/c{i}"),
            &json!({"fields": {"title": {"type": "text"}, "n": {"type": "i64"}}}),
        );
        assert_eq!(s, 201, "collection {i}: {b}");
    }
    let created = started.elapsed();
    let idle = usage(server.pid().unwrap());
    // 10,000 tiny documents spread over every collection.
    let per = (10_000 / count).max(1);
    let started = Instant::now();
    for i in 0..count {
        let docs: Vec<Value> = (0..per)
            .map(|d| json!({"id": format!("d{d}"), "fields": {"title": format!("doc {d} of {i}"), "n": d}}))
            .collect();
        let (s, b) = server.post_json(
            &format!("/collections/c{i}/documents"),
            &json!({ "documents": docs }),
        );
        assert_eq!(s, 201, "{b}");
    }
    let indexed = started.elapsed();
    let busy = usage(server.pid().unwrap());
    // Idle writers close after 5 s and give back their threads.
    let pid = server.pid().unwrap();
    let settled = wait_until(Duration::from_secs(30), "idle writers to close", || {
        let u = usage(pid);
        (u.threads <= scale_threads(count)).then_some(u)
    });

    // One more is refused with a clear 4xx, and nothing reaches the disk.
    let (s, b) = server.put_json(
        "/collections/one_too_many",
        &json!({"fields": {"title": {"type": "text"}}}),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "limit_exceeded", "{b}");
    let leftovers: Vec<_> = std::fs::read_dir(data.join("collections"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("one_too_many"))
        .collect();
    assert!(leftovers.is_empty(), "a refused create left {leftovers:?}");

    server.kill();
    let restart = server.start_again();
    let reopened = usage(server.pid().unwrap());
    for i in [0, count / 2, count - 1] {
        assert_eq!(
            total(&server, &format!("c{i}")),
            per as u64,
            "collection c{i} after restart"
        );
    }
    eprintln!(
        "{count} collections: created in {created:?}, {} docs indexed in {indexed:?}, restart {restart:?}\n  idle after create: {idle:?}\n  after indexing:    {busy:?}\n  writers closed:    {settled:?}\n  after restart:     {reopened:?}",
        per * count
    );
    // Bounds well below what broke before (8,005 threads and 6.4 GB for 1,000 collections).
    let scale = count as u64;
    assert!(busy.threads <= 5 * scale + 64, "{busy:?}");
    assert!(reopened.threads <= 2 * scale + 64, "{reopened:?}");
    assert!(
        settled.rss_mib < busy.rss_mib,
        "closing writers gave nothing back: {settled:?}"
    );
    assert!(busy.maps <= 48 * scale + 4096, "{busy:?}");
    assert!(busy.fds <= 12 * scale + 512, "{busy:?}");
    assert!(busy.rss_mib < 4 * 1024, "{busy:?}");
    assert!(settled.rss_mib < 1536, "{settled:?}");
    assert!(
        restart < Duration::from_secs(60),
        "restart took {restart:?}"
    );
}

/// Issue #11: the OpenAPI document at `/openapi.json` lists what the server serves. Each of its
/// operations is sent once and answers with a status the document lists for it (never the
/// router's 404 or 405) and a body its schema admits; so do answers with content.
#[test]
fn every_operation_of_the_openapi_document_is_served_as_listed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (s, b) = server.put_json(
        "/collections/c",
        &json!({"fields": {"title": {"type": "text"}}}),
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = server.post_json(
        "/collections/c/documents?refresh=true",
        &json!({"documents": [{"id": "d", "fields": {"title": "alpha"}}]}),
    );
    assert_eq!(s, 201, "{b}");
    let api = ApiDocument::of(&server);
    let mut operations = api.operations();
    // Deleting the collection goes last, so that the rest find it.
    operations.sort_by_key(|(method, path)| {
        (
            method == "DELETE" && path == "/collections/{name}",
            path.clone(),
        )
    });
    assert!(operations.len() >= 21, "{} operations", operations.len());
    for (method, path) in operations {
        let url = path.replace("{name}", "c").replace("{id}", "d");
        let body = if method == "POST" || method == "PUT" {
            b"{}".to_vec()
        } else {
            Vec::new()
        };
        let (status, answer) = server.send_raw(&method, &url, body);
        let what = format!("{method} {url} answered {status} {answer}");
        assert_ne!(answer["error"]["code"], "not_found", "{what}");
        assert_ne!(status, 405, "{what}");
        api.assert_answer(&method, &path, status, &answer);
    }
    let (s, _) = server.get("/collections/c");
    assert_eq!(
        s, 404,
        "DELETE /collections/{{name}} ran last and deleted it"
    );
    // And answers with content, against their schemas.
    let schema = json!({"fields": {"title": {"type": "text"}, "n": {"type": "i64"}, "v": {"type": "vector", "dimension": 2}}});
    for (method, route, url, body, status) in [
        (
            "PUT",
            "/collections/{name}",
            "/collections/c",
            schema.clone(),
            201,
        ),
        ("PUT", "/collections/{name}", "/collections/c", schema, 200),
        (
            "POST",
            "/collections/{name}/documents",
            "/collections/c/documents?refresh=true",
            json!({"documents": [{"id": "d", "fields": {"title": "alpha", "n": 1, "v": [1, 0]}}, {"id": "e", "fields": {"title": 3}}]}),
            201,
        ),
        (
            "POST",
            "/collections/{name}/search",
            "/collections/c/search",
            json!({"query": "alpha", "highlight": true}),
            200,
        ),
        (
            "POST",
            "/collections/{name}/search",
            "/collections/c/search",
            json!({"limit": 0, "aggregations": {"n": {"stats": {"field": "n"}}}}),
            200,
        ),
        (
            "POST",
            "/collections/{name}/search",
            "/collections/c/search",
            json!({"query": "alpha", "vector": [1, 0], "hybrid": {"strategy": "weighted"}}),
            200,
        ),
        (
            "GET",
            "/collections/{name}",
            "/collections/c",
            Value::Null,
            200,
        ),
        (
            "GET",
            "/collections/{name}/documents/{id}",
            "/collections/c/documents/d",
            Value::Null,
            200,
        ),
        (
            "GET",
            "/collections/{name}/schema",
            "/collections/c/schema",
            Value::Null,
            200,
        ),
        (
            "GET",
            "/collections/{name}/stats",
            "/collections/c/stats",
            Value::Null,
            200,
        ),
        ("GET", "/collections", "/collections", Value::Null, 200),
        (
            "GET",
            "/admin/collections",
            "/admin/collections",
            Value::Null,
            200,
        ),
        ("GET", "/health", "/health", Value::Null, 200),
        ("GET", "/", "/", Value::Null, 200),
        // The original Prism's schema format is taken by PUT too.
        (
            "PUT",
            "/collections/{name}",
            "/collections/orig",
            json!({"collection": "orig", "backends": {"text": {"fields": [{"name": "title", "type": "text", "stored": true, "indexed": true}]}}}),
            201,
        ),
        (
            "DELETE",
            "/collections/{name}/documents/{id}",
            "/collections/c/documents/d",
            Value::Null,
            200,
        ),
        (
            "POST",
            "/collections/{name}/refresh",
            "/collections/c/refresh",
            Value::Null,
            200,
        ),
    ] {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (got, answer) = server.send_raw(method, url, bytes);
        assert_eq!(got, status, "{method} {url}: {answer}");
        api.assert_answer(method, route, got, &answer);
    }
}
