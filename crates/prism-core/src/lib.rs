//! Prism Layer 1: a single node's collections, shards, durable write path and search.
//!
//! - [`schema`]: collections, field types, document validation.
//! - [`log`]: the shard log, the write-ahead log of a shard copy.
//! - [`shard`]: a shard copy as a deterministic state machine over its log.
//! - [`search`] and [`fusion`]: search requests and hybrid rank fusion.
//! - [`rank`]: the one order of results (score, then id hash), everywhere.
//! - [`vector`]: the HNSW index of one vector field.
//! - [`engine`]: the collections of one node and its data directory.
//! - [`routing`]: which shard owns a document id.
//! - [`limits`]: how many collections the process limits hold.

pub mod analysis;
pub mod engine;
pub mod error;
pub mod fusion;
pub mod limits;
pub mod log;
pub mod pipeline;
pub mod rank;
pub mod routing;
pub mod schema;
pub mod search;
pub mod shard;
pub mod stats;
pub mod vector;

pub use error::{Error, Result};
