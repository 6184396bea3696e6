//! The openraft type configurations of Prism's groups, and the runtime they share.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use prism_core::shard::Op;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::snapshot::ShardSnapshot;
use crate::metadata::{MetaCommand, MetaResponse};

/// A node as a group's membership names it.
pub type Node = openraft::BasicNode;

/// The application data of a shard group's entry: one write request's operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardWrite {
    pub ops: Vec<Op>,
}

openraft::declare_raft_types!(
    /// A shard's Raft group: entries carry document writes, snapshots are directories.
    pub ShardRaft:
        D = ShardWrite,
        R = (),
        NodeId = u64,
        Node = Node,
        SnapshotData = ShardSnapshot,
        AsyncRuntime = SeededTokio,
);

openraft::declare_raft_types!(
    /// The metadata group: entries change collections, the shard map and the nodes.
    pub MetaRaft:
        D = MetaCommand,
        R = MetaResponse,
        NodeId = u64,
        Node = Node,
        SnapshotData = ShardSnapshot,
        AsyncRuntime = SeededTokio,
);

/// tokio, with openraft's random draws (election time-outs) from a per-thread generator that
/// [`seed_this_thread`] can seed. Unseeded, it starts from the OS's entropy, as tokio's does.
/// A simulation on a current-thread runtime seeds it, and a seed then decides every draw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededTokio;

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
    static JITTER: Cell<bool> = const { Cell::new(false) };
}

/// Seeds the generator openraft draws from on this thread. From then on every timer openraft
/// starts on this thread also runs up to 1 ms longer, drawn from it: with many nodes in one
/// simulated process, the seed decides whose timer fires first, so which node steps first.
pub fn seed_this_thread(seed: u64) {
    RNG.with(|rng| *rng.borrow_mut() = StdRng::seed_from_u64(seed));
    JITTER.with(|jitter| jitter.set(true));
}

/// The seeded extra time of a timer (none unless [`seed_this_thread`] was called).
fn jitter() -> Duration {
    if JITTER.with(Cell::get) {
        Duration::from_micros(RNG.with(|rng| rng.borrow_mut().gen_range(0..1000)))
    } else {
        Duration::ZERO
    }
}

/// A handle to this thread's generator.
pub struct ThreadRng;

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|rng| rng.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        RNG.with(|rng| rng.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|rng| rng.borrow_mut().fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        RNG.with(|rng| rng.borrow_mut().try_fill_bytes(dest))
    }
}

impl AsyncRuntime for SeededTokio {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration + jitter())
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline + jitter())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration + jitter(), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline + jitter(), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
