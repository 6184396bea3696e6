//! Spec 003's chaos test with real processes: five nodes at RF 3, writers going through
//! every node, a random node SIGKILLed 2 s in. Every acknowledged document is then on every
//! copy of its shard with its last acknowledged value (or a later value whose write's outcome
//! was unknown), no refused value is anywhere, and the copies' checksums agree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_tests::raft_cluster::TestCluster;
use rand::Rng;
use serde_json::{json, Value};

/// What became of each value written to an id.
#[derive(Default)]
struct History {
    /// id → last acknowledged value.
    acknowledged: BTreeMap<String, i64>,
    /// id → values whose outcome is unknown.
    unknown: BTreeMap<String, BTreeSet<i64>>,
    /// id → values refused (never applied).
    refused: BTreeMap<String, BTreeSet<i64>>,
}

#[test]
fn kill_during_writes_loses_no_acknowledged_write() {
    let target: usize = std::env::var("PRISM_CHAOS_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 5);
    cluster.create_collection(0, "docs", 3);
    cluster.wait_for_leaders("docs", 3);

    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.server.url("")).collect();
    let history = Arc::new(Mutex::new(History::default()));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let (bases, history, acknowledged, stop) = (
                bases.clone(),
                history.clone(),
                acknowledged.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()
                    .unwrap();
                let mut k: i64 = 0;
                while acknowledged.load(Ordering::SeqCst) < target && !stop.load(Ordering::SeqCst) {
                    // Ten documents a request; ids repeat, so later values overwrite.
                    let batch: Vec<(String, i64)> = (0..10)
                        .map(|_| {
                            k += 1;
                            (format!("w{thread}-{}", k % 1500), k * 10 + thread)
                        })
                        .collect();
                    let documents: Vec<Value> = batch
                        .iter()
                        .map(|(id, v)| json!({"id": id, "fields": {"title": "chaos", "n": v}}))
                        .collect();
                    let base = &bases[(k as usize / 10) % bases.len()];
                    let answer = client
                        .post(format!("{base}/collections/docs/documents"))
                        .json(&json!({ "documents": documents }))
                        .send();
                    let mut history = history.lock().unwrap();
                    let (status, body) = match answer {
                        Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or_default()),
                        // The node was killed mid-request: unknown.
                        Err(_) => (0, Value::Null),
                    };
                    let code = body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let refused_ids: BTreeSet<String> = body["errors"]
                        .as_array()
                        .map(|e| {
                            e.iter()
                                .filter_map(|e| e["id"].as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (id, v) in batch {
                        match (status, code.as_str()) {
                            (201, _) if !refused_ids.contains(&id) => {
                                history.acknowledged.insert(id, v);
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                            }
                            (201, _) | (503, "no_quorum") => {
                                history.refused.entry(id).or_default().insert(v);
                            }
                            _ => {
                                history.unknown.entry(id).or_default().insert(v);
                            }
                        }
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs(2));
    let victim = rand::thread_rng().gen_range(0..5);
    let killed_at = Instant::now();
    cluster.nodes[victim].server.kill();
    println!("killed {} 2 s into the writes", cluster.nodes[victim].name);
    let deadline = Instant::now() + Duration::from_secs(600);
    while acknowledged.load(Ordering::SeqCst) < target {
        assert!(
            Instant::now() < deadline,
            "{} acknowledged writes after 10 minutes",
            acknowledged.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    println!(
        "{} acknowledged document writes, {:?} after the kill",
        acknowledged.load(Ordering::SeqCst),
        killed_at.elapsed()
    );

    cluster.nodes[victim].server.start_again();
    cluster.wait_for_members(5);
    let via = (victim + 1) % 5;
    cluster.wait_in_sync("docs", via, 3, 3);

    // Every copy of every shard holds the same content (`wait_in_sync` compared their
    // document counts and content checksums), so each id is read once, through the nodes in
    // turn: its value is then the value on every copy.
    let history = history.lock().unwrap();
    let mut checked = 0;
    for (i, (id, last)) in history.acknowledged.iter().enumerate() {
        let node = &cluster.nodes[i % cluster.nodes.len()];
        let (code, doc) = node
            .server
            .get(&format!("/collections/docs/documents/{id}"));
        assert_eq!(
            code, 200,
            "acknowledged {id} = {last} is missing on {}",
            node.name
        );
        let found = doc["fields"]["n"].as_i64().unwrap();
        let unknown_later = history
            .unknown
            .get(id)
            .is_some_and(|u| u.contains(&found) && found > *last);
        assert!(
            found == *last || unknown_later,
            "{id}: {} reads {found}, last acknowledged {last}",
            node.name
        );
        assert!(
            !history.refused.get(id).is_some_and(|r| r.contains(&found)),
            "{id}: a refused value {found} was applied"
        );
        checked += 1;
    }
    println!("{checked} acknowledged ids read back, through every node in turn");
}
