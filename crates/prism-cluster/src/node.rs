//! A node's answers to other nodes: the [`Handler`] over its local collections.

use std::sync::Arc;

use async_trait::async_trait;
use prism_core::engine::{Collection, Engine, Refresh};
use prism_core::search::SearchRequest;
use serde_json::Value;

use crate::network::Handler;
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
        tokio::task::spawn_blocking(move || serve(&engine, &node_id, envelope))
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

/// Answers one read or ping from the local engine (blocking); writes go through
/// [`EngineHandler::handle`].
fn serve(engine: &Engine, node_id: &str, envelope: Envelope) -> Reply {
    let Envelope { group, request } = envelope;
    let collection = || -> Result<Arc<Collection>, RpcError> {
        Ok(engine.collection(&group_of(group.clone())?.collection)?)
    };
    Ok(match request {
        Request::Ping => Answer::Pong {
            node_id: node_id.to_string(),
        },
        Request::Stats { search } => {
            let (stats, generation) = collection()?
                .shard()
                .term_statistics(&SearchRequest::try_from(search)?)?;
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
            Answer::Hits(collection()?.shard().query_phase(
                &request,
                stats.as_ref(),
                windows,
                &budget,
            )?)
        }
        Request::Fetch {
            search,
            generation,
            docs,
        } => {
            let hits = collection()?.shard().fetch(
                &SearchRequest::try_from(search)?,
                &generation,
                &docs,
            )?;
            Answer::Fetched(hits.iter().map(Into::into).collect())
        }
        Request::Index { .. } | Request::Raft { .. } | Request::Wake | Request::Leaders { .. } => {
            return Err(RpcError::Internal(
                "writes and raft messages are served by EngineHandler::handle, not here".into(),
            ))
        }
    })
}
