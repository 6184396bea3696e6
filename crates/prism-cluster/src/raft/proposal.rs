//! A write proposed to a group's leader, with an answer that is always true: committed on a
//! majority (and applied by the leader), refused (never appended, so never applied), or
//! unknown (it may still commit). Every proposal has a deadline.
//!
//! openraft 0.9 has no CheckQuorum: a leader cut off from its followers accepts writes that
//! can never commit, and the call hangs. A leader that has not heard from a quorum within
//! `quorum_window` (a quiet one, say) therefore asks a majority first, and refuses before
//! appending when none answers in that time.

use std::time::Duration;

#[cfg_attr(feature = "broken-early-ack", allow(unused_imports))]
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};

use super::network::GroupConfig;
use super::state_machine::DefaultResponse;

/// What became of a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposed<R> {
    /// Committed at this log id (term, index); `response` is the leader's apply result.
    Committed { term: u64, index: u64, response: R },
    /// Never appended: it will never apply. `leader` is the leader this node knows of.
    Refused { why: String, leader: Option<u64> },
    /// It may or may not commit.
    Unknown(String),
}

/// Proposes `data` to `raft`, which must lead its group, and waits up to `deadline`.
pub async fn propose<C: GroupConfig>(
    raft: &Raft<C>,
    data: C::D,
    quorum_window: Duration,
    deadline: Duration,
) -> Proposed<C::R>
where
    C::R: DefaultResponse,
{
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return Proposed::Refused {
            why: "not the leader".into(),
            leader: metrics.current_leader,
        };
    }
    // A single voter has its own quorum; openraft reports no ack time for it.
    let voters = metrics.membership_config.membership().voter_ids().count();
    let heard = metrics
        .millis_since_quorum_ack
        .is_some_and(|ms| ms <= quorum_window.as_millis() as u64);
    // A quiet leader (`raft::quiescence`) has sent nothing for a while, so it asks a majority
    // first; nothing is appended unless one answers.
    if voters > 1
        && !heard
        && !matches!(
            tokio::time::timeout(quorum_window.min(deadline), raft.get_read_log_id()).await,
            Ok(Ok(_))
        )
    {
        return Proposed::Refused {
            why: format!(
                "the leader could not reach a majority within {} ms",
                quorum_window.as_millis()
            ),
            leader: None,
        };
    }
    #[cfg(feature = "broken-early-ack")]
    return early_ack(raft, data, metrics.last_log_index, deadline).await;
    #[cfg(not(feature = "broken-early-ack"))]
    match tokio::time::timeout(deadline, raft.client_write(data)).await {
        Ok(Ok(written)) => Proposed::Committed {
            term: written.log_id.leader_id.term,
            index: written.log_id.index,
            response: written.data,
        },
        // openraft answers ForwardToLeader both when it never appended the entry (it stopped
        // leading before the write reached its core) and when it appended it and a newer
        // leader's log then truncated it here; the entry may live on elsewhere and still
        // commit (the Raft paper's figure 8). So it is unknown, not refused.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Proposed::Unknown(format!(
                "leadership moved while the write was in flight (to {:?})",
                forward.leader_id
            ))
        }
        Ok(Err(e)) => Proposed::Unknown(e.to_string()),
        Err(_) => Proposed::Unknown(format!("not committed within {deadline:?}")),
    }
}

/// The deliberately broken build: acknowledges once the leader's own log grew past what it
/// held before, without waiting for a majority. The simulation must catch it.
#[cfg(feature = "broken-early-ack")]
async fn early_ack<C: GroupConfig>(
    raft: &Raft<C>,
    data: C::D,
    before: Option<u64>,
    deadline: Duration,
) -> Proposed<C::R>
where
    C::R: DefaultResponse,
{
    let writing = raft.clone();
    tokio::spawn(async move { writing.client_write(data).await });
    let mut metrics = raft.metrics();
    let appended = tokio::time::timeout(deadline, async {
        loop {
            let m = metrics.borrow().clone();
            if m.last_log_index > before {
                return Some((m.current_term, m.last_log_index.unwrap_or(0)));
            }
            if metrics.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match appended {
        Ok(Some((term, index))) => Proposed::Committed {
            term,
            index,
            response: C::R::default_response(),
        },
        _ => Proposed::Unknown("not appended in time".into()),
    }
}
