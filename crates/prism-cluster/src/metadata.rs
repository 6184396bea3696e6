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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCopy {
    pub node: u64,
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
        match self.try_apply(command) {
            Ok(response) => response,
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
                let collection = CollectionMeta {
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
        }
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
