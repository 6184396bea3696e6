//! Prism Layers 2 and 3: the cluster. Layer 1 (`prism-core`) knows nothing of this crate.
//!
//! - [`config`]: the `[cluster]` and `[federation]` settings.
//! - [`discovery`]: where the other nodes come from (static list or DNS), and their changes.
//! - [`tls`]: mutual TLS between nodes.
//! - [`transport`]: the QUIC endpoint, handshake and request/response calls.
//! - [`assignment`]: the shard → node map every node computes alike.
//! - [`metadata`]: the cluster metadata as a deterministic state machine (collections, shard
//!   map, nodes); [`placement`] decides where new copies go.
//! - [`raft`]: openraft over Prism's log, shard state machine and network.
//! - [`rpc`]: the typed envelope, requests, answers and errors nodes exchange.
//! - [`network`]: the `Network` and `Handler` seam, which the transport and [`sim`] implement.
//! - [`node`]: a node's answers from its local engine.
//! - [`coordinator`]: federated search and writes over a `ShardClient`; partial results.
//! - [`membership`]: discovery and heartbeats as one state machine; health feeds routing.
//! - [`stats_cache`]: collection-wide BM25 statistics, cached while shards do not change.
//! - [`health`]: alive → suspect → dead from heartbeats.
//! - [`sim`]: an in-memory network with partitions, lost messages and paused nodes.

pub mod assignment;
pub mod clustered;
pub mod config;
pub mod coordinator;
pub mod discovery;
pub mod error;
pub mod health;
pub mod membership;
pub mod metadata;
pub mod network;
pub mod node;
pub mod placement;
pub mod raft;
pub mod rpc;
pub mod sim;
pub mod stats_cache;
pub mod tls;
pub mod transport;

pub use error::{ClusterError, Result};
