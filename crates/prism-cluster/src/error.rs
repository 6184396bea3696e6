//! Errors of the cluster layers.

/// What can go wrong between nodes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot connect to {peer}: {reason}")]
    Connect { peer: String, reason: String },
    #[error("peer {peer} speaks cluster protocol {theirs}, this node speaks {ours}; upgrade the older node")]
    IncompatibleVersion {
        peer: String,
        ours: u32,
        theirs: u32,
    },
    #[error("peer {peer} refused the connection: {reason}")]
    Refused { peer: String, reason: String },
    #[error("request to {peer} timed out after {ms} ms")]
    Timeout { peer: String, ms: u64 },
    #[error("request to {peer} failed: {reason}")]
    Rpc { peer: String, reason: String },
    #[error("node discovery failed: {0}")]
    Discovery(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
