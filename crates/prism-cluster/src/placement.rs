//! Where the copies of a new collection's shards go. Pure: the metadata state machine calls
//! it while applying an entry, so every copy of the metadata places alike.
//!
//! The rule is "spread copies, least loaded first": the copies of one shard go to distinct
//! nodes, and each copy goes to the node holding the fewest copies so far (ties by node id).
//! The first copy of each shard is its intended leader: the copy that leads the fewest shards
//! so far, so that leaders spread too.

use std::collections::BTreeMap;

/// A node that can take copies, and how many it holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub node: u64,
    pub copies: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{replication} copies of each shard need {replication} nodes that accept copies; the cluster has {nodes}. Add nodes or lower the replication factor")]
    NotEnoughNodes { replication: u32, nodes: usize },
    #[error("a collection needs at least one shard and one copy of each")]
    Empty,
}

/// For each of `shards` shards, the nodes of its `replication` copies, leader first.
pub fn place(
    candidates: &[Candidate],
    shards: u32,
    replication: u32,
) -> Result<Vec<Vec<u64>>, PlacementError> {
    if shards == 0 || replication == 0 {
        return Err(PlacementError::Empty);
    }
    let mut load: BTreeMap<u64, usize> = candidates.iter().map(|c| (c.node, c.copies)).collect();
    if load.len() < replication as usize {
        return Err(PlacementError::NotEnoughNodes {
            replication,
            nodes: load.len(),
        });
    }
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    let mut placed = Vec::with_capacity(shards as usize);
    for _ in 0..shards {
        let mut copies: Vec<u64> = Vec::with_capacity(replication as usize);
        for _ in 0..replication {
            let (&node, _) = load
                .iter()
                .filter(|(node, _)| !copies.contains(node))
                .min_by_key(|&(&node, &copies)| (copies, node))
                .expect("enough nodes were checked");
            *load.get_mut(&node).expect("a candidate") += 1;
            copies.push(node);
        }
        // The copy that leads the fewest shards so far goes first: it is the intended leader.
        let (at, &leader) = copies
            .iter()
            .enumerate()
            .min_by_key(|&(_, node)| (leaders.get(node).copied().unwrap_or(0), *node))
            .expect("at least one copy");
        *leaders.entry(leader).or_default() += 1;
        copies.swap(0, at);
        placed.push(copies);
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(loads: &[(u64, usize)]) -> Vec<Candidate> {
        loads
            .iter()
            .map(|&(node, copies)| Candidate { node, copies })
            .collect()
    }

    #[test]
    fn copies_of_a_shard_go_to_distinct_nodes_and_spread_evenly() {
        let placed = place(&nodes(&[(1, 0), (2, 0), (3, 0)]), 3, 3).unwrap();
        for copies in &placed {
            let mut distinct = copies.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{copies:?}");
        }
        // Leaders (first copies) rotate over the nodes.
        let leaders: Vec<u64> = placed.iter().map(|c| c[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3]);
    }

    #[test]
    fn the_least_loaded_node_is_chosen_first() {
        let placed = place(&nodes(&[(1, 5), (2, 0), (3, 2), (4, 0)]), 2, 2).unwrap();
        assert_eq!(placed, vec![vec![2, 4], vec![4, 2]]);
    }

    #[test]
    fn loads_end_within_one_of_each_other() {
        let placed = place(&nodes(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]), 7, 3).unwrap();
        let mut load = BTreeMap::new();
        for node in placed.iter().flatten() {
            *load.entry(*node).or_insert(0) += 1;
        }
        let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
        assert!(max - min <= 1, "{load:?}");
        assert_eq!(load.values().sum::<i32>(), 21);
    }

    #[test]
    fn too_few_nodes_or_nothing_to_place_is_refused() {
        assert_eq!(
            place(&nodes(&[(1, 0), (2, 0)]), 1, 3),
            Err(PlacementError::NotEnoughNodes {
                replication: 3,
                nodes: 2
            })
        );
        assert_eq!(place(&nodes(&[(1, 0)]), 0, 1), Err(PlacementError::Empty));
    }
}
