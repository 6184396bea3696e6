use std::collections::BTreeSet;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::fusion::HybridStrategy;
use crate::rank::{best_first, id_hash};
use crate::search::plan::SearchPlan;
use crate::search::VectorQuery;

fn schema() -> Arc<CollectionSchema> {
    Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"t","fields":{"title":{"type":"text"},"tag":{"type":"keyword"},
            "year":{"type":"i64"},"emb":{"type":"vector","dimension":4,"distance":"cosine"}}}"#,
        )
        .unwrap(),
    )
}

fn upsert(s: &CollectionSchema, doc: serde_json::Value) -> Op {
    Op::Upsert(Arc::new(s.prepare_document(doc).unwrap()))
}

fn open(dir: &Path) -> Shard {
    Shard::open(dir, schema(), ShardConfig::default()).unwrap()
}

fn ids(resp: &SearchResponse) -> Vec<String> {
    resp.results.iter().map(|h| h.id.clone()).collect()
}

/// The page `r` asks for of ids in rank order.
fn page_of(ranked: &[String], r: &SearchRequest) -> Vec<String> {
    ranked
        .iter()
        .skip(r.offset)
        .take(r.limit)
        .cloned()
        .collect()
}

fn unbounded() -> Arc<SearchBudget> {
    Arc::new(SearchBudget::unlimited())
}

fn request(body: serde_json::Value) -> SearchRequest {
    SearchRequest::from_json(body.to_string().as_bytes()).unwrap()
}

#[test]
fn hybrid_returns_text_only_and_vector_only_matches_in_fusion_order() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    shard
        .write_blocking(vec![
            // Matches the text query only: it has no vector at all.
            upsert(&s, json!({"id":"text-only","fields":{"title":"quantum entanglement"}})),
            // Matches the vector query only.
            upsert(&s, json!({"id":"vector-only","fields":{"title":"cooking pasta","emb":[1,0,0,0]}})),
            upsert(&s, json!({"id":"both","fields":{"title":"quantum quantum cooking","emb":[0.5,0.5,0,0]}})),
        ])
        .unwrap();
    shard.refresh_blocking().unwrap();
    let rrf = shard
        .search(&request(
            json!({"query":"quantum","vector":[1,0,0,0],"limit":3,
            "hybrid":{"strategy":"rrf","rrf_k":60}}),
        ))
        .unwrap();
    // Text list: [both, text-only]. Vector list: [vector-only, both]. RRF with k=60:
    // both 1/61 + 1/62, vector-only 1/61, text-only 1/62.
    assert_eq!(ids(&rrf), vec!["both", "vector-only", "text-only"]);
    assert!((rrf.results[0].score - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-6);
    assert!((rrf.results[1].score - 1.0 / 61.0).abs() < 1e-6);
    assert!((rrf.results[2].score - 1.0 / 62.0).abs() < 1e-6);

    let weighted = shard
        .search(&request(
            json!({"query":"quantum","vector":[1,0,0,0],"limit":3,
            "hybrid":{"strategy":"weighted","text_weight":0.2,"vector_weight":0.8}}),
        ))
        .unwrap();
    // Vector list normalised: vector-only 1, both ~0.99, text-only 0; text list (quantum):
    // both and text-only. Expected order from the formula:
    let text = shard
        .search(&request(json!({"query":"quantum","limit":10})))
        .unwrap();
    let vector = shard
        .search(&request(json!({"vector":[1,0,0,0],"limit":10})))
        .unwrap();
    let t: Vec<(String, f32)> = text
        .results
        .iter()
        .map(|h| (h.id.clone(), h.score))
        .collect();
    let v: Vec<(String, f32)> = vector
        .results
        .iter()
        .map(|h| (h.id.clone(), h.score))
        .collect();
    let expected = HybridStrategy::Weighted {
        text_weight: 0.2,
        vector_weight: 0.8,
    }
    .fuse(&t, &v);
    assert_eq!(
        ids(&weighted),
        expected.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
    );
    for (hit, (_, score)) in weighted.results.iter().zip(&expected) {
        assert!((hit.score - score).abs() < 1e-6);
    }
    assert_eq!(
        weighted.total, 3,
        "union of text matches and documents with vectors"
    );
}

#[test]
fn deleted_documents_never_appear_and_pages_stay_full() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    let docs: Vec<Op> = (0..50)
        .map(|i| {
            let a = i as f32 / 50.0;
            upsert(&s, json!({"id":format!("d{i}"),"fields":{"title":format!("apple {i}"),"tag":"fruit","emb":[1.0, a, 0.0, 0.0]}}))
        })
        .collect();
    shard.write_blocking(docs).unwrap();
    shard.refresh_blocking().unwrap();
    let before = shard
        .search(&request(json!({"vector":[1,0,0,0],"limit":5})))
        .unwrap();
    let nearest = before.results[0].id.clone();
    assert_eq!(nearest, "d0");
    let text_before = shard
        .search(&request(json!({"query":"apple","limit":5})))
        .unwrap();
    let deleted: Vec<String> = ids(&before).into_iter().chain(ids(&text_before)).collect();
    shard
        .write_blocking(deleted.iter().map(|id| Op::Delete(id.clone())).collect())
        .unwrap();
    shard.refresh_blocking().unwrap();
    for body in [
        json!({"vector":[1,0,0,0],"limit":5}),
        json!({"vector":[1,0,0,0],"limit":5,"filter":"tag:fruit"}),
        json!({"query":"apple","limit":5}),
        json!({"query":"apple","vector":[1,0,0,0],"limit":5}),
    ] {
        let r = shard.search(&request(body.clone())).unwrap();
        assert_eq!(r.results.len(), 5, "{body}: a page must stay full");
        for id in ids(&r) {
            assert!(!deleted.contains(&id), "{body}: deleted {id} returned");
        }
    }
    assert_eq!(shard.get(&nearest).unwrap(), None);
}

#[test]
fn total_equals_a_brute_force_count() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let mut corpus = Vec::new();
    for i in 0..3000 {
        let n = rng.gen_range(1..5);
        let title: Vec<&str> = (0..n)
            .map(|_| words[rng.gen_range(0..words.len())])
            .collect();
        let year = rng.gen_range(1990..2020);
        let tag = if i % 3 == 0 { "red" } else { "blue" };
        corpus.push((format!("d{i}"), title.join(" "), year, tag));
    }
    // Overwrite some and delete some, so that deleted versions exist in the index.
    // Every fifth document has no vector, so that hybrid totals are a real union.
    let has_vector = |id: &str| id[1..].parse::<usize>().unwrap() % 5 != 0;
    let ops: Vec<Op> = corpus
        .iter()
        .map(|(id, title, year, tag)| {
            let mut fields = json!({"title":title,"year":year,"tag":tag});
            if has_vector(id) {
                fields["emb"] = json!([1, 0, 0, *year as f32 / 2020.0]);
            }
            upsert(&s, json!({"id": id, "fields": fields}))
        })
        .collect();
    shard.write_blocking(ops).unwrap();
    let deleted: BTreeSet<String> = (0..3000).step_by(7).map(|i| format!("d{i}")).collect();
    shard
        .write_blocking(deleted.iter().map(|id| Op::Delete(id.clone())).collect())
        .unwrap();
    shard.refresh_blocking().unwrap();
    let live: Vec<_> = corpus.iter().filter(|d| !deleted.contains(&d.0)).collect();
    for word in words {
        for (filter, pred) in [
            (
                None,
                Box::new(|_: &(String, String, i64, &str)| true) as Box<dyn Fn(&_) -> bool>,
            ),
            (
                Some("tag:red"),
                Box::new(|d: &(String, String, i64, &str)| d.3 == "red"),
            ),
            (
                Some("year:[2000 TO 2009]"),
                Box::new(|d: &(String, String, i64, &str)| (2000..=2009).contains(&d.2)),
            ),
        ] {
            let expected = live
                .iter()
                .filter(|d| d.1.split(' ').any(|w| w == word) && pred(d))
                .count() as u64;
            let mut body = json!({"query": word, "limit": 3});
            if let Some(f) = filter {
                body["filter"] = json!(f);
            }
            let r = shard.search(&request(body.clone())).unwrap();
            assert_eq!(r.total, expected, "{body}");
            let vector = shard
                .search(&SearchRequest {
                    vector: Some(VectorQuery::Values(vec![1.0, 0.0, 0.0, 1.0])),
                    filter: filter.map(String::from),
                    limit: 3,
                    ..Default::default()
                })
                .unwrap();
            let expected_vector =
                live.iter().filter(|d| pred(d) && has_vector(&d.0)).count() as u64;
            assert_eq!(
                vector.total, expected_vector,
                "vector total with {filter:?}"
            );
            let hybrid = shard
                .search(&SearchRequest {
                    query: Some(word.to_string()),
                    vector: Some(VectorQuery::Values(vec![1.0, 0.0, 0.0, 1.0])),
                    filter: filter.map(String::from),
                    limit: 3,
                    ..Default::default()
                })
                .unwrap();
            let expected_hybrid = live
                .iter()
                .filter(|d| pred(d) && (has_vector(&d.0) || d.1.split(' ').any(|w| w == word)))
                .count() as u64;
            assert_eq!(
                hybrid.total, expected_hybrid,
                "hybrid total of {word:?} with {filter:?}"
            );
        }
    }
}

#[test]
fn writes_survive_reopen_and_realtime_get_sees_unrefreshed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = schema();
    {
        let shard = open(dir.path());
        shard
            .write_blocking(vec![upsert(
                &s,
                json!({"id":"a","fields":{"title":"first","emb":[1,0,0,0]}}),
            )])
            .unwrap();
        let got = shard.get("a").unwrap().unwrap();
        assert_eq!(got.fields["title"], json!("first"));
        assert_eq!(got.fields["emb"], json!([1.0, 0.0, 0.0, 0.0]));
        shard
            .write_blocking(vec![upsert(
                &s,
                json!({"id":"a","fields":{"title":"second","emb":[0,1,0,0]}}),
            )])
            .unwrap();
        shard.close().unwrap();
    }
    let shard = open(dir.path());
    let got = shard.get("a").unwrap().unwrap();
    assert_eq!(got.fields["title"], json!("second"));
    let r = shard
        .search(&request(json!({"vector":[0,1,0,0],"limit":10})))
        .unwrap();
    assert_eq!(ids(&r), vec!["a"], "the replaced vector must be gone");
    assert_eq!(r.total, 1);
}

/// A shard holding `docs`, written in one entry and refreshed.
fn shard_with(docs: &[serde_json::Value]) -> (tempfile::TempDir, Shard) {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    shard
        .write_blocking(docs.iter().map(|d| upsert(&s, d.clone())).collect())
        .unwrap();
    shard.refresh_blocking().unwrap();
    (dir, shard)
}

#[test]
fn aggregations_and_highlights() {
    let (_dir, shard) = shard_with(&[
        json!({"id":"1","fields":{"title":"red apples","tag":"fruit","year":2001}}),
        json!({"id":"2","fields":{"title":"green apples","tag":"fruit","year":2003}}),
        json!({"id":"3","fields":{"title":"apple pie","tag":"dessert","year":2010}}),
    ]);
    let r = shard
        .search(&request(
            json!({"query":"apples","limit":10,"highlight":true,
            "aggregations":{"tags":{"terms":{"field":"tag"}},"years":{"stats":{"field":"year"}}}}),
        ))
        .unwrap();
    assert_eq!(r.total, 3);
    let aggs = r.aggregations.unwrap();
    let buckets = aggs["tags"]["buckets"].as_array().unwrap();
    assert_eq!(buckets[0], json!({"key":"fruit","doc_count":2}));
    assert_eq!(aggs["years"]["count"], json!(3));
    let hl = r.results[0].highlights.as_ref().unwrap();
    assert!(hl["title"].as_str().unwrap().contains("<b>"));
    let bad = shard.search(&request(
        json!({"query":"x","aggregations":{"t":{"terms":{"field":"title"}}}}),
    ));
    assert_eq!(bad.unwrap_err().code(), "invalid_query");
}

#[test]
fn shards_scoring_with_global_statistics_rank_like_one_index() {
    let text_schema = Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"t","fields":{"title":{"type":"text"},"tag":{"type":"keyword"}}}"#,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let open_at = |name: &str| {
        Shard::open(
            &dir.path().join(name),
            text_schema.clone(),
            ShardConfig::default(),
        )
        .unwrap()
    };
    let single = open_at("single");
    let shards: Vec<Shard> = (0..3).map(|i| open_at(&format!("shard{i}"))).collect();
    let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
    let mut rng = StdRng::seed_from_u64(3);
    let mut per_shard: Vec<Vec<Op>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut all = Vec::new();
    for i in 0..4000 {
        let len = rng.gen_range(3..30);
        // Zipf-like: low word numbers are common.
        let title: Vec<&str> = (0..len)
            .map(|_| words[(rng.gen::<f64>().powi(3) * words.len() as f64) as usize].as_str())
            .collect();
        let id = format!("doc-{i}");
        let doc = json!({"id": id, "fields": {"title": title.join(" "), "tag": if i % 2 == 0 { "even" } else { "odd" }}});
        let op = Op::Upsert(Arc::new(text_schema.prepare_document(doc).unwrap()));
        per_shard[crate::routing::shard_for(&id, 3) as usize].push(op.clone());
        all.push(op);
    }
    single.write_blocking(all).unwrap();
    single.refresh_blocking().unwrap();
    for (shard, ops) in shards.iter().zip(per_shard) {
        shard.write_blocking(ops).unwrap();
        shard.refresh_blocking().unwrap();
    }
    for q in 0..60 {
        let n = rng.gen_range(1..4);
        let query: Vec<&str> = (0..n)
            .map(|_| words[rng.gen_range(0..60)].as_str())
            .collect();
        // Half with aggregations (one pass over every match), half without (pruned).
        let mut request = if q % 2 == 0 {
            request(json!({"query": query.join(" "), "limit": 10,
                "aggregations": {"tags": {"terms": {"field": "tag"}}}}))
        } else {
            request(json!({"query": query.join(" "), "limit": 10}))
        };
        if q % 3 == 0 {
            request.filter = Some("tag:even".into());
        }
        let expected = single.search(&request).unwrap();
        let stats = crate::stats::TermStatistics::sum(
            &shards
                .iter()
                .map(|s| s.term_statistics(&request).unwrap().0)
                .collect::<Vec<_>>(),
        );
        let mut merged: Vec<(String, f32)> = Vec::new();
        let mut total = 0;
        let mut partial_aggs = Vec::new();
        for shard in &shards {
            let windows = SearchPlan::new(&request, shards.len(), 1.0).windows;
            let r = shard
                .query_phase(&request, Some(&stats), windows, &unbounded())
                .unwrap();
            total += r.total;
            partial_aggs.extend(r.intermediate_aggregations);
            // The fetch phase names documents by the query phase's references.
            let refs: Vec<_> = r.text.iter().map(|h| h.doc).collect();
            let fetched = shard.fetch(&request, &r.generation, &refs).unwrap();
            for (hit, ranked) in fetched.into_iter().zip(&r.text) {
                assert_eq!(
                    ranked.id_hash,
                    id_hash(&hit.id),
                    "the hash travels with the hit"
                );
                merged.push((hit.id, ranked.score));
            }
        }
        if let Some(aggs) = &request.aggregations {
            let aggs = crate::search::merge_aggregations(aggs, &partial_aggs).unwrap();
            assert_eq!(
                Some(&aggs),
                expected.aggregations.as_ref(),
                "terms counts of query {:?}",
                request.query
            );
        }
        merged.sort_by(|a, b| best_first((a.1, id_hash(&a.0)), (b.1, id_hash(&b.0))));
        merged.truncate(10);
        assert_eq!(total, expected.total, "query {request:?}");
        assert_eq!(merged.len(), expected.results.len());
        for (got, want) in merged.iter().zip(&expected.results) {
            assert!(
                (got.1 - want.score).abs() <= 1e-4 * want.score.abs().max(1.0),
                "query {:?}: {got:?} vs {} {}",
                request.query,
                want.id,
                want.score
            );
        }
        // The same ids in the same order, ties included.
        assert_eq!(
            merged.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
            ids(&expected),
            "query {:?}",
            request.query
        );
    }
}

/// `n` documents that all score alike for `same`, `tag:t` and the vector [1, 0, 0, 0].
fn tied_docs(s: &CollectionSchema, n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| {
            upsert(
                s,
                json!({"id": format!("doc-{i}"), "fields": {"title": "the same words",
                "tag": "t", "year": 2000, "emb": [1, 0, 0, 0]}}),
            )
        })
        .collect()
}

/// Requests whose hits all tie, with their expected lengths: text (pruned and, with
/// aggregations, unpruned), filter-only, match-all, exact vector and hybrid, pages of 7.
fn tied_requests(n: usize) -> Vec<SearchRequest> {
    let mut out = Vec::new();
    for offset in (0..n + 7).step_by(7) {
        for mut body in [
            json!({"query": "same"}),
            json!({"query": "same", "aggregations": {"y": {"stats": {"field": "year"}}}}),
            json!({"filter": "tag:t"}),
            json!({}),
            json!({"vector": [1, 0, 0, 0], "filter": "tag:t"}),
            json!({"query": "same", "vector": [1, 0, 0, 0], "filter": "tag:t",
                "hybrid": {"strategy": "weighted", "text_weight": 0.5, "vector_weight": 0.5}}),
        ] {
            body["limit"] = json!(7);
            body["offset"] = json!(offset);
            out.push(request(body));
        }
    }
    out
}

fn ids_by_hash(n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|i| format!("doc-{i}")).collect();
    ids.sort_by_key(|id| id_hash(id));
    ids
}

#[test]
fn equal_scores_rank_by_id_hash_whatever_the_indexing_order() {
    const N: usize = 40;
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    // In id order over four segments; and in reverse order, in one.
    let forward = open(&dir.path().join("forward"));
    let ops = tied_docs(&s, N);
    for batch in ops.chunks(10) {
        forward.write_blocking(batch.to_vec()).unwrap();
        forward.refresh_blocking().unwrap();
    }
    let backward = open(&dir.path().join("backward"));
    backward
        .write_blocking(ops.iter().rev().cloned().collect())
        .unwrap();
    backward.refresh_blocking().unwrap();
    let expected = ids_by_hash(N);
    assert_ne!(
        expected,
        (0..N).map(|i| format!("doc-{i}")).collect::<Vec<_>>(),
        "the hash order must differ from the indexing order for this test to mean anything"
    );
    let check = |shard: &Shard, what: &str| {
        for r in tied_requests(N) {
            let got = shard.search(&r).unwrap();
            let want = page_of(&expected, &r);
            assert_eq!(ids(&got), want, "{what}: {r:?}");
            assert!(
                got.results.windows(2).all(|w| w[0].score == w[1].score),
                "{what}: ties"
            );
        }
    };
    check(&forward, "indexed in id order, 4 segments");
    check(&backward, "indexed in reverse order");
    // A re-index in yet another order (every document replaced) and a restart change nothing.
    let mut shuffled = ops.clone();
    shuffled.sort_by_key(|op| id_hash(op.id()).rotate_left(17));
    forward.write_blocking(shuffled).unwrap();
    forward.refresh_blocking().unwrap();
    check(&forward, "re-indexed in a shuffled order");
    forward.close().unwrap();
    drop(forward);
    let reopened = open(&dir.path().join("forward"));
    check(&reopened, "after a restart");
}

#[test]
fn the_id_hash_decides_which_tied_documents_make_the_top_k() {
    // Three score levels; the middle one straddles every cut from 6 to 45.
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let mut ops = Vec::new();
    for i in 0..60 {
        let title = match i % 10 {
            0 => "rare rare rare word",
            1..=7 => "rare word",
            _ => "other",
        };
        ops.push(upsert(
            &s,
            json!({"id": format!("doc-{i}"), "fields": {"title": title, "tag": "t"}}),
        ));
    }
    for batch in ops.chunks(13) {
        shard.write_blocking(batch.to_vec()).unwrap();
    }
    shard.refresh_blocking().unwrap();
    let all = shard
        .search(&request(json!({"query": "rare", "limit": 100})))
        .unwrap();
    assert_eq!(all.results.len(), 48);
    let hits: Vec<(String, f32)> = all
        .results
        .iter()
        .map(|h| (h.id.clone(), h.score))
        .collect();
    let mut expected = hits.clone();
    expected.sort_by(|a, b| best_first((a.1, id_hash(&a.0)), (b.1, id_hash(&b.0))));
    assert_eq!(hits, expected, "by score, then id hash");
    for limit in [1, 6, 7, 10, 20, 45] {
        for aggs in [false, true] {
            let mut body = json!({"query": "rare", "limit": limit});
            if aggs {
                body["aggregations"] = json!({"t": {"terms": {"field": "tag"}}});
            }
            let top = shard.search(&request(body.clone())).unwrap();
            assert_eq!(
                ids(&top),
                expected
                    .iter()
                    .take(limit)
                    .map(|h| h.0.clone())
                    .collect::<Vec<_>>(),
                "{body}"
            );
        }
    }
    // Deleting documents above the cut lets the next ones in by hash, not by address.
    let gone: Vec<Op> = expected
        .iter()
        .take(8)
        .map(|h| Op::Delete(h.0.clone()))
        .collect();
    shard.write_blocking(gone).unwrap();
    shard.refresh_blocking().unwrap();
    let top = shard
        .search(&request(json!({"query": "rare", "limit": 10})))
        .unwrap();
    assert_eq!(
        ids(&top),
        expected
            .iter()
            .skip(8)
            .take(10)
            .map(|h| h.0.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_index_made_before_the_id_hash_column_opens_and_ranks_alike() {
    const N: usize = 30;
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    // The layout of an earlier release: the same fields without `_idhash`.
    let legacy_dir = dir.path().join("legacy");
    std::fs::create_dir_all(legacy_dir.join("index")).unwrap();
    tantivy::Index::create_in_dir(legacy_dir.join("index"), s.tantivy_schema_before_id_hash())
        .unwrap();
    let legacy = open(&legacy_dir);
    assert!(legacy.shared.fields.id_hash.is_none());
    let current = open(&dir.path().join("current"));
    assert!(current.shared.fields.id_hash.is_some());
    for shard in [&legacy, &current] {
        for batch in tied_docs(&s, N).chunks(8) {
            shard.write_blocking(batch.to_vec()).unwrap();
            shard.refresh_blocking().unwrap();
        }
    }
    let expected = ids_by_hash(N);
    for r in tied_requests(N) {
        let want = page_of(&expected, &r);
        assert_eq!(ids(&legacy.search(&r).unwrap()), want, "legacy: {r:?}");
        assert_eq!(ids(&current.search(&r).unwrap()), want, "current: {r:?}");
        let windows = SearchPlan::new(&r, 3, 1.0).windows;
        let phase = legacy.query_phase(&r, None, windows, &unbounded()).unwrap();
        let current_phase = current
            .query_phase(&r, None, windows, &unbounded())
            .unwrap();
        let hashes = |h: &ShardHits| -> Vec<u64> {
            h.text.iter().chain(&h.vector).map(|d| d.id_hash).collect()
        };
        assert_eq!(hashes(&phase), hashes(&current_phase), "{r:?}");
    }
    // Reopened, it is still the legacy layout, and still ranks alike.
    legacy.close().unwrap();
    drop(legacy);
    let legacy = open(&legacy_dir);
    assert!(legacy.shared.fields.id_hash.is_none());
    let r = request(json!({"query": "same", "limit": 5}));
    assert_eq!(ids(&legacy.search(&r).unwrap()), expected[..5].to_vec());
    // Any other schema difference is still refused.
    let other = Arc::new(
        CollectionSchema::from_json(br#"{"name":"t","fields":{"title":{"type":"text"}}}"#).unwrap(),
    );
    legacy.close().unwrap();
    drop(legacy);
    assert!(Shard::open(&legacy_dir, other, ShardConfig::default()).is_err());
}

/// Acceptance: two copies fed the same entries report the same content checksum, although
/// one of them crashed and replayed halfway through and their segments differ; a copy that
/// missed one write reports another.
#[test]
fn two_copies_fed_the_same_entries_have_one_checksum() {
    let s = schema();
    let mut rng = StdRng::seed_from_u64(11);
    let batches: Vec<Vec<Op>> = (0..40)
        .map(|b| {
            (0..rng.gen_range(1..15))
                .map(|_| {
                    let id = format!("doc-{}", rng.gen_range(0..50));
                    if rng.gen_range(0..6) == 0 {
                        Op::Delete(id)
                    } else {
                        let v: Vec<f32> = (0..4).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        upsert(
                            &s,
                            json!({"id": id, "fields": {"title": format!("batch {b}"),
                            "tag": format!("t{}", b % 3), "year": b, "emb": v}}),
                        )
                    }
                })
                .collect()
        })
        .collect();
    let steady_dir = tempfile::tempdir().unwrap();
    let restarted_dir = tempfile::tempdir().unwrap();
    let steady = open(steady_dir.path());
    let mut restarted = open(restarted_dir.path());
    for (i, batch) in batches.iter().enumerate() {
        steady.write_blocking(batch.clone()).unwrap();
        restarted.write_blocking(batch.clone()).unwrap();
        if i % 7 == 0 {
            steady.refresh_blocking().unwrap();
        }
        if i == batches.len() / 2 {
            // A crash: no final checkpoint, the log replays on open.
            restarted.close_for_delete().unwrap();
            drop(restarted);
            restarted = open(restarted_dir.path());
        }
    }
    steady.refresh_blocking().unwrap();
    restarted.refresh_blocking().unwrap();
    let a = steady.stats();
    let b = restarted.stats();
    assert_eq!(a.num_docs, b.num_docs);
    assert!(a.content_checksum.is_some());
    assert_eq!(a.content_checksum, b.content_checksum);

    // One more write on one copy only changes its checksum; undoing it restores equality.
    restarted
        .write_blocking(vec![Op::Delete("doc-0".into()), Op::Delete("doc-1".into())])
        .unwrap();
    restarted.refresh_blocking().unwrap();
    assert_ne!(restarted.stats().content_checksum, a.content_checksum);
    steady
        .write_blocking(vec![Op::Delete("doc-0".into()), Op::Delete("doc-1".into())])
        .unwrap();
    steady.refresh_blocking().unwrap();
    assert_eq!(
        restarted.stats().content_checksum,
        steady.stats().content_checksum
    );
}

#[test]
fn the_content_hash_covers_id_stored_fields_and_vectors() {
    let s = schema();
    let hash = |doc: serde_json::Value| {
        let prepared = s.prepare_document(doc).unwrap();
        content_hash(&prepared, &prepared.source)
    };
    let base = hash(json!({"id":"a","fields":{"title":"x","year":1,"emb":[1,0,0,0]}}));
    assert_eq!(
        base,
        hash(json!({"id":"a","fields":{"year":1,"title":"x","emb":[1,0,0,0]}}))
    );
    assert_ne!(
        base,
        hash(json!({"id":"b","fields":{"title":"x","year":1,"emb":[1,0,0,0]}}))
    );
    assert_ne!(
        base,
        hash(json!({"id":"a","fields":{"title":"y","year":1,"emb":[1,0,0,0]}}))
    );
    assert_ne!(
        base,
        hash(json!({"id":"a","fields":{"title":"x","year":1,"emb":[0,1,0,0]}}))
    );
    // The column the writer fills holds exactly this hash: a one-document shard's checksum.
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let doc =
        json!({"id":"a","fields":{"title":"x \"quoted\" é","year":1,"tag":"t","emb":[1,0,0,0]}});
    shard.write_blocking(vec![upsert(&s, doc.clone())]).unwrap();
    shard.refresh_blocking().unwrap();
    assert_eq!(shard.stats().content_checksum, Some(hash(doc)));
}

#[test]
fn recovery_applies_committed_entries_only() {
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    let config = || ShardConfig {
        refresh_interval: Duration::from_secs(3600),
        ..ShardConfig::default()
    };
    let shard = Shard::open(dir.path(), s.clone(), config()).unwrap();
    for i in 1..=5 {
        let doc = json!({"id": format!("e{i}"), "fields": {"title": "entry"}});
        assert_eq!(shard.write_blocking(vec![upsert(&s, doc)]).unwrap(), i);
    }
    // A crash before any checkpoint: everything is in the log only.
    shard.close_for_delete().unwrap();
    drop(shard);
    // The consensus layer had recorded entry 3 as the highest committed one.
    let (log, _) = crate::log::ShardLog::open(
        &dir.path().join("log"),
        crate::log::OpenOptions {
            segment_bytes: 64 << 20,
            truncate_corrupt: false,
        },
    )
    .unwrap();
    let committed = log.log_id_at(3).unwrap().unwrap();
    log.save_committed(Some(committed)).unwrap();
    drop(log);
    let shard = Shard::open(dir.path(), s.clone(), config()).unwrap();
    assert_eq!(shard.applied_state().unwrap(), committed);
    shard.refresh_blocking().unwrap();
    let found: Vec<bool> = (1..=5)
        .map(|i| shard.get(&format!("e{i}")).unwrap().is_some())
        .collect();
    assert_eq!(found, [true, true, true, false, false]);
}

/// Asserts that the GET value `got` is `written` to within one unit in the last place of
/// each f32 component (what a normalizing vector index gives back).
fn assert_vector_as_written(got: &serde_json::Value, written: &[f32]) {
    let got: Vec<f32> = serde_json::from_value(got.clone()).unwrap();
    assert_eq!(got.len(), written.len());
    for (a, b) in got.iter().zip(written) {
        assert!(
            (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1,
            "{got:?} is not {written:?}"
        );
    }
}

#[test]
fn get_returns_vectors_as_written_while_the_index_holds_them_normalized() {
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    assert!(
        shard.shared.fields.raw_vectors.is_none(),
        "a new shard keeps no second copy of its vectors"
    );
    let doc = json!({"id": "v", "fields": {"title": "t", "emb": [3.0, 4.0, 0.1, 0]}});
    shard.write_blocking(vec![upsert(&s, doc)]).unwrap();
    let written: Vec<f32> = vec![3.0, 4.0, 0.1, 0.0];
    // From the overlay before a refresh, from the vector index after one, and from the
    // vector checkpoint after a restart.
    assert_vector_as_written(&shard.get("v").unwrap().unwrap().fields["emb"], &written);
    shard.refresh_blocking().unwrap();
    assert_vector_as_written(&shard.get("v").unwrap().unwrap().fields["emb"], &written);
    assert!(shard.vector_index("emb").unwrap().normalizes());
    shard.close().unwrap();
    drop(shard);
    let shard = open(dir.path());
    assert_vector_as_written(&shard.get("v").unwrap().unwrap().fields["emb"], &written);
    let found = shard
        .search(&request(json!({"vector": [30, 40, 1, 0], "limit": 1})))
        .unwrap();
    assert_eq!(found.results[0].id, "v");
    assert!((found.results[0].score - 1.0).abs() < 1e-5);
}

#[test]
fn a_shard_of_the_raw_vectors_generation_still_opens_and_returns_vectors() {
    use crate::schema::SchemaGeneration;
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("index")).unwrap();
    tantivy::Index::create_in_dir(
        dir.path().join("index"),
        s.tantivy_schema_of(SchemaGeneration::WithRawVectors),
    )
    .unwrap();
    let shard = open(dir.path());
    assert!(shard.shared.fields.raw_vectors.is_some());
    let doc = json!({"id": "v", "fields": {"title": "t", "emb": [3.0, 4.0, 0.1, 0]}});
    shard.write_blocking(vec![upsert(&s, doc)]).unwrap();
    shard.refresh_blocking().unwrap();
    let written = [3.0f32, 4.0, 0.1, 0.0];
    assert_vector_as_written(&shard.get("v").unwrap().unwrap().fields["emb"], &written);
    let found = shard
        .search(&request(json!({"vector": [30, 40, 1, 0], "limit": 1})))
        .unwrap();
    assert!((found.results[0].score - 1.0).abs() < 1e-5);
}

#[test]
fn get_returns_an_unstored_vector_field_as_written_too() {
    let s = Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"u","fields":{"title":{"type":"text"},
            "emb":{"type":"vector","dimension":2,"distance":"cosine","stored":false}}}"#,
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), s.clone(), ShardConfig::default()).unwrap();
    let doc = json!({"id": "a", "fields": {"title": "t", "emb": [3, 4]}});
    shard.write_blocking(vec![upsert(&s, doc)]).unwrap();
    shard.refresh_blocking().unwrap();
    assert_eq!(
        shard.get("a").unwrap().unwrap().fields["emb"],
        json!([3.0, 4.0])
    );
}

/// The hostile phrase: 20 terms with slop 20 over one 90-word document allocated gigabytes
/// before tantivy's phrase scorer was patched (third_party/README.md). It must answer at
/// once, with the right matches.
#[test]
fn phrase_with_many_terms_and_slop_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    let words = ["alpha", "beta", "gamma"];
    let text: Vec<&str> = (0..90).map(|i| words[i % 3]).collect();
    shard
        .write_blocking(vec![
            upsert(&s, json!({"id":"long","fields":{"title": text.join(" ")}})),
            upsert(&s, json!({"id":"other","fields":{"title":"alpha delta"}})),
        ])
        .unwrap();
    shard.refresh_blocking().unwrap();
    let phrase: Vec<&str> = (0..20).map(|i| words[(i * 2) % 3]).collect();
    let started = std::time::Instant::now();
    let r = shard
        .search(&request(
            json!({"query": format!("\"{}\"~20", phrase.join(" ")), "limit": 10}),
        ))
        .unwrap();
    assert_eq!(ids(&r), vec!["long"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A phrase that needs more slop than allowed does not match.
    let r = shard
        .search(&request(
            json!({"query": format!("\"{}\"~0", phrase.join(" ")), "limit": 10}),
        ))
        .unwrap();
    assert!(r.results.is_empty(), "{r:?}");
    assert!(SearchRequest::from_json(br#"{"query": "\"alpha beta\"~256"}"#).is_err());
}

/// A search whose budget is spent stops and says so; a cancelled one answers nothing.
#[test]
fn a_spent_budget_stops_a_search_and_marks_it_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let shard = open(dir.path());
    let s = schema();
    let ops: Vec<Op> = (0..5000)
        .map(|i| {
            upsert(
                &s,
                json!({"id": format!("d{i}"), "fields": {"title": "common words here", "year": i}}),
            )
        })
        .collect();
    shard.write_blocking(ops).unwrap();
    shard.refresh_blocking().unwrap();
    let limits = crate::search::budget::SearchLimits::default();
    let forms = [
        json!({"query": "common", "limit": 10}),
        json!({"query": "common words", "limit": 10}),
        json!({"query": "\"common words\"~2", "limit": 10, "aggregations": {"y": {"stats": {"field": "year"}}}}),
        json!({"filter": "year:[0 TO 10000]", "limit": 10}),
    ];
    for body in forms {
        let full = shard.search(&request(body.clone())).unwrap();
        assert!(!full.timed_out);
        assert_eq!(full.total, 5000, "{body}");
        let spent = Arc::new(SearchBudget::new(&limits, std::time::Duration::ZERO));
        let r = shard.search_within(&request(body.clone()), &spent).unwrap();
        assert!(r.timed_out, "{body}");
        assert!(r.total < 5000, "{body}: {}", r.total);
        let cancelled = Arc::new(SearchBudget::new(
            &limits,
            std::time::Duration::from_secs(60),
        ));
        cancelled.cancel();
        assert!(matches!(
            shard.search_within(&request(body.clone()), &cancelled),
            Err(Error::Cancelled)
        ));
    }
}

/// `top_hits` sort values are the documents' values, not tantivy's u64 encoding of them.
#[test]
fn top_hits_sort_values_are_the_documents_values() {
    let (_dir, shard) = shard_with(&[
        json!({"id":"a","fields":{"title":"x","tag":"t","year":-7}}),
        json!({"id":"b","fields":{"title":"x","tag":"t","year":2024}}),
    ]);
    let hits = |aggs: serde_json::Value, path: &dyn Fn(&serde_json::Value) -> serde_json::Value| {
        let r = shard
            .search(&request(json!({"limit": 0, "aggregations": aggs})))
            .unwrap();
        path(&r.aggregations.unwrap())
    };
    let top =
        json!({"top_hits": {"size": 2, "sort": [{"year": "asc"}], "docvalue_fields": ["year"]}});
    let flat = hits(json!({"h": top.clone()}), &|a| a["h"]["hits"].clone());
    assert_eq!(flat[0]["sort"], json!([-7]), "{flat}");
    assert_eq!(flat[1]["sort"], json!([2024]), "{flat}");
    let nested = hits(
        json!({"t": {"terms": {"field": "tag"}, "aggs": {"h": top}}}),
        &|a| a["t"]["buckets"][0]["h"]["hits"].clone(),
    );
    assert_eq!(nested[0]["sort"], json!([-7]), "{nested}");
}

/// Polls until the copy's writer waits with no timer, or panics after `within`.
fn wait_until_settled(shard: &Shard, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !shard.is_settled() {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never settled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_settled_copy_waits_for_work_with_no_timer_and_a_write_restarts_it() {
    let s = schema();
    let dir = tempfile::tempdir().unwrap();
    let config = ShardConfig {
        refresh_interval: Duration::from_millis(10),
        idle_writer_close: Duration::from_millis(50),
        vector_checkpoint_interval: Duration::from_millis(20),
        ..ShardConfig::default()
    };
    let shard = Shard::open(dir.path(), s.clone(), config).unwrap();
    let first = json!({"id": "a", "fields": {"title": "first", "emb": [1.0, 0.0, 0.0, 0.0]}});
    shard.write_blocking(vec![upsert(&s, first)]).unwrap();
    wait_until_settled(&shard, Duration::from_secs(10));
    // The timer refreshed, saved and closed the writer, then stopped.
    let settled = shard.timer_wakeups();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shard.timer_wakeups(),
        settled,
        "a settled copy woke for nothing"
    );
    assert!(shard.is_settled());

    // A write ends the wait; the timer alone makes it searchable, then the copy settles again.
    let second = json!({"id": "b", "fields": {"title": "second", "emb": [0.0, 1.0, 0.0, 0.0]}});
    shard.write_blocking(vec![upsert(&s, second)]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ids(&shard.search(&request(json!({"query": "second"}))).unwrap()) != ["b"] {
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_until_settled(&shard, Duration::from_secs(10));
    drop(shard);
    // Everything was checkpointed before it settled: a reopen replays nothing.
    let progress = ReplayProgress::default();
    let shard =
        Shard::open_reporting(dir.path(), s.clone(), ShardConfig::default(), &progress).unwrap();
    assert_eq!(progress.replayed(), 0);
    assert_eq!(shard.applied_state().unwrap().index, 2);
    assert!(shard.get("b").unwrap().is_some());
}
