//! The cluster's metadata as a deterministic state machine: collections with versioned
//! schemas, the shard map (shard → copies → node, with role), the nodes, and settings. The
//! metadata Raft group replicates [`MetaCommand`]s; every copy applies them with
//! [`MetadataState::apply`] and ends in the same state, with the same [`MetadataState::checksum`].
//! No I/O here: `raft::state_machine` persists it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::{self, Candidate};

/// A node as the metadata knows it. `id` is openraft's numeric id; `name` is spec 002's
/// `--node-id` (by default the hostname), which its certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub rack: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub state: NodeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes copies.
    Active,
    /// Keeps its copies but takes no new ones.
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyRole {
    Voter,
    Learner,
}

/// How many of a group's `copies` vote: every copy up to three, then three of four, then
/// five (etcd's advice: more voters only slow commits, and an even count adds no fault
/// tolerance). The others are learners: asynchronous replicas that serve reads and that no
/// commit waits for.
pub fn voter_count(copies: usize) -> usize {
    match copies {
        0..=3 => copies,
        4 => 3,
        _ => 5,
    }
}

/// The voting copies of a shard, by position: the first [`voter_count`] of its copies (the
/// first is the intended leader); the rest are learners. Worked out where it is read, not
/// recorded, so that entries written before learners existed replay to the same state on
/// every version.
pub fn voting_copies(copies: &[ShardCopy]) -> &[ShardCopy] {
    &copies[..voter_count(copies.len())]
}

/// The role of the copy at `position` among `copies` copies (see [`voting_copies`]).
pub fn role_at(position: usize, copies: usize) -> CopyRole {
    if position < voter_count(copies) {
        CopyRole::Voter
    } else {
        CopyRole::Learner
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCopy {
    pub node: u64,
    /// As recorded (`Voter` for every placed copy). Not read: a copy's role follows its
    /// position ([`role_at`]).
    pub role: CopyRole,
}

/// A collection: its schema (as the JSON text it was created with, versioned), and where its
/// shards live. `generation` tells this collection apart from an earlier one of the same
/// name, so that a re-created collection's groups never take its predecessor's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub generation: u64,
    pub schema: String,
    pub schema_version: u64,
    pub replication: u32,
    /// `shards[s]` lists shard `s`'s copies; the first voter is its intended leader.
    pub shards: Vec<Vec<ShardCopy>>,
    /// `founders[s]`: the node whose copy started shard `s`'s group at creation. Only it
    /// initializes the group, never a copy placed later (a moved copy, a wiped node under a
    /// new id): a second initialization would fork the group.
    pub founders: Vec<u64>,
}

/// A change to the metadata, as a metadata Raft entry carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    CreateCollection {
        name: String,
        schema: String,
        shards: u32,
        replication: u32,
    },
    UpdateSchema {
        name: String,
        schema: String,
    },
    DeleteCollection {
        name: String,
    },
    AddNode(NodeInfo),
    RemoveNode {
        id: u64,
    },
    AddCopy {
        collection: String,
        shard: u32,
        copy: ShardCopy,
    },
    RemoveCopy {
        collection: String,
        shard: u32,
        node: u64,
    },
    UpdateConfig {
        key: String,
        value: String,
    },
    /// Raises or lowers a collection's replication factor: new copies go to the least loaded
    /// nodes without one (they join their groups as learners and vote once caught up);
    /// lowering removes the last copies, never a shard's first (its intended leader).
    SetReplication {
        name: String,
        replication: u32,
    },
    /// Moves every copy off node `id` (to the least loaded nodes without one) and stops it
    /// taking new ones; the node itself stays until [`MetaCommand::RemoveNode`].
    DrainNode {
        id: u64,
    },
}

/// What applying a command did. A refused command changes nothing, on every copy alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    Created(CollectionMeta),
    Refused(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    pub collections: BTreeMap<String, CollectionMeta>,
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub config: BTreeMap<String, String>,
    /// The last generation given to a collection.
    pub generation: u64,
}

impl MetadataState {
    pub fn apply(&mut self, command: &MetaCommand) -> MetaResponse {
        // Applied to a copy and kept only if it succeeds: a command refused halfway (no node
        // left for a moved copy, say) changes nothing.
        let mut next = self.clone();
        match next.try_apply(command) {
            Ok(response) => {
                *self = next;
                response
            }
            Err(why) => MetaResponse::Refused(why),
        }
    }

    fn try_apply(&mut self, command: &MetaCommand) -> Result<MetaResponse, String> {
        match command {
            MetaCommand::CreateCollection {
                name,
                schema,
                shards,
                replication,
            } => {
                if self.collections.contains_key(name) {
                    return Err(format!("collection {name} exists"));
                }
                let placed = placement::place(&self.candidates(), *shards, *replication)
                    .map_err(|e| e.to_string())?;
                self.generation += 1;
                let founders = placed.iter().map(|nodes| nodes[0]).collect();
                let collection = CollectionMeta {
                    founders,
                    generation: self.generation,
                    schema: schema.clone(),
                    schema_version: 1,
                    replication: *replication,
                    shards: placed
                        .into_iter()
                        .map(|nodes| {
                            nodes
                                .into_iter()
                                .map(|node| ShardCopy {
                                    node,
                                    role: CopyRole::Voter,
                                })
                                .collect()
                        })
                        .collect(),
                };
                self.collections.insert(name.clone(), collection.clone());
                Ok(MetaResponse::Created(collection))
            }
            MetaCommand::UpdateSchema { name, schema } => {
                let collection = self.collection_mut(name)?;
                collection.schema = schema.clone();
                collection.schema_version += 1;
                Ok(MetaResponse::Done)
            }
            MetaCommand::DeleteCollection { name } => {
                self.collections
                    .remove(name)
                    .ok_or_else(|| format!("no collection {name}"))?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::AddNode(node) => {
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.name == node.name && n.id != node.id)
                {
                    return Err(format!(
                        "node name {} is taken by node {}",
                        node.name, other.id
                    ));
                }
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.address == node.address && n.id != node.id)
                {
                    return Err(format!(
                        "address {} is taken by node {} ({}), which is still in the cluster",
                        node.address, other.id, other.name
                    ));
                }
                self.nodes.insert(node.id, node.clone());
                Ok(MetaResponse::Done)
            }
            MetaCommand::RemoveNode { id } => {
                if let Some((name, shard)) = self.copies_on(*id).next() {
                    return Err(format!(
                        "node {id} still holds a copy of {name} shard {shard}; move its copies first"
                    ));
                }
                self.nodes
                    .remove(id)
                    .ok_or_else(|| format!("no node {id}"))?;
                Ok(MetaResponse::Done)
            }
            MetaCommand::AddCopy {
                collection,
                shard,
                copy,
            } => {
                if !self.nodes.contains_key(&copy.node) {
                    return Err(format!("no node {}", copy.node));
                }
                let copies = self.shard_mut(collection, *shard)?;
                if copies.iter().any(|c| c.node == copy.node) {
                    return Err(format!(
                        "node {} already holds {collection} shard {shard}",
                        copy.node
                    ));
                }
                copies.push(copy.clone());
                Ok(MetaResponse::Done)
            }
            MetaCommand::RemoveCopy {
                collection,
                shard,
                node,
            } => {
                let copies = self.shard_mut(collection, *shard)?;
                let before = copies.len();
                copies.retain(|c| c.node != *node);
                if copies.len() == before {
                    return Err(format!(
                        "node {node} holds no copy of {collection} shard {shard}"
                    ));
                }
                Ok(MetaResponse::Done)
            }
            MetaCommand::UpdateConfig { key, value } => {
                self.config.insert(key.clone(), value.clone());
                Ok(MetaResponse::Done)
            }
            MetaCommand::SetReplication { name, replication } => {
                if *replication == 0 {
                    return Err("a collection keeps at least one copy of each shard".into());
                }
                let active = self.candidates().len();
                if *replication as usize > active {
                    return Err(format!(
                        "{replication} copies of each shard need {replication} nodes that accept copies; the cluster has {active}. Add nodes first"
                    ));
                }
                let shards = self.collection_mut(name)?.shards.len();
                for shard in 0..shards {
                    loop {
                        let held = self.collections[name].shards[shard].len();
                        if held == *replication as usize {
                            break;
                        }
                        if held > *replication as usize {
                            self.collection_mut(name)?.shards[shard].pop();
                            continue;
                        }
                        let node = self.least_loaded_without(name, shard)?;
                        self.collection_mut(name)?.shards[shard].push(ShardCopy {
                            node,
                            role: CopyRole::Voter,
                        });
                    }
                }
                self.collection_mut(name)?.replication = *replication;
                Ok(MetaResponse::Done)
            }
            MetaCommand::DrainNode { id } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| format!("no node {id}"))?;
                node.state = NodeState::Draining;
                let held: Vec<(String, usize)> = self
                    .copies_on(*id)
                    .map(|(name, shard)| (name.to_string(), shard))
                    .collect();
                for (name, shard) in held {
                    let node = self.least_loaded_without(&name, shard).map_err(|_| {
                        format!("no other node can take node {id}'s copy of {name} shard {shard}; add a node first")
                    })?;
                    let copies = self.shard_mut(&name, shard as u32)?;
                    let at = copies
                        .iter()
                        .position(|c| c.node == *id)
                        .expect("copies_on listed it");
                    // The replacement takes the drained copy's place (so its role), so that a
                    // drained intended leader is replaced as the intended leader.
                    copies[at] = ShardCopy {
                        node,
                        role: CopyRole::Voter,
                    };
                }
                Ok(MetaResponse::Done)
            }
        }
    }

    /// The active node with the fewest copies (ties by id) that holds no copy of `name`'s
    /// shard `shard`.
    fn least_loaded_without(&self, name: &str, shard: usize) -> Result<u64, String> {
        let holders: Vec<u64> = self.collections[name].shards[shard]
            .iter()
            .map(|c| c.node)
            .collect();
        self.candidates()
            .into_iter()
            .filter(|c| !holders.contains(&c.node))
            .min_by_key(|c| (c.copies, c.node))
            .map(|c| c.node)
            .ok_or_else(|| format!("every active node already holds {name} shard {shard}"))
    }

    fn collection_mut(&mut self, name: &str) -> Result<&mut CollectionMeta, String> {
        self.collections
            .get_mut(name)
            .ok_or_else(|| format!("no collection {name}"))
    }

    fn shard_mut(&mut self, name: &str, shard: u32) -> Result<&mut Vec<ShardCopy>, String> {
        self.collection_mut(name)?
            .shards
            .get_mut(shard as usize)
            .ok_or_else(|| format!("collection {name} has no shard {shard}"))
    }

    /// (collection, shard) of every copy on `node`.
    fn copies_on(&self, node: u64) -> impl Iterator<Item = (&str, usize)> {
        self.collections.iter().flat_map(move |(name, c)| {
            c.shards
                .iter()
                .enumerate()
                .filter(move |(_, copies)| copies.iter().any(|copy| copy.node == node))
                .map(move |(shard, _)| (name.as_str(), shard))
        })
    }

    /// Active nodes with how many copies each holds.
    fn candidates(&self) -> Vec<Candidate> {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| Candidate {
                node: n.id,
                copies: self.copies_on(n.id).count(),
            })
            .collect()
    }

    /// A digest of the whole state: equal on every copy that applied the same entries.
    pub fn checksum(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&postcard::to_stdvec(self).expect("metadata serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> MetaCommand {
        MetaCommand::AddNode(NodeInfo {
            id,
            name: format!("n{id}"),
            address: format!("127.0.0.1:{}", 7000 + id),
            zone: None,
            rack: None,
            region: None,
            state: NodeState::Active,
        })
    }

    fn create(name: &str) -> MetaCommand {
        MetaCommand::CreateCollection {
            name: name.into(),
            schema: "{}".into(),
            shards: 3,
            replication: 3,
        }
    }

    #[test]
    fn the_same_commands_give_the_same_state_and_checksum() {
        let commands = [node(1), node(2), node(3), create("a"), create("b")];
        let (mut one, mut two) = (MetadataState::default(), MetadataState::default());
        for c in &commands {
            one.apply(c);
            two.apply(c);
        }
        assert_eq!(one, two);
        assert_eq!(one.checksum(), two.checksum());
        assert_eq!(one.collections["a"].shards.len(), 3);
    }

    #[test]
    fn a_recreated_collection_gets_a_new_generation() {
        let mut state = MetadataState::default();
        for c in [node(1), create("a")] {
            state.apply(&c);
        }
        // Replication 3 on one node is refused and changes nothing.
        assert!(matches!(
            state.apply(&create("a")),
            MetaResponse::Refused(_)
        ));
        assert!(state.collections.is_empty());
        state.apply(&MetaCommand::CreateCollection {
            name: "a".into(),
            schema: "{}".into(),
            shards: 1,
            replication: 1,
        });
        let first = state.collections["a"].generation;
        state.apply(&MetaCommand::DeleteCollection { name: "a".into() });
        state.apply(&MetaCommand::CreateCollection {
            name: "a".into(),
            schema: "{}".into(),
            shards: 1,
            replication: 1,
        });
        assert!(state.collections["a"].generation > first);
    }

    #[test]
    fn replication_grows_on_the_least_loaded_nodes_and_shrinks_from_the_end() {
        let mut state = MetadataState::default();
        for c in [node(1), node(2), node(3), node(4)] {
            state.apply(&c);
        }
        state.apply(&MetaCommand::CreateCollection {
            name: "a".into(),
            schema: "{}".into(),
            shards: 2,
            replication: 1,
        });
        let before = state.collections["a"].shards.clone();
        let raise = MetaCommand::SetReplication {
            name: "a".into(),
            replication: 3,
        };
        assert_eq!(state.apply(&raise), MetaResponse::Done);
        let grown = &state.collections["a"].shards;
        for (shard, copies) in grown.iter().enumerate() {
            assert_eq!(copies.len(), 3);
            assert_eq!(
                copies[0], before[shard][0],
                "the intended leader stays first"
            );
            let distinct: std::collections::BTreeSet<u64> = copies.iter().map(|c| c.node).collect();
            assert_eq!(distinct.len(), 3);
        }
        // 6 copies over 4 nodes: no node holds more than 2.
        for id in 1..=4 {
            assert!(state.copies_on(id).count() <= 2);
        }
        let lower = MetaCommand::SetReplication {
            name: "a".into(),
            replication: 1,
        };
        assert_eq!(state.apply(&lower), MetaResponse::Done);
        assert_eq!(state.collections["a"].shards, before);
        let too_many = MetaCommand::SetReplication {
            name: "a".into(),
            replication: 5,
        };
        assert!(matches!(state.apply(&too_many), MetaResponse::Refused(_)));
    }

    fn roles(copies: &[ShardCopy]) -> Vec<CopyRole> {
        (0..copies.len())
            .map(|i| role_at(i, copies.len()))
            .collect()
    }

    #[test]
    fn copies_past_the_voters_are_learners_whatever_the_replication() {
        use CopyRole::{Learner as L, Voter as V};
        let mut state = MetadataState::default();
        for id in 1..=7 {
            state.apply(&node(id));
        }
        let create = MetaCommand::CreateCollection {
            name: "wide".into(),
            schema: "{}".into(),
            shards: 2,
            replication: 4,
        };
        assert!(matches!(state.apply(&create), MetaResponse::Created(_)));
        for copies in &state.collections["wide"].shards {
            assert_eq!(roles(copies), [V, V, V, L]);
        }
        // Raised to 5, the fourth copy votes too; to 7, the sixth and seventh learn.
        for (replication, expected) in [
            (5, vec![V, V, V, V, V]),
            (7, vec![V, V, V, V, V, L, L]),
            (3, vec![V, V, V]),
            (4, vec![V, V, V, L]),
        ] {
            let set = MetaCommand::SetReplication {
                name: "wide".into(),
                replication,
            };
            assert_eq!(state.apply(&set), MetaResponse::Done);
            for copies in &state.collections["wide"].shards {
                assert_eq!(roles(copies), expected, "replication {replication}");
            }
        }
        // A drained learner is replaced by a learner, a drained voter by a voter.
        let learner = state.collections["wide"].shards[0][3].node;
        assert_eq!(
            state.apply(&MetaCommand::DrainNode { id: learner }),
            MetaResponse::Done
        );
        assert_eq!(roles(&state.collections["wide"].shards[0]), [V, V, V, L]);
    }

    #[test]
    fn a_drained_node_hands_every_copy_to_another_node() {
        let mut state = MetadataState::default();
        for c in [node(1), node(2), node(3), node(4), create("a")] {
            state.apply(&c);
        }
        let drained = state.collections["a"].shards[0][0].node;
        assert_eq!(
            state.apply(&MetaCommand::DrainNode { id: drained }),
            MetaResponse::Done
        );
        assert_eq!(state.copies_on(drained).count(), 0);
        for copies in &state.collections["a"].shards {
            assert_eq!(copies.len(), 3);
        }
        assert_eq!(state.nodes[&drained].state, NodeState::Draining);
        // Now it can leave.
        assert_eq!(
            state.apply(&MetaCommand::RemoveNode { id: drained }),
            MetaResponse::Done
        );
        // With three nodes left and three copies each, a drain has nowhere to go.
        let other = *state.nodes.keys().next().unwrap();
        assert!(matches!(
            state.apply(&MetaCommand::DrainNode { id: other }),
            MetaResponse::Refused(_)
        ));
    }

    #[test]
    fn refusals_change_nothing() {
        let mut state = MetadataState::default();
        for c in [node(1), node(2), node(3), create("a")] {
            state.apply(&c);
        }
        let before = state.clone();
        for refused in [
            create("a"),
            MetaCommand::RemoveNode { id: 1 },
            MetaCommand::RemoveNode { id: 9 },
            MetaCommand::DeleteCollection { name: "zz".into() },
            MetaCommand::AddCopy {
                collection: "a".into(),
                shard: 0,
                copy: ShardCopy {
                    node: 1,
                    role: CopyRole::Learner,
                },
            },
            MetaCommand::RemoveCopy {
                collection: "a".into(),
                shard: 7,
                node: 1,
            },
            MetaCommand::AddNode(NodeInfo {
                id: 4,
                name: "n1".into(),
                address: String::new(),
                zone: None,
                rack: None,
                region: None,
                state: NodeState::Active,
            }),
        ] {
            assert!(
                matches!(state.apply(&refused), MetaResponse::Refused(_)),
                "{refused:?}"
            );
            assert_eq!(state, before, "{refused:?}");
        }
    }
}
