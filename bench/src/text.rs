//! Text search: QPS and latency over HTTP at concurrency 1 and 2, against raw tantivy
//! in-process on the same index files and the same queries (top 10, count, stored fields).

use std::time::Instant;

use anyhow::{Context, Result};
use prism_tests::Server;
use serde_json::{json, Value};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::QueryParser;
use tantivy::{Index, TantivyDocument};

use crate::data::Corpus;
use crate::http;
use crate::report::{f, ratio, Latency, Table};

pub use prism_tests::nave::sanitize;

fn raw_tantivy(index_dir: &std::path::Path, queries: &[String], clients: usize) -> Result<Latency> {
    let index =
        Index::open_in_dir(index_dir).with_context(|| format!("open {}", index_dir.display()))?;
    prism_core::analysis::register(index.tokenizers());
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let field = index.schema().get_field("text")?;
    let parser = QueryParser::for_index(&index, vec![field]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let times = std::sync::Mutex::new(Vec::with_capacity(queries.len()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(q) = queries.get(i) else { break };
                let t = Instant::now();
                let query = parser.parse_query(q).expect("query parses");
                let (top, _count) = searcher
                    .search(&query, &(TopDocs::with_limit(10).order_by_score(), Count))
                    .expect("search");
                for (_, address) in top {
                    let _doc: TantivyDocument = searcher.doc(address).expect("doc");
                }
                times.lock().unwrap().push(t.elapsed());
            });
        }
    });
    Ok(Latency::from(
        times.into_inner().unwrap(),
        started.elapsed(),
    ))
}

pub fn run(corpus: &Corpus) -> Result<(Table, Value)> {
    let queries: Vec<String> = corpus
        .topics
        .iter()
        .map(|t| sanitize(&t.text))
        .filter(|q| !q.is_empty())
        .collect();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    http::create_collection(&server, "text", corpus.dim, false, 64)?;
    http::bulk_load(&server, "text", corpus, false, 1000, 2)?;
    let bodies: Vec<Value> = queries
        .iter()
        .map(|q| json!({"query": q, "limit": 10}))
        .collect();
    // Warm up caches once so that both systems run warm.
    http::run_queries(&server, "/collections/text/search", &bodies, 2)?;
    let mut prism = Vec::new();
    let mut floor = Vec::new();
    let mut cpu_us = Vec::new();
    let health: Vec<Value> = vec![Value::Null; bodies.len()];
    for clients in [1, 2] {
        let before = crate::serve::server_cpu(&server)?;
        prism.push(http::run_queries(&server, "/collections/text/search", &bodies, clients)?.0);
        let cpu = crate::serve::server_cpu(&server)? - before;
        cpu_us.push(cpu.as_secs_f64() * 1e6 / bodies.len() as f64);
        // The cost of HTTP itself: the same client fetching a route that does no work.
        floor.push(http::run_queries(&server, "/health", &health, clients)?.0);
    }
    server.stop();
    let index_dir = data.join("collections/text/shards/0/index");
    raw_tantivy(&index_dir, &queries, 1)?;
    let mut raw = Vec::new();
    for clients in [1, 2] {
        raw.push(raw_tantivy(&index_dir, &queries, clients)?);
    }
    let mut table = Table::new(
        format!(
            "Text search: {} ({} docs, {} queries), top 10 + total + stored fields",
            corpus.name,
            corpus.docs.len(),
            queries.len()
        ),
        &[
            "concurrency",
            "prism HTTP QPS",
            "p50 ms",
            "p99 ms",
            "server CPU µs/query",
            "raw tantivy QPS",
            "p50 ms",
            "p99 ms",
            "QPS ratio",
            "HTTP floor QPS (GET /health)",
        ],
    );
    let mut rows = Vec::new();
    for (i, clients) in [1, 2].into_iter().enumerate() {
        let (p, r) = (prism[i], raw[i]);
        table.row(vec![
            clients.to_string(),
            f(p.qps, 0),
            f(p.p50_ms, 3),
            f(p.p99_ms, 3),
            f(cpu_us[i], 0),
            f(r.qps, 0),
            f(r.p50_ms, 3),
            f(r.p99_ms, 3),
            ratio(p.qps, r.qps),
            f(floor[i].qps, 0),
        ]);
        rows.push(json!({"concurrency": clients, "prism_http": p, "server_cpu_us": cpu_us[i], "raw_tantivy": r, "qps_ratio": p.qps / r.qps, "http_floor": floor[i]}));
    }
    Ok((
        table,
        json!({"corpus": corpus.name, "queries": queries.len(), "results": rows}),
    ))
}
