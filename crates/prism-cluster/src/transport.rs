//! The node-to-node transport: one QUIC endpoint per node with mutual TLS, a version
//! handshake on every connection, and request/response calls, each on a fresh bidirectional
//! stream, over pooled connections. Messages are framed as `[len u32 LE][postcard bytes]`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};
use crate::tls::{self, TlsMaterial};

/// Version of the cluster protocol. Peers with another version are refused at connect, so a
/// rolling upgrade can tell which nodes it still has to replace. 3: query-phase hits carry
/// their id hash, the tie-break of ranking (`prism_core::search::RankedDoc`). 4: calls are
/// envelopes naming their shard group, errors are typed, and no JSON text travels
/// (`crate::rpc`); the coordinator sends each shard its list windows. 5: Raft messages.
/// 6: group ids carry their collection's generation. 7: pongs carry the node's incarnation.
/// 10: a shard's copies past its voters (the fourth of four, the sixth and later) are
/// learners, by their position in the metadata: a version-9 leader would promote them.
pub const PROTOCOL_VERSION: u32 = 11;
/// Largest message accepted on a stream.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// First message on a new connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub node_id: String,
}

/// The answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        protocol_version: u32,
        node_id: String,
    },
    Refused {
        protocol_version: u32,
        reason: String,
    },
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Answers requests from other nodes. `peer` is the caller's node id from its handshake.
pub trait Service: Send + Sync + 'static {
    fn handle(&self, peer: String, request: Vec<u8>) -> BoxFuture<Vec<u8>>;
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: String,
    pub bind_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// The version this node announces; tests set another to exercise refusal.
    pub protocol_version: u32,
    /// A test-only fault: every request and answer this node sends waits this long first,
    /// which the kernel here cannot do (no netem). Zero outside fault tests.
    pub fault_delay: Duration,
}

struct PeerConnection {
    connection: quinn::Connection,
    node_id: String,
}

/// One node's QUIC endpoint, as server and as client.
pub struct Transport {
    endpoint: quinn::Endpoint,
    config: TransportConfig,
    pool: Mutex<HashMap<String, Arc<PeerConnection>>>,
    /// One dial at a time per peer: concurrent first calls share one handshake.
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Connections from other nodes that passed TLS, for `accepted_connections`.
    accepted: std::sync::atomic::AtomicU64,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("cluster messages serialize")
}

async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::other(format!(
            "message of {} bytes is over the limit",
            bytes.len()
        )));
    }
    send.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    send.write_all(bytes).await?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(std::io::Error::other)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::other(format!(
            "peer sent a {len}-byte message, over the limit"
        )));
    }
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes)
        .await
        .map_err(std::io::Error::other)?;
    Ok(bytes)
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']'])
}

impl Transport {
    /// Binds the endpoint and starts accepting connections for `service`.
    pub fn start(
        config: TransportConfig,
        tls: &TlsMaterial,
        service: Arc<dyn Service>,
    ) -> Result<Arc<Transport>> {
        let server_crypto = QuicServerConfig::try_from(tls.server.clone())
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        let mut transport_config = quinn::TransportConfig::default();
        // A peer that died without a restart is dropped after this long; a restarted one
        // resets the old connection at once (`TlsMaterial::reset_secret`).
        transport_config.max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .expect("idle timeout fits"),
        ));
        transport_config.keep_alive_interval(Some(Duration::from_secs(2)));
        let transport_config = Arc::new(transport_config);
        server_config.transport_config(transport_config.clone());
        // Keyed by node too: nodes that share a certificate and key must not be able to reset
        // each other's connections.
        let derive = |label: &[u8]| {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            context.update(&tls.reset_secret);
            context.update(label);
            context.update(config.node_id.as_bytes());
            context.finish()
        };
        let reset_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"\0reset\0").as_ref());
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ClusterError::Config("QUIC needs a tokio runtime".into()))?;
        let socket = std::net::UdpSocket::bind(config.bind_addr)?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // quinn answers a packet for an unknown connection with a stateless reset only when
        // the connection id validates as its own: the ids must be keyed the same across
        // restarts too.
        let cid_key = u64::from_le_bytes(
            derive(b"\0connection id\0").as_ref()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let mut endpoint =
            quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)?;
        let client_crypto = QuicClientConfig::try_from(tls.client.clone())
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);
        endpoint.set_default_client_config(client_config);
        let transport = Arc::new(Transport {
            endpoint,
            config,
            pool: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            accepted: std::sync::atomic::AtomicU64::new(0),
        });
        let accepting = transport.clone();
        tokio::spawn(async move { accepting.accept_loop(service).await });
        Ok(transport)
    }

    /// How many connections from other nodes have passed the TLS handshake.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    async fn accept_loop(self: Arc<Self>, service: Arc<dyn Service>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let transport = self.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => {
                        transport
                            .accepted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        transport.serve_connection(connection, service).await
                    }
                    // The dialer gave up (it timed out or is shutting down): not a refusal.
                    Err(
                        e @ (quinn::ConnectionError::ApplicationClosed(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                        | quinn::ConnectionError::TimedOut),
                    ) => {
                        tracing::debug!(%remote, error = %e, "a cluster connection ended during its handshake")
                    }
                    // A peer without a certificate from the cluster CA ends up here.
                    Err(e) => tracing::warn!(%remote, error = %e, "refused a cluster connection"),
                }
            });
        }
    }

    async fn serve_connection(&self, connection: quinn::Connection, service: Arc<dyn Service>) {
        let remote = connection.remote_address();
        let peer = match self.answer_hello(&connection).await {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "cluster handshake failed");
                connection.close(1u32.into(), b"handshake failed");
                return;
            }
        };
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let service = service.clone();
            let peer = peer.clone();
            let fault_delay = self.config.fault_delay;
            tokio::spawn(async move {
                let request = match read_frame(&mut recv).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "unreadable request");
                        return;
                    }
                };
                let response = service.handle(peer, request).await;
                if !fault_delay.is_zero() {
                    tokio::time::sleep(fault_delay).await;
                }
                if write_frame(&mut send, &response).await.is_ok() {
                    let _ = send.finish();
                }
            });
        }
    }

    async fn answer_hello(&self, connection: &quinn::Connection) -> Result<String> {
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|e| ClusterError::Rpc {
                peer: connection.remote_address().to_string(),
                reason: e.to_string(),
            })?;
        let bytes = read_frame(&mut recv).await?;
        let hello: Hello = postcard::from_bytes(&bytes).map_err(|e| ClusterError::Rpc {
            peer: connection.remote_address().to_string(),
            reason: format!("bad hello: {e}"),
        })?;
        let claim = tls::check_claim(peer_certificates(connection).as_deref(), &hello.node_id);
        let reply = if let Err(reason) = claim {
            HelloReply::Refused {
                protocol_version: self.config.protocol_version,
                reason,
            }
        } else if hello.protocol_version == self.config.protocol_version {
            HelloReply::Accepted {
                protocol_version: self.config.protocol_version,
                node_id: self.config.node_id.clone(),
            }
        } else {
            HelloReply::Refused {
                protocol_version: self.config.protocol_version,
                reason: format!(
                    "protocol version {} is not supported; this node speaks {}",
                    hello.protocol_version, self.config.protocol_version
                ),
            }
        };
        write_frame(&mut send, &encode(&reply)).await?;
        let _ = send.finish();
        match reply {
            HelloReply::Accepted { .. } => Ok(hello.node_id),
            HelloReply::Refused { reason, .. } => {
                // Let the reply reach the peer before the connection goes.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                Err(ClusterError::Refused {
                    peer: hello.node_id,
                    reason,
                })
            }
        }
    }

    fn pooled(&self, peer: &str) -> Option<Arc<PeerConnection>> {
        self.pool
            .lock()
            .get(peer)
            .filter(|c| c.connection.close_reason().is_none())
            .cloned()
    }

    async fn connect(&self, peer: &str) -> Result<Arc<PeerConnection>> {
        if let Some(existing) = self.pooled(peer) {
            return Ok(existing);
        }
        let dial = self
            .dialing
            .lock()
            .entry(peer.to_string())
            .or_default()
            .clone();
        let _dialing = dial.lock().await;
        // Another call may have connected while this one waited.
        if let Some(existing) = self.pooled(peer) {
            return Ok(existing);
        }
        let fail = |reason: String| ClusterError::Connect {
            peer: peer.to_string(),
            reason,
        };
        let addr = tokio::net::lookup_host(peer)
            .await
            .map_err(|e| fail(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| fail("the name resolves to no address".into()))?;
        let handshake = async {
            let connecting = self
                .endpoint
                .connect(addr, host_of(peer))
                .map_err(|e| fail(e.to_string()))?;
            let connection = connecting.await.map_err(|e| fail(e.to_string()))?;
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| fail(e.to_string()))?;
            let hello = Hello {
                protocol_version: self.config.protocol_version,
                node_id: self.config.node_id.clone(),
            };
            write_frame(&mut send, &encode(&hello))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = send.finish();
            let reply = read_frame(&mut recv)
                .await
                .map_err(|e| fail(format!("no handshake reply: {e}")))?;
            match postcard::from_bytes::<HelloReply>(&reply).map_err(|e| fail(e.to_string()))? {
                HelloReply::Accepted { node_id, .. } => {
                    if let Err(reason) =
                        tls::check_claim(peer_certificates(&connection).as_deref(), &node_id)
                    {
                        connection.close(3u32.into(), b"identity refused");
                        return Err(ClusterError::Refused {
                            peer: peer.to_string(),
                            reason,
                        });
                    }
                    Ok(PeerConnection {
                        connection,
                        node_id,
                    })
                }
                HelloReply::Refused {
                    protocol_version,
                    reason,
                } => {
                    connection.close(2u32.into(), b"version refused");
                    if protocol_version != self.config.protocol_version {
                        Err(ClusterError::IncompatibleVersion {
                            peer: peer.to_string(),
                            ours: self.config.protocol_version,
                            theirs: protocol_version,
                        })
                    } else {
                        Err(ClusterError::Refused {
                            peer: peer.to_string(),
                            reason,
                        })
                    }
                }
            }
        };
        let connected = tokio::time::timeout(self.config.connect_timeout, handshake)
            .await
            .map_err(|_| ClusterError::Timeout {
                peer: peer.to_string(),
                ms: self.config.connect_timeout.as_millis() as u64,
            })??;
        let connected = Arc::new(connected);
        let mut pool = self.pool.lock();
        pool.retain(|_, c| c.connection.close_reason().is_none());
        if pool.len() >= self.config.max_connections {
            // Drop an arbitrary pooled connection; it reconnects on its next call.
            if let Some(victim) = pool.keys().next().cloned() {
                pool.remove(&victim);
            }
        }
        pool.insert(peer.to_string(), connected.clone());
        Ok(connected)
    }

    /// Sends `request` to the node at `peer` (`host:port`) on a fresh stream and decodes its
    /// answer, within the request time-out.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        request: &Req,
    ) -> Result<Resp> {
        let bytes = self.call_raw(peer, encode(request)).await?;
        postcard::from_bytes(&bytes).map_err(|e| ClusterError::Rpc {
            peer: peer.to_string(),
            reason: format!("undecodable reply: {e}"),
        })
    }

    /// The node id a connected peer announced.
    pub async fn peer_node_id(&self, peer: &str) -> Result<String> {
        Ok(self.connect(peer).await?.node_id.clone())
    }

    async fn call_raw(&self, peer: &str, request: Vec<u8>) -> Result<Vec<u8>> {
        let timeout = self.config.request_timeout;
        let attempt = async {
            // Until a stream is open nothing was sent: the peer never saw this request.
            // A time-out or a failure while connecting is a connect failure; a refusal (another
            // protocol version, a bad certificate) keeps its own type.
            let connection = self.connect(peer).await.map_err(|e| match e {
                ClusterError::Timeout { .. } | ClusterError::Rpc { .. } | ClusterError::Io(_) => {
                    ClusterError::Connect {
                        peer: peer.to_string(),
                        reason: e.to_string(),
                    }
                }
                other => other,
            })?;
            let rpc_err = |reason: String| ClusterError::Rpc {
                peer: peer.to_string(),
                reason,
            };
            let (mut send, mut recv) =
                connection
                    .connection
                    .open_bi()
                    .await
                    .map_err(|e| ClusterError::Connect {
                        peer: peer.to_string(),
                        reason: e.to_string(),
                    })?;
            if !self.config.fault_delay.is_zero() {
                tokio::time::sleep(self.config.fault_delay).await;
            }
            write_frame(&mut send, &request)
                .await
                .map_err(|e| rpc_err(e.to_string()))?;
            let _ = send.finish();
            read_frame(&mut recv)
                .await
                .map_err(|e| rpc_err(e.to_string()))
        };
        let result = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClusterError::Timeout {
                peer: peer.to_string(),
                ms: timeout.as_millis() as u64,
            })
            .and_then(|r| r);
        if result.is_err() {
            // A restarted or unreachable peer leaves a pooled connection that would swallow
            // every later call until QUIC's idle timeout: drop it and reconnect next time.
            if let Some(stale) = self.pool.lock().remove(peer) {
                stale.connection.close(3u32.into(), b"call failed");
            }
        }
        result
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.pool.lock().clear();
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// The certificate chain the peer of `connection` presented, leaf first.
fn peer_certificates(
    connection: &quinn::Connection,
) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    connection
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()
        .map(|certs| *certs)
}
