//! What one node must do so that its shard copies match the metadata: open the copies placed
//! on it, initialize a new group from its intended leader, grow and shrink a group it leads
//! to the copies the metadata lists (a new copy joins as a learner, and votes once it caught
//! up if its position makes it a voter: `metadata::voting_copies`), drop copies it no longer
//! holds, and hand an idle group it leads back to the group's
//! intended leader. Pure: the runtime (`clustered::ClusterNode`) gathers the inputs and
//! carries the steps out.

use std::collections::{BTreeMap, BTreeSet};

use crate::metadata::{voting_copies, MetadataState};
use crate::rpc::GroupId;

/// This node's copy of a group, as its Raft reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalCopy {
    /// This copy leads the group.
    pub leads: bool,
    /// The leader this copy knows of.
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// On the leader: the last index each other member holds.
    pub matched: BTreeMap<u64, Option<u64>>,
    /// How long the copy's log has not grown.
    pub idle_for: std::time::Duration,
    /// It held nothing when this process opened it.
    pub opened_empty: bool,
    /// The membership in effect is applied here (so committed).
    pub membership_applied: bool,
    /// Nodes this node's failure detector suspects.
    pub suspected: BTreeSet<u64>,
}

impl LocalCopy {
    /// Never initialized and never contacted by a leader.
    fn is_blank(&self) -> bool {
        self.opened_empty
            && self.voters.is_empty()
            && self.learners.is_empty()
            && self.last_log.is_none()
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open this node's copy (creating it), with the collection's schema (JSON).
    Open { group: GroupId, schema: String },
    /// Make `voters` the first membership of the group, from this node.
    Initialize { group: GroupId, voters: Vec<u64> },
    /// Add `node` to the group this node leads, as a learner.
    AddLearner { group: GroupId, node: u64 },
    /// Make `voters` the group's voters (others stay learners).
    SetVoters {
        group: GroupId,
        voters: BTreeSet<u64>,
    },
    /// Remove learners the metadata no longer lists.
    RemoveMembers {
        group: GroupId,
        nodes: BTreeSet<u64>,
    },
    /// Close this node's copy and delete its files.
    Drop { group: GroupId },
    /// This node leads the group and asks `to`, a voter holding the whole log, to take over:
    /// the intended leader of an idle group (spreads leaders after a failover), or any such
    /// voter when this node leads without a vote.
    HandOff { group: GroupId, to: u64 },
}

/// How long a group must have been idle before its leader hands it to its intended leader:
/// a quiet leader's followers hold no lease, so the election neither waits nor cuts writes
/// off.
pub const TAKE_BACK_IDLE: std::time::Duration = std::time::Duration::from_secs(3);

/// How far behind the leader's last index a learner may be and still be promoted: the rest
/// arrives with the next append.
pub const PROMOTE_WITHIN: u64 = 64;

/// The steps node `me` takes, given the metadata and its local copies.
pub fn plan(state: &MetadataState, me: u64, local: &BTreeMap<GroupId, LocalCopy>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut placed: BTreeSet<GroupId> = BTreeSet::new();
    for (name, collection) in &state.collections {
        for (shard, copies) in collection.shards.iter().enumerate() {
            let group = GroupId::shard(name, shard as u32, collection.generation);
            if !copies.iter().any(|c| c.node == me) {
                continue;
            }
            placed.insert(group.clone());
            let Some(copy) = local.get(&group) else {
                steps.push(Step::Open {
                    group,
                    schema: collection.schema.clone(),
                });
                continue;
            };
            let wanted_voters: BTreeSet<u64> =
                voting_copies(copies).iter().map(|c| c.node).collect();
            let wanted: BTreeSet<u64> = copies.iter().map(|c| c.node).collect();
            if copy.is_blank() {
                if collection.founders.get(shard) == Some(&me) {
                    steps.push(Step::Initialize {
                        group,
                        voters: wanted_voters.into_iter().collect(),
                    });
                }
                continue;
            }
            if copy.leads {
                let membership = membership_steps(&group, copy, &wanted, &wanted_voters);
                if !membership.is_empty() {
                    steps.extend(membership);
                } else if let Some(to) = hand_off_to(copy, me, copies.first().map(|c| c.node)) {
                    steps.push(Step::HandOff { group, to });
                }
            }
        }
    }
    for (group, copy) in local {
        if placed.contains(group) {
            continue;
        }
        // Gone only when the metadata proves it (a newer generation, or no such collection
        // though the metadata has handed out this generation): a node whose metadata lags
        // behind its copies (it lost its unsynced commit index) keeps them.
        let collection_gone = match state.collections.get(&group.collection) {
            Some(c) => c.generation > group.generation,
            None => state.generation >= group.generation,
        };
        let collection = state
            .collections
            .get(&group.collection)
            .filter(|c| c.generation == group.generation);
        if let (Some(collection), true) = (collection, copy.leads) {
            // This node leads a group the metadata moved it out of: bring the group to the
            // metadata's copies (demoting itself once its replacement votes), then leave.
            let copies = &collection.shards[group.shard as usize];
            let wanted_voters: BTreeSet<u64> =
                voting_copies(copies).iter().map(|c| c.node).collect();
            let wanted: BTreeSet<u64> = copies.iter().map(|c| c.node).collect();
            let mut membership = membership_steps(group, copy, &wanted, &wanted_voters);
            // Removing itself is the next leader's work.
            membership.retain(|s| !matches!(s, Step::RemoveMembers { .. }));
            if !membership.is_empty() {
                steps.extend(membership);
                continue;
            }
            // openraft 0.9 keeps a leader demoted to a learner leading. Every entry it
            // acknowledged was committed by a majority of the voters without it, so closing
            // the copy loses nothing acknowledged, and the voters elect a leader among
            // themselves. Until the demotion is committed, its vote may still count.
            if copy.voters.contains(&me) || !copy.membership_applied {
                continue;
            }
        }
        // A copy the metadata dropped leaves once its group no longer counts its vote (it was
        // demoted to a learner, or removed): until then the group's quorum may need it. A
        // removed copy may never hear of its removal, so demotion is the sign to go.
        // (An empty membership is one openraft has not reported yet, right after a start.)
        let no_longer_votes = !copy.voters.is_empty() && !copy.voters.contains(&me);
        if collection_gone || no_longer_votes {
            steps.push(Step::Drop {
                group: group.clone(),
            });
        }
    }
    steps
}

/// On a leader whose group has the membership it should: the voter to hand the leadership
/// to, if any. Only a voter that can win is asked: any other's election would only raise the
/// term and depose this leader.
/// - Leading without a vote (openraft 0.9 keeps a demoted leader leading; the copy is still
///   placed here, so it cannot just leave): the voter that holds the most of the log, the
///   intended leader first among equals. Its election may have to wait for the followers'
///   leases, which this leader's heartbeats renew.
/// - Voting but not the intended leader: the intended leader, once the group has been idle
///   for `TAKE_BACK_IDLE` and the intended leader holds the whole log, so that this leader,
///   whose lease on its own vote is long over, grants it.
fn hand_off_to(copy: &LocalCopy, me: u64, intended: Option<u64>) -> Option<u64> {
    if !copy.membership_applied {
        return None;
    }
    let last = copy.last_log?;
    let matched = |node: &u64| copy.matched.get(node).copied().flatten();
    if !copy.voters.contains(&me) {
        let best = copy
            .voters
            .iter()
            .filter(|v| **v != me)
            .filter_map(|v| matched(v).map(|m| (m, *v)))
            .filter(|(m, _)| Some(*m) >= copy.applied)
            .max_by_key(|(m, v)| (*m, Some(*v) == intended))?;
        return Some(best.1);
    }
    intended.filter(|to| {
        *to != me
            && copy.voters.contains(to)
            && matched(to) == Some(last)
            && copy.applied == copy.last_log
            && copy.idle_for >= TAKE_BACK_IDLE
    })
}

/// On the leader: the membership changes that bring the group to `wanted` (every copy) with
/// `wanted_voters`. One change at a time: learners first, then the voters, then removals.
fn membership_steps(
    group: &GroupId,
    copy: &LocalCopy,
    wanted: &BTreeSet<u64>,
    wanted_voters: &BTreeSet<u64>,
) -> Vec<Step> {
    // openraft takes one membership change at a time: wait until the last one is applied.
    if !copy.membership_applied {
        return Vec::new();
    }
    let members: BTreeSet<u64> = copy.voters.union(&copy.learners).copied().collect();
    let missing: Vec<u64> = wanted.difference(&members).copied().collect();
    if !missing.is_empty() {
        return missing
            .into_iter()
            .map(|node| Step::AddLearner {
                group: group.clone(),
                node,
            })
            .collect();
    }
    let leader_last = copy.last_log.unwrap_or(0);
    let caught_up = |node: &u64| {
        copy.voters.contains(node)
            || copy
                .matched
                .get(node)
                .copied()
                .flatten()
                .is_some_and(|m| m + PROMOTE_WITHIN >= leader_last)
    };
    // The voters to be: the wanted ones that caught up; a wanted voter still catching up
    // waits, and a voter the metadata dropped is demoted only once its replacement votes,
    // so the group never has fewer voters than it had.
    let ready: BTreeSet<u64> = wanted_voters.iter().copied().filter(caught_up).collect();
    let all_ready = ready.len() == wanted_voters.len();
    let voters: BTreeSet<u64> = if all_ready {
        ready
    } else {
        copy.voters.union(&ready).copied().collect()
    };
    // A new voter set must be able to commit: during the change (joint consensus) and after
    // it, a majority of it must answer, or the group stalls until its nodes return.
    // (Steps are planned on the leader only: its `leader` is this node.)
    let me = copy.leader.unwrap_or_default();
    if voters != copy.voters
        && !voters.is_empty()
        && super::writes::reaches_majority(&voters, me, &copy.suspected)
    {
        return vec![Step::SetVoters {
            group: group.clone(),
            voters,
        }];
    }
    let extra: BTreeSet<u64> = copy
        .learners
        .iter()
        .copied()
        .filter(|n| !wanted.contains(n))
        .collect();
    if !extra.is_empty() {
        return vec![Step::RemoveMembers {
            group: group.clone(),
            nodes: extra,
        }];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{CollectionMeta, CopyRole, ShardCopy};

    fn state(copies: &[(u64, CopyRole)]) -> MetadataState {
        let mut state = MetadataState::default();
        state.collections.insert(
            "c".into(),
            CollectionMeta {
                generation: 1,
                schema: "{}".into(),
                schema_version: 1,
                replication: 3,
                founders: vec![copies[0].0],
                shards: vec![copies
                    .iter()
                    .map(|(node, role)| ShardCopy {
                        node: *node,
                        role: *role,
                    })
                    .collect()],
            },
        );
        state
    }

    fn group() -> GroupId {
        GroupId::shard("c", 0, 1)
    }

    fn blank() -> LocalCopy {
        LocalCopy {
            opened_empty: true,
            ..LocalCopy::default()
        }
    }

    fn voters3() -> Vec<(u64, CopyRole)> {
        vec![
            (1, CopyRole::Voter),
            (2, CopyRole::Voter),
            (3, CopyRole::Voter),
        ]
    }

    fn leading(voters: &[u64], learners: &[u64], last: u64, matched: &[(u64, u64)]) -> LocalCopy {
        LocalCopy {
            leads: true,
            leader: Some(1),
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            last_log: Some(last),
            applied: Some(last),
            matched: matched.iter().map(|(n, m)| (*n, Some(*m))).collect(),
            idle_for: std::time::Duration::ZERO,
            opened_empty: false,
            membership_applied: true,
            suspected: BTreeSet::new(),
        }
    }

    #[test]
    fn a_placed_copy_is_opened_and_only_the_first_copy_initializes() {
        let state = state(&voters3());
        let opened = plan(&state, 2, &BTreeMap::new());
        assert!(matches!(&opened[..], [Step::Open { group: g, .. }] if *g == group()));
        let blank = BTreeMap::from([(group(), blank())]);
        assert_eq!(plan(&state, 2, &blank), vec![]);
        assert_eq!(
            plan(&state, 1, &blank),
            vec![Step::Initialize {
                group: group(),
                voters: vec![1, 2, 3]
            }]
        );
        // Not placed here: nothing to open.
        assert_eq!(plan(&state, 7, &BTreeMap::new()), vec![]);
    }

    #[test]
    fn new_copies_join_as_learners_then_vote_once_caught_up() {
        let mut copies = voters3();
        copies.extend([(4, CopyRole::Voter), (5, CopyRole::Voter)]);
        let state = state(&copies);
        let local = |copy| BTreeMap::from([(group(), copy)]);
        assert_eq!(
            plan(&state, 1, &local(leading(&[1, 2, 3], &[], 100, &[]))),
            vec![
                Step::AddLearner {
                    group: group(),
                    node: 4
                },
                Step::AddLearner {
                    group: group(),
                    node: 5
                }
            ]
        );
        // Behind: no change yet.
        let matched = |four, five| [(2, 1000), (3, 1000), (4, four), (5, five)];
        let behind = leading(&[1, 2, 3], &[4, 5], 1000, &matched(10, 990));
        assert_eq!(
            plan(&state, 1, &local(behind)),
            vec![Step::SetVoters {
                group: group(),
                voters: [1, 2, 3, 5].into()
            }]
        );
        let caught_up = leading(&[1, 2, 3], &[4, 5], 1000, &matched(990, 990));
        assert_eq!(
            plan(&state, 1, &local(caught_up)),
            vec![Step::SetVoters {
                group: group(),
                voters: [1, 2, 3, 4, 5].into()
            }]
        );
    }

    #[test]
    fn the_voters_change_only_to_a_set_whose_majority_answers() {
        // Lowered from 5 copies to 3: nodes 4 and 5 stop voting.
        let state = state(&voters3());
        let local = |copy| BTreeMap::from([(group(), copy)]);
        let matched = [(2, 100), (3, 100), (4, 100), (5, 100)];
        let five = leading(&[1, 2, 3, 4, 5], &[], 100, &matched);
        let shrink = vec![Step::SetVoters {
            group: group(),
            voters: [1, 2, 3].into(),
        }];
        assert_eq!(plan(&state, 1, &local(five.clone())), shrink);
        // With 2 and 3 down, {1, 2, 3} could not commit: the five keep voting.
        let two_down = LocalCopy {
            suspected: [2, 3].into(),
            ..five.clone()
        };
        assert_eq!(plan(&state, 1, &local(two_down)), vec![]);
        // One down leaves a majority of the three; so do the two that leave being down.
        for down in [vec![3], vec![4, 5]] {
            let down = LocalCopy {
                suspected: down.into_iter().collect(),
                ..five.clone()
            };
            assert_eq!(plan(&state, 1, &local(down)), shrink);
        }
        // Growing to {1, 2, 3, 5} (4 still behind): half of four answering is not a majority.
        let mut copies = voters3();
        copies.extend([(4, CopyRole::Voter), (5, CopyRole::Voter)]);
        let five_copies = super::tests::state(&copies);
        let matched = [(2, 100), (3, 100), (4, 10), (5, 100)];
        let growing = LocalCopy {
            suspected: [2, 3].into(),
            ..leading(&[1, 2, 3], &[4, 5], 100, &matched)
        };
        assert_eq!(plan(&five_copies, 1, &local(growing)), vec![]);
    }

    #[test]
    fn a_fourth_copy_stays_a_learner_and_a_fourth_voter_is_demoted() {
        // Recorded roles are not read: the fourth of four copies learns by position.
        let mut copies = voters3();
        copies.push((4, CopyRole::Voter));
        let state = state(&copies);
        let local = |copy| BTreeMap::from([(group(), copy)]);
        let matched = [(2, 100), (3, 100), (4, 100)];
        assert_eq!(
            plan(
                &state,
                1,
                &local(leading(&[1, 2, 3], &[], 100, &matched[..2]))
            ),
            vec![Step::AddLearner {
                group: group(),
                node: 4
            }]
        );
        // Caught up, it is not promoted.
        let learning = leading(&[1, 2, 3], &[4], 100, &matched);
        assert_eq!(plan(&state, 1, &local(learning)), vec![]);
        // A group whose four copies all vote (made before learners) demotes the fourth.
        let four_voters = leading(&[1, 2, 3, 4], &[], 100, &matched);
        assert_eq!(
            plan(&state, 1, &local(four_voters)),
            vec![Step::SetVoters {
                group: group(),
                voters: [1, 2, 3].into()
            }]
        );
    }

    #[test]
    fn a_dropped_voter_is_demoted_only_after_its_replacement_votes_then_removed() {
        // The metadata moved node 3's copy to node 4.
        let state = state(&[
            (1, CopyRole::Voter),
            (2, CopyRole::Voter),
            (4, CopyRole::Voter),
        ]);
        let local = |copy| BTreeMap::from([(group(), copy)]);
        // 4 is still catching up: 3 keeps voting.
        let catching_up = leading(&[1, 2, 3], &[4], 500, &[(4, 3)]);
        assert_eq!(plan(&state, 1, &local(catching_up)), vec![]);
        let caught_up = leading(&[1, 2, 3], &[4], 500, &[(4, 500)]);
        assert_eq!(
            plan(&state, 1, &local(caught_up)),
            vec![Step::SetVoters {
                group: group(),
                voters: [1, 2, 4].into()
            }]
        );
        let demoted = leading(&[1, 2, 4], &[3], 500, &[(4, 500), (3, 500)]);
        assert_eq!(
            plan(&state, 1, &local(demoted)),
            vec![Step::RemoveMembers {
                group: group(),
                nodes: [3].into()
            }]
        );
        // Node 3 drops its copy once the group no longer counts its vote, not before.
        let still_votes = LocalCopy {
            leader: Some(1),
            voters: [1, 2, 3].into(),
            learners: [4].into(),
            last_log: Some(500),
            ..LocalCopy::default()
        };
        assert_eq!(plan(&state, 3, &local(still_votes.clone())), vec![]);
        let demoted = LocalCopy {
            voters: [1, 2, 4].into(),
            learners: [3].into(),
            ..still_votes
        };
        assert_eq!(
            plan(&state, 3, &local(demoted)),
            vec![Step::Drop { group: group() }]
        );
    }

    #[test]
    fn a_deleted_or_recreated_collection_drops_old_copies() {
        let mut state = state(&voters3());
        state.generation = 5;
        let old = GroupId::shard("c", 0, 0);
        let gone = GroupId::shard("gone", 0, 5);
        let local = BTreeMap::from([(old.clone(), blank()), (gone.clone(), blank())]);
        let steps = plan(&state, 2, &local);
        assert!(steps.contains(&Step::Drop { group: old }));
        assert!(steps.contains(&Step::Drop { group: gone }));
        // Metadata that has not reached a copy's generation yet keeps it.
        state.generation = 4;
        let steps = plan(&state, 2, &local);
        assert!(!steps.contains(&Step::Drop {
            group: GroupId::shard("gone", 0, 5)
        }));
    }

    #[test]
    fn only_the_founder_initializes_a_group() {
        // Node 1's copy moved to node 4, which sits first now: it waits to be added.
        let mut state = state(&[
            (4, CopyRole::Voter),
            (2, CopyRole::Voter),
            (3, CopyRole::Voter),
        ]);
        state.collections.get_mut("c").unwrap().founders = vec![1];
        let blank = BTreeMap::from([(group(), blank())]);
        assert_eq!(plan(&state, 4, &blank), vec![]);
    }

    #[test]
    fn a_leader_moved_off_its_group_demotes_itself_then_leaves() {
        let state = state(&[
            (1, CopyRole::Voter),
            (2, CopyRole::Voter),
            (4, CopyRole::Voter),
        ]);
        let local = |copy| BTreeMap::from([(group(), copy)]);
        // Node 3 leads; the metadata moved its copy to node 4.
        let leading3 = |voters: &[u64], learners: &[u64], matched4| LocalCopy {
            leader: Some(3),
            idle_for: TAKE_BACK_IDLE,
            ..leading(voters, learners, 100, &[(1, 100), (2, 100), (4, matched4)])
        };
        assert_eq!(
            plan(&state, 3, &local(leading3(&[1, 2, 3], &[], 0))),
            vec![Step::AddLearner {
                group: group(),
                node: 4
            }]
        );
        // One membership change at a time: none while the last is not applied.
        let changing = LocalCopy {
            membership_applied: false,
            ..leading3(&[1, 2, 3], &[], 0)
        };
        assert_eq!(plan(&state, 3, &local(changing)), vec![]);
        // Node 4 still catching up: node 3 keeps leading and voting, and asks nobody to
        // take over, even when idle.
        assert_eq!(
            plan(&state, 3, &local(leading3(&[1, 2, 3], &[4], 10))),
            vec![]
        );
        assert_eq!(
            plan(&state, 3, &local(leading3(&[1, 2, 3], &[4], 100))),
            vec![Step::SetVoters {
                group: group(),
                voters: [1, 2, 4].into()
            }]
        );
        // Demoted, and the demotion committed: it closes its copy (openraft would keep it
        // leading); the voters elect a leader among themselves.
        assert_eq!(
            plan(&state, 3, &local(leading3(&[1, 2, 4], &[3], 100))),
            vec![Step::Drop { group: group() }]
        );
        let uncommitted = LocalCopy {
            membership_applied: false,
            ..leading3(&[1, 2, 4], &[3], 100)
        };
        assert_eq!(plan(&state, 3, &local(uncommitted)), vec![]);
    }

    #[test]
    fn a_leader_without_a_vote_on_a_copy_still_placed_hands_over_to_the_longest_log() {
        let state = state(&[
            (1, CopyRole::Voter),
            (2, CopyRole::Voter),
            (4, CopyRole::Voter),
            (3, CopyRole::Learner),
        ]);
        let local = |copy| BTreeMap::from([(group(), copy)]);
        let leading3 = |matched: &[(u64, u64)]| LocalCopy {
            leader: Some(3),
            ..leading(&[1, 2, 4], &[3], 100, matched)
        };
        let to = |matched| match &plan(&state, 3, &local(leading3(matched)))[..] {
            [Step::HandOff { to, .. }] => Some(*to),
            [] => None,
            other => panic!("unexpected steps {other:?}"),
        };
        assert_eq!(to(&[(1, 100), (2, 100), (4, 100)]), Some(1));
        assert_eq!(to(&[(1, 99), (2, 100), (4, 98)]), Some(2));
        // Nobody holds what this leader applied: nobody could win.
        assert_eq!(to(&[(1, 90), (2, 80), (4, 70)]), None);
    }

    #[test]
    fn an_idle_group_is_handed_back_to_its_intended_leader_once_it_holds_the_whole_log() {
        let state = state(&voters3());
        // Node 2 leads after a failover; node 1 is the intended leader.
        let leading2 = |matched1: u64, idle_for| LocalCopy {
            leader: Some(2),
            idle_for,
            ..leading(&[1, 2, 3], &[], 50, &[(1, matched1), (3, 50)])
        };
        let local = |copy| BTreeMap::from([(group(), copy)]);
        assert_eq!(
            plan(&state, 2, &local(leading2(50, TAKE_BACK_IDLE))),
            vec![Step::HandOff {
                group: group(),
                to: 1
            }]
        );
        // Node 1 lacks entries: its election could not succeed.
        assert_eq!(
            plan(&state, 2, &local(leading2(40, TAKE_BACK_IDLE))),
            vec![]
        );
        // A busy group keeps its leader.
        assert_eq!(
            plan(&state, 2, &local(leading2(50, std::time::Duration::ZERO))),
            vec![]
        );
        // Node 2 has not applied its whole log yet.
        let unsettled = LocalCopy {
            applied: Some(49),
            ..leading2(50, TAKE_BACK_IDLE)
        };
        assert_eq!(plan(&state, 2, &local(unsettled)), vec![]);
        // The intended leader leading, or a follower: nothing.
        let mine = LocalCopy {
            idle_for: TAKE_BACK_IDLE,
            ..leading(&[1, 2, 3], &[], 50, &[(2, 50), (3, 50)])
        };
        assert_eq!(plan(&state, 1, &local(mine)), vec![]);
        let follower = LocalCopy {
            leader: Some(2),
            voters: [1, 2, 3].into(),
            last_log: Some(50),
            applied: Some(50),
            idle_for: TAKE_BACK_IDLE,
            ..LocalCopy::default()
        };
        assert_eq!(plan(&state, 1, &local(follower)), vec![]);
    }
}
