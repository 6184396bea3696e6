//! The log store on its own. openraft's storage suite runs over it and the real shard state
//! machine in `raft/tests.rs`.

#[allow(unused_imports)] // declare_raft_types! names Cursor for its default snapshot data
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use prism_core::log::{OpenOptions, ShardLog};

use super::LogStore;

openraft::declare_raft_types!(pub TestConfig:);

fn options(segment_bytes: u64) -> OpenOptions {
    OpenOptions {
        segment_bytes,
        truncate_corrupt: false,
    }
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
