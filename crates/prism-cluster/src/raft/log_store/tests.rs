//! openraft's storage suite against the log store. The suite also drives a state machine;
//! the one here is a minimal in-memory machine, because what is under test is the log.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder,
    RaftTypeConfig, StorageError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use prism_core::log::{OpenOptions, ShardLog};

use super::LogStore;

openraft::declare_raft_types!(pub TestConfig:);

type Membership = StoredMembership<u64, openraft::BasicNode>;

#[derive(Default)]
struct MachineState {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
    built: u64,
}

#[derive(Clone, Default)]
struct MemoryMachine(Arc<Mutex<MachineState>>);

impl RaftSnapshotBuilder<TestConfig> for MemoryMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
        let mut state = self.0.lock();
        state.built += 1;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("snapshot-{}", state.built),
        };
        let data = serde_json::to_vec(&(state.last_applied, &state.membership)).expect("state");
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TestConfig> for MemoryMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let state = self.0.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<String>, StorageError<u64>>
    where
        I: IntoIterator<Item = <TestConfig as RaftTypeConfig>::Entry> + Send,
    {
        let mut state = self.0.lock();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(m) = entry.payload {
                state.membership = StoredMembership::new(Some(entry.log_id), m);
            }
            replies.push(String::new());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let mut state = self.0.lock();
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), snapshot.into_inner()));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
        Ok(self.0.lock().snapshot.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

fn options(segment_bytes: u64) -> OpenOptions {
    OpenOptions {
        segment_bytes,
        truncate_corrupt: false,
    }
}

struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, MemoryMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, MemoryMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Small segments, so that the suite's truncations and purges cross segment files.
        let (log, _) = ShardLog::open(dir.path(), options(512)).expect("open the log");
        Ok((dir, LogStore::new(Arc::new(log)), MemoryMachine::default()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_shard_log() {
    Suite::test_all(Builder).unwrap();
}

#[test]
fn entries_vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (log, _) = ShardLog::open(dir.path(), options(1 << 20)).unwrap();
        let log = Arc::new(log);
        let mut store = LogStore::<TestConfig>::new(log.clone());
        store.save_vote(&Vote::new(4, 2)).await.unwrap();
        let id = LogId::new(CommittedLeaderId::new(4, 2), 1);
        let entry = Entry::<TestConfig> {
            log_id: id,
            payload: EntryPayload::Normal("write".to_string()),
        };
        let payload = postcard::to_stdvec(&entry).unwrap();
        log.append(&[(super::to_core(&id), payload.as_slice())])
            .unwrap();
        store.save_committed(Some(id)).await.unwrap();
        drop(store);
        drop(log);
        let (log, _) = ShardLog::open(dir.path(), options(1 << 20)).unwrap();
        let mut store = LogStore::<TestConfig>::new(Arc::new(log));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        assert_eq!(store.read_committed().await.unwrap(), Some(id));
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(id));
        let entries = store.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert!(matches!(&entries[0].payload, EntryPayload::Normal(s) if s == "write"));
    });
}
