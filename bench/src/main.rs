//! `prism-bench`: Prism's speed, recall and ranking quality, each side by side with a
//! reference measured on the same machine in the same run. Prints one Markdown table per
//! benchmark and writes `<out>/<benchmark>.json`.
//!
//! `prism-bench all` runs everything on the real data (`../shared/data`, GloVe and
//! Fashion-MNIST from the registries via `bench/setup-python.sh`); `--smoke` runs every
//! code path on tiny generated data in about half a minute, for CI.

mod data;
mod federated;
mod http;
mod ingest;
mod python;
mod relevance;
mod report;
mod restart;
mod serve;
mod targets;
mod text;
mod vector;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};

use report::{mib, ratio, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    All,
    Ingest,
    Text,
    Vector,
    Relevance,
    Restart,
    Federated,
    /// Server CPU per query and per ingested document (utime + stime of the server).
    Serve,
}

#[derive(Debug, Parser)]
#[command(
    name = "prism-bench",
    about = "Prism benchmarks against references, same machine, same run"
)]
struct Args {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "all")]
    bench: Bench,
    /// Tiny generated data, no Python references: checks that every benchmark still runs.
    #[arg(long)]
    smoke: bool,
    /// Where JSON results, runs and prepared vectors go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Vector datasets for the vector benchmark (nave, glove, fashion).
    #[arg(long, value_delimiter = ',', default_value = "nave,glove,fashion")]
    vector_datasets: Vec<String>,
    /// Documents (and vectors) in the restart benchmark.
    #[arg(long, default_value_t = 100_000)]
    restart_docs: usize,
}

/// Where the benchmark runs and what it may use.
pub struct Ctx {
    pub repo: PathBuf,
    pub out: PathBuf,
    pub smoke: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn skipped(title: &str, reason: &str) -> Table {
    eprintln!("SKIPPED {title}: {reason}");
    let mut t = Table::new(format!("{title}: skipped"), &["reason"]);
    t.row(vec![reason.to_string()]);
    t
}

fn run(args: Args) -> Result<()> {
    // The binaries sit next to this one; the test harness must not rebuild them.
    std::env::set_var("PRISM_SKIP_BUILD", "1");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo.join(&args.out)
    };
    let ctx = Ctx {
        repo: repo.clone(),
        out: out.clone(),
        smoke: args.smoke,
    };
    let wants = |b: Bench| args.bench == Bench::All || args.bench == b;
    let corpus = if ctx.smoke {
        Ok(data::synthetic("synthetic-smoke", 2000, 50, 16, 5))
    } else {
        data::load_nave(&repo)
    };
    let mut tables = Vec::new();
    let mut memory = Table::new(
        "Memory: peak RSS of prism-server against the raw data",
        &["run", "raw data", "peak RSS", "RSS / raw"],
    );
    let mut summary = json!({"smoke": ctx.smoke, "machine": machine()});

    if wants(Bench::Ingest) {
        match &corpus {
            Ok(c) => {
                let (t, v) = ingest::run(c, if ctx.smoke { 4000 } else { 150_000 })?;
                if let Some(rss) = v["prism"][1]["peak_rss_bytes"].as_u64() {
                    memory.row(vec![
                        format!("ingest {} with vectors", c.name),
                        mib(c.raw_bytes()),
                        mib(rss),
                        ratio(rss as f64, c.raw_bytes() as f64),
                    ]);
                }
                report::write_json(&out, "ingest", &v)?;
                summary["ingest"] = v;
                tables.push(t);
            }
            Err(reason) => tables.push(skipped("Ingest", reason)),
        }
    }
    if wants(Bench::Text) {
        record(
            &mut tables,
            &mut summary,
            &out,
            "text",
            "Text search",
            &corpus,
            text::run,
        )?;
    }
    if wants(Bench::Vector) {
        let mut table = Table::new(
            format!(
                "Vector search in-process: M={}, ef_construction={}, k=10, one query thread",
                vector::M,
                vector::EF_CONSTRUCTION
            ),
            &[
                "dataset",
                "ef",
                "prism recall@10",
                "prism QPS",
                "prism p99 ms",
                "hnswlib recall@10",
                "hnswlib QPS",
                "faiss recall@10",
                "faiss QPS",
                "QPS vs hnswlib",
            ],
        );
        let mut results = Vec::new();
        let datasets: Vec<String> = if ctx.smoke {
            vec!["smoke".into()]
        } else {
            args.vector_datasets.clone()
        };
        for name in datasets {
            let set = match name.as_str() {
                "smoke" => corpus
                    .as_ref()
                    .map(vector::from_corpus)
                    .map_err(Clone::clone),
                "nave" if python::interpreter(&ctx).is_none() => corpus
                    .as_ref()
                    .map(vector::from_corpus)
                    .map_err(Clone::clone),
                other => vector::prepared(&ctx, other, &[]),
            };
            match set {
                Ok(set) => {
                    let mut v = vector::run_set(&ctx, &set, &mut table)?;
                    if matches!(name.as_str(), "nave" | "smoke") {
                        if let Ok(c) = &corpus {
                            let h = vector::run_http(c, &set)?;
                            let lat = &h["latency"];
                            table.row(vec![
                                format!("{} over HTTP", set.name),
                                "64".into(),
                                report::f(h["recall_at_10"].as_f64().unwrap_or(0.0), 3),
                                report::f(lat["qps"].as_f64().unwrap_or(0.0), 0),
                                report::f(lat["p99_ms"].as_f64().unwrap_or(0.0), 3),
                                "-".into(),
                                "-".into(),
                                "-".into(),
                                "-".into(),
                                "-".into(),
                            ]);
                            if let Some(rss) = h["peak_rss_bytes"].as_u64() {
                                memory.row(vec![
                                    format!("serving {} vectors", set.name),
                                    mib(c.raw_bytes()),
                                    mib(rss),
                                    ratio(rss as f64, c.raw_bytes() as f64),
                                ]);
                            }
                            v["http"] = h;
                        }
                    }
                    results.push(v);
                }
                Err(reason) => {
                    eprintln!("SKIPPED vector dataset {name}: {reason}");
                    table.row(vec![
                        format!("{name}: skipped ({reason})"),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
            }
        }
        let v = json!({"results": results});
        report::write_json(&out, "vector", &v)?;
        summary["vector"] = v;
        tables.push(table);
    }
    if wants(Bench::Relevance) {
        record(
            &mut tables,
            &mut summary,
            &out,
            "relevance",
            "Relevance",
            &corpus,
            |c| relevance::run(&ctx, c),
        )?;
    }
    if wants(Bench::Restart) {
        let (docs, dim) = if ctx.smoke {
            (3000, 16)
        } else {
            (args.restart_docs, 384)
        };
        let (t, v) = restart::run(docs, dim)?;
        if let (Some(rss), Some(raw)) = (v["peak_rss_bytes"].as_u64(), v["raw_bytes"].as_u64()) {
            memory.row(vec![
                format!("restart set ({docs} docs + vectors)"),
                mib(raw),
                mib(rss),
                ratio(rss as f64, raw as f64),
            ]);
        }
        report::write_json(&out, "restart", &v)?;
        summary["restart"] = v;
        tables.push(t);
    }
    if wants(Bench::Federated) {
        record(
            &mut tables,
            &mut summary,
            &out,
            "federated",
            "Federated search",
            &corpus,
            federated::run,
        )?;
    }
    if wants(Bench::Serve) {
        let smoke = ctx.smoke;
        record(
            &mut tables,
            &mut summary,
            &out,
            "serve",
            "Server CPU per operation",
            &corpus,
            |c| serve::run(c, smoke),
        )?;
    }
    if !memory.rows.is_empty() {
        tables.push(memory);
    }
    if args.bench == Bench::All {
        tables.push(targets::table(&summary));
    }
    report::write_json(&out, "summary", &summary)?;
    for t in &tables {
        println!("{}", t.render());
    }
    Ok(())
}

/// Runs a benchmark that needs the corpus, writes its JSON and keeps its table; without the
/// corpus, keeps a table that says why it was skipped.
fn record(
    tables: &mut Vec<Table>,
    summary: &mut Value,
    out: &std::path::Path,
    name: &str,
    title: &str,
    corpus: &Result<data::Corpus, String>,
    run: impl FnOnce(&data::Corpus) -> Result<(Table, Value)>,
) -> Result<()> {
    match corpus {
        Ok(c) => {
            let (table, value) = run(c)?;
            report::write_json(out, name, &value)?;
            summary[name] = value;
            tables.push(table);
        }
        Err(reason) => tables.push(skipped(title, reason)),
    }
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)})
}
