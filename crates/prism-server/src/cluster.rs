//! Federation wiring: this node's RPC service over its local collections, and the coordinator
//! behind `/cluster/...` that fans requests out to every member and merges the answers.
//! Decisions (assignment, merging, verdicts, health states) live in `prism-cluster`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::future::join_all;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use prism_cluster::assignment::ShardMap;
use prism_cluster::config::{ClusterConfig, FederationConfig, QueryConfig};
use prism_cluster::discovery::{self, ClusterEvent};
use prism_cluster::health::{NodeState, PeerHealth};
use prism_cluster::merge::{merge_page, Ranking, ShardFailure, ShardStatus, Verdict};
use prism_cluster::rpc::{Request, Response};
use prism_cluster::stats_cache::{CachedStats, StatsCache};
use prism_cluster::transport::{Service, Transport, TransportConfig, PROTOCOL_VERSION};
use prism_core::engine::Engine;
use prism_core::search::{DocRef, Hit, SearchRequest, ShardHits};
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
            } => {
                let (stats, generation) = engine
                    .collection(&collection)?
                    .shard()
                    .term_statistics(&parse(&request)?)?;
                Response::Stats { stats, generation }
            }
            Request::Search {
                collection,
                request,
                stats,
                vector_k,
            } => Response::Hits(engine.collection(&collection)?.shard().query_phase(
                &parse(&request)?,
                stats.as_ref(),
                vector_k as usize,
            )?),
            Request::Fetch {
                collection,
                request,
                generation,
                docs,
            } => {
                let hits = engine.collection(&collection)?.shard().fetch(
                    &parse(&request)?,
                    &generation,
                    &docs,
                )?;
                Response::Fetched(serde_json::to_string(&hits).expect("hits serialize"))
            }
            Request::Index {
                collection,
                documents,
            } => {
                let collection = engine.collection(&collection)?;
                let documents: Vec<Value> = serde_json::from_str(&documents)
                    .map_err(|e| prism_core::Error::InvalidRequest(e.to_string()))?;
                let batch = collection.prepare_upserts(documents);
                let successful = batch.ops.len() as u64;
                if !batch.ops.is_empty() {
                    collection.shard().write_blocking(batch.ops)?;
                }
                Response::Indexed {
                    successful,
                    errors: serde_json::to_string(&batch.errors).expect("errors serialize"),
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

/// Who is in the federation right now.
struct Membership {
    /// Every member's address, this node's included, sorted: the shard map's input.
    members: Vec<String>,
    /// The address under which this node appears in `members`: its advertise address, or
    /// the form discovery gives it (an SRV target, an IP), so that every node names it alike.
    self_key: String,
}

type ShardAnswers = Vec<(usize, String, Result<ShardHits, String>)>;

/// (member, searcher generation) of the shards that answered.
fn generations_of(answers: &ShardAnswers) -> impl Iterator<Item = (&str, &str)> {
    answers
        .iter()
        .filter_map(|(_, m, a)| a.as_ref().ok().map(|h| (m.as_str(), h.generation.as_str())))
}

/// This node's view of the federation.
pub struct Cluster {
    transport: Arc<Transport>,
    engine: Arc<Engine>,
    config: ClusterConfig,
    query: QueryConfig,
    self_addr: String,
    membership: RwLock<Membership>,
    health: Mutex<HashMap<String, PeerHealth>>,
    node_ids: Mutex<HashMap<String, String>>,
    stats_cache: StatsCache,
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
        let cluster = Arc::new(Cluster {
            transport,
            engine,
            stats_cache: StatsCache::new(query.stats_cache_entries),
            query,
            membership: RwLock::new(Membership {
                members: vec![self_addr.clone()],
                self_key: self_addr.clone(),
            }),
            self_addr,
            config,
            health: Mutex::new(HashMap::new()),
            node_ids: Mutex::new(HashMap::new()),
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
                    cluster.apply(ClusterEvent::NodeJoined(node)).await;
                }
            }
            Ok(Err(e)) => tracing::warn!("node discovery failed at start ({e}); starting with this node alone and retrying in the background"),
            Err(_) => tracing::warn!("node discovery did not answer within connect_timeout_ms; starting with this node alone and retrying in the background"),
        }
        tracing::info!(node_id = %cluster.config.node_id, addr = %cluster.self_addr, members = cluster.members().len(), "cluster transport listening");
        let watching = cluster.clone();
        tokio::spawn(async move {
            let mut events = discovery.watch();
            while let Some(event) = events.next().await {
                watching.apply(event).await;
            }
        });
        let beating = cluster.clone();
        tokio::spawn(async move { beating.heartbeats().await });
        Ok(cluster)
    }

    /// The members, sorted, this node included.
    fn members(&self) -> Vec<String> {
        self.membership.read().members.clone()
    }

    fn is_self(&self, member: &str) -> bool {
        self.membership.read().self_key == member
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

    /// Applies a discovery event to the membership.
    async fn apply(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::NodeJoined(node) | ClusterEvent::NodeUpdated(node) => {
                if self.names_this_node(&node.address).await {
                    self.rename_self(&node.address);
                    return;
                }
                let mut membership = self.membership.write();
                if let Err(at) = membership.members.binary_search(&node.address) {
                    membership.members.insert(at, node.address.clone());
                    self.health
                        .lock()
                        .insert(node.address.clone(), PeerHealth::new(Instant::now()));
                    tracing::info!(address = %node.address, members = membership.members.len(), "node joined");
                }
            }
            ClusterEvent::NodeLeft(address) => {
                let mut membership = self.membership.write();
                if address == membership.self_key {
                    drop(membership);
                    // Discovery lost this node's record; it stays a member under its own name.
                    let own = self.self_addr.clone();
                    self.rename_self(&own);
                    return;
                }
                if let Ok(at) = membership.members.binary_search(&address) {
                    membership.members.remove(at);
                    self.health.lock().remove(&address);
                    self.node_ids.lock().remove(&address);
                    tracing::info!(%address, members = membership.members.len(), "node left");
                }
            }
        }
    }

    /// Makes `key` the name under which this node is a member.
    fn rename_self(&self, key: &str) {
        let mut membership = self.membership.write();
        if membership.self_key == key {
            return;
        }
        let old = std::mem::replace(&mut membership.self_key, key.to_string());
        membership.members.retain(|m| *m != old && m != key);
        let at = membership.members.partition_point(|m| m.as_str() < key);
        membership.members.insert(at, key.to_string());
        self.health.lock().remove(key);
        self.node_ids.lock().remove(key);
        tracing::info!(address = %key, "this node is known to discovery under this address");
    }

    /// Pings every peer each interval. A ping runs until the transport's own connect and
    /// request time-outs; a peer whose last ping is still running is skipped, so that a slow
    /// peer delays no one else and no handshake is cut short. Health follows the time of the
    /// last answer, not the pings' outcome.
    async fn heartbeats(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.health.heartbeat_interval_ms.max(10));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let peers: Vec<String> = self
                .members()
                .into_iter()
                .filter(|m| !self.is_self(m))
                .collect();
            for peer in peers {
                if !in_flight.lock().insert(peer.clone()) {
                    continue;
                }
                let cluster = self.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let answer = cluster
                        .transport
                        .call::<Request, Response>(&peer, &Request::Ping)
                        .await;
                    if let Ok(Response::Pong { node_id }) = answer {
                        if node_id == cluster.config.node_id {
                            // A member address that reaches this very node.
                            cluster.rename_self(&peer);
                        } else {
                            if let Some(h) = cluster.health.lock().get_mut(&peer) {
                                h.heartbeat(Instant::now());
                            }
                            cluster.node_ids.lock().insert(peer.clone(), node_id);
                        }
                    }
                    in_flight.lock().remove(&peer);
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    async fn call(
        &self,
        member: &str,
        request: Request,
        deadline: Duration,
    ) -> Result<Response, String> {
        let answer = if self.is_self(member) {
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

    /// `POST /cluster/collections/{c}/search`: statistics (cached), query phase on every
    /// shard, merge, then the fetch phase for the final page only.
    pub async fn search(&self, collection: &str, body: &[u8]) -> ApiResult<Value> {
        let started = Instant::now();
        let mut value: Value = prism_core::schema::parse_json_strict(body).map_err(|e| {
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
        let request_json = serde_json::to_string(&request).expect("requests serialize");
        let has_text = request
            .query
            .as_deref()
            .is_some_and(|q| !q.trim().is_empty());
        let ranking = match (has_text, request.vector.is_some()) {
            (_, false) => Ranking::Text,
            (false, true) => Ranking::Vector,
            (true, true) => Ranking::Hybrid {
                strategy: request.hybrid.clone().unwrap_or_default(),
                rank_window: request.rank_window(),
            },
        };
        let vector_k = match ranking {
            Ranking::Text => 0,
            Ranking::Vector => request.offset + request.limit,
            Ranking::Hybrid { rank_window, .. } => rank_window,
        };
        let vector_k = ((vector_k as f32) * query.shard_oversample.max(1.0)).ceil() as u32;
        let deadline = self.deadline();
        let members = self.members();
        let mut failures: Vec<ShardFailure> = Vec::new();
        let mut alive: Vec<(usize, String)> = members.iter().cloned().enumerate().collect();

        // Phase 1: collection-wide BM25 statistics, so that every shard scores alike.
        let cache_key = has_text.then(|| StatsCache::key(collection, &request));
        let cached = cache_key.as_deref().and_then(|k| self.stats_cache.get(k));
        let entry = match (&cache_key, cached) {
            (None, _) => None,
            (Some(_), Some(hit)) => Some((hit, true)),
            (Some(_), None) => Some((
                self.gather_statistics(
                    collection,
                    &request_json,
                    &mut alive,
                    &mut failures,
                    deadline,
                )
                .await,
                false,
            )),
        };
        // Phase 2: each shard's ranked documents.
        let mut answers = self
            .query_phase(
                collection,
                &request_json,
                entry.as_ref().map(|e| &e.0),
                vector_k,
                &alive,
                deadline,
            )
            .await;
        if let (Some(key), Some((cached, from_cache))) = (&cache_key, &entry) {
            let fresh = cached.describes(generations_of(&answers));
            let result = match (from_cache, fresh) {
                (false, _) => "miss",
                (true, true) => "hit",
                (true, false) => "stale",
            };
            metrics::counter!(crate::metrics::STATS_CACHE, "result" => result).increment(1);
            if fresh {
                if !from_cache {
                    self.stats_cache.put(key.clone(), cached.clone());
                }
            } else {
                self.stats_cache.remove(key);
                if *from_cache {
                    // A shard refreshed since the statistics were cached: gather them afresh
                    // from the shards that just answered, and ask those again.
                    alive = answers
                        .iter()
                        .filter(|(_, _, a)| a.is_ok())
                        .map(|(s, m, _)| (*s, m.clone()))
                        .collect();
                    let fresh = self
                        .gather_statistics(
                            collection,
                            &request_json,
                            &mut alive,
                            &mut failures,
                            deadline,
                        )
                        .await;
                    let retried = self
                        .query_phase(
                            collection,
                            &request_json,
                            Some(&fresh),
                            vector_k,
                            &alive,
                            deadline,
                        )
                        .await;
                    if fresh.describes(generations_of(&retried)) {
                        self.stats_cache.put(key.clone(), fresh);
                    }
                    answers.retain(|(_, _, a)| a.is_err());
                    answers.extend(retried);
                }
            }
        }
        let mut total = 0;
        let mut partial_aggs = Vec::new();
        let mut hits: Vec<(usize, String, ShardHits)> = Vec::new();
        for (shard, member, answer) in answers {
            match answer {
                Ok(h) => {
                    total += h.total;
                    partial_aggs.extend(h.intermediate_aggregations.clone());
                    hits.push((shard, member, h));
                }
                Err(reason) => failures.push(ShardFailure {
                    shard: shard as u32,
                    node: member,
                    reason,
                }),
            }
        }

        let queried = started.elapsed();
        // Merge, then the fetch phase for the page.
        let shards: Vec<(usize, &ShardHits)> = hits.iter().map(|(s, _, h)| (*s, h)).collect();
        let page = merge_page(&shards, &ranking, request.offset, request.limit);
        let answered: HashMap<usize, (&str, &str)> = hits
            .iter()
            .map(|(s, m, h)| (*s, (m.as_str(), h.generation.as_str())))
            .collect();
        let mut wanted: HashMap<usize, Vec<DocRef>> = HashMap::new();
        for hit in &page {
            wanted.entry(hit.shard).or_default().push(hit.doc);
        }
        let fetches = wanted.into_iter().map(|(shard, docs)| {
            let (member, generation) = answered[&shard];
            let request = Request::Fetch {
                collection: collection.into(),
                request: request_json.clone(),
                generation: generation.to_string(),
                docs: docs.clone(),
            };
            async move {
                let fetched = match self.call(member, request, deadline).await {
                    Ok(Response::Fetched(json)) => {
                        serde_json::from_str::<Vec<Hit>>(&json).map_err(|e| e.to_string())
                    }
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e),
                };
                (shard, member.to_string(), docs, fetched)
            }
        });
        let mut documents: HashMap<(usize, DocRef), Hit> = HashMap::new();
        for (shard, member, docs, fetched) in join_all(fetches).await {
            match fetched {
                Ok(found) => documents.extend(docs.into_iter().map(|d| (shard, d)).zip(found)),
                Err(e) => failures.push(ShardFailure {
                    shard: shard as u32,
                    node: member,
                    reason: format!("fetch: {e}"),
                }),
            }
        }
        let results: Vec<Hit> = page
            .into_iter()
            .filter_map(|p| {
                documents.remove(&(p.shard, p.doc)).map(|mut hit| {
                    hit.score = p.score;
                    hit
                })
            })
            .collect();
        tracing::debug!(
            query_us = queried.as_micros() as u64,
            fetch_us = (started.elapsed() - queried).as_micros() as u64,
            "federated search phases"
        );
        failures.sort_by_key(|f| f.shard);
        failures.dedup_by_key(|f| f.shard);
        let status = ShardStatus {
            total: members.len() as u32,
            successful: (members.len() - failures.len()) as u32,
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

    /// Sums the statistics of the `alive` shards; those that fail leave `alive` for
    /// `failures`.
    async fn gather_statistics(
        &self,
        collection: &str,
        request_json: &str,
        alive: &mut Vec<(usize, String)>,
        failures: &mut Vec<ShardFailure>,
        deadline: Duration,
    ) -> CachedStats {
        let calls = alive.iter().map(|(_, m)| {
            self.call(
                m,
                Request::Stats {
                    collection: collection.into(),
                    request: request_json.to_string(),
                },
                deadline,
            )
        });
        let answers = join_all(calls).await;
        let mut gathered = Vec::new();
        let mut generations = BTreeMap::new();
        let mut answered = Vec::new();
        for ((shard, member), answer) in alive.drain(..).zip(answers) {
            match answer {
                Ok(Response::Stats { stats, generation }) => {
                    gathered.push(stats);
                    generations.insert(member.clone(), generation);
                    answered.push((shard, member));
                }
                Ok(other) => failures.push(ShardFailure {
                    shard: shard as u32,
                    node: member,
                    reason: format!("unexpected answer {other:?}"),
                }),
                Err(reason) => failures.push(ShardFailure {
                    shard: shard as u32,
                    node: member,
                    reason,
                }),
            }
        }
        *alive = answered;
        CachedStats {
            stats: TermStatistics::sum(&gathered),
            generations,
        }
    }

    /// Asks every `alive` shard for its ranked ids: (shard, member, answer or reason).
    async fn query_phase(
        &self,
        collection: &str,
        request_json: &str,
        stats: Option<&CachedStats>,
        vector_k: u32,
        alive: &[(usize, String)],
        deadline: Duration,
    ) -> ShardAnswers {
        let calls = alive.iter().map(|(_, m)| {
            self.call(
                m,
                Request::Search {
                    collection: collection.into(),
                    request: request_json.to_string(),
                    stats: stats.map(|s| s.stats.clone()),
                    vector_k,
                },
                deadline,
            )
        });
        let answers = join_all(calls).await;
        alive
            .iter()
            .zip(answers)
            .map(|((shard, member), answer)| {
                let hits = answer.and_then(|r| match r {
                    Response::Hits(h) => Ok(h),
                    other => Err(format!("unexpected answer {other:?}")),
                });
                (*shard, member.clone(), hits)
            })
            .collect()
    }

    /// `POST /cluster/collections/{c}/documents`: each document goes to the node that owns
    /// `stable_hash(id) % members`.
    pub async fn index(&self, collection: &str, body: &[u8]) -> ApiResult<Value> {
        let started = Instant::now();
        let value: Value = prism_core::schema::parse_json_strict(body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
        })?;
        let Some(documents) = value.get("documents").and_then(Value::as_array) else {
            return Err(ApiError::bad_request(
                "invalid_request",
                "the body must be {\"documents\": [{\"id\": ..., \"fields\": {...}}, ...]}",
            ));
        };
        let members = self.members();
        let map = ShardMap::assign(members.iter().map(String::as_str), members.len() as u32)
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
        errors.truncate(prism_core::engine::MAX_REPORTED_ERRORS);
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
        let (members, self_key) = {
            let m = self.membership.read();
            (m.members.clone(), m.self_key.clone())
        };
        let health = self.health.lock();
        let ids = self.node_ids.lock();
        let mut nodes = vec![
            json!({"address": self_key, "node_id": self.config.node_id, "state": NodeState::Alive, "self": true}),
        ];
        for member in members.iter().filter(|m| **m != self_key) {
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
