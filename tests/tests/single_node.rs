//! End-to-end tests of one `prism-server` process: the README's examples, crash safety under
//! SIGKILL, bad input, the data-directory lock, schema files and the CLI.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_tests::{binary, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Extracts the shell commands of the README's "Try it with curl" section, joining
/// continuation lines and multi-line quoted bodies.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("## Try it with curl")
        .nth(1)
        .expect("README has a 'Try it with curl' section");
    let section = section.split("\n## ").next().unwrap();
    let mut commands = Vec::new();
    for block in section.split("```bash").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut current = String::new();
        for line in block.lines() {
            if current.is_empty() && line.trim().is_empty() {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            // A command ends where its single quotes balance and no continuation follows.
            let quotes = current.matches('\'').count();
            if quotes.is_multiple_of(2) && !line.trim_end().ends_with('\\') {
                commands.push(current.trim().to_string());
                current.clear();
            }
        }
        assert!(
            current.trim().is_empty(),
            "unterminated command in README: {current}"
        );
    }
    commands
}

/// Each batch of the crash test: its documents with their vectors, and whether it was
/// acknowledged.
type Batches = BTreeMap<String, (Vec<(String, Vec<f32>)>, bool)>;

fn run_shell(command: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(command)
        .output()
        .expect("run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn readme_curl_examples_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let commands = readme_commands();
    assert!(
        commands.len() >= 9,
        "found only {} README commands",
        commands.len()
    );
    let mut outputs = Vec::new();
    for command in &commands {
        assert!(
            command.starts_with("curl "),
            "README example is not a curl command: {command}"
        );
        assert!(
            command.contains("localhost:3000"),
            "README example must target localhost:3000: {command}"
        );
        let local = command.replace("localhost:3000", &format!("127.0.0.1:{}", server.port));
        let (ok, stdout) = run_shell(&local);
        assert!(ok, "command failed: {command}");
        let body: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{command}\nnot JSON ({e}): {stdout}"));
        assert!(
            body.get("error").is_none(),
            "{command}\nanswered an error: {body}"
        );
        outputs.push((command.clone(), body));
    }
    let find = |needle: &str| {
        outputs
            .iter()
            .find(|(c, _)| c.contains(needle))
            .unwrap_or_else(|| panic!("no README command contains {needle}"))
            .1
            .clone()
    };
    let ids = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(find("documents?refresh=wait_for")["successful_docs"], 3);
    let text = find("search OR graphs");
    let mut text_ids = ids(&text);
    text_ids.sort();
    assert_eq!(text_ids, vec!["a1", "a2"], "a3 is filtered out by year");
    assert!(text["results"][0]["highlights"]["title"]
        .as_str()
        .unwrap()
        .contains("<b>"));
    assert_eq!(ids(&find("\"vector\": [0.0, 0.3, 0.9]"))[0], "a3");
    // Hybrid: the text list is [a3]; the vector list is [a1, a2, a3]. RRF with k = 60:
    // a3 = 1/61 + 1/63, a1 = 1/61, a2 = 1/62.
    let hybrid = find("\"strategy\": \"rrf\"");
    assert_eq!(ids(&hybrid), ["a3", "a1", "a2"], "{hybrid}");
    for (hit, expected) in hybrid["results"].as_array().unwrap().iter().zip([
        1.0 / 61.0 + 1.0 / 63.0,
        1.0 / 61.0,
        1.0 / 62.0,
    ]) {
        assert!(
            (hit["score"].as_f64().unwrap() - expected).abs() < 1e-6,
            "{hybrid}"
        );
    }
    assert_eq!(find("aggregations")["aggregations"]["years"]["count"], 3);
    assert_eq!(
        find("documents/a2")["fields"]["title"],
        "Tuning HNSW graphs"
    );
    let described = &outputs.last().unwrap().1;
    assert_eq!(described["name"], "articles");
    assert_eq!(
        described["stats"]["num_docs"], 2,
        "a2 was deleted: {described}"
    );
}

/// Streams acknowledged writes from several clients, SIGKILLs the server at a random moment,
/// restarts it, and checks every acknowledged batch is fully present and searchable, and that
/// no batch is half-applied. `PRISM_CRASH_ITERATIONS` sets the number of rounds (default 3).
#[test]
fn sigkill_mid_write_loses_no_acknowledged_write() {
    let iterations: usize = std::env::var("PRISM_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    // Short vector checkpoints so that crashes land between text and vector checkpoints.
    let mut server = Server::start(
        &dir.path().join("data"),
        &[("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "300")],
    );
    let (status, body) = server.put_json(
        "/collections/crash",
        &json!({"fields":{"body":{"type":"text"},"batch":{"type":"keyword"},"emb":{"type":"vector","dimension":8,"distance":"cosine"}}}),
    );
    assert!(status == 201, "{body}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("PRISM_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(42),
    );
    // batch name -> (document ids with their vectors, acknowledged?)
    let mut batches: Batches = BTreeMap::new();
    for round in 0..iterations {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let url = server.url("/collections/crash/documents");
        let mut writers = Vec::new();
        for writer in 0..3 {
            let (stop, log, url) = (stop.clone(), log.clone(), url.clone());
            let seed = rng.gen::<u64>();
            writers.push(std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch = format!("r{round}w{writer}b{n}");
                    n += 1;
                    let size = rng.gen_range(1..=20);
                    let docs: Vec<(String, Vec<f32>)> = (0..size)
                        .map(|i| (format!("{batch}-{i}"), (0..8).map(|_| rng.gen_range(0.01f32..1.0)).collect()))
                        .collect();
                    let body = json!({"documents": docs.iter().map(|(id, v)| json!({"id": id, "fields": {"body": format!("word{} common", id.len()), "batch": batch, "emb": v}})).collect::<Vec<_>>()});
                    let acked = client
                        .post(&url)
                        .json(&body)
                        .send()
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    log.lock().unwrap().push((batch, docs, acked));
                    if !acked {
                        break;
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        for (batch, docs, acked) in log.lock().unwrap().drain(..) {
            batches.insert(batch, (docs, acked));
        }
        let started = Instant::now();
        server.restart();
        eprintln!(
            "round {round}: restarted in {:?}; {} batches so far",
            started.elapsed(),
            batches.len()
        );
        verify(&server, &batches);
    }
    assert!(
        batches.values().filter(|b| b.1).count() > 10,
        "too few acknowledged writes to mean anything"
    );
}

fn verify(server: &Server, batches: &Batches) {
    let mut expected_total = 0u64;
    for (batch, (docs, acked)) in batches {
        let (status, found) = server.post_json(
            "/collections/crash/search",
            &json!({"filter": format!("batch:{batch}"), "limit": 1}),
        );
        assert_eq!(status, 200, "{found}");
        let total = found["total"].as_u64().unwrap();
        if *acked {
            assert_eq!(
                total,
                docs.len() as u64,
                "acknowledged batch {batch} is not fully searchable"
            );
        } else {
            assert!(
                total == 0 || total == docs.len() as u64,
                "unacknowledged batch {batch} is half-applied: {total} of {}",
                docs.len()
            );
        }
        expected_total += total;
        if *acked {
            // Every acknowledged document is retrievable with its exact fields.
            for (id, vector) in docs.iter().take(2) {
                let (status, doc) = server.get(&format!("/collections/crash/documents/{id}"));
                assert_eq!(status, 200, "acknowledged {id} missing: {doc}");
                assert_eq!(doc["fields"]["batch"], json!(batch));
                let stored: Vec<f32> =
                    serde_json::from_value(doc["fields"]["emb"].clone()).unwrap();
                prism_tests::assert_vector_as_written(&stored, vector);
            }
            // And findable by its vector.
            let (id, vector) = &docs[0];
            let (_, hits) = server.post_json(
                "/collections/crash/search",
                &json!({"vector": vector, "filter": format!("batch:{batch}"), "limit": 1}),
            );
            assert_eq!(
                hits["results"][0]["id"],
                json!(id),
                "vector search lost {id}"
            );
        }
    }
    // The text index, the match-all count and the per-batch counts agree: no stray documents.
    let (_, text) = server.post_json(
        "/collections/crash/search",
        &json!({"query": "common", "limit": 1}),
    );
    let (_, all) = server.post_json("/collections/crash/search", &json!({"limit": 1}));
    assert_eq!(text["total"].as_u64(), Some(expected_total), "{text}");
    assert_eq!(all["total"].as_u64(), Some(expected_total), "{all}");
}

fn assert_json_error(
    status: u16,
    body: &Value,
    expected_status: u16,
    expected_code: &str,
    what: &str,
) {
    assert_eq!(status, expected_status, "{what}: {body}");
    assert_eq!(
        body["error"]["code"],
        json!(expected_code),
        "{what}: {body}"
    );
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{what}: empty message"
    );
}

#[test]
fn bad_input_gets_a_4xx_json_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &[("PRISM_MAX_BODY_BYTES", "1048576")]);
    let (status, _) = server.put_json(
        "/collections/docs",
        &json!({"fields":{"title":{"type":"text"},"emb":{"type":"vector","dimension":3}}}),
    );
    assert_eq!(status, 201);
    let (status, _) = server.post_json(
        "/collections/docs/documents?refresh=wait_for",
        &json!({"documents":[{"id":"keep","fields":{"title":"kept","emb":[1,0,0]}}]}),
    );
    assert_eq!(status, 201);
    let snapshot = |s: &Server| {
        let (_, collections) = s.get("/collections");
        let (_, doc) = s.get("/collections/docs/documents/keep");
        let (_, search) = s.post_json("/collections/docs/search", &json!({"limit": 10}));
        let mut dirs: Vec<String> = std::fs::read_dir(data.join("collections"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        dirs.sort();
        (
            collections["collections"].clone(),
            doc,
            search["total"].clone(),
            search["results"].clone(),
            dirs,
        )
    };
    let before = snapshot(&server);

    let docs = "/collections/docs/documents?refresh=true";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON document batch",
            docs,
            b"{\"documents\": [".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "malformed JSON search",
            "/collections/docs/search",
            b"{query".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "malformed JSON schema",
            "/collections/other",
            b"nope".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "unknown collection index",
            "/collections/nope/documents",
            br#"{"documents":[{"id":"x","fields":{}}]}"#.to_vec(),
            404,
            "collection_not_found",
        ),
        (
            "unknown collection search",
            "/collections/nope/search",
            br#"{"query":"x"}"#.to_vec(),
            404,
            "collection_not_found",
        ),
        (
            "wrong vector dimension",
            docs,
            br#"{"documents":[{"id":"v","fields":{"emb":[1,2]}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "wrong query vector dimension",
            "/collections/docs/search",
            br#"{"vector":[1,2]}"#.to_vec(),
            400,
            "invalid_query",
        ),
        (
            "NaN in a vector",
            docs,
            br#"{"documents":[{"id":"n","fields":{"emb":[NaN,1,0]}}]}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "Inf in a vector",
            docs,
            br#"{"documents":[{"id":"i","fields":{"emb":[1e999,1,0]}}]}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "f32 overflow in a vector",
            docs,
            br#"{"documents":[{"id":"o","fields":{"emb":[1e300,1,0]}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "string NaN in a vector",
            docs,
            br#"{"documents":[{"id":"s","fields":{"emb":["NaN",1,0]}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "missing id",
            docs,
            br#"{"documents":[{"fields":{"title":"x"}}]}"#.to_vec(),
            400,
            "invalid_documents",
        ),
        (
            "invalid schema",
            "/collections/other",
            br#"{"fields":{}}"#.to_vec(),
            400,
            "invalid_schema",
        ),
        (
            "unknown field type",
            "/collections/other",
            br#"{"fields":{"a":{"type":"blob"}}}"#.to_vec(),
            400,
            "invalid_schema",
        ),
        (
            "body over the size limit",
            docs,
            vec![b' '; 2 << 20],
            413,
            "payload_too_large",
        ),
        (
            "name with path traversal",
            "/collections/..%2Fx",
            br#"{"fields":{"a":{"type":"text"}}}"#.to_vec(),
            400,
            "invalid_collection_name",
        ),
        (
            "hidden-file name",
            "/collections/.x",
            br#"{"fields":{"a":{"type":"text"}}}"#.to_vec(),
            400,
            "invalid_collection_name",
        ),
        (
            "300-character name",
            "",
            br#"{"fields":{"a":{"type":"text"}}}"#.to_vec(),
            400,
            "invalid_collection_name",
        ),
        (
            "body name differs from path",
            "/collections/other",
            br#"{"name":"x","fields":{"a":{"type":"text"}}}"#.to_vec(),
            400,
            "invalid_schema",
        ),
        (
            "bad refresh parameter",
            "/collections/docs/documents?refresh=later",
            br#"{"documents":[{"id":"r","fields":{}}]}"#.to_vec(),
            400,
            "invalid_parameter",
        ),
    ];
    let long_name = format!("/collections/{}", "a".repeat(300));
    for (what, path, body, expected_status, code) in cases {
        let path = if path.is_empty() {
            long_name.as_str()
        } else {
            path
        };
        let method = if path.ends_with("/documents")
            || path.contains("/documents?")
            || path.ends_with("/search")
        {
            "POST"
        } else {
            "PUT"
        };
        // The server answers 413 as soon as the length is known and closes the connection;
        // a client still writing the body may see the close first (EPIPE). That is the
        // refusal too, so such a send is retried to read the answer.
        let mut attempts = 0;
        let (status, response) = loop {
            attempts += 1;
            match server.try_send_raw(method, path, body.clone()) {
                Ok(answer) => break answer,
                Err(e) if expected_status == 413 && attempts < 5 => {
                    eprintln!("{what}: the connection closed while sending ({e}); again");
                }
                Err(e) => panic!("{what}: {e}"),
            }
        };
        assert_json_error(status, &response, expected_status, code, what);
    }
    // An empty name has no route: a JSON 404, not a crash or an HTML page.
    let (status, response) = server.send_raw(
        "PUT",
        "/collections/",
        br#"{"fields":{"a":{"type":"text"}}}"#.to_vec(),
    );
    assert_json_error(status, &response, 404, "not_found", "empty name");
    let (status, response) = server.send_raw("PUT", "/collections", br#"{}"#.to_vec());
    assert_json_error(
        status,
        &response,
        405,
        "method_not_allowed",
        "PUT on the list",
    );
    let (status, response) = server.get("/collections/docs/documents/ghost");
    assert_json_error(status, &response, 404, "document_not_found", "unknown id");
    assert_eq!(snapshot(&server), before, "bad input changed the state");

    // A batch with good and bad documents indexes the good ones and reports the bad.
    let (status, mixed) = server.post_json(
        "/collections/docs/documents?refresh=true",
        &json!({"documents":[{"id":"good","fields":{"title":"fine"}},{"id":"bad","fields":{"emb":[1]}}]}),
    );
    assert_eq!(status, 201, "{mixed}");
    assert_eq!(
        (
            mixed["successful_docs"].clone(),
            mixed["failed_docs"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(mixed["errors"][0]["id"], "bad");
    let (status, _) = server.delete("/collections/docs/documents/good?refresh=true");
    assert_eq!(status, 200);
}

#[test]
fn a_data_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, stderr) = server.run_second_instance();
    assert!(!status.success());
    assert!(stderr.contains("locked by another process"), "{stderr}");
}

#[test]
fn clean_restart_and_schema_files() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("books.yaml"),
        "name: books\nfields:\n  title: {type: text}\n  year: {type: i64}\n",
    )
    .unwrap();
    // The original Prism's format, as its own e2e test data writes it (issue #11).
    std::fs::write(
        schemas.join("articles.yaml"),
        "collection: articles\ndescription: News\nbackends:\n  text:\n    fields:\n      - name: title\n        type: text\n        stored: true\n        indexed: true\n      - name: category\n        type: string\n        indexed: true\n        stored: true\n  vector:\n    embedding_field: embedding\n    dimension: 2\n",
    )
    .unwrap();
    let schemas_env = schemas.to_string_lossy().to_string();
    let mut server = Server::start(
        &dir.path().join("data"),
        &[("PRISM_SCHEMAS_DIR", &schemas_env)],
    );
    let (status, body) = server.get("/collections/books");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/collections/articles/schema");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["description"], json!("News"), "{body}");
    assert_eq!(body["vector_field"], json!("embedding"), "{body}");
    let (status, body) = server.post_json(
        "/collections/articles/documents?refresh=true",
        &json!({"documents": [{"id": "a1", "fields": {"title": "Rust Search", "category": "Tech", "embedding": [1, 0]}}]}),
    );
    assert_eq!(status, 201, "{body}");
    let (_, found) = server.post_json(
        "/collections/articles/search",
        &json!({"query": "category:Tech AND rust", "vector": [1, 0]}),
    );
    assert_eq!(found["results"][0]["id"], json!("a1"), "{found}");
    let (status, _) = server.post_json(
        "/collections/books/documents",
        &json!({"documents":[{"id":"b1","fields":{"title":"Dune","year":1965}}]}),
    );
    assert_eq!(status, 201);
    // Real-time GET before any refresh.
    assert_eq!(
        server.get("/collections/books/documents/b1").1["fields"]["title"],
        "Dune"
    );
    server.stop();
    server.restart();
    let (_, found) = server.post_json("/collections/books/search", &json!({"query":"dune"}));
    assert_eq!(found["total"], 1, "{found}");
    let (_, health) = server.get("/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["collections"], 2);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("prism_http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("prism_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prism_collection_documents{collection=\"books\"} 1"),
        "{metrics}"
    );
    let (status, _) = server.delete("/collections/books");
    assert_eq!(status, 200);
    assert_eq!(server.get("/collections/books").0, 404);
}

#[test]
fn cli_imports_jsonl_and_csv_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    // No scheduled refresh during the test: only the import's own makes documents searchable.
    let server = Server::start(
        &dir.path().join("data"),
        &[("PRISM_REFRESH_INTERVAL_MS", "3600000")],
    );
    let (status, _) = server.put_json(
        "/collections/films",
        &json!({"fields":{"title":{"type":"text"},"year":{"type":"i64"},"emb":{"type":"vector","dimension":2}}}),
    );
    assert_eq!(status, 201);
    let jsonl = dir.path().join("films.jsonl");
    let mut lines: Vec<String> = (0..2500).map(|i| json!({"id": format!("j{i}"), "title": format!("film number {i}"), "year": 1900 + i % 120, "emb": [1.0, i as f32]}).to_string()).collect();
    lines.push("{not json".into());
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let csv = dir.path().join("films.csv");
    std::fs::write(
        &csv,
        "id,title,year,emb\nc1,Alien,1979,\"[0.5, 1]\"\nc2,Heat,not-a-year,\"[1, 1]\"\n",
    )
    .unwrap();
    let prism = binary("prism");
    let url = server.url("");
    let run = |args: &[&str]| {
        let out = Command::new(&prism)
            .arg("--url")
            .arg(&url)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&["import", "--collection", "films", jsonl.to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("imported 2500 documents (1 errors)") && stdout.contains("searchable now"),
        "{stdout}"
    );
    let total = || {
        let (_, r) = server.post_json("/collections/films/search", &json!({"limit": 1}));
        r["total"].clone()
    };
    // An import that is done is searchable.
    assert_eq!(total(), json!(2500));
    let (ok, stdout, stderr) = run(&[
        "import",
        "-c",
        "films",
        "--no-refresh",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("imported 1 documents (1 errors)")
            && stdout.contains("searchable after the server's next refresh"),
        "{stdout}"
    );
    assert_eq!(total(), json!(2500), "--no-refresh skips the refresh");
    let (status, _) = server.post_json("/collections/films/refresh", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(total(), json!(2501));
    let (ok, stdout, _) = run(&["search", "films", "alien"]);
    assert!(ok && stdout.contains("c1"), "{stdout}");
    let (ok, stdout, _) = run(&["collections"]);
    assert!(
        ok && stdout.contains("films") && stdout.contains("2501"),
        "{stdout}"
    );
    let (ok, _, stderr) = run(&["import", "-c", "missing", csv.to_str().unwrap()]);
    assert!(!ok && stderr.contains("collection_not_found"), "{stderr}");
}

/// The benchmark suite on tiny data, so that it cannot rot. Asserts that every benchmark ran
/// and produced its figures, never what the figures are.
#[test]
fn benchmark_smoke_run_produces_every_table() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(binary("prism-bench"))
        .args(["--smoke", "--out"])
        .arg(out.path())
        .env("PRISM_SKIP_BUILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for title in [
        "### Ingest",
        "### Text search",
        "### Vector search",
        "### Relevance",
        "### Restart",
        "### Server CPU per operation",
        "### Memory",
        "### Targets of issue #10",
    ] {
        assert!(stdout.contains(title), "missing table {title}:\n{stdout}");
    }
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(out.path().join(format!("{name}.json"))).unwrap())
            .unwrap()
    };
    assert!(read("ingest")["raw_tantivy_docs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(read("text")["results"][0]["qps_ratio"].as_f64().unwrap() > 0.0);
    let vector = read("vector");
    assert!(
        vector["results"][0]["results"][1]["prism"]["recall_at_10"]
            .as_f64()
            .unwrap()
            > 0.9,
        "{vector}"
    );
    assert_eq!(read("restart")["docs"], 3000);
    // Ingest, the no-op floor, two text, four vector and three hybrid workloads.
    let serve = read("serve");
    assert_eq!(serve["rows"].as_array().map(Vec::len), Some(11), "{serve}");
    assert!(serve["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["server_cpu_us"].as_f64().is_some()));
}

/// Issue #11: the original Prism's routes answer beside ours, in its shapes.
#[test]
fn the_original_prisms_routes_answer_in_its_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (status, body) = server.get("/");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], json!("prism"));
    assert_eq!(body["status"], json!("ok"));
    assert!(body["version"].is_string(), "{body}");
    let (status, body) = server.put_json(
        "/collections/articles",
        &json!({"fields": {"title": {"type": "text"}, "tag": {"type": "keyword", "stored": false},
            "emb": {"type": "vector", "dimension": 3}}}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post_json(
        "/collections/articles/documents?refresh=true",
        &json!({"documents": [{"id": "a", "fields": {"title": "hello", "tag": "x", "emb": [1, 0, 0]}},
            {"id": "b", "fields": {"title": 5}}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["indexed"].clone(), body["failed"].clone()),
        (json!(1), json!(1)),
        "{body}"
    );
    assert_eq!(body["successful_docs"], json!(1), "{body}");
    let (status, body) = server.get("/admin/collections");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"collections": ["articles"]}));
    let (status, body) = server.get("/collections/articles/schema");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["collection"], json!("articles"));
    assert_eq!(body["vector_field"], json!("emb"));
    assert_eq!(body["vector_dimensions"], json!(3));
    let fields = body["fields"].as_array().unwrap();
    assert!(
        fields.contains(&json!({"name": "tag", "type": "string", "indexed": true, "stored": false, "vector_source": false})),
        "{body}"
    );
    let (status, body) = server.get("/collections/articles/stats");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document_count"], json!(1), "{body}");
    assert!(body["storage_bytes"].as_u64().unwrap() > 0, "{body}");
    let (status, body) = server.get("/stats/server");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], body["prism_version"]);
    for path in ["/collections/missing/schema", "/collections/missing/stats"] {
        let (status, body) = server.get(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(
            body["error"]["code"],
            json!("collection_not_found"),
            "{body}"
        );
    }
}

/// Issue #11: as the original Prism does, `<data_dir>/schemas` is read when no schemas
/// directory is named.
#[test]
fn schemas_in_the_data_directory_are_read_without_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("schemas")).unwrap();
    std::fs::write(
        data.join("schemas").join("docs.yaml"),
        "collection: docs\nbackends:\n  text:\n    fields:\n      - {name: body, type: text, indexed: true, stored: true}\n",
    )
    .unwrap();
    let server = Server::start(&data, &[]);
    let (status, body) = server.get("/collections/docs");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["schema"]["fields"]["body"]["type"],
        json!("text"),
        "{body}"
    );
}

/// Issue #11: the original Prism's configuration as its e2e tests ship it (CORS on; TLS,
/// security and audit present and disabled; JSON logs) starts the server; CORS answers.
#[test]
fn the_original_prisms_config_starts_the_server_and_cors_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prism.toml");
    std::fs::write(
        &config,
        "[storage]\ndata_dir = \"/data\"\n\n[server]\nbind_addr = \"0.0.0.0:3000\"\n\n[server.cors]\nenabled = true\norigins = [\"*\"]\n\n[server.tls]\nenabled = false\n\n[security]\nenabled = false\n\n[security.audit]\nenabled = false\n\n[observability]\nlog_level = \"info\"\nlog_format = \"json\"\nmetrics_enabled = true\n",
    )
    .unwrap();
    let config = config.to_string_lossy().to_string();
    let server = Server::start_with_args(
        &dir.path().join("data"),
        &[("PRISM_HOST", "127.0.0.1")],
        &["--config", &config],
    );
    let answer = server
        .client
        .get(server.url("/health"))
        .header("Origin", "https://app.example.com")
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "*",
        "{:?}",
        answer.headers()
    );
    let preflight = server
        .client
        .request(
            reqwest::Method::OPTIONS,
            server.url("/collections/x/search"),
        )
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert!(
        preflight
            .headers()
            .contains_key("access-control-allow-methods"),
        "{:?}",
        preflight.headers()
    );
}

/// Issue #11: ingest pipelines from `conf/pipelines/*.yaml` beside the config file, as the
/// original Prism's smoke test uses them; an unknown pipeline indexes nothing.
#[test]
fn a_pipeline_rewrites_documents_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("conf").join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::write(
        pipelines.join("normalize.yaml"),
        "name: normalize\ndescription: Normalize text fields for E2E tests\nprocessors:\n  - lowercase:\n      field: title\n  - set:\n      field: indexed_at\n      value: \"{{_now}}\"\n  - html_strip:\n      field: body\n",
    )
    .unwrap();
    let config = dir.path().join("prism.toml");
    std::fs::write(&config, "[server]\nbind_addr = \"127.0.0.1:3000\"\n").unwrap();
    let config = config.to_string_lossy().to_string();
    let server = Server::start_with_args(&dir.path().join("data"), &[], &["--config", &config]);
    let (status, body) = server.get("/admin/pipelines");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"pipelines": [{"name": "normalize", "description": "Normalize text fields for E2E tests", "processor_count": 3}]})
    );
    let (status, _) = server.put_json(
        "/collections/articles",
        &json!({"fields": {"title": {"type": "text"}, "body": {"type": "text"}, "indexed_at": {"type": "keyword"}}}),
    );
    assert_eq!(status, 201);
    let (status, body) = server.post_json(
        "/collections/articles/documents?pipeline=normalize&refresh=true",
        &json!({"documents": [{"id": "p1", "fields": {"title": "Hello WORLD", "body": "<p>Fish &amp; chips</p>"}},
            {"id": "p2", "fields": {"title": 7}}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["indexed"].clone(), body["failed"].clone()),
        (json!(1), json!(1)),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["code"],
        json!("pipeline_failed"),
        "{body}"
    );
    let (_, doc) = server.get("/collections/articles/documents/p1");
    assert_eq!(doc["fields"]["title"], json!("hello world"), "{doc}");
    assert_eq!(doc["fields"]["body"], json!("Fish & chips"), "{doc}");
    assert!(
        doc["fields"]["indexed_at"].as_str().unwrap().contains('T'),
        "{doc}"
    );
    let bulk = server
        .client
        .post(server.url("/collections/articles/documents/bulk?pipeline=normalize&refresh=true"))
        .body("{\"id\": \"p3\", \"fields\": {\"title\": \"LOUD\"}}\n")
        .send()
        .unwrap();
    assert_eq!(bulk.status(), 200);
    assert_eq!(
        server.get("/collections/articles/documents/p3").1["fields"]["title"],
        json!("loud")
    );
    for path in [
        "/collections/articles/documents?pipeline=missing&refresh=true",
        "/collections/articles/documents/bulk?pipeline=missing&refresh=true",
    ] {
        let (status, body) = server.send_raw(
            "POST",
            path,
            br#"{"documents": [{"id": "never", "fields": {"title": "x"}}]}"#.to_vec(),
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], json!("unknown_pipeline"), "{body}");
    }
    assert_eq!(server.get("/collections/articles/documents/never").0, 404);
    let (_, found) = server.post_json("/collections/articles/search", &json!({}));
    assert_eq!(found["total"], json!(2), "{found}");
}

/// Issue #18: a numeric id is kept as exactly the digits sent, or refused with the rule, on
/// the JSON and the NDJSON routes; a vector whose scores could overflow is refused; every
/// score answered is a finite number.
#[test]
fn numeric_ids_are_exact_and_overflowing_vectors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (status, body) = server.put_json(
        "/collections/ids",
        &json!({"fields": {"title": {"type": "text"},
            "emb": {"type": "vector", "dimension": 2, "distance": "dot"}}}),
    );
    assert_eq!(status, 201, "{body}");
    // Two ids that an f64 rounds to one number, and forms whose text an f64 changes.
    let (status, body) = server.send_raw(
        "POST",
        "/collections/ids/documents?refresh=wait_for",
        br#"{"documents": [
            {"id": 18446744073709551615, "fields": {"title": "max", "emb": [1, 0]}},
            {"id": -9223372036854775808, "fields": {"title": "min", "emb": [0, 1]}},
            {"id": 123456789012345678901234567890, "fields": {"title": "big"}},
            {"id": 123456789012345678901234567891, "fields": {"title": "big too"}},
            {"id": 1e2, "fields": {"title": "exponent"}},
            {"id": 2.5, "fields": {"title": "fraction"}},
            {"id": 3, "fields": {"title": "huge", "emb": [1e19, 1e19]}}
        ]}"#
        .to_vec(),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["indexed"].clone(), body["failed"].clone()),
        (json!(2), json!(5)),
        "{body}"
    );
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(
        errors
            .iter()
            .filter(|e| e["message"]
                .as_str()
                .unwrap()
                .contains("send any other id as a JSON string"))
            .count(),
        4,
        "{body}"
    );
    assert!(
        errors.iter().any(|e| e["id"] == json!("3")
            && e["code"] == json!("invalid_document")
            && e["message"].as_str().unwrap().contains("squared length")),
        "{body}"
    );
    for id in ["18446744073709551615", "-9223372036854775808"] {
        let (status, doc) = server.get(&format!("/collections/ids/documents/{id}"));
        assert_eq!(status, 200, "{id}: {doc}");
        assert_eq!(doc["id"], json!(id), "{doc}");
    }
    for id in ["100", "100.0", "1e2", "3"] {
        assert_eq!(
            server.get(&format!("/collections/ids/documents/{id}")).0,
            404,
            "{id}"
        );
    }
    // The NDJSON route: the same rule, line by line.
    let bulk = server
        .client
        .post(server.url("/collections/ids/documents/bulk?refresh=wait_for"))
        .body("{\"id\": 42, \"fields\": {\"title\": \"forty-two\"}}\n{\"id\": 4.2e1, \"fields\": {\"title\": \"not quite\"}}\n")
        .send()
        .unwrap();
    assert_eq!(bulk.status(), 200);
    let bulk: Value = bulk.json().unwrap();
    assert_eq!(
        (bulk["indexed"].clone(), bulk["failed"].clone()),
        (json!(1), json!(1)),
        "{bulk}"
    );
    assert_eq!(
        server.get("/collections/ids/documents/42").1["id"],
        json!("42")
    );
    // Every score is a finite number (JSON null would be a non-finite one).
    let (status, found) = server.post_json(
        "/collections/ids/search",
        &json!({"vector": [3e18, 1e18], "query": "max OR min OR forty", "hybrid": {"strategy": "weighted"}}),
    );
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().unwrap();
    assert!(!results.is_empty(), "{found}");
    assert!(results.iter().all(|r| r["score"].is_f64()), "{found}");
    let (status, found) =
        server.post_json("/collections/ids/search", &json!({"vector": [3e18, 1e18]}));
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["results"][0]["id"],
        json!("18446744073709551615"),
        "{found}"
    );
    let score = found["results"][0]["score"].as_f64().unwrap();
    assert!((score / 3e18 - 1.0).abs() < 1e-6, "{found}");
}
