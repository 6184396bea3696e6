//! Shard assignment in federation mode: every node computes the same shard → node map from the
//! same membership, whatever order it learned the members in. Pure.

use std::collections::BTreeSet;

use prism_core::routing::shard_for;

/// Which node owns each shard of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    /// `owners[s]` is the node id that holds shard `s`.
    pub owners: Vec<String>,
}

impl ShardMap {
    /// Spreads `num_shards` shards round-robin over the members sorted by node id.
    pub fn assign<'a>(
        members: impl IntoIterator<Item = &'a str>,
        num_shards: u32,
    ) -> Option<ShardMap> {
        let sorted: Vec<&str> = members
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if sorted.is_empty() || num_shards == 0 {
            return None;
        }
        Some(ShardMap {
            owners: (0..num_shards as usize)
                .map(|s| sorted[s % sorted.len()].to_string())
                .collect(),
        })
    }

    pub fn num_shards(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The shard and node a document id routes to.
    pub fn route(&self, id: &str) -> (u32, &str) {
        let shard = shard_for(id, self.num_shards());
        (shard, &self.owners[shard as usize])
    }

    /// The shards a node owns.
    pub fn shards_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.owners
            .iter()
            .enumerate()
            .filter(move |(_, owner)| *owner == node)
            .map(|(s, _)| s as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_coordinators_route_every_id_to_the_same_node() {
        let seen_by_a = ShardMap::assign(["node-3", "node-1", "node-2"], 3).unwrap();
        let seen_by_b = ShardMap::assign(["node-2", "node-3", "node-1", "node-2"], 3).unwrap();
        assert_eq!(seen_by_a, seen_by_b);
        for i in 0..1000 {
            let id = format!("doc-{i}");
            assert_eq!(seen_by_a.route(&id), seen_by_b.route(&id));
        }
    }

    #[test]
    fn shards_spread_round_robin_over_sorted_members() {
        let map = ShardMap::assign(["b", "a"], 5).unwrap();
        assert_eq!(map.owners, vec!["a", "b", "a", "b", "a"]);
        assert_eq!(map.shards_of("b").collect::<Vec<_>>(), vec![1, 3]);
        assert!(ShardMap::assign([], 3).is_none());
    }
}
