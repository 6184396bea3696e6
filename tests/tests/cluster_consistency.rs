//! Read consistency and minority partitions with real processes, each node in a network
//! namespace of its own: spec 003's partition test on five nodes, and `strong`,
//! `read_your_writes`, `bounded` and `eventual` reads through followers.
//!
//! Without network namespaces (not root) the partition test says so and skips.

use std::time::{Duration, Instant};

use prism_tests::raft_cluster::{Ledger, TestCluster};
use prism_tests::wait_until;
use serde_json::{json, Value};

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The GET of document `id` through node `via`, with query parameters `query`.
fn get(cluster: &TestCluster, via: usize, id: &str, query: &str) -> (u16, Value) {
    cluster.nodes[via]
        .server
        .get(&format!("/collections/docs/documents/{id}?{query}"))
}

/// The nodes that are not `of`, of `n`.
fn others(of: usize, n: usize) -> Vec<usize> {
    (0..n).filter(|i| *i != of).collect()
}

/// Node `via`'s count of nodes it sees as suspect or dead.
fn unreachable_seen_by(cluster: &TestCluster, via: usize) -> Option<usize> {
    let (_, status) = cluster.nodes[via].server.get("/cluster/status");
    Some(
        status["nodes"]
            .as_array()?
            .iter()
            .filter(|n| matches!(n["state"].as_str(), Some("suspect" | "dead")))
            .count(),
    )
}

/// Spec 003: five nodes split into [1,2] and [3,4,5] (here 0,1 | 2,3,4), a collection with a
/// copy on every node. The majority writes; the minority refuses writes with `no_quorum`
/// within the request time-out, serves stale reads where `allow_stale_reads` (node 0) and
/// refuses them where not (node 1); `strong` reads are refused there. Healed, every copy
/// converges and no refused write appears.
#[test]
fn a_minority_partition_is_read_only_and_converges_after_healing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start_each(dir.path(), 5, 3000, &|i| {
        if i == 1 {
            "[cluster.consistency]\nallow_stale_reads = false".into()
        } else {
            String::new()
        }
    });
    if !cluster.net.is_isolated() {
        eprintln!("skipped: partitions need network namespaces");
        return;
    }
    let (code, body) = cluster.nodes[0].server.put_json(
        "/collections/docs",
        &json!({
            "fields": {"title": {"type": "text"}, "n": {"type": "i64"}},
            "shards": 2,
            "replication_factor": 5,
        }),
    );
    assert_eq!(code, 201, "{body}");
    cluster.wait_for_leaders("docs", 2);
    let mut ledger = Ledger::default();
    let before = ids("before", 20);
    wait_until(Duration::from_secs(20), "a first write", || {
        let (code, answer) = cluster.write(0, "docs", &before, 424_242);
        (code == 201 && answer["successful_docs"] == 20).then_some(())
    });
    ledger.acknowledged.extend(before.iter().cloned());
    // Every copy applied them (a follower learns of a commit from the leader's next message).
    cluster.wait_in_sync("docs", 0, 2, 5);

    let (minority, majority) = (vec![0, 1], vec![2, 3, 4]);
    cluster.net.partition(&minority, &majority);
    let cut_at = Instant::now();

    // The majority takes writes (a leader in the minority is replaced first).
    let mut attempt = 0;
    let resumed = wait_until(
        Duration::from_secs(20),
        "writes through node 2 to succeed",
        || {
            attempt += 1;
            let batch = ids(&format!("majority{attempt}"), 20);
            let (code, answer) = cluster.write(2, "docs", &batch, attempt);
            ledger.record(&batch, code, &answer);
            (code == 201 && answer["successful_docs"] == 20).then(|| cut_at.elapsed())
        },
    );
    println!("writes through the majority resumed {resumed:?} after the partition");
    // The majority's metadata leader (a new one, if it led from the minority side).
    let majority_names: Vec<String> = majority
        .iter()
        .map(|i| cluster.nodes[*i].name.clone())
        .collect();
    let meta_before = wait_until(
        Duration::from_secs(20),
        "a metadata leader in the majority",
        || {
            let status = cluster.nodes[2].server.get("/cluster/status").1;
            let leader = status["leader"].as_str()?.to_string();
            majority_names.contains(&leader).then_some(status)
        },
    );

    // The minority, once it suspects the majority, refuses writes at once.
    for via in &minority {
        wait_until(
            Duration::from_secs(10),
            "the minority to suspect the majority",
            || (unreachable_seen_by(&cluster, *via)? == 3).then_some(()),
        );
    }
    for via in minority.iter().copied() {
        for attempt in 0..3 {
            let batch = ids(&format!("minority{via}-{attempt}"), 10);
            let started = Instant::now();
            let (code, answer) = cluster.write(via, "docs", &batch, 99);
            let took = started.elapsed();
            ledger.record(&batch, code, &answer);
            assert_eq!(code, 503, "{answer}");
            assert_eq!(answer["error"]["code"], "no_quorum", "{answer}");
            assert!(
                took < Duration::from_millis(500),
                "a minority write took {took:?} to be refused"
            );
        }
    }

    // Node 0 allows stale reads: eventual and bounded reads of what it holds are served
    // (a bounded one only while its copy is known fresh: eventual is the check here).
    let (code, doc) = get(&cluster, 0, "before-3", "");
    assert_eq!(code, 200, "{doc}");
    let (code, found) = cluster.nodes[0].server.post_json(
        "/collections/docs/search",
        &json!({"filter": "n:424242", "limit": 50}),
    );
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["total"], 20, "{found}");
    // A strong read needs a majority, in the minority: refused with a clear reason.
    let (code, refused) = get(&cluster, 0, "before-3", "consistency=strong");
    assert_eq!(code, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "no_quorum", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("minority"),
        "{refused}"
    );
    // Node 1 does not allow stale reads: every read is refused there, and says why.
    for query in ["", "consistency=bounded"] {
        let (code, refused) = get(&cluster, 1, "before-3", query);
        assert_eq!(code, 503, "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("allow_stale_reads = false"),
            "{refused}"
        );
    }
    // The majority serves every level.
    for level in ["eventual", "bounded", "strong"] {
        let (code, doc) = get(&cluster, 3, "before-3", &format!("consistency={level}"));
        assert_eq!(code, 200, "{level}: {doc}");
    }

    // Healed: every copy converges and nothing refused appears.
    cluster.net.heal();
    cluster.wait_for_members(5);
    for via in &minority {
        wait_until(
            Duration::from_secs(10),
            "the minority to see the majority again",
            || (unreachable_seen_by(&cluster, *via)? == 0).then_some(()),
        );
    }
    let total = cluster.wait_in_sync("docs", 2, 2, 5);
    for via in 0..5 {
        ledger.check(&cluster, via);
    }
    // Recorded, not asserted: a node of the minority can still win a metadata election just
    // after the heal (its suspicion of the leader clears after that of the others, so for a
    // moment it reaches a majority without its leader). A known problem, for the next change.
    let meta_after = cluster.nodes[2].server.get("/cluster/status").1;
    println!(
        "metadata leader and term: {} {} before the heal, {} {} after",
        meta_before["leader"], meta_before["term"], meta_after["leader"], meta_after["term"]
    );
    println!(
        "{} acknowledged, {} refused, {} unknown; {total} documents on every copy",
        ledger.acknowledged.len(),
        ledger.refused.len(),
        ledger.unknown.len()
    );
}

/// The node leading shard 0 of `docs`.
fn shard_leader(cluster: &TestCluster) -> usize {
    let report = cluster.shards_report().expect("a shards report");
    let name = report["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["collection"] == "docs" && c["shard"] == 0 && c["role"] == "leader")
        .and_then(|c| c["node"].as_str())
        .expect("a leader of shard 0")
        .to_string();
    cluster.index_of(&name)
}

/// `strong` reads through a follower see the write acknowledged just before them; so do
/// `read_your_writes` reads with the write's token on a follower that was paused while it
/// happened (SIGSTOP); `bounded` reads are served through a follower whose leader answers.
#[test]
fn strong_and_read_your_writes_reads_see_the_last_acknowledged_write_on_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::start(dir.path(), 3);
    cluster.create_collection(0, "docs", 1);
    cluster.wait_for_leaders("docs", 1);
    let leader = shard_leader(&cluster);
    let follower = others(leader, 3)[0];

    // Strong: each write through the leader, then at once a strong GET and a strong search
    // through a follower.
    for round in 0..20 {
        let id = format!("strong-{round}");
        let (code, answer) = cluster.write(leader, "docs", std::slice::from_ref(&id), round);
        assert_eq!(code, 201, "{answer}");
        let (code, doc) = get(&cluster, follower, &id, "consistency=strong");
        assert_eq!(code, 200, "round {round}: {doc}");
        assert_eq!(doc["fields"]["n"], round, "round {round}: {doc}");
        let (code, found) = cluster.nodes[follower].server.post_json(
            "/collections/docs/search",
            &json!({"filter": format!("n:{round}"), "consistency": "strong"}),
        );
        assert_eq!(code, 200, "{found}");
        assert_eq!(
            found["results"][0]["id"],
            id.as_str(),
            "round {round}: {found}"
        );
    }

    // Read-your-writes: the follower is paused while 20 documents are written through the
    // leader (the third copy makes the majority), then resumed and read at once.
    let mut eventual_saw = Vec::new();
    for round in 0..5 {
        let lagging = others(leader, 3)[round % 2];
        cluster.nodes[lagging].server.pause();
        let batch = ids(&format!("ryw{round}"), 20);
        let (code, answer) = cluster.write(leader, "docs", &batch, 1000 + round as i64);
        cluster.nodes[lagging].server.resume();
        assert_eq!(code, 201, "{answer}");
        let token = answer["consistency_token"]
            .as_str()
            .expect("a token")
            .to_string();
        let last = batch.last().unwrap();
        // What an eventual read saw right after the resume (it may lag).
        let (code, _) = get(&cluster, lagging, last, "");
        eventual_saw.push(code);
        let (code, doc) = get(
            &cluster,
            lagging,
            last,
            &format!("consistency_token={token}"),
        );
        assert_eq!(code, 200, "round {round}: {doc}");
        assert_eq!(doc["fields"]["n"], 1000 + round as i64, "{doc}");
        // The same through the headers, for a search.
        let response = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(
                cluster.nodes[lagging]
                    .server
                    .url("/collections/docs/search"),
            )
            .header("X-Prism-Consistency", "read_your_writes")
            .header("X-Prism-Consistency-Token", &token)
            .json(&json!({"filter": format!("n:{}", 1000 + round), "limit": 50}))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let found: Value = response.json().unwrap();
        assert_eq!(found["total"], 20, "round {round}: {found}");
    }
    println!("eventual reads right after a resume answered {eventual_saw:?} (404: not there yet)");

    // Spec 004's promotion barrier: a copy paused while writes went on is refused
    // leadership (409, nothing changes); once resumed and caught up, it is elected.
    let target = others(leader, 3)[1];
    let term_of_leader = || {
        let report = cluster.shards_report().expect("a shards report");
        report["copies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["collection"] == "docs" && c["role"] == "leader")
            .map(|c| (c["node"].clone(), c["term"].clone()))
    };
    let before = term_of_leader();
    cluster.nodes[target].server.pause();
    let batch = ids("barrier", 20);
    let (code, answer) = cluster.write(leader, "docs", &batch, 7);
    assert_eq!(code, 201, "{answer}");
    let ask = json!({"collection": "docs", "shard": 0, "node": cluster.nodes[target].name});
    let (code, refused) = cluster.nodes[leader]
        .server
        .post_json("/cluster/election", &ask);
    cluster.nodes[target].server.resume();
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "not_caught_up", "{refused}");
    assert_eq!(
        term_of_leader(),
        before,
        "a refused promotion changed the leader"
    );
    let (code, elected) = wait_until(Duration::from_secs(20), "the promotion", || {
        let (code, body) = cluster.nodes[leader]
            .server
            .post_json("/cluster/election", &ask);
        (code == 200).then_some((code, body))
    });
    assert_eq!(code, 200, "{elected}");
    assert_eq!(shard_leader(&cluster), target);

    // Bounded: served through a follower, whose leader answers.
    let (code, doc) = get(&cluster, follower, "strong-0", "consistency=bounded");
    assert_eq!(code, 200, "{doc}");

    // A bad level or token is the client's mistake, named.
    let (code, bad) = get(&cluster, follower, "strong-0", "consistency=linearizable");
    assert_eq!(code, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_consistency", "{bad}");
    let (code, bad) = get(
        &cluster,
        follower,
        "strong-0",
        "consistency=read_your_writes",
    );
    assert_eq!(code, 400, "{bad}");
    let (code, bad) = cluster.nodes[follower].server.post_json(
        "/collections/docs/search",
        &json!({"query": "x", "consistency_token": "g1:zero"}),
    );
    assert_eq!(code, 400, "{bad}");
}

/// A copy that was down while 5,200 writes happened comes back to a leader whose log was
/// purged behind a snapshot (openraft snapshots every 5,000 entries and keeps 1,000): it
/// catches up by snapshot, `/cluster/shards` and `/metrics` say so, and its content equals
/// the leader's.
#[test]
fn a_copy_down_while_the_log_was_purged_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(dir.path(), 3);
    cluster.create_collection(0, "docs", 1);
    cluster.wait_for_leaders("docs", 1);
    let leader = shard_leader(&cluster);
    let down = others(leader, 3)[0];
    cluster.nodes[down].server.kill();

    // 5,200 writes (log entries), four clients at a time, through the leader.
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let cluster = &cluster;
            scope.spawn(move || {
                for k in 0..1300 {
                    let id = format!("w{client}-{}", k % 400);
                    let (code, answer) =
                        cluster.write(leader, "docs", std::slice::from_ref(&id), k);
                    assert_eq!(code, 201, "{answer}");
                }
            });
        }
    });
    println!("5,200 writes in {:?}", started.elapsed());

    cluster.nodes[down].server.start_again();
    cluster.wait_in_sync("docs", leader, 1, 3);
    let report = cluster.shards_report().expect("a shards report");
    let copy = report["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node"] == cluster.nodes[down].name.as_str())
        .cloned()
        .expect("the copy that was down");
    assert!(
        copy["snapshots_installed"].as_u64() >= Some(1),
        "it caught up without a snapshot: {copy}"
    );
    assert!(copy["catching_up"].is_null(), "{copy}");
    println!("copy after catching up: {copy}");
    let metrics = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(cluster.nodes[down].server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("raft_snapshots_installed_total"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0),
        "metrics: {line:?}"
    );
}
