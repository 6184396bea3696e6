//! What one search may spend: a deadline, a cancellation flag, and the memory its
//! aggregations may hold. The search checks it as it goes (between segments, every few
//! thousand documents inside a scorer loop, inside vector filters) and stops when it is spent.
//!
//! A search whose deadline passes answers with what it found and `timed_out: true`, as
//! Elasticsearch does. A cancelled search (its client left, or the node is stopping) answers
//! [`Error::Cancelled`], which nobody reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The node-wide settings every search budget is made from (`[search]` in `prism.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// The deadline of a search that names none.
    pub default_timeout: Duration,
    /// The longest deadline a request may ask for.
    pub max_timeout: Duration,
    /// What one search's aggregations may hold (tantivy's aggregation memory guard).
    pub aggregation_memory_bytes: u64,
    /// Most buckets one aggregation may return.
    pub max_buckets: u32,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
            aggregation_memory_bytes: 128 << 20,
            max_buckets: 65_000,
        }
    }
}

impl SearchLimits {
    /// The timeout of a request that asked for `requested` (or for none).
    pub fn timeout(&self, requested: Option<Duration>) -> Result<Duration> {
        match requested {
            None => Ok(self.default_timeout),
            Some(t) if t.is_zero() => Err(Error::InvalidQuery(
                "timeout must be positive, such as \"500ms\" or 2000".into(),
            )),
            Some(t) if t > self.max_timeout => Err(Error::InvalidQuery(format!(
                "timeout {} ms is over this node's maximum of {} ms (search.max_timeout_ms)",
                t.as_millis(),
                self.max_timeout.as_millis()
            ))),
            Some(t) => Ok(t),
        }
    }
}

/// The budget of one search.
#[derive(Debug)]
pub struct SearchBudget {
    deadline: Option<Instant>,
    cancelled: AtomicBool,
    timed_out: AtomicBool,
    /// Set when the node stops: every search in flight ends.
    stopping: Option<Arc<AtomicBool>>,
    aggregation_memory_bytes: u64,
    max_buckets: u32,
}

impl SearchBudget {
    /// A budget that ends `timeout` from now.
    pub fn new(limits: &SearchLimits, timeout: Duration) -> Self {
        SearchBudget {
            deadline: Instant::now().checked_add(timeout),
            cancelled: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            stopping: None,
            aggregation_memory_bytes: limits.aggregation_memory_bytes,
            max_buckets: limits.max_buckets,
        }
    }

    /// No deadline, and the default memory limits: for tools and tests that run one search
    /// at a time.
    pub fn unlimited() -> Self {
        let limits = SearchLimits::default();
        SearchBudget {
            deadline: None,
            ..SearchBudget::new(&limits, limits.default_timeout)
        }
    }

    /// This budget cut to at most `slice` from now, with its own cancellation and timeout
    /// flags: a first attempt that may be dropped and run again under the whole budget.
    pub fn sliced(&self, slice: Duration) -> SearchBudget {
        let end = Instant::now().checked_add(slice);
        SearchBudget {
            deadline: match (self.deadline, end) {
                (Some(deadline), Some(end)) => Some(deadline.min(end)),
                (deadline, end) => deadline.or(end),
            },
            cancelled: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            stopping: self.stopping.clone(),
            aggregation_memory_bytes: self.aggregation_memory_bytes,
            max_buckets: self.max_buckets,
        }
    }

    /// Ends this search too when `stopping` is set.
    pub fn stopped_by(mut self, stopping: Arc<AtomicBool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Stops the search at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// True once the search must stop: cancelled, the node stopping, or past its deadline
    /// (which also marks it timed out).
    pub fn exhausted(&self) -> bool {
        if self.is_cancelled() {
            return true;
        }
        if self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Cancelled by its client or by the node stopping (not merely out of time).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
            || self
                .stopping
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// True when the deadline passed while the search ran: its answer is partial.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Err when cancelled: the caller stops and answers nothing.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The memory guard for this search's aggregations.
    pub fn aggregation_limits(&self) -> tantivy::aggregation::AggregationLimitsGuard {
        tantivy::aggregation::AggregationLimitsGuard::new(
            Some(self.aggregation_memory_bytes),
            Some(self.max_buckets),
        )
    }
}

/// Parses a request's `timeout`: milliseconds as a number, or a duration string such as
/// `"500ms"`, `"2s"` or `"1m"` (Elasticsearch's form).
pub fn parse_timeout(value: &serde_json::Value) -> Result<Duration> {
    let invalid = || {
        Error::InvalidQuery(format!(
            "timeout {value} is not a duration: send milliseconds (2000) or a string such as \"500ms\", \"2s\" or \"1m\""
        ))
    };
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(Duration::from_millis).ok_or_else(invalid),
        serde_json::Value::String(s) => {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = s.split_at(digits);
            let number: u64 = number.parse().map_err(|_| invalid())?;
            let millis = match unit {
                "ms" => Some(number),
                "s" => number.checked_mul(1_000),
                "m" => number.checked_mul(60_000),
                _ => None,
            };
            millis.map(Duration::from_millis).ok_or_else(invalid)
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deadline_in_the_past_is_exhausted_and_timed_out() {
        let budget = SearchBudget::new(&SearchLimits::default(), Duration::ZERO);
        assert!(budget.exhausted());
        assert!(budget.timed_out());
        assert!(!budget.is_cancelled());
        assert!(budget.check_cancelled().is_ok());
    }

    #[test]
    fn cancelling_or_stopping_ends_a_search_without_timing_it_out() {
        let budget = SearchBudget::new(&SearchLimits::default(), Duration::from_secs(60));
        assert!(!budget.exhausted());
        budget.cancel();
        assert!(budget.exhausted());
        assert!(!budget.timed_out());
        assert!(matches!(budget.check_cancelled(), Err(Error::Cancelled)));

        let stopping = Arc::new(AtomicBool::new(false));
        let budget = SearchBudget::new(&SearchLimits::default(), Duration::from_secs(60))
            .stopped_by(stopping.clone());
        assert!(!budget.exhausted());
        stopping.store(true, Ordering::Relaxed);
        assert!(budget.exhausted());
    }

    #[test]
    fn timeouts_parse_and_are_bounded() {
        assert_eq!(
            parse_timeout(&json!(250)).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_timeout(&json!("2s")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_timeout(&json!("1m")).unwrap(),
            Duration::from_secs(60)
        );
        for bad in [json!(-1), json!(1.5), json!("2h"), json!("s"), json!(true)] {
            assert!(parse_timeout(&bad).is_err(), "{bad}");
        }
        let limits = SearchLimits::default();
        assert_eq!(limits.timeout(None).unwrap(), limits.default_timeout);
        assert!(limits.timeout(Some(Duration::ZERO)).is_err());
        assert!(limits.timeout(Some(limits.max_timeout * 2)).is_err());
    }
}
