//! Human-readable rendering of server responses.

use std::io::{self, Write};

use serde_json::{Map, Value};

use crate::client::{CollectionSummary, SearchResponse};

/// Longest field preview shown per search hit.
const PREVIEW_CHARS: usize = 100;
/// Ids longer than this are not used to widen the id column.
const MAX_ID_WIDTH: usize = 32;
/// Numeric arrays longer than this (embeddings) are summarised, not printed.
const MAX_INLINE_NUMBERS: usize = 8;

/// Formats a byte count with binary units, e.g. `1.2 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Also step up when rounding to one decimal would print "1024.0".
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Shortens `text` to at most `max` characters, marking the cut with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One-line `key=value` summary of a document's fields.
pub fn preview_fields(fields: &Map<String, Value>, max: usize) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{key}={}", preview_value(value)))
        .collect();
    truncate(&parts.join(" "), max)
}

fn preview_value(value: &Value) -> String {
    match value {
        Value::Array(items)
            if items.len() > MAX_INLINE_NUMBERS && items.iter().all(Value::is_number) =>
        {
            format!("[{} numbers]", items.len())
        }
        // Compact JSON keeps strings quoted and newlines escaped, so one line.
        other => other.to_string(),
    }
}

pub fn write_json(out: &mut impl Write, value: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

pub fn write_search(out: &mut impl Write, response: &SearchResponse) -> io::Result<()> {
    let rank_width = response.results.len().to_string().len();
    let scores: Vec<String> = response
        .results
        .iter()
        .map(|hit| format!("{:.4}", hit.score))
        .collect();
    let score_width = scores.iter().map(String::len).max().unwrap_or(0);
    let id_width = response
        .results
        .iter()
        .map(|hit| hit.id.chars().count())
        .filter(|&len| len <= MAX_ID_WIDTH)
        .max()
        .unwrap_or(0);
    for (index, (hit, score)) in response.results.iter().zip(&scores).enumerate() {
        let preview = preview_fields(&hit.fields, PREVIEW_CHARS);
        let line = format!(
            "{:>rank_width$}  {score:>score_width$}  {:<id_width$}  {preview}",
            index + 1,
            hit.id,
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(
        out,
        "{} of {} results in {} ms",
        response.results.len(),
        response.total,
        response.latency_ms
    )
}

pub fn write_collections(
    out: &mut impl Write,
    collections: &[CollectionSummary],
) -> io::Result<()> {
    if collections.is_empty() {
        return writeln!(out, "no collections");
    }
    let rows: Vec<[String; 4]> = collections
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                c.num_docs.to_string(),
                human_size(c.size_bytes),
                c.shards.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "DOCS", "SIZE", "SHARDS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let [w0, w1, w2, w3] = widths;
    writeln!(
        out,
        "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
        header[0], header[1], header[2], header[3]
    )?;
    for [name, docs, size, shards] in &rows {
        writeln!(out, "{name:<w0$}  {docs:>w1$}  {size:>w2$}  {shards:>w3$}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SearchHit;
    use serde_json::json;

    #[test]
    fn human_size_uses_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(4567), "4.5 KiB");
        assert_eq!(human_size(1_258_291), "1.2 MiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        // Just below 1 MiB must not render as "1024.0 KiB".
        assert_eq!(human_size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 10), "abcdefghij");
        assert_eq!(truncate("abcdefghijk", 10), "abcdefghi…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn preview_is_one_line_and_summarises_vectors() {
        let fields = json!({
            "title": "line one\nline two",
            "year": 2001,
            "embedding": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "tags": ["a", "b"],
        });
        let preview = preview_fields(fields.as_object().unwrap(), 200);
        assert_eq!(
            preview,
            r#"title="line one\nline two" year=2001 embedding=[9 numbers] tags=["a","b"]"#
        );
        assert!(preview_fields(fields.as_object().unwrap(), 20).ends_with('…'));
        assert_eq!(
            preview_fields(fields.as_object().unwrap(), 20)
                .chars()
                .count(),
            20
        );
    }

    #[test]
    fn search_listing_aligns_columns() {
        let response = SearchResponse {
            results: vec![
                SearchHit {
                    id: "doc1".into(),
                    score: 12.34567,
                    fields: json!({"title": "Rust"}).as_object().unwrap().clone(),
                },
                SearchHit {
                    id: "d2".into(),
                    score: 0.5,
                    fields: Map::new(),
                },
            ],
            total: 42,
            latency_ms: 1.5,
        };
        let mut out = Vec::new();
        write_search(&mut out, &response).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1  12.3457  doc1  title=\"Rust\"\n2   0.5000  d2\n2 of 42 results in 1.5 ms\n"
        );
    }

    #[test]
    fn collections_table() {
        let collections = vec![
            CollectionSummary {
                name: "articles".into(),
                num_docs: 123,
                size_bytes: 4567,
                shards: 1,
                replication_factor: 1,
            },
            CollectionSummary {
                name: "x".into(),
                num_docs: 5,
                size_bytes: 10,
                shards: 12,
                replication_factor: 1,
            },
        ];
        let mut out = Vec::new();
        write_collections(&mut out, &collections).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME      DOCS     SIZE  SHARDS\n\
             articles   123  4.5 KiB       1\n\
             x            5     10 B      12\n"
        );
        let mut out = Vec::new();
        write_collections(&mut out, &[]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no collections\n");
    }
}
