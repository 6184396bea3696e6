//! An in-memory network for deterministic tests of many nodes in one process. It implements
//! the same [`Network`] trait as the QUIC transport, and every message goes through postcard
//! both ways, so what crosses it is what would cross the wire. A test can cut links
//! (partitions), lose the next messages on a link, and pause a node, whose calls then wait
//! until it resumes, as a stopped process's would. A message that is lost or cut never gets
//! an answer: the caller's deadline decides, as with a real network.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::network::{Handler, Network};
use crate::rpc::{Envelope, NodeId, Reply, RpcError};

#[derive(Default)]
struct State {
    handlers: HashMap<NodeId, Arc<dyn Handler>>,
    /// Cut links, both directions, as (smaller, larger) node ids.
    cut: HashSet<(NodeId, NodeId)>,
    /// Messages still to lose on a directed link.
    to_drop: HashMap<(NodeId, NodeId), usize>,
    paused: HashMap<NodeId, watch::Sender<bool>>,
    /// Calls delivered to each node's handler.
    delivered: HashMap<NodeId, u64>,
}

fn link(a: &str, b: &str) -> (NodeId, NodeId) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The network of a simulated cluster; clone it to share.
#[derive(Clone, Default)]
pub struct SimNetwork {
    state: Arc<Mutex<State>>,
}

/// One node's side of the [`SimNetwork`]: calls from it.
#[derive(Clone)]
pub struct SimEndpoint {
    network: SimNetwork,
    from: NodeId,
}

impl SimNetwork {
    pub fn new() -> SimNetwork {
        SimNetwork::default()
    }

    /// Adds node `id`, answering with `handler`, and returns its endpoint.
    pub fn join(&self, id: &str, handler: Arc<dyn Handler>) -> SimEndpoint {
        let mut state = self.state.lock();
        state.handlers.insert(id.to_string(), handler);
        state
            .paused
            .entry(id.to_string())
            .or_insert_with(|| watch::channel(false).0);
        SimEndpoint {
            network: self.clone(),
            from: id.to_string(),
        }
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) {
        let mut state = self.state.lock();
        for a in side_a {
            for b in side_b {
                state.cut.insert(link(a, b));
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    /// Loses the next `count` messages from `from` to `to`.
    pub fn drop_next(&self, from: &str, to: &str, count: usize) {
        *self
            .state
            .lock()
            .to_drop
            .entry((from.to_string(), to.to_string()))
            .or_default() += count;
    }

    /// Stops `node` from answering until [`SimNetwork::resume`]; calls to it wait.
    pub fn pause(&self, node: &str) {
        if let Some(paused) = self.state.lock().paused.get(node) {
            paused.send_replace(true);
        }
    }

    pub fn resume(&self, node: &str) {
        if let Some(paused) = self.state.lock().paused.get(node) {
            paused.send_replace(false);
        }
    }

    /// How many calls reached `node`'s handler.
    pub fn delivered_to(&self, node: &str) -> u64 {
        self.state.lock().delivered.get(node).copied().unwrap_or(0)
    }

    /// Whether a message from `from` to `to` is lost now (and counts it if so).
    fn loses(&self, from: &str, to: &str) -> bool {
        let mut state = self.state.lock();
        if state.cut.contains(&link(from, to)) {
            return true;
        }
        match state.to_drop.get_mut(&(from.to_string(), to.to_string())) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl Network for SimEndpoint {
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply {
        let net = &self.network;
        let (handler, mut paused) = {
            let state = net.state.lock();
            match (state.handlers.get(to), state.paused.get(to)) {
                (Some(h), Some(p)) => (h.clone(), p.subscribe()),
                _ => {
                    return Err(RpcError::Unavailable(format!(
                        "no node {to} on the network"
                    )))
                }
            }
        };
        if net.loses(&self.from, to) {
            return futures::future::pending().await;
        }
        let bytes = postcard::to_stdvec(&envelope).expect("envelopes serialize");
        // A paused node takes the message only once it runs again.
        let _ = paused.wait_for(|p| !*p).await;
        let envelope: Envelope = postcard::from_bytes(&bytes)
            .map_err(|e| RpcError::InvalidRequest(format!("undecodable request: {e}")))?;
        *net.state.lock().delivered.entry(to.clone()).or_default() += 1;
        let reply = handler.handle(self.from.clone(), envelope).await;
        let bytes = postcard::to_stdvec(&reply).expect("replies serialize");
        if net.loses(to, &self.from) {
            return futures::future::pending().await;
        }
        postcard::from_bytes(&bytes)
            .map_err(|e| RpcError::Internal(format!("undecodable reply: {e}")))?
    }
}

#[cfg(test)]
mod tests;
