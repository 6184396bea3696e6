//! Ingest: documents per second through the HTTP bulk route with durability on, against raw
//! tantivy indexing the same documents with the same analyzer in-process, committing once.

use std::time::Instant;

use anyhow::Result;
use prism_tests::Server;
use serde_json::{json, Value};
use tantivy::schema::{Schema, TextFieldIndexing, TextOptions, STORED, STRING};
use tantivy::{doc, Index};

use crate::data::Corpus;
use crate::http;
use crate::report::{f, mib, ratio, Table};

/// Raw tantivy: the text field with Prism's `en` analyzer and the id, committed once.
pub fn raw_tantivy_docs_per_sec(corpus: &Corpus) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut builder = Schema::builder();
    let id = builder.add_text_field("id", STRING | STORED);
    let text = builder.add_text_field(
        "text",
        TextOptions::default()
            .set_indexing_options(TextFieldIndexing::default().set_tokenizer("en"))
            .set_stored(),
    );
    let index = Index::create_in_dir(dir.path(), builder.build())?;
    prism_core::analysis::register(index.tokenizers());
    let started = Instant::now();
    let mut writer: tantivy::IndexWriter = index.writer(128 << 20)?;
    for d in &corpus.docs {
        writer.add_document(doc!(id => d.id.as_str(), text => d.text.as_str()))?;
    }
    writer.commit()?;
    writer.wait_merging_threads()?;
    Ok(corpus.docs.len() as f64 / started.elapsed().as_secs_f64())
}

pub fn run(original: &Corpus, min_docs: usize) -> Result<(Table, Value)> {
    let text_corpus = original.replicated(min_docs);
    let corpus = &text_corpus;
    let raw = raw_tantivy_docs_per_sec(corpus)?;
    let mut results = Vec::new();
    let mut table = Table::new(
        format!(
            "Ingest: {} ({} docs), HTTP bulk route, 2 clients, batches of 1000, fsync on",
            corpus.name,
            corpus.docs.len()
        ),
        &[
            "system",
            "fields",
            "docs/s",
            "vs raw tantivy",
            "server CPU µs/doc",
            "peak RSS",
            "on disk after the load",
            "on disk at rest",
        ],
    );
    table.row(vec![
        "raw tantivy (in-process, one commit)".into(),
        "text".into(),
        f(raw, 0),
        "1.00x".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    for with_vectors in [false, true] {
        // Vectors go in once: HNSW inserts make the replicated corpus needlessly slow.
        let corpus = if with_vectors { original } else { corpus };
        let dir = tempfile::tempdir()?;
        let mut server = Server::start(&dir.path().join("data"), &[]);
        http::create_collection(&server, "ingest", corpus.dim, with_vectors, 64)?;
        let cpu_before = crate::serve::server_cpu(&server)?;
        let wall = http::bulk_load(&server, "ingest", corpus, with_vectors, 1000, 2)?;
        let cpu_us = (crate::serve::server_cpu(&server)? - cpu_before).as_secs_f64() * 1e6
            / corpus.docs.len() as f64;
        let rate = corpus.docs.len() as f64 / wall.as_secs_f64();
        let rss = server.peak_rss_bytes().unwrap_or(0);
        let size = prism_core::shard::dir_size(&dir.path().join("data"));
        // At rest: a clean stop takes the last checkpoints and purges the log they cover.
        server.stop();
        let size_at_rest = prism_core::shard::dir_size(&dir.path().join("data"));
        let fields = if with_vectors {
            format!("text + {}-d vector", corpus.dim)
        } else {
            "text".into()
        };
        table.row(vec![
            "prism (HTTP, durable)".into(),
            fields.clone(),
            f(rate, 0),
            if with_vectors {
                "n/a (tantivy has no vectors)".into()
            } else {
                ratio(rate, raw)
            },
            f(cpu_us, 1),
            mib(rss),
            mib(size),
            mib(size_at_rest),
        ]);
        results.push(json!({"fields": fields, "docs_per_sec": rate, "server_cpu_us_per_doc": cpu_us, "peak_rss_bytes": rss, "disk_bytes": size, "disk_bytes_at_rest": size_at_rest, "raw_bytes": corpus.raw_bytes(), "ratio_vs_raw_tantivy": if with_vectors { Value::Null } else { json!(rate / raw) }}));
    }
    Ok((
        table,
        json!({"corpus": corpus.name, "docs": corpus.docs.len(), "raw_tantivy_docs_per_sec": raw, "prism": results}),
    ))
}
