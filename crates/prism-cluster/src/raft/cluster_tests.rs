//! Shard groups of real copies on three in-process nodes, over the in-memory network: an
//! election, writes acknowledged by a majority, a follower cut off while the leader's log is
//! purged behind a snapshot and brought back by that snapshot, a leader cut off and replaced, and
//! every copy with the same content checksum at the same applied id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use prism_core::log::{OpenOptions, ShardLog};
use prism_core::shard::{Op, ShardConfig};

use super::log_store::LogStore;
use super::network::{GroupNetwork, RaftHost};
use super::state_machine::{GroupDirs, ShardSlot, ShardStateMachine};
use super::tests::schema;
use super::types::{ShardRaft, ShardWrite};
use crate::rpc::GroupId;
use crate::sim::SimNetwork;

fn group() -> GroupId {
    GroupId::shard("c", 0, 1)
}

struct Node {
    raft: Raft<ShardRaft>,
    shard: ShardSlot,
    _dir: tempfile::TempDir,
}

fn name(id: u64) -> String {
    format!("n{id}")
}

async fn start(network: &SimNetwork, id: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let dirs = GroupDirs::new(dir.path());
    let (log, _) = ShardLog::open(
        &dirs.log(),
        OpenOptions {
            segment_bytes: 4096,
            truncate_corrupt: false,
        },
    )
    .unwrap();
    let machine = ShardStateMachine::open(dirs, schema(), ShardConfig::default()).unwrap();
    let shard = machine.shard();
    let snapshots = machine.snapshots();
    super::log_store::reconcile(&log, machine.applied()).unwrap();
    let host = Arc::new(RaftHost::new(name(id), id));
    let endpoint = network.join(&name(id), host.clone());
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 2000,
        // Snapshot often and keep no log behind it, so that a follower that was away
        // needs the snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    let raft = Raft::new(
        id,
        Arc::new(config.validate().unwrap()),
        GroupNetwork::new(Arc::new(endpoint), group()),
        LogStore::new(Arc::new(log)),
        machine,
    )
    .await
    .unwrap();
    host.add(group(), raft.clone(), snapshots);
    Node {
        raft,
        shard,
        _dir: dir,
    }
}

fn doc(n: u64) -> ShardWrite {
    let schema = schema();
    let emb = [n as f32 + 1.0, 1.0, (n % 7) as f32, 0.5];
    ShardWrite {
        ops: vec![Op::Upsert(Arc::new(
            schema
                .prepare_document(serde_json::json!({
                    "id": format!("d{}", n % 40),
                    "fields": {"title": format!("document {n} fox"), "emb": emb},
                }))
                .unwrap(),
        ))],
    }
}

async fn leader_of(nodes: &BTreeMap<u64, Node>, among: &[u64]) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // A deposed leader may not know it yet: the one of the highest term leads.
        let leader = among
            .iter()
            .map(|id| (id, nodes[id].raft.metrics().borrow().clone()))
            .filter(|(_, m)| m.state == ServerState::Leader)
            .max_by_key(|(_, m)| m.current_term)
            .map(|(id, _)| *id);
        if let Some(leader) = leader {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader among {among:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `range` through the leader among `among`, following a change of leader; returns
/// the log index of the last write. Each acknowledged write is committed on a majority (a
/// write retried after an unknown outcome upserts the same document again).
async fn write(nodes: &BTreeMap<u64, Node>, among: &[u64], range: std::ops::Range<u64>) -> u64 {
    let mut last = 0;
    for n in range {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = leader_of(nodes, among).await;
            let written = tokio::time::timeout(
                Duration::from_secs(5),
                nodes[&leader].raft.client_write(doc(n)),
            )
            .await;
            match written {
                Ok(Ok(response)) => {
                    last = response.log_id.index;
                    break;
                }
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "write {n} never acknowledged: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    last
}

/// Waits until `ids` applied `index`, then returns each copy's content checksum.
async fn checksums(nodes: &BTreeMap<u64, Node>, ids: &[u64], index: u64) -> BTreeSet<Option<u64>> {
    let mut sums = BTreeSet::new();
    for id in ids {
        nodes[id]
            .raft
            .wait(Some(Duration::from_secs(20)))
            .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
            .await
            .unwrap();
        let shard = nodes[id].shard.current();
        let sum = tokio::task::spawn_blocking(move || {
            shard.refresh_blocking().unwrap();
            shard.stats().content_checksum
        })
        .await
        .unwrap();
        assert!(sum.is_some(), "node {id} has a content checksum");
        sums.insert(sum);
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_copies_elects_replicates_snapshots_and_fails_over() {
    let network = SimNetwork::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&network, id).await);
    }
    let members: BTreeMap<u64, BasicNode> =
        (1..=3).map(|id| (id, BasicNode::new(name(id)))).collect();
    nodes[&1].raft.initialize(members).await.unwrap();
    let leader = leader_of(&nodes, &[1, 2, 3]).await;

    let first_phase = write(&nodes, &[1, 2, 3], 0..10).await;
    let last = first_phase;
    let sums = checksums(&nodes, &[1, 2, 3], last).await;
    assert_eq!(sums.len(), 1, "every copy holds the same content: {sums:?}");

    // Cut one follower off; the other two still form a majority and keep acknowledging,
    // and the leader snapshots and purges its log past what the follower has.
    let away = *[1, 2, 3].iter().find(|id| **id != leader).unwrap();
    let rest: Vec<String> = [1, 2, 3]
        .iter()
        .filter(|id| **id != away)
        .map(|id| name(*id))
        .collect();
    let rest_refs: Vec<&str> = rest.iter().map(String::as_str).collect();
    network.partition(&[&name(away)], &rest_refs);
    let away_last = nodes[&away]
        .raft
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != away).collect();
    let last = write(&nodes, &majority, 10..70).await;
    nodes[&leader]
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| {
                m.purged
                    .is_some_and(|p| p.index > away_last.max(first_phase))
            },
            "the leader purges its log behind a snapshot",
        )
        .await
        .unwrap();

    // Back: the follower can only catch up through the snapshot.
    network.heal();
    let sums = checksums(&nodes, &[1, 2, 3], last).await;
    assert_eq!(
        sums.len(),
        1,
        "the follower caught up by snapshot: {sums:?}"
    );
    assert!(
        nodes[&away].raft.metrics().borrow().snapshot.is_some(),
        "the follower holds a snapshot"
    );

    // The leader of the moment is cut off from both others: they elect one of them, in a
    // later term, and go on.
    let leader = leader_of(&nodes, &[1, 2, 3]).await;
    let term = nodes[&leader].raft.metrics().borrow().current_term;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    network.partition(
        &[&name(leader)],
        &[&name(survivors[0]), &name(survivors[1])],
    );
    let new_leader = leader_of(&nodes, &survivors).await;
    let new_term = nodes[&new_leader].raft.metrics().borrow().current_term;
    assert!(
        new_term > term,
        "a new election: term {new_term} after {term}"
    );
    let last = write(&nodes, &survivors, 70..80).await;
    let sums = checksums(&nodes, &survivors, last).await;
    assert_eq!(sums.len(), 1, "{sums:?}");
    network.heal();
    let sums = checksums(&nodes, &[1, 2, 3], last).await;
    assert_eq!(
        sums.len(),
        1,
        "the old leader rejoined as a follower: {sums:?}"
    );

    for node in nodes.values() {
        node.raft.shutdown().await.unwrap();
    }
}
