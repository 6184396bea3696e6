//! Cluster mode's wiring (`--cluster`): the QUIC transport serving this node's
//! [`ClusterHandler`], the [`ClusterNode`] that runs its metadata and shard groups, and the
//! HTTP adapters of the collection and `/cluster/...` routes over it. Every decision lives in
//! `prism_cluster::clustered`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use parking_lot::Mutex;
use prism_cluster::clustered::consistency::ReadConsistency;
use prism_cluster::clustered::replication_lag::ReplicationClock;
use prism_cluster::clustered::writes::WriteVerdict;
use prism_cluster::clustered::{ClusterHandler, ClusterNode, ClusterStatus, Settings};
use prism_cluster::config::{ClusterConfig, FederationConfig, QueryConfig, ReadConsistencyConfig};
use prism_cluster::coordinator::SearchError;
use prism_cluster::metadata::CollectionMeta;
use prism_cluster::network::{HandlerService, LocalFirst, Network};
use prism_cluster::raft::network::RaftHost;
use prism_cluster::raft::quiescence::Timing;
use prism_cluster::rpc::{CopyReport, GroupId, RpcError};
use prism_cluster::transport::{Transport, TransportConfig, PROTOCOL_VERSION};
use prism_core::engine::{DocumentError, Engine};
use prism_core::schema::CollectionSchema;
use prism_core::shard::{Op, ShardConfig};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::cluster::{FederatedSearchResponse, ReadSettings};
use crate::error::{ApiError, ApiResult};

/// This node in cluster mode.
pub struct RaftCluster {
    pub node: Arc<ClusterNode>,
    transport: Arc<Transport>,
    query: QueryConfig,
    /// `[federation.consistency]`: a read's level when it names none, and the bound of
    /// `bounded` reads.
    reads: ReadConsistencyConfig,
    request_timeout: Duration,
    /// When the logs of the groups this node leads grew, for lag in seconds.
    replication_clock: Arc<Mutex<ReplicationClock>>,
    sampler: tokio::task::AbortHandle,
}

/// How often a node samples the logs it leads: the resolution of lag in seconds.
const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Records, every [`LAG_SAMPLE_EVERY`], how far the log of each group this node leads has grown.
async fn sample_replication(node: Arc<ClusterNode>, clock: Arc<Mutex<ReplicationClock>>) {
    let mut tick = tokio::time::interval(LAG_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let view = node.meta_view();
        let copies = node.copy_states();
        let mut clock = clock.lock();
        let mut led = std::collections::BTreeSet::new();
        let me = node.id();
        if view.state == prism_cluster::raft::metadata_group::MetaRole::Leader {
            clock.observe(METADATA_GROUP, view.last_log, now);
            let held = slowest(me, view.members.keys(), &view.matched);
            clock.forget_held(METADATA_GROUP, held);
            led.insert(METADATA_GROUP.to_string());
        }
        for (group, copy) in copies {
            if copy.role == prism_cluster::raft::quiescence::Role::Leader {
                let group = group.to_string();
                clock.observe(&group, copy.last_log, now);
                let held = slowest(me, copy.addresses.keys(), &copy.matched);
                clock.forget_held(&group, held);
                led.insert(group);
            }
        }
        clock.retain(|group| led.contains(group));
    }
}

/// The `group` label of the metadata group.
const METADATA_GROUP: &str = "metadata";

/// The least index any member but `me` is known to hold (`None` for one not yet known).
fn slowest<'a>(
    me: u64,
    members: impl Iterator<Item = &'a u64>,
    matched: &std::collections::BTreeMap<u64, Option<u64>>,
) -> Option<u64> {
    members
        .filter(|id| **id != me)
        .map(|id| matched.get(id).copied().flatten())
        .min()
        .flatten()
}

/// A collection as cluster mode describes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterCollection {
    pub name: String,
    #[schema(value_type = Object)]
    pub schema: Value,
    pub generation: u64,
    pub shards: u32,
    pub replication_factor: u32,
    /// Each shard's copies: node name and role (voter or learner).
    #[schema(value_type = Object)]
    pub placement: Value,
    pub stats: ClusterCollectionStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterCollectionStats {
    /// Documents over every shard, counted on each shard's leader (or another copy).
    pub num_docs: u64,
    /// Shards whose count is missing: no copy answered.
    pub shards_missing: u32,
}

/// `GET /cluster/shards`: one line per copy.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardCopyStatus {
    pub collection: String,
    pub shard: u32,
    pub generation: u64,
    pub node: String,
    /// leader, follower, learner or stopped.
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// Entries the copy has yet to apply, against the highest applied index of its group.
    pub lag: u64,
    pub num_docs: u64,
    /// The searchable content's checksum, in hex: equal on copies in sync once refreshed.
    pub content_checksum: Option<String>,
    /// How the copy is catching up now: `snapshot` (receiving one), `log` (entries behind,
    /// replicated from the leader's log), or none (in sync).
    pub catching_up: Option<&'static str>,
    /// Bytes of the snapshot being received, while it is.
    pub receiving_snapshot_bytes: Option<u64>,
    /// Snapshots the copy installed since its node started.
    pub snapshots_installed: u64,
    /// Snapshot receptions it abandoned (cut off and started again, or refused as damaged).
    pub snapshot_receptions_failed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShardsReport {
    pub copies: Vec<ShardCopyStatus>,
    /// Groups led by each node: the spread of leaders.
    #[schema(value_type = Object)]
    pub leaders_per_node: Value,
    /// Nodes that did not answer.
    pub unreachable: Vec<String>,
}

/// A copy's catch-up path: receiving a snapshot, or `lag` entries behind (from the log).
fn catching_up(receiving_snapshot: Option<u64>, lag: u64) -> Option<&'static str> {
    match (receiving_snapshot, lag) {
        (Some(_), _) => Some("snapshot"),
        (None, 0) => None,
        (None, _) => Some("log"),
    }
}

impl RaftCluster {
    /// Starts the QUIC endpoint and cluster mode on it.
    pub async fn start(
        config: ClusterConfig,
        federation: FederationConfig,
        engine: Arc<Engine>,
        shard: ShardConfig,
    ) -> anyhow::Result<Arc<RaftCluster>> {
        let config = config.resolve()?;
        let tls = prism_cluster::tls::load(&config.tls)?;
        let bind = resolve_bind(&config.bind_addr).await?;
        let address = config
            .advertise_addr
            .clone()
            .expect("resolved config has an advertise address");
        let handler = Arc::new(ClusterHandler::default());
        let transport = Transport::start(
            TransportConfig {
                node_id: config.node_id.clone(),
                bind_addr: bind,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                max_connections: config.max_connections.max(64),
                protocol_version: PROTOCOL_VERSION,
                fault_delay: test_transport_delay(),
            },
            &tls,
            Arc::new(HandlerService(handler.clone())),
        )?;
        let own_address = address.clone();
        let network: Arc<dyn Network> = Arc::new(LocalFirst {
            is_local: Box::new(move |to| *to == own_address),
            local: handler.clone(),
            remote: transport.clone(),
        });
        let host = Arc::new(RaftHost::new(
            config.node_id.clone(),
            prism_cluster::rpc::process_incarnation(),
        ));
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let settings = Settings {
            name: config.node_id.clone(),
            address: address.clone(),
            peers: config.seed_nodes.clone(),
            bootstrap: config.bootstrap,
            root: engine.data_dir().join("cluster"),
            shard,
            request_timeout,
            query: federation.query.clone(),
            timing: Timing::default(),
            allow_stale_reads: config.consistency.allow_stale_reads,
        };
        let node = ClusterNode::start(settings, engine, host, network)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        handler.serve(&node);
        tracing::info!(node = %config.node_id, id = node.id(), %address, "cluster mode: raft transport listening");
        let replication_clock = Arc::new(Mutex::new(ReplicationClock::default()));
        let sampler = tokio::spawn(sample_replication(node.clone(), replication_clock.clone()))
            .abort_handle();
        Ok(Arc::new(RaftCluster {
            node,
            transport,
            query: federation.query,
            reads: federation.consistency,
            request_timeout,
            replication_clock,
            sampler,
        }))
    }

    pub async fn close(&self) {
        self.sampler.abort();
        self.node.shutdown().await;
        self.transport.close();
    }

    /// `PUT /collections/{c}` in cluster mode.
    pub async fn create(
        &self,
        schema: &CollectionSchema,
        replication: Option<u32>,
    ) -> ApiResult<(StatusCode, ClusterCollection)> {
        let (created, new) = self
            .node
            .create_collection(schema, replication)
            .await
            .map_err(|e| match e {
                RpcError::InvalidRequest(m) if m.contains("exists with another schema") => {
                    ApiError::new(StatusCode::CONFLICT, "collection_exists", m)
                }
                RpcError::InvalidRequest(m) => ApiError::bad_request("invalid_schema", m),
                other => rpc_error(other),
            })?;
        let status = if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            self.describe_meta(&schema.name, &created, false).await,
        ))
    }

    async fn describe_meta(
        &self,
        name: &str,
        meta: &CollectionMeta,
        count: bool,
    ) -> ClusterCollection {
        let state = self.node.metadata();
        let node_name = |id: u64| {
            state
                .nodes
                .get(&id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let placement: Vec<Vec<Value>> = meta
            .shards
            .iter()
            .map(|copies| {
                copies
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let role = prism_cluster::metadata::role_at(i, copies.len());
                        json!({"node": node_name(c.node), "role": role})
                    })
                    .collect()
            })
            .collect();
        let (mut num_docs, mut missing) = (0, 0);
        if count {
            let (reports, _) = self.node.all_reports().await;
            for shard in 0..meta.shards.len() as u32 {
                let group = GroupId::shard(name, shard, meta.generation);
                let copies: Vec<&CopyReport> =
                    reports.iter().filter(|r| r.group == group).collect();
                let best = copies
                    .iter()
                    .find(|r| r.role == "leader")
                    .or_else(|| copies.iter().max_by_key(|r| r.applied));
                match best {
                    Some(r) => num_docs += r.num_docs,
                    None => missing += 1,
                }
            }
        }
        ClusterCollection {
            name: name.to_string(),
            schema: serde_json::from_str(&meta.schema).unwrap_or(Value::Null),
            generation: meta.generation,
            shards: meta.shards.len() as u32,
            replication_factor: meta.replication,
            placement: json!(placement),
            stats: ClusterCollectionStats {
                num_docs,
                shards_missing: missing,
            },
        }
    }

    /// `GET /collections/{c}`.
    pub async fn describe(&self, name: &str) -> ApiResult<ClusterCollection> {
        let meta = self.node.collection(name).map_err(rpc_error)?;
        Ok(self.describe_meta(name, &meta, true).await)
    }

    /// `GET /collections`.
    pub fn list(&self) -> Vec<Value> {
        self.node
            .metadata()
            .collections
            .iter()
            .map(|(name, c)| {
                json!({
                    "name": name,
                    "shards": c.shards.len(),
                    "replication_factor": c.replication,
                    "generation": c.generation,
                })
            })
            .collect()
    }

    /// `DELETE /collections/{c}`.
    pub async fn delete(&self, name: &str) -> ApiResult<()> {
        self.node
            .delete_collection(name)
            .await
            .map_err(|e| match e {
                RpcError::NotFound(m) => {
                    ApiError::new(StatusCode::NOT_FOUND, "collection_not_found", m)
                }
                other => rpc_error(other),
            })
    }

    /// `PATCH /collections/{c}` with `{"replication_factor": N}`.
    pub async fn set_replication(
        &self,
        name: &str,
        replication: u32,
    ) -> ApiResult<ClusterCollection> {
        self.node
            .set_replication(name, replication)
            .await
            .map_err(|e| match e {
                RpcError::InvalidRequest(m) => ApiError::bad_request("invalid_replication", m),
                other => rpc_error(other),
            })?;
        self.describe(name).await
    }

    /// `DELETE /cluster/nodes/{id}`: waits until the node's copies live elsewhere, up to
    /// five minutes.
    pub async fn remove_node(&self, name: &str) -> ApiResult<Value> {
        let started = Instant::now();
        match self.node.remove_node(name, Duration::from_secs(300)).await {
            Ok(_) => Ok(json!({
                "removed": name,
                "took_ms": started.elapsed().as_millis() as u64,
                "message": "the node's copies live on other nodes and it left the cluster; it can be stopped",
            })),
            Err(RpcError::NotFound(m)) => {
                Err(ApiError::new(StatusCode::NOT_FOUND, "node_not_found", m))
            }
            Err(RpcError::InvalidRequest(m)) => {
                Err(ApiError::new(StatusCode::CONFLICT, "cannot_remove_node", m))
            }
            Err(e) => Err(rpc_error(e)),
        }
    }

    /// The schema writes are validated against.
    pub fn schema(&self, name: &str) -> ApiResult<CollectionSchema> {
        let meta = self.node.collection(name).map_err(rpc_error)?;
        CollectionSchema::from_json(meta.schema.as_bytes()).map_err(ApiError::from)
    }

    /// Writes `ops`: acknowledged once every shard's majority committed them. Returns the
    /// consistency token and the documents of shards that refused (nothing applied there).
    pub async fn write(&self, name: &str, ops: Vec<Op>) -> ApiResult<(String, Vec<DocumentError>)> {
        let outcome = self.node.write(name, ops).await.map_err(rpc_error)?;
        match outcome.verdict {
            WriteVerdict::Acknowledged(token) => Ok((token.to_string(), Vec::new())),
            WriteVerdict::PartlyRefused { token, refused } => {
                let errors = refused
                    .iter()
                    .flat_map(|(shard, why)| {
                        outcome
                            .ops_per_shard
                            .get(shard)
                            .into_iter()
                            .flatten()
                            .map(move |id| DocumentError {
                                id: id.clone(),
                                code: "no_quorum".into(),
                                message: format!(
                                    "shard {shard} refused the write, which was not applied: {why}"
                                ),
                            })
                    })
                    .collect();
                Ok((token.to_string(), errors))
            }
            WriteVerdict::NoQuorum(why) => Err(no_quorum(&why)),
            WriteVerdict::Unknown(why) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "write_timeout",
                why,
            )),
        }
    }

    /// Refreshes every copy of the collection.
    pub async fn refresh(&self, name: &str) -> ApiResult<u64> {
        self.node.refresh(name).await.map_err(rpc_error)
    }

    /// A read's consistency: the request's level (else the configured default) and token,
    /// refused when this node, in a minority partition, may not serve it.
    pub fn read_consistency(&self, asked: &ReadSettings) -> ApiResult<ReadConsistency> {
        let read = ReadConsistency::parse(
            asked.consistency.as_deref(),
            asked.consistency_token.as_deref(),
            self.reads.read,
            Duration::from_millis(self.reads.bounded_staleness_ms),
        )
        .map_err(|m| ApiError::bad_request("invalid_consistency", m))?;
        self.node.read_allowed(read.level).map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", e.to_string())
        })?;
        Ok(read)
    }

    /// A document by id, read at the consistency `asked` names.
    pub async fn get(
        &self,
        name: &str,
        id: &str,
        asked: &ReadSettings,
    ) -> ApiResult<Option<(String, Value)>> {
        let read = self.read_consistency(asked)?;
        self.node.get(name, id, &read).await.map_err(|e| match e {
            // A read refused for want of a majority: nothing about writes.
            RpcError::NoQuorum(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", m),
            other => rpc_error(other),
        })
    }

    /// A search over one copy of each shard, at the consistency the body or `header` (the
    /// body first) names.
    pub async fn search(
        &self,
        name: &str,
        body: &[u8],
        header: &ReadSettings,
    ) -> ApiResult<FederatedSearchResponse> {
        let started = Instant::now();
        let (request, query, mut asked) = crate::cluster::parse_search(body, &self.query)?;
        // The headers apply only where the body names no level: a client that sends its
        // last token on every request can still ask the body for another level.
        if asked.consistency.is_none() {
            asked.consistency = header.consistency.clone();
            if asked.consistency_token.is_none() {
                asked.consistency_token = header.consistency_token.clone();
            }
        }
        let read = self.read_consistency(&asked)?;
        let deadline = self.request_timeout.min(Duration::from_millis(
            query.partial_results_timeout_ms.max(1),
        ));
        let answer = self
            .node
            .search(name, &request, &query, &read, deadline)
            .await
            .map_err(search_error)?;
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

    pub fn status(&self) -> ClusterStatus {
        self.node.status()
    }

    /// `GET /cluster/shards`.
    pub async fn shards(&self) -> ShardsReport {
        let state = self.node.metadata();
        let name = |id: u64| {
            state
                .nodes
                .get(&id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let (reports, unreachable) = self.node.all_reports().await;
        let mut newest: std::collections::HashMap<GroupId, u64> = Default::default();
        for r in &reports {
            let e = newest.entry(r.group.clone()).or_default();
            *e = (*e).max(r.applied.unwrap_or(0));
        }
        let mut leaders: std::collections::BTreeMap<String, u64> =
            state.nodes.values().map(|n| (n.name.clone(), 0)).collect();
        let mut copies: Vec<ShardCopyStatus> = reports
            .iter()
            .map(|r| {
                if r.role == "leader" {
                    *leaders.entry(name(r.node)).or_default() += 1;
                }
                ShardCopyStatus {
                    collection: r.group.collection.clone(),
                    shard: r.group.shard,
                    generation: r.group.generation,
                    node: name(r.node),
                    role: r.role.clone(),
                    term: r.term,
                    leader: r.leader.map(name),
                    applied_index: r.applied,
                    last_log_index: r.last_log,
                    lag: newest[&r.group].saturating_sub(r.applied.unwrap_or(0)),
                    num_docs: r.num_docs,
                    content_checksum: r.content_checksum.map(|c| format!("{c:016x}")),
                    catching_up: catching_up(
                        r.receiving_snapshot_bytes,
                        newest[&r.group].saturating_sub(r.applied.unwrap_or(0)),
                    ),
                    receiving_snapshot_bytes: r.receiving_snapshot_bytes,
                    snapshots_installed: r.snapshots_installed,
                    snapshot_receptions_failed: r.snapshot_receptions_failed,
                }
            })
            .collect();
        copies.sort_by(|a, b| {
            (&a.collection, a.shard, &a.node).cmp(&(&b.collection, b.shard, &b.node))
        });
        ShardsReport {
            copies,
            leaders_per_node: json!(leaders),
            unreachable,
        }
    }

    /// `POST /cluster/election`: a new metadata election, or a shard's when one is named.
    pub async fn election(&self, body: &[u8]) -> ApiResult<Value> {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Election {
            collection: Option<String>,
            shard: Option<u32>,
            node: Option<String>,
        }
        let asked: Election = if body.iter().all(u8::is_ascii_whitespace) {
            Election::default()
        } else {
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("the body must be {{\"collection\", \"shard\", \"node\"}}, each optional: {e}"),
                )
            })?
        };
        let state = self.node.metadata();
        let group = match (&asked.collection, asked.shard) {
            (None, None) => None,
            (Some(c), shard) => {
                let meta = self.node.collection(c).map_err(rpc_error)?;
                Some(GroupId::shard(c, shard.unwrap_or(0), meta.generation))
            }
            (None, Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "a shard is named with its collection",
                ))
            }
        };
        let target = match &asked.node {
            None => None,
            Some(n) => Some(
                state
                    .nodes
                    .values()
                    .find(|i| i.name == *n)
                    .map(|i| i.id)
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "node_not_found",
                            format!("no node named {n:?} in the cluster"),
                        )
                    })?,
            ),
        };
        let elected = self
            .node
            .elect(group.clone(), target)
            .await
            .map_err(rpc_error)?;
        let name = state
            .nodes
            .get(&elected)
            .map_or_else(|| elected.to_string(), |n| n.name.clone());
        Ok(json!({
            "group": group.map_or("metadata".to_string(), |g| g.to_string()),
            "candidate": name,
            "message": "an election was started on the candidate; GET /cluster/status (or /cluster/shards) shows the new leader",
        }))
    }

    /// `GET /cluster/health` in cluster mode: the spec 000 fields, and each collection's
    /// colour (green: every copy in sync; yellow: a copy missing or behind; red: a shard
    /// without a leader).
    pub async fn health(&self) -> Value {
        let status = self.node.status();
        let state = self.node.metadata();
        let (reports, _) = self.node.all_reports().await;
        let mut collections = serde_json::Map::new();
        let mut worst = "green";
        for (name, meta) in &state.collections {
            let mut colour = "green";
            for (shard, placed) in meta.shards.iter().enumerate() {
                let group = GroupId::shard(name, shard as u32, meta.generation);
                let copies: Vec<&CopyReport> =
                    reports.iter().filter(|r| r.group == group).collect();
                let leader = copies.iter().any(|r| r.role == "leader");
                let newest = copies.iter().filter_map(|r| r.applied).max().unwrap_or(0);
                let in_sync = copies
                    .iter()
                    .filter(|r| r.applied.unwrap_or(0) + 64 >= newest)
                    .count();
                if !leader {
                    colour = "red";
                } else if in_sync < placed.len() && colour == "green" {
                    colour = "yellow";
                }
            }
            if colour == "red" || (colour == "yellow" && worst == "green") {
                worst = colour;
            }
            collections.insert(name.clone(), json!(colour));
        }
        let alive = status
            .nodes
            .iter()
            .filter(|n| n.state != "suspect" && n.state != "dead")
            .count();
        json!({
            "status": worst,
            "healthy": status.healthy,
            "node_id": self.node.name(),
            "leader": status.leader,
            "total_nodes": status.nodes.len(),
            "alive_nodes": alive,
            "nodes": status.nodes,
            "collections": collections,
        })
    }
}

/// `PRISM_TEST_TRANSPORT_DELAY_MS`: the fault tests' stand-in for netem, which delays every
/// message this node sends. Only debug builds (the tests') honour it, and say so loudly.
fn test_transport_delay() -> Duration {
    let Some(ms) = std::env::var("PRISM_TEST_TRANSPORT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
    else {
        return Duration::ZERO;
    };
    if !cfg!(debug_assertions) {
        tracing::warn!(
            "PRISM_TEST_TRANSPORT_DELAY_MS is ignored: a release build injects no faults"
        );
        return Duration::ZERO;
    }
    tracing::warn!(
        ms,
        "PRISM_TEST_TRANSPORT_DELAY_MS is set: every cluster message this node sends waits {ms} ms (a test fault)"
    );
    Duration::from_millis(ms)
}

/// `--raft-addr :7332` listens on every interface.
async fn resolve_bind(bind: &str) -> anyhow::Result<std::net::SocketAddr> {
    if let Ok(addr) = bind.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(bind)
        .await
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| anyhow::anyhow!("cluster.bind_addr {bind:?} is not an address"))
}

fn no_quorum(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_quorum",
        format!("the write was refused and will never be applied: {why}. A majority of the shard's copies must be reachable; check GET /cluster/status"),
    )
}

/// The HTTP answer to a cluster call's error.
pub fn rpc_error(e: RpcError) -> ApiError {
    match e {
        RpcError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "collection_not_found", m),
        RpcError::InvalidRequest(m) => ApiError::bad_request("invalid_request", m),
        RpcError::Overloaded(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", m),
        RpcError::NoQuorum(m) => no_quorum(&m),
        RpcError::NotCaughtUp(m) => ApiError::new(StatusCode::CONFLICT, "not_caught_up", m),
        RpcError::WriteUnknown(m) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "write_timeout",
            format!("{m}; the outcome is unknown. Upserts and deletes by id are idempotent: retrying is safe"),
        ),
        RpcError::NotLeader { .. } | RpcError::Unavailable(_) | RpcError::Unreachable(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
        }
        RpcError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
    }
}

pub fn search_error(e: SearchError) -> ApiError {
    match e {
        SearchError::Invalid(message) => ApiError::bad_request("invalid_query", message),
        SearchError::NotFound(message) => {
            ApiError::new(StatusCode::NOT_FOUND, "collection_not_found", message)
        }
        SearchError::Unavailable { message, status } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shards_unavailable",
            message,
        )
        .with_details(serde_json::to_value(&status).expect("status serializes")),
    }
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// A group's figures for its gauges, read from one copy.
struct GroupGauges {
    group: String,
    state: f64,
    term: u64,
    commit: Option<u64>,
    applied: Option<u64>,
    peers: usize,
    lag_entries: u64,
    /// On a leader: each other member's name and how long ago the leader held the oldest
    /// entry it lacks.
    lag_seconds: Vec<(String, Duration)>,
}

impl RaftCluster {
    /// Sets the Raft gauges of every group this node holds a copy of, at scrape time.
    /// `raft_state`: 0 follower, 1 candidate, 2 leader, 3 learner, 4 stopped (spec 002 counts
    /// only the first three). `raft_commit_index` is, on a leader, the highest index a
    /// majority holds; elsewhere the copy's applied index (openraft 0.9 does not report a
    /// follower's commit index). `raft_replication_lag_entries` and `_seconds`: on a leader,
    /// how far behind the slowest member is (0 elsewhere); `prism_replication_lag_seconds`:
    /// the same per member.
    pub fn record_metrics(&self) {
        use crate::metrics as m;
        use prism_cluster::raft::metadata_group::MetaRole;
        use prism_cluster::raft::quiescence::Role;
        let node = &self.node;
        let now = Instant::now();
        let names = node.metadata();
        let name_of = |id: u64| {
            names
                .nodes
                .get(&id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let clock = self.replication_clock.lock();
        let behind = |group: &str,
                      leads: bool,
                      members: &mut dyn Iterator<Item = u64>,
                      matched: &std::collections::BTreeMap<u64, Option<u64>>| {
            let lags: Vec<(String, Duration)> = members
                .filter(|id| *id != node.id())
                .map(|id| {
                    let held = matched.get(&id).copied().flatten();
                    let lag = if leads {
                        clock.lag(group, held, now)
                    } else {
                        Duration::ZERO
                    };
                    (name_of(id), lag)
                })
                .collect();
            lags
        };
        let view = node.meta_view();
        let meta_leads = view.state == MetaRole::Leader;
        let mut rows = vec![GroupGauges {
            group: METADATA_GROUP.to_string(),
            state: match view.state {
                MetaRole::Follower => 0.0,
                MetaRole::Candidate => 1.0,
                MetaRole::Leader => 2.0,
                MetaRole::Learner => 3.0,
                MetaRole::Stopped => 4.0,
            },
            term: view.term,
            commit: commit_index(
                meta_leads,
                view.last_log,
                view.applied,
                &view.voters,
                &view.matched,
            ),
            applied: view.applied,
            peers: view.members.len(),
            lag_entries: lag(view.last_log, &view.matched),
            lag_seconds: behind(
                METADATA_GROUP,
                meta_leads,
                &mut view.members.keys().copied(),
                &view.matched,
            ),
        }];
        for (group, copy) in node.copy_states() {
            let leads = copy.role == Role::Leader;
            let group = group.to_string();
            ::metrics::gauge!(m::SHARD_STATUS, "group" => group.clone())
                .set(if copy.role == Role::Stopped { 0.0 } else { 1.0 });
            let snapshots = copy.snapshot_catch_up;
            ::metrics::counter!(m::RAFT_SNAPSHOTS_INSTALLED, "group" => group.clone())
                .absolute(snapshots.installed);
            ::metrics::counter!(m::RAFT_SNAPSHOT_RECEPTIONS_FAILED, "group" => group.clone())
                .absolute(snapshots.failed);
            ::metrics::gauge!(m::RAFT_SNAPSHOT_RECEIVING_BYTES, "group" => group.clone())
                .set(snapshots.receiving_bytes.unwrap_or(0) as f64);
            rows.push(GroupGauges {
                state: match copy.role {
                    Role::Voter => 0.0,
                    Role::Leader => 2.0,
                    Role::Learner => 3.0,
                    Role::Stopped => 4.0,
                },
                term: copy.term,
                commit: commit_index(
                    leads,
                    copy.last_log,
                    copy.applied,
                    &copy.voters,
                    &copy.matched,
                ),
                applied: copy.applied,
                peers: copy.addresses.len(),
                lag_entries: lag(copy.last_log, &copy.matched),
                lag_seconds: behind(
                    &group,
                    leads,
                    &mut copy.addresses.keys().copied(),
                    &copy.matched,
                ),
                group,
            });
        }
        drop(clock);
        for row in rows {
            let group = row.group;
            ::metrics::gauge!(m::RAFT_STATE, "group" => group.clone()).set(row.state);
            ::metrics::gauge!(m::RAFT_TERM, "group" => group.clone()).set(row.term as f64);
            ::metrics::gauge!(m::RAFT_COMMIT_INDEX, "group" => group.clone())
                .set(row.commit.unwrap_or(0) as f64);
            ::metrics::gauge!(m::RAFT_APPLIED_INDEX, "group" => group.clone())
                .set(row.applied.unwrap_or(0) as f64);
            ::metrics::gauge!(m::RAFT_PEERS, "group" => group.clone()).set(row.peers as f64);
            ::metrics::gauge!(m::RAFT_REPLICATION_LAG_ENTRIES, "group" => group.clone())
                .set(row.lag_entries as f64);
            let slowest = row
                .lag_seconds
                .iter()
                .map(|(_, lag)| *lag)
                .max()
                .unwrap_or_default();
            ::metrics::gauge!(m::RAFT_REPLICATION_LAG_SECONDS, "group" => group.clone())
                .set(slowest.as_secs_f64());
            for (replica, lag) in row.lag_seconds {
                ::metrics::gauge!(m::REPLICATION_LAG_SECONDS, "shard" => group.clone(), "replica" => replica)
                    .set(lag.as_secs_f64());
            }
        }
        let healthy = node.status().healthy;
        ::metrics::gauge!(m::NODE_STATE).set(if healthy { 1.0 } else { 0.0 });
    }
}

/// The index a majority of `voters` holds, on a leader (whose own log counts as held).
fn commit_index(
    leads: bool,
    last_log: Option<u64>,
    applied: Option<u64>,
    voters: &std::collections::BTreeSet<u64>,
    matched: &std::collections::BTreeMap<u64, Option<u64>>,
) -> Option<u64> {
    if !leads {
        return applied;
    }
    let mut held: Vec<u64> = voters
        .iter()
        // The leader itself is not in `matched`: its own log counts.
        .map(|v| match matched.get(v) {
            Some(held) => held.unwrap_or(0),
            None => last_log.unwrap_or(0),
        })
        .collect();
    held.sort_unstable_by(|a, b| b.cmp(a));
    held.get(voters.len() / 2).copied()
}

fn lag(last_log: Option<u64>, matched: &std::collections::BTreeMap<u64, Option<u64>>) -> u64 {
    let last = last_log.unwrap_or(0);
    matched
        .values()
        .map(|m| last.saturating_sub(m.unwrap_or(0)))
        .max()
        .unwrap_or(0)
}
