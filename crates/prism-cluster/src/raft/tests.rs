//! openraft's storage suite over the real log store and the real shard state machine, on
//! disk; and what the suite does not check: documents applied twice, restarts between apply
//! and checkpoint, and a snapshot of real documents installed on another copy.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder,
    StorageError,
};
use prism_core::log::{OpenOptions, ShardLog};
use prism_core::schema::CollectionSchema;
use prism_core::shard::{Op, ShardConfig};

use super::log_store::LogStore;
use super::state_machine::{GroupDirs, ShardStateMachine};
use super::types::{ShardRaft, ShardWrite};

pub(super) fn schema() -> Arc<CollectionSchema> {
    Arc::new(
        CollectionSchema::from_json(
            br#"{"name":"t","fields":{"title":{"type":"text"},
            "emb":{"type":"vector","dimension":4,"distance":"cosine"}}}"#,
        )
        .unwrap(),
    )
}

fn open_machine(root: &std::path::Path) -> ShardStateMachine {
    // Checkpoints only when a test asks (a refresh, a snapshot, a clean close).
    let config = ShardConfig {
        refresh_interval: std::time::Duration::from_secs(3600),
        ..ShardConfig::default()
    };
    ShardStateMachine::open(GroupDirs::new(root), schema(), config).unwrap()
}

struct Builder;

impl StoreBuilder<ShardRaft, LogStore<ShardRaft>, ShardStateMachine, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<ShardRaft>, ShardStateMachine), StorageError<u64>>
    {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dirs = GroupDirs::new(dir.path());
        // Small segments, so that the suite's truncations and purges cross segment files.
        let (log, _) = ShardLog::open(
            &dirs.log(),
            OpenOptions {
                segment_bytes: 512,
                truncate_corrupt: false,
            },
        )
        .expect("open the log");
        let machine = open_machine(dir.path());
        Ok((dir, LogStore::new(Arc::new(log)), machine))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_shard_log_and_state_machine() {
    Suite::test_all(Builder).unwrap();
}

fn id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn write(term: u64, index: u64, docs: &[(&str, &str, [f32; 4])]) -> Entry<ShardRaft> {
    let schema = schema();
    let ops = docs
        .iter()
        .map(|(id, title, emb)| {
            Op::Upsert(Arc::new(
                schema
                    .prepare_document(
                        serde_json::json!({"id": id, "fields": {"title": title, "emb": emb}}),
                    )
                    .unwrap(),
            ))
        })
        .collect();
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(ShardWrite { ops }),
    }
}

fn membership(term: u64, index: u64) -> Entry<ShardRaft> {
    let members = Membership::<u64, BasicNode>::new(
        vec![[1, 2, 3].into_iter().collect()],
        [1, 2, 3]
            .into_iter()
            .map(|n| (n, BasicNode::default()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    Entry {
        log_id: id(term, index),
        payload: EntryPayload::Membership(members),
    }
}

fn entries() -> Vec<Entry<ShardRaft>> {
    vec![
        membership(1, 1),
        Entry {
            log_id: id(1, 2),
            payload: EntryPayload::Blank,
        },
        write(1, 3, &[("a", "red fox", [1.0, 0.0, 0.0, 0.0])]),
        write(
            1,
            4,
            &[
                ("b", "blue fox", [0.0, 1.0, 0.0, 0.0]),
                ("a", "red wolf", [0.0, 0.0, 1.0, 0.0]),
            ],
        ),
        write(2, 5, &[("c", "grey fox", [0.0, 0.0, 0.0, 1.0])]),
    ]
}

/// The content checksum of the machine's copy, after a refresh.
async fn checksum(machine: &ShardStateMachine) -> Option<u64> {
    let shard = machine.shard().current();
    tokio::task::spawn_blocking(move || {
        shard.refresh_blocking().unwrap();
        shard.stats().content_checksum
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_applied_again_change_nothing_and_a_restart_before_the_checkpoint_reapplies() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = open_machine(dir.path());
    machine.apply(entries()).await.unwrap();
    let expected = checksum(&machine).await;
    assert!(expected.is_some());
    // Applied again (a replay after a crash): skipped, the same content.
    machine.apply(entries()).await.unwrap();
    assert_eq!(checksum(&machine).await, expected);
    let (applied, members) = machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(id(2, 5)));
    assert_eq!(members.log_id(), &Some(id(1, 1)));

    // A crash after apply and before any checkpoint: nothing of the entries is durable in
    // the state machine, so openraft applies them all again, and gets the same content.
    let crashed = tempfile::tempdir().unwrap();
    {
        let mut machine = open_machine(crashed.path());
        machine.apply(entries()).await.unwrap();
        let shard = machine.shard().current();
        // Stop the writer thread without its final checkpoint, as a crash would.
        tokio::task::spawn_blocking(move || shard.close_for_delete().unwrap())
            .await
            .unwrap();
    }
    let mut machine = open_machine(crashed.path());
    let (applied, _) = machine.applied_state().await.unwrap();
    assert_eq!(applied, None, "nothing was checkpointed");
    machine.apply(entries()).await.unwrap();
    assert_eq!(checksum(&machine).await, expected);

    // A restart after the checkpoint: the applied state and membership survive, and
    // replaying the tail (as openraft does from its committed id) changes nothing.
    drop(machine);
    let mut machine = open_machine(crashed.path());
    let (applied, members) = machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(id(2, 5)));
    assert_eq!(members.log_id(), &Some(id(1, 1)));
    machine.apply(entries().split_off(3)).await.unwrap();
    assert_eq!(checksum(&machine).await, expected);
}

/// A copy that applied [`entries`], and a snapshot it built.
async fn leader_with_snapshot() -> (tempfile::TempDir, ShardStateMachine, Snapshot<ShardRaft>) {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open_machine(dir.path());
    leader.apply(entries()).await.unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (dir, leader, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_documents_installs_on_another_copy_with_the_same_content() {
    let (_leader_dir, leader, Snapshot { meta, snapshot }) = leader_with_snapshot().await;
    let follower_dir = tempfile::tempdir().unwrap();
    let expected = checksum(&leader).await;
    assert_eq!(meta.last_log_id, Some(id(2, 5)));

    let mut follower = open_machine(follower_dir.path());
    let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
    // What the network does: every file of the leader's snapshot into the receiving directory.
    let (from, to) = (snapshot.dir().to_path_buf(), receiving.dir().to_path_buf());
    copy_dir(&from, &to);
    follower
        .install_snapshot(&meta, std::mem::replace(&mut receiving, snapshot))
        .await
        .unwrap();
    assert_eq!(checksum(&follower).await, expected);
    let (applied, members) = follower.applied_state().await.unwrap();
    assert_eq!(applied, Some(id(2, 5)));
    assert_eq!(members, meta.last_membership);
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);

    // The installed state is durable; later entries apply on top of it.
    drop(follower);
    let mut follower = open_machine(follower_dir.path());
    assert_eq!(follower.applied_state().await.unwrap().0, Some(id(2, 5)));
    assert_eq!(
        follower.get_current_snapshot().await.unwrap().unwrap().meta,
        meta
    );
    follower
        .apply(vec![write(3, 6, &[("d", "fox", [1.0, 1.0, 0.0, 0.0])])])
        .await
        .unwrap();
    assert_ne!(checksum(&follower).await, expected);
}

/// The network keeps a received snapshot (published, current) before openraft sees it; a
/// crash before the install, or an install openraft refused, leaves it newer than the state.
/// The next open installs it, and the log is made to agree with it: an entry of another term
/// at its index (a branch that was never committed) is cut, and the log purged up to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_snapshot_newer_than_the_state_is_installed_at_open_and_the_log_follows_it() {
    let (_leader_dir, leader, Snapshot { snapshot, .. }) = leader_with_snapshot().await;
    let expected = checksum(&leader).await;
    let follower_dir = tempfile::tempdir().unwrap();
    let dirs = GroupDirs::new(follower_dir.path());
    drop(open_machine(follower_dir.path()));
    // What the network keeps: the leader's snapshot under a published name.
    copy_dir(snapshot.dir(), &dirs.snapshots().join("snap-received-1"));
    // The follower's log went another way at the snapshot's index (5, term 2): term 3.
    let (log, _) = ShardLog::open(
        &dirs.log(),
        OpenOptions {
            segment_bytes: 512,
            truncate_corrupt: false,
        },
    )
    .unwrap();
    for (term, index) in [(1, 1), (1, 2), (2, 3), (3, 4), (3, 5), (3, 6)] {
        log.append(&[(prism_core::log::LogId::new(term, 0, index), b"x".as_slice())])
            .unwrap();
    }

    let follower = open_machine(follower_dir.path());
    assert_eq!(follower.applied(), Some(id(2, 5)));
    assert_eq!(checksum(&follower).await, expected);
    super::log_store::reconcile(&log, follower.applied()).unwrap();
    assert_eq!(
        log.last_log_id(),
        Some(prism_core::log::LogId::new(2, 0, 5))
    );
    assert_eq!(log.hard_state().last_purged, log.last_log_id());
    // A log on the snapshot's branch is left as it is.
    super::log_store::reconcile(&log, follower.applied()).unwrap();
    assert_eq!(
        log.last_log_id(),
        Some(prism_core::log::LogId::new(2, 0, 5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_naming_the_file_and_changes_nothing() {
    let (_leader_dir, _leader, Snapshot { meta, snapshot }) = leader_with_snapshot().await;
    let follower_dir = tempfile::tempdir().unwrap();
    let mut follower = open_machine(follower_dir.path());
    follower
        .apply(entries().split_off(2)[..1].to_vec())
        .await
        .unwrap();
    let before = checksum(&follower).await;
    let receiving = follower.begin_receiving_snapshot().await.unwrap();
    copy_dir(snapshot.dir(), receiving.dir());
    let damaged = walk(receiving.dir())
        .into_iter()
        .find(|p| p.to_string_lossy().contains("meta.json"))
        .unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&damaged, bytes).unwrap();
    let error = follower
        .install_snapshot(&meta, receiving)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("meta.json"), "{error}");
    assert_eq!(checksum(&follower).await, before);
    assert_eq!(follower.applied_state().await.unwrap().0, Some(id(1, 3)));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
