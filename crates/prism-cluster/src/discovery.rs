//! Node discovery: where the other nodes come from, and how that set changes.
//!
//! - [`StaticDiscovery`]: a fixed list (`federation.discovery.nodes` + `cluster.seed_nodes`).
//! - [`DnsDiscovery`]: SRV or A/AAAA records, looked up again every refresh interval.
//!
//! [`changes`] is the pure part: the events between two lookups.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, BoxStream, StreamExt};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{ClusterConfig, DiscoveryBackend, FederationConfig};
use crate::error::{ClusterError, Result};

/// A node as discovery sees it. `address` is what peers dial ("host:port"), kept as text so a
/// hostname survives for TLS server-name checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeInfo {
    pub address: String,
    /// Not known to the static and DNS backends yet: always `None` from them.
    pub zone: Option<String>,
}

impl NodeInfo {
    pub fn new(address: impl Into<String>) -> Self {
        NodeInfo {
            address: address.into(),
            zone: None,
        }
    }
}

/// A change of the node set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeJoined(NodeInfo),
    /// The address of the node that left.
    NodeLeft(String),
    /// Same address, other details (zone).
    NodeUpdated(NodeInfo),
}

/// Where the other nodes come from. Held as `Arc<dyn NodeDiscovery>`.
#[async_trait::async_trait]
pub trait NodeDiscovery: Send + Sync {
    /// The nodes right now (one lookup).
    async fn get_nodes(&self) -> Result<Vec<NodeInfo>>;

    /// Join events for the first set of nodes, then a join or leave event for every change seen
    /// at each refresh. Lookup failures are logged and keep the last known set: a DNS outage
    /// must not make every node leave. The stream does not end.
    fn watch(self: Arc<Self>) -> BoxStream<'static, ClusterEvent>;
}

/// The events that turn `previous` into `current`, both taken as sets (order and duplicates do
/// not matter). Leaves first, then joins, then updates, each sorted by address.
pub fn changes(previous: &[NodeInfo], current: &[NodeInfo]) -> Vec<ClusterEvent> {
    let before = by_address(previous);
    let after = by_address(current);
    let mut events: Vec<ClusterEvent> = before
        .keys()
        .filter(|a| !after.contains_key(*a))
        .map(|a| ClusterEvent::NodeLeft(a.to_string()))
        .collect();
    events.extend(
        after
            .iter()
            .filter(|(a, _)| !before.contains_key(*a))
            .map(|(_, n)| ClusterEvent::NodeJoined((*n).clone())),
    );
    events.extend(
        after
            .iter()
            .filter(|(a, n)| before.get(*a).is_some_and(|old| old != *n))
            .map(|(_, n)| ClusterEvent::NodeUpdated((*n).clone())),
    );
    events
}

/// One entry per address; among duplicates of an address the smallest wins, so the result does
/// not depend on the input order.
fn by_address(nodes: &[NodeInfo]) -> BTreeMap<&str, &NodeInfo> {
    let mut map: BTreeMap<&str, &NodeInfo> = BTreeMap::new();
    for n in nodes {
        map.entry(n.address.as_str())
            .and_modify(|old| *old = (*old).min(n))
            .or_insert(n);
    }
    map
}

/// Sorted and deduplicated, the shape every backend returns.
fn normalise(mut nodes: Vec<NodeInfo>) -> Vec<NodeInfo> {
    nodes.sort();
    nodes.dedup_by(|a, b| a.address == b.address);
    nodes
}

/// A fixed list of nodes.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    nodes: Vec<NodeInfo>,
}

impl StaticDiscovery {
    /// Blank entries are skipped; duplicates are removed.
    pub fn new<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = addresses
            .into_iter()
            .map(|a| a.as_ref().trim().to_string())
            .filter(|a| !a.is_empty())
            .map(NodeInfo::new)
            .collect();
        StaticDiscovery {
            nodes: normalise(nodes),
        }
    }
}

#[async_trait::async_trait]
impl NodeDiscovery for StaticDiscovery {
    async fn get_nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.nodes.clone())
    }

    fn watch(self: Arc<Self>) -> BoxStream<'static, ClusterEvent> {
        // Pending forever afterwards: a consumer that waits for the next change must not see
        // the end of the stream as "discovery stopped".
        stream::iter(changes(&[], &self.nodes))
            .chain(stream::pending())
            .boxed()
    }
}

/// Per DNS query; the resolver retries once more after that.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a whole lookup (retries, search domains), so a refresh can never hang.
const DNS_LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// Refresh interval while no node is known yet, so a cluster that starts before its DNS
/// records exist converges quickly.
const DNS_EMPTY_RETRY: Duration = Duration::from_secs(1);
/// During a run of failed lookups, one warning per this long; the rest go to debug.
const DNS_WARN_EVERY: Duration = Duration::from_secs(60);
/// Port for A/AAAA records when neither `dns_name` nor the cluster addresses give one.
const DEFAULT_PORT: u16 = 9080;

#[derive(Debug, Clone, PartialEq, Eq)]
enum DnsTarget {
    /// SRV records carry host names and ports.
    Srv(String),
    /// A/AAAA records carry addresses; the port comes from configuration.
    Host { name: String, port: u16 },
}

/// Nodes from DNS records, looked up again every refresh interval.
pub struct DnsDiscovery {
    resolver: TokioResolver,
    target: DnsTarget,
    refresh: Duration,
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("target", &self.target)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl DnsDiscovery {
    /// `dns_name` starting with `_` (e.g. `_prism._udp.prism.svc.cluster.local`) is an SRV
    /// name; anything else is looked up as A/AAAA, with the port from `name:port` or else
    /// `default_port`. `dns_server` is the server to ask; `None` reads /etc/resolv.conf.
    pub fn new(
        dns_name: &str,
        default_port: u16,
        refresh: Duration,
        dns_server: Option<SocketAddr>,
    ) -> Result<Self> {
        if refresh.is_zero() {
            return Err(ClusterError::Config(
                "federation.discovery.dns_refresh_interval_secs must be at least 1".into(),
            ));
        }
        let target = parse_dns_name(dns_name, default_port)?;
        let (mut builder, custom_server) = match dns_server {
            Some(addr) => {
                // UDP, and TCP on the same port for truncated answers.
                let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                let config = ResolverConfig::from_parts(None, Vec::new(), servers);
                (
                    TokioResolver::builder_with_config(config, TokioConnectionProvider::default()),
                    true,
                )
            }
            None => (
                TokioResolver::builder_tokio().map_err(|e| {
                    ClusterError::Config(format!(
                        "cannot read the system DNS configuration (/etc/resolv.conf): {e}; set federation.discovery.dns_server = \"<ip>:53\""
                    ))
                })?,
                false,
            ),
        };
        let opts = builder.options_mut();
        opts.timeout = DNS_QUERY_TIMEOUT;
        opts.attempts = 1;
        // No caching: every refresh must see record changes, whatever the records' TTL.
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        if custom_server {
            // The user named the server to ask: /etc/hosts must not answer instead.
            opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        }
        Ok(DnsDiscovery {
            resolver: builder.build(),
            target,
            refresh,
        })
    }

    fn name(&self) -> &str {
        match &self.target {
            DnsTarget::Srv(name) | DnsTarget::Host { name, .. } => name,
        }
    }

    /// One lookup. An empty answer (NXDOMAIN, no records) is `Ok(vec![])`; SERVFAIL, timeouts
    /// and unreachable servers are errors.
    async fn lookup(&self) -> Result<Vec<NodeInfo>> {
        self.resolver.clear_cache();
        let lookup = async {
            match &self.target {
                DnsTarget::Srv(name) => match self.resolver.srv_lookup(name.as_str()).await {
                    Ok(found) => Ok(found
                        .iter()
                        // Target "." means "no service here" (RFC 2782).
                        .filter(|srv| !srv.target().is_root())
                        .map(|srv| {
                            let host = srv.target().to_ascii();
                            NodeInfo::new(format!("{}:{}", host.trim_end_matches('.'), srv.port()))
                        })
                        .collect()),
                    Err(e) if is_empty_answer(&e) => Ok(Vec::new()),
                    Err(e) => Err(e),
                },
                DnsTarget::Host { name, port } => {
                    // A and AAAA separately: one failing must fail the lookup, not shrink it.
                    let (v4, v6) = tokio::join!(
                        self.resolver.ipv4_lookup(name.as_str()),
                        self.resolver.ipv6_lookup(name.as_str())
                    );
                    let mut ips: Vec<IpAddr> = match v4 {
                        Ok(found) => found.iter().map(|a| IpAddr::V4(a.0)).collect(),
                        Err(e) if is_empty_answer(&e) => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    match v6 {
                        Ok(found) => ips.extend(found.iter().map(|a| IpAddr::V6(a.0))),
                        Err(e) if is_empty_answer(&e) => {}
                        Err(e) => return Err(e),
                    }
                    Ok(ips
                        .into_iter()
                        .map(|ip| NodeInfo::new(SocketAddr::new(ip, *port).to_string()))
                        .collect())
                }
            }
        };
        let failed = |reason: String| {
            ClusterError::Discovery(format!("DNS lookup of {:?} failed: {reason}", self.name()))
        };
        match tokio::time::timeout(DNS_LOOKUP_DEADLINE, lookup).await {
            Ok(Ok(nodes)) => Ok(normalise(nodes)),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "no answer within {} s",
                DNS_LOOKUP_DEADLINE.as_secs()
            ))),
        }
    }
}

/// The server answered, and there is nothing: as opposed to SERVFAIL, REFUSED or no answer,
/// which hickory also reports as `NoRecordsFound` but with another response code.
fn is_empty_answer(e: &ResolveError) -> bool {
    e.proto().is_some_and(|p| {
        matches!(
            p.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NoError | ResponseCode::NXDomain,
                ..
            }
        )
    })
}

fn parse_dns_name(dns_name: &str, default_port: u16) -> Result<DnsTarget> {
    let text = dns_name.trim();
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => {
            let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ClusterError::Config(format!(
                    "federation.discovery.dns_name {dns_name:?}: the part after ':' must be a port number (1-65535)"
                ))
            })?;
            (name, Some(port))
        }
        None => (text, None),
    };
    if name.is_empty() || name.contains(':') {
        return Err(ClusterError::Config(format!(
            "federation.discovery.dns_name {dns_name:?} is not a DNS name; set it to e.g. \"prism-headless.default.svc.cluster.local\" or \"_prism._udp.prism.default.svc.cluster.local\""
        )));
    }
    if name.starts_with('_') {
        if port.is_some() {
            return Err(ClusterError::Config(format!(
                "federation.discovery.dns_name {dns_name:?} is an SRV name, whose records carry the ports; remove \":{}\"",
                port.unwrap_or_default()
            )));
        }
        return Ok(DnsTarget::Srv(name.to_string()));
    }
    Ok(DnsTarget::Host {
        name: name.to_string(),
        port: port.unwrap_or(default_port),
    })
}

/// Port of "host:port", if it has one.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// State of a DNS watch between two events.
struct DnsWatch {
    discovery: Arc<DnsDiscovery>,
    known: Vec<NodeInfo>,
    pending: VecDeque<ClusterEvent>,
    started: bool,
    failures: u32,
    last_warning: Option<Instant>,
}

impl DnsWatch {
    async fn next_event(mut self) -> Option<(ClusterEvent, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.started {
                let wait = if self.known.is_empty() {
                    DNS_EMPTY_RETRY.min(self.discovery.refresh)
                } else {
                    self.discovery.refresh
                };
                tokio::time::sleep(wait).await;
            }
            self.started = true;
            self.refresh().await;
        }
    }

    async fn refresh(&mut self) {
        let name = self.discovery.name().to_string();
        match self.discovery.lookup().await {
            Ok(nodes) if !nodes.is_empty() => {
                if self.failures > 0 {
                    tracing::info!(dns_name = %name, failures = self.failures, "DNS discovery answers again");
                }
                self.failures = 0;
                self.last_warning = None;
                self.pending.extend(changes(&self.known, &nodes));
                self.known = nodes;
            }
            // Every live node is in its own records, so "none" means a DNS problem or records
            // not published yet, not that every node left.
            Ok(_) => self.failed(&name, "the name has no records".to_string()),
            Err(e) => self.failed(&name, e.to_string()),
        }
    }

    fn failed(&mut self, name: &str, reason: String) {
        self.failures += 1;
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= DNS_WARN_EVERY);
        if due {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                dns_name = %name,
                failures = self.failures,
                known_nodes = self.known.len(),
                "DNS discovery: {reason}; keeping the last known nodes and retrying. Check that the name exists and the DNS server answers (federation.discovery.dns_name, dns_server)"
            );
        } else {
            tracing::debug!(dns_name = %name, failures = self.failures, "DNS discovery: {reason}");
        }
    }
}

#[async_trait::async_trait]
impl NodeDiscovery for DnsDiscovery {
    async fn get_nodes(&self) -> Result<Vec<NodeInfo>> {
        self.lookup().await
    }

    fn watch(self: Arc<Self>) -> BoxStream<'static, ClusterEvent> {
        let state = DnsWatch {
            discovery: self,
            known: Vec::new(),
            pending: VecDeque::new(),
            started: false,
            failures: 0,
            last_warning: None,
        };
        // Driven by the consumer: dropping the stream stops the lookups, no task is left over.
        stream::unfold(state, DnsWatch::next_event).boxed()
    }
}

/// The discovery backend of `[federation.discovery]`.
pub fn from_config(
    cluster: &ClusterConfig,
    federation: &FederationConfig,
) -> Result<Arc<dyn NodeDiscovery>> {
    let d = &federation.discovery;
    d.validate()?;
    match d.backend {
        DiscoveryBackend::Static => Ok(Arc::new(StaticDiscovery::new(
            d.nodes.iter().chain(&cluster.seed_nodes),
        ))),
        DiscoveryBackend::Dns => {
            let name = d.dns_name.as_deref().filter(|n| !n.trim().is_empty()).ok_or_else(|| {
                ClusterError::Config(
                    "federation.discovery.backend = \"dns\" needs federation.discovery.dns_name, e.g. \"prism-headless.default.svc.cluster.local\" (A/AAAA) or \"_prism._udp.prism.default.svc.cluster.local\" (SRV)".into(),
                )
            })?;
            let default_port = cluster
                .advertise_addr
                .as_deref()
                .and_then(port_of)
                .or_else(|| port_of(&cluster.bind_addr))
                .unwrap_or(DEFAULT_PORT);
            Ok(Arc::new(DnsDiscovery::new(
                name,
                default_port,
                Duration::from_secs(d.dns_refresh_interval_secs),
                d.dns_server_addr()?,
            )?))
        }
        DiscoveryBackend::Gossip => Err(ClusterError::Config(
            "gossip discovery is not available in this version; use static or dns (federation.discovery.backend)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(a: &str) -> NodeInfo {
        NodeInfo::new(a)
    }

    fn zoned(a: &str, z: &str) -> NodeInfo {
        NodeInfo {
            address: a.into(),
            zone: Some(z.into()),
        }
    }

    #[test]
    fn joins_from_nothing_sorted_by_address() {
        assert_eq!(
            changes(&[], &[n("c:1"), n("a:1"), n("b:1")]),
            vec![
                ClusterEvent::NodeJoined(n("a:1")),
                ClusterEvent::NodeJoined(n("b:1")),
                ClusterEvent::NodeJoined(n("c:1")),
            ]
        );
    }

    #[test]
    fn leaves_come_before_joins() {
        assert_eq!(
            changes(
                &[n("a:1"), n("b:1"), n("d:1")],
                &[n("b:1"), n("c:1"), n("a0:1")]
            ),
            vec![
                ClusterEvent::NodeLeft("a:1".into()),
                ClusterEvent::NodeLeft("d:1".into()),
                ClusterEvent::NodeJoined(n("a0:1")),
                ClusterEvent::NodeJoined(n("c:1")),
            ]
        );
        assert_eq!(
            changes(&[n("a:1"), n("b:1")], &[]),
            vec![
                ClusterEvent::NodeLeft("a:1".into()),
                ClusterEvent::NodeLeft("b:1".into()),
            ]
        );
    }

    #[test]
    fn unchanged_reordered_or_duplicated_sets_give_no_events() {
        let set = [n("a:1"), n("b:1"), n("c:1")];
        assert!(changes(&set, &set).is_empty());
        assert!(changes(&set, &[n("c:1"), n("a:1"), n("b:1")]).is_empty());
        assert!(changes(&set, &[n("b:1"), n("c:1"), n("a:1"), n("b:1"), n("a:1")]).is_empty());
        assert!(changes(&[], &[]).is_empty());
        assert_eq!(
            changes(&[n("a:1"), n("a:1")], &[n("b:1"), n("b:1")]),
            vec![
                ClusterEvent::NodeLeft("a:1".into()),
                ClusterEvent::NodeJoined(n("b:1")),
            ]
        );
    }

    #[test]
    fn a_new_zone_is_an_update_and_duplicates_resolve_alike_in_any_order() {
        assert_eq!(
            changes(&[n("a:1")], &[zoned("a:1", "z1")]),
            vec![ClusterEvent::NodeUpdated(zoned("a:1", "z1"))]
        );
        let one = changes(&[], &[zoned("a:1", "z2"), zoned("a:1", "z1")]);
        let other = changes(&[], &[zoned("a:1", "z1"), zoned("a:1", "z2")]);
        assert_eq!(one, other);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn dns_names_and_ports() {
        assert_eq!(
            parse_dns_name("_prism._udp.prism.svc.cluster.local", 9080).unwrap(),
            DnsTarget::Srv("_prism._udp.prism.svc.cluster.local".into())
        );
        assert_eq!(
            parse_dns_name("prism-headless:7000", 9080).unwrap(),
            DnsTarget::Host {
                name: "prism-headless".into(),
                port: 7000
            }
        );
        assert_eq!(
            parse_dns_name(" prism-headless ", 9081).unwrap(),
            DnsTarget::Host {
                name: "prism-headless".into(),
                port: 9081
            }
        );
        for bad in ["", ":80", "name:port", "name:0", "a:b:80", "_srv._udp.x:80"] {
            assert!(parse_dns_name(bad, 9080).is_err(), "{bad:?} accepted");
        }
        assert_eq!(port_of("prism-node1:9090"), Some(9090));
        assert_eq!(port_of("[::1]:9091"), Some(9091));
        assert_eq!(port_of("prism-node1"), None);
    }

    #[tokio::test]
    async fn static_nodes_are_the_union_of_nodes_and_seeds() {
        let cluster = ClusterConfig {
            seed_nodes: vec!["b:9080".into(), "a:9080".into()],
            ..Default::default()
        };
        let mut federation = FederationConfig::default();
        federation.discovery.nodes = vec!["a:9080".into(), " ".into(), "c:9080".into()];
        let d = from_config(&cluster, &federation).unwrap();
        let nodes = d.get_nodes().await.unwrap();
        assert_eq!(nodes, vec![n("a:9080"), n("b:9080"), n("c:9080")]);

        let mut events = d.watch();
        for expected in &nodes {
            assert_eq!(
                events.next().await,
                Some(ClusterEvent::NodeJoined(expected.clone()))
            );
        }
        // Pending, not ended.
        let next = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        assert!(
            next.is_err(),
            "static watch yielded {next:?} after the joins"
        );
    }
}
