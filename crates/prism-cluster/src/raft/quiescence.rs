//! What a node does with each Raft group it hosts, decided from the group's state and from
//! node-level liveness: pure, so that the rules are unit-tested and the driver
//! (`raft::liveness`) only looks and acts.
//!
//! - **An idle leader stops heartbeating** once every live follower holds its whole log and it
//!   has applied it (CockroachDB's quiescence, TiKV's hibernation). It heartbeats again on a
//!   write, a new term, or when a follower's node comes back or restarts.
//! - **Followers never time out on their own.** openraft's election timer is off; a voter
//!   starts an election only when its node-level failure detector says the leader's node is
//!   gone, or that node has not led the group for `suspect_after` (its copy stopped, or lost
//!   leadership unseen), or no leader is known; at a random moment within a spread, and only
//!   while a majority of the group's voters answer pings. That last condition plays pre-vote's
//!   part: a node cut off in a minority does not inflate terms and depose a healthy leader
//!   when it returns.
//!
//! - **A follower that holds entries it does not know to be committed** (the message that
//!   carried the commit was lost before the leader went quiet) asks the leader to heartbeat
//!   again, once per `idle_after`.
//!
//! One ping per node pair replaces 2 heartbeats per group per heartbeat interval, so an idle
//! node's cost no longer grows with its groups.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::rpc::GroupId;

/// The liveness clock of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often each peer node is pinged.
    pub ping_interval: Duration,
    /// A peer that has answered no ping for this long is suspected down.
    pub suspect_after: Duration,
    /// A leader with nothing new for this long, and followers caught up, stops heartbeating.
    pub idle_after: Duration,
    /// Elections start at a random moment within this, so copies rarely collide.
    pub election_spread: Duration,
    /// The least time between two elections one copy starts (a candidate's retry).
    pub election_retry: Duration,
}

impl Default for Timing {
    /// About a second from a leader's death to a new leader: 700 ms to suspect its node, up to
    /// 200 ms of spread, and a vote round trip.
    fn default() -> Self {
        Timing {
            ping_interval: Duration::from_millis(150),
            suspect_after: Duration::from_millis(700),
            idle_after: Duration::from_millis(1000),
            election_spread: Duration::from_millis(200),
            election_retry: Duration::from_millis(800),
        }
    }
}

/// What this node last heard from each peer node.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Peers are given the benefit of the doubt for `suspect_after` from here.
    started: Instant,
    peers: BTreeMap<u64, Peer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Peer {
    /// When this node first had a group in common with the peer.
    first_seen: Option<Instant>,
    answered: Option<Instant>,
    incarnation: Option<u64>,
    /// The groups the peer led when it last said, and the version of that list.
    leading: Option<(u64, BTreeSet<GroupId>)>,
}

impl Peers {
    pub fn new(started: Instant) -> Self {
        Peers {
            started,
            peers: BTreeMap::new(),
        }
    }

    /// Node `node` shares a group with this node as of `now` (only the first call counts):
    /// a peer that just joined gets the same benefit of the doubt as every peer at start.
    pub fn seen(&mut self, node: u64, now: Instant) {
        self.peers
            .entry(node)
            .or_default()
            .first_seen
            .get_or_insert(now);
    }

    /// Node `node`, in its incarnation `incarnation` (a new one at each start), answered a
    /// ping at `now`.
    pub fn answered(&mut self, node: u64, incarnation: u64, now: Instant) {
        let peer = self.peers.entry(node).or_default();
        peer.answered = Some(peer.answered.map_or(now, |t| t.max(now)));
        if peer.incarnation != Some(incarnation) {
            peer.leading = None;
        }
        peer.incarnation = Some(incarnation);
    }

    /// `node` leads `groups`, as of its list's `version` (`None`: unchanged since the version
    /// this node holds).
    pub fn leads(&mut self, node: u64, version: u64, groups: Option<BTreeSet<GroupId>>) {
        let peer = self.peers.entry(node).or_default();
        if let Some(groups) = groups {
            peer.leading = Some((version, groups));
        }
    }

    /// The version of `node`'s list of led groups this node holds (0: none).
    pub fn leading_version(&self, node: u64) -> u64 {
        self.peers
            .get(&node)
            .and_then(|p| p.leading.as_ref())
            .map_or(0, |(version, _)| *version)
    }

    /// Whether `node` answered within `suspect_after` (or this node started, or first saw
    /// the peer, less than that ago and has not heard from it yet).
    pub fn alive(&self, node: u64, now: Instant, timing: &Timing) -> bool {
        let peer = self.peers.get(&node);
        let last = peer.and_then(|p| p.answered).unwrap_or_else(|| {
            peer.and_then(|p| p.first_seen)
                .map_or(self.started, |seen| seen.max(self.started))
        });
        now.saturating_duration_since(last) < timing.suspect_after
    }

    /// Whether `node` answered within `suspect_after`: no benefit of the doubt.
    fn answering(&self, node: u64, now: Instant, timing: &Timing) -> bool {
        self.peers
            .get(&node)
            .and_then(|p| p.answered)
            .is_some_and(|t| now.saturating_duration_since(t) < timing.suspect_after)
    }

    /// Whether `node` said it leads `group` (true while it has not said what it leads).
    fn may_lead(&self, node: u64, group: &GroupId) -> bool {
        self.peers
            .get(&node)
            .and_then(|p| p.leading.as_ref())
            .is_none_or(|(_, groups)| groups.contains(group))
    }

    /// What a leader compares to notice that a follower's node came back or restarted: its
    /// incarnation while alive, `None` while suspected.
    fn presence(&self, node: u64, now: Instant, timing: &Timing) -> Option<u64> {
        if self.alive(node, now, timing) {
            Some(
                self.peers
                    .get(&node)
                    .and_then(|p| p.incarnation)
                    .unwrap_or(0),
            )
        } else {
            None
        }
    }
}

/// A copy's role, as far as liveness goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// A follower or a candidate.
    Voter,
    Learner,
    /// Shut down, or stopped by a fatal error: nothing to do.
    Stopped,
}

/// One copy of a group, as its metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyView {
    pub group: GroupId,
    pub me: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// The log index of the membership in effect (the latest one appended).
    pub membership_at: Option<u64>,
    /// On a leader: the last index each other member (voter or learner) is known to hold.
    pub matched: BTreeMap<u64, Option<u64>>,
    /// On a leader: a follower asked it to heartbeat since the last look.
    pub woken: bool,
}

/// What the driver remembers of one copy between two looks.
#[derive(Debug, Clone, Default)]
pub struct CopyMemory {
    /// The role and, for a leader, the term this memory is about.
    about: Option<(Role, u64)>,
    heartbeats: bool,
    activity: (Option<u64>, Option<u64>),
    active_at: Option<Instant>,
    /// Each follower's presence when the leader went quiet.
    quiet_followers: BTreeMap<u64, Option<u64>>,
    election_at: Option<Instant>,
    last_election: Option<Instant>,
    /// Since when a follower holds entries past what it applied.
    lagging_since: Option<Instant>,
    last_wake: Option<Instant>,
    /// Since when the leader's node answers but does not say it leads the group, for that
    /// leader at that term (a newly elected leader gets its own grace).
    not_led_since: Option<(u64, u64, Instant)>,
    /// Elections this copy started since it last had a live leader.
    failed_elections: u32,
}

impl CopyMemory {
    /// When an election is due, so the driver can wake then rather than at its next tick.
    pub fn election_due(&self) -> Option<Instant> {
        self.election_at
    }

    /// Whether openraft's own election timer should run for this copy: only after an election
    /// the driver started found no leader. openraft then retries on its randomized time-out,
    /// and waits longer when a peer showed it a longer log, so that the copy holding the
    /// longest log wins instead of two copies raising terms in turn.
    pub fn openraft_retries(&self) -> bool {
        self.failed_elections > 0
    }
}

/// What to do with a copy now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Nothing,
    /// Turn the leader's heartbeats on or off.
    Heartbeats(bool),
    /// Start an election.
    Elect,
    /// Ask the leader, on node `leader`, to heartbeat again.
    WakeLeader(u64),
}

/// The next act for `view`. `draw(max)` returns a random duration in `[0, max]`.
pub fn next(
    view: &CopyView,
    memory: &mut CopyMemory,
    peers: &Peers,
    timing: &Timing,
    now: Instant,
    draw: impl FnOnce(Duration) -> Duration,
) -> Act {
    let about = match view.role {
        Role::Leader => (Role::Leader, view.term),
        role => (role, 0),
    };
    if memory.about != Some(about) {
        let last_election = memory.last_election;
        *memory = CopyMemory {
            about: Some(about),
            last_election,
            ..CopyMemory::default()
        };
        if view.role == Role::Leader {
            // A new leader heartbeats until it has settled, whatever an earlier term left.
            memory.heartbeats = true;
            memory.activity = (view.last_log, view.applied);
            memory.active_at = Some(now);
            return Act::Heartbeats(true);
        }
    }
    match view.role {
        Role::Leader => lead(view, memory, peers, timing, now),
        Role::Voter => follow(view, memory, peers, timing, now, draw),
        Role::Learner => match view.leader {
            Some(leader) if leader_alive(view, memory, peers, timing, now) => {
                wake_if_lagging(view, memory, timing, now, leader)
            }
            _ => Act::Nothing,
        },
        Role::Stopped => Act::Nothing,
    }
}

fn lead(
    view: &CopyView,
    memory: &mut CopyMemory,
    peers: &Peers,
    timing: &Timing,
    now: Instant,
) -> Act {
    let activity = (view.last_log, view.applied);
    let active = activity != memory.activity || view.woken;
    if active {
        memory.activity = activity;
        memory.active_at = Some(now);
    }
    let presence: BTreeMap<u64, Option<u64>> = view
        .matched
        .keys()
        .map(|&f| (f, peers.presence(f, now, timing)))
        .collect();
    if memory.heartbeats {
        let idle = memory
            .active_at
            .is_none_or(|t| now.saturating_duration_since(t) >= timing.idle_after);
        let caught_up = view.applied == view.last_log
            && view
                .matched
                .iter()
                .all(|(f, m)| presence[f].is_none() || *m == view.last_log);
        if idle && caught_up {
            memory.heartbeats = false;
            memory.quiet_followers = presence;
            return Act::Heartbeats(false);
        }
    } else if active || presence != memory.quiet_followers {
        memory.heartbeats = true;
        memory.active_at = Some(now);
        return Act::Heartbeats(true);
    }
    Act::Nothing
}

fn follow(
    view: &CopyView,
    memory: &mut CopyMemory,
    peers: &Peers,
    timing: &Timing,
    now: Instant,
    draw: impl FnOnce(Duration) -> Duration,
) -> Act {
    let leader_alive = leader_alive(view, memory, peers, timing, now);
    let reachable = view
        .voters
        .iter()
        .filter(|&&v| v == view.me || peers.answering(v, now, timing))
        .count();
    let may_win = view.voters.contains(&view.me) && reachable * 2 > view.voters.len();
    if leader_alive || !may_win {
        memory.election_at = None;
        // Cut off from a majority, openraft's timer must not keep raising terms: a copy that
        // returns with a higher term would depose a healthy leader.
        memory.failed_elections = 0;
        return match view.leader {
            Some(leader) if leader_alive => wake_if_lagging(view, memory, timing, now, leader),
            _ => Act::Nothing,
        };
    }
    match memory.election_at {
        None => {
            let earliest = memory
                .last_election
                .map_or(now, |t| (t + timing.election_retry).max(now));
            memory.election_at = Some(earliest + draw(timing.election_spread));
            Act::Nothing
        }
        Some(at) if now >= at => {
            memory.election_at = None;
            memory.last_election = Some(now);
            memory.failed_elections += 1;
            Act::Elect
        }
        Some(_) => Act::Nothing,
    }
}

/// Whether the copy's leader is another node that answers and leads the group (or stopped
/// saying so less than `suspect_after` ago: a new leader's list takes a ping to arrive).
fn leader_alive(
    view: &CopyView,
    memory: &mut CopyMemory,
    peers: &Peers,
    timing: &Timing,
    now: Instant,
) -> bool {
    let Some(leader) = view.leader.filter(|l| *l != view.me) else {
        return false;
    };
    if !peers.alive(leader, now, timing) {
        return false;
    }
    if peers.may_lead(leader, &view.group) {
        memory.not_led_since = None;
        return true;
    }
    let since = match memory.not_led_since {
        Some((l, term, since)) if l == leader && term == view.term => since,
        _ => {
            memory.not_led_since = Some((leader, view.term, now));
            now
        }
    };
    now.saturating_duration_since(since) < timing.suspect_after
}

fn wake_if_lagging(
    view: &CopyView,
    memory: &mut CopyMemory,
    timing: &Timing,
    now: Instant,
    leader: u64,
) -> Act {
    if view.last_log <= view.applied {
        memory.lagging_since = None;
        return Act::Nothing;
    }
    let since = *memory.lagging_since.get_or_insert(now);
    let waited = now.saturating_duration_since(since) >= timing.idle_after;
    let may_ask = memory
        .last_wake
        .is_none_or(|t| now.saturating_duration_since(t) >= timing.idle_after);
    if waited && may_ask {
        memory.last_wake = Some(now);
        return Act::WakeLeader(leader);
    }
    Act::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing {
            ping_interval: 100 * MS,
            suspect_after: 500 * MS,
            idle_after: 1000 * MS,
            election_spread: 200 * MS,
            election_retry: 800 * MS,
        }
    }

    fn group() -> GroupId {
        GroupId::shard("c", 0, 1)
    }

    fn leader(last: u64, matched: &[(u64, u64)]) -> CopyView {
        CopyView {
            group: group(),
            me: 1,
            role: Role::Leader,
            term: 3,
            leader: Some(1),
            voters: vec![1, 2, 3],
            last_log: Some(last),
            applied: Some(last),
            membership_at: Some(1),
            matched: matched.iter().map(|&(f, m)| (f, Some(m))).collect(),
            woken: false,
        }
    }

    fn follower(leader: Option<u64>) -> CopyView {
        CopyView {
            group: group(),
            me: 2,
            role: Role::Voter,
            term: 3,
            leader,
            voters: vec![1, 2, 3],
            last_log: Some(5),
            applied: Some(5),
            membership_at: Some(1),
            matched: BTreeMap::new(),
            woken: false,
        }
    }

    /// Peers 1..=3 answering at `at`, in incarnation 7.
    fn peers_answering(start: Instant, at: Instant, nodes: &[u64]) -> Peers {
        let mut peers = Peers::new(start);
        for &n in nodes {
            peers.answered(n, 7, at);
        }
        peers
    }

    #[test]
    fn a_leader_goes_quiet_only_when_idle_and_followers_hold_everything() {
        let t0 = Instant::now();
        let peers = peers_answering(t0, t0, &[2, 3]);
        let mut memory = CopyMemory::default();
        let never = |_| Duration::ZERO;
        let caught_up = leader(5, &[(2, 5), (3, 5)]);
        assert_eq!(
            next(&caught_up, &mut memory, &peers, &timing(), t0, never),
            Act::Heartbeats(true),
            "a new leader heartbeats"
        );
        let at = t0 + 400 * MS;
        let peers = peers_answering(t0, at, &[2, 3]);
        assert_eq!(
            next(&caught_up, &mut memory, &peers, &timing(), at, never),
            Act::Nothing,
            "not idle long enough"
        );
        let at = t0 + 1100 * MS;
        let peers = peers_answering(t0, at, &[2, 3]);
        let behind = leader(5, &[(2, 5), (3, 4)]);
        assert_eq!(
            next(&behind, &mut memory, &peers, &timing(), at, never),
            Act::Nothing,
            "a live follower lacks an entry"
        );
        let mut unapplied = caught_up.clone();
        unapplied.applied = Some(4);
        assert_eq!(
            next(&unapplied, &mut memory, &peers, &timing(), at, never),
            Act::Nothing,
            "applying is activity"
        );
        let mut idle_unapplied = CopyMemory::default();
        next(
            &unapplied,
            &mut idle_unapplied,
            &peers,
            &timing(),
            t0,
            never,
        );
        assert_eq!(
            next(
                &unapplied,
                &mut idle_unapplied,
                &peers,
                &timing(),
                at,
                never
            ),
            Act::Nothing,
            "idle, but the leader has not applied (so maybe not committed) everything"
        );
        let at = t0 + 2200 * MS;
        let peers = peers_answering(t0, at, &[2, 3]);
        assert_eq!(
            next(&caught_up, &mut memory, &peers, &timing(), at, never),
            Act::Nothing,
            "applying is activity too"
        );
        let at = t0 + 3200 * MS;
        let peers = peers_answering(t0, at, &[2, 3]);
        assert_eq!(
            next(&caught_up, &mut memory, &peers, &timing(), at, never),
            Act::Heartbeats(false)
        );
        assert_eq!(
            next(&caught_up, &mut memory, &peers, &timing(), at + MS, never),
            Act::Nothing
        );
    }

    #[test]
    fn a_quiet_leader_wakes_on_a_write_and_when_a_follower_returns_or_restarts() {
        let t0 = Instant::now();
        let never = |_| Duration::ZERO;
        let quiet = |view: &CopyView, peers: &Peers, at: Instant| {
            let mut memory = CopyMemory::default();
            next(view, &mut memory, peers, &timing(), t0, never);
            assert_eq!(
                next(view, &mut memory, peers, &timing(), at, never),
                Act::Heartbeats(false)
            );
            memory
        };
        let at = t0 + 2 * timing().idle_after;
        let view = leader(5, &[(2, 5), (3, 5)]);
        let peers = peers_answering(t0, at, &[2, 3]);

        let mut memory = quiet(&view, &peers, at);
        let written = leader(6, &[(2, 6), (3, 6)]);
        assert_eq!(
            next(&written, &mut memory, &peers, &timing(), at + MS, never),
            Act::Heartbeats(true)
        );

        let mut memory = quiet(&view, &peers, at);
        let mut asked = view.clone();
        asked.woken = true;
        assert_eq!(
            next(&asked, &mut memory, &peers, &timing(), at + MS, never),
            Act::Heartbeats(true),
            "a follower asked"
        );

        let mut memory = quiet(&view, &peers, at);
        let mut restarted = peers.clone();
        restarted.answered(3, 8, at + MS);
        assert_eq!(
            next(&view, &mut memory, &restarted, &timing(), at + MS, never),
            Act::Heartbeats(true),
            "node 3 restarted: it may have lost its commit index"
        );

        // Node 3 dead: the leader goes quiet without it, and wakes when it answers again.
        let only_2 = peers_answering(t0, at, &[2]);
        let peers_later = |t: Instant| {
            let mut p = only_2.clone();
            p.answered(2, 7, t);
            p
        };
        let late = at + timing().suspect_after;
        let mut memory = CopyMemory::default();
        let lagging = leader(5, &[(2, 5), (3, 2)]);
        next(
            &lagging,
            &mut memory,
            &peers_later(late),
            &timing(),
            t0,
            never,
        );
        assert_eq!(
            next(
                &lagging,
                &mut memory,
                &peers_later(late),
                &timing(),
                late,
                never
            ),
            Act::Heartbeats(false),
            "a suspected follower does not keep the group awake"
        );
        let mut back = peers_later(late + MS);
        back.answered(3, 7, late + MS);
        assert_eq!(
            next(&lagging, &mut memory, &back, &timing(), late + MS, never),
            Act::Heartbeats(true)
        );
    }

    #[test]
    fn a_follower_elects_only_when_the_leader_node_is_gone_and_a_majority_answers() {
        let t0 = Instant::now();
        let spread = |max: Duration| max / 2;
        let mut memory = CopyMemory::default();
        let at = t0 + 2 * timing().suspect_after;
        for step in 0..30 {
            let at = at + step * 100 * MS;
            let all = peers_answering(t0, at, &[1, 3]);
            assert_eq!(
                next(&follower(Some(1)), &mut memory, &all, &timing(), at, spread),
                Act::Nothing,
                "the leader's node answers"
            );
        }
        let mut memory = CopyMemory::default();
        // Node 3 answers at every look; the leader, node 1, never did.
        let mut ask = |at: Instant| {
            let without_leader = peers_answering(t0, at, &[3]);
            next(
                &follower(Some(1)),
                &mut memory,
                &without_leader,
                &timing(),
                at,
                spread,
            )
        };
        assert_eq!(ask(at), Act::Nothing);
        assert_eq!(ask(at + 99 * MS), Act::Nothing, "within the drawn spread");
        assert_eq!(ask(at + 100 * MS), Act::Elect);
        assert_eq!(ask(at + 200 * MS), Act::Nothing);
        assert_eq!(
            ask(at + 999 * MS),
            Act::Nothing,
            "a retry waits election_retry plus a spread"
        );
        assert_eq!(ask(at + 1000 * MS), Act::Elect);

        let alone = Peers::new(t0);
        let mut memory = CopyMemory::default();
        for step in 0..50 {
            assert_eq!(
                next(
                    &follower(None),
                    &mut memory,
                    &alone,
                    &timing(),
                    at + step * 100 * MS,
                    spread
                ),
                Act::Nothing,
                "a node that reaches no majority never campaigns"
            );
        }
    }

    #[test]
    fn a_leaderless_group_elects_once_peers_are_known_and_learners_never_do() {
        let t0 = Instant::now();
        let none = |_| Duration::ZERO;
        let fresh = Peers::new(t0);
        let mut memory = CopyMemory::default();
        assert_eq!(
            next(
                &follower(None),
                &mut memory,
                &fresh,
                &timing(),
                t0 + MS,
                none
            ),
            Act::Nothing,
            "no peer has answered yet: no majority to win with"
        );
        let answered = peers_answering(t0, t0 + 2 * MS, &[3]);
        assert_eq!(
            next(
                &follower(None),
                &mut memory,
                &answered,
                &timing(),
                t0 + 2 * MS,
                none
            ),
            Act::Nothing
        );
        assert_eq!(
            next(
                &follower(None),
                &mut memory,
                &answered,
                &timing(),
                t0 + 3 * MS,
                none
            ),
            Act::Elect,
            "node 3 answers: with it, a majority"
        );
        let mut learner = follower(None);
        learner.role = Role::Learner;
        let mut memory = CopyMemory::default();
        for step in 0..10 {
            assert_eq!(
                next(
                    &learner,
                    &mut memory,
                    &fresh,
                    &timing(),
                    t0 + step * MS,
                    none
                ),
                Act::Nothing
            );
        }
        let mut outside = follower(None);
        outside.voters = vec![1, 3, 4];
        let mut memory = CopyMemory::default();
        for step in 0..30 {
            let at = t0 + step * 100 * MS;
            let peers = peers_answering(t0, at, &[1, 3, 4]);
            assert_eq!(
                next(&outside, &mut memory, &peers, &timing(), at, none),
                Act::Nothing,
                "a copy that is not a voter never campaigns"
            );
        }
    }

    #[test]
    fn a_follower_holding_unapplied_entries_asks_its_leader_to_wake_once_per_idle_period() {
        let t0 = Instant::now();
        let never = |_| Duration::ZERO;
        let mut lagging = follower(Some(1));
        lagging.last_log = Some(7);
        let mut memory = CopyMemory::default();
        let mut ask = |view: &CopyView, at: Instant| {
            let peers = peers_answering(t0, at, &[1, 3]);
            next(view, &mut memory, &peers, &timing(), at, never)
        };
        assert_eq!(ask(&lagging, t0), Act::Nothing);
        assert_eq!(
            ask(&lagging, t0 + 999 * MS),
            Act::Nothing,
            "it may just be slow"
        );
        assert_eq!(ask(&lagging, t0 + 1000 * MS), Act::WakeLeader(1));
        assert_eq!(ask(&lagging, t0 + 1500 * MS), Act::Nothing, "asked already");
        assert_eq!(ask(&lagging, t0 + 2000 * MS), Act::WakeLeader(1));
        assert_eq!(
            ask(&follower(Some(1)), t0 + 3000 * MS),
            Act::Nothing,
            "applied"
        );
    }

    #[test]
    fn a_live_node_that_stops_leading_the_group_is_replaced_after_suspect_after() {
        let t0 = Instant::now();
        let none = |_| Duration::ZERO;
        let mut memory = CopyMemory::default();
        let peers_at = |at: Instant, led: &[GroupId]| {
            let mut peers = peers_answering(t0, at, &[1, 3]);
            peers.leads(1, 4, Some(led.iter().cloned().collect()));
            peers
        };
        let mut ask = |at: Instant, led: &[GroupId]| {
            next(
                &follower(Some(1)),
                &mut memory,
                &peers_at(at, led),
                &timing(),
                at,
                none,
            )
        };
        for step in 0..20 {
            assert_eq!(
                ask(t0 + step * 100 * MS, &[group()]),
                Act::Nothing,
                "node 1 leads it"
            );
        }
        let other = GroupId::shard("c", 1, 1);
        let at = t0 + 2000 * MS;
        assert_eq!(
            ask(at, std::slice::from_ref(&other)),
            Act::Nothing,
            "a new leader's list may lag"
        );
        assert_eq!(
            ask(at + 499 * MS, std::slice::from_ref(&other)),
            Act::Nothing
        );
        assert_eq!(
            ask(at + 500 * MS, std::slice::from_ref(&other)),
            Act::Nothing,
            "scheduled"
        );
        assert_eq!(ask(at + 501 * MS, &[other]), Act::Elect);
    }

    #[test]
    fn a_newly_elected_leader_gets_its_own_grace_before_its_list_names_the_group() {
        // Node 1 stopped leading at term 3; node 3 wins term 4 while its ping answers still
        // list the groups it led before. A follower must not elect against node 3 on the
        // time node 1 used up.
        let t0 = Instant::now();
        let none = |_| Duration::ZERO;
        let mut memory = CopyMemory::default();
        let other = GroupId::shard("c", 1, 1);
        let peers_at = |at: Instant| {
            let mut peers = peers_answering(t0, at, &[1, 3]);
            peers.leads(1, 4, Some([other.clone()].into()));
            peers.leads(3, 4, Some([other.clone()].into()));
            peers
        };
        let under = |leader: u64, term: u64| CopyView {
            term,
            ..follower(Some(leader))
        };
        let mut ask = |view: CopyView, at: Instant| {
            next(&view, &mut memory, &peers_at(at), &timing(), at, none)
        };
        assert_eq!(ask(under(1, 3), t0), Act::Nothing);
        assert_eq!(ask(under(1, 3), t0 + 450 * MS), Act::Nothing);
        // Node 3 elected at 490 ms: its grace starts then, not at t0.
        assert_eq!(ask(under(3, 4), t0 + 490 * MS), Act::Nothing);
        assert_eq!(ask(under(3, 4), t0 + 600 * MS), Act::Nothing);
        assert_eq!(ask(under(3, 4), t0 + 980 * MS), Act::Nothing);
        // Past its own grace and still not saying it leads: replaced.
        assert_eq!(ask(under(3, 4), t0 + 1000 * MS), Act::Nothing, "scheduled");
        assert_eq!(ask(under(3, 4), t0 + 1001 * MS), Act::Elect);
    }

    #[test]
    fn openraft_retries_an_election_only_while_the_group_stays_leaderless_after_one() {
        let t0 = Instant::now();
        let none = |_| Duration::ZERO;
        let mut memory = CopyMemory::default();
        let ask = |view: &CopyView, at: Instant, memory: &mut CopyMemory| {
            let peers = peers_answering(t0, at, &[1, 3]);
            next(view, memory, &peers, &timing(), at, none)
        };
        assert_eq!(ask(&follower(None), t0, &mut memory), Act::Nothing);
        assert!(!memory.openraft_retries(), "nothing tried yet");
        assert_eq!(ask(&follower(None), t0 + MS, &mut memory), Act::Elect);
        assert!(
            memory.openraft_retries(),
            "no leader after the driver's election"
        );
        assert_eq!(
            ask(&follower(Some(3)), t0 + 2 * MS, &mut memory),
            Act::Nothing
        );
        assert!(!memory.openraft_retries(), "node 3 leads");

        // A failed election, then the copy is cut off: openraft's timer stops with it.
        let mut memory = CopyMemory::default();
        ask(&follower(None), t0, &mut memory);
        assert_eq!(ask(&follower(None), t0 + MS, &mut memory), Act::Elect);
        assert!(memory.openraft_retries());
        let later = t0 + 2 * timing().suspect_after;
        let alone = peers_answering(t0, t0, &[1, 3]);
        assert_eq!(
            next(&follower(None), &mut memory, &alone, &timing(), later, none),
            Act::Nothing
        );
        assert!(
            !memory.openraft_retries(),
            "no majority answers: no openraft elections"
        );
    }
}
