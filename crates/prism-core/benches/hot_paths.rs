//! Criterion micro-benchmarks of the hot paths: distance kernels, HNSW insert and search, RRF
//! merge, text search in a shard, and the log append with fsync. Run with
//! `cargo bench -p prism-core`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use prism_core::fusion::HybridStrategy;
use prism_core::log::{OpenOptions, ShardLog};
use prism_core::rank::TieBreak;
use prism_core::schema::{CollectionSchema, Distance, VectorParams};
use prism_core::search::SearchRequest;
use prism_core::shard::{Op, Shard, ShardConfig};
use prism_core::vector::{distance, VectorIndex};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect()
}

fn distances(c: &mut Criterion) {
    let v = vectors(2, 384, 1);
    for kind in [Distance::Cosine, Distance::Dot, Distance::L2] {
        c.bench_function(&format!("distance/{kind:?}/384"), |b| {
            b.iter(|| distance(kind, black_box(&v[0]), black_box(&v[1])))
        });
    }
}

fn params() -> VectorParams {
    VectorParams {
        dimension: 128,
        distance: Distance::Cosine,
        m: 16,
        ef_construction: 200,
        ef_search: 64,
    }
}

fn hnsw(c: &mut Criterion) {
    let data = vectors(10_000, 128, 2);
    let index = VectorIndex::new(params()).unwrap();
    for (i, v) in data.iter().enumerate() {
        index.add(i as u64, v).unwrap();
    }
    let queries = vectors(100, 128, 3);
    let mut q = 0;
    c.bench_function("hnsw/search/10k x 128/ef64/k10", |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            index.search(black_box(&queries[q]), 10, |_| true).unwrap()
        })
    });
    let mut key = 1_000_000u64;
    let extra = vectors(1000, 128, 4);
    c.bench_function("hnsw/insert/into 10k x 128", |b| {
        b.iter(|| {
            key += 1;
            index
                .add(key, black_box(&extra[key as usize % extra.len()]))
                .unwrap()
        })
    });
}

/// A fusion key as the shard's: a document and its id hash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key(u64);

impl TieBreak for Key {
    fn id_hash(&self) -> u64 {
        self.0
    }
}

fn rrf(c: &mut Criterion) {
    let text: Vec<(Key, f32)> = (0..100).map(|i| (Key(i), 100.0 - i as f32)).collect();
    let vector: Vec<(Key, f32)> = (50..150).map(|i| (Key(i), 1.0 / i as f32)).collect();
    let rrf = HybridStrategy::default();
    c.bench_function("fusion/rrf/2 x 100", |b| {
        b.iter(|| rrf.fuse(black_box(&text), black_box(&vector)))
    });
}

/// A shard of 20,000 documents over a Zipf-like vocabulary of 2,000 words (the federation
/// test's corpus): one- to three-word queries, top 10 with the exact total; a match-all
/// query, where every document ties; and a deep page.
fn text_search(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(
        CollectionSchema::from_json(br#"{"name":"b","fields":{"title":{"type":"text"}}}"#).unwrap(),
    );
    let shard = Shard::open(dir.path(), schema.clone(), ShardConfig::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let word = |rng: &mut StdRng| words[(rng.gen::<f64>().powi(4) * 2000.0) as usize].clone();
    for batch in 0..20 {
        let ops: Vec<Op> = (0..1000)
            .map(|i| {
                let len = rng.gen_range(4..40);
                let title: Vec<String> = (0..len).map(|_| word(&mut rng)).collect();
                let doc = serde_json::json!({"id": format!("doc-{}", batch * 1000 + i),
                    "fields": {"title": title.join(" ")}});
                Op::Upsert(Arc::new(schema.prepare_document(doc).unwrap()))
            })
            .collect();
        shard.write_blocking(ops).unwrap();
    }
    shard.refresh_blocking().unwrap();
    let request =
        |body: serde_json::Value| SearchRequest::from_json(body.to_string().as_bytes()).unwrap();
    let queries: Vec<SearchRequest> = (0..100)
        .map(|_| {
            let n = rng.gen_range(1..4);
            let q: Vec<String> = (0..n)
                .map(|_| words[rng.gen_range(0..150)].clone())
                .collect();
            request(serde_json::json!({"query": q.join(" "), "limit": 10}))
        })
        .collect();
    let mut q = 0;
    c.bench_function("shard/search/text/20k zipf/top10", |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            shard.search(black_box(&queries[q])).unwrap()
        })
    });
    // One term: its count is its document frequency, so pruning pays off.
    for (name, word) in [("common", "w1"), ("rare", "w120")] {
        let one = request(serde_json::json!({"query": word, "limit": 10}));
        c.bench_function(
            &format!("shard/search/text/20k zipf/one {name} term"),
            |b| b.iter(|| shard.search(black_box(&one)).unwrap()),
        );
    }
    let all = request(serde_json::json!({"limit": 10}));
    c.bench_function("shard/search/match_all/20k/top10", |b| {
        b.iter(|| shard.search(black_box(&all)).unwrap())
    });
    let filtered = request(serde_json::json!({"filter": "w1", "limit": 10}));
    c.bench_function("shard/search/filter_only/20k/top10", |b| {
        b.iter(|| shard.search(black_box(&filtered)).unwrap())
    });
    let deep = request(serde_json::json!({"query": "w1 w2", "limit": 10, "offset": 500}));
    c.bench_function("shard/search/text/20k zipf/offset500", |b| {
        b.iter(|| shard.search(black_box(&deep)).unwrap())
    });
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        segment_bytes: 64 << 20,
        truncate_corrupt: false,
    };
    let (log, _) = ShardLog::open(dir.path(), options).unwrap();
    let entry = vec![7u8; 1024];
    c.bench_function("log/append+fsync/1 x 1 KiB", |b| {
        b.iter(|| log.append_next(1, 0, std::slice::from_ref(&entry)).unwrap())
    });
    let group: Vec<Vec<u8>> = (0..32).map(|_| entry.clone()).collect();
    c.bench_function("log/append+fsync/group of 32 x 1 KiB", |b| {
        b.iter_batched(
            || group.clone(),
            |g| log.append_next(1, 0, &g).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = distances, hnsw, rrf, text_search, log_append
}
criterion_main!(hot_paths);
