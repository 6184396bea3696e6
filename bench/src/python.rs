//! The Python references (hnswlib, faiss, bm25s, ir_measures) run from the venv that
//! `bench/setup-python.sh` creates.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Ctx;

/// The venv's interpreter, when the references are installed.
pub fn interpreter(ctx: &Ctx) -> Option<PathBuf> {
    let python = ctx.out.join("venv/bin/python");
    python.exists().then_some(python)
}

/// Runs `bench/python/refs.py <args>` and parses the JSON it prints.
pub fn refs(ctx: &Ctx, args: &[String]) -> Result<Value> {
    let python = interpreter(ctx)
        .context("the Python references are not installed: run bench/setup-python.sh")?;
    let script = ctx.repo.join("bench/python/refs.py");
    eprintln!("running reference: refs.py {}", args.join(" "));
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("refs.py {} failed with {}", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("refs.py printed no JSON: {text}"))
}
