//! Prism Layers 2 and 3: the cluster. Layer 1 (`prism-core`) knows nothing of this crate.
//!
//! - [`config`]: the `[cluster]` and `[federation]` settings.
//! - [`discovery`]: where the other nodes come from (static list or DNS), and their changes.
//! - [`tls`]: mutual TLS between nodes.
//! - [`transport`]: the QUIC endpoint, handshake and request/response calls.
//! - [`assignment`]: the shard → node map every node computes alike.
//! - [`merge`]: merging shard answers; partial-result verdicts.
//! - [`stats_cache`]: collection-wide BM25 statistics, cached while shards do not change.
//! - [`health`]: alive → suspect → dead from heartbeats.

pub mod assignment;
pub mod config;
pub mod discovery;
pub mod error;
pub mod health;
pub mod merge;
pub mod raft;
pub mod rpc;
pub mod stats_cache;
pub mod tls;
pub mod transport;

pub use error::{ClusterError, Result};
