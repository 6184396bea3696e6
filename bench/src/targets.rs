//! The performance targets of issue #10, each beside the figure this run measured, from the
//! other benchmarks' JSON. A target whose benchmark did not run says so.

use serde_json::Value;

use crate::report::{f, Table};

/// RediSearch 2.10.5 figures on this machine (issue #10, nave-kjv, server CPU per query).
const REDIS_PEAK_RSS_MIB: f64 = 154.0;
const REDIS_DISK_MIB: f64 = 51.5;
/// BM25 nDCG@10 on nave-kjv before issue #10: relevance must stay within 0.002 of it.
const NDCG_BEFORE: f64 = 0.486;

/// Whether a higher or a lower figure is better.
#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
}

struct Target {
    name: String,
    measured: Option<f64>,
    goal: f64,
    better: Better,
    unit: &'static str,
}

fn mib(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| b as f64 / (1u64 << 20) as f64)
}

fn serve_cpu(summary: &Value, workload: &str) -> Option<f64> {
    summary["serve"]["rows"]
        .as_array()?
        .iter()
        .find(|r| r["workload"] == workload)?["server_cpu_us"]
        .as_f64()
}

/// The in-process QPS of Prism over hnswlib's at `ef` on `dataset`.
fn vector_ratio(summary: &Value, dataset: &str, ef: u64) -> Option<f64> {
    let set = summary["vector"]["results"].as_array()?.iter().find(|s| {
        s["dataset"]
            .as_str()
            .is_some_and(|d| d.starts_with(dataset))
    })?;
    let row = set["results"].as_array()?.iter().find(|r| r["ef"] == ef)?;
    Some(row["prism"]["latency"]["qps"].as_f64()? / row["hnswlib"]["qps"].as_f64()?)
}

/// hnswlib's build time over Prism's on `dataset` (above 1: Prism builds faster).
fn build_ratio(summary: &Value, dataset: &str) -> Option<f64> {
    let set = summary["vector"]["results"].as_array()?.iter().find(|s| {
        s["dataset"]
            .as_str()
            .is_some_and(|d| d.starts_with(dataset))
    })?;
    let hnswlib = set["results"][0]["hnswlib"]["build_s"].as_f64()?;
    Some(hnswlib / set["prism_build_s"].as_f64()?)
}

fn targets(summary: &Value) -> Vec<Target> {
    let lower = |name: &str, measured: Option<f64>, goal: f64, unit| Target {
        name: name.into(),
        measured,
        goal,
        better: Better::Lower,
        unit,
    };
    let higher = |name: &str, measured: Option<f64>, goal: f64, unit| Target {
        name: name.into(),
        measured,
        goal,
        better: Better::Higher,
        unit,
    };
    let mut all = vec![
        lower(
            "1. server CPU, text BM25 top 10",
            serve_cpu(summary, "text, BM25 top 10"),
            80.0,
            "µs",
        ),
        lower(
            "1. server CPU, vector top 10, ef 64",
            serve_cpu(summary, "vector top 10, ef 64"),
            312.0,
            "µs",
        ),
        lower(
            "1. server CPU, vector top 10, ef 128",
            serve_cpu(summary, "vector top 10, ef 128"),
            436.0,
            "µs",
        ),
        lower(
            "1. server CPU, hybrid RRF window 100",
            serve_cpu(summary, "hybrid RRF, window 100"),
            600.0,
            "µs",
        ),
        lower(
            "1. server CPU, ingest with vectors, per document",
            serve_cpu(
                summary,
                "ingest with vectors, per document (1 client, batches of 1000)",
            ),
            384.0,
            "µs",
        ),
    ];
    for dataset in ["nave", "glove", "fashion"] {
        for ef in [32, 64, 128] {
            all.push(higher(
                &format!("2. in-process vector QPS / hnswlib's, {dataset} ef {ef}"),
                vector_ratio(summary, dataset, ef),
                1.0,
                "×",
            ));
        }
        all.push(higher(
            &format!("2. HNSW build speed / hnswlib's, {dataset}"),
            build_ratio(summary, dataset),
            1.0,
            "×",
        ));
    }
    let hybrid_over_lists = match (
        serve_cpu(summary, "hybrid RRF, window 100"),
        serve_cpu(summary, "text, BM25 top 100"),
        serve_cpu(summary, "vector top 100, ef 64"),
    ) {
        (Some(h), Some(t), Some(v)) => Some(h / (t + v)),
        _ => None,
    };
    all.push(lower(
        "3. hybrid window 100 / (text top 100 + vector top 100)",
        hybrid_over_lists,
        1.05,
        "×",
    ));
    // The vector benchmark's HTTP run: one collection of nave-kjv with its vectors, loaded
    // and searched, as RediSearch's one index was (the serve benchmark holds two).
    let peak_rss = summary["vector"]["results"].as_array().and_then(|sets| {
        sets.iter()
            .find_map(|s| s["http"]["peak_rss_bytes"].as_u64())
    });
    all.push(lower(
        "4. peak RSS loading and searching nave-kjv (RediSearch 154 MiB × 1.2)",
        mib(peak_rss),
        REDIS_PEAK_RSS_MIB * 1.2,
        "MiB",
    ));
    let with_vectors = &summary["ingest"]["prism"][1];
    all.push(lower(
        "4. on disk at rest after the ingest with vectors (RediSearch 51.5 MiB × 1.2)",
        mib(with_vectors["disk_bytes_at_rest"].as_u64()),
        REDIS_DISK_MIB * 1.2,
        "MiB",
    ));
    all.push(lower(
        "4. on disk at rest / raw data (text + f32 vectors)",
        match (
            with_vectors["disk_bytes_at_rest"].as_f64(),
            with_vectors["raw_bytes"].as_f64(),
        ) {
            (Some(d), Some(r)) if r > 0.0 => Some(d / r),
            _ => None,
        },
        1.2,
        "×",
    ));
    all.push(lower(
        "5. restart after SIGKILL, 10% of the vectors to replay: ready",
        summary["restart"]["sigkill_restart_s"].as_f64(),
        5.0,
        "s",
    ));
    all.push(lower(
        "5. restart after SIGKILL: port answers",
        summary["restart"]["sigkill_listening_s"].as_f64(),
        1.0,
        "s",
    ));
    all.push(higher(
        "6. durable ingest / raw tantivy (text, fsync on)",
        summary["ingest"]["prism"][0]["ratio_vs_raw_tantivy"].as_f64(),
        0.5,
        "×",
    ));
    all.push(lower(
        "7. server CPU, vector ef 64, base64 query / JSON array query",
        match (
            serve_cpu(summary, "vector top 10, ef 64, base64 query"),
            serve_cpu(summary, "vector top 10, ef 64"),
        ) {
            (Some(b), Some(j)) => Some(b / j),
            _ => None,
        },
        1.0,
        "×",
    ));
    let bm25 = summary["relevance"]["evaluation"]["runs"]["prism-bm25"]["nDCG@10"].as_f64();
    all.push(higher(
        "relevance: BM25 nDCG@10 (before: 0.486, may drop 0.002)",
        bm25,
        NDCG_BEFORE - 0.002,
        "",
    ));
    all
}

/// One row per target: the figure, the goal, the ratio (above 1 is worse for "lower is
/// better" targets, below 1 worse for the others) and whether it is met.
pub fn table(summary: &Value) -> Table {
    let mut table = Table::new(
        "Targets of issue #10: this run's figures beside them",
        &["target", "measured", "goal", "measured / goal", "met"],
    );
    for t in targets(summary) {
        let (measured, ratio, met) = match t.measured {
            Some(m) => {
                let met = match t.better {
                    Better::Lower => m <= t.goal,
                    Better::Higher => m >= t.goal,
                };
                (
                    format!("{} {}", f(m, digits(m)), t.unit),
                    format!("{:.2}", m / t.goal),
                    if met { "yes" } else { "no" }.to_string(),
                )
            }
            None => ("not run".into(), "-".into(), "-".into()),
        };
        let goal = match t.better {
            Better::Lower => format!("≤ {} {}", f(t.goal, digits(t.goal)), t.unit),
            Better::Higher => format!("≥ {} {}", f(t.goal, digits(t.goal)), t.unit),
        };
        table.row(vec![t.name, measured, goal, ratio, met]);
    }
    table
}

fn digits(x: f64) -> usize {
    if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        3
    }
}
