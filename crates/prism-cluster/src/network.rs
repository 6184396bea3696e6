//! The seam between the cluster's logic and its wires: a [`Network`] delivers an
//! [`Envelope`] to a node and returns its [`Reply`]; a [`Handler`] answers envelopes on the
//! receiving node. The QUIC [`Transport`] implements `Network` between processes, and
//! [`crate::sim::SimNetwork`] implements it in memory for deterministic tests, with
//! partitions, lost messages and paused nodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::rpc::{Envelope, NodeId, Reply, RpcError};
use crate::transport::{Service, Transport};

/// Delivers calls to other nodes.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// Sends `envelope` to node `to` and waits for its reply. A call that cannot be
    /// delivered or answered is [`RpcError::Unavailable`]; the caller bounds the wait.
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply;
}

/// Answers calls on the receiving node.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// `from` is the caller as its handshake named it.
    async fn handle(&self, from: NodeId, envelope: Envelope) -> Reply;
}

#[async_trait]
impl Network for Transport {
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply {
        match Transport::call::<Envelope, Reply>(self, to, &envelope).await {
            Ok(reply) => reply,
            // Nothing was sent: the peer never saw the call.
            Err(
                e @ (crate::error::ClusterError::Connect { .. }
                | crate::error::ClusterError::IncompatibleVersion { .. }
                | crate::error::ClusterError::Refused { .. }
                | crate::error::ClusterError::Tls(_)),
            ) => Err(RpcError::Unreachable(e.to_string())),
            Err(e) => Err(RpcError::Unavailable(e.to_string())),
        }
    }
}

/// A [`Handler`] served as the transport's byte-level [`Service`]: postcard in, postcard out.
pub struct HandlerService(pub Arc<dyn Handler>);

impl Service for HandlerService {
    fn handle(
        &self,
        peer: String,
        request: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> {
        let handler = self.0.clone();
        Box::pin(async move {
            let reply: Reply = match postcard::from_bytes::<Envelope>(&request) {
                Ok(envelope) => handler.handle(peer, envelope).await,
                Err(e) => Err(RpcError::InvalidRequest(format!(
                    "undecodable request ({e}); is the peer on another protocol version?"
                ))),
            };
            postcard::to_stdvec(&reply).expect("replies serialize")
        })
    }
}

/// Calls to this node go straight to its own handler; the rest go over `remote`. Which
/// names are this node's can change (membership learns them), hence a predicate.
pub struct LocalFirst {
    pub is_local: Box<dyn Fn(&NodeId) -> bool + Send + Sync>,
    pub local: Arc<dyn Handler>,
    pub remote: Arc<dyn Network>,
}

#[async_trait]
impl Network for LocalFirst {
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply {
        if (self.is_local)(to) {
            self.local.handle(to.clone(), envelope).await
        } else {
            self.remote.call(to, envelope).await
        }
    }
}

#[async_trait]
impl<N: Network + ?Sized> Network for Arc<N> {
    async fn call(&self, to: &NodeId, envelope: Envelope) -> Reply {
        (**self).call(to, envelope).await
    }
}
