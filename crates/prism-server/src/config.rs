//! Configuration: one typed tree read from `prism.toml`, overridden by `PRISM_*` environment
//! variables, overridden by command-line flags. Every setting has a default; see
//! `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command-line flags of `prism-server`. Each also reads a `PRISM_*` environment variable.
#[derive(Debug, Parser, Default)]
#[command(
    name = "prism-server",
    version,
    about = "Prism: hybrid BM25 + vector search server"
)]
pub struct Cli {
    /// Configuration file. Default: ./prism.toml when it exists.
    #[arg(long, env = "PRISM_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen host. Default 127.0.0.1.
    #[arg(long, env = "PRISM_HOST")]
    pub host: Option<String>,
    /// HTTP listen port. Default 3000.
    #[arg(long, env = "PRISM_PORT")]
    pub port: Option<u16>,
    /// Where collections are stored. Default ./data.
    #[arg(long, env = "PRISM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of YAML/JSON collection schemas created at start-up when missing.
    #[arg(long, env = "PRISM_SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,
    /// Repair: open a collection whose log has a corrupt entry by cutting the log there. That
    /// entry and every later one are lost, and the server logs which. Without it, such a
    /// collection stays unavailable and the rest of the node serves.
    #[arg(long)]
    pub truncate_corrupt_log: bool,
    /// Cluster mode (spec 002): Raft for the metadata and every shard (`[cluster] raft`).
    #[arg(long, env = "PRISM_CLUSTER")]
    pub cluster: bool,
    /// The node's mutual-TLS QUIC address for Raft and search calls (`[cluster] bind_addr`).
    /// A bare `:port` listens on every interface.
    #[arg(long, env = "PRISM_RAFT_ADDR")]
    pub raft_addr: Option<String>,
    /// Nodes to join through, `host:port,...` (`[cluster] seed_nodes`).
    #[arg(long, env = "PRISM_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Start a new cluster with this node alone (first node only; ignored once the node
    /// belongs to a cluster) (`[cluster] bootstrap`).
    #[arg(long, env = "PRISM_BOOTSTRAP")]
    pub bootstrap: bool,
    /// This node's name, which its certificate names. Default: the host name
    /// (`[cluster] node_id`).
    #[arg(long, env = "PRISM_NODE_ID")]
    pub node_id: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    /// Search threads, deadlines and memory.
    pub search: SearchConfig,
    /// Log level and format, and whether `/metrics` is served (the original Prism's section).
    pub observability: ObservabilityConfig,
    /// The original Prism's API keys, roles and audit log: not implemented, so accepted only
    /// while disabled (see [`Config::unimplemented`]).
    pub security: Option<SecurityConfig>,
    #[cfg(feature = "cluster")]
    pub cluster: prism_cluster::config::ClusterConfig,
    #[cfg(feature = "cluster")]
    pub federation: prism_cluster::config::FederationConfig,
    /// Accepted without the `cluster` feature so that one file serves every build.
    #[cfg(not(feature = "cluster"))]
    pub cluster: Option<toml::Value>,
    #[cfg(not(feature = "cluster"))]
    pub federation: Option<toml::Value>,
    /// The file these settings were read from, if any.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP listen address, `host:port`.
    pub bind_addr: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a client may take to send a request's headers; slower connections are closed.
    pub header_read_timeout_ms: u64,
    /// Longest a client may take to send a request's body; slower requests get 408.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight that sends nothing for this long is closed
    /// (before its first request, `header_read_timeout_ms` applies).
    pub idle_timeout_ms: u64,
    /// Most open client connections. Past it, the connection idle the longest is closed to
    /// make room, or the new one is refused if every connection has a request in flight.
    /// Unset: what the open-file limit leaves beside the collections.
    pub max_connections: Option<usize>,
    /// What all requests in flight may hold together (bulk bodies as they are parsed,
    /// searches); past it, requests get `429 circuit_breaking`, and one that can never fit
    /// `413 request_too_large`. Unset: a quarter of the machine's memory, and at most a third
    /// of the address-space limit (`ulimit -v`) when one is set.
    pub max_in_flight_bytes: Option<u64>,
    /// Cross-origin requests from browsers.
    pub cors: CorsConfig,
    /// HTTPS on the API: not implemented, so accepted only while disabled.
    pub tls: Option<UnimplementedSection>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_addr: "127.0.0.1:3000".into(),
            max_body_bytes: 100 << 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: None,
            max_in_flight_bytes: None,
            cors: CorsConfig::default(),
            tls: None,
        }
    }
}

/// `[server.cors]`: which browser origins may call the API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    pub enabled: bool,
    /// Allowed origins (`https://app.example.com`); `"*"` allows any.
    pub origins: Vec<String>,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            enabled: false,
            origins: vec!["*".into()],
        }
    }
}

/// A section of the original Prism's configuration that Prism does not implement: its keys
/// are kept only to say which section it is.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct UnimplementedSection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(flatten)]
    pub rest: toml::Table,
}

/// `[security]` and `[security.audit]` of the original Prism.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct SecurityConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub audit: Option<UnimplementedSection>,
    #[serde(flatten)]
    pub rest: toml::Table,
}

/// `[observability]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// A tracing filter (`info`, `info,prism_cluster=debug`); `PRISM_LOG` wins. Default `info`.
    pub log_level: String,
    /// `text` or `json` (one JSON object a line). Default `text`.
    pub log_format: String,
    /// Serve Prometheus metrics on `/metrics`. Default true.
    pub metrics_enabled: bool,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            log_level: "info".into(),
            log_format: "text".into(),
            metrics_enabled: true,
        }
    }
}

impl Config {
    /// The original Prism's sections this server does not implement: the names of those
    /// present and disabled (to warn about once), or an error for one that is enabled, since
    /// ignoring `[server.tls]` or `[security]` would leave the API open while the operator
    /// believes it is protected.
    pub fn unimplemented(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut disabled = Vec::new();
        let mut check = |name: &'static str, enabled: bool, what: &str| {
            if enabled {
                anyhow::bail!("[{name}] enabled = true: {what}; set enabled = false");
            }
            disabled.push(name);
            Ok(())
        };
        if let Some(tls) = &self.server.tls {
            check(
                "server.tls",
                tls.enabled,
                "Prism does not serve HTTPS yet. Terminate TLS in a reverse proxy (nginx, Caddy, Envoy) in front of it",
            )?;
        }
        if let Some(security) = &self.security {
            check(
                "security",
                security.enabled,
                "Prism has no API keys or roles yet. Restrict access at the network (bind to 127.0.0.1, or a proxy that authenticates)",
            )?;
            if let Some(audit) = &security.audit {
                check(
                    "security.audit",
                    audit.enabled,
                    "Prism writes no audit log yet. Log requests in a reverse proxy",
                )?;
            }
        }
        Ok(disabled)
    }
}

/// `[search]`: the pool searches run on, their deadlines and their memory.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Threads that run searches, apart from the async workers; one collection's searches
    /// use all but one of them. Unset: one per core, plus one (at least 2).
    pub threads: Option<usize>,
    /// Searches that may wait for a thread; past it, `429 overloaded`.
    pub queue_size: usize,
    /// The deadline of a search that names no `timeout`.
    pub default_timeout_ms: u64,
    /// The longest `timeout` a search may ask for.
    pub max_timeout_ms: u64,
    /// What one search's aggregations may hold.
    pub aggregation_memory_bytes: u64,
    /// Most buckets one aggregation may return.
    pub max_buckets: u32,
    /// How long a search may first run on the async worker that received it, sparing the
    /// hand-off to a search thread, when its collection's searches are usually short. A
    /// search still running after it moves to the pool. 0: every search goes to the pool.
    pub inline_slice_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        let limits = prism_core::search::budget::SearchLimits::default();
        SearchConfig {
            threads: None,
            queue_size: 256,
            default_timeout_ms: limits.default_timeout.as_millis() as u64,
            max_timeout_ms: limits.max_timeout.as_millis() as u64,
            aggregation_memory_bytes: limits.aggregation_memory_bytes,
            max_buckets: limits.max_buckets,
            inline_slice_ms: 5,
        }
    }
}

impl SearchConfig {
    pub fn limits(&self) -> anyhow::Result<prism_core::search::budget::SearchLimits> {
        if self.queue_size == 0 {
            anyhow::bail!("search.queue_size = 0 would refuse every search; set it to at least 1");
        }
        if self.default_timeout_ms == 0 || self.default_timeout_ms > self.max_timeout_ms {
            anyhow::bail!(
                "search.default_timeout_ms = {} must be positive and at most search.max_timeout_ms = {}",
                self.default_timeout_ms,
                self.max_timeout_ms
            );
        }
        Ok(prism_core::search::budget::SearchLimits {
            default_timeout: Duration::from_millis(self.default_timeout_ms),
            max_timeout: Duration::from_millis(self.max_timeout_ms),
            aggregation_memory_bytes: self.aggregation_memory_bytes.max(1 << 20),
            max_buckets: self.max_buckets.max(1),
        })
    }

    /// Search threads: as configured, else one per core plus the one kept for other
    /// collections than the busiest.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) + 1)
            .max(2)
    }

    /// How long a search may run inline, and how many may at once: half the async workers
    /// (one per core), rounded down, so that the others stay free (none on one core).
    pub fn inline(&self) -> (usize, Duration) {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        (workers / 2, Duration::from_millis(self.inline_slice_ms))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub schemas_dir: Option<PathBuf>,
    /// How often writes become searchable.
    pub refresh_interval_ms: u64,
    /// How often changed vector indexes are saved.
    pub vector_checkpoint_interval_ms: u64,
    /// Vectors inserted since the last save that make the next refresh save.
    pub vector_checkpoint_vectors: usize,
    /// Size of a shard log segment.
    pub log_segment_bytes: u64,
    /// Indexing memory per shard.
    pub writer_memory_bytes: usize,
    /// Most collections this node holds. Unset: as many as the process limits allow.
    pub max_collections: Option<usize>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            schemas_dir: None,
            refresh_interval_ms: 1000,
            vector_checkpoint_interval_ms: 10_000,
            vector_checkpoint_vectors: 10_000,
            log_segment_bytes: 16 << 20,
            writer_memory_bytes: 128 << 20,
            max_collections: None,
        }
    }
}

impl StorageConfig {
    pub fn shard_config(&self) -> prism_core::shard::ShardConfig {
        prism_core::shard::ShardConfig {
            refresh_interval: Duration::from_millis(self.refresh_interval_ms.max(1)),
            vector_checkpoint_interval: Duration::from_millis(self.vector_checkpoint_interval_ms),
            vector_checkpoint_vectors: self.vector_checkpoint_vectors,
            log_segment_bytes: self.log_segment_bytes.max(1 << 20),
            writer_memory_bytes: self.writer_memory_bytes.max(15 << 20),
            ..Default::default()
        }
    }
}

/// Reads the configuration: file, then environment, then flags.
pub fn load(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    // The original Prism reads PRISM_CONFIG_PATH; PRISM_CONFIG (or --config) wins over it.
    let path = match (&cli.config, env("PRISM_CONFIG_PATH")) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        (None, _) => Some(PathBuf::from("prism.toml")).filter(|p| p.exists()),
    };
    let mut config = match &path {
        Some(p) => from_file(p)?,
        None => Config::default(),
    };
    config.file = path;
    apply_env(&mut config, env)?;
    apply_cli(&mut config, cli)?;
    if !matches!(config.observability.log_format.as_str(), "text" | "json") {
        anyhow::bail!(
            "observability.log_format = {:?}: use \"text\" or \"json\"",
            config.observability.log_format
        );
    }
    config.unimplemented()?;
    Ok(config)
}

fn from_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
}

fn parse_env<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("environment variable {name}={value:?} is invalid: {e}"))
}

/// Environment overrides for settings that have no flag of their own. Flags' variables
/// (`PRISM_HOST`, ...) are read by clap, so they rank above the file too.
fn apply_env(config: &mut Config, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(v) = env("PRISM_BIND_ADDR") {
        config.server.bind_addr = v;
    }
    if let Some(v) = env("PRISM_MAX_BODY_BYTES") {
        config.server.max_body_bytes = parse_env("PRISM_MAX_BODY_BYTES", &v)?;
    }
    if let Some(v) = env("PRISM_HEADER_READ_TIMEOUT_MS") {
        config.server.header_read_timeout_ms = parse_env("PRISM_HEADER_READ_TIMEOUT_MS", &v)?;
    }
    if let Some(v) = env("PRISM_BODY_READ_TIMEOUT_MS") {
        config.server.body_read_timeout_ms = parse_env("PRISM_BODY_READ_TIMEOUT_MS", &v)?;
    }
    if let Some(v) = env("PRISM_IDLE_TIMEOUT_MS") {
        config.server.idle_timeout_ms = parse_env("PRISM_IDLE_TIMEOUT_MS", &v)?;
    }
    if let Some(v) = env("PRISM_MAX_CONNECTIONS") {
        config.server.max_connections = Some(parse_env("PRISM_MAX_CONNECTIONS", &v)?);
    }
    if let Some(v) = env("PRISM_MAX_IN_FLIGHT_BYTES") {
        config.server.max_in_flight_bytes = Some(parse_env("PRISM_MAX_IN_FLIGHT_BYTES", &v)?);
    }
    if let Some(v) = env("PRISM_SEARCH_THREADS") {
        config.search.threads = Some(parse_env("PRISM_SEARCH_THREADS", &v)?);
    }
    if let Some(v) = env("PRISM_SEARCH_QUEUE_SIZE") {
        config.search.queue_size = parse_env("PRISM_SEARCH_QUEUE_SIZE", &v)?;
    }
    if let Some(v) = env("PRISM_SEARCH_DEFAULT_TIMEOUT_MS") {
        config.search.default_timeout_ms = parse_env("PRISM_SEARCH_DEFAULT_TIMEOUT_MS", &v)?;
    }
    if let Some(v) = env("PRISM_SEARCH_INLINE_SLICE_MS") {
        config.search.inline_slice_ms = parse_env("PRISM_SEARCH_INLINE_SLICE_MS", &v)?;
    }
    if let Some(v) = env("PRISM_SEARCH_MAX_TIMEOUT_MS") {
        config.search.max_timeout_ms = parse_env("PRISM_SEARCH_MAX_TIMEOUT_MS", &v)?;
    }
    if let Some(v) = env("PRISM_REFRESH_INTERVAL_MS") {
        config.storage.refresh_interval_ms = parse_env("PRISM_REFRESH_INTERVAL_MS", &v)?;
    }
    if let Some(v) = env("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS") {
        config.storage.vector_checkpoint_interval_ms =
            parse_env("PRISM_VECTOR_CHECKPOINT_INTERVAL_MS", &v)?;
    }
    if let Some(v) = env("PRISM_VECTOR_CHECKPOINT_VECTORS") {
        config.storage.vector_checkpoint_vectors =
            parse_env("PRISM_VECTOR_CHECKPOINT_VECTORS", &v)?;
    }
    if let Some(v) = env("PRISM_WRITER_MEMORY_BYTES") {
        config.storage.writer_memory_bytes = parse_env("PRISM_WRITER_MEMORY_BYTES", &v)?;
    }
    if let Some(v) = env("PRISM_LOG_SEGMENT_BYTES") {
        config.storage.log_segment_bytes = parse_env("PRISM_LOG_SEGMENT_BYTES", &v)?;
    }
    if let Some(v) = env("PRISM_MAX_COLLECTIONS") {
        config.storage.max_collections = Some(parse_env("PRISM_MAX_COLLECTIONS", &v)?);
    }
    Ok(())
}

fn apply_cli(config: &mut Config, cli: &Cli) -> anyhow::Result<()> {
    if cli.host.is_some() || cli.port.is_some() {
        let (host, port) = split_host_port(&config.server.bind_addr)?;
        let host = cli.host.clone().unwrap_or(host);
        let port = cli.port.unwrap_or(port);
        config.server.bind_addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
    }
    if let Some(d) = &cli.data_dir {
        config.storage.data_dir = d.clone();
    }
    if let Some(d) = &cli.schemas_dir {
        config.storage.schemas_dir = Some(d.clone());
    }
    if cli.cluster {
        config.cluster.enabled = true;
        config.cluster.raft = true;
    }
    if let Some(addr) = &cli.raft_addr {
        config.cluster.bind_addr = match addr.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => addr.clone(),
        };
    }
    if !cli.peers.is_empty() {
        config.cluster.seed_nodes = cli.peers.clone();
    }
    if cli.bootstrap {
        config.cluster.bootstrap = true;
    }
    if let Some(name) = &cli.node_id {
        config.cluster.node_id = name.clone();
    }
    Ok(())
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("server.bind_addr {addr:?} must be host:port"))?;
    let port = port
        .parse()
        .map_err(|_| anyhow::anyhow!("server.bind_addr {addr:?} has an invalid port"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_file_env_or_flags() {
        let dir = tempfile_dir();
        let cli = Cli {
            config: Some(dir.join("missing-is-not-used.toml")),
            ..Default::default()
        };
        assert!(
            load(&cli, no_env).is_err(),
            "a named config file must exist"
        );
        let config = load(&Cli::default(), no_env).unwrap();
        assert_eq!(config.server.bind_addr, "127.0.0.1:3000");
        assert_eq!(config.storage.data_dir, PathBuf::from("./data"));
        assert_eq!(config.storage.refresh_interval_ms, 1000);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("prism-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_override_env_which_overrides_file() {
        let dir = tempfile_dir();
        let path = dir.join("prism.toml");
        std::fs::write(
            &path,
            "[server]\nbind_addr = \"0.0.0.0:3000\"\n[storage]\ndata_dir = \"/file\"\nrefresh_interval_ms = 50\n[cluster]\nenabled = false\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "PRISM_REFRESH_INTERVAL_MS" => Some("200".to_string()),
            _ => None,
        };
        let cli = Cli {
            config: Some(path.clone()),
            port: Some(4000),
            data_dir: Some("/flag".into()),
            ..Default::default()
        };
        let config = load(&cli, env).unwrap();
        assert_eq!(config.server.bind_addr, "0.0.0.0:4000");
        assert_eq!(config.storage.data_dir, PathBuf::from("/flag"));
        assert_eq!(config.storage.refresh_interval_ms, 200);
        let file_only = load(
            &Cli {
                config: Some(path),
                ..Default::default()
            },
            no_env,
        )
        .unwrap();
        assert_eq!(file_only.storage.refresh_interval_ms, 50);
        assert_eq!(file_only.storage.data_dir, PathBuf::from("/file"));
    }

    #[test]
    fn the_original_prisms_config_path_variable_names_the_file() {
        let dir = tempfile_dir();
        let path = dir.join("original.toml");
        std::fs::write(&path, "[storage]\nrefresh_interval_ms = 70\n").unwrap();
        let named = path.to_string_lossy().to_string();
        let env = |k: &str| (k == "PRISM_CONFIG_PATH").then(|| named.clone());
        let config = load(&Cli::default(), env).unwrap();
        assert_eq!(config.file.as_deref(), Some(path.as_path()));
        assert_eq!(config.storage.refresh_interval_ms, 70);
        // --config (or PRISM_CONFIG, which clap reads into it) wins.
        let other = dir.join("other.toml");
        std::fs::write(&other, "[storage]\nrefresh_interval_ms = 80\n").unwrap();
        let cli = Cli {
            config: Some(other),
            ..Default::default()
        };
        assert_eq!(load(&cli, env).unwrap().storage.refresh_interval_ms, 80);
    }

    /// The original Prism's e2e configuration, every section it has present.
    const ORIGINAL: &str = "[storage]\ndata_dir = \"/data\"\n\n[server]\nbind_addr = \"0.0.0.0:3000\"\n\n[server.cors]\nenabled = true\norigins = [\"*\"]\n\n[server.tls]\nenabled = false\n\n[security]\nenabled = false\n\n[security.audit]\nenabled = false\n\n[observability]\nlog_level = \"info,prism_cluster=debug\"\nlog_format = \"json\"\nmetrics_enabled = true\n";

    fn load_text(name: &str, text: &str) -> anyhow::Result<Config> {
        let path = tempfile_dir().join(name);
        std::fs::write(&path, text).unwrap();
        load(
            &Cli {
                config: Some(path),
                ..Default::default()
            },
            no_env,
        )
    }

    #[test]
    fn the_original_prisms_config_loads_with_its_disabled_sections_named() {
        let config = load_text("original.toml", ORIGINAL).unwrap();
        assert!(config.server.cors.enabled);
        assert_eq!(config.server.cors.origins, vec!["*".to_string()]);
        assert_eq!(config.observability.log_format, "json");
        assert_eq!(config.observability.log_level, "info,prism_cluster=debug");
        assert_eq!(
            config.unimplemented().unwrap(),
            vec!["server.tls", "security", "security.audit"]
        );
        // Without those sections nothing is named.
        let plain = load_text("plain.toml", "[server]\nbind_addr = \"127.0.0.1:1\"\n").unwrap();
        assert!(plain.unimplemented().unwrap().is_empty());
    }

    #[test]
    fn an_enabled_section_prism_does_not_implement_is_refused() {
        for (section, enabled) in [
            (
                "server.tls",
                ORIGINAL.replace(
                    "[server.tls]\nenabled = false",
                    "[server.tls]\nenabled = true\ncert_path = \"c.pem\"",
                ),
            ),
            (
                "security",
                ORIGINAL.replace("[security]\nenabled = false", "[security]\nenabled = true"),
            ),
            (
                "security.audit",
                ORIGINAL.replace(
                    "[security.audit]\nenabled = false",
                    "[security.audit]\nenabled = true",
                ),
            ),
        ] {
            let error = load_text("enabled.toml", &enabled).unwrap_err().to_string();
            assert!(
                error.contains(&format!("[{section}] enabled = true"))
                    && error.contains("set enabled = false"),
                "{section}: {error}"
            );
        }
        let bad_format = ORIGINAL.replace("log_format = \"json\"", "log_format = \"xml\"");
        let error = load_text("format.toml", &bad_format)
            .unwrap_err()
            .to_string();
        assert!(error.contains("log_format"), "{error}");
    }

    #[test]
    fn typos_in_the_file_are_reported() {
        let dir = tempfile_dir();
        let path = dir.join("typo.toml");
        std::fs::write(&path, "[storage]\ndata_dri = \"x\"\n").unwrap();
        let err = load(
            &Cli {
                config: Some(path),
                ..Default::default()
            },
            no_env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
    }

    #[test]
    fn bad_env_values_are_reported() {
        let env = |k: &str| (k == "PRISM_MAX_BODY_BYTES").then(|| "lots".to_string());
        let err = load(&Cli::default(), env).unwrap_err();
        assert!(err.to_string().contains("PRISM_MAX_BODY_BYTES"), "{err}");
    }
}
