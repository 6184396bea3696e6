//! Vector search: recall@10 against exact brute force, QPS and latency at three `ef_search`
//! settings, for Prism's vector index in-process (and over HTTP for nave-kjv), side by side
//! with hnswlib and faiss at the same M, ef_construction and ef.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use prism_core::schema::{Distance, VectorParams};
use prism_core::vector::VectorIndex;
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::{read_npy, Corpus, Matrix};
use crate::report::{f, ratio, Latency, Table};
use crate::{http, python, Ctx};

pub const M: usize = 16;
pub const EF_CONSTRUCTION: usize = 200;
pub const EFS: [usize; 3] = [32, 64, 128];

/// Base vectors, queries and exact top-10 neighbours (row indexes).
pub struct VectorSet {
    pub name: String,
    pub base: Matrix,
    pub queries: Matrix,
    pub truth: Vec<Vec<u32>>,
    pub distance: Distance,
    /// The `refs.py --data` prefix, when the Python side prepared it.
    pub prefix: Option<String>,
}

fn exact_truth(base: &Matrix, queries: &Matrix, distance: Distance) -> Vec<Vec<u32>> {
    let rows: Vec<usize> = (0..queries.rows).collect();
    let chunks: Vec<&[usize]> = rows.chunks(queries.rows.div_ceil(2).max(1)).collect();
    let mut out = vec![Vec::new(); queries.rows];
    let parts: Vec<Vec<(usize, Vec<u32>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&q| {
                            let query = queries.row(q);
                            let mut scored: Vec<(f32, u32)> = (0..base.rows)
                                .map(|i| {
                                    (
                                        prism_core::vector::distance(distance, query, base.row(i)),
                                        i as u32,
                                    )
                                })
                                .collect();
                            let nth = 10.min(scored.len() - 1);
                            scored.select_nth_unstable_by(nth, |a, b| a.0.total_cmp(&b.0));
                            scored.truncate(10);
                            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
                            (q, scored.into_iter().map(|s| s.1).collect())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (q, ids) in parts.into_iter().flatten() {
        out[q] = ids;
    }
    out
}

/// Loads a vector set prepared by `refs.py prepare-vectors`, asking it to prepare first.
pub fn prepared(ctx: &Ctx, dataset: &str, extra: &[&str]) -> Result<VectorSet, String> {
    let dir = ctx.out.join("vectors");
    let mut args = vec![
        "prepare-vectors".to_string(),
        "--dataset".into(),
        dataset.into(),
        "--out".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let answer = python::refs(ctx, &args).map_err(|e| format!("{e:#}"))?;
    if let Some(reason) = answer.get("skipped") {
        return Err(format!(
            "{dataset}: {}",
            reason.as_str().unwrap_or_default()
        ));
    }
    let prefix = dir.join(dataset);
    let load = |suffix: &str| {
        read_npy(Path::new(&format!("{}.{suffix}.npy", prefix.display())))
            .map_err(|e| format!("{e:#}"))
    };
    let base = load("base")?;
    let queries = load("queries")?;
    let gt = load("gt")?;
    let meta: Value = std::fs::read(format!("{}.json", prefix.display()))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let distance = if meta["metric"] == "l2" {
        Distance::L2
    } else {
        Distance::Cosine
    };
    let truth = (0..gt.rows)
        .map(|r| gt.row(r)[..10].iter().map(|x| *x as u32).collect())
        .collect();
    Ok(VectorSet {
        name: dataset.into(),
        base,
        queries,
        truth,
        distance,
        prefix: Some(prefix.display().to_string()),
    })
}

/// A vector set from a corpus's document and topic embeddings, with truth computed here.
pub fn from_corpus(corpus: &Corpus) -> VectorSet {
    let to_matrix = |rows: Vec<&Vec<f32>>| Matrix {
        rows: rows.len(),
        cols: corpus.dim,
        data: rows.into_iter().flatten().copied().collect(),
    };
    let base = to_matrix(
        corpus
            .docs
            .iter()
            .filter_map(|d| d.vector.as_ref())
            .collect(),
    );
    let queries = to_matrix(
        corpus
            .topics
            .iter()
            .filter_map(|t| t.vector.as_ref())
            .collect(),
    );
    let truth = exact_truth(&base, &queries, Distance::Cosine);
    VectorSet {
        name: corpus.name.clone(),
        base,
        queries,
        truth,
        distance: Distance::Cosine,
        prefix: None,
    }
}

fn recall(found: &[u64], truth: &[u32]) -> f64 {
    let hits = found
        .iter()
        .filter(|k| truth.contains(&(**k as u32)))
        .count();
    hits as f64 / truth.len().max(1) as f64
}

/// Builds Prism's index with two threads; returns it and the build time in seconds.
pub fn build(set: &VectorSet) -> Result<(VectorIndex, f64)> {
    let params = VectorParams {
        dimension: set.base.cols,
        distance: set.distance,
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ef_search: 64,
    };
    let index = VectorIndex::new(params)?;
    let started = Instant::now();
    let half = set.base.rows / 2;
    std::thread::scope(|scope| -> Result<()> {
        let a = scope.spawn(|| (0..half).try_for_each(|i| index.add(i as u64, set.base.row(i))));
        let b = scope
            .spawn(|| (half..set.base.rows).try_for_each(|i| index.add(i as u64, set.base.row(i))));
        a.join().expect("builder thread")?;
        b.join().expect("builder thread")?;
        Ok(())
    })?;
    Ok((index, started.elapsed().as_secs_f64()))
}

/// Single-threaded queries at one ef: (recall@10, latency).
pub fn measure(index: &VectorIndex, set: &VectorSet, ef: usize) -> Result<(f64, Latency)> {
    index.set_ef_search(ef);
    let mut times = Vec::with_capacity(set.queries.rows);
    let mut total_recall = 0.0;
    let started = Instant::now();
    for q in 0..set.queries.rows {
        let t = Instant::now();
        let hits = index.search(set.queries.row(q), 10, |_| true)?;
        times.push(t.elapsed());
        let keys: Vec<u64> = hits.iter().map(|h| h.0).collect();
        total_recall += recall(&keys, &set.truth[q]);
    }
    Ok((
        total_recall / set.queries.rows as f64,
        Latency::from(times, started.elapsed()),
    ))
}

fn reference(ctx: &Ctx, set: &VectorSet) -> Vec<Value> {
    let Some(prefix) = &set.prefix else {
        return Vec::new();
    };
    let efs = EFS
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let args: Vec<String> = [
        "hnsw",
        "--data",
        prefix,
        "--m",
        &M.to_string(),
        "--ef-construction",
        &EF_CONSTRUCTION.to_string(),
        "--ef",
        &efs,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match python::refs(ctx, &args) {
        Ok(v) => v["results"].as_array().cloned().unwrap_or_default(),
        Err(e) => {
            eprintln!("reference HNSW skipped: {e:#}");
            Vec::new()
        }
    }
}

/// Runs the in-process comparison for one set.
pub fn run_set(ctx: &Ctx, set: &VectorSet, table: &mut Table) -> Result<Value> {
    let (index, build_s) = build(set)?;
    let refs = reference(ctx, set);
    let lookup = |lib: &str, ef: usize| {
        refs.iter()
            .find(|r| r["lib"] == lib && r["ef"] == ef)
            .cloned()
    };
    let mut rows = Vec::new();
    for ef in EFS {
        let (rec, lat) = measure(&index, set, ef)?;
        let hnswlib = lookup("hnswlib", ef);
        let faiss = lookup("faiss", ef);
        let cell = |r: &Option<Value>, key: &str, digits: usize| {
            r.as_ref()
                .and_then(|v| v[key].as_f64())
                .map_or("-".into(), |x| f(x, digits))
        };
        let ref_qps = hnswlib
            .as_ref()
            .and_then(|v| v["qps"].as_f64())
            .unwrap_or(0.0);
        table.row(vec![
            format!("{} ({}x{})", set.name, set.base.rows, set.base.cols),
            ef.to_string(),
            f(rec, 3),
            f(lat.qps, 0),
            f(lat.p99_ms, 3),
            cell(&hnswlib, "recall_at_10", 3),
            cell(&hnswlib, "qps", 0),
            cell(&faiss, "recall_at_10", 3),
            cell(&faiss, "qps", 0),
            ratio(lat.qps, ref_qps),
        ]);
        rows.push(json!({"ef": ef, "prism": {"recall_at_10": rec, "latency": lat}, "hnswlib": hnswlib, "faiss": faiss}));
    }
    Ok(
        json!({"dataset": set.name, "n": set.base.rows, "dim": set.base.cols, "prism_build_s": build_s, "results": rows}),
    )
}

/// Prism over HTTP on a corpus's embeddings, at the collection's ef_search of 64.
pub fn run_http(corpus: &Corpus, set: &VectorSet) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("data"), &[]);
    http::create_collection(&server, "vectors", corpus.dim, true, 64)?;
    http::bulk_load(&server, "vectors", corpus, true, 1000, 2)?;
    let bodies: Vec<Value> = corpus
        .topics
        .iter()
        .map(|t| json!({"vector": t.vector, "limit": 10}))
        .collect();
    let (lat, responses) = http::run_queries(&server, "/collections/vectors/search", &bodies, 1)?;
    let index_of: std::collections::HashMap<&str, u32> = corpus
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i as u32))
        .collect();
    let mut total = 0.0;
    for (q, response) in responses.iter().enumerate() {
        let found: Vec<u64> = response["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| {
                        h["id"]
                            .as_str()
                            .and_then(|id| index_of.get(id))
                            .map(|i| *i as u64)
                    })
                    .collect()
            })
            .unwrap_or_default();
        total += recall(&found, &set.truth[q]);
    }
    if responses.is_empty() {
        bail!("no queries");
    }
    Ok(
        json!({"ef": 64, "recall_at_10": total / responses.len() as f64, "latency": lat, "peak_rss_bytes": server.peak_rss_bytes()}),
    )
}
