//! The typed requests nodes send each other. Search requests and responses travel as JSON
//! text inside the binary frame because they carry free-form JSON (aggregations, fields).

use prism_core::stats::TermStatistics;
use serde::{Deserialize, Serialize};

/// A call from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness; answered with the node id.
    Ping,
    /// BM25 statistics of the local shard for a search request (JSON).
    Stats { collection: String, request: String },
    /// Search the local shard with collection-wide statistics.
    Search {
        collection: String,
        request: String,
        stats: Option<TermStatistics>,
    },
    /// Upsert documents (a JSON array) into the local shard.
    Index {
        collection: String,
        documents: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong {
        node_id: String,
    },
    Stats(TermStatistics),
    /// A `SearchResponse` as JSON.
    Search(String),
    /// `successful` documents written; `errors` is a JSON array of per-document errors.
    Indexed {
        successful: u64,
        errors: String,
    },
    Error {
        code: String,
        message: String,
    },
}
