//! How many collections one process can hold, from its open-file, memory-map and thread
//! limits. Pure: the server reads the limits at start and passes them in.
//!
//! Each open collection costs file descriptors (log segment, index lock, files being
//! written), memory maps (tantivy maps every segment file; thread stacks are maps too) and
//! threads (the shard writer, plus tantivy's indexing and merge threads while its writer is
//! open). The figures per collection are upper bounds measured on this design (see
//! `tests/tests/limits.rs`); the reserve covers the HTTP server, the runtime and the
//! collections' peaks during commits and merges.

/// The limits of the process and machine that bound how many collections fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_NOFILE`, soft (after raising it to the hard limit).
    pub open_files: u64,
    /// `vm.max_map_count`.
    pub max_map_count: u64,
    /// The lower of `RLIMIT_NPROC` and `kernel.threads-max`.
    pub max_threads: u64,
}

/// What one open collection may use at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionCost {
    pub open_files: u64,
    pub maps: u64,
    pub threads: u64,
}

/// Peak use of one single-shard collection.
pub const COLLECTION_COST: CollectionCost = CollectionCost {
    open_files: 12,
    maps: 48,
    // The writer loop, two indexing threads, the segment updater and one merge thread.
    threads: 5,
};

/// What the rest of the process needs.
pub const PROCESS_RESERVE: CollectionCost = CollectionCost {
    open_files: 512,
    maps: 4096,
    threads: 512,
};

/// How many collections fit, and which limit binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub collections: usize,
    /// `"open files"`, `"memory maps"`, `"threads"` or `"configuration"`.
    pub bound_by: &'static str,
}

/// The number of collections the limits hold, at most `configured` when given.
pub fn collection_capacity(limits: ProcessLimits, configured: Option<usize>) -> Capacity {
    let fit = |limit: u64, reserve: u64, cost: u64| (limit.saturating_sub(reserve) / cost) as usize;
    let candidates = [
        (
            fit(
                limits.open_files,
                PROCESS_RESERVE.open_files,
                COLLECTION_COST.open_files,
            ),
            "open files",
        ),
        (
            fit(
                limits.max_map_count,
                PROCESS_RESERVE.maps,
                COLLECTION_COST.maps,
            ),
            "memory maps",
        ),
        (
            fit(
                limits.max_threads,
                PROCESS_RESERVE.threads,
                COLLECTION_COST.threads,
            ),
            "threads",
        ),
    ];
    let (collections, bound_by) = candidates
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .expect("three candidates");
    match configured {
        Some(c) if c <= collections => Capacity {
            collections: c,
            bound_by: "configuration",
        },
        _ => Capacity {
            collections,
            bound_by,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENEROUS: ProcessLimits = ProcessLimits {
        open_files: 1 << 20,
        max_map_count: 1 << 24,
        max_threads: 1 << 22,
    };

    #[test]
    fn the_tightest_limit_binds() {
        let c = collection_capacity(
            ProcessLimits {
                open_files: 1024,
                ..GENEROUS
            },
            None,
        );
        assert_eq!(c.bound_by, "open files");
        assert_eq!(c.collections, (1024 - 512) / 12);
        let c = collection_capacity(
            ProcessLimits {
                max_map_count: 65530,
                ..GENEROUS
            },
            None,
        );
        assert_eq!(c.bound_by, "memory maps");
        assert_eq!(c.collections, (65530 - 4096) / 48);
    }

    #[test]
    fn configuration_only_lowers_the_capacity() {
        assert_eq!(
            collection_capacity(GENEROUS, Some(10)),
            Capacity {
                collections: 10,
                bound_by: "configuration"
            }
        );
        let limited = ProcessLimits {
            open_files: 1024,
            ..GENEROUS
        };
        assert_eq!(
            collection_capacity(limited, Some(1_000_000)).bound_by,
            "open files"
        );
    }

    #[test]
    fn limits_below_the_reserve_hold_nothing() {
        let c = collection_capacity(
            ProcessLimits {
                open_files: 100,
                ..GENEROUS
            },
            None,
        );
        assert_eq!(c.collections, 0);
    }
}
