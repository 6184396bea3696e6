//! The coordinator against a scripted [`ShardClient`]: no sockets, and tokio's paused clock,
//! so deadlines fire at once and elapsed time is exact.

use std::collections::HashMap;

use parking_lot::Mutex;
use prism_core::rank::{best_first, id_hash};
use prism_core::search::RankedDoc;
use serde_json::{json, Map};
use tokio::time::Instant;

use super::*;

/// What a scripted shard does when called.
#[derive(Clone)]
enum Behaviour {
    Answer,
    Fail(RpcError),
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct FakeShard {
    /// (id, score) of every document, in any order.
    docs: Vec<(String, f32)>,
    generation: String,
    behaviour: Behaviour,
    /// Fetches fail while the query phase answers.
    fetch_fails: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Stats,
    Query(Option<TermStatistics>),
    Fetch,
    Index(Vec<String>),
}

#[derive(Default)]
struct FakeClient {
    shards: Mutex<HashMap<NodeId, FakeShard>>,
    calls: Mutex<Vec<(NodeId, Call)>>,
}

impl FakeClient {
    fn with(shards: &[(&str, FakeShard)]) -> FakeClient {
        FakeClient {
            shards: Mutex::new(
                shards
                    .iter()
                    .map(|(n, s)| (n.to_string(), s.clone()))
                    .collect(),
            ),
            calls: Mutex::default(),
        }
    }

    fn calls_to(&self, node: &str) -> Vec<Call> {
        self.calls
            .lock()
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| c.clone())
            .collect()
    }

    async fn enter(&self, node: &NodeId, call: Call) -> Result<FakeShard, RpcError> {
        self.calls.lock().push((node.clone(), call));
        let shard = self.shards.lock()[node].clone();
        match &shard.behaviour {
            Behaviour::Answer => Ok(shard),
            Behaviour::Fail(e) => Err(e.clone()),
            Behaviour::Hang => futures::future::pending().await,
        }
    }
}

fn ranked(shard: &FakeShard) -> Vec<RankedDoc> {
    let mut list: Vec<RankedDoc> = shard
        .docs
        .iter()
        .enumerate()
        .map(|(i, (id, score))| RankedDoc {
            doc: i as DocRef,
            score: *score,
            id_hash: id_hash(id),
        })
        .collect();
    list.sort_by(|a, b| best_first((a.score, a.id_hash), (b.score, b.id_hash)));
    list
}

#[async_trait]
impl ShardClient for FakeClient {
    async fn statistics(
        &self,
        node: &NodeId,
        _group: &GroupId,
        _search: &SearchRequest,
    ) -> Result<(TermStatistics, String), RpcError> {
        let shard = self.enter(node, Call::Stats).await?;
        let stats = TermStatistics {
            total_docs: shard.docs.len() as u64,
            ..Default::default()
        };
        Ok((stats, shard.generation))
    }

    async fn query(
        &self,
        node: &NodeId,
        _group: &GroupId,
        _search: &SearchRequest,
        stats: Option<&TermStatistics>,
        windows: ShardWindows,
    ) -> Result<ShardHits, RpcError> {
        let shard = self.enter(node, Call::Query(stats.cloned())).await?;
        let list = ranked(&shard);
        Ok(ShardHits {
            total: shard.docs.len() as u64,
            text: list
                .iter()
                .skip(windows.text_offset)
                .take(windows.text_limit)
                .copied()
                .collect(),
            vector: list.iter().take(windows.vector_k).copied().collect(),
            intermediate_aggregations: None,
            generation: shard.generation,
            timed_out: false,
        })
    }

    async fn fetch(
        &self,
        node: &NodeId,
        _group: &GroupId,
        _search: &SearchRequest,
        _generation: &str,
        docs: &[DocRef],
    ) -> Result<Vec<Hit>, RpcError> {
        let shard = self.enter(node, Call::Fetch).await?;
        if shard.fetch_fails {
            return Err(RpcError::Unavailable("disk read failed".into()));
        }
        Ok(docs
            .iter()
            .map(|d| Hit {
                id: shard.docs[*d as usize].0.clone(),
                score: 0.0,
                fields: Map::new(),
                highlights: None,
            })
            .collect())
    }

    async fn index(
        &self,
        node: &NodeId,
        _group: &GroupId,
        documents: &[Value],
    ) -> Result<(u64, Vec<RefusedDocument>), RpcError> {
        let ids = documents
            .iter()
            .map(|d| prism_core::schema::document_id(&d["id"]).unwrap_or_default())
            .collect();
        self.enter(node, Call::Index(ids)).await?;
        Ok((documents.len() as u64, Vec::new()))
    }
}

fn shard(docs: &[(&str, f32)]) -> FakeShard {
    FakeShard {
        docs: docs.iter().map(|(i, s)| (i.to_string(), *s)).collect(),
        generation: "g1".into(),
        behaviour: Behaviour::Answer,
        fetch_fails: false,
    }
}

fn copies(nodes: &[&str]) -> Vec<ShardCopy> {
    nodes
        .iter()
        .enumerate()
        .map(|(s, n)| ShardCopy {
            shard: s as u32,
            node: n.to_string(),
            down: None,
            generation: 0,
            alternates: Vec::new(),
        })
        .collect()
}

fn text(query: &str, limit: usize) -> SearchRequest {
    SearchRequest {
        query: Some(query.into()),
        limit,
        ..Default::default()
    }
}

fn ids(answer: &FederatedSearch) -> Vec<&str> {
    answer.results.iter().map(|h| h.id.as_str()).collect()
}

const DEADLINE: Duration = Duration::from_secs(5);

async fn search(
    coordinator: &Coordinator<FakeClient>,
    request: &SearchRequest,
    copies: &[ShardCopy],
    query: &QueryConfig,
) -> Result<FederatedSearch, SearchError> {
    coordinator
        .search("docs", request, copies, query, DEADLINE)
        .await
        .map(|(answer, _)| answer)
}

#[tokio::test(start_paused = true)]
async fn pages_merge_across_shards_by_score_with_the_offset_applied_once() {
    let client = FakeClient::with(&[
        ("a", shard(&[("a1", 9.0), ("a2", 5.0), ("a3", 1.0)])),
        ("b", shard(&[("b1", 8.0), ("b2", 7.0), ("b3", 6.0)])),
    ]);
    let coordinator = Coordinator::new(client, 10);
    let answer = search(
        &coordinator,
        &text("x", 3),
        &copies(&["a", "b"]),
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&answer), ["a1", "b1", "b2"]);
    assert_eq!(answer.results[0].score, 9.0, "scores come from the merge");
    assert_eq!((answer.total, answer.is_partial), (6, false));
    let mut second = text("x", 2);
    second.offset = 3;
    let page = search(
        &coordinator,
        &second,
        &copies(&["a", "b"]),
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&page), ["b3", "a2"]);
}

#[tokio::test(start_paused = true)]
async fn ties_across_shards_rank_as_one_index_by_id_hash() {
    let all: Vec<(String, f32)> = (0..40)
        .map(|i| (format!("doc-{i}"), (i % 2) as f32))
        .collect();
    fn as_refs(docs: &[(String, f32)]) -> Vec<(&str, f32)> {
        docs.iter().map(|(i, s)| (i.as_str(), *s)).collect()
    }
    let one = FakeClient::with(&[("solo", shard(&as_refs(&all)))]);
    let parts: Vec<Vec<(String, f32)>> = (0..3)
        .map(|s| {
            all.iter()
                .filter(|(id, _)| id_hash(id) % 3 == s)
                .cloned()
                .collect()
        })
        .collect();
    let three = FakeClient::with(&[
        ("a", shard(&as_refs(&parts[0]))),
        ("b", shard(&as_refs(&parts[1]))),
        ("c", shard(&as_refs(&parts[2]))),
    ]);
    let (one, three) = (Coordinator::new(one, 0), Coordinator::new(three, 0));
    for (offset, limit) in [(0, 10), (5, 7), (18, 4), (30, 10)] {
        let mut r = text("x", limit);
        r.offset = offset;
        let q = QueryConfig::default();
        let single = search(&one, &r, &copies(&["solo"]), &q).await.unwrap();
        let sharded = search(&three, &r, &copies(&["a", "b", "c"]), &q)
            .await
            .unwrap();
        assert_eq!(ids(&single), ids(&sharded), "offset {offset} limit {limit}");
        assert_eq!(single.results.len(), limit.min(40 - offset));
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_shard_gives_a_partial_answer_that_names_it() {
    let mut broken = shard(&[("b1", 8.0)]);
    broken.behaviour = Behaviour::Fail(RpcError::Unavailable("disk full".into()));
    let client = FakeClient::with(&[
        ("a", shard(&[("a1", 9.0), ("a2", 1.0)])),
        ("b", broken),
        ("c", shard(&[("c1", 3.0)])),
    ]);
    let coordinator = Coordinator::new(client, 10);
    let answer = search(
        &coordinator,
        &text("x", 10),
        &copies(&["a", "b", "c"]),
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&answer), ["a1", "c1", "a2"]);
    assert!(answer.is_partial);
    assert_eq!(answer.total, 3);
    let status = &answer.shard_status;
    assert_eq!((status.total, status.successful, status.failed), (3, 2, 1));
    assert_eq!(status.failures[0].shard, 1);
    assert_eq!(status.failures[0].node, "b");
    assert!(
        status.failures[0].reason.contains("disk full"),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_member_is_reported_failed_at_once_without_a_call() {
    let mut dead = shard(&[("c1", 3.0)]);
    dead.behaviour = Behaviour::Hang;
    let client = FakeClient::with(&[
        ("a", shard(&[("a1", 9.0)])),
        ("b", shard(&[("b1", 2.0)])),
        ("c", dead),
    ]);
    let coordinator = Coordinator::new(client, 10);
    let mut route = copies(&["a", "b", "c"]);
    route[2].down = Some("node c is dead: no heartbeat answered".into());
    let started = Instant::now();
    let answer = search(
        &coordinator,
        &text("x", 10),
        &route,
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no deadline was waited for"
    );
    assert!(coordinator.client().calls_to("c").is_empty());
    assert!(answer.is_partial);
    assert_eq!(
        answer.shard_status.failures[0].reason,
        "node c is dead: no heartbeat answered"
    );
    assert_eq!(ids(&answer), ["a1", "b1"]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_costs_one_deadline_then_counts_failed() {
    let mut silent = shard(&[("b1", 3.0)]);
    silent.behaviour = Behaviour::Hang;
    let client = FakeClient::with(&[("a", shard(&[("a1", 9.0)])), ("b", silent)]);
    let coordinator = Coordinator::new(client, 10);
    let deadline = Duration::from_millis(250);
    let started = Instant::now();
    let (answer, _) = coordinator
        .search(
            "docs",
            &text("x", 10),
            &copies(&["a", "b"]),
            &QueryConfig::default(),
            deadline,
        )
        .await
        .unwrap();
    // One deadline for the statistics phase, where b stopped being asked.
    assert_eq!(started.elapsed(), deadline);
    assert_eq!(coordinator.client().calls_to("b"), [Call::Stats]);
    assert!(answer.shard_status.failures[0]
        .reason
        .contains("timed out after 250 ms"));
    assert_eq!(ids(&answer), ["a1"]);
}

#[tokio::test(start_paused = true)]
async fn the_verdict_follows_the_partial_result_settings() {
    let mut broken = shard(&[]);
    broken.behaviour = Behaviour::Fail(RpcError::Unavailable("gone".into()));
    let client = FakeClient::with(&[
        ("a", shard(&[("a1", 1.0)])),
        ("b", broken.clone()),
        ("c", broken),
    ]);
    let coordinator = Coordinator::new(client, 10);
    let route = copies(&["a", "b", "c"]);
    let strict = QueryConfig {
        allow_partial_results: false,
        ..QueryConfig::default()
    };
    match search(&coordinator, &text("x", 10), &route, &strict).await {
        Err(SearchError::Unavailable { message, status }) => {
            assert!(message.contains("allow_partial_results"), "{message}");
            assert_eq!((status.successful, status.failed), (1, 2));
            assert_eq!(status.failures.len(), 2);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let two = QueryConfig {
        min_successful_shards: 2,
        ..QueryConfig::default()
    };
    assert!(matches!(
        search(&coordinator, &text("x", 10), &route, &two).await,
        Err(SearchError::Unavailable { message, .. }) if message.contains("min_successful_shards")
    ));
    let lenient = search(
        &coordinator,
        &text("x", 10),
        &route,
        &QueryConfig::default(),
    )
    .await;
    assert!(lenient.unwrap().is_partial);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_query_is_the_clients_error_not_a_shard_failure() {
    let mut refusing = shard(&[]);
    refusing.behaviour = Behaviour::Fail(RpcError::InvalidRequest(
        "field \"nope\" is not in the schema".into(),
    ));
    let client = FakeClient::with(&[("a", refusing.clone()), ("b", refusing)]);
    let coordinator = Coordinator::new(client, 10);
    let answer = search(
        &coordinator,
        &text("nope:x", 10),
        &copies(&["a", "b"]),
        &QueryConfig::default(),
    )
    .await;
    assert_eq!(
        answer,
        Err(SearchError::Invalid(
            "field \"nope\" is not in the schema".into()
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn a_collection_no_shard_has_is_not_found_and_one_shard_without_it_is_partial() {
    let mut missing = shard(&[]);
    missing.behaviour = Behaviour::Fail(RpcError::NotFound(
        "collection \"docs\" does not exist".into(),
    ));
    let nowhere = FakeClient::with(&[("a", missing.clone()), ("b", missing.clone())]);
    let coordinator = Coordinator::new(nowhere, 10);
    let route = copies(&["a", "b"]);
    assert_eq!(
        search(
            &coordinator,
            &text("x", 10),
            &route,
            &QueryConfig::default()
        )
        .await,
        Err(SearchError::NotFound(
            "collection \"docs\" does not exist".into()
        ))
    );
    let somewhere = FakeClient::with(&[("a", shard(&[("a1", 1.0)])), ("b", missing)]);
    let coordinator = Coordinator::new(somewhere, 10);
    let answer = search(
        &coordinator,
        &text("x", 10),
        &route,
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert!(answer.is_partial);
    assert_eq!(ids(&answer), ["a1"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_drops_that_shards_hits_and_makes_the_answer_partial() {
    let mut unreadable = shard(&[("b1", 8.0)]);
    unreadable.fetch_fails = true;
    let client = FakeClient::with(&[("a", shard(&[("a1", 9.0), ("a2", 1.0)])), ("b", unreadable)]);
    let coordinator = Coordinator::new(client, 10);
    let answer = search(
        &coordinator,
        &text("x", 10),
        &copies(&["a", "b"]),
        &QueryConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&answer), ["a1", "a2"]);
    assert!(answer.is_partial);
    assert!(answer.shard_status.failures[0]
        .reason
        .starts_with("fetch: "));
}

#[tokio::test(start_paused = true)]
async fn cached_statistics_serve_until_a_shard_changes_then_are_gathered_again() {
    let client = FakeClient::with(&[
        ("a", shard(&[("a1", 9.0)])),
        ("b", shard(&[("b1", 8.0), ("b2", 1.0)])),
    ]);
    let coordinator = Coordinator::new(client, 10);
    let route = copies(&["a", "b"]);
    let q = QueryConfig::default();
    let request = text("x", 10);
    let run = || coordinator.search("docs", &request, &route, &q, DEADLINE);
    assert_eq!(run().await.unwrap().1, Some(CacheUse::Miss));
    assert_eq!(run().await.unwrap().1, Some(CacheUse::Hit));
    let stats_calls = |node: &str| {
        coordinator
            .client()
            .calls_to(node)
            .into_iter()
            .filter(|c| *c == Call::Stats)
            .count()
    };
    assert_eq!(stats_calls("b"), 1, "the hit gathered nothing");
    // b refreshes: a new generation, and a document more.
    {
        let mut shards = coordinator.client().shards.lock();
        let b = shards.get_mut("b").unwrap();
        b.generation = "g2".into();
        b.docs.push(("b3".into(), 0.5));
    }
    let (answer, used) = run().await.unwrap();
    assert_eq!(used, Some(CacheUse::Stale));
    assert_eq!(stats_calls("b"), 2, "gathered again");
    // The repeated query phase scored with the fresh statistics: 1 + 3 documents.
    let last_query = coordinator
        .client()
        .calls_to("b")
        .into_iter()
        .rev()
        .find_map(|c| match c {
            Call::Query(stats) => stats,
            _ => None,
        });
    assert_eq!(last_query.map(|s| s.total_docs), Some(4));
    assert_eq!(answer.total, 4);
    // And the fresh statistics are cached.
    assert_eq!(run().await.unwrap().1, Some(CacheUse::Hit));
    // A search without text gathers none.
    let all = SearchRequest {
        limit: 10,
        ..Default::default()
    };
    let (_, used) = coordinator
        .search("docs", &all, &route, &q, DEADLINE)
        .await
        .unwrap();
    assert_eq!(used, None);
}

#[tokio::test(start_paused = true)]
async fn writes_go_to_the_owner_of_each_id_and_a_failed_owner_is_reported_per_document() {
    let mut down = shard(&[]);
    down.behaviour = Behaviour::Fail(RpcError::Unavailable("connection refused".into()));
    let client = FakeClient::with(&[("a", shard(&[])), ("b", down)]);
    let coordinator = Coordinator::new(client, 10);
    let map = ShardMap::assign(["a", "b"], 2).unwrap();
    let docs: Vec<Value> = (0..20).map(|i| json!({"id": format!("d{i}")})).collect();
    let mut with_bad = docs.clone();
    with_bad.push(json!({"title": "no id"}));
    let summary = coordinator.index("docs", &with_bad, &map, DEADLINE).await;
    let on_b: Vec<String> = docs
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .filter(|id| map.route(id).1 == "b")
        .collect();
    assert!(!on_b.is_empty() && on_b.len() < 20);
    assert_eq!(summary.total_docs, 21);
    assert_eq!(summary.successful_docs, 20 - on_b.len() as u64);
    assert_eq!(summary.failed_docs, on_b.len() as u64 + 1);
    let unavailable: Vec<&str> = summary
        .errors
        .iter()
        .filter(|e| e.code == "node_unavailable")
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(unavailable, on_b);
    assert!(summary.errors.iter().any(|e| e.code == "invalid_document"));
    // Every document a reached is one a owns.
    let to_a = coordinator.client().calls_to("a");
    let [Call::Index(written)] = to_a.as_slice() else {
        panic!("{to_a:?}")
    };
    assert!(written.iter().all(|id| map.route(id).1 == "a"));
}

/// A numeric id is routed as the digits its owner stores; one that only an f64 could hold
/// (and so round) is refused before any node sees it.
#[tokio::test(start_paused = true)]
async fn numeric_ids_route_as_their_digits_and_rounding_ones_are_refused() {
    let client = FakeClient::with(&[("a", shard(&[])), ("b", shard(&[]))]);
    let coordinator = Coordinator::new(client, 10);
    let map = ShardMap::assign(["a", "b"], 2).unwrap();
    let body = r#"[{"id": 18446744073709551615}, {"id": -12}, {"id": 7},
        {"id": 123456789012345678901234567890}, {"id": 1e2}, {"id": 0.5}]"#;
    let docs: Vec<Value> = serde_json::from_str(body).unwrap();
    let summary = coordinator.index("docs", &docs, &map, DEADLINE).await;
    assert_eq!(summary.successful_docs, 3);
    assert_eq!(summary.failed_docs, 3);
    assert!(summary.errors.iter().all(|e| e.code == "invalid_document"
        && e.message.contains("send any other id as a JSON string")));
    for id in ["18446744073709551615", "-12", "7"] {
        let owner = map.route(id).1;
        let calls = coordinator.client().calls_to(owner);
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Index(ids) if ids.iter().any(|i| i == id))),
            "{id} did not reach its owner {owner}: {calls:?}"
        );
    }
}
