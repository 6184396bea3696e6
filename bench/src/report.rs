//! Tables on stdout and JSON files under the output directory.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A printed table: a title, a header and rows of cells.
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown, so that the output pastes into docs/benchmarks.md as it is.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = format!("\n### {}\n\n{}\n", self.title, line(&self.header));
        let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// Writes `out/<name>.json`.
pub fn write_json(out: &Path, name: &str, value: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Latency summary of a run of timed operations.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    /// `wall` is the elapsed time of the whole run (concurrent operations overlap).
    pub fn from(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort();
        let pick = |q: f64| {
            if samples.is_empty() {
                0.0
            } else {
                let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
                samples[i].as_secs_f64() * 1000.0
            }
        };
        Latency {
            count: samples.len(),
            qps: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
        }
    }
}

pub fn f(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}
