//! Breaks split-vote livelocks that openraft 0.9 cannot leave by itself.
//!
//! openraft 0.9 draws a group's election time-out once, when the group starts, and checks it
//! only on ticks (every 1.5 heartbeats). Copies whose time-outs round to the same number of
//! ticks, with ticks in nearly the same phase, start every election together and split the
//! vote for ever. The seeded simulation found one (seed 2929 of the first 10,000-seed run:
//! three candidates at term 84 after a minute). A copy that has been a candidate for longer
//! than a few election time-outs starts an election of its own at a random moment, which
//! breaks the lockstep.

use std::time::Duration;

use openraft::{AsyncRuntime, Raft, ServerState};
use rand::Rng;

use super::network::GroupConfig;
use super::types::SeededTokio;

/// Watches `raft` until the group shuts down. Once it is a candidate with no leader and its
/// term rose by two or more since it was first seen so (two failed elections), it starts an
/// election after a random pause of up to `spread`, unless a leader appeared meanwhile. One
/// check per `stuck_after`, so an idle group costs one wake-up per check.
pub async fn break_split_votes<C: GroupConfig>(
    raft: Raft<C>,
    stuck_after: Duration,
    spread: Duration,
) {
    // The term when this copy was first seen leaderless: two more failed elections since
    // then mean it is stuck, whatever happened between samples.
    let mut leaderless_since_term: Option<u64> = None;
    loop {
        tokio::time::sleep(stuck_after).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() || metrics.state == ServerState::Shutdown {
            return;
        }
        if metrics.current_leader.is_some() || metrics.state != ServerState::Candidate {
            leaderless_since_term = None;
            continue;
        }
        let first = *leaderless_since_term.get_or_insert(metrics.current_term);
        if metrics.current_term < first + 2 {
            continue;
        }
        let pause = SeededTokio::thread_rng().gen_range(0..=spread.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        // Only if nothing changed meanwhile: a copy that found a leader during the pause must
        // not depose it.
        let now = raft.metrics().borrow().clone();
        let unchanged = now.state == ServerState::Candidate
            && now.current_leader.is_none()
            && now.current_term == metrics.current_term;
        if unchanged && raft.trigger().elect().await.is_err() {
            return;
        }
        leaderless_since_term = None;
    }
}
