//! The node-wide in-flight memory budget: what all requests in flight may hold together.
//! A request reserves its estimate before it allocates, and gives it back when it ends (the
//! reservation is dropped). Over the budget it is refused with `429 circuit_breaking`; a
//! request that could never fit gets `413 request_too_large`. This is Elasticsearch's
//! in-flight-requests circuit breaker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prism_core::Error;

/// What one search reserves, beside its aggregations: the request, its plan, ranked lists
/// of up to the result window, and a page of stored documents.
pub const SEARCH_BASE_BYTES: u64 = 4 << 20;

/// What one hit of a search window holds until the page is built.
pub const SEARCH_BYTES_PER_HIT: u64 = 8 << 10;

/// What one bulk line holds while the batch is prepared and written, beside twice its
/// bytes: the parsed document, its prepared form and its log operation. Measured: an 88 MB
/// NDJSON bulk of 1,000,000 small documents peaked at about 2.3 GB.
pub const BULK_BYTES_PER_LINE: u64 = 2 << 10;

/// The estimate of a bulk or JSON batch of `bytes` holding about `lines` documents.
pub fn batch_estimate(bytes: usize, lines: usize) -> u64 {
    (bytes as u64)
        .saturating_mul(2)
        .saturating_add((lines as u64).saturating_mul(BULK_BYTES_PER_LINE))
}

/// The node's in-flight budget.
#[derive(Debug)]
pub struct InFlightBudget {
    limit: u64,
    used: AtomicU64,
}

/// Memory reserved from an [`InFlightBudget`], returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<InFlightBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl InFlightBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(InFlightBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` for `what`, or refuses.
    pub fn reserve(
        self: &Arc<Self>,
        bytes: u64,
        what: impl Into<String>,
    ) -> Result<Reservation, Error> {
        if bytes > self.limit {
            return Err(Error::RequestTooLarge {
                what: what.into(),
                needed: bytes,
                limit: self.limit,
                setting: "server.max_in_flight_bytes",
            });
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + bytes > self.limit {
                return Err(Error::CircuitBreaking {
                    what: what.into(),
                    needed: bytes,
                    available: self.limit - used,
                    setting: "server.max_in_flight_bytes",
                });
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

/// The default budget: a quarter of the machine's memory, and at most a third of the
/// address-space limit when one is set (`ulimit -v`: mapped index files and thread stacks
/// count against it too).
pub fn default_limit(mem_total: Option<u64>, address_space: Option<u64>) -> u64 {
    let from_memory = mem_total.map_or(1 << 30, |m| m / 4);
    match address_space {
        Some(limit) => from_memory.min(limit / 3),
        None => from_memory,
    }
    .max(64 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_and_come_back() {
        let budget = InFlightBudget::new(100);
        let a = budget.reserve(60, "a").unwrap();
        let refused = budget.reserve(50, "b").unwrap_err();
        assert!(
            matches!(
                refused,
                Error::CircuitBreaking {
                    needed: 50,
                    available: 40,
                    ..
                }
            ),
            "{refused:?}"
        );
        let b = budget.reserve(40, "b").unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn what_can_never_fit_is_too_large_not_a_retry() {
        let budget = InFlightBudget::new(100);
        assert!(matches!(
            budget.reserve(101, "x").unwrap_err(),
            Error::RequestTooLarge {
                needed: 101,
                limit: 100,
                ..
            }
        ));
    }

    #[test]
    fn the_default_follows_memory_and_the_address_space_cap() {
        assert_eq!(default_limit(Some(24 << 30), None), 6 << 30);
        assert_eq!(default_limit(Some(24 << 30), Some(3 << 30)), 1 << 30);
        assert_eq!(default_limit(None, None), 1 << 30);
        assert_eq!(default_limit(Some(1 << 20), None), 64 << 20);
    }

    #[test]
    fn a_million_line_bulk_is_estimated_near_what_it_was_measured_to_hold() {
        let estimate = batch_estimate(88 << 20, 1_000_000);
        assert!((2 << 30..3 << 30).contains(&estimate), "{estimate}");
    }
}
