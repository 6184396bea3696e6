//! The node's liveness driver: one task per node pings every peer node that shares a group
//! with it, and applies `raft::quiescence`'s decision to every copy it hosts (heartbeats on or
//! off, an election). It replaces openraft's per-group election timers, so the cost of an
//! idle node is one ping per peer per `ping_interval` and one look at each copy per tick. A
//! ping also carries the list of groups the answering node leads, when it changed, so that a
//! follower notices a leader whose node is up but whose copy no longer leads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{AsyncRuntime, Config};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use super::network::RaftHost;
use super::quiescence::{next, Act, CopyMemory, Peers, Role, Timing};
use super::types::SeededTokio;
use crate::network::Network;
use crate::rpc::{Answer, Envelope, GroupId, Request};

/// openraft's timers to go with `timing`. A follower's leader lease (openraft refuses votes
/// for `election_timeout_max` after it last heard from its leader) ends before the node-level
/// detector can suspect the leader: suspicion counts from when the leader's last answered
/// ping was sent, up to a ping interval before the leader's last message on a fast link. (On
/// a link whose round trip exceeds half a ping interval the first election may meet a lease
/// and be retried: slower, never unsafe.) The election timer
/// starts off (`enable_elect`): this driver starts elections, and turns the timer on for a
/// copy only while an election it started found no leader. Ticks stay on: openraft refreshes
/// its metrics on them.
pub fn raft_config(timing: &Timing, base: Config) -> Config {
    let ping = timing.ping_interval.as_millis() as u64;
    let lease = (timing.suspect_after.as_millis() as u64)
        .saturating_sub(ping + ping / 2)
        .max(6);
    Config {
        // Also openraft's tick period (times 1.5) and its append-entries time-out: as long as
        // the lease allows, since every tick costs every group a wake-up.
        heartbeat_interval: (lease / 2 - 1).max(1),
        election_timeout_min: lease / 2,
        election_timeout_max: lease,
        enable_elect: false,
        enable_tick: true,
        ..base
    }
}

/// Runs the driver for the groups of `host` until the task is aborted.
pub async fn watch(host: Arc<RaftHost>, network: Arc<dyn Network>, timing: Timing) {
    let peers = Arc::new(Mutex::new(Peers::new(Instant::now())));
    let in_flight: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut memories: BTreeMap<GroupId, CopyMemory> = BTreeMap::new();
    // Elections due between two looks wake the driver on their own (`wake_at`).
    let tick = timing.ping_interval;
    // Nodes started together do not look at the same instants.
    let offset = draw(tick);
    let mut next_ping = Instant::now() + offset;
    let mut wake_at = Instant::now() + offset;
    loop {
        tokio::time::sleep_until(wake_at).await;
        let now = Instant::now();
        let copies = host.copies();
        memories.retain(|group, _| copies.iter().any(|(g, _)| g == group));
        let woken = host.take_wakes();
        let mut addresses = BTreeMap::new();
        let mut leading = BTreeSet::new();
        for (group, copy) in &copies {
            let (mut view, members) = copy.view(group);
            view.woken = woken.contains(group);
            let memory = memories.entry(group.clone()).or_default();
            let act = next(&view, memory, &peers.lock(), &timing, now, draw);
            copy.set_election_timer(memory.openraft_retries());
            if view.role == Role::Leader {
                leading.insert(group.clone());
            }
            match act {
                Act::Nothing => {}
                Act::Heartbeats(on) => copy.set_heartbeats(on),
                Act::Elect => {
                    tracing::info!(%group, leader = ?view.leader, "no live leader: starting an election");
                    copy.elect().await
                }
                Act::WakeLeader(leader) => {
                    if let Some(address) = members.get(&leader) {
                        let wake = Envelope {
                            group: Some(group.clone()),
                            request: Request::Wake,
                        };
                        let (network, address) = (network.clone(), address.clone());
                        // As long as a ping may take: a slow link is not a lost wake.
                        let deadline = timing.suspect_after;
                        tokio::spawn(async move {
                            // Lost, it is asked again after `idle_after`.
                            let _ =
                                tokio::time::timeout(deadline, network.call(&address, wake)).await;
                        });
                    }
                }
            }
            addresses.extend(members.into_iter().filter(|(id, _)| *id != view.me));
        }
        host.set_leading(leading);
        let suspected = {
            let mut peers = peers.lock();
            for id in addresses.keys() {
                peers.seen(*id, now);
            }
            addresses
                .keys()
                .copied()
                .filter(|id| !peers.alive(*id, now, &timing))
                .collect()
        };
        host.set_suspected(suspected);
        if now >= next_ping {
            next_ping = now + timing.ping_interval;
            for (id, address) in addresses {
                if !in_flight.lock().insert(id) {
                    continue;
                }
                let known = peers.lock().leading_version(id);
                let (network, peers, in_flight) =
                    (network.clone(), peers.clone(), in_flight.clone());
                // A ping may take until the peer would be suspected anyway: a link slower than
                // the ping interval is slow, not dead. (No two pings to a peer overlap.)
                let deadline = timing.suspect_after;
                tokio::spawn(async move {
                    let ask = Envelope {
                        group: None,
                        request: Request::Leaders { known, to: id },
                    };
                    // An answer shows the peer alive no later than when it was asked: counted
                    // from then, suspicion never lags behind a slow link's round trip.
                    let asked = Instant::now();
                    let answer = tokio::time::timeout(deadline, network.call(&address, ask)).await;
                    if let Ok(Ok(Answer::Leaders {
                        incarnation,
                        version,
                        groups,
                    })) = answer
                    {
                        let mut peers = peers.lock();
                        peers.answered(id, incarnation, asked);
                        peers.leads(id, version, groups.map(|g| g.into_iter().collect()));
                    }
                    in_flight.lock().remove(&id);
                });
            }
        }
        // The next look: the next tick, or an election due before it.
        let due = memories.values().filter_map(CopyMemory::election_due).min();
        wake_at = due.map_or(now + tick, |due| due.clamp(now, now + tick));
        if wake_at == now {
            tokio::task::yield_now().await;
        }
    }
}

/// A random duration in `[0, max]`, from the runtime's (seedable) generator.
fn draw(max: Duration) -> Duration {
    let micros = max.as_micros() as u64;
    Duration::from_micros(SeededTokio::thread_rng().gen_range(0..=micros))
}
