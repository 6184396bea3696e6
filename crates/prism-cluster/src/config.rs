//! Cluster and federation settings: the `[cluster]`, `[cluster.tls]`, `[cluster.health]` and
//! `[federation.*]` sections of `prism.toml`, with the defaults of the user guide.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Cluster mode (`--cluster`): Raft for the metadata and every shard. Without it, an
    /// enabled cluster is a federation.
    pub raft: bool,
    /// Start a new cluster with this node alone, unless it belongs to one already
    /// (`--bootstrap`).
    pub bootstrap: bool,
    /// Unique id of this node; a random UUID when empty.
    pub node_id: String,
    /// QUIC (UDP) listen address.
    pub bind_addr: String,
    /// Address other nodes use to reach this one; defaults to `bind_addr`, and is required
    /// when `bind_addr` is a wildcard address.
    pub advertise_addr: Option<String>,
    pub seed_nodes: Vec<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Most pooled QUIC connections to other nodes.
    pub max_connections: usize,
    pub tls: TlsConfig,
    pub health: HealthConfig,
    pub consistency: PartitionConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            raft: false,
            bootstrap: false,
            node_id: String::new(),
            bind_addr: "0.0.0.0:9080".into(),
            advertise_addr: None,
            seed_nodes: Vec::new(),
            connect_timeout_ms: 5000,
            request_timeout_ms: 30000,
            max_connections: 10,
            tls: TlsConfig::default(),
            health: HealthConfig::default(),
            consistency: PartitionConfig::default(),
        }
    }
}

/// What a node cut off from the cluster's majority does (`[cluster.consistency]`, spec 001).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartitionConfig {
    /// How many copies a write waits for: `quorum` (a majority of the shard's voters) is the
    /// only choice.
    pub min_nodes_for_write: WriteQuorum,
    /// `read_only`: a node in a minority refuses writes at once (`no_quorum`) and serves
    /// reads as `allow_stale_reads` says.
    pub partition_behavior: PartitionBehavior,
    /// Whether a node in a minority serves reads that may be stale (every level but
    /// `strong`).
    pub allow_stale_reads: bool,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            min_nodes_for_write: WriteQuorum::Quorum,
            partition_behavior: PartitionBehavior::ReadOnly,
            allow_stale_reads: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteQuorum {
    Quorum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBehavior {
    ReadOnly,
}

/// `[federation.consistency]` (spec 001): the read consistency of a request that names none,
/// and the bound of `bounded` reads. Cluster mode honours every level; a federation reads
/// `eventual` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadConsistencyConfig {
    pub read: crate::clustered::consistency::ReadLevel,
    pub bounded_staleness_ms: u64,
}

impl Default for ReadConsistencyConfig {
    fn default() -> Self {
        ReadConsistencyConfig {
            read: crate::clustered::consistency::ReadLevel::Eventual,
            bounded_staleness_ms: 5000,
        }
    }
}

/// `[cluster.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub ca_cert_path: Option<PathBuf>,
    /// Development only: accept any peer certificate. Logged as a warning at every start.
    pub skip_verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            cert_path: "./conf/tls/cluster-cert.pem".into(),
            key_path: "./conf/tls/cluster-key.pem".into(),
            ca_cert_path: None,
            skip_verify: false,
        }
    }
}

/// `[cluster.health]`: heartbeat-based reachability, alive → suspect → dead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub heartbeat_interval_ms: u64,
    /// Missed heartbeats before a node is suspect.
    pub failure_threshold: u32,
    /// Time a node stays suspect before it is dead.
    pub suspect_timeout_ms: u64,
    pub on_node_failure: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            heartbeat_interval_ms: 1000,
            failure_threshold: 3,
            suspect_timeout_ms: 5000,
            on_node_failure: "rebalance".into(),
        }
    }
}

/// `[federation]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    pub discovery: DiscoveryConfig,
    pub query: QueryConfig,
    pub consistency: ReadConsistencyConfig,
}

/// Where the other nodes come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryBackend {
    #[default]
    Static,
    Dns,
    Gossip,
}

/// `[federation.discovery]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub backend: DiscoveryBackend,
    /// Static: node addresses, together with `cluster.seed_nodes`.
    pub nodes: Vec<String>,
    /// DNS: a name with SRV records (first label starts with `_`) or A/AAAA records (a
    /// Kubernetes headless service, optionally written `name:port`).
    pub dns_name: Option<String>,
    pub dns_refresh_interval_secs: u64,
    /// DNS: "ip:port" of the DNS server to ask; the system resolver configuration when unset.
    pub dns_server: Option<String>,
    pub gossip_port: u16,
    pub gossip_seeds: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            backend: DiscoveryBackend::Static,
            nodes: Vec::new(),
            dns_name: None,
            dns_refresh_interval_secs: 30,
            dns_server: None,
            gossip_port: 7946,
            gossip_seeds: Vec::new(),
        }
    }
}

impl DiscoveryConfig {
    /// Checks the values that do not depend on the backend.
    pub fn validate(&self) -> Result<()> {
        if self.dns_refresh_interval_secs == 0 {
            return Err(ClusterError::Config(
                "federation.discovery.dns_refresh_interval_secs must be at least 1 (seconds between DNS lookups); the default is 30".into(),
            ));
        }
        self.dns_server_addr().map(|_| ())
    }

    /// `dns_server` parsed, `None` when unset (use the system resolver).
    pub fn dns_server_addr(&self) -> Result<Option<SocketAddr>> {
        match &self.dns_server {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|_| {
                ClusterError::Config(format!(
                    "federation.discovery.dns_server {s:?} is not an \"ip:port\" address (e.g. \"10.96.0.10:53\" or \"[fd00::10]:53\"); remove it to use the system resolver"
                ))
            }),
        }
    }
}

/// `[federation.query]`: what a federated search does when shards fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    pub allow_partial_results: bool,
    pub partial_results_timeout_ms: u64,
    pub min_successful_shards: u32,
    /// Vector queries fetch `k × shard_oversample` candidates from each shard (1 to 16).
    pub shard_oversample: f32,
    /// Collection-wide BM25 statistics kept per (collection, query); 0 disables the cache.
    /// An entry is used only while every shard still answers from the searcher it described.
    pub stats_cache_entries: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            allow_partial_results: true,
            partial_results_timeout_ms: 5000,
            min_successful_shards: 1,
            shard_oversample: 2.0,
            stats_cache_entries: 10_000,
        }
    }
}

fn is_wildcard(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    matches!(host.trim_matches(['[', ']']), "0.0.0.0" | "::" | "")
}

impl ClusterConfig {
    /// Checks the settings and fills the derived defaults (node id, advertise address).
    pub fn resolve(mut self) -> Result<Self> {
        if self.node_id.trim().is_empty() && self.raft {
            // Spec 002: the host name, which stays the same across restarts.
            self.node_id = host_name().ok_or_else(|| {
                ClusterError::Config(
                    "this machine has no host name to name the node by; set --node-id".into(),
                )
            })?;
        }
        if self.node_id.trim().is_empty() {
            self.node_id = uuid::Uuid::new_v4().to_string();
        }
        if self.raft && self.advertise_addr.is_none() && is_wildcard(&self.bind_addr) {
            // `--raft-addr :7332`: other nodes reach this one by its name, as in spec 002's
            // compose file and a StatefulSet's headless service.
            let port = self.bind_addr.rsplit_once(':').map_or("9080", |(_, p)| p);
            self.advertise_addr = Some(format!("{}:{port}", self.node_id));
        }
        match &self.advertise_addr {
            Some(a) if is_wildcard(a) => {
                return Err(ClusterError::Config(format!(
                    "cluster.advertise_addr {a:?} is a wildcard address; set it to a name or address other nodes can reach"
                )))
            }
            Some(_) => {}
            None if is_wildcard(&self.bind_addr) => {
                return Err(ClusterError::Config(format!(
                    "cluster.advertise_addr is required when cluster.bind_addr is {:?}: other nodes cannot reach a wildcard address. Set advertise_addr = \"<this node's hostname>:{}\"",
                    self.bind_addr,
                    self.bind_addr.rsplit_once(':').map_or("9080", |(_, p)| p)
                )))
            }
            None => self.advertise_addr = Some(self.bind_addr.clone()),
        }
        if self.max_connections == 0 {
            return Err(ClusterError::Config(
                "cluster.max_connections must be at least 1".into(),
            ));
        }
        if self.tls.enabled && !self.tls.skip_verify && self.tls.ca_cert_path.is_none() {
            return Err(ClusterError::Config(
                "cluster.tls.ca_cert_path is required to verify peers; generate one with scripts/generate-certs.sh, or set skip_verify = true for local development".into(),
            ));
        }
        Ok(self)
    }
}

/// The machine's host name, as the kernel or the environment gives it.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_user_guide() {
        let c = ClusterConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.bind_addr, "0.0.0.0:9080");
        assert_eq!(
            (
                c.connect_timeout_ms,
                c.request_timeout_ms,
                c.max_connections
            ),
            (5000, 30000, 10)
        );
        assert!(c.tls.enabled && !c.tls.skip_verify);
        assert_eq!(
            c.tls.cert_path,
            PathBuf::from("./conf/tls/cluster-cert.pem")
        );
        let q = QueryConfig::default();
        assert!(q.allow_partial_results);
        assert_eq!(
            (q.partial_results_timeout_ms, q.min_successful_shards),
            (5000, 1)
        );
        assert_eq!(HealthConfig::default().heartbeat_interval_ms, 1000);
        assert_eq!(DiscoveryConfig::default().dns_refresh_interval_secs, 30);
        let p = PartitionConfig::default();
        assert_eq!(p.partition_behavior, PartitionBehavior::ReadOnly);
        assert!(p.allow_stale_reads);
        assert_eq!(ReadConsistencyConfig::default().bounded_staleness_ms, 5000);
    }

    #[test]
    fn spec_001_consistency_sections_parse_and_a_wrong_value_is_named() {
        let c: ClusterConfig = toml_like(
            r#"
            [consistency]
            min_nodes_for_write = "quorum"
            partition_behavior = "read_only"
            allow_stale_reads = false
        "#,
        );
        assert!(!c.consistency.allow_stale_reads);
        let f: FederationConfig = toml_like(
            r#"
            [consistency]
            read = "read-your-writes"
            bounded_staleness_ms = 200
        "#,
        );
        assert_eq!(
            f.consistency.read,
            crate::clustered::consistency::ReadLevel::ReadYourWrites
        );
        let bad = toml::from_str::<ClusterConfig>("[consistency]\npartition_behavior = \"ignore\"")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("read_only"), "{bad}");
    }

    #[test]
    fn wildcard_bind_needs_an_advertise_address() {
        let mut c = ClusterConfig::default();
        c.tls.skip_verify = true;
        let err = c.clone().resolve().unwrap_err().to_string();
        assert!(err.contains("advertise_addr is required"), "{err}");
        c.advertise_addr = Some("prism-node1:9080".into());
        let resolved = c.resolve().unwrap();
        assert!(!resolved.node_id.is_empty());
        let mut local = ClusterConfig {
            bind_addr: "127.0.0.1:9080".into(),
            ..Default::default()
        };
        local.tls.ca_cert_path = Some("ca.pem".into());
        assert_eq!(
            local.resolve().unwrap().advertise_addr.as_deref(),
            Some("127.0.0.1:9080")
        );
    }

    #[test]
    fn the_user_guide_example_parses() {
        let text = r#"
            enabled = true
            node_id = "node-1"
            bind_addr = "0.0.0.0:9080"
            advertise_addr = "prism-node1:9080"
            seed_nodes = ["prism-node2:9080", "prism-node3:9080"]
            connect_timeout_ms = 5000
            request_timeout_ms = 30000

            [tls]
            enabled = true
            cert_path = "/conf/tls/node-cert.pem"
            key_path = "/conf/tls/node-key.pem"
            ca_cert_path = "/conf/tls/ca-cert.pem"
            skip_verify = false
        "#;
        let c: ClusterConfig = toml_like(text);
        assert_eq!(c.seed_nodes.len(), 2);
        assert_eq!(c.resolve().unwrap().node_id, "node-1");
    }

    #[test]
    fn discovery_keys_are_checked() {
        let text = r#"
            [discovery]
            backend = "dns"
            dns_name = "_prism._udp.prism.svc.cluster.local"
            dns_server = "10.96.0.10:53"
        "#;
        let f: FederationConfig = toml::from_str(text).unwrap();
        assert_eq!(f.discovery.backend, DiscoveryBackend::Dns);
        assert_eq!(f.discovery.dns_refresh_interval_secs, 30);
        assert_eq!(
            f.discovery.dns_server_addr().unwrap(),
            Some("10.96.0.10:53".parse().unwrap())
        );
        f.discovery.validate().unwrap();
        assert_eq!(DiscoveryConfig::default().dns_server_addr().unwrap(), None);

        let bad = DiscoveryConfig {
            dns_server: Some("dns.local".into()),
            ..Default::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("dns_server") && err.contains("ip:port"),
            "{err}"
        );
        let zero = DiscoveryConfig {
            dns_refresh_interval_secs: 0,
            ..Default::default()
        };
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("dns_refresh_interval_secs"), "{err}");
        assert!(toml::from_str::<FederationConfig>("[discovery]\ndns_servers = \"x\"").is_err());
    }

    fn toml_like<T: serde::de::DeserializeOwned>(text: &str) -> T {
        toml::from_str(text).unwrap()
    }
}
