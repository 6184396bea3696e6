//! Server CPU per operation: what each query (or ingested document) costs the `prism-server`
//! process, as utime + stime from `/proc/PID/stat` over a loop divided by its operations. It
//! leaves the client out, so it is the fair figure against another server over a network
//! protocol, and it holds to about 10% within one run. One client, persistent connection.

use std::time::Duration;

use anyhow::{Context, Result};
use prism_tests::nave::sanitize;
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::Corpus;
use crate::http;
use crate::report::{f, Latency, Table};

/// The server's CPU time so far (user + system), from `/proc/PID/stat`.
pub fn server_cpu(server: &Server) -> Result<Duration> {
    let pid = server.pid().context("the server is not running")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')').context("unreadable /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (USER_HZ, 100 on
    // Linux); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// Waits (at most 60 s) until the server spends under 1% of a core for half a second, so
/// that background work a previous step left (a vector checkpoint after ingest, merges) is
/// not counted against the queries measured next. The CPU clock ticks every 10 ms.
fn wait_until_idle(server: &Server) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let before = server_cpu(server)?;
        std::thread::sleep(Duration::from_millis(500));
        if server_cpu(server)? - before <= Duration::from_millis(5)
            || std::time::Instant::now() >= deadline
        {
            return Ok(());
        }
    }
}

/// Runs `bodies` against `path` `passes` times with one client: latency of the last pass and
/// server CPU µs per request over all passes.
fn measure(server: &Server, path: &str, bodies: &[Value], passes: usize) -> Result<(Latency, f64)> {
    http::run_queries(server, path, bodies, 1)?; // warm
    wait_until_idle(server)?;
    let before = server_cpu(server)?;
    let mut latency = None;
    for _ in 0..passes {
        latency = Some(http::run_queries(server, path, bodies, 1)?.0);
    }
    let cpu = server_cpu(server)? - before;
    let per = cpu.as_secs_f64() * 1e6 / (bodies.len() * passes) as f64;
    Ok((latency.expect("at least one pass"), per))
}

/// Server CPU per query of text, vector and hybrid search and per ingested document, on one
/// node loaded with the corpus and its vectors.
pub fn run(corpus: &Corpus, smoke: bool) -> Result<(Table, Value)> {
    let passes = if smoke { 1 } else { 3 };
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut rows: Vec<(String, Latency, f64, Option<f64>)> = Vec::new();
    for (collection, ef) in [("ef64", 64), ("ef128", 128)] {
        http::create_collection(&server, collection, corpus.dim, true, ef)?;
        let before = server_cpu(&server)?;
        http::bulk_load(&server, collection, corpus, true, 1000, 1)?;
        let per_doc =
            (server_cpu(&server)? - before).as_secs_f64() * 1e6 / corpus.docs.len() as f64;
        if ef == 64 {
            // RediSearch figures below come from issue #10's run (2026-11, this machine, nave-kjv
            // through the same kind of loop), not from this run.
            rows.push((
                "ingest with vectors, per document (1 client, batches of 1000)".into(),
                Latency::default(),
                per_doc,
                Some(384.0),
            ));
        }
    }
    let topics: Vec<(&str, &Vec<f32>)> = corpus
        .topics
        .iter()
        .filter_map(|t| t.vector.as_ref().map(|v| (t.text.as_str(), v)))
        .collect();
    let text = |limit: usize| -> Vec<Value> {
        topics
            .iter()
            .map(|(q, _)| json!({"query": sanitize(q), "limit": limit}))
            .filter(|b| !b["query"].as_str().unwrap_or_default().is_empty())
            .collect()
    };
    let vector = |limit: usize| -> Vec<Value> {
        topics
            .iter()
            .map(|(_, v)| json!({"vector": v, "limit": limit}))
            .collect()
    };
    let vector_base64 = || -> Vec<Value> {
        use base64::Engine as _;
        topics
            .iter()
            .map(|(_, v)| {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                json!({"vector": text, "limit": 10})
            })
            .collect()
    };
    let hybrid = |window: usize| -> Vec<Value> {
        topics
            .iter()
            .filter(|(q, _)| !sanitize(q).is_empty())
            .map(|(q, v)| json!({"query": sanitize(q), "vector": v, "limit": 10, "rank_window_size": window}))
            .collect()
    };
    let health = vec![Value::Null; topics.len()];
    let cases: Vec<(String, &str, Vec<Value>, Option<f64>)> = vec![
        ("no-op (GET /health)".into(), "/health", health, Some(29.0)),
        (
            "text, BM25 top 10".into(),
            "/collections/ef64/search",
            text(10),
            Some(80.0),
        ),
        (
            "text, BM25 top 100".into(),
            "/collections/ef64/search",
            text(100),
            None,
        ),
        (
            "vector top 10, ef 64".into(),
            "/collections/ef64/search",
            vector(10),
            Some(312.0),
        ),
        (
            "vector top 10, ef 64, base64 query".into(),
            "/collections/ef64/search",
            vector_base64(),
            None,
        ),
        (
            "vector top 10, ef 128".into(),
            "/collections/ef128/search",
            vector(10),
            Some(436.0),
        ),
        (
            "vector top 100, ef 64".into(),
            "/collections/ef64/search",
            vector(100),
            None,
        ),
        (
            "hybrid RRF, window 10".into(),
            "/collections/ef64/search",
            hybrid(10),
            None,
        ),
        (
            "hybrid RRF, window 100".into(),
            "/collections/ef64/search",
            hybrid(100),
            Some(588.0),
        ),
        (
            "hybrid RRF, window 1000".into(),
            "/collections/ef64/search",
            hybrid(1000),
            None,
        ),
    ];
    for (name, path, bodies, redis) in cases {
        let (latency, cpu) = measure(&server, path, &bodies, passes)?;
        rows.push((name, latency, cpu, redis));
    }
    let mut table = Table::new(
        format!(
            "Server CPU per operation: {} ({} docs, {} topics, {}-d vectors), one client",
            corpus.name,
            corpus.docs.len(),
            topics.len(),
            corpus.dim
        ),
        &[
            "workload",
            "QPS",
            "p50 ms",
            "server CPU µs",
            "RediSearch µs (issue #10)",
            "vs RediSearch",
        ],
    );
    let mut json_rows = Vec::new();
    for (name, latency, cpu, redis) in &rows {
        let measured_queries = latency.count > 0;
        table.row(vec![
            name.clone(),
            if measured_queries {
                f(latency.qps, 0)
            } else {
                "-".into()
            },
            if measured_queries {
                f(latency.p50_ms, 3)
            } else {
                "-".into()
            },
            f(*cpu, 0),
            redis.map_or("-".into(), |r| f(r, 0)),
            redis.map_or("-".into(), |r| format!("{:.2}x", cpu / r)),
        ]);
        json_rows.push(json!({"workload": name, "latency": latency, "server_cpu_us": cpu, "redisearch_us": redis}));
    }
    let cpu_of = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.2);
    if let (Some(h), Some(t), Some(v)) = (
        cpu_of("hybrid RRF, window 100"),
        cpu_of("text, BM25 top 100"),
        cpu_of("vector top 100, ef 64"),
    ) {
        table.row(vec![
            "hybrid window 100 / (text top 100 + vector top 100)".into(),
            "-".into(),
            "-".into(),
            format!("{:.2}x", h / (t + v)),
            "-".into(),
            "-".into(),
        ]);
    }
    Ok((
        table,
        json!({"corpus": corpus.name, "passes": passes, "rows": json_rows, "peak_rss_bytes": server.peak_rss_bytes()}),
    ))
}
