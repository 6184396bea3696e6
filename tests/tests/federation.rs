//! The user guide's federation quick start on loopback: three real `prism-server` processes
//! with mutual TLS, each with its own `prism.toml`; then partial results and health when a
//! node is killed.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use prism_tests::{wait_until, Server};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::{json, Value};

/// A CA and one node certificate for localhost/127.0.0.1, as scripts/generate-certs.sh makes.
fn write_certs(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut node = CertificateParams::new(Vec::<String>::new()).unwrap();
    node.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let node_key = KeyPair::generate().unwrap();
    let node_cert = node
        .signed_by(&node_key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node-cert.pem"), node_cert.pem()).unwrap();
    std::fs::write(dir.join("node-key.pem"), node_key.serialize_pem()).unwrap();
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_config(i: usize, ports: &[u16], tls: &Path) -> String {
    let seeds: Vec<String> = ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        r#"[cluster]
enabled = true
node_id = "node-{n}"
bind_addr = "127.0.0.1:{port}"
seed_nodes = [{seeds}]
connect_timeout_ms = 1000
request_timeout_ms = 2000

[cluster.tls]
enabled = true
cert_path = "{tls}/node-cert.pem"
key_path = "{tls}/node-key.pem"
ca_cert_path = "{tls}/ca-cert.pem"
skip_verify = false

[cluster.health]
heartbeat_interval_ms = 200
failure_threshold = 3
suspect_timeout_ms = 1500

[federation.query]
allow_partial_results = true
partial_results_timeout_ms = 2000
min_successful_shards = 1
"#,
        n = i + 1,
        port = ports[i],
        seeds = seeds.join(", "),
        tls = tls.display()
    )
}

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
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    write_certs(&tls);
    let schemas = dir.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("docs.yaml"),
        "name: docs\nfields:\n  title: {type: text}\n  tag: {type: keyword}\n",
    )
    .unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let mut nodes: Vec<Server> = (0..3)
        .map(|i| {
            let config = dir.path().join(format!("node{}.toml", i + 1));
            std::fs::write(&config, node_config(i, &ports, &tls)).unwrap();
            let config = config.to_string_lossy().to_string();
            let schemas = schemas.to_string_lossy().to_string();
            Server::start(
                &dir.path().join(format!("data{}", i + 1)),
                &[("PRISM_CONFIG", &config), ("PRISM_SCHEMAS_DIR", &schemas)],
            )
        })
        .collect();

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
