//! Relevance: nDCG@10, AP@100 and R@100 of Prism's BM25, vector and hybrid search on nave-kjv,
//! against bm25s, evaluated by ir_measures.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::Corpus;
use crate::report::{f, Table};
use crate::text::sanitize;
use crate::{http, python, Ctx};

/// The methods compared, each a function from a topic to a search body.
fn methods() -> Vec<(&'static str, Value)> {
    vec![
        ("prism-bm25", json!({})),
        ("prism-vector", json!({})),
        (
            "prism-hybrid-rrf-k60",
            json!({"strategy": "rrf", "rrf_k": 60}),
        ),
        (
            "prism-hybrid-weighted-0.5",
            json!({"strategy": "weighted", "text_weight": 0.5, "vector_weight": 0.5}),
        ),
        (
            "prism-hybrid-weighted-0.7",
            json!({"strategy": "weighted", "text_weight": 0.7, "vector_weight": 0.3}),
        ),
        (
            "prism-hybrid-weighted-0.8",
            json!({"strategy": "weighted", "text_weight": 0.8, "vector_weight": 0.2}),
        ),
    ]
}

fn body(method: &str, hybrid: &Value, text: &str, vector: &Option<Vec<f32>>) -> Value {
    match method {
        "prism-bm25" => json!({"query": text, "limit": 100}),
        "prism-vector" => json!({"vector": vector, "limit": 100}),
        _ => json!({"query": text, "vector": vector, "hybrid": hybrid, "limit": 100}),
    }
}

pub fn run(ctx: &Ctx, corpus: &Corpus) -> Result<(Table, Value)> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("data"), &[]);
    // A wide ef: this benchmark measures ranking quality, so the vector list should be
    // close to exact (the vector benchmark measures the speed/recall trade-off).
    http::create_collection(&server, "rel", corpus.dim, true, 512)?;
    http::bulk_load(&server, "rel", corpus, true, 1000, 2)?;
    let runs_dir = ctx.out.join("runs");
    std::fs::create_dir_all(&runs_dir)?;
    let mut runs: Vec<(String, PathBuf)> = Vec::new();
    for (method, hybrid) in methods() {
        let topics: Vec<_> = corpus
            .topics
            .iter()
            .filter(|t| !sanitize(&t.text).is_empty())
            .collect();
        let bodies: Vec<Value> = topics
            .iter()
            .map(|t| body(method, &hybrid, &sanitize(&t.text), &t.vector))
            .collect();
        let (_, responses) = http::run_queries(&server, "/collections/rel/search", &bodies, 2)?;
        let mut trec = String::new();
        for (topic, response) in topics.iter().zip(&responses) {
            for (rank, hit) in response["results"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let _ = writeln!(
                    trec,
                    "{} Q0 {} {} {} {method}",
                    topic.qid,
                    hit["id"].as_str().unwrap_or_default(),
                    rank + 1,
                    hit["score"]
                );
            }
        }
        let path = runs_dir.join(format!("{method}.trec"));
        std::fs::write(&path, trec)?;
        runs.push((method.to_string(), path));
    }
    let mut table = Table::new(
        format!(
            "Relevance: {} ({} topics), ir_measures",
            corpus.name,
            corpus.topics.len()
        ),
        &["method", "nDCG@10", "AP@100", "R@100"],
    );
    let Some(qrels) = &corpus.qrels else {
        table.row(vec![
            "(no relevance judgments for this corpus: runs written, not evaluated)".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        return Ok((
            table,
            json!({"corpus": corpus.name, "skipped": "no qrels", "runs": runs.iter().map(|r| r.1.display().to_string()).collect::<Vec<_>>()}),
        ));
    };
    if python::interpreter(ctx).is_none() {
        table.row(vec![
            "(evaluation skipped: run bench/setup-python.sh to install ir_measures)".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        return Ok((
            table,
            json!({"corpus": corpus.name, "skipped": "python references not installed"}),
        ));
    }
    let bm25s = runs_dir.join("bm25s.trec");
    python::refs(
        ctx,
        &["bm25".into(), "--out".into(), bm25s.display().to_string()],
    )?;
    let mut args = vec![
        "evaluate".to_string(),
        "--qrels".into(),
        qrels.display().to_string(),
        "--run".into(),
        format!("bm25s={}", bm25s.display()),
    ];
    for (name, path) in &runs {
        args.push("--run".into());
        args.push(format!("{name}={}", path.display()));
    }
    let evaluation = python::refs(ctx, &args)?;
    for name in std::iter::once("bm25s".to_string()).chain(runs.iter().map(|r| r.0.clone())) {
        let m = &evaluation["runs"][&name];
        let cell = |k: &str| m[k].as_f64().map_or("-".into(), |x| f(x, 4));
        table.row(vec![
            name.clone(),
            cell("nDCG@10"),
            cell("AP@100"),
            cell("R@100"),
        ]);
    }
    Ok((
        table,
        json!({"corpus": corpus.name, "evaluation": evaluation}),
    ))
}
