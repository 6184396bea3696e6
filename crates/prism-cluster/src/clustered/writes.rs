//! A cluster write's decisions, pure: which shard each operation goes to, and what the client
//! is told once every shard's proposal has an outcome. Every answer is true: acknowledged
//! only when the shard's majority committed, refused only when nothing was appended, and
//! unknown otherwise.

use std::collections::BTreeMap;

use prism_core::routing::shard_for;
use prism_core::shard::Op;
use serde::Serialize;

/// What became of one shard's proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOutcome {
    /// Committed by a majority at this log id.
    Committed { term: u64, index: u64 },
    /// Never appended; it will never apply (`no_quorum`: no leader, or a leader without a
    /// majority).
    Refused(String),
    /// It may or may not commit.
    Unknown(String),
}

/// Whether the voters this node can reach (itself, and those the liveness driver does not
/// suspect) make a majority of `voters`. A leader without one refuses a write before
/// appending it: appended, it could not commit now, yet could commit once the others return,
/// so its answer could only be "unknown".
pub fn reaches_majority(
    voters: &std::collections::BTreeSet<u64>,
    me: u64,
    suspected: &std::collections::BTreeSet<u64>,
) -> bool {
    let reachable = voters
        .iter()
        .filter(|v| **v == me || !suspected.contains(v))
        .count();
    reachable * 2 > voters.len()
}

/// The operations of a write, by shard, keeping their order within a shard.
pub fn split_by_shard(ops: Vec<Op>, shards: u32) -> BTreeMap<u32, Vec<Op>> {
    let mut by_shard: BTreeMap<u32, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_shard
            .entry(shard_for(op.id(), shards))
            .or_default()
            .push(op);
    }
    by_shard
}

/// The log id every shard of a write committed at: a later read can wait for them
/// (`read_your_writes`). Written `g<generation>:<shard>=<term>.<index>,...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ConsistencyToken {
    pub generation: u64,
    pub shards: BTreeMap<u32, (u64, u64)>,
}

impl From<ConsistencyToken> for String {
    fn from(token: ConsistencyToken) -> String {
        token.to_string()
    }
}

impl std::fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "g{}:", self.generation)?;
        let mut first = true;
        for (shard, (term, index)) in &self.shards {
            if !first {
                write!(f, ",")?;
            }
            first = false;
            write!(f, "{shard}={term}.{index}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ConsistencyToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a consistency token (g<generation>:<shard>=<term>.<index>,...)"
            )
        };
        let (generation, shards) = text.split_once(':').ok_or_else(bad)?;
        let generation = generation
            .strip_prefix('g')
            .and_then(|g| g.parse().ok())
            .ok_or_else(bad)?;
        let mut parsed = BTreeMap::new();
        for part in shards.split(',').filter(|p| !p.is_empty()) {
            let (shard, id) = part.split_once('=').ok_or_else(bad)?;
            let (term, index) = id.split_once('.').ok_or_else(bad)?;
            parsed.insert(
                shard.parse().map_err(|_| bad())?,
                (
                    term.parse().map_err(|_| bad())?,
                    index.parse().map_err(|_| bad())?,
                ),
            );
        }
        Ok(ConsistencyToken {
            generation,
            shards: parsed,
        })
    }
}

/// What the client is told about a whole write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteVerdict {
    /// Every shard committed.
    Acknowledged(ConsistencyToken),
    /// Some shards committed and the others refused: the refused shards' documents are
    /// reported failed, one by one (`no_quorum`).
    PartlyRefused {
        token: ConsistencyToken,
        refused: Vec<(u32, String)>,
    },
    /// No shard committed and every one refused: nothing was applied.
    NoQuorum(String),
    /// Some shard's outcome is unknown: the write may be partly applied. Retrying is safe.
    Unknown(String),
}

/// The verdict over every shard's outcome.
pub fn verdict(generation: u64, outcomes: &BTreeMap<u32, ShardOutcome>) -> WriteVerdict {
    let unknown: Vec<String> = outcomes
        .iter()
        .filter_map(|(shard, o)| match o {
            ShardOutcome::Unknown(why) => Some(format!("shard {shard}: {why}")),
            _ => None,
        })
        .collect();
    if !unknown.is_empty() {
        return WriteVerdict::Unknown(format!(
            "the outcome of the write is unknown ({}); it may have been applied. Upserts and deletes by id are idempotent: retrying is safe",
            unknown.join("; ")
        ));
    }
    let mut token = ConsistencyToken {
        generation,
        shards: BTreeMap::new(),
    };
    let mut refused = Vec::new();
    for (shard, outcome) in outcomes {
        match outcome {
            ShardOutcome::Committed { term, index } => {
                token.shards.insert(*shard, (*term, *index));
            }
            ShardOutcome::Refused(why) => refused.push((*shard, why.clone())),
            // Answered above: any unknown shard makes the whole write unknown.
            ShardOutcome::Unknown(_) => {}
        }
    }
    match (token.shards.is_empty(), refused.is_empty()) {
        (_, true) => WriteVerdict::Acknowledged(token),
        (true, false) => WriteVerdict::NoQuorum(
            refused
                .iter()
                .map(|(shard, why)| format!("shard {shard}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (false, false) => WriteVerdict::PartlyRefused { token, refused },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(index: u64) -> ShardOutcome {
        ShardOutcome::Committed { term: 2, index }
    }

    #[test]
    fn operations_keep_their_order_within_a_shard() {
        let ops: Vec<Op> = (0..200).map(|i| Op::Delete(format!("d{i}"))).collect();
        let split = split_by_shard(ops, 3);
        assert_eq!(split.values().map(Vec::len).sum::<usize>(), 200);
        for (shard, ops) in &split {
            let ids: Vec<u32> = ops.iter().map(|o| o.id()[1..].parse().unwrap()).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            assert!(ops.iter().all(|o| shard_for(o.id(), 3) == *shard));
        }
    }

    #[test]
    fn only_a_write_every_shard_committed_is_acknowledged() {
        let all = BTreeMap::from([(0, committed(5)), (2, committed(9))]);
        let WriteVerdict::Acknowledged(token) = verdict(4, &all) else {
            panic!("acknowledged")
        };
        assert_eq!(token.to_string(), "g4:0=2.5,2=2.9");
        assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }

    #[test]
    fn one_unknown_shard_makes_the_whole_write_unknown() {
        let mixed = BTreeMap::from([
            (0, committed(5)),
            (1, ShardOutcome::Refused("no leader".into())),
            (2, ShardOutcome::Unknown("timed out".into())),
        ]);
        assert!(matches!(verdict(1, &mixed), WriteVerdict::Unknown(m) if m.contains("shard 2")));
    }

    #[test]
    fn refusals_are_refusals_only_when_nothing_is_unknown() {
        let refused = BTreeMap::from([
            (0, ShardOutcome::Refused("no leader".into())),
            (1, ShardOutcome::Refused("no majority".into())),
        ]);
        assert!(matches!(verdict(1, &refused), WriteVerdict::NoQuorum(_)));
        let partly = BTreeMap::from([
            (0, committed(3)),
            (1, ShardOutcome::Refused("no majority".into())),
        ]);
        assert!(matches!(
            verdict(1, &partly),
            WriteVerdict::PartlyRefused { refused, .. } if refused.len() == 1
        ));
    }

    #[test]
    fn a_majority_counts_this_node_and_the_unsuspected_voters() {
        let voters: std::collections::BTreeSet<u64> = [1, 2, 3].into();
        let none = Default::default();
        assert!(reaches_majority(&voters, 1, &none));
        assert!(reaches_majority(&voters, 1, &[3].into()));
        assert!(!reaches_majority(&voters, 1, &[2, 3].into()));
        // One voter alone is its own majority; an even split is not one.
        assert!(reaches_majority(&[1].into(), 1, &none));
        assert!(!reaches_majority(&[1, 2].into(), 1, &[2].into()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "g1", "x1:0=1.1", "g1:0=1", "g1:a=1.1"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }
}
