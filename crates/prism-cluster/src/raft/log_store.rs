//! openraft's `RaftLogStorage` over the shard log of `prism-core`. The shard log stores each
//! openraft entry as an opaque payload under its log id, and the vote as opaque bytes; this
//! adapter converts ids and (de)serializes. Blocking file I/O runs on tokio's blocking pool so
//! that a fsync never stalls the Raft core's task.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, CommittedLeaderId, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use prism_core::log::{self as core_log, ShardLog};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Most payload bytes one bounded read (replication to a lagging follower) returns. openraft
/// 0.9 gives an append-entries call its heartbeat interval (about 240 ms with the liveness
/// driver's timing) to be sent, appended and answered: a batch must fit in that even on a
/// slow or loaded node, or a catching-up copy times out on every retry and never catches up.
pub const READ_BATCH_BYTES: usize = 256 << 10;

/// A Raft log store over one shard log. Clones share the log: the clone handed out as the
/// log reader reads while the store appends.
pub struct LogStore<C> {
    log: Arc<ShardLog>,
    _config: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            log: self.log.clone(),
            _config: PhantomData,
        }
    }
}

impl<C> LogStore<C> {
    pub fn new(log: Arc<ShardLog>) -> Self {
        LogStore {
            log,
            _config: PhantomData,
        }
    }
}

/// Makes `log` agree with a state machine that opened at `applied`, before openraft starts
/// on them, as openraft's own snapshot install would have: a log holding another entry at
/// the applied index is on a branch that was never committed, so it is cut there and purged
/// up to the applied id (which the state machine covers). The state machine can be ahead of
/// the log's branch when a kept snapshot outlived a crash or an install openraft refused.
pub fn reconcile(log: &ShardLog, applied: Option<LogId<u64>>) -> prism_core::Result<()> {
    let Some(applied) = applied.as_ref().map(to_core) else {
        return Ok(());
    };
    match log.log_id_at(applied.index)? {
        Some(held) if held != applied => {
            tracing::warn!(dir = %log.dir().display(), %held, %applied, "the log holds an entry the state machine's snapshot replaced; cutting the log there");
            log.truncate(applied.index)?;
            log.purge(applied)
        }
        _ => Ok(()),
    }
}

pub(super) fn to_core(id: &LogId<u64>) -> core_log::LogId {
    // Standard Raft leader ids (openraft's `single-term-leader`): a term has one leader, so a
    // log id is (term, index) and the log's leader field stays 0.
    core_log::LogId::new(id.leader_id.term, 0, id.index)
}

pub(super) fn from_core(id: core_log::LogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, id.leader), id.index)
}

fn any(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Runs blocking log I/O off the async executor.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> prism_core::Result<T> + Send + 'static,
) -> Result<T, AnyError> {
    super::off_workers(work).await.map_err(any)
}

fn range_of(range: &impl RangeBounds<u64>) -> std::ops::Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: DeserializeOwned,
{
    async fn read(
        &self,
        range: std::ops::Range<u64>,
        max_bytes: usize,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        let log = self.log.clone();
        let entries = blocking(move || log.read(range, max_bytes))
            .await
            .map_err(StorageIOError::read_logs)?;
        let mut decoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            match postcard::from_bytes(&entry.payload) {
                Ok(e) => decoded.push(e),
                Err(e) => {
                    return Err(StorageIOError::read_log_at_index(entry.id.index, any(e)).into())
                }
            }
        }
        Ok(decoded)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        self.read(range_of(&range), usize::MAX).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        self.read(start..end, READ_BATCH_BYTES).await
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = u64>,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        Ok(LogState {
            last_purged_log_id: self.log.hard_state().last_purged.map(from_core),
            last_log_id: self.log.last_log_id().map(from_core),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = postcard::to_stdvec(vote).map_err(|e| StorageIOError::write_vote(any(e)))?;
        let log = self.log.clone();
        blocking(move || log.save_vote(&bytes))
            .await
            .map_err(StorageIOError::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        match self.log.hard_state().vote {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(any(e)).into()),
            None => Ok(None),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let log = self.log.clone();
        let committed = committed.as_ref().map(to_core);
        blocking(move || log.save_committed(committed))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        // Only an id the log still holds (or purged behind a snapshot) is trusted: after a cut
        // of a corrupt tail or a reconcile it may name an entry that is gone, and openraft
        // would fail to apply it; without it openraft starts from the applied id.
        let state = self.log.hard_state();
        let Some(committed) = state.committed else {
            return Ok(None);
        };
        let purged = state
            .last_purged
            .is_some_and(|p| committed.index <= p.index);
        let held = self
            .log
            .log_id_at(committed.index)
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        Ok((purged || held == Some(committed)).then(|| from_core(committed)))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let id = to_core(entry.get_log_id());
            let payload =
                postcard::to_stdvec(&entry).map_err(|e| StorageIOError::write_logs(any(e)))?;
            encoded.push((id, payload));
        }
        let log = self.log.clone();
        let result = blocking(move || {
            let batch: Vec<(core_log::LogId, &[u8])> =
                encoded.iter().map(|(id, p)| (*id, p.as_slice())).collect();
            log.append(&batch)
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let log = self.log.clone();
        blocking(move || log.truncate(log_id.index))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let log = self.log.clone();
        let upto = to_core(&log_id);
        blocking(move || log.purge(upto))
            .await
            .map_err(StorageIOError::write_logs)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
