//! The cluster under a hostile network, with real processes each in a network namespace of
//! its own: a partition (both ways and one way), packets dropped at random, a paused leader,
//! and a slow node. Every acknowledged write is afterwards on every copy, every write refused
//! with `no_quorum` is on none, and the copies' checksums agree. Leaders spread evenly, and
//! come back to a node that restarts.
//!
//! Without network namespaces (not root) the partition and drop tests say so and skip.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prism_tests::raft_cluster::{Ledger, TestCluster};
use prism_tests::wait_until;

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Writes 30 fresh documents through `via` until all are acknowledged; how long it took.
fn until_writes_succeed(
    cluster: &TestCluster,
    via: usize,
    prefix: &str,
    ledger: &mut Ledger,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut attempt = 0;
    wait_until(within, "writes to succeed", || {
        attempt += 1;
        let batch = ids(&format!("{prefix}{attempt}"), 30);
        let (code, answer) = cluster.write(via, "docs", &batch, attempt);
        ledger.record(&batch, code, &answer);
        (code == 201 && answer["successful_docs"] == 30).then(|| started.elapsed())
    })
}

/// Three nodes and a collection `docs` at RF 3 whose shard leaders have spread evenly (each
/// group starts from its intended leader).
fn three_nodes(dir: &std::path::Path, shards: u32) -> TestCluster {
    let cluster = TestCluster::start(dir, 3);
    cluster.create_collection(0, "docs", shards);
    cluster.wait_for_leaders("docs", shards);
    let each = u64::from(shards / 3);
    wait_until(Duration::from_secs(30), "leaders to spread evenly", || {
        let spread = leaders_per_node(&cluster);
        spread.values().all(|led| *led >= each).then_some(())
    });
    cluster
}

/// [`three_nodes`] that took a first write through node 0, recorded in a new ledger.
fn three_nodes_written(dir: &std::path::Path, shards: u32) -> (TestCluster, Ledger) {
    let cluster = three_nodes(dir, shards);
    let mut ledger = Ledger::default();
    until_writes_succeed(&cluster, 0, "before", &mut ledger, Duration::from_secs(10));
    (cluster, ledger)
}

/// The node leading the metadata group and the most shard groups, which leads at least one
/// shard group (a fault there must fail a shard over).
fn busiest_leader(cluster: &TestCluster) -> usize {
    let name = cluster.busiest_leader();
    let led = leaders_per_node(cluster)[&name];
    assert!(led >= 1, "{name} leads no shard group");
    cluster.index_of(&name)
}

fn others(of: usize) -> Vec<usize> {
    (0..3).filter(|i| *i != of).collect()
}

#[test]
fn a_partition_keeps_the_majority_writing_and_the_minority_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut ledger) = three_nodes_written(dir.path(), 3);
    if !cluster.net.is_isolated() {
        eprintln!("skipped: partitions need network namespaces");
        return;
    }

    // The busiest leader is cut off from the other two, both ways.
    let alone = busiest_leader(&cluster);
    let majority = others(alone);
    cluster.net.partition(&[alone], &majority);
    let resumed = until_writes_succeed(
        &cluster,
        majority[0],
        "majority",
        &mut ledger,
        Duration::from_secs(30),
    );
    println!(
        "writes through the majority resumed {resumed:?} after {} was cut off",
        cluster.nodes[alone].name
    );
    assert!(resumed < Duration::from_secs(3), "{resumed:?}");

    // Through the node cut off, once it suspects both others, a write is refused with
    // no_quorum within the request time-out (3 s) and a margin, and never applied. (A write
    // it took before it noticed is unknown: `write_timeout`.)
    wait_until(
        Duration::from_secs(10),
        "the node cut off to suspect the others",
        || {
            let (_, status) = cluster.nodes[alone].server.get("/cluster/status");
            let down = status["nodes"]
                .as_array()?
                .iter()
                .filter(|n| matches!(n["state"].as_str(), Some("suspect" | "dead")))
                .count();
            (down == 2).then_some(())
        },
    );
    for attempt in 0..3 {
        let batch = ids(&format!("minority{attempt}"), 30);
        let started = Instant::now();
        let (code, answer) = cluster.write(alone, "docs", &batch, 7);
        let took = started.elapsed();
        ledger.record(&batch, code, &answer);
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert_eq!(code, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "no_quorum", "{answer}");
    }

    // Healed: the node cut off catches up; every copy agrees.
    cluster.net.heal();
    cluster.wait_for_members(3);
    cluster.wait_in_sync("docs", alone, 3, 3);
    for via in 0..3 {
        ledger.check(&cluster, via);
    }
    println!(
        "{} acknowledged, {} refused, {} unknown",
        ledger.acknowledged.len(),
        ledger.refused.len(),
        ledger.unknown.len()
    );
}

#[test]
fn a_leader_that_hears_no_one_is_replaced_and_random_drops_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut ledger) = three_nodes_written(dir.path(), 3);
    if !cluster.net.is_isolated() {
        eprintln!("skipped: one-way cuts and drops need network namespaces");
        return;
    }

    // One way: the busiest leader still reaches the others, but hears nothing back. Its
    // heartbeats keep arriving, so the others must not simply wait for it.
    let deaf = busiest_leader(&cluster);
    let rest = others(deaf);
    cluster.net.cut(&rest, &[deaf]);
    let resumed = until_writes_succeed(
        &cluster,
        rest[0],
        "deaf",
        &mut ledger,
        Duration::from_secs(30),
    );
    println!(
        "writes resumed {resumed:?} after {} stopped hearing the others",
        cluster.nodes[deaf].name
    );
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    cluster.net.heal();
    cluster.wait_for_members(3);

    // Every node drops a fifth of the packets it receives; writes through every node, for
    // 60 rounds or 20 s.
    for node in 0..3 {
        cluster.net.drop_at_random(node, 0.2);
    }
    let started = Instant::now();
    let mut acknowledged = 0;
    let mut rounds = 0;
    for round in 0..60 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        rounds += 1;
        let batch = ids(&format!("lossy{round}"), 5);
        let (code, answer) = cluster.write(round % 3, "docs", &batch, round as i64);
        ledger.record(&batch, code, &answer);
        if code == 201 {
            acknowledged += answer["successful_docs"].as_u64().unwrap_or(0);
        }
    }
    println!(
        "20% loss: {acknowledged} of {} documents acknowledged in {:?}",
        rounds * 5,
        started.elapsed()
    );
    assert!(acknowledged > 0, "no write succeeded under 20% packet loss");
    cluster.net.heal();
    cluster.wait_in_sync("docs", 0, 3, 3);
    for via in 0..3 {
        ledger.check(&cluster, via);
    }
}

#[test]
fn a_paused_leader_is_replaced_and_catches_up_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut ledger) = three_nodes_written(dir.path(), 3);

    let paused = busiest_leader(&cluster);
    let via = others(paused)[0];
    cluster.nodes[paused].server.pause();
    let resumed = until_writes_succeed(
        &cluster,
        via,
        "paused",
        &mut ledger,
        Duration::from_secs(30),
    );
    println!(
        "writes resumed {resumed:?} after SIGSTOP of {}",
        cluster.nodes[paused].name
    );
    // 700 ms to suspect, up to 200 ms of spread, and an election round; a split vote on a
    // loaded machine may add one retry.
    assert!(resumed < Duration::from_secs(3), "{resumed:?}");
    until_writes_succeed(&cluster, via, "while", &mut ledger, Duration::from_secs(10));

    // SIGCONT: the old leader finds a newer term, follows, and catches up.
    cluster.nodes[paused].server.resume();
    cluster.wait_for_members(3);
    until_writes_succeed(
        &cluster,
        paused,
        "after",
        &mut ledger,
        Duration::from_secs(10),
    );
    cluster.wait_in_sync("docs", paused, 3, 3);
    for via in 0..3 {
        ledger.check(&cluster, via);
    }
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[test]
fn a_slow_node_delays_only_what_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, mut ledger) = three_nodes_written(dir.path(), 1);

    // A node that does not lead the shard sends every message 150 ms late.
    let report = cluster.shards_report().expect("a shards report");
    let leader = report["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "leader")
        .and_then(|c| c["node"].as_str())
        .expect("the shard's leader")
        .to_string();
    let slow = (0..3)
        .find(|i| {
            cluster.nodes[*i].name != leader
                && cluster.status()["leader"] != cluster.nodes[*i].name.as_str()
        })
        .expect("a node that leads nothing");
    let delay = Duration::from_millis(150);
    let server = &mut cluster.nodes[slow].server;
    server.set_env(
        "PRISM_TEST_TRANSPORT_DELAY_MS",
        &delay.as_millis().to_string(),
    );
    server.kill();
    server.start_again();
    cluster.wait_for_members(3);
    cluster.wait_in_sync("docs", 0, 1, 3);
    // Right after a restart a forward may be answered `write_timeout` (unknown) while the
    // node's liveness settles: a client retries.
    until_writes_succeed(
        &cluster,
        slow,
        "settle",
        &mut ledger,
        Duration::from_secs(10),
    );

    // Through the slow node a write waits for its forward to the leader; through the
    // leader's node it does not, as the other follower makes the majority.
    let leader_index = cluster.index_of(&leader);
    // A write answered `write_timeout` (unknown) is retried, as a client would; only
    // acknowledged attempts are timed.
    let timed = |via: usize, prefix: &str, ledger: &mut Ledger| {
        let mut took = Vec::new();
        for i in 0..9 {
            let batch = ids(&format!("{prefix}{i}"), 3);
            let mut answered = None;
            for _ in 0..3 {
                let started = Instant::now();
                let (code, answer) = cluster.write(via, "docs", &batch, i);
                ledger.record(&batch, code, &answer);
                if code == 201 {
                    took.push(started.elapsed());
                    answered = Some(answer);
                    break;
                }
                assert_eq!(answer["error"]["code"], "write_timeout", "{answer}");
            }
            let answer = answered.expect("a write acknowledged within 3 attempts");
            assert_eq!(answer["successful_docs"], 3, "{answer}");
        }
        median(took)
    };
    let through_slow = timed(slow, "slow", &mut ledger);
    let through_leader = timed(leader_index, "fast", &mut ledger);
    println!(
        "median write through the slow node {through_slow:?}, through the leader's {through_leader:?}"
    );
    // The fault layer works: a forward from the slow node waits for it.
    assert!(through_slow >= delay, "{through_slow:?}");
    // The leader does not wait for the slow follower: the other makes the majority.
    assert!(through_leader < delay / 2, "{through_leader:?}");
    cluster.wait_in_sync("docs", slow, 1, 3);
    for via in 0..3 {
        ledger.check(&cluster, via);
    }
}

/// How many shard groups each node leads, per `/cluster/shards`.
fn leaders_per_node(cluster: &TestCluster) -> BTreeMap<String, u64> {
    let report = cluster.shards_report().expect("a shards report");
    cluster
        .nodes
        .iter()
        .map(|n| {
            let led = report["leaders_per_node"][&n.name].as_u64().unwrap_or(0);
            (n.name.clone(), led)
        })
        .collect()
}

#[test]
fn leaders_spread_evenly_and_come_back_to_a_restarted_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_nodes(dir.path(), 6);
    let even = || {
        let spread = leaders_per_node(&cluster);
        spread.values().all(|led| *led == 2).then_some(spread)
    };
    let spread = wait_until(Duration::from_secs(30), "two leaders per node", even);
    println!("leaders per node: {spread:?}");

    // A node restarts: its shards fail over to the live nodes, then come back to it once
    // they are idle.
    let victim = 1;
    let victim_name = cluster.nodes[victim].name.clone();
    cluster.nodes[victim].server.kill();
    let mut ledger = Ledger::default();
    until_writes_succeed(&cluster, 0, "during", &mut ledger, Duration::from_secs(10));
    let spread = wait_until(
        Duration::from_secs(10),
        "the live nodes to lead all six shards",
        || {
            let report = cluster.shards_report()?;
            let copies = report["copies"].as_array()?;
            let led = copies.iter().filter(|c| c["role"] == "leader").count();
            let follow_the_dead = copies.iter().any(|c| c["leader"] == victim_name.as_str());
            (led == 6 && !follow_the_dead).then(|| leaders_per_node(&cluster))
        },
    );
    println!("leaders per node while {victim_name} is down: {spread:?}");
    cluster.nodes[victim].server.start_again();
    let restarted = Instant::now();
    let spread = wait_until(
        Duration::from_secs(60),
        "two leaders per node after the restart",
        || {
            let spread = leaders_per_node(&cluster);
            spread.values().all(|led| *led == 2).then_some(spread)
        },
    );
    println!(
        "leaders per node {:?} after the restart: {spread:?}",
        restarted.elapsed()
    );
    cluster.wait_in_sync("docs", victim, 6, 3);
    ledger.check(&cluster, victim);
}

/// A gauge's value from `/metrics` text: the sample named `name` whose labels include every
/// one of `labels` (`key="value"`).
fn gauge(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|l| set.split(',').any(|have| have == *l))
            .then(|| value.trim().parse().ok())?
    })
}

#[test]
fn replication_lag_in_seconds_grows_while_a_follower_is_paused_and_clears_after() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, mut ledger) = three_nodes_written(dir.path(), 1);
    let report = cluster.shards_report().expect("a shards report");
    let leader_copy = report["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "leader")
        .expect("a leader")
        .clone();
    let leader = cluster.index_of(leader_copy["node"].as_str().unwrap());
    let group = format!(
        "{}/{}@{}",
        leader_copy["collection"].as_str().unwrap(),
        leader_copy["shard"],
        leader_copy["generation"]
    );
    let paused = others(leader)[0];
    let metrics = |node: usize| {
        let url = cluster.nodes[node].server.url("/metrics");
        reqwest::blocking::get(url).unwrap().text().unwrap()
    };
    let shard_label = format!("shard=\"{group}\"");
    let replica_label = format!("replica=\"{}\"", cluster.nodes[paused].name);
    let lag_of_paused = || {
        gauge(
            &metrics(leader),
            "prism_replication_lag_seconds",
            &[&shard_label, &replica_label],
        )
    };
    assert_eq!(lag_of_paused(), Some(0.0), "{}", metrics(leader));

    cluster.nodes[paused].server.pause();
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_secs(3) {
        until_writes_succeed(
            &cluster,
            leader,
            "lagging",
            &mut ledger,
            Duration::from_secs(10),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lag = lag_of_paused().expect("the paused replica's lag");
    let paused_for = paused_at.elapsed().as_secs_f64();
    let slowest = gauge(
        &metrics(leader),
        "raft_replication_lag_seconds",
        &[&format!("group=\"{group}\"")],
    )
    .expect("the group's lag");
    println!("after {paused_for:.2} s paused: the replica lags {lag} s, the group {slowest} s");
    // The first write it lacks came right after the pause, and was sampled within 0.5 s of
    // it (the first write after a pause may take a moment more on a loaded machine).
    assert!(
        lag <= paused_for && lag >= paused_for - 1.5,
        "lag {lag} s after {paused_for} s paused"
    );
    assert!(slowest >= lag, "{slowest} < {lag}");

    cluster.nodes[paused].server.resume();
    wait_until(Duration::from_secs(30), "the lag to clear", || {
        (lag_of_paused() == Some(0.0)).then_some(())
    });
    cluster.wait_in_sync("docs", paused, 1, 3);
    ledger.check(&cluster, paused);
}
