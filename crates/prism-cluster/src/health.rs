//! Node reachability from heartbeats: alive → suspect after `failure_threshold` missed
//! heartbeats, suspect → dead after `suspect_timeout_ms` more, and back to alive on the next
//! heartbeat. Pure: time is passed in, so tests step it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::HealthConfig;

/// A node's state as `/cluster/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
}

/// Heartbeat bookkeeping for one peer.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    last_heartbeat: Instant,
}

impl PeerHealth {
    pub fn new(now: Instant) -> Self {
        PeerHealth {
            last_heartbeat: now,
        }
    }

    /// A heartbeat answered at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        self.last_heartbeat = now;
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant, config: &HealthConfig) -> NodeState {
        let silent = now.saturating_duration_since(self.last_heartbeat);
        let suspect_after = Duration::from_millis(
            config.heartbeat_interval_ms * u64::from(config.failure_threshold.max(1)),
        );
        let dead_after = suspect_after + Duration::from_millis(config.suspect_timeout_ms);
        if silent >= dead_after {
            NodeState::Dead
        } else if silent >= suspect_after {
            NodeState::Suspect
        } else {
            NodeState::Alive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_suspect_dead_and_back() {
        let config = HealthConfig::default(); // 1 s heartbeats, 3 missed, 5 s suspect
        let start = Instant::now();
        let mut peer = PeerHealth::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(peer.state(at(2_999), &config), NodeState::Alive);
        assert_eq!(peer.state(at(3_000), &config), NodeState::Suspect);
        assert_eq!(peer.state(at(7_999), &config), NodeState::Suspect);
        assert_eq!(peer.state(at(8_000), &config), NodeState::Dead);
        peer.heartbeat(at(9_000));
        assert_eq!(peer.state(at(9_100), &config), NodeState::Alive);
    }
}
