//! Which shards answered a federated search, and the verdict that decides between a
//! complete answer, a partial one and an error. Pure.

use serde::{Deserialize, Serialize};

use crate::config::QueryConfig;

/// One shard's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardFailure {
    pub shard: u32,
    pub node: String,
    pub reason: String,
}

/// How many shards answered, as the federated response reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardStatus {
    pub total: u32,
    pub successful: u32,
    pub failed: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ShardFailure>,
}

/// What to answer given the shard status and the `[federation.query]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    Partial,
    /// Too few shards answered; the message says why and what to do.
    Fail(String),
}

impl ShardStatus {
    pub fn verdict(&self, config: &QueryConfig) -> Verdict {
        if self.failed == 0 {
            return Verdict::Complete;
        }
        if !config.allow_partial_results {
            return Verdict::Fail(format!(
                "{} of {} shards failed and allow_partial_results is false; retry, or allow partial results",
                self.failed, self.total
            ));
        }
        if self.successful < config.min_successful_shards.max(1) {
            return Verdict::Fail(format!(
                "only {} of {} shards answered; at least {} must (min_successful_shards)",
                self.successful,
                self.total,
                config.min_successful_shards.max(1)
            ));
        }
        Verdict::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_partial_result_settings() {
        let status = |ok: u32, failed: u32| ShardStatus {
            total: ok + failed,
            successful: ok,
            failed,
            failures: Vec::new(),
        };
        let allow = QueryConfig::default();
        assert_eq!(status(3, 0).verdict(&allow), Verdict::Complete);
        assert_eq!(status(2, 1).verdict(&allow), Verdict::Partial);
        assert!(matches!(status(0, 3).verdict(&allow), Verdict::Fail(_)));
        let strict = QueryConfig {
            allow_partial_results: false,
            ..QueryConfig::default()
        };
        assert!(
            matches!(status(2, 1).verdict(&strict), Verdict::Fail(m) if m.contains("allow_partial_results"))
        );
        let two = QueryConfig {
            min_successful_shards: 2,
            ..QueryConfig::default()
        };
        assert!(
            matches!(status(1, 2).verdict(&two), Verdict::Fail(m) if m.contains("min_successful_shards"))
        );
    }
}
