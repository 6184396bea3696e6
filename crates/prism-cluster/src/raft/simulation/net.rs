//! A seeded network: every delay, loss and duplicate is drawn from the simulation's
//! generator, and partitions and crashed nodes swallow messages. What crosses it goes
//! through postcard both ways, as on the wire. A lost message is never answered; the
//! caller's deadline decides, as with a real network (and openraft then counts a time-out,
//! never "unreachable", whose back-off would add a race no seed decides).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;

use crate::network::{Handler, Network};
use crate::rpc::{Envelope, NodeId, Reply};

/// How hostile the network is at the moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Chance that a message (either way) is lost.
    pub loss: f64,
    /// Chance that a request is delivered a second time, later.
    pub duplicate: f64,
    /// Each way, a delay drawn up to this.
    pub max_delay: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0.0,
        duplicate: 0.0,
        max_delay: Duration::from_millis(2),
    };
}

struct State {
    rng: StdRng,
    handlers: BTreeMap<NodeId, Arc<dyn Handler>>,
    /// Bumped when a node goes down: nothing its earlier incarnation sends gets through.
    incarnations: BTreeMap<NodeId, u64>,
    /// Links cut both ways, as (smaller, larger).
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: Faults,
    delivered: u64,
}

#[derive(Clone)]
pub struct ChaosNetwork {
    state: Arc<Mutex<State>>,
}

fn link(a: &str, b: &str) -> (NodeId, NodeId) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl ChaosNetwork {
    pub fn new(rng: StdRng) -> ChaosNetwork {
        ChaosNetwork {
            state: Arc::new(Mutex::new(State {
                rng,
                handlers: BTreeMap::new(),
                incarnations: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults: Faults::NONE,
                delivered: 0,
            })),
        }
    }

    /// Node `id` answers with `handler` from now on (a restart replaces the old one).
    pub fn up(&self, id: &str, handler: Arc<dyn Handler>) {
        self.state.lock().handlers.insert(id.to_string(), handler);
    }

    /// Node `id` is gone: messages to it are lost, and so is everything it was still
    /// sending (replies included).
    pub fn down(&self, id: &str) {
        let mut state = self.state.lock();
        state.handlers.remove(id);
        *state.incarnations.entry(id.to_string()).or_default() += 1;
    }

    fn incarnation(&self, id: &str) -> u64 {
        self.state.lock().incarnations.get(id).copied().unwrap_or(0)
    }

    /// Calls from node `from` as it runs now.
    pub fn endpoint(&self, from: &str) -> Endpoint {
        Endpoint {
            network: self.clone(),
            from: from.to_string(),
            incarnation: self.incarnation(from),
        }
    }

    /// Cuts every link between `side` and the other nodes of `all`.
    pub fn partition(&self, side: &[NodeId], all: &[NodeId]) {
        let mut state = self.state.lock();
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                state.cut.insert(link(a, b));
            }
        }
    }

    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    pub fn delivered(&self) -> u64 {
        self.state.lock().delivered
    }

    /// The handler of `to` when the message gets through now, and the delay it takes.
    fn route(&self, from: &str, to: &str) -> Option<(Arc<dyn Handler>, Duration)> {
        let mut state = self.state.lock();
        let faults = state.faults;
        let lost = state.rng.gen_bool(faults.loss);
        let delay = Duration::from_micros(
            state
                .rng
                .gen_range(0..=faults.max_delay.as_micros().max(1) as u64),
        );
        if lost || state.cut.contains(&link(from, to)) {
            return None;
        }
        let handler = state.handlers.get(to)?.clone();
        Some((handler, delay))
    }

    fn duplicate(&self) -> Option<Duration> {
        let mut state = self.state.lock();
        let faults = state.faults;
        state.rng.gen_bool(faults.duplicate).then(|| {
            Duration::from_micros(
                state
                    .rng
                    .gen_range(0..=4 * faults.max_delay.as_micros().max(1) as u64),
            )
        })
    }

    async fn deliver(&self, from: &str, to: &str, wire: &[u8]) -> Option<Reply> {
        let (_, delay) = self.route(from, to)?;
        tokio::time::sleep(delay).await;
        // The world may have changed while the message travelled.
        let handler = {
            let state = self.state.lock();
            if state.cut.contains(&link(from, to)) {
                return None;
            }
            state.handlers.get(to)?.clone()
        };
        self.state.lock().delivered += 1;
        let incarnation = self.incarnation(to);
        let envelope: Envelope = postcard::from_bytes(wire).expect("envelopes decode");
        let reply = handler.handle(from.to_string(), envelope).await;
        // A node that went down while it handled the message never answers.
        (self.incarnation(to) == incarnation).then_some(reply)
    }
}

/// Calls from one node.
pub struct Endpoint {
    network: ChaosNetwork,
    from: NodeId,
    incarnation: u64,
}

#[async_trait]
impl Network for Endpoint {
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply {
        if self.network.incarnation(&self.from) != self.incarnation {
            // Sent by a node that crashed since: it never leaves.
            return std::future::pending().await;
        }
        let wire = postcard::to_stdvec(&envelope).expect("envelopes encode");
        if let Some(later) = self.network.duplicate() {
            let (network, from, to, wire) = (
                self.network.clone(),
                self.from.clone(),
                to.clone(),
                wire.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                network.deliver(&from, &to, &wire).await;
            });
        }
        let Some(reply) = self.network.deliver(&self.from, to, &wire).await else {
            return std::future::pending().await;
        };
        let wire = postcard::to_stdvec(&reply).expect("replies encode");
        // The reply travels back, and may be lost on the way.
        let Some((_, delay)) = self.network.route(to, &self.from) else {
            return std::future::pending().await;
        };
        tokio::time::sleep(delay).await;
        if self
            .network
            .state
            .lock()
            .cut
            .contains(&link(to, &self.from))
        {
            return std::future::pending().await;
        }
        postcard::from_bytes(&wire).expect("replies decode")
    }
}
