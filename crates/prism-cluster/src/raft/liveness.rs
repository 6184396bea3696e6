//! The node's liveness driver: one task per node pings every peer node that shares a group
//! with it, and applies `raft::quiescence`'s decision to every copy it hosts (heartbeats on or
//! off, an election). It replaces openraft's per-group election timers, so the cost of an
//! idle node is one ping per peer per `ping_interval` and one look at each copy per tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{AsyncRuntime, Config};
use parking_lot::Mutex;
use rand::Rng;
use tokio::time::Instant;

use super::network::RaftHost;
use super::quiescence::{next, Act, CopyMemory, Peers, Timing};
use super::types::SeededTokio;
use crate::network::Network;
use crate::rpc::{Answer, Envelope, GroupId, Request};

/// openraft's timers to go with `timing`: a follower's leader lease (openraft refuses votes
/// for `election_timeout_max` after it last heard from its leader) ends before the node-level
/// detector suspects the leader, so the first election after a leader's death can win; the
/// election timer itself is off (`enable_elect`), since this driver starts elections.
pub fn raft_config(timing: &Timing, base: Config) -> Config {
    let lease = timing.suspect_after.as_millis() as u64;
    let heartbeat = (timing.ping_interval.as_millis() as u64).clamp(1, lease / 3);
    Config {
        heartbeat_interval: heartbeat,
        election_timeout_min: lease / 2,
        election_timeout_max: lease,
        enable_elect: false,
        ..base
    }
}

/// Runs the driver for the groups of `host` until the task is aborted.
pub async fn watch(host: Arc<RaftHost>, network: Arc<dyn Network>, timing: Timing) {
    let peers = Arc::new(Mutex::new(Peers::new(Instant::now())));
    let in_flight: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut memories: BTreeMap<GroupId, CopyMemory> = BTreeMap::new();
    let mut next_ping = Instant::now();
    let tick = timing.ping_interval / 2;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let copies = host.copies();
        memories.retain(|group, _| copies.iter().any(|(g, _)| g == group));
        let woken = host.take_wakes();
        let mut addresses = BTreeMap::new();
        for (group, copy) in &copies {
            let (mut view, members) = copy.view();
            view.woken = woken.contains(group);
            let memory = memories.entry(group.clone()).or_insert_with(|| {
                copy.stop_election_timer();
                CopyMemory::default()
            });
            let act = next(&view, memory, &peers.lock(), &timing, now, |max| {
                let micros = max.as_micros() as u64;
                Duration::from_micros(SeededTokio::thread_rng().gen_range(0..=micros))
            });
            match act {
                Act::Nothing => {}
                Act::Heartbeats(on) => copy.set_heartbeats(on),
                Act::Elect => copy.elect().await,
                Act::WakeLeader(leader) => {
                    if let Some(address) = members.get(&leader) {
                        let wake = Envelope {
                            group: Some(group.clone()),
                            request: Request::Wake,
                        };
                        let (network, address) = (network.clone(), address.clone());
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
        if now >= next_ping {
            next_ping = now + timing.ping_interval;
            for (id, address) in addresses {
                if !in_flight.lock().insert(id) {
                    continue;
                }
                let (network, peers, in_flight) =
                    (network.clone(), peers.clone(), in_flight.clone());
                let deadline = timing.suspect_after;
                tokio::spawn(async move {
                    let ping = Envelope {
                        group: None,
                        request: Request::Ping,
                    };
                    let answer = tokio::time::timeout(deadline, network.call(&address, ping)).await;
                    if let Ok(Ok(Answer::Pong { incarnation, .. })) = answer {
                        peers.lock().answered(id, incarnation, Instant::now());
                    }
                    in_flight.lock().remove(&id);
                });
            }
        }
    }
}
