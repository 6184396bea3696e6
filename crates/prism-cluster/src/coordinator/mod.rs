//! The coordinator of a federated search and a federated write. It runs the one search plan
//! (`prism_core::search::plan`) over a [`ShardClient`]: statistics (cached while no shard
//! changes), the query phase on every shard, the merge, the fetch of the final page, and the
//! verdict on partial results. It knows no sockets and no HTTP; unit tests drive it with a
//! scripted client, and [`crate::sim`] with real engines on an in-memory network.

pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use prism_core::search::merge::merge_page;
use prism_core::search::plan::{has_text_query, SearchPlan, ShardWindows};
use prism_core::search::{merge_aggregations, DocRef, Hit, SearchRequest, ShardHits};
use prism_core::stats::TermStatistics;
use serde::Serialize;
use serde_json::Value;

use crate::assignment::ShardMap;
use crate::config::QueryConfig;
use crate::network::Network;
use crate::rpc::{
    Answer, Envelope, GroupId, Json, NodeId, RefusedDocument, Request, RpcError, WireSearch,
};
use crate::stats_cache::{CachedStats, StatsCache};
use status::{ShardFailure, ShardStatus, Verdict};

/// The copy of one shard a search reads, and whether membership already knows its node to be
/// down (then it is reported failed at once, without a call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCopy {
    pub shard: u32,
    pub node: NodeId,
    /// Why the node is known to be down, if it is.
    pub down: Option<String>,
    /// The collection's generation (0 in federation).
    pub generation: u64,
    /// Other copies of the shard: a copy that fails a phase is retried once on the first.
    pub alternates: Vec<NodeId>,
}

/// A shard copy a phase asks, with the copies it may retry on.
#[derive(Debug, Clone)]
struct Target {
    shard: u32,
    node: NodeId,
    generation: u64,
    alternates: Vec<NodeId>,
}

/// The calls a coordinator makes to one shard copy.
#[async_trait]
pub trait ShardClient: Send + Sync {
    /// The shard's BM25 statistics for `search`, and its searcher generation.
    async fn statistics(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
    ) -> Result<(TermStatistics, String), RpcError>;

    /// The query phase with collection-wide `stats`, lists as long as `windows`.
    async fn query(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
        stats: Option<&TermStatistics>,
        windows: ShardWindows,
    ) -> Result<ShardHits, RpcError>;

    /// Stored fields of `docs` from searcher `generation`, in order.
    async fn fetch(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
        generation: &str,
        docs: &[DocRef],
    ) -> Result<Vec<Hit>, RpcError>;

    /// Upserts `documents` into the shard; (written, refused).
    async fn index(
        &self,
        node: &NodeId,
        group: &GroupId,
        documents: &[Value],
    ) -> Result<(u64, Vec<RefusedDocument>), RpcError>;
}

/// A [`ShardClient`] that sends one envelope per call over a [`Network`].
pub struct RpcShardClient<N> {
    pub network: N,
}

fn unexpected(answer: Answer) -> RpcError {
    RpcError::Internal(format!("unexpected answer {answer:?}"))
}

impl<N: Network> RpcShardClient<N> {
    async fn send(
        &self,
        node: &NodeId,
        group: &GroupId,
        request: Request,
    ) -> Result<Answer, RpcError> {
        let envelope = Envelope {
            group: Some(group.clone()),
            request,
        };
        self.network.call(node, envelope).await
    }
}

#[async_trait]
impl<N: Network> ShardClient for RpcShardClient<N> {
    async fn statistics(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
    ) -> Result<(TermStatistics, String), RpcError> {
        let request = Request::Stats {
            search: WireSearch::from(search),
        };
        match self.send(node, group, request).await? {
            Answer::Stats { stats, generation } => Ok((stats, generation)),
            other => Err(unexpected(other)),
        }
    }

    async fn query(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
        stats: Option<&TermStatistics>,
        windows: ShardWindows,
    ) -> Result<ShardHits, RpcError> {
        let request = Request::Search {
            search: WireSearch::from(search),
            stats: stats.cloned(),
            windows,
        };
        match self.send(node, group, request).await? {
            Answer::Hits(hits) => Ok(hits),
            other => Err(unexpected(other)),
        }
    }

    async fn fetch(
        &self,
        node: &NodeId,
        group: &GroupId,
        search: &SearchRequest,
        generation: &str,
        docs: &[DocRef],
    ) -> Result<Vec<Hit>, RpcError> {
        let request = Request::Fetch {
            search: WireSearch::from(search),
            generation: generation.to_string(),
            docs: docs.to_vec(),
        };
        match self.send(node, group, request).await? {
            Answer::Fetched(hits) if hits.len() == docs.len() => {
                hits.into_iter().map(Hit::try_from).collect()
            }
            Answer::Fetched(hits) => Err(RpcError::Internal(format!(
                "asked for {} documents, got {}",
                docs.len(),
                hits.len()
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn index(
        &self,
        node: &NodeId,
        group: &GroupId,
        documents: &[Value],
    ) -> Result<(u64, Vec<RefusedDocument>), RpcError> {
        let request = Request::Index {
            documents: documents.iter().map(Json::from).collect(),
        };
        match self.send(node, group, request).await? {
            Answer::Indexed {
                successful,
                refused,
            } => Ok((successful, refused)),
            other => Err(unexpected(other)),
        }
    }
}

/// The answer to a federated search, as `/cluster/collections/{c}/search` returns it (the
/// route adds `latency_ms`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FederatedSearch {
    pub results: Vec<Hit>,
    pub total: u64,
    pub is_partial: bool,
    /// True when a shard reached the search's deadline: its part of the answer is partial.
    pub timed_out: bool,
    pub shard_status: ShardStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Value>,
}

/// Why a federated search has no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// The request is wrong on every shard (a bad query, an unknown field): a client error.
    #[error("{0}")]
    Invalid(String),
    /// Every shard copy that answered has no such collection: the client's error, as on a
    /// single node, not an unavailable shard.
    #[error("{0}")]
    NotFound(String),
    /// Too few shards answered for the partial-result settings.
    #[error("{message}")]
    Unavailable {
        message: String,
        status: ShardStatus,
    },
}

/// The outcome of a federated write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct IndexSummary {
    pub total_docs: u64,
    pub successful_docs: u64,
    pub failed_docs: u64,
    /// Refused documents, the first `MAX_REPORTED_ERRORS` of them.
    pub errors: Vec<RefusedDocument>,
}

/// Runs federated searches and writes over a [`ShardClient`].
pub struct Coordinator<C> {
    client: C,
    stats_cache: StatsCache,
}

/// A shard copy that answered a phase, with what it answered.
struct Answered<T> {
    shard: u32,
    node: NodeId,
    answer: T,
}

fn failure(shard: u32, node: &str, reason: impl Into<String>) -> ShardFailure {
    ShardFailure {
        shard,
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// `call` bounded by `deadline`; a call that runs out of time is unavailable.
async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::Unavailable(format!(
                "timed out after {} ms",
                deadline.as_millis()
            )))
        })
}

/// One phase's answers: the copies that answered, and failures for the rest. A request every
/// shard must refuse (an invalid query) ends the search as a client error, and so does a
/// collection that no copy which answered has.
fn sort_out<T>(
    copies: &[Target],
    answers: Vec<(NodeId, Result<T, RpcError>)>,
    failures: &mut Vec<ShardFailure>,
) -> Result<Vec<Answered<T>>, SearchError> {
    let missing: Vec<&String> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Err(RpcError::NotFound(message)) => Some(message),
            _ => None,
        })
        .collect();
    if !answers.is_empty() && missing.len() == answers.len() {
        return Err(SearchError::NotFound(missing[0].clone()));
    }
    let mut answered = Vec::new();
    for (target, (node, answer)) in copies.iter().zip(answers) {
        match answer {
            Ok(answer) => answered.push(Answered {
                shard: target.shard,
                node,
                answer,
            }),
            Err(RpcError::InvalidRequest(message)) => return Err(SearchError::Invalid(message)),
            Err(e) => failures.push(failure(target.shard, &node, e.to_string())),
        }
    }
    Ok(answered)
}

/// Calls `target`'s copy; if it fails in a way another copy may not (unreachable, timed out,
/// unavailable, no copy there), calls its first alternate once. With an alternate left, the
/// first call gets half the deadline. Returns the copy that gave the last answer.
async fn with_retry<T, F, Fut>(
    target: &Target,
    deadline: Duration,
    call: F,
) -> (NodeId, Result<T, RpcError>)
where
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
{
    let first_deadline = match target.alternates.first() {
        Some(_) => deadline / 2,
        None => deadline,
    };
    let first = within(first_deadline, call(target.node.clone())).await;
    let retry = match (&first, target.alternates.first()) {
        (Err(e), Some(other)) if e.is_retryable() || matches!(e, RpcError::NotFound(_)) => {
            other.clone()
        }
        _ => return (target.node.clone(), first),
    };
    let second = within(deadline - first_deadline, call(retry.clone())).await;
    match second {
        Ok(answer) => (retry, Ok(answer)),
        // Both failed: report the first copy's failure, which is the one asked for.
        Err(_) => (target.node.clone(), first),
    }
}

impl<C: ShardClient> Coordinator<C> {
    /// A coordinator caching statistics for up to `stats_cache_entries` queries.
    pub fn new(client: C, stats_cache_entries: usize) -> Coordinator<C> {
        Coordinator {
            client,
            stats_cache: StatsCache::new(stats_cache_entries),
        }
    }

    pub fn client(&self) -> &C {
        &self.client
    }

    /// Searches `collection` over `copies` (one per shard): statistics, query phase, merge,
    /// fetch of the page, then the verdict of `query`'s partial-result settings. Every call
    /// is bounded by `deadline`. Returns the answer and how cached statistics served it
    /// (`None` for a search without text).
    pub async fn search(
        &self,
        collection: &str,
        request: &SearchRequest,
        copies: &[ShardCopy],
        query: &QueryConfig,
        deadline: Duration,
    ) -> Result<(FederatedSearch, Option<CacheUse>), SearchError> {
        let plan = SearchPlan::new(request, copies.len(), query.shard_oversample);
        let collection_generations: HashMap<u32, u64> =
            copies.iter().map(|c| (c.shard, c.generation)).collect();
        let group = |shard: u32| {
            GroupId::shard(
                collection,
                shard,
                collection_generations.get(&shard).copied().unwrap_or(0),
            )
        };
        let mut failures: Vec<ShardFailure> = Vec::new();
        let mut alive: Vec<Target> = Vec::new();
        for copy in copies {
            match (&copy.down, copy.alternates.split_first()) {
                (None, _) => alive.push(Target {
                    shard: copy.shard,
                    node: copy.node.clone(),
                    generation: copy.generation,
                    alternates: copy.alternates.clone(),
                }),
                // Known down: its first alternate serves instead, with no retry left.
                (Some(_), Some((first, rest))) => alive.push(Target {
                    shard: copy.shard,
                    node: first.clone(),
                    generation: copy.generation,
                    alternates: rest.to_vec(),
                }),
                (Some(why), None) => failures.push(failure(copy.shard, &copy.node, why.clone())),
            }
        }

        // Phase 1: collection-wide BM25 statistics, so that every shard scores alike.
        let cache_key = has_text_query(request).then(|| StatsCache::key(collection, request));
        let mut cache_use = None;
        let mut stats: Option<CachedStats> = None;
        if let Some(key) = &cache_key {
            match self.stats_cache.get(key) {
                Some(hit) => {
                    stats = Some(hit);
                    cache_use = Some(CacheUse::Hit);
                }
                None => {
                    let (fresh, answered) = self
                        .gather_statistics(collection, request, &alive, &mut failures, deadline)
                        .await?;
                    alive = answered;
                    stats = Some(fresh);
                    cache_use = Some(CacheUse::Miss);
                }
            }
        }

        // Phase 2: each shard's ranked documents.
        let mut answers = self
            .query_phase(
                collection,
                request,
                stats.as_ref(),
                plan.windows,
                &alive,
                &mut failures,
                deadline,
            )
            .await?;
        if let (Some(key), Some(cached)) = (&cache_key, &stats) {
            let generations = answers
                .iter()
                .map(|a| ((a.shard, a.node.as_str()), a.answer.generation.as_str()));
            if cached.describes(generations) {
                if cache_use == Some(CacheUse::Miss) {
                    self.stats_cache.put(key.clone(), cached.clone());
                }
            } else {
                self.stats_cache.remove(key);
                if cache_use == Some(CacheUse::Hit) {
                    // A shard refreshed since the statistics were cached: gather them afresh
                    // from the shards that just answered, and ask those again.
                    cache_use = Some(CacheUse::Stale);
                    let answered: Vec<Target> = answers
                        .iter()
                        .map(|a| Target {
                            shard: a.shard,
                            node: a.node.clone(),
                            generation: collection_generations.get(&a.shard).copied().unwrap_or(0),
                            alternates: Vec::new(),
                        })
                        .collect();
                    let (fresh, answered) = self
                        .gather_statistics(collection, request, &answered, &mut failures, deadline)
                        .await?;
                    answers = self
                        .query_phase(
                            collection,
                            request,
                            Some(&fresh),
                            plan.windows,
                            &answered,
                            &mut failures,
                            deadline,
                        )
                        .await?;
                    let generations = answers
                        .iter()
                        .map(|a| ((a.shard, a.node.as_str()), a.answer.generation.as_str()));
                    if fresh.describes(generations) {
                        self.stats_cache.put(key.clone(), fresh);
                    }
                }
            }
        }

        // Merge, then the fetch phase for the page.
        let total = answers.iter().map(|a| a.answer.total).sum();
        let timed_out = answers.iter().any(|a| a.answer.timed_out);
        let partial_aggs: Vec<Vec<u8>> = answers
            .iter()
            .filter_map(|a| a.answer.intermediate_aggregations.clone())
            .collect();
        let by_shard: Vec<(usize, &ShardHits)> = answers
            .iter()
            .map(|a| (a.shard as usize, &a.answer))
            .collect();
        let page = merge_page(&by_shard, &plan.ranking, plan.merge_offset, plan.limit);
        let mut wanted: BTreeMap<usize, Vec<DocRef>> = BTreeMap::new();
        for hit in &page {
            wanted.entry(hit.shard).or_default().push(hit.doc);
        }
        let answered_by: HashMap<usize, &Answered<ShardHits>> =
            answers.iter().map(|a| (a.shard as usize, a)).collect();
        let fetches = wanted.iter().map(|(shard, docs)| {
            let from = answered_by[shard];
            let group = group(from.shard);
            async move {
                within(
                    deadline,
                    self.client
                        .fetch(&from.node, &group, request, &from.answer.generation, docs),
                )
                .await
            }
        });
        let fetched = join_all(fetches).await;
        let mut documents: HashMap<(usize, DocRef), Hit> = HashMap::new();
        for ((shard, docs), hits) in wanted.iter().zip(fetched) {
            match hits {
                Ok(hits) => documents.extend(docs.iter().map(|d| (*shard, *d)).zip(hits)),
                // The query phase accepted the request, so a refused fetch (its searcher
                // expired, say) is this shard's failure, not the client's.
                Err(e) => failures.push(failure(
                    *shard as u32,
                    &answered_by[shard].node,
                    format!("fetch: {e}"),
                )),
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

        failures.sort_by_key(|f| f.shard);
        failures.dedup_by_key(|f| f.shard);
        let status = ShardStatus {
            total: copies.len() as u32,
            successful: (copies.len() - failures.len()) as u32,
            failed: failures.len() as u32,
            failures,
        };
        let is_partial = match status.verdict(query) {
            Verdict::Complete => false,
            Verdict::Partial => true,
            Verdict::Fail(message) => return Err(SearchError::Unavailable { message, status }),
        };
        let aggregations = match &request.aggregations {
            Some(aggs) => Some(
                merge_aggregations(aggs, &partial_aggs)
                    .map_err(|e| SearchError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        Ok((
            FederatedSearch {
                results,
                total,
                is_partial,
                timed_out,
                shard_status: status,
                aggregations,
            },
            cache_use,
        ))
    }

    /// Sums the statistics of the `alive` copies; returns them with the copies that answered.
    async fn gather_statistics(
        &self,
        collection: &str,
        request: &SearchRequest,
        alive: &[Target],
        failures: &mut Vec<ShardFailure>,
        deadline: Duration,
    ) -> Result<(CachedStats, Vec<Target>), SearchError> {
        let calls = alive.iter().map(|target| {
            let group = GroupId::shard(collection, target.shard, target.generation);
            with_retry(target, deadline, move |node| {
                let group = group.clone();
                async move { self.client.statistics(&node, &group, request).await }
            })
        });
        let answered = sort_out(alive, join_all(calls).await, failures)?;
        let gathered: Vec<TermStatistics> = answered.iter().map(|a| a.answer.0.clone()).collect();
        let stats = CachedStats {
            stats: TermStatistics::sum(&gathered),
            generations: answered
                .iter()
                .map(|a| ((a.shard, a.node.clone()), a.answer.1.clone()))
                .collect(),
        };
        // The query phase asks the copy whose statistics were gathered, with no retry: the
        // statistics describe its searcher.
        let copies = answered
            .into_iter()
            .map(|a| Target {
                shard: a.shard,
                node: a.node,
                generation: alive
                    .iter()
                    .find(|t| t.shard == a.shard)
                    .map_or(0, |t| t.generation),
                alternates: Vec::new(),
            })
            .collect();
        Ok((stats, copies))
    }

    /// Asks every `alive` copy for its ranked documents.
    #[allow(clippy::too_many_arguments)]
    async fn query_phase(
        &self,
        collection: &str,
        request: &SearchRequest,
        stats: Option<&CachedStats>,
        windows: ShardWindows,
        alive: &[Target],
        failures: &mut Vec<ShardFailure>,
        deadline: Duration,
    ) -> Result<Vec<Answered<ShardHits>>, SearchError> {
        let calls = alive.iter().map(|target| {
            let group = GroupId::shard(collection, target.shard, target.generation);
            let stats = stats.map(|s| &s.stats);
            with_retry(target, deadline, move |node| {
                let group = group.clone();
                async move {
                    self.client
                        .query(&node, &group, request, stats, windows)
                        .await
                }
            })
        });
        sort_out(alive, join_all(calls).await, failures)
    }

    /// Writes each document to the node owning `stable_hash(id) % shards` in `map`. A
    /// document without an id, or on a node that fails, is counted failed and reported.
    pub async fn index(
        &self,
        collection: &str,
        documents: &[Value],
        map: &ShardMap,
        deadline: Duration,
    ) -> IndexSummary {
        let mut errors: Vec<RefusedDocument> = Vec::new();
        let mut by_shard: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for doc in documents {
            // Routed by the id the owner will store, by the same rule: a numeric id as its
            // exact digits, and one that would round refused here, before any node sees it.
            let id = match doc.get("id") {
                Some(id) => prism_core::schema::document_id(id),
                None => Err("the document has no \"id\"".into()),
            };
            match id {
                Ok(id) => by_shard
                    .entry(map.route(&id).0)
                    .or_default()
                    .push(doc.clone()),
                Err(message) => errors.push(RefusedDocument {
                    id: String::new(),
                    code: "invalid_document".into(),
                    message,
                }),
            }
        }
        let calls = by_shard.iter().map(|(shard, docs)| {
            let node = map.owners[*shard as usize].clone();
            let group = GroupId::shard(collection, *shard, 0);
            async move { within(deadline, self.client.index(&node, &group, docs)).await }
        });
        let answers = join_all(calls).await;
        let mut successful = 0u64;
        for ((shard, docs), answer) in by_shard.iter().zip(answers) {
            match answer {
                Ok((written, refused)) => {
                    successful += written;
                    errors.extend(refused);
                }
                Err(e) => {
                    let owner = &map.owners[*shard as usize];
                    let code = if e.is_retryable() {
                        "node_unavailable"
                    } else {
                        "node_error"
                    };
                    errors.extend(docs.iter().map(|d| {
                        RefusedDocument {
                            id: d["id"]
                                .as_str()
                                .map_or_else(|| d["id"].to_string(), String::from),
                            code: code.into(),
                            message: format!("{owner}: {e}"),
                        }
                    }));
                }
            }
        }
        errors.truncate(prism_core::engine::MAX_REPORTED_ERRORS);
        IndexSummary {
            total_docs: documents.len() as u64,
            successful_docs: successful,
            failed_docs: documents.len() as u64 - successful,
            errors,
        }
    }
}

/// How cached statistics served a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Cached, and still describing every shard that answered.
    Hit,
    /// Not cached: gathered, and cached if no shard changed meanwhile.
    Miss,
    /// Cached, but a shard had refreshed: gathered again and the query phase repeated.
    Stale,
}

impl CacheUse {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Stale => "stale",
        }
    }
}

#[cfg(test)]
mod tests;
