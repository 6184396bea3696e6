//! Federation wiring: the QUIC transport serving this node's [`EngineHandler`], the discovery
//! and heartbeat loops feeding the [`Membership`] state machine, and the HTTP adapters of
//! `/cluster/...` over the [`Coordinator`]. Every decision (routing, merging, verdicts,
//! health) lives in `prism-cluster`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use prism_cluster::config::{ClusterConfig, FederationConfig, QueryConfig};
use prism_cluster::coordinator::status::ShardStatus;
use prism_cluster::coordinator::IndexSummary;
use prism_cluster::coordinator::{Coordinator, RpcShardClient};
use prism_cluster::discovery::{self, ClusterEvent};
use prism_cluster::membership::HealthReport;
use prism_cluster::membership::{Change, Event, Membership};
use prism_cluster::network::{HandlerService, LocalFirst, Network};
use prism_cluster::node::EngineHandler;
use prism_cluster::rpc::{Answer, Envelope, Request};
use prism_cluster::transport::{Transport, TransportConfig, PROTOCOL_VERSION};
use prism_core::engine::Engine;
use prism_core::search::SearchRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// The settings of one federated search, beside its search request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FederationSettings {
    /// Answer with the shards that did answer (`is_partial`) rather than fail. Default from
    /// `[federation.query]`.
    pub allow_partial_results: Option<bool>,
    /// Fewest shards that must answer. Default from `[federation.query]`.
    pub min_successful_shards: Option<u32>,
}

impl FederationSettings {
    /// The keys it takes out of a search body.
    pub const KEYS: &'static [&'static str] = &["allow_partial_results", "min_successful_shards"];
}

/// A search's read consistency, as its body names it (cluster mode; the header
/// `X-Prism-Consistency` and the configured default apply when it names none).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadSettings {
    /// `eventual`, `read_your_writes`, `bounded` or `strong`.
    pub consistency: Option<String>,
    /// The `consistency_token` of a write, for `read_your_writes`.
    pub consistency_token: Option<String>,
}

/// `POST /cluster/collections/{c}/search`: a [`SearchRequest`] whose object also takes the
/// keys of [`FederationSettings`]. Only its schema is used (`openapi::finish` merges the two).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FederatedSearchRequest {}

/// The answer to a federated search.
#[derive(Debug, Serialize, ToSchema)]
pub struct FederatedSearchResponse {
    pub results: Vec<prism_core::search::Hit>,
    pub total: u64,
    pub latency_ms: u64,
    /// Some shard did not answer; `shard_status` says which.
    pub is_partial: bool,
    /// Some shard reached the search's deadline: its part of `results`, `total` and
    /// `aggregations` is what it found until then.
    pub timed_out: bool,
    pub shard_status: ShardStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
}

/// The answer to a federated write.
#[derive(Debug, Serialize, ToSchema)]
pub struct FederatedIndexResponse {
    #[serde(flatten)]
    pub summary: IndexSummary,
    pub latency_ms: u64,
    /// The original Prism's name for `successful_docs`.
    pub indexed: u64,
    /// The original Prism's name for `failed_docs`.
    pub failed: u64,
}

/// A search body: the search request, the partial-result settings of this query over
/// `defaults`, and its read consistency.
pub fn parse_search(
    body: &[u8],
    defaults: &QueryConfig,
) -> ApiResult<(SearchRequest, QueryConfig, ReadSettings)> {
    let mut value: Value = prism_core::schema::parse_json_strict(body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    let Some(obj) = value.as_object_mut() else {
        // serde would read an array into the request by position.
        return Err(ApiError::bad_request(
            "invalid_query",
            "the search body must be a JSON object",
        ));
    };
    let mut read = ReadSettings::default();
    for (key, slot) in [
        ("consistency", &mut read.consistency),
        ("consistency_token", &mut read.consistency_token),
    ] {
        match obj.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => *slot = Some(text),
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("{key} must be a string, not {other}"),
                ))
            }
        }
    }
    let mut query = defaults.clone();
    let mut settings = serde_json::Map::new();
    for key in FederationSettings::KEYS {
        if let Some(v) = obj.remove(*key) {
            // One key at a time, so that a bad value is named.
            serde_json::from_value::<FederationSettings>(json!({ *key: v.clone() }))
                .map_err(|e| ApiError::bad_request("invalid_query", format!("{key}: {e}")))?;
            settings.insert(key.to_string(), v);
        }
    }
    let settings: FederationSettings = serde_json::from_value(Value::Object(settings))
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    if let Some(allow) = settings.allow_partial_results {
        query.allow_partial_results = allow;
    }
    if let Some(min) = settings.min_successful_shards {
        query.min_successful_shards = min;
    }
    let request = SearchRequest::from_json(value.to_string().as_bytes())?;
    Ok((request, query, read))
}

/// A federation has no replicated log to read at a level: only `eventual` reads.
fn refuse_consistency_in_a_federation(read: &ReadSettings) -> ApiResult<()> {
    let eventual = read
        .consistency
        .as_deref()
        .is_none_or(|level| level.eq_ignore_ascii_case("eventual"));
    if !eventual || read.consistency_token.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a federation reads at consistency eventual only; read_your_writes, bounded and \
             strong need cluster mode (--cluster)",
        ));
    }
    Ok(())
}

/// This node's view of the federation.
pub struct Cluster {
    transport: Arc<Transport>,
    network: Arc<LocalFirst>,
    coordinator: Coordinator<RpcShardClient<Arc<LocalFirst>>>,
    config: ClusterConfig,
    query: QueryConfig,
    self_addr: String,
    membership: Arc<RwLock<Membership>>,
}

impl Cluster {
    /// Starts the QUIC endpoint, takes the first member list from discovery, and starts the
    /// heartbeat and discovery loops.
    pub async fn start(
        config: ClusterConfig,
        federation: FederationConfig,
        engine: Arc<Engine>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let config = config.resolve()?;
        let discovery = discovery::from_config(&config, &federation)?;
        let query = federation.query;
        let tls = prism_cluster::tls::load(&config.tls)?;
        let bind = config.bind_addr.parse().map_err(|e| {
            anyhow::anyhow!(
                "cluster.bind_addr {:?} is not an address: {e}",
                config.bind_addr
            )
        })?;
        let handler = Arc::new(EngineHandler {
            engine,
            node_id: config.node_id.clone(),
            raft: None,
            groups: None,
        });
        let transport = Transport::start(
            TransportConfig {
                node_id: config.node_id.clone(),
                bind_addr: bind,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                max_connections: config.max_connections,
                protocol_version: PROTOCOL_VERSION,
                fault_delay: Duration::ZERO,
            },
            &tls,
            Arc::new(HandlerService(handler.clone())),
        )?;
        let self_addr = config
            .advertise_addr
            .clone()
            .expect("resolved config has an advertise address");
        let membership = Arc::new(RwLock::new(Membership::new(&config.node_id, &self_addr)));
        let knows_self = membership.clone();
        let network = Arc::new(LocalFirst {
            is_local: Box::new(move |to| knows_self.read().self_key() == to.as_str()),
            local: handler,
            remote: transport.clone(),
        });
        let cluster = Arc::new(Cluster {
            transport,
            coordinator: Coordinator::new(
                RpcShardClient {
                    network: network.clone(),
                },
                query.stats_cache_entries,
            ),
            network,
            query,
            membership,
            self_addr,
            config,
        });
        // The first member list before serving, so that routing starts from the whole
        // federation rather than from this node alone.
        let first = tokio::time::timeout(
            Duration::from_millis(cluster.config.connect_timeout_ms),
            discovery.get_nodes(),
        )
        .await;
        match first {
            Ok(Ok(nodes)) => {
                for node in nodes {
                    cluster.discovered(ClusterEvent::NodeJoined(node)).await;
                }
            }
            Ok(Err(e)) => tracing::warn!("node discovery failed at start ({e}); starting with this node alone and retrying in the background"),
            Err(_) => tracing::warn!("node discovery did not answer within connect_timeout_ms; starting with this node alone and retrying in the background"),
        }
        tracing::info!(node_id = %cluster.config.node_id, addr = %cluster.self_addr, members = cluster.membership.read().members().len(), "cluster transport listening");
        let watching = cluster.clone();
        tokio::spawn(async move {
            let mut events = discovery.watch();
            while let Some(event) = events.next().await {
                watching.discovered(event).await;
            }
        });
        let beating = cluster.clone();
        tokio::spawn(async move { beating.heartbeats().await });
        Ok(cluster)
    }

    /// Whether a discovered address is this node under another name.
    async fn names_this_node(&self, address: &str) -> bool {
        if address == self.self_addr {
            return true;
        }
        let resolve = |a: String| async move {
            tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(a))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|found| found.collect::<Vec<std::net::SocketAddr>>())
                .unwrap_or_default()
        };
        let mine = resolve(self.self_addr.clone()).await;
        let theirs = resolve(address.to_string()).await;
        theirs.iter().any(|a| mine.contains(a))
    }

    /// Feeds a discovery event to the membership.
    async fn discovered(&self, event: ClusterEvent) {
        let event = match event {
            ClusterEvent::NodeJoined(node) | ClusterEvent::NodeUpdated(node) => Event::Discovered {
                is_self: self.names_this_node(&node.address).await,
                address: node.address,
            },
            ClusterEvent::NodeLeft(address) => Event::Left { address },
        };
        self.apply(event);
    }

    fn apply(&self, event: Event) {
        let mut membership = self.membership.write();
        match membership.apply(event, Instant::now()) {
            Some(Change::Joined(address)) => {
                tracing::info!(%address, members = membership.members().len(), "node joined")
            }
            Some(Change::Left(address)) => {
                tracing::info!(%address, members = membership.members().len(), "node left")
            }
            Some(Change::SelfRenamed(address)) => {
                tracing::info!(%address, "this node is known to discovery under this address")
            }
            None => {}
        }
    }

    /// Pings every peer each interval. A ping runs until the transport's own connect and
    /// request time-outs; a peer whose last ping is still running is skipped, so that a slow
    /// peer delays no one else and no handshake is cut short. Health follows the time of the
    /// last answer, not the pings' outcome.
    async fn heartbeats(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.health.heartbeat_interval_ms.max(10));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let peers = self.membership.read().peers();
            for peer in peers {
                if !in_flight.lock().insert(peer.clone()) {
                    continue;
                }
                let cluster = self.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let ping = Envelope {
                        group: None,
                        request: Request::Ping,
                    };
                    if let Ok(Answer::Pong { node_id }) = cluster.network.call(&peer, ping).await {
                        cluster.apply(Event::Pong {
                            address: peer.clone(),
                            node_id,
                        });
                    }
                    in_flight.lock().remove(&peer);
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(
            self.config
                .request_timeout_ms
                .min(self.query.partial_results_timeout_ms.max(1)),
        )
    }

    /// `POST /cluster/collections/{c}/search`.
    pub async fn search(
        &self,
        collection: &str,
        body: &[u8],
    ) -> ApiResult<FederatedSearchResponse> {
        let started = Instant::now();
        let (request, query, read) = parse_search(body, &self.query)?;
        refuse_consistency_in_a_federation(&read)?;
        let copies = self
            .membership
            .read()
            .copies(Instant::now(), &self.config.health);
        let (answer, cache) = self
            .coordinator
            .search(collection, &request, &copies, &query, self.deadline())
            .await
            .map_err(crate::raft_cluster::search_error)?;
        if let Some(used) = cache {
            metrics::counter!(crate::metrics::STATS_CACHE, "result" => used.as_str()).increment(1);
        }
        Ok(FederatedSearchResponse {
            results: answer.results,
            total: answer.total,
            latency_ms: started.elapsed().as_millis() as u64,
            is_partial: answer.is_partial,
            timed_out: answer.timed_out,
            shard_status: answer.shard_status,
            aggregations: answer.aggregations,
        })
    }

    /// `POST /cluster/collections/{c}/documents`: each document goes to the node that owns
    /// `stable_hash(id) % members`.
    pub async fn index(
        &self,
        collection: &str,
        body: &[u8],
        pipeline: Option<&prism_core::pipeline::Pipeline>,
    ) -> ApiResult<FederatedIndexResponse> {
        let started = Instant::now();
        let value: Value = prism_core::schema::parse_json_strict(body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        })?;
        let documents = crate::http::documents_of(value)?;
        let (documents, refused) = match pipeline {
            Some(pipeline) => crate::http::run_pipeline(pipeline, documents),
            None => (documents, Vec::new()),
        };
        let map = self.membership.read().shard_map();
        let deadline = Duration::from_millis(self.config.request_timeout_ms);
        let summary = self
            .coordinator
            .index(collection, &documents, &map, deadline)
            .await;
        let mut summary = summary;
        summary.total_docs += refused.len() as u64;
        summary.failed_docs += refused.len() as u64;
        summary.errors.extend(
            refused
                .into_iter()
                .map(|e| prism_cluster::rpc::RefusedDocument {
                    id: e.id,
                    code: e.code,
                    message: e.message,
                }),
        );
        Ok(FederatedIndexResponse {
            latency_ms: started.elapsed().as_millis() as u64,
            indexed: summary.successful_docs,
            failed: summary.failed_docs,
            summary,
        })
    }

    /// `GET /cluster/health`.
    pub fn health(&self) -> HealthReport {
        self.membership
            .read()
            .report(Instant::now(), &self.config.health)
    }

    /// Closes the transport's connections and endpoint.
    pub fn close(&self) {
        self.transport.close();
    }
}
