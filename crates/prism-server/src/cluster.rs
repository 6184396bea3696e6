//! Federation wiring: this node's RPC service over its local collections, and the coordinator
//! behind `/cluster/...` that fans requests out to every member and merges the answers.
//! Decisions (assignment, merging, verdicts, health states) live in `prism-cluster`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::future::join_all;
use parking_lot::Mutex;
use prism_cluster::assignment::ShardMap;
use prism_cluster::config::{ClusterConfig, DiscoveryBackend, FederationConfig, QueryConfig};
use prism_cluster::health::{NodeState, PeerHealth};
use prism_cluster::merge::{merge_hits, ShardFailure, ShardStatus, Verdict};
use prism_cluster::rpc::{Request, Response};
use prism_cluster::transport::{Service, Transport, TransportConfig, PROTOCOL_VERSION};
use prism_core::engine::Engine;
use prism_core::search::{SearchRequest, SearchResponse};
use prism_core::stats::TermStatistics;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};

/// Answers other nodes' calls from the local collections.
struct NodeService {
    engine: Arc<Engine>,
    node_id: String,
}

fn error_response(e: prism_core::Error) -> Response {
    Response::Error {
        code: e.code().to_string(),
        message: e.to_string(),
    }
}

/// Executes one request against the local engine (blocking).
fn serve(engine: &Engine, node_id: &str, request: Request) -> Response {
    let parse = |text: &str| SearchRequest::from_json(text.as_bytes());
    let result = (|| -> prism_core::Result<Response> {
        Ok(match request {
            Request::Ping => Response::Pong {
                node_id: node_id.to_string(),
            },
            Request::Stats {
                collection,
                request,
            } => Response::Stats(
                engine
                    .collection(&collection)?
                    .shard()
                    .term_statistics(&parse(&request)?)?,
            ),
            Request::Search {
                collection,
                request,
                stats,
            } => {
                let collection = engine.collection(&collection)?;
                let request = parse(&request)?;
                let response = collection
                    .shard()
                    .search_for_merge(&request, stats.as_ref())?;
                Response::Search(serde_json::to_string(&response).expect("responses serialize"))
            }
            Request::Index {
                collection,
                documents,
            } => {
                let collection = engine.collection(&collection)?;
                let documents: Vec<Value> = serde_json::from_str(&documents)
                    .map_err(|e| prism_core::Error::InvalidRequest(e.to_string()))?;
                let (ops, errors) = collection.prepare_upserts(documents);
                let successful = ops.len() as u64;
                if !ops.is_empty() {
                    collection.shard().write_blocking(ops)?;
                }
                Response::Indexed {
                    successful,
                    errors: serde_json::to_string(&errors).expect("errors serialize"),
                }
            }
        })
    })();
    result.unwrap_or_else(error_response)
}

impl Service for NodeService {
    fn handle(
        &self,
        _peer: String,
        request: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>> {
        let engine = self.engine.clone();
        let node_id = self.node_id.clone();
        Box::pin(async move {
            let response = match postcard::from_bytes::<Request>(&request) {
                Ok(request) => {
                    tokio::task::spawn_blocking(move || serve(&engine, &node_id, request))
                        .await
                        .unwrap_or_else(|e| Response::Error {
                            code: "internal".into(),
                            message: e.to_string(),
                        })
                }
                Err(e) => Response::Error {
                    code: "bad_request".into(),
                    message: e.to_string(),
                },
            };
            postcard::to_stdvec(&response).expect("responses serialize")
        })
    }
}

/// This node's view of the federation.
pub struct Cluster {
    transport: Arc<Transport>,
    engine: Arc<Engine>,
    config: ClusterConfig,
    query: QueryConfig,
    self_addr: String,
    /// Every member's address, this node's included, sorted: the shard map's input.
    members: Vec<String>,
    health: Mutex<HashMap<String, PeerHealth>>,
    node_ids: Mutex<HashMap<String, String>>,
}

impl Cluster {
    /// Starts the QUIC endpoint and the heartbeat loop.
    pub fn start(
        config: ClusterConfig,
        federation: FederationConfig,
        engine: Arc<Engine>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let config = config.resolve()?;
        if federation.discovery.backend != DiscoveryBackend::Static {
            anyhow::bail!(
                "federation.discovery.backend = {:?} is not available in this version; use \"static\" with cluster.seed_nodes or federation.discovery.nodes",
                federation.discovery.backend
            );
        }
        let query = federation.query;
        let tls = prism_cluster::tls::load(&config.tls)?;
        let bind = config.bind_addr.parse().map_err(|e| {
            anyhow::anyhow!(
                "cluster.bind_addr {:?} is not an address: {e}",
                config.bind_addr
            )
        })?;
        let transport = Transport::start(
            TransportConfig {
                node_id: config.node_id.clone(),
                bind_addr: bind,
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                max_connections: config.max_connections,
                protocol_version: PROTOCOL_VERSION,
            },
            &tls,
            Arc::new(NodeService {
                engine: engine.clone(),
                node_id: config.node_id.clone(),
            }),
        )?;
        let self_addr = config
            .advertise_addr
            .clone()
            .expect("resolved config has an advertise address");
        let mut members: Vec<String> = config
            .seed_nodes
            .iter()
            .chain(&federation.discovery.nodes)
            .cloned()
            .chain([self_addr.clone()])
            .collect();
        members.sort();
        members.dedup();
        let now = Instant::now();
        let health = members
            .iter()
            .filter(|m| **m != self_addr)
            .map(|m| (m.clone(), PeerHealth::new(now)))
            .collect();
        tracing::info!(node_id = %config.node_id, addr = %self_addr, members = members.len(), "cluster transport listening");
        let cluster = Arc::new(Cluster {
            transport,
            engine,
            config,
            query,
            self_addr,
            members,
            health: Mutex::new(health),
            node_ids: Mutex::new(HashMap::new()),
        });
        let beating = cluster.clone();
        tokio::spawn(async move { beating.heartbeats().await });
        Ok(cluster)
    }

    async fn heartbeats(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.health.heartbeat_interval_ms.max(10));
        loop {
            let peers: Vec<String> = self
                .members
                .iter()
                .filter(|m| **m != self.self_addr)
                .cloned()
                .collect();
            let pings = peers.into_iter().map(|peer| {
                let cluster = self.clone();
                async move {
                    let answer = tokio::time::timeout(
                        interval,
                        cluster
                            .transport
                            .call::<Request, Response>(&peer, &Request::Ping),
                    )
                    .await;
                    if let Ok(Ok(Response::Pong { node_id })) = answer {
                        cluster
                            .health
                            .lock()
                            .entry(peer.clone())
                            .or_insert_with(|| PeerHealth::new(Instant::now()))
                            .heartbeat(Instant::now());
                        cluster.node_ids.lock().insert(peer, node_id);
                    }
                }
            });
            join_all(pings).await;
            tokio::time::sleep(interval).await;
        }
    }

    async fn call(
        &self,
        member: &str,
        request: Request,
        deadline: Duration,
    ) -> Result<Response, String> {
        let answer = if member == self.self_addr {
            let engine = self.engine.clone();
            let node_id = self.config.node_id.clone();
            tokio::time::timeout(
                deadline,
                tokio::task::spawn_blocking(move || serve(&engine, &node_id, request)),
            )
            .await
            .map_err(|_| format!("timed out after {} ms", deadline.as_millis()))?
            .map_err(|e| e.to_string())
        } else {
            tokio::time::timeout(
                deadline,
                self.transport.call::<Request, Response>(member, &request),
            )
            .await
            .map_err(|_| format!("timed out after {} ms", deadline.as_millis()))?
            .map_err(|e| e.to_string())
        }?;
        match answer {
            Response::Error { code, message } => Err(format!("{code}: {message}")),
            other => Ok(other),
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
    pub async fn search(&self, collection: &str, body: &[u8]) -> ApiResult<Value> {
        let started = Instant::now();
        let mut value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        })?;
        let mut query = self.query.clone();
        if let Some(obj) = value.as_object_mut() {
            if let Some(v) = obj.remove("allow_partial_results") {
                query.allow_partial_results = v.as_bool().ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        "allow_partial_results must be true or false",
                    )
                })?;
            }
            if let Some(v) = obj.remove("min_successful_shards") {
                query.min_successful_shards = v.as_u64().ok_or_else(|| {
                    ApiError::bad_request("invalid_query", "min_successful_shards must be a number")
                })? as u32;
            }
        }
        let request = SearchRequest::from_json(value.to_string().as_bytes())?;
        let (offset, limit) = (request.offset, request.limit);
        let mut per_shard = request.clone();
        per_shard.offset = 0;
        per_shard.limit = offset + limit;
        if per_shard.vector.is_some() && per_shard.query.is_none() {
            per_shard.limit =
                ((per_shard.limit as f32) * query.shard_oversample.max(1.0)).ceil() as usize;
        }
        let per_shard_json = serde_json::to_string(&per_shard).expect("requests serialize");
        let deadline = self.deadline();
        let mut failures: Vec<ShardFailure> = Vec::new();
        let fail = |shard: usize, node: &str, reason: String| ShardFailure {
            shard: shard as u32,
            node: node.to_string(),
            reason,
        };

        // Phase 1: collection-wide BM25 statistics, so that every shard scores alike.
        let mut alive: Vec<(usize, String)> = self.members.iter().cloned().enumerate().collect();
        let mut stats = None;
        if request.query.is_some() {
            let calls = alive.iter().map(|(_, m)| {
                self.call(
                    m,
                    Request::Stats {
                        collection: collection.into(),
                        request: per_shard_json.clone(),
                    },
                    deadline,
                )
            });
            let answers = join_all(calls).await;
            let mut gathered = Vec::new();
            let mut next = Vec::new();
            for ((shard, member), answer) in alive.into_iter().zip(answers) {
                match answer {
                    Ok(Response::Stats(s)) => {
                        gathered.push(s);
                        next.push((shard, member));
                    }
                    Ok(other) => {
                        failures.push(fail(shard, &member, format!("unexpected answer {other:?}")))
                    }
                    Err(e) => failures.push(fail(shard, &member, e)),
                }
            }
            alive = next;
            stats = Some(TermStatistics::sum(&gathered));
        }
        // Phase 2: each shard's top offset + limit, scored with those statistics.
        let calls = alive.iter().map(|(_, m)| {
            self.call(
                m,
                Request::Search {
                    collection: collection.into(),
                    request: per_shard_json.clone(),
                    stats: stats.clone(),
                },
                deadline,
            )
        });
        let answers = join_all(calls).await;
        let mut lists = Vec::new();
        let mut partial_aggs = Vec::new();
        let mut total = 0;
        for ((shard, member), answer) in alive.into_iter().zip(answers) {
            match answer.and_then(|r| match r {
                Response::Search(json) => {
                    serde_json::from_str::<SearchResponse>(&json).map_err(|e| e.to_string())
                }
                other => Err(format!("unexpected answer {other:?}")),
            }) {
                Ok(r) => {
                    total += r.total;
                    partial_aggs.extend(r.intermediate_aggregations);
                    lists.push(r.results);
                }
                Err(e) => failures.push(fail(shard, &member, e)),
            }
        }
        failures.sort_by_key(|f| f.shard);
        let status = ShardStatus {
            total: self.members.len() as u32,
            successful: (self.members.len() - failures.len()) as u32,
            failed: failures.len() as u32,
            failures,
        };
        let is_partial = match status.verdict(&query) {
            Verdict::Complete => false,
            Verdict::Partial => true,
            Verdict::Fail(message) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shards_unavailable",
                    message,
                )
                .with_details(serde_json::to_value(&status).expect("status serializes")))
            }
        };
        let results = merge_hits(lists, offset, limit);
        let mut answer = json!({
            "results": results,
            "total": total,
            "latency_ms": 0,
            "is_partial": is_partial,
            "shard_status": status,
        });
        if let Some(aggs) = &request.aggregations {
            answer["aggregations"] = prism_core::search::merge_aggregations(aggs, &partial_aggs)?;
        }
        answer["latency_ms"] = json!(started.elapsed().as_millis() as u64);
        Ok(answer)
    }

    /// `POST /cluster/collections/{c}/documents`: each document goes to the node that owns
    /// `stable_hash(id) % members`.
    pub async fn index(&self, collection: &str, body: &[u8]) -> ApiResult<Value> {
        let started = Instant::now();
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        })?;
        let Some(documents) = value.get("documents").and_then(Value::as_array) else {
            return Err(ApiError::bad_request(
                "invalid_request",
                "the body must be {\"documents\": [{\"id\": ..., \"fields\": {...}}, ...]}",
            ));
        };
        let map = ShardMap::assign(
            self.members.iter().map(String::as_str),
            self.members.len() as u32,
        )
        .expect("a cluster has at least this node");
        let mut by_owner: HashMap<String, Vec<Value>> = HashMap::new();
        let mut errors: Vec<Value> = Vec::new();
        for doc in documents {
            match doc.get("id").and_then(|v| v.as_str().map(String::from).or_else(|| v.as_number().map(|n| n.to_string()))) {
                Some(id) => by_owner.entry(map.route(&id).1.to_string()).or_default().push(doc.clone()),
                None => errors.push(json!({"id": "", "code": "invalid_document", "message": "the document has no \"id\""})),
            }
        }
        let deadline = Duration::from_millis(self.config.request_timeout_ms);
        let owners: Vec<(String, Vec<Value>)> = by_owner.into_iter().collect();
        let calls = owners.iter().map(|(owner, docs)| {
            self.call(
                owner,
                Request::Index {
                    collection: collection.into(),
                    documents: Value::Array(docs.clone()).to_string(),
                },
                deadline,
            )
        });
        let answers = join_all(calls).await;
        let mut successful = 0u64;
        for ((owner, docs), answer) in owners.iter().zip(answers) {
            match answer {
                Ok(Response::Indexed { successful: n, errors: errs }) => {
                    successful += n;
                    if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&errs) {
                        errors.extend(list);
                    }
                }
                Ok(other) => errors.extend(docs.iter().map(|d| json!({"id": d["id"], "code": "node_error", "message": format!("{owner}: unexpected answer {other:?}")}))),
                Err(e) => errors.extend(docs.iter().map(|d| json!({"id": d["id"], "code": "node_unavailable", "message": format!("{owner}: {e}")}))),
            }
        }
        Ok(json!({
            "total_docs": documents.len(),
            "successful_docs": successful,
            "failed_docs": documents.len() as u64 - successful,
            "errors": errors,
            "latency_ms": started.elapsed().as_millis() as u64,
        }))
    }

    /// `GET /cluster/health`.
    pub fn health(&self) -> Value {
        let now = Instant::now();
        let health = self.health.lock();
        let ids = self.node_ids.lock();
        let mut nodes = vec![
            json!({"address": self.self_addr, "node_id": self.config.node_id, "state": NodeState::Alive, "self": true}),
        ];
        for member in self.members.iter().filter(|m| **m != self.self_addr) {
            let state = health
                .get(member)
                .map_or(NodeState::Dead, |h| h.state(now, &self.config.health));
            nodes.push(json!({"address": member, "node_id": ids.get(member), "state": state, "self": false}));
        }
        let alive = nodes.iter().filter(|n| n["state"] == "alive").count();
        let status = if alive == nodes.len() {
            "green"
        } else if alive * 2 > nodes.len() {
            "yellow"
        } else {
            "red"
        };
        json!({"status": status, "node_id": self.config.node_id, "nodes": nodes})
    }
}
