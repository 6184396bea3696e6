//! Read consistency (spec 001), pure: what a read asks of the copy of each shard that serves
//! it, and whether a node cut off from the cluster's majority may serve it at all.
//!
//! | level | the serving copy |
//! |---|---|
//! | `eventual` | any copy, this node's own first |
//! | `read_your_writes` | has applied the log id its shard's entry in the write's token names |
//! | `bounded` | holds everything its leader had applied at most `bounded_staleness_ms` ago |
//! | `strong` | has applied the read index its leader confirmed with a majority (linearizable) |

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::writes::ConsistencyToken;

/// A read's consistency level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    #[default]
    Eventual,
    #[serde(alias = "read-your-writes")]
    ReadYourWrites,
    Bounded,
    Strong,
}

impl ReadLevel {
    pub const NAMES: &'static str = "eventual, read_your_writes, bounded or strong";

    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Eventual => "eventual",
            ReadLevel::ReadYourWrites => "read_your_writes",
            ReadLevel::Bounded => "bounded",
            ReadLevel::Strong => "strong",
        }
    }

    /// Whether the read may miss writes it was not told of: every level but `strong`, which
    /// alone needs a leader confirmed by a majority.
    pub fn may_be_stale(self) -> bool {
        self != ReadLevel::Strong
    }
}

impl std::str::FromStr for ReadLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "eventual" => Ok(ReadLevel::Eventual),
            "read_your_writes" => Ok(ReadLevel::ReadYourWrites),
            "bounded" => Ok(ReadLevel::Bounded),
            "strong" => Ok(ReadLevel::Strong),
            _ => Err(format!(
                "{text:?} is not a consistency level; use {}",
                ReadLevel::NAMES
            )),
        }
    }
}

/// What one read asked for, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConsistency {
    pub level: ReadLevel,
    /// `read_your_writes`: the write's token.
    pub token: Option<ConsistencyToken>,
    /// `bounded`: how far behind its leader the serving copy may be.
    pub staleness: Duration,
}

impl ReadConsistency {
    /// The default level, eventual.
    pub fn eventual() -> ReadConsistency {
        ReadConsistency {
            level: ReadLevel::Eventual,
            token: None,
            staleness: Duration::ZERO,
        }
    }

    /// The read's level from the request (`level`, else `default`), with its token; a
    /// `read_your_writes` read without a token is refused, and a token with no use at
    /// another level too, since the caller expects it to matter.
    pub fn parse(
        level: Option<&str>,
        token: Option<&str>,
        default: ReadLevel,
        staleness: Duration,
    ) -> Result<ReadConsistency, String> {
        let level = match level {
            Some(text) => text.parse()?,
            None if token.is_some() => ReadLevel::ReadYourWrites,
            // A configured default of read_your_writes applies to reads that carry a token;
            // the others read eventual.
            None if default == ReadLevel::ReadYourWrites => ReadLevel::Eventual,
            None => default,
        };
        let token =
            match (level, token) {
                (ReadLevel::ReadYourWrites, Some(text)) => Some(text.parse()?),
                (ReadLevel::ReadYourWrites, None) => return Err(
                    "read_your_writes needs the consistency_token a write answered (body field \
                     consistency_token or header X-Prism-Consistency-Token)"
                        .into(),
                ),
                (_, Some(_)) => {
                    return Err(format!(
                        "a consistency_token is only used by read_your_writes, not {}",
                        level.as_str()
                    ))
                }
                (_, None) => None,
            };
        Ok(ReadConsistency {
            level,
            token,
            staleness,
        })
    }

    /// The log index the copy of `shard` (collection generation `generation`) must have
    /// applied, known before asking any leader: the token's, at `read_your_writes`. A token
    /// of an earlier generation names writes to a collection since deleted: nothing to wait
    /// for.
    pub fn token_floor(&self, shard: u32, generation: u64) -> u64 {
        match &self.token {
            Some(token) if token.generation == generation => {
                token.shards.get(&shard).map_or(0, |(_, index)| *index)
            }
            _ => 0,
        }
    }

    /// The staleness bound a serving copy checks (`bounded` only).
    pub fn max_staleness(&self) -> Option<Duration> {
        (self.level == ReadLevel::Bounded).then_some(self.staleness)
    }
}

/// Whether a node that reaches `reachable` of the metadata group's `voters` (itself
/// included) may serve a read at `level`: in a minority partition only a read that may be
/// stale, and only when `allow_stale_reads`. The error says why and what to do.
pub fn read_allowed_in_partition(
    level: ReadLevel,
    reachable: usize,
    voters: usize,
    allow_stale_reads: bool,
) -> Result<(), String> {
    if voters == 0 || reachable * 2 > voters {
        return Ok(());
    }
    if !level.may_be_stale() {
        return Err(format!(
            "this node reaches {reachable} of the cluster's {voters} voters, a minority: a \
             {} read needs a majority; read through a node in the majority",
            level.as_str()
        ));
    }
    if !allow_stale_reads {
        return Err(format!(
            "this node reaches {reachable} of the cluster's {voters} voters, a minority, and \
             [cluster.consistency] allow_stale_reads = false: reads here could be stale; read \
             through a node in the majority"
        ));
    }
    Ok(())
}

/// Whether a copy last known to hold everything its leader had applied `age` ago serves a
/// `bounded` read of bound `max`.
pub fn fresh_enough(age: Option<Duration>, max: Duration) -> bool {
    age.is_some_and(|age| age <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(level: Option<&str>, token: Option<&str>) -> Result<ReadConsistency, String> {
        ReadConsistency::parse(level, token, ReadLevel::Eventual, Duration::from_secs(5))
    }

    #[test]
    fn levels_parse_in_either_spelling_and_a_bad_one_names_the_choices() {
        assert_eq!(parse(None, None).unwrap().level, ReadLevel::Eventual);
        assert_eq!(
            parse(Some("strong"), None).unwrap().level,
            ReadLevel::Strong
        );
        assert_eq!(
            parse(Some("Bounded"), None).unwrap().max_staleness(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse(Some("read-your-writes"), Some("g1:0=1.5"))
                .unwrap()
                .level,
            ReadLevel::ReadYourWrites
        );
        let bad = parse(Some("linearizable"), None).unwrap_err();
        assert!(bad.contains("read_your_writes, bounded or strong"), "{bad}");
        assert_eq!(parse(Some("strong"), None).unwrap().max_staleness(), None);
    }

    #[test]
    fn the_default_level_applies_when_the_request_names_none() {
        let read = ReadConsistency::parse(None, None, ReadLevel::Strong, Duration::ZERO).unwrap();
        assert_eq!(read.level, ReadLevel::Strong);
        // A default of read_your_writes needs a token to mean anything: without, eventual.
        let ryw = ReadLevel::ReadYourWrites;
        let read = ReadConsistency::parse(None, None, ryw, Duration::ZERO).unwrap();
        assert_eq!(read.level, ReadLevel::Eventual);
        let read = ReadConsistency::parse(None, Some("g1:0=1.4"), ryw, Duration::ZERO).unwrap();
        assert_eq!(read.token_floor(0, 1), 4);
    }

    #[test]
    fn a_token_implies_read_your_writes_and_is_required_by_it() {
        let read = parse(None, Some("g3:0=2.10,4=2.7")).unwrap();
        assert_eq!(read.level, ReadLevel::ReadYourWrites);
        assert_eq!(read.token_floor(0, 3), 10);
        assert_eq!(read.token_floor(4, 3), 7);
        assert_eq!(read.token_floor(1, 3), 0, "a shard the write did not touch");
        assert_eq!(
            read.token_floor(0, 2),
            0,
            "a token of an earlier collection"
        );
        assert!(parse(Some("read_your_writes"), None)
            .unwrap_err()
            .contains("consistency_token"));
        assert!(parse(Some("strong"), Some("g1:0=1.1"))
            .unwrap_err()
            .contains("only used by read_your_writes"));
        assert!(parse(None, Some("nonsense")).is_err());
    }

    #[test]
    fn a_minority_serves_only_stale_reads_and_only_when_allowed() {
        // A majority, or no metadata voters known yet: anything goes.
        for level in [ReadLevel::Eventual, ReadLevel::Strong] {
            assert!(read_allowed_in_partition(level, 3, 5, false).is_ok());
            assert!(read_allowed_in_partition(level, 1, 0, false).is_ok());
        }
        // Two of five is a minority; so is one of two.
        assert!(read_allowed_in_partition(ReadLevel::Eventual, 2, 5, true).is_ok());
        assert!(read_allowed_in_partition(ReadLevel::Bounded, 1, 2, true).is_ok());
        let refused = read_allowed_in_partition(ReadLevel::Eventual, 2, 5, false).unwrap_err();
        assert!(refused.contains("allow_stale_reads = false"), "{refused}");
        assert!(read_allowed_in_partition(ReadLevel::ReadYourWrites, 2, 5, true).is_ok());
        let refused = read_allowed_in_partition(ReadLevel::Strong, 2, 5, true).unwrap_err();
        assert!(refused.contains("needs a majority"), "{refused}");
    }

    #[test]
    fn a_copy_is_fresh_enough_only_when_known_fresh_within_the_bound() {
        let bound = Duration::from_millis(500);
        assert!(fresh_enough(Some(Duration::from_millis(500)), bound));
        assert!(!fresh_enough(Some(Duration::from_millis(501)), bound));
        assert!(!fresh_enough(None, bound));
    }
}
