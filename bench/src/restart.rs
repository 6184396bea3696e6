//! Restart: time from process start to serving for a collection of N documents with N
//! vectors, after a clean stop (SIGTERM) and after SIGKILL right after acknowledged writes.

use anyhow::{bail, Result};
use prism_tests::Server;
use serde_json::{json, Value};

use crate::data::{synthetic, Corpus};
use crate::http;
use crate::report::{f, mib, Table};

fn count(server: &Server) -> u64 {
    http::total(server, "restart")
}

pub fn run(docs: usize, dim: usize) -> Result<(Table, Value)> {
    let corpus = synthetic("synthetic", docs, 0, dim, 11);
    let tail = synthetic("tail", docs / 10, 0, dim, 12);
    let tail = Corpus {
        docs: tail
            .docs
            .into_iter()
            .map(|mut d| {
                d.id = format!("tail-{}", d.id);
                d
            })
            .collect(),
        ..tail
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // No vector checkpoint during the run: the SIGKILL case then replays every vector written
    // since the clean stop, the worst case for the default 10 s checkpoint interval.
    let mut server = Server::start(
        &data,
        &[
            ("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", "3600000"),
            ("PRISM_VECTOR_CHECKPOINT_VECTORS", "1000000000"),
        ],
    );
    http::create_collection(&server, "restart", dim, true, 64)?;
    let load = http::bulk_load(&server, "restart", &corpus, true, 1000, 2)?;
    let serving_rss = server.peak_rss_bytes().unwrap_or(0);
    server.stop();
    let clean = server.start_again_timed();
    if count(&server) != docs as u64 {
        bail!(
            "after a clean restart {} of {docs} documents are searchable",
            count(&server)
        );
    }
    // Acknowledged writes still in the log only: SIGKILL before the next vector checkpoint.
    http::bulk_load(&server, "restart", &tail, true, 1000, 2)?;
    server.kill();
    let crashed = server.start_again_timed();
    let expected = (docs + tail.docs.len()) as u64;
    if count(&server) != expected {
        bail!(
            "after SIGKILL {} of {expected} documents are searchable",
            count(&server)
        );
    }
    let size = prism_core::shard::dir_size(&data);
    let mut table = Table::new(
        format!("Restart: {docs} documents with {docs} vectors of {dim} dimensions"),
        &[
            "case",
            "port answers",
            "time to serve",
            "documents",
            "data on disk",
            "peak RSS while loading",
        ],
    );
    table.row(vec![
        "clean stop (SIGTERM), reopen".into(),
        format!("{} s", f(clean.listening.as_secs_f64(), 2)),
        format!("{} s", f(clean.ready.as_secs_f64(), 2)),
        docs.to_string(),
        mib(size),
        mib(serving_rss),
    ]);
    table.row(vec![
        format!(
            "SIGKILL after {} more acknowledged writes, replay",
            tail.docs.len()
        ),
        format!("{} s", f(crashed.listening.as_secs_f64(), 2)),
        format!("{} s", f(crashed.ready.as_secs_f64(), 2)),
        expected.to_string(),
        mib(size),
        "-".into(),
    ]);
    Ok((
        table,
        json!({"docs": docs, "dim": dim, "load_s": load.as_secs_f64(), "clean_restart_s": clean.ready.as_secs_f64(), "sigkill_restart_s": crashed.ready.as_secs_f64(), "clean_listening_s": clean.listening.as_secs_f64(), "sigkill_listening_s": crashed.listening.as_secs_f64(), "sigkill_tail_docs": tail.docs.len(), "disk_bytes": size, "peak_rss_bytes": serving_rss, "raw_bytes": corpus.raw_bytes()}),
    ))
}
