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

/// Watches `raft` until the group shuts down: while it has been a candidate for over
/// `stuck_after`, it starts an election after a random pause of up to `spread`. One check per
/// `stuck_after`, so an idle group costs one wake-up per check.
pub async fn break_split_votes<C: GroupConfig>(
    raft: Raft<C>,
    stuck_after: Duration,
    spread: Duration,
) {
    let mut candidate_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(stuck_after).await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() || metrics.state == ServerState::Shutdown {
            return;
        }
        if metrics.state != ServerState::Candidate {
            candidate_since = None;
            continue;
        }
        let now = tokio::time::Instant::now();
        let since = *candidate_since.get_or_insert(now);
        if now.duration_since(since) < stuck_after {
            continue;
        }
        let pause = SeededTokio::thread_rng().gen_range(0..=spread.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        if raft.trigger().elect().await.is_err() {
            return;
        }
        candidate_since = None;
    }
}
