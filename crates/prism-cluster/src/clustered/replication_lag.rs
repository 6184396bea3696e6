//! Replication lag in seconds, as spec 002's `raft_replication_lag_seconds` means it: how long
//! ago the leader held the oldest entry a member still lacks. openraft reports only how many
//! entries a member holds, so a leader samples when its log grew, and a member's lag is the
//! age of the first sample past what it holds. A member that holds everything lags 0 s
//! however long ago it last caught up, and one a busy leader keeps a few entries behind lags
//! only as long as those entries are old. Entries appended between two samples count from
//! the later one: lag is understated by up to the sampling period.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Samples kept per group: at two a second, a minute of backlog at full precision. Past
/// that the newest sample absorbs later growth, keeping its older time: lag is then
/// overstated, never understated.
const SAMPLES_PER_GROUP: usize = 128;

/// When each group's leader log first reached each sampled index.
#[derive(Debug, Default)]
pub struct ReplicationClock {
    groups: BTreeMap<String, VecDeque<(u64, Instant)>>,
}

impl ReplicationClock {
    /// Records that `group`'s leader held `last_log` at `now`.
    pub fn observe(&mut self, group: &str, last_log: Option<u64>, now: Instant) {
        let Some(last_log) = last_log else {
            return;
        };
        let samples = self.groups.entry(group.to_string()).or_default();
        let full = samples.len() >= SAMPLES_PER_GROUP;
        match samples.back_mut() {
            Some((index, _)) if *index >= last_log => {}
            Some((index, _)) if full => *index = last_log,
            _ => samples.push_back((last_log, now)),
        }
    }

    /// How long `group`'s leader has held an entry past `matched` (zero if it holds none).
    pub fn lag(&self, group: &str, matched: Option<u64>, now: Instant) -> Duration {
        let Some(samples) = self.groups.get(group) else {
            return Duration::ZERO;
        };
        samples
            .iter()
            .find(|(index, _)| Some(*index) > matched)
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
    }

    /// Forgets samples every member of `group` holds (`slowest` is the least any holds),
    /// keeping the newest, which the next growth is measured from.
    pub fn forget_held(&mut self, group: &str, slowest: Option<u64>) {
        if let Some(samples) = self.groups.get_mut(group) {
            while samples.len() > 1 && samples.front().is_some_and(|(i, _)| Some(*i) <= slowest) {
                samples.pop_front();
            }
        }
    }

    /// Forgets groups this node no longer leads.
    pub fn retain(&mut self, mut leads: impl FnMut(&str) -> bool) {
        self.groups.retain(|group, _| leads(group));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_holds_everything_lags_nothing() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        clock.observe("g", Some(10), t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(clock.lag("g", Some(10), later), Duration::ZERO);
        assert_eq!(clock.lag("unknown", None, later), Duration::ZERO);
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_entry_the_member_lacks() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        clock.observe("g", Some(10), t0);
        clock.observe("g", Some(20), t0 + Duration::from_secs(1));
        clock.observe("g", Some(30), t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(5);
        // Holds 10: lacks 11..=20, first held at t0 + 1 s.
        assert_eq!(clock.lag("g", Some(10), now), Duration::from_secs(4));
        // Holds 25: lacks 26..=30, first seen at t0 + 2 s.
        assert_eq!(clock.lag("g", Some(25), now), Duration::from_secs(3));
        // Holds nothing: lacks everything since the first sample.
        assert_eq!(clock.lag("g", None, now), Duration::from_secs(5));
        // A sample that repeats an index does not restart its clock.
        clock.observe("g", Some(30), now);
        assert_eq!(clock.lag("g", Some(25), now), Duration::from_secs(3));
    }

    #[test]
    fn held_samples_are_forgotten_but_the_newest_is_kept() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        for i in 1..=5u64 {
            clock.observe("g", Some(i * 10), t0 + Duration::from_secs(i));
        }
        clock.forget_held("g", Some(50));
        assert_eq!(clock.groups["g"].len(), 1);
        clock.observe("g", Some(60), t0 + Duration::from_secs(9));
        assert_eq!(
            clock.lag("g", Some(50), t0 + Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        clock.retain(|_| false);
        assert!(clock.groups.is_empty());
    }

    #[test]
    fn a_full_clock_overstates_lag_rather_than_understating_it() {
        let t0 = Instant::now();
        let mut clock = ReplicationClock::default();
        for i in 0..SAMPLES_PER_GROUP as u64 + 10 {
            clock.observe("g", Some(i + 1), t0 + Duration::from_secs(i));
        }
        assert_eq!(clock.groups["g"].len(), SAMPLES_PER_GROUP);
        let now = t0 + Duration::from_secs(1000);
        // Entry 138 was appended at t0 + 137 s; its sample says t0 + 127 s: older.
        let lag = clock.lag("g", Some(SAMPLES_PER_GROUP as u64 + 9), now);
        assert!(lag >= Duration::from_secs(1000 - 137), "{lag:?}");
    }
}
