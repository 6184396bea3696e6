//! The user guide's federation quick start on loopback: three real `prism-server` processes
//! with mutual TLS, each with its own `prism.toml`; then partial results and health when a
//! node is killed.

use std::time::{Duration, Instant};

use prism_tests::cluster::start_federation;
use prism_tests::{wait_until, Server};
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
    assert_eq!(status, 200, "{body}");
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

    // A federated index through node 3 routes by id; node 1 then finds everything.
    let docs: Vec<Value> = (2..=30)
        .map(|i| json!({"id": format!("doc{i}"), "fields": {"title": format!("hello number {i}"), "tag": if i % 2 == 0 { "even" } else { "odd" }}}))
        .collect();
    let (status, indexed) = nodes[2].post_json(
        "/cluster/collections/docs/documents",
        &json!({"documents": docs}),
    );
    assert_eq!(status, 200, "{indexed}");
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
/// documents return the same top 10, scores within 1e-4 relative, the same `total` and the
/// same terms-aggregation counts for 60 queries.
#[test]
fn federation_ranks_like_a_single_node() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let schema = "name: docs\nfields:\n  title: {type: text}\n  tag: {type: keyword}\n";
    let nodes = start_federation(dir.path(), 3, schema);
    let single = Server::start(&dir.path().join("single"), &[]);
    let (status, _) = single.put_json(
        "/collections/docs",
        &json!({"fields": {"title": {"type": "text"}, "tag": {"type": "keyword"}}}),
    );
    assert_eq!(status, 201);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let docs: Vec<Value> = (0..20_000)
        .map(|i| {
            let len = rng.gen_range(4..40);
            let title: Vec<&str> = (0..len).map(|_| words[(rng.gen::<f64>().powi(4) * words.len() as f64) as usize].as_str()).collect();
            json!({"id": format!("doc-{i}"), "fields": {"title": title.join(" "), "tag": format!("t{}", rng.gen_range(0..5))}})
        })
        .collect();
    for batch in docs.chunks(2000) {
        let body = json!({"documents": batch});
        let (status, r) = nodes[0].post_json("/cluster/collections/docs/documents", &body);
        assert!(status == 200 && r["failed_docs"] == 0, "{r}");
        let (status, r) = single.post_json("/collections/docs/documents", &body);
        assert!(status == 200 && r["failed_docs"] == 0, "{r}");
    }
    for node in &nodes {
        node.post_json("/collections/docs/refresh", &json!({}));
    }
    single.post_json("/collections/docs/refresh", &json!({}));
    let (_, all) = nodes[2].post_json("/cluster/collections/docs/search", &json!({"limit": 1}));
    assert_eq!(all["total"], 20_000, "{all}");
    for q in 0..60 {
        let n = rng.gen_range(1..4);
        let query: Vec<&str> = (0..n)
            .map(|_| words[rng.gen_range(0..150)].as_str())
            .collect();
        let body = json!({"query": query.join(" "), "limit": 10, "aggregations": {"tags": {"terms": {"field": "tag"}}}});
        let (_, fed) = nodes[q % 3].post_json("/cluster/collections/docs/search", &body);
        let (_, one) = single.post_json("/collections/docs/search", &body);
        assert_eq!(fed["total"], one["total"], "total of {body}");
        assert_eq!(
            fed["aggregations"], one["aggregations"],
            "aggregations of {body}"
        );
        let hits = |v: &Value| -> Vec<(String, f64)> {
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["id"].as_str().unwrap().to_string(),
                        h["score"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        let (f, s) = (hits(&fed), hits(&one));
        assert_eq!(f.len(), s.len(), "{body}");
        for (a, b) in f.iter().zip(&s) {
            assert!(
                (a.1 - b.1).abs() <= 1e-4 * b.1.abs().max(1e-9),
                "{body}: {a:?} vs {b:?}"
            );
        }
        // Ids agree except among documents tied at the cut-off score.
        let cutoff = s.last().map_or(0.0, |h| h.1);
        let above = |hs: &[(String, f64)]| -> std::collections::BTreeSet<String> {
            hs.iter()
                .filter(|h| h.1 > cutoff * (1.0 + 1e-4))
                .map(|h| h.0.clone())
                .collect()
        };
        assert_eq!(above(&f), above(&s), "{body}");
    }
}
