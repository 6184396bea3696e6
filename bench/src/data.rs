//! Benchmark data: the nave-kjv IR collection, `.npy` matrices written by the Python side, and
//! synthetic corpora for smoke runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prism_tests::nave;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A document of a text corpus, with an optional embedding.
#[derive(Clone)]
pub struct Doc {
    pub id: String,
    pub text: String,
    pub vector: Option<Vec<f32>>,
}

/// A query topic with its embedding.
pub struct Topic {
    pub qid: String,
    pub text: String,
    pub vector: Option<Vec<f32>>,
}

/// A corpus with topics and, when real, relevance judgments.
pub struct Corpus {
    pub name: String,
    pub docs: Vec<Doc>,
    pub topics: Vec<Topic>,
    pub qrels: Option<PathBuf>,
    pub dim: usize,
}

impl Corpus {
    /// The corpus repeated under new ids until it holds at least `min_docs` documents, so
    /// that fixed costs do not dominate a throughput measurement.
    pub fn replicated(&self, min_docs: usize) -> Corpus {
        let copies = min_docs.div_ceil(self.docs.len().max(1)).max(1);
        let docs = (0..copies)
            .flat_map(|c| {
                self.docs.iter().map(move |d| Doc {
                    id: if c == 0 {
                        d.id.clone()
                    } else {
                        format!("{}#{c}", d.id)
                    },
                    ..d.clone()
                })
            })
            .collect();
        Corpus {
            name: if copies > 1 {
                format!("{} x{copies}", self.name)
            } else {
                self.name.clone()
            },
            docs,
            topics: Vec::new(),
            qrels: None,
            dim: self.dim,
        }
    }

    /// Bytes of the raw data: texts plus f32 vectors.
    pub fn raw_bytes(&self) -> u64 {
        self.docs
            .iter()
            .map(|d| d.text.len() + d.id.len() + d.vector.as_ref().map_or(0, |v| v.len() * 4))
            .sum::<usize>() as u64
    }
}

/// A float32 matrix.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Reads a 2-D little-endian `.npy` file of float32 (`<f4`) or int32 (`<i4`, converted).
pub fn read_npy(path: &Path) -> Result<Matrix> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{} is not a .npy file", path.display());
    }
    let (header_len, header_start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len])?;
    if header.contains("'fortran_order': True") {
        bail!("{}: Fortran order is not supported", path.display());
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("npy header has no shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match dims.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => bail!(
            "{}: expected a 2-D array, got shape {dims:?}",
            path.display()
        ),
    };
    let body = &bytes[header_start + header_len..];
    let data: Vec<f32> = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else if header.contains("'<i4'") {
        body.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    } else {
        bail!("{}: only <f4 and <i4 arrays are supported", path.display());
    };
    if data.len() != rows * cols {
        bail!(
            "{}: {} values for shape {rows}x{cols}",
            path.display(),
            data.len()
        );
    }
    Ok(Matrix { rows, cols, data })
}

/// Loads nave-kjv (from `PRISM_NAVE_DIR`, or `../shared/data/nave-kjv` from the repo root)
/// with its MiniLM embeddings, or says why it cannot.
pub fn load_nave(repo: &Path) -> Result<Corpus, String> {
    let dir = nave::dir(repo);
    let need = [
        "corpus.jsonl",
        "topics-dev.tsv",
        "qrels-dev.txt",
        "corpus.minilm-l6-v2.f32.npy",
        "topics-dev.minilm-l6-v2.f32.npy",
    ];
    if let Some(why) = nave::missing(&dir, &need) {
        return Err(why);
    }
    let load = || -> Result<Corpus> {
        let doc_vectors = read_npy(&dir.join("corpus.minilm-l6-v2.f32.npy"))?;
        let topic_vectors = read_npy(&dir.join("topics-dev.minilm-l6-v2.f32.npy"))?;
        let docs = nave::read_corpus(&dir)?
            .into_iter()
            .enumerate()
            .map(|(i, verse)| Doc {
                id: verse.id,
                text: verse.text,
                vector: Some(doc_vectors.row(i).to_vec()),
            })
            .collect();
        let topics = nave::read_topics(&dir)?
            .into_iter()
            .enumerate()
            .map(|(i, topic)| Topic {
                qid: topic.qid,
                text: topic.text,
                vector: Some(topic_vectors.row(i).to_vec()),
            })
            .collect();
        Ok(Corpus {
            name: "nave-kjv".into(),
            dim: doc_vectors.cols,
            docs,
            topics,
            qrels: Some(dir.join("qrels-dev.txt")),
        })
    };
    load().map_err(|e| format!("nave-kjv data at {} is unreadable: {e:#}", dir.display()))
}

/// A Zipf-distributed synthetic corpus with random unit vectors.
pub fn synthetic(name: &str, docs: usize, topics: usize, dim: usize, seed: u64) -> Corpus {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab: Vec<String> = (0..5000).map(|i| format!("w{i}")).collect();
    // Zipf(1) by inverse-CDF over harmonic weights.
    let weights: Vec<f64> = (1..=vocab.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let word = |rng: &mut StdRng| {
        let x: f64 = rng.gen();
        let i = cdf.partition_point(|c| *c < x).min(vocab.len() - 1);
        vocab[i].clone()
    };
    let unit = |rng: &mut StdRng| {
        let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let docs = (0..docs)
        .map(|i| {
            let len = rng.gen_range(8..40);
            let text = (0..len)
                .map(|_| word(&mut rng))
                .collect::<Vec<_>>()
                .join(" ");
            Doc {
                id: format!("d{i}"),
                text,
                vector: Some(unit(&mut rng)),
            }
        })
        .collect();
    let topics = (0..topics)
        .map(|i| {
            let len = rng.gen_range(1..4);
            let text = (0..len)
                .map(|_| word(&mut rng))
                .collect::<Vec<_>>()
                .join(" ");
            Topic {
                qid: format!("q{i}"),
                text,
                vector: Some(unit(&mut rng)),
            }
        })
        .collect();
    Corpus {
        name: name.into(),
        docs,
        topics,
        qrels: None,
        dim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_npy_written_by_numpy_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut padded = header.to_string();
        while !(10 + padded.len() + 1).is_multiple_of(64) {
            padded.push(' ');
        }
        padded.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let m = read_npy(&path).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
    }

    #[test]
    fn synthetic_corpus_is_deterministic() {
        let a = synthetic("s", 10, 2, 4, 1);
        let b = synthetic("s", 10, 2, 4, 1);
        assert_eq!(a.docs[3].text, b.docs[3].text);
        let n: f32 = a.docs[0]
            .vector
            .as_ref()
            .unwrap()
            .iter()
            .map(|x| x * x)
            .sum();
        assert!((n - 1.0).abs() < 1e-4);
    }
}
