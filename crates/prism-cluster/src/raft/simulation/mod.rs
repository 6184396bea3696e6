//! The seeded, deterministic simulation of the multi-Raft core (docs/testing.md).
//!
//! One seed decides everything: the cluster's size (3 or 5 nodes), every delay, lost,
//! duplicated and reordered message ([`net::ChaosNetwork`]), every partition, every crash
//! and restart, and which writes go where and when. The run is one thread with tokio's clock
//! paused, and openraft draws its election time-outs from a generator the seed sets
//! ([`super::types::seed_this_thread`]), so a seed replays exactly.
//!
//! Each node hosts the metadata group and the copies the metadata placed on it: two
//! collections of three shards at RF 3. Groups run the real log (on tmpfs, under a crash
//! image that keeps only what was fsynced), the real network adapter and snapshot streaming,
//! and [`super::state_machine::MemoryStateMachine`]: the metadata's own state machine, and for
//! shards a model of the shard's documents (the real shard state machine indexes on threads
//! of its own, which no seed can order; `raft::tests` and `raft::cluster_tests` cover it).
//!
//! After every step the invariants are checked ([`check`]); at the end every fault is healed,
//! every node restarted, and every acknowledged write must be on every copy, and no refused
//! one anywhere.

mod check;
mod model;
mod net;
mod world;

use std::time::Duration;

pub use world::run;

/// How many seeds a test run checks: `PRISM_SIM_SEEDS` (300 by default), from
/// `PRISM_SIM_FIRST_SEED` (0). `PRISM_SIM_SEED` replays one.
fn seeds() -> std::ops::Range<u64> {
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = number("PRISM_SIM_SEED") {
        return seed..seed + 1;
    }
    let first = number("PRISM_SIM_FIRST_SEED").unwrap_or(0);
    first..first + number("PRISM_SIM_SEEDS").unwrap_or(300)
}

/// Simulated time a seed runs before the faults stop.
const CHAOS: Duration = Duration::from_secs(12);

#[cfg(not(any(feature = "broken-skip-log-fsync", feature = "broken-early-ack")))]
#[test]
fn every_invariant_holds_over_the_seeds() {
    let started = std::time::Instant::now();
    let mut totals = world::Totals::default();
    for seed in seeds() {
        match run(seed, CHAOS) {
            Ok(outcome) => {
                totals.add(&outcome);
                if totals.seeds % 1000 == 0 {
                    eprintln!(
                        "simulation: {} seeds passed in {:.0} s",
                        totals.seeds,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(violation) => panic!(
                "seed {seed} broke an invariant: {violation}\nreplay it with PRISM_SIM_SEED={seed} cargo nextest run -p prism-cluster -E 'test(every_invariant_holds)' --no-capture"
            ),
        }
    }
    eprintln!(
        "simulation: seeds {:?} in {:.1} s: {totals}",
        seeds(),
        started.elapsed().as_secs_f64()
    );
    // The seeds exercise what they claim to.
    assert!(totals.acknowledged > 0 && totals.crashes > 0 && totals.partitions > 0);
    if seeds().end - seeds().start >= 50 {
        assert!(
            totals.snapshot_installs > 0,
            "no seed installed a snapshot: {totals}"
        );
        assert!(
            totals.all_down > 0,
            "no seed crashed a majority at once: {totals}"
        );
    }
}

#[cfg(not(any(feature = "broken-skip-log-fsync", feature = "broken-early-ack")))]
#[test]
fn a_seed_replays_exactly() {
    let seed = seeds().start + 7;
    let first = run(seed, CHAOS).expect("the seed passes");
    let second = run(seed, CHAOS).expect("the seed passes");
    assert_eq!(
        first.trace, second.trace,
        "seed {seed} ran differently twice"
    );
    assert!(first.acknowledged > 0);
}

/// With a deliberately broken build, some seed must fail: the simulation catches it.
#[cfg(any(feature = "broken-skip-log-fsync", feature = "broken-early-ack"))]
#[test]
fn a_broken_build_is_caught() {
    for seed in seeds() {
        if let Err(violation) = run(seed, CHAOS) {
            eprintln!("seed {seed} caught the broken build: {violation}");
            return;
        }
    }
    panic!("no seed in {:?} caught the broken build", seeds());
}
