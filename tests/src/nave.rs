//! The nave-kjv IR collection (`/work/shared/data/README.md`): the King James verses and the
//! Nave's topic queries, read in place from the shared data directory and never copied into
//! the repository. The benchmarks add its embeddings (`prism-bench`'s `data::load_nave`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One verse: `Gen.1.1` and its text.
pub struct Verse {
    pub id: String,
    pub text: String,
}

/// One topic: its id and its query text, as the file has it (see [`sanitize`]).
pub struct Topic {
    pub qid: String,
    pub text: String,
}

/// The nave-kjv directory: `PRISM_NAVE_DIR`, or `../shared/data/nave-kjv` from the repository
/// root.
pub fn dir(repo: &Path) -> PathBuf {
    std::env::var_os("PRISM_NAVE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/data/nave-kjv"))
}

/// Why `dir` cannot be used, naming the first missing file of `files`; `None` when all exist.
pub fn missing(dir: &Path, files: &[&str]) -> Option<String> {
    files.iter().find(|f| !dir.join(f).exists()).map(|f| {
        format!(
            "nave-kjv data not found at {} (missing {f}); set PRISM_NAVE_DIR",
            dir.display()
        )
    })
}

/// `corpus.jsonl`: one `{"id", "text"}` a line, in file order (row i of the embeddings).
pub fn read_corpus(dir: &Path) -> Result<Vec<Verse>> {
    let path = dir.join("corpus.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            Ok(Verse {
                id: v["id"].as_str().context("id")?.to_string(),
                text: v["text"].as_str().context("text")?.to_string(),
            })
        })
        .collect()
}

/// `topics-dev.tsv`: `qid<TAB>query`, in file order.
pub fn read_topics(dir: &Path) -> Result<Vec<Topic>> {
    let path = dir.join("topics-dev.tsv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .map(|line| {
            let (qid, text) = line.split_once('\t').context("topic line")?;
            Ok(Topic {
                qid: qid.to_string(),
                text: text.to_string(),
            })
        })
        .collect()
}

/// Query text that Prism and raw tantivy parse alike: words only, no query syntax.
pub fn sanitize(query: &str) -> String {
    query
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sanitize_keeps_words_only() {
        assert_eq!(
            super::sanitize("aaron's rod: (budding)"),
            "aaron s rod budding"
        );
    }
}
