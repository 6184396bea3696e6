//! The typed messages nodes send each other, as postcard encodes them: an [`Envelope`] that
//! names the shard group a request is for, the [`Request`], and a [`Reply`] that is either an
//! [`Answer`] or a typed [`RpcError`] a caller can decide on (retry elsewhere, follow the
//! leader, give up). Free-form JSON (documents, stored fields, aggregation requests) travels
//! as [`Json`], a binary tree of values, never as JSON text.

use prism_core::fusion::HybridStrategy;
use prism_core::search::plan::ShardWindows;
use prism_core::search::{DocRef, HighlightRequest, Hit, SearchRequest, ShardHits, VectorQuery};
use prism_core::stats::TermStatistics;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A node, as the membership names it.
pub type NodeId = String;

/// One shard of one collection: the unit of replication, so one Raft group in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId {
    pub collection: String,
    pub shard: u32,
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.collection, self.shard)
    }
}

/// A call from one node to another: node-level calls (`Ping`) name no group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub group: Option<GroupId>,
    pub request: Request,
}

/// What a call asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness; answered with the node id.
    Ping,
    /// BM25 statistics of the group's shard for a search.
    Stats { search: WireSearch },
    /// The query phase: the shard's ranked documents, scored with collection-wide statistics,
    /// each list as long as the coordinator's plan says.
    Search {
        search: WireSearch,
        stats: Option<TermStatistics>,
        windows: ShardWindows,
    },
    /// The fetch phase: stored fields and highlights of documents a query phase of searcher
    /// `generation` ranked.
    Fetch {
        search: WireSearch,
        generation: String,
        docs: Vec<DocRef>,
    },
    /// Upsert documents into the group's shard.
    Index { documents: Vec<Json> },
}

/// One document a write refused, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedDocument {
    pub id: String,
    pub code: String,
    pub message: String,
}

/// The successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Pong {
        node_id: String,
    },
    Stats {
        stats: TermStatistics,
        /// The searcher generation the statistics describe.
        generation: String,
    },
    Hits(ShardHits),
    /// One hit per requested document, in order.
    Fetched(Vec<WireHit>),
    /// `successful` documents written durably; the others were refused.
    Indexed {
        successful: u64,
        refused: Vec<RefusedDocument>,
    },
}

/// Why a call failed, typed so that the caller knows what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    /// The collection (or document, or searcher) does not exist there; retrying elsewhere
    /// will not help unless placement changed.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request itself is wrong (a bad query, a schema mismatch): it fails on any copy.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The node sheds load; retry later or on another copy.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Writes go to the group's leader, which the node names when it knows it.
    #[error("not the leader{}", .leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<NodeId> },
    /// The node or the shard cannot answer now (unreachable, timed out, read-only, closed);
    /// another copy may.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected state on the other side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RpcError {
    /// Whether another copy, or the same one later, may answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RpcError::Overloaded(_) | RpcError::NotLeader { .. } | RpcError::Unavailable(_)
        )
    }
}

impl From<prism_core::Error> for RpcError {
    fn from(e: prism_core::Error) -> Self {
        use prism_core::Error as E;
        let message = e.to_string();
        match e {
            E::CollectionNotFound(_) | E::DocumentNotFound(_) => RpcError::NotFound(message),
            E::InvalidQuery(_)
            | E::InvalidRequest(_)
            | E::InvalidSchema(_)
            | E::InvalidDocument { .. }
            | E::InvalidCollectionName { .. } => RpcError::InvalidRequest(message),
            E::Overloaded | E::LimitExceeded(_) => RpcError::Overloaded(message),
            E::ShuttingDown
            | E::InsufficientStorage { .. }
            | E::StorageFailed { .. }
            | E::WriteUnknown { .. }
            | E::CollectionUnavailable { .. }
            | E::Corrupt { .. }
            | E::Io { .. } => RpcError::Unavailable(message),
            _ => RpcError::Internal(message),
        }
    }
}

/// The reply to an [`Envelope`].
pub type Reply = Result<Answer, RpcError>;

/// A JSON value in a form postcard can carry (it cannot decode self-describing data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Json {
        match value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Json::Int(i),
                (None, Some(u)) => Json::Uint(u),
                _ => Json::Float(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => Json::String(s.clone()),
            Value::Array(items) => Json::Array(items.iter().map(Json::from).collect()),
            Value::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Json::from(v)))
                    .collect(),
            ),
        }
    }
}

impl From<Json> for Value {
    fn from(json: Json) -> Value {
        match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Int(i) => Value::from(i),
            Json::Uint(u) => Value::from(u),
            Json::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Json::String(s) => Value::String(s),
            Json::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            Json::Object(entries) => Value::Object(object(entries)),
        }
    }
}

fn object(entries: Vec<(String, Json)>) -> Map<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect()
}

fn entries(map: &Map<String, Value>) -> Vec<(String, Json)> {
    map.iter()
        .map(|(k, v)| (k.clone(), Json::from(v)))
        .collect()
}

/// A [`SearchRequest`] as postcard carries it: the same fields, with the HTTP form's untagged
/// and internally tagged parts spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSearch {
    pub query: Option<String>,
    pub fields: Option<Vec<String>>,
    pub vector: Option<(Option<String>, Vec<f64>)>,
    pub filter: Option<String>,
    pub limit: u64,
    pub offset: u64,
    pub hybrid: Option<WireHybrid>,
    pub rank_window_size: Option<u64>,
    pub aggregations: Option<Json>,
    pub highlight: Option<WireHighlight>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireHybrid {
    Rrf {
        rrf_k: f32,
    },
    Weighted {
        text_weight: f32,
        vector_weight: f32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireHighlight {
    Enabled(bool),
    Fields { fields: Vec<String>, max_chars: u64 },
}

impl From<&SearchRequest> for WireSearch {
    fn from(r: &SearchRequest) -> WireSearch {
        WireSearch {
            query: r.query.clone(),
            fields: r.fields.clone(),
            vector: r.vector.as_ref().map(|v| match v {
                VectorQuery::Values(values) => (None, values.clone()),
                VectorQuery::Field { field, values } => (Some(field.clone()), values.clone()),
            }),
            filter: r.filter.clone(),
            limit: r.limit as u64,
            offset: r.offset as u64,
            hybrid: r.hybrid.as_ref().map(|h| match h {
                HybridStrategy::Rrf { rrf_k } => WireHybrid::Rrf { rrf_k: *rrf_k },
                HybridStrategy::Weighted {
                    text_weight,
                    vector_weight,
                } => WireHybrid::Weighted {
                    text_weight: *text_weight,
                    vector_weight: *vector_weight,
                },
            }),
            rank_window_size: r.rank_window_size.map(|w| w as u64),
            aggregations: r.aggregations.as_ref().map(Json::from),
            highlight: r.highlight.as_ref().map(|h| match h {
                HighlightRequest::Enabled(on) => WireHighlight::Enabled(*on),
                HighlightRequest::Fields { fields, max_chars } => WireHighlight::Fields {
                    fields: fields.clone(),
                    max_chars: *max_chars as u64,
                },
            }),
        }
    }
}

impl From<WireSearch> for SearchRequest {
    fn from(w: WireSearch) -> SearchRequest {
        SearchRequest {
            query: w.query,
            fields: w.fields,
            vector: w.vector.map(|(field, values)| match field {
                None => VectorQuery::Values(values),
                Some(field) => VectorQuery::Field { field, values },
            }),
            filter: w.filter,
            limit: w.limit as usize,
            offset: w.offset as usize,
            hybrid: w.hybrid.map(|h| match h {
                WireHybrid::Rrf { rrf_k } => HybridStrategy::Rrf { rrf_k },
                WireHybrid::Weighted {
                    text_weight,
                    vector_weight,
                } => HybridStrategy::Weighted {
                    text_weight,
                    vector_weight,
                },
            }),
            rank_window_size: w.rank_window_size.map(|x| x as usize),
            aggregations: w.aggregations.map(Value::from),
            highlight: w.highlight.map(|h| match h {
                WireHighlight::Enabled(on) => HighlightRequest::Enabled(on),
                WireHighlight::Fields { fields, max_chars } => HighlightRequest::Fields {
                    fields,
                    max_chars: max_chars as usize,
                },
            }),
        }
    }
}

/// A fetched [`Hit`] as postcard carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireHit {
    pub id: String,
    pub score: f32,
    pub fields: Vec<(String, Json)>,
    pub highlights: Option<Vec<(String, Json)>>,
}

impl From<&Hit> for WireHit {
    fn from(hit: &Hit) -> WireHit {
        WireHit {
            id: hit.id.clone(),
            score: hit.score,
            fields: entries(&hit.fields),
            highlights: hit.highlights.as_ref().map(entries),
        }
    }
}

impl From<WireHit> for Hit {
    fn from(w: WireHit) -> Hit {
        Hit {
            id: w.id,
            score: w.score,
            fields: object(w.fields),
            highlights: w.highlights.map(object),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roundtrip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        postcard::from_bytes(&postcard::to_stdvec(value).unwrap()).unwrap()
    }

    #[test]
    fn every_search_request_field_survives_the_wire() {
        let bodies = [
            json!({"query": "a b", "fields": ["title"], "filter": "tag:x", "limit": 7,
                   "offset": 3, "aggregations": {"t": {"terms": {"field": "tag", "size": 2}}},
                   "highlight": {"fields": ["title"], "max_chars": 40}}),
            json!({"query": "a", "vector": [0.5, -1.25], "hybrid": {"strategy": "weighted",
                   "text_weight": 0.3, "vector_weight": 0.7}, "rank_window_size": 50,
                   "highlight": true}),
            json!({"vector": {"field": "emb", "values": [1, 2]},
                   "hybrid": {"strategy": "rrf", "rrf_k": 10}}),
        ];
        for body in bodies {
            let request = SearchRequest::from_json(body.to_string().as_bytes()).unwrap();
            let wire = roundtrip(&WireSearch::from(&request));
            assert_eq!(SearchRequest::from(wire), request, "{body}");
        }
    }

    #[test]
    fn json_values_keep_their_types_and_key_order() {
        let value = json!({"z": 1, "a": [true, null, -3, 18446744073709551615u64, 2.5,
                           "s", {"nested": {"deep": []}}]});
        let back = Value::from(roundtrip(&Json::from(&value)));
        assert_eq!(back, value);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a"]);
    }

    #[test]
    fn core_errors_map_to_what_a_caller_can_act_on() {
        use prism_core::Error as E;
        let not_found: RpcError = E::CollectionNotFound("x".into()).into();
        assert!(matches!(not_found, RpcError::NotFound(_)));
        let bad: RpcError = E::InvalidQuery("bad".into()).into();
        assert!(matches!(bad, RpcError::InvalidRequest(_)) && !bad.is_retryable());
        let busy: RpcError = E::Overloaded.into();
        assert!(busy.is_retryable());
        let leader = RpcError::NotLeader {
            leader: Some("n2".into()),
        };
        assert_eq!(leader.to_string(), "not the leader; the leader is n2");
        // Typed errors survive the wire.
        assert_eq!(roundtrip(&Reply::Err(leader.clone())), Err(leader));
    }
}
