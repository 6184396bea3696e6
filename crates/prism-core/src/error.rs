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
    /// The search pool's queue is full.
    #[error("{queued} searches are already waiting for this node's {threads} search threads; retry with backoff")]
    SearchesQueued { queued: usize, threads: usize },
    /// A request would hold more memory than a budget has left.
    #[error("{what} needs about {needed} bytes, over the {available} bytes left of the node's in-flight budget ({setting}); retry with backoff or send smaller requests")]
    CircuitBreaking {
        what: String,
        needed: u64,
        available: u64,
        setting: &'static str,
    },
    /// One request that can never fit a budget.
    #[error(
        "{what} needs about {needed} bytes, over the {limit}-byte limit ({setting}); split it"
    )]
    RequestTooLarge {
        what: String,
        needed: u64,
        limit: u64,
        setting: &'static str,
    },
    /// The deadline passed before the search could start.
    #[error("the search waited {waited_ms} ms for a search thread and reached its deadline before it started; retry with backoff or a longer timeout")]
    SearchTimedOut { waited_ms: u64 },
    /// The search was cancelled: its client left, or the node is stopping.
    #[error("the search was cancelled: its client disconnected or the node is stopping")]
    Cancelled,
    #[error("no space left for {path}: {message}. Free disk space; writes resume by themselves")]
    InsufficientStorage { path: PathBuf, message: String },
    #[error("storage failed for {path}: {message}. Restart the node once the disk is healthy; the log replays every acknowledged write")]
    StorageFailed { path: PathBuf, message: String },
    #[error("the outcome of the write is unknown ({path}): {message}. It may be applied when the node restarts; retry it once the disk is healthy (upserts and deletes by id are idempotent)")]
    WriteUnknown { path: PathBuf, message: String },
    #[error("collection {name:?} is unavailable: {reason}")]
    CollectionUnavailable { name: String, reason: String },
    #[error("collection {name:?} is recovering: {replayed} of {total} log entries replayed after {elapsed_ms} ms. Retry shortly; GET /health shows the progress")]
    CollectionRecovering {
        name: String,
        replayed: u64,
        total: u64,
        elapsed_ms: u64,
    },
    #[error("limit reached: {0}")]
    LimitExceeded(String),
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
    /// A caller of the log broke its order (a gap, a term going back, a purged truncation):
    /// a bug in the consensus layer, refused before anything is written.
    #[error("log order violated: {0}")]
    LogOrder(String),
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
            Error::Overloaded | Error::SearchesQueued { .. } => "overloaded",
            Error::CircuitBreaking { .. } => "circuit_breaking",
            Error::RequestTooLarge { .. } => "request_too_large",
            Error::SearchTimedOut { .. } => "search_timeout",
            Error::Cancelled => "cancelled",
            Error::InsufficientStorage { .. } => "insufficient_storage",
            Error::StorageFailed { .. } => "storage_failed",
            Error::CollectionUnavailable { .. } => "collection_unavailable",
            Error::CollectionRecovering { .. } => "collection_recovering",
            Error::WriteUnknown { .. } => "write_unknown",
            Error::LimitExceeded(_) => "limit_exceeded",
            Error::Corrupt { .. } => "corrupt_data",
            Error::Io { .. } => "io_error",
            Error::Tantivy(_) => "index_error",
            Error::Vector(_) => "vector_index_error",
            Error::LogOrder(_) => "log_order_violated",
        }
    }

    /// An I/O error; a full disk becomes [`Error::InsufficientStorage`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if is_disk_full(&source) {
            return Error::InsufficientStorage {
                path: path.into(),
                message: source.to_string(),
            };
        }
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error means the disk (or quota) is full, so that freeing space cures it.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::InsufficientStorage { .. } => true,
            Error::Io { source, .. } => is_disk_full(source),
            // tantivy wraps I/O errors in several variants; the OS message is in all of them.
            Error::Tantivy(e) => mentions_disk_full(&e.to_string()),
            Error::Vector(message) => mentions_disk_full(message),
            _ => false,
        }
    }

    /// What went wrong, without the advice the Display adds: for recording as a cause.
    pub fn cause(&self) -> String {
        match self {
            Error::InsufficientStorage { message, .. }
            | Error::StorageFailed { message, .. }
            | Error::WriteUnknown { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Turns a disk-full error of any component into [`Error::InsufficientStorage`].
    pub(crate) fn classify_storage(self, path: &std::path::Path) -> Self {
        if self.is_disk_full() && !matches!(self, Error::InsufficientStorage { .. }) {
            return Error::InsufficientStorage {
                path: path.to_path_buf(),
                message: self.cause(),
            };
        }
        self
    }
}

/// The message of a caught panic, for an error that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

/// ENOSPC or EDQUOT.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

fn mentions_disk_full(message: &str) -> bool {
    message.contains("os error 28")
        || message.contains("os error 122")
        || message.contains("No space left on device")
        || message.contains("Disk quota exceeded")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
