//! Driving a real `prism-server` over HTTP: loading a corpus through the bulk route and
//! timing queries from one or more client threads.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::Corpus;
use crate::report::Latency;

/// Creates `collection` with a text field and, when `with_vectors`, a cosine vector field.
pub fn create_collection(
    server: &Server,
    collection: &str,
    dim: usize,
    with_vectors: bool,
    ef_search: usize,
) -> Result<()> {
    let mut fields = json!({"text": {"type": "text"}});
    if with_vectors {
        fields["embedding"] = json!({"type": "vector", "dimension": dim, "distance": "cosine", "m": 16, "ef_construction": 200, "ef_search": ef_search});
    }
    let (status, body) = server.put_json(
        &format!("/collections/{collection}"),
        &json!({ "fields": fields }),
    );
    if status != 201 && status != 200 {
        bail!("creating {collection} failed: {status} {body}");
    }
    Ok(())
}

/// Loads the corpus through the NDJSON bulk route from `clients` threads, each request a
/// durable batch, then waits until everything is searchable. Returns the wall time.
pub fn bulk_load(
    server: &Server,
    collection: &str,
    corpus: &Corpus,
    with_vectors: bool,
    batch: usize,
    clients: usize,
) -> Result<Duration> {
    let url = server.url(&format!("/collections/{collection}/documents/bulk"));
    let bodies: Vec<String> = corpus
        .docs
        .chunks(batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|d| {
                    let mut fields = json!({"text": d.text});
                    if with_vectors {
                        fields["embedding"] = json!(d.vector);
                    }
                    json!({"id": d.id, "fields": fields}).to_string()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let before = total(server, collection);
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(600))
                    .build()
                    .unwrap();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .and_then(|r| r.error_for_status())
                        .and_then(|r| r.json::<Value>());
                    match response {
                        Ok(v) if v["failed_docs"] == 0 => {}
                        Ok(v) => {
                            *failure.lock().unwrap() = Some(format!("documents rejected: {v}"))
                        }
                        Err(e) => *failure.lock().unwrap() = Some(e.to_string()),
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap() {
        bail!("bulk load into {collection} failed: {e}");
    }
    // Timing stops once every document is searchable (new ids are assumed), as raw
    // tantivy's timing stops after its one commit.
    let (status, body) =
        server.post_json(&format!("/collections/{collection}/refresh"), &json!({}));
    if status != 200 {
        bail!("refresh after load failed: {body}");
    }
    let want = before + corpus.docs.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = total(server, collection);
        if now == want {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {now} of {want} documents became searchable");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

/// Documents a match-all search counts.
pub fn total(server: &Server, collection: &str) -> u64 {
    let (_, r) = server.post_json(
        &format!("/collections/{collection}/search"),
        &json!({"limit": 1}),
    );
    r["total"].as_u64().unwrap_or(0)
}

/// Sends every request body to `path` from `clients` threads and times each; returns the
/// latency summary and the responses in request order. A `null` body sends a GET.
pub fn run_queries(
    server: &Server,
    path: &str,
    bodies: &[Value],
    clients: usize,
) -> Result<(Latency, Vec<Value>)> {
    let url = server.url(path);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![(Duration::ZERO, Value::Null); bodies.len()]);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let client = reqwest::blocking::Client::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let t = Instant::now();
                    let request = if body.is_null() {
                        client.get(&url)
                    } else {
                        client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.to_string())
                    };
                    let value = request
                        .send()
                        .and_then(|r| r.json::<Value>())
                        .unwrap_or_else(|e| json!({"error": e.to_string()}));
                    results.lock().unwrap()[i] = (t.elapsed(), value);
                }
            });
        }
    });
    let wall = started.elapsed();
    let results = results.into_inner().unwrap();
    if let Some((_, bad)) = results.iter().find(|(_, v)| v.get("error").is_some()) {
        bail!("a query failed: {bad}");
    }
    let (times, values): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    Ok((Latency::from(times, wall), values))
}
