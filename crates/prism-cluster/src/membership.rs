//! Who is in the federation and who answers: one state machine fed by discovery and by
//! heartbeats, with a pure transition function. Time is passed in, so tests step it. Its
//! reads give the shard map, the copies a search reads (a member known dead is marked down,
//! so the coordinator reports it failed without waiting for a deadline), and the health
//! report of `/cluster/health`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::assignment::ShardMap;
use crate::config::HealthConfig;
use crate::coordinator::ShardCopy;
use crate::health::{NodeState, PeerHealth};

/// What happened to the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Discovery lists a member at `address`. `is_self` when the wiring found that the
    /// address reaches this very node (it resolves to one of this node's addresses).
    Discovered { address: String, is_self: bool },
    /// Discovery no longer lists `address`.
    Left { address: String },
    /// A heartbeat to `address` was answered by the node `node_id`.
    Pong { address: String, node_id: String },
}

/// What a transition changed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined(String),
    Left(String),
    /// This node is now a member under this address.
    SelfRenamed(String),
}

#[derive(Debug, Clone)]
struct Peer {
    health: PeerHealth,
    node_id: Option<String>,
}

/// The federation as this node sees it.
#[derive(Debug, Clone)]
pub struct Membership {
    node_id: String,
    /// The address this node advertises: its name when discovery does not list it.
    own_address: String,
    /// The address under which this node is a member: the form discovery gives it (an SRV
    /// target, an IP), so that every node names it alike.
    self_key: String,
    peers: BTreeMap<String, Peer>,
}

/// One node of the health report.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub address: String,
    pub node_id: Option<String>,
    pub state: NodeState,
    /// `state` is alive: the original Prism's field.
    pub healthy: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// `/cluster/health`: green when every node is alive, yellow while a majority is, else red.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = ClusterHealth)]
pub struct HealthReport {
    /// `green`, `yellow` or `red`.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub node_id: String,
    /// Always true: the report of a federation (the original Prism's summary fields follow).
    pub federated: bool,
    pub total_nodes: usize,
    /// Nodes alive.
    pub healthy_nodes: usize,
    pub nodes: Vec<NodeReport>,
}

impl Membership {
    /// A federation of this node alone.
    pub fn new(node_id: &str, own_address: &str) -> Membership {
        Membership {
            node_id: node_id.to_string(),
            own_address: own_address.to_string(),
            self_key: own_address.to_string(),
            peers: BTreeMap::new(),
        }
    }

    /// Applies `event` observed at `now`.
    pub fn apply(&mut self, event: Event, now: Instant) -> Option<Change> {
        match event {
            Event::Discovered { address, is_self } => {
                if is_self || address == self.own_address {
                    return self.rename_self(&address);
                }
                if address == self.self_key || self.peers.contains_key(&address) {
                    return None;
                }
                self.peers.insert(
                    address.clone(),
                    Peer {
                        health: PeerHealth::new(now),
                        node_id: None,
                    },
                );
                Some(Change::Joined(address))
            }
            Event::Left { address } => {
                if address == self.self_key {
                    // Discovery lost this node's record; it stays a member under its own name.
                    let own = self.own_address.clone();
                    return self.rename_self(&own);
                }
                self.peers.remove(&address).map(|_| Change::Left(address))
            }
            Event::Pong { address, node_id } => {
                if node_id == self.node_id {
                    // A member address that reaches this very node.
                    return self.rename_self(&address);
                }
                if let Some(peer) = self.peers.get_mut(&address) {
                    peer.health.heartbeat(now);
                    peer.node_id = Some(node_id);
                }
                None
            }
        }
    }

    fn rename_self(&mut self, address: &str) -> Option<Change> {
        if self.self_key == address {
            return None;
        }
        self.peers.remove(address);
        self.self_key = address.to_string();
        Some(Change::SelfRenamed(address.to_string()))
    }

    /// Every member, sorted, this node included: the shard map's input.
    pub fn members(&self) -> Vec<String> {
        let mut members: Vec<String> = self.peers.keys().cloned().collect();
        let at = members.partition_point(|m| *m < self.self_key);
        members.insert(at, self.self_key.clone());
        members
    }

    /// The other members, to send heartbeats to.
    pub fn peers(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    /// The address under which this node is a member.
    pub fn self_key(&self) -> &str {
        &self.self_key
    }

    /// One shard per member, round-robin over the sorted members.
    pub fn shard_map(&self) -> ShardMap {
        let members = self.members();
        ShardMap::assign(members.iter().map(String::as_str), members.len() as u32)
            .expect("a federation has at least this node")
    }

    /// A member's state at `now`; this node is always alive.
    pub fn state(&self, address: &str, now: Instant, config: &HealthConfig) -> NodeState {
        if address == self.self_key {
            return NodeState::Alive;
        }
        self.peers
            .get(address)
            .map_or(NodeState::Dead, |p| p.health.state(now, config))
    }

    /// The copies a search reads: every shard at its owner, marked down when the owner is
    /// dead at `now`.
    pub fn copies(&self, now: Instant, config: &HealthConfig) -> Vec<ShardCopy> {
        self.shard_map()
            .owners
            .into_iter()
            .enumerate()
            .map(|(shard, node)| {
                let down = (self.state(&node, now, config) == NodeState::Dead).then(|| {
                    format!(
                        "node {node} is dead: no heartbeat answered for over {} ms; not queried",
                        config.heartbeat_interval_ms * u64::from(config.failure_threshold.max(1))
                            + config.suspect_timeout_ms
                    )
                });
                ShardCopy {
                    shard: shard as u32,
                    node,
                    down,
                    generation: 0,
                    alternates: Vec::new(),
                }
            })
            .collect()
    }

    /// The health report at `now`.
    pub fn report(&self, now: Instant, config: &HealthConfig) -> HealthReport {
        let mut nodes = vec![NodeReport {
            address: self.self_key.clone(),
            node_id: Some(self.node_id.clone()),
            state: NodeState::Alive,
            healthy: true,
            is_self: true,
        }];
        nodes.extend(self.peers.iter().map(|(address, peer)| {
            let state = peer.health.state(now, config);
            NodeReport {
                address: address.clone(),
                node_id: peer.node_id.clone(),
                state,
                healthy: state == NodeState::Alive,
                is_self: false,
            }
        }));
        let alive = nodes.iter().filter(|n| n.state == NodeState::Alive).count();
        let status = if alive == nodes.len() {
            "green"
        } else if alive * 2 > nodes.len() {
            "yellow"
        } else {
            "red"
        };
        HealthReport {
            status,
            node_id: self.node_id.clone(),
            federated: true,
            total_nodes: nodes.len(),
            healthy_nodes: alive,
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn discovered(address: &str) -> Event {
        Event::Discovered {
            address: address.into(),
            is_self: false,
        }
    }

    #[test]
    fn members_join_leave_and_stay_sorted_with_this_node() {
        let now = Instant::now();
        let mut m = Membership::new("n2", "b:9080");
        assert_eq!(
            m.apply(discovered("c:9080"), now),
            Some(Change::Joined("c:9080".into()))
        );
        assert_eq!(
            m.apply(discovered("a:9080"), now),
            Some(Change::Joined("a:9080".into()))
        );
        assert_eq!(m.apply(discovered("a:9080"), now), None, "known already");
        assert_eq!(m.members(), ["a:9080", "b:9080", "c:9080"]);
        assert_eq!(m.peers(), ["a:9080", "c:9080"]);
        assert_eq!(m.shard_map().owners, ["a:9080", "b:9080", "c:9080"]);
        assert_eq!(
            m.apply(
                Event::Left {
                    address: "c:9080".into()
                },
                now
            ),
            Some(Change::Left("c:9080".into()))
        );
        assert_eq!(m.members(), ["a:9080", "b:9080"]);
    }

    #[test]
    fn this_node_takes_the_name_discovery_or_a_pong_gives_it() {
        let now = Instant::now();
        let mut m = Membership::new("n1", "node1.local:9080");
        m.apply(discovered("10.0.0.2:9080"), now);
        // The wiring resolved 10.0.0.1 to this node: it becomes this node's member name.
        let renamed = m.apply(
            Event::Discovered {
                address: "10.0.0.1:9080".into(),
                is_self: true,
            },
            now,
        );
        assert_eq!(renamed, Some(Change::SelfRenamed("10.0.0.1:9080".into())));
        assert_eq!(m.members(), ["10.0.0.1:9080", "10.0.0.2:9080"]);
        // A peer address whose heartbeat this node answers itself is this node, too.
        m.apply(discovered("10.0.0.9:9080"), now);
        m.apply(
            Event::Pong {
                address: "10.0.0.9:9080".into(),
                node_id: "n1".into(),
            },
            now,
        );
        assert_eq!(m.members(), ["10.0.0.2:9080", "10.0.0.9:9080"]);
        // Discovery dropping this node's record leaves it a member under its own name.
        m.apply(
            Event::Left {
                address: "10.0.0.9:9080".into(),
            },
            now,
        );
        assert_eq!(m.self_key(), "node1.local:9080");
        assert_eq!(m.members(), ["10.0.0.2:9080", "node1.local:9080"]);
    }

    #[test]
    fn a_dead_member_is_marked_down_in_the_copies_a_search_reads() {
        let config = HealthConfig::default(); // 1 s heartbeats, 3 missed, 5 s suspect
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut m = Membership::new("n1", "a:1");
        m.apply(discovered("b:1"), start);
        m.apply(discovered("c:1"), start);
        m.apply(
            Event::Pong {
                address: "c:1".into(),
                node_id: "n3".into(),
            },
            at(7_000),
        );
        let copies = m.copies(at(8_000), &config);
        assert_eq!(copies.len(), 3);
        assert_eq!(copies[0].down, None, "this node");
        assert!(
            copies[1]
                .down
                .as_deref()
                .is_some_and(|d| d.contains("b:1 is dead")),
            "{copies:?}"
        );
        assert_eq!(copies[2].down, None, "c answered at 7 s");
        // Suspect is not dead: it is still asked.
        assert_eq!(m.state("c:1", at(10_500), &config), NodeState::Suspect);
        assert_eq!(m.copies(at(10_500), &config)[2].down, None);
        let report = m.report(at(8_000), &config);
        assert_eq!(report.status, "yellow");
        assert_eq!(report.nodes[2].node_id.as_deref(), Some("n3"));
        assert!(report.federated);
        assert_eq!((report.total_nodes, report.healthy_nodes), (3, 2));
        assert_eq!(
            report.nodes.iter().map(|n| n.healthy).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(m.report(at(20_000), &config).status, "red");
        // A heartbeat brings it back.
        m.apply(
            Event::Pong {
                address: "b:1".into(),
                node_id: "n2".into(),
            },
            at(20_000),
        );
        assert_eq!(m.copies(at(20_001), &config)[1].down, None);
    }
}
