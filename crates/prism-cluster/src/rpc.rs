//! The typed requests nodes send each other. Search requests and fetched hits travel as JSON
//! text inside the binary frame because they carry free-form JSON (aggregations, fields).

use prism_core::search::{DocRef, ShardHits};
use prism_core::stats::TermStatistics;
use serde::{Deserialize, Serialize};

/// A call from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness; answered with the node id.
    Ping,
    /// BM25 statistics of the local shard for a search request (JSON).
    Stats { collection: String, request: String },
    /// The query phase: the local shard's ranked ids, scored with collection-wide statistics;
    /// the vector list holds `vector_k` hits.
    Search {
        collection: String,
        request: String,
        stats: Option<TermStatistics>,
        vector_k: u32,
    },
    /// The fetch phase: stored fields and highlights of documents a query phase of searcher
    /// `generation` ranked.
    Fetch {
        collection: String,
        request: String,
        generation: String,
        docs: Vec<DocRef>,
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
    Stats {
        stats: TermStatistics,
        /// The searcher generation the statistics describe.
        generation: String,
    },
    Hits(ShardHits),
    /// A JSON array with one hit per requested document, in order.
    Fetched(String),
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
