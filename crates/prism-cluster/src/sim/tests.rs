//! Federations of real engines on an in-memory network: ranking equal to one engine's, and
//! partial results under partitions, lost messages, paused nodes and dead members.

use std::time::{Duration, Instant};

use prism_core::engine::{Engine, EngineConfig};
use prism_core::schema::CollectionSchema;
use prism_core::search::{SearchRequest, SearchResponse};
use prism_core::shard::ShardConfig;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::*;
use crate::assignment::ShardMap;
use crate::config::{HealthConfig, QueryConfig};
use crate::coordinator::{Coordinator, FederatedSearch, RpcShardClient, ShardCopy};
use crate::membership::{Event, Membership};
use crate::node::EngineHandler;

const SCHEMA: &str = r#"{"name": "docs", "fields": {
    "title": {"type": "text"},
    "tag": {"type": "keyword", "fast": true},
    "emb": {"type": "vector", "dimension": 4, "distance": "cosine"}}}"#;

/// An engine with the `docs` collection; it blocks, so it leaves the runtime's thread.
fn engine(dir: &TempDir) -> Arc<Engine> {
    tokio::task::block_in_place(|| {
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().to_path_buf(),
            shard: ShardConfig::default(),
            max_collections: 16,
        })
        .unwrap();
        engine
            .create_collection(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap())
            .unwrap();
        Arc::new(engine)
    })
}

/// Documents with few distinct words and scores, so that ties are everywhere.
fn documents() -> Vec<Value> {
    let words = ["alpha", "beta", "gamma", "delta"];
    (0..90)
        .map(|i: usize| {
            let title = format!("{} {}", words[i % 4], words[(i / 4) % 4]);
            let emb = [(i % 3) as f32, (i % 5) as f32, 1.0, (i % 2) as f32];
            json!({"id": format!("doc-{i}"), "fields": {
                "title": title, "tag": if i.is_multiple_of(2) { "even" } else { "odd" }, "emb": emb}})
        })
        .collect()
}

struct Federation {
    network: SimNetwork,
    names: Vec<String>,
    engines: Vec<Arc<Engine>>,
    coordinator: Coordinator<RpcShardClient<SimEndpoint>>,
    _dirs: Vec<TempDir>,
}

impl Federation {
    /// `n` nodes holding `documents()` as a federation, written through node 0's coordinator.
    async fn start(n: usize) -> Federation {
        let network = SimNetwork::new();
        let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
        let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().unwrap()).collect();
        let engines: Vec<Arc<Engine>> = dirs.iter().map(engine).collect();
        let mut endpoints: Vec<SimEndpoint> = names
            .iter()
            .zip(&engines)
            .map(|(name, engine)| {
                let handler = EngineHandler {
                    engine: engine.clone(),
                    node_id: name.clone(),
                    raft: None,
                    groups: None,
                };
                network.join(name, Arc::new(handler))
            })
            .collect();
        let coordinator = Coordinator::new(
            RpcShardClient {
                network: endpoints.swap_remove(0),
            },
            100,
        );
        let federation = Federation {
            network,
            names,
            engines,
            coordinator,
            _dirs: dirs,
        };
        let map = federation.map();
        let summary = federation
            .coordinator
            .index("docs", &documents(), &map, Duration::from_secs(30))
            .await;
        assert_eq!(summary.successful_docs, 90, "{summary:?}");
        tokio::task::block_in_place(|| {
            for engine in &federation.engines {
                let collection = engine.collection("docs").unwrap();
                collection.shard().refresh_blocking().unwrap();
            }
        });
        federation
    }

    fn map(&self) -> ShardMap {
        ShardMap::assign(
            self.names.iter().map(String::as_str),
            self.names.len() as u32,
        )
        .unwrap()
    }

    fn copies(&self) -> Vec<ShardCopy> {
        self.map()
            .owners
            .into_iter()
            .enumerate()
            .map(|(shard, node)| ShardCopy {
                shard: shard as u32,
                node,
                down: None,
                generation: 0,
                alternates: Vec::new(),
            })
            .collect()
    }

    async fn search(&self, request: &SearchRequest, deadline: Duration) -> FederatedSearch {
        self.search_copies(request, &self.copies(), deadline).await
    }

    async fn search_copies(
        &self,
        request: &SearchRequest,
        copies: &[ShardCopy],
        deadline: Duration,
    ) -> FederatedSearch {
        self.coordinator
            .search("docs", request, copies, &QueryConfig::default(), deadline)
            .await
            .unwrap()
            .0
    }
}

fn request(body: Value) -> SearchRequest {
    SearchRequest::from_json(body.to_string().as_bytes()).unwrap()
}

fn ids_of(results: &[prism_core::search::Hit]) -> Vec<String> {
    results.iter().map(|h| h.id.clone()).collect()
}

const GENEROUS: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_federation_ranks_like_one_engine() {
    let federation = Federation::start(3).await;
    let dir = TempDir::new().unwrap();
    let single = engine(&dir);
    let collection = single.collection("docs").unwrap();
    tokio::task::block_in_place(|| {
        let batch = collection.prepare_upserts(documents());
        collection.shard().write_blocking(batch.ops).unwrap();
        collection.shard().refresh_blocking().unwrap();
    });
    let bodies = [
        json!({"query": "alpha", "limit": 10}),
        json!({"query": "alpha beta", "limit": 7, "offset": 9}),
        json!({"query": "gamma", "filter": "tag:even", "limit": 50}),
        json!({"limit": 20, "offset": 30}),
        json!({"vector": [1, 2, 1, 0], "limit": 10}),
        json!({"query": "delta", "vector": [0, 1, 1, 1], "limit": 10}),
        json!({"query": "beta", "vector": [2, 4, 1, 1], "limit": 5, "offset": 5,
               "hybrid": {"strategy": "weighted", "text_weight": 0.3, "vector_weight": 0.7}}),
        json!({"query": "alpha", "limit": 3,
               "aggregations": {"tags": {"terms": {"field": "tag"}}}}),
    ];
    for body in bodies {
        let r = request(body.clone());
        let want: SearchResponse =
            tokio::task::block_in_place(|| collection.shard().search(&r)).unwrap();
        let got = federation.search(&r, GENEROUS).await;
        assert!(!got.is_partial, "{body}: {:?}", got.shard_status);
        assert_eq!(ids_of(&got.results), ids_of(&want.results), "{body}");
        assert_eq!(got.total, want.total, "{body}");
        for (a, b) in got.results.iter().zip(&want.results) {
            assert!(
                (a.score - b.score).abs() <= 1e-4 * b.score.abs().max(1.0),
                "{body}"
            );
            assert_eq!(a.fields, b.fields, "{body}");
        }
        assert_eq!(got.aggregations, want.aggregations, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_lost_messages_and_paused_nodes_give_partial_results_then_heal() {
    let federation = Federation::start(3).await;
    let r = request(json!({"query": "alpha OR beta", "limit": 100}));
    let complete = federation.search(&r, GENEROUS).await;
    assert!(!complete.is_partial);
    let short = Duration::from_millis(300);
    let node2_shard = federation.map().shards_of("node-2").next().unwrap();
    let check_partial = |answer: &FederatedSearch, what: &str| {
        assert!(answer.is_partial, "{what}");
        let failures = &answer.shard_status.failures;
        assert_eq!(failures.len(), 1, "{what}: {failures:?}");
        assert_eq!(
            (failures[0].shard, failures[0].node.as_str()),
            (node2_shard, "node-2"),
            "{what}"
        );
        assert!(
            failures[0].reason.contains("timed out"),
            "{what}: {failures:?}"
        );
        // What answered is exactly the complete answer without node 2's documents.
        let expected: Vec<String> = ids_of(&complete.results)
            .into_iter()
            .filter(|id| federation.map().route(id).1 != "node-2")
            .collect();
        assert_eq!(ids_of(&answer.results), expected, "{what}");
    };

    federation.network.partition(&["node-0"], &["node-2"]);
    check_partial(&federation.search(&r, short).await, "partitioned");
    federation.network.heal();
    assert_eq!(federation.search(&r, GENEROUS).await, complete);

    // One lost request, then the link works again.
    federation.network.drop_next("node-0", "node-2", 1);
    check_partial(&federation.search(&r, short).await, "a lost message");
    assert_eq!(federation.search(&r, GENEROUS).await, complete);

    // A paused node answers nothing until it resumes.
    federation.network.pause("node-2");
    check_partial(&federation.search(&r, short).await, "paused");
    federation.network.resume("node-2");
    assert_eq!(federation.search(&r, GENEROUS).await, complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_marks_a_silent_node_dead_and_search_stops_asking_it() {
    let federation = Federation::start(3).await;
    let config = HealthConfig {
        heartbeat_interval_ms: 100,
        failure_threshold: 2,
        suspect_timeout_ms: 200,
        ..HealthConfig::default()
    };
    let start = Instant::now();
    let mut membership = Membership::new("node-0", "node-0");
    for name in &federation.names[1..] {
        membership.apply(
            Event::Discovered {
                address: name.clone(),
                is_self: false,
            },
            start,
        );
    }
    assert_eq!(membership.shard_map(), federation.map());
    // node-1 answers its heartbeats; node-2 is cut off and never does.
    federation.network.partition(&["node-0"], &["node-2"]);
    let later = start + Duration::from_millis(500);
    membership.apply(
        Event::Pong {
            address: "node-1".into(),
            node_id: "node-1".into(),
        },
        later,
    );
    let copies = membership.copies(later, &config);
    let before = federation.network.delivered_to("node-2");
    let r = request(json!({"query": "gamma", "limit": 100}));
    let started = Instant::now();
    let answer = federation.search_copies(&r, &copies, GENEROUS).await;
    assert!(
        started.elapsed() < GENEROUS / 2,
        "a dead node costs no deadline"
    );
    assert_eq!(federation.network.delivered_to("node-2"), before);
    assert!(answer.is_partial);
    assert!(answer.shard_status.failures[0]
        .reason
        .contains("node-2 is dead"));
    assert!(!answer.results.is_empty());
}
