//! Federated search: three nodes over mutual-TLS QUIC against one node, on the same corpus
//! and queries, over HTTP from one client: latency, QPS and how often the top 10 agree (the
//! same ids in the same order, ties included).

use anyhow::{bail, Result};
use prism_tests::cluster::start_federation;
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::Corpus;
use crate::http;
use crate::report::{f, ratio, Table};
use crate::text::sanitize;

fn load_federated(node: &Server, corpus: &Corpus) -> Result<()> {
    for batch in corpus.docs.chunks(1000) {
        let docs: Vec<Value> = batch
            .iter()
            .map(|d| json!({"id": d.id, "fields": {"text": d.text}}))
            .collect();
        let (status, r) = node.post_json(
            "/cluster/collections/fed/documents",
            &json!({"documents": docs}),
        );
        if status != 200 || r["failed_docs"] != 0 {
            bail!("federated load failed: {status} {r}");
        }
    }
    Ok(())
}

pub fn run(corpus: &Corpus) -> Result<(Table, Value)> {
    let dir = tempfile::tempdir()?;
    let nodes = start_federation(dir.path(), 3, "name: fed\nfields:\n  text: {type: text}\n");
    let single = Server::start(&dir.path().join("single"), &[]);
    http::create_collection(&single, "fed", corpus.dim, false, 64)?;
    load_federated(&nodes[0], corpus)?;
    http::bulk_load(&single, "fed", corpus, false, 1000, 2)?;
    for node in &nodes {
        node.post_json("/collections/fed/refresh", &json!({}));
    }
    let bodies: Vec<Value> = corpus
        .topics
        .iter()
        .map(|t| sanitize(&t.text))
        .filter(|q| !q.is_empty())
        .map(|q| json!({"query": q, "limit": 10}))
        .collect();
    http::run_queries(&nodes[0], "/cluster/collections/fed/search", &bodies, 1)?;
    let (fed, fed_answers) =
        http::run_queries(&nodes[0], "/cluster/collections/fed/search", &bodies, 1)?;
    let (one, one_answers) = http::run_queries(&single, "/collections/fed/search", &bodies, 1)?;
    let cache = |result: &str| {
        nodes[0].metric(&format!(
            "prism_cluster_stats_cache_total{{result=\"{result}\"}}"
        )) as u64
    };
    let (hits, misses, stale) = (cache("hit"), cache("miss"), cache("stale"));
    let ids = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| h["id"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let same_top10 = fed_answers
        .iter()
        .zip(&one_answers)
        .filter(|(a, b)| ids(a) == ids(b))
        .count();
    let scores = |v: &Value| -> Vec<f64> {
        v["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| h["score"].as_f64().unwrap_or(f64::NAN))
                    .collect()
            })
            .unwrap_or_default()
    };
    let same_scores = fed_answers
        .iter()
        .zip(&one_answers)
        .filter(|(a, b)| {
            let (a, b) = (scores(a), scores(b));
            a.len() == b.len()
                && a.iter()
                    .zip(&b)
                    .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1e-9))
        })
        .count();
    let same_total = fed_answers
        .iter()
        .zip(&one_answers)
        .filter(|(a, b)| a["total"] == b["total"])
        .count();
    let mut table = Table::new(
        format!(
            "Federated search: 3 nodes (mTLS QUIC) vs 1 node, {} ({} docs, {} queries, each run twice; statistics cache on the coordinator: {hits} hits, {misses} misses, {stale} stale), one client",
            corpus.name,
            corpus.docs.len(),
            bodies.len()
        ),
        &[
            "system",
            "QPS",
            "p50 ms",
            "p99 ms",
            "p50 vs 1 node",
            "identical top-10 ids (in order)",
            "top-10 scores within 1e-4",
            "identical total",
        ],
    );
    table.row(vec![
        "1 node: /collections/.../search".into(),
        f(one.qps, 0),
        f(one.p50_ms, 3),
        f(one.p99_ms, 3),
        "1.00x".into(),
        "-".into(),
        "-".into(),
    ]);
    table.row(vec![
        "3 nodes: /cluster/collections/.../search".into(),
        f(fed.qps, 0),
        f(fed.p50_ms, 3),
        f(fed.p99_ms, 3),
        ratio(fed.p50_ms, one.p50_ms),
        format!("{same_top10} of {}", bodies.len()),
        format!("{same_scores} of {}", bodies.len()),
        format!("{same_total} of {}", bodies.len()),
    ]);
    Ok((
        table,
        json!({"corpus": corpus.name, "queries": bodies.len(), "single": one, "federated": fed, "identical_top10": same_top10, "scores_within_1e-4": same_scores, "identical_total": same_total, "stats_cache": {"hit": hits, "miss": misses, "stale": stale}}),
    ))
}
