//! A node's answers to other nodes: the [`Handler`] over its local collections.

use std::sync::Arc;

use async_trait::async_trait;
use prism_core::engine::{Collection, Engine, Refresh};
use prism_core::search::SearchRequest;
use prism_core::shard::Shard;
use serde_json::Value;

use crate::network::Handler;
use crate::raft::groups::GroupNode;
use crate::rpc::{
    Answer, Envelope, GroupId, Json, NodeId, RefusedDocument, Reply, Request, RpcError,
};

/// Serves calls from the local engine. In federation mode every node holds one shard of each
/// collection, under the collection's own name.
pub struct EngineHandler {
    pub engine: Arc<Engine>,
    pub node_id: NodeId,
    /// The Raft groups this node hosts, which answer `Request::Raft`.
    pub raft: Option<Arc<crate::raft::network::RaftHost>>,
    /// The shard copies of this node's Raft groups: a read naming one of their groups is
    /// served by that copy (a node may hold several shards of a collection); any other by
    /// the collection's one local shard (federation).
    pub groups: Option<Arc<GroupNode>>,
}

#[async_trait]
impl Handler for EngineHandler {
    async fn handle(&self, from: NodeId, envelope: Envelope) -> Reply {
        let engine = self.engine.clone();
        if matches!(
            envelope.request,
            Request::Raft { .. } | Request::Wake | Request::Leaders { .. }
        ) {
            return match &self.raft {
                Some(host) => Handler::handle(host.as_ref(), from, envelope).await,
                None => Err(RpcError::NotFound(format!(
                    "node {} hosts no raft groups (it runs in federation mode)",
                    self.node_id
                ))),
            };
        }
        if let Request::Index { documents } = envelope.request {
            // Writes take the collection's one write path, as HTTP's do.
            let collection = engine.collection(&group_of(envelope.group)?.collection)?;
            return index(&collection, documents).await;
        }
        let node_id = self.node_id.clone();
        let groups = self.groups.clone();
        tokio::task::spawn_blocking(move || serve(&engine, groups.as_deref(), &node_id, envelope))
            .await
            .unwrap_or_else(|e| Err(RpcError::Internal(format!("the handler failed: {e}"))))
    }
}

fn group_of(group: Option<GroupId>) -> Result<GroupId, RpcError> {
    group
        .ok_or_else(|| RpcError::InvalidRequest("this request must name a collection shard".into()))
}

/// Validates `documents` and writes the valid ones durably.
async fn index(collection: &Collection, documents: Vec<Json>) -> Reply {
    let documents = documents
        .into_iter()
        .map(Value::try_from)
        .collect::<Result<Vec<Value>, RpcError>>()?;
    let batch = collection.prepare_upserts(documents);
    let successful = batch.ops.len() as u64;
    if !batch.ops.is_empty() {
        collection.write(batch.ops, Refresh::No).await?;
    }
    Ok(Answer::Indexed {
        successful,
        refused: batch
            .errors
            .into_iter()
            .map(|e| RefusedDocument {
                id: e.id,
                code: e.code,
                message: e.message,
            })
            .collect(),
    })
}

/// The shard a read names.
enum LocalShard {
    /// This node's copy of the named Raft group.
    Group(Arc<Shard>),
    /// The collection's one local shard.
    Collection(Arc<Collection>),
}

impl std::ops::Deref for LocalShard {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        match self {
            LocalShard::Group(shard) => shard,
            LocalShard::Collection(collection) => collection.shard(),
        }
    }
}

/// Answers one read or ping from the local engine (blocking); writes go through
/// [`EngineHandler::handle`].
fn serve(engine: &Engine, groups: Option<&GroupNode>, node_id: &str, envelope: Envelope) -> Reply {
    let Envelope { group, request } = envelope;
    let shard = || -> Result<LocalShard, RpcError> {
        let group = group_of(group.clone())?;
        if let Some(shard) = groups.and_then(|g| g.shard(&group)) {
            return Ok(LocalShard::Group(shard));
        }
        Ok(LocalShard::Collection(
            engine.collection(&group.collection)?,
        ))
    };
    Ok(match request {
        Request::Ping => Answer::Pong {
            node_id: node_id.to_string(),
        },
        Request::Stats { search } => {
            let (stats, generation) =
                shard()?.term_statistics(&SearchRequest::try_from(search)?)?;
            Answer::Stats { stats, generation }
        }
        Request::Search {
            search,
            stats,
            windows,
        } => {
            // A plan never asks for more than the result window, over-fetched.
            let most = prism_core::search::MAX_RESULT_WINDOW
                * prism_core::search::plan::MAX_OVERSAMPLE as usize;
            if windows.text_offset + windows.text_limit > most || windows.vector_k > most {
                return Err(RpcError::InvalidRequest(format!(
                    "list windows {windows:?} exceed {most} hits"
                )));
            }
            // The shard's part of the search stops at the request's deadline too.
            let request = SearchRequest::try_from(search)?;
            let limits = prism_core::search::budget::SearchLimits::default();
            let budget = std::sync::Arc::new(prism_core::search::budget::SearchBudget::new(
                &limits,
                limits.timeout(request.timeout)?,
            ));
            Answer::Hits(shard()?.query_phase(&request, stats.as_ref(), windows, &budget)?)
        }
        Request::Fetch {
            search,
            generation,
            docs,
        } => {
            let hits = shard()?.fetch(&SearchRequest::try_from(search)?, &generation, &docs)?;
            Answer::Fetched(hits.iter().map(Into::into).collect())
        }
        Request::Index { .. } | Request::Raft { .. } | Request::Wake | Request::Leaders { .. } => {
            return Err(RpcError::Internal(
                "writes and raft messages are served by EngineHandler::handle, not here".into(),
            ))
        }
        Request::Join { .. }
        | Request::Propose { .. }
        | Request::Meta { .. }
        | Request::Elect
        | Request::Get { .. }
        | Request::Copies
        | Request::Refresh
        | Request::LeaveMetadata { .. }
        | Request::ReadIndex { .. }
        | Request::Progress
        | Request::ReadFence { .. } => {
            return Err(RpcError::NotFound(format!(
                "node {node_id} does not run in cluster mode"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prism_core::engine::EngineConfig;
    use prism_core::schema::CollectionSchema;
    use prism_core::shard::{Op, ShardConfig};
    use serde_json::json;

    use super::*;
    use crate::raft::groups::Liveness;
    use crate::raft::network::RaftHost;
    use crate::raft::proposal::Proposed;
    use crate::raft::quiescence::Timing;
    use crate::rpc::WireSearch;
    use crate::sim::SimNetwork;

    const SCHEMA: &str = r#"{"name": "c", "fields": {"title": {"type": "text"}}}"#;

    fn schema() -> Arc<CollectionSchema> {
        Arc::new(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap())
    }

    async fn total_docs(handler: &EngineHandler, group: GroupId) -> u64 {
        let search = SearchRequest::from_json(br#"{"query": "apple"}"#).unwrap();
        let envelope = Envelope {
            group: Some(group),
            request: Request::Stats {
                search: WireSearch::from(&search),
            },
        };
        match handler.handle("n2".into(), envelope).await.unwrap() {
            Answer::Stats { stats, .. } => stats.total_docs,
            other => panic!("not statistics: {other:?}"),
        }
    }

    /// Writes `docs` documents to `group` in one proposal, once its copy leads.
    async fn write_until_committed(
        groups: &GroupNode,
        group: &GroupId,
        schema: &CollectionSchema,
        docs: usize,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ops = (0..docs)
                .map(|n| {
                    let doc =
                        json!({"id": format!("{}-{n}", group.shard), "fields": {"title": "apple"}});
                    Op::Upsert(Arc::new(schema.prepare_document(doc).unwrap()))
                })
                .collect();
            match groups
                .write(group, ops, Duration::from_secs(1), Duration::from_secs(5))
                .await
            {
                Proposed::Committed { .. } => return,
                Proposed::Refused { .. } if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("the write to {group} failed: {other:?}"),
            }
        }
    }

    /// One node holding two shards of collection `c` as Raft groups, beside the collection's
    /// own federation shard: each read answers for the shard copy its group names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_served_by_the_shard_copy_their_group_names() {
        let dir = tempfile::tempdir().unwrap();
        let engine = tokio::task::block_in_place(|| {
            let engine = Engine::open(EngineConfig {
                data_dir: dir.path().join("engine"),
                shard: ShardConfig::default(),
                max_collections: 4,
            })
            .unwrap();
            engine
                .create_collection(CollectionSchema::from_json(SCHEMA.as_bytes()).unwrap())
                .unwrap();
            Arc::new(engine)
        });
        let network = SimNetwork::new();
        let host = Arc::new(RaftHost::new("n1".into(), 1));
        let endpoint = network.join("n1", host.clone());
        let groups = Arc::new(
            GroupNode::new(
                1,
                host.clone(),
                &dir.path().join("groups"),
                Arc::new(endpoint),
                Liveness::Quiet(Timing::default()),
            )
            .unwrap(),
        );
        let schema = schema();
        for (shard, docs) in [(0u32, 1usize), (1, 3)] {
            let group = GroupId::shard("c", shard, 1);
            groups
                .open_shard(group.clone(), schema.clone(), ShardConfig::default())
                .await
                .unwrap();
            groups
                .initialize(&group, &[(1, "n1".into())])
                .await
                .unwrap();
            write_until_committed(&groups, &group, &schema, docs).await;
            let copy = groups.shard(&group).unwrap();
            tokio::task::block_in_place(|| copy.refresh_blocking()).unwrap();
        }
        let handler = EngineHandler {
            engine,
            node_id: "n1".into(),
            raft: Some(host),
            groups: Some(groups.clone()),
        };
        assert_eq!(total_docs(&handler, GroupId::shard("c", 0, 1)).await, 1);
        assert_eq!(total_docs(&handler, GroupId::shard("c", 1, 1)).await, 3);
        assert_eq!(
            total_docs(&handler, GroupId::shard("c", 0, 0)).await,
            0,
            "a group this node does not host: the collection's federation shard"
        );
        groups.shutdown().await;
    }
}
