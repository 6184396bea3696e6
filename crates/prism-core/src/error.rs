//! One error type for Layer 1. Each variant has a stable `code` string; the HTTP layer maps
//! variants to statuses in one place.

use std::path::PathBuf;

/// Errors from the single-node engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollectionName { name: String, reason: String },
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("collection {0:?} does not exist")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists with a different schema")]
    CollectionExists(String),
    #[error("document {0:?} does not exist")]
    DocumentNotFound(String),
    #[error("invalid document {id:?}: {message}")]
    InvalidDocument { id: String, message: String },
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("data directory {path} is locked by another process: {reason}. Stop the other prism-server or choose another --data-dir")]
    DataDirLocked { path: PathBuf, reason: String },
    #[error("shard is shutting down; retry on another node or after restart")]
    ShuttingDown,
    #[error("too many writes are waiting for this shard; retry with backoff")]
    Overloaded,
    #[error("corrupt data in {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("text index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("vector index error: {0}")]
    Vector(String),
}

impl Error {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidCollectionName { .. } => "invalid_collection_name",
            Error::InvalidSchema(_) => "invalid_schema",
            Error::CollectionNotFound(_) => "collection_not_found",
            Error::CollectionExists(_) => "collection_exists",
            Error::DocumentNotFound(_) => "document_not_found",
            Error::InvalidDocument { .. } => "invalid_document",
            Error::InvalidQuery(_) => "invalid_query",
            Error::InvalidRequest(_) => "invalid_request",
            Error::DataDirLocked { .. } => "data_dir_locked",
            Error::ShuttingDown => "shutting_down",
            Error::Overloaded => "overloaded",
            Error::Corrupt { .. } => "corrupt_data",
            Error::Io { .. } => "io_error",
            Error::Tantivy(_) => "index_error",
            Error::Vector(_) => "vector_index_error",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
