//! The user guide's federation quick start on loopback: three real `prism-server` processes
//! with mutual TLS, each with its own `prism.toml`; then partial results and health when a
//! node is killed.

use std::time::{Duration, Instant};

use prism_tests::cluster::start_federation;
use prism_tests::ranking::{self, assert_same_ranking, ordered_ids};
use prism_tests::{wait_until, ApiDocument, Server};
use serde_json::{json, Value};

fn ids(response: &Value) -> Vec<String> {
    let mut ids: Vec<String> = response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn node_state(server: &Server, node_id: &str) -> String {
    let (_, health) = server.get("/cluster/health");
    health["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == node_id))
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn quick_start_partial_results_and_health_on_three_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_federation(
        dir.path(),
        3,
        "name: docs\nfields:\n  title: {type: text}\n  tag: {type: keyword}\n",
    );

    // 3. Index on node 1 (its local shard).
    let (status, body) = nodes[0].post_json(
        "/collections/docs/documents?refresh=wait_for",
        &json!({"documents": [{"id": "doc1", "fields": {"title": "hello world"}}]}),
    );
    assert_eq!(status, 201, "{body}");
    // 4. Federated search from node 3 finds it.
    let (status, found) = nodes[2].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello"}),
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(ids(&found), vec!["doc1"]);
    assert_eq!(found["is_partial"], false);
    assert_eq!(
        found["shard_status"],
        json!({"total": 3, "successful": 3, "failed": 0})
    );
    let api = ApiDocument::of(&nodes[2]);
    api.assert_answer("POST", "/cluster/collections/{name}/search", 200, &found);

    // A federated index through node 3 routes by id; node 1 then finds everything.
    let docs: Vec<Value> = (2..=30)
        .map(|i| json!({"id": format!("doc{i}"), "fields": {"title": format!("hello number {i}"), "tag": if i % 2 == 0 { "even" } else { "odd" }}}))
        .collect();
    let (status, indexed) = nodes[2].post_json(
        "/cluster/collections/docs/documents",
        &json!({"documents": docs}),
    );
    assert_eq!(status, 200, "{indexed}");
    api.assert_answer(
        "POST",
        "/cluster/collections/{name}/documents",
        200,
        &indexed,
    );
    assert_eq!(
        (
            indexed["total_docs"].clone(),
            indexed["successful_docs"].clone(),
            indexed["failed_docs"].clone()
        ),
        (json!(29), json!(29), json!(0))
    );
    let all = wait_until(
        Duration::from_secs(10),
        "federated documents to be searchable",
        || {
            let (_, r) = nodes[0].post_json(
                "/cluster/collections/docs/search",
                &json!({"query": "hello", "limit": 50}),
            );
            (r["total"] == 30).then_some(r)
        },
    );
    assert_eq!(ids(&all).len(), 30);
    // Aggregations merge the shards' intermediate results: 15 even and 14 odd tags.
    let (_, aggs) = nodes[1].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "limit": 1, "aggregations": {"tags": {"terms": {"field": "tag"}}}}),
    );
    assert_eq!(
        aggs["aggregations"]["tags"]["buckets"],
        json!([{"key": "even", "doc_count": 15}, {"key": "odd", "doc_count": 14}]),
        "{aggs}"
    );
    // The documents really are spread over the three nodes.
    let local_counts: Vec<u64> = nodes
        .iter()
        .map(|n| {
            n.post_json("/collections/docs/search", &json!({"limit": 1}))
                .1["total"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(local_counts.iter().sum::<u64>(), 30);
    assert!(local_counts.iter().all(|c| *c > 0), "{local_counts:?}");
    // Paging across shards: offset applies to the merged list.
    let (_, page1) = nodes[1].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "limit": 10}),
    );
    let (_, page2) = nodes[1].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "limit": 10, "offset": 10}),
    );
    let first: Vec<&Value> = page1["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["id"])
        .collect();
    assert!(
        page2["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| !first.contains(&&h["id"])),
        "pages overlap"
    );

    wait_until(
        Duration::from_secs(10),
        "every node to see the others alive",
        || {
            (node_state(&nodes[0], "node-2") == "alive"
                && node_state(&nodes[0], "node-3") == "alive")
                .then_some(())
        },
    );

    // Kill node 2: answers stay within request_timeout_ms + 1 s, partial, with the rest.
    let on_node2 = local_counts[1];
    nodes[1].kill();
    let killed = Instant::now();
    // Health: suspect after failure_threshold missed heartbeats (3 × 200 ms), not yet dead.
    wait_until(
        Duration::from_millis(200 * 3 + 700),
        "node-2 to be suspect",
        || (node_state(&nodes[0], "node-2") == "suspect").then_some(()),
    );
    let started = Instant::now();
    let (status, partial) = nodes[0].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "limit": 50}),
    );
    assert!(
        started.elapsed() < Duration::from_millis(2000 + 1000),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["is_partial"], true);
    api.assert_answer("POST", "/cluster/collections/{name}/search", 200, &partial);
    let (status, health) = nodes[0].get("/cluster/health");
    api.assert_answer("GET", "/cluster/health", status, &health);
    assert_eq!(partial["shard_status"]["failed"], 1);
    assert_eq!(partial["shard_status"]["successful"], 2);
    assert_eq!(
        partial["total"].as_u64().unwrap(),
        30 - on_node2,
        "the other shards' results are all there"
    );
    let (status, refused) = nodes[0].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "allow_partial_results": false}),
    );
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "shards_unavailable");
    api.assert_answer("POST", "/cluster/collections/{name}/search", 503, &refused);

    // Dead once suspect_timeout_ms (1.5 s) has also passed, measured from the kill; alive
    // again after a restart.
    let dead_by = Duration::from_millis(200 * 3 + 1500 + 700);
    wait_until(
        dead_by.saturating_sub(killed.elapsed()),
        "node-2 to be dead",
        || (node_state(&nodes[0], "node-2") == "dead").then_some(()),
    );
    nodes[1].start_again();
    wait_until(Duration::from_secs(10), "node-2 to be alive again", || {
        (node_state(&nodes[0], "node-2") == "alive").then_some(())
    });
    let (_, healed) = nodes[0].post_json(
        "/cluster/collections/docs/search",
        &json!({"query": "hello", "limit": 50}),
    );
    assert_eq!(healed["total"], 30, "{healed}");
    assert_eq!(healed["is_partial"], false);
}

/// A 3-node federation and a single node over the same generated Zipf corpus of 20,000
/// documents return the same ids in the same order (ties included: both rank equal scores by
/// the id hash), scores within 1e-4 relative, the same `total` and the same terms-aggregation
/// counts: for 60 text queries, 20 weighted hybrid queries, 10 vector queries and pages deep
/// into match-all and filter-only lists, where every score ties. Then, after more writes,
/// cached statistics are found stale and ranking still agrees. Last, the same on nave-kjv's
/// 31,102 verses and 1,048 topics (`nave_kjv_ranks_alike`).
#[test]
fn federation_ranks_like_a_single_node() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let schema = "name: docs\nfields:\n  title: {type: text}\n  tag: {type: keyword}\n  bucket: {type: keyword}\n  emb: {type: vector, dimension: 8}\n";
    let nodes = start_federation(dir.path(), 3, schema);
    let single = Server::start(&dir.path().join("single"), &[]);
    let (status, _) = single.put_json(
        "/collections/docs",
        &json!({"fields": {"title": {"type": "text"}, "tag": {"type": "keyword"},
            "bucket": {"type": "keyword"}, "emb": {"type": "vector", "dimension": 8}}}),
    );
    assert_eq!(status, 201);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let make_docs = |range: std::ops::Range<usize>, rng: &mut rand::rngs::StdRng| -> Vec<Value> {
        range
            .map(|i| {
                let len = rng.gen_range(4..40);
                let title: Vec<&str> = (0..len)
                    .map(|_| {
                        words[(rng.gen::<f64>().powi(4) * words.len() as f64) as usize].as_str()
                    })
                    .collect();
                let emb: Vec<f32> = (0..8).map(|_| rng.gen_range(-1.0..1.0)).collect();
                json!({"id": format!("doc-{i}"), "fields": {"title": title.join(" "),
                    "tag": format!("t{}", rng.gen_range(0..5)),
                    "bucket": format!("b{}", rng.gen_range(0..20)), "emb": emb}})
            })
            .collect()
    };
    let index_everywhere = |docs: &[Value]| {
        for batch in docs.chunks(2000) {
            let body = json!({"documents": batch});
            let (status, r) = nodes[0].post_json("/cluster/collections/docs/documents", &body);
            assert!(status == 200 && r["failed_docs"] == 0, "{r}");
            let (status, r) = single.post_json("/collections/docs/documents", &body);
            assert!(status == 201 && r["failed_docs"] == 0, "{r}");
        }
        for node in &nodes {
            node.post_json("/collections/docs/refresh", &json!({}));
        }
        single.post_json("/collections/docs/refresh", &json!({}));
    };
    let docs = make_docs(0..20_000, &mut rng);
    index_everywhere(&docs);
    let (_, all) = nodes[2].post_json("/cluster/collections/docs/search", &json!({"limit": 1}));
    assert_eq!(all["total"], 20_000, "{all}");
    let text_query = |rng: &mut rand::rngs::StdRng| -> Value {
        let n = rng.gen_range(1..4);
        let query: Vec<&str> = (0..n)
            .map(|_| words[rng.gen_range(0..150)].as_str())
            .collect();
        json!({"query": query.join(" "), "limit": 10, "aggregations": {"tags": {"terms": {"field": "tag"}}}})
    };
    let compare = |q: usize, body: &Value| {
        let (_, fed) = nodes[q % 3].post_json("/cluster/collections/docs/search", body);
        let (_, one) = single.post_json("/collections/docs/search", body);
        assert_same_ranking(&fed, &one, body, "title");
    };
    let text_queries: Vec<Value> = (0..60).map(|_| text_query(&mut rng)).collect();
    for (q, body) in text_queries.iter().enumerate() {
        compare(q, body);
    }
    // Hybrid and vector queries inside one bucket (~1,000 documents), where every shard and
    // the single node search vectors exactly. Weighted fusion with lists longer than the
    // bucket: fused scores do not depend on how tied text scores are ordered.
    for q in 0..30 {
        let emb: Vec<f32> = (0..8).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let filter = format!("bucket:b{}", rng.gen_range(0..20));
        let body = if q < 20 {
            let mut body = text_query(&mut rng);
            body["vector"] = json!(emb);
            body["filter"] = json!(filter);
            body["hybrid"] =
                json!({"strategy": "weighted", "text_weight": 0.6, "vector_weight": 0.4});
            body["rank_window_size"] = json!(2000);
            body
        } else {
            json!({"vector": emb, "filter": filter, "limit": 10})
        };
        compare(q, &body);
    }
    // Every score ties in match-all and filter-only lists: pages deep into them, and the
    // same pages one after another, never overlap or skip.
    for (q, offset) in [0, 10, 20, 990, 9_990].into_iter().enumerate() {
        compare(q, &json!({"limit": 10, "offset": offset}));
        compare(
            q,
            &json!({"filter": "tag:t3", "limit": 10, "offset": offset % 3000}),
        );
    }
    let page = |offset: usize| -> Vec<String> {
        let (_, r) = nodes[1].post_json(
            "/cluster/collections/docs/search",
            &json!({"query": "w1 w2", "limit": 25, "offset": offset}),
        );
        ordered_ids(&r)
    };
    let (_, whole) = single.post_json(
        "/collections/docs/search",
        &json!({"query": "w1 w2", "limit": 100}),
    );
    let paged: Vec<String> = (0..4).flat_map(|p| page(p * 25)).collect();
    assert_eq!(
        paged,
        ordered_ids(&whole),
        "four federated pages of 25 = one page of 100"
    );
    // Statistics were cached by the text queries: asking again hits the cache.
    let cache = |result: &str| -> u64 {
        (0..3)
            .map(|i| {
                nodes[i].metric(&format!(
                    "prism_cluster_stats_cache_total{{result=\"{result}\"}}"
                )) as u64
            })
            .sum()
    };
    let hits_before = cache("hit");
    for (q, body) in text_queries.iter().enumerate().take(10) {
        compare(q, body);
    }
    assert!(
        cache("hit") >= hits_before + 10,
        "hits {} -> {}",
        hits_before,
        cache("hit")
    );
    // More documents change every shard's statistics: the cached entries are stale, are
    // gathered afresh, and ranking still equals the single node's.
    let stale_before = cache("stale");
    let more = make_docs(20_000..23_000, &mut rng);
    index_everywhere(&more);
    for (q, body) in text_queries.iter().enumerate().take(10) {
        compare(q, body);
    }
    assert!(
        cache("stale") >= stale_before + 10,
        "stale {} -> {}",
        stale_before,
        cache("stale")
    );

    if let Some(nave_dir) = ranking::nave_dir_or_skip("federation_ranks_like_a_single_node") {
        let schema = json!({"fields": {"text": {"type": "text"}}});
        for node in &nodes {
            let (status, body) = node.put_json("/collections/kjv", &schema);
            assert_eq!(status, 201, "{body}");
        }
        let nodes: Vec<&Server> = nodes.iter().collect();
        ranking::nave_kjv_ranks_alike(&nodes, ranking::FEDERATION, &single, &nave_dir);
    }
}
