//! The typed messages nodes send each other, as postcard encodes them: an [`Envelope`] that
//! names the shard group a request is for, the [`Request`], and a [`Reply`] that is either an
//! [`Answer`] or a typed [`RpcError`] a caller can decide on (retry elsewhere, follow the
//! leader, give up). Free-form JSON (documents, stored fields, aggregation requests) travels
//! as [`Json`], a binary tree of values, never as JSON text.

use std::collections::BTreeMap;

use prism_core::fusion::HybridStrategy;
use prism_core::search::plan::ShardWindows;
use prism_core::search::{DocRef, HighlightRequest, Hit, SearchRequest, ShardHits, VectorQuery};
use prism_core::stats::TermStatistics;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A node, as the membership names it.
pub type NodeId = String;

/// One shard of one collection: the unit of replication, so one Raft group in cluster mode.
/// `generation` is the collection's (from the metadata): a deleted and re-created collection
/// has a new one, so its groups never take their predecessor's messages. Federation, which
/// has no metadata group, uses generation 0. The metadata group is [`GroupId::metadata`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId {
    pub collection: String,
    pub shard: u32,
    pub generation: u64,
}

impl GroupId {
    pub fn shard(collection: &str, shard: u32, generation: u64) -> GroupId {
        GroupId {
            collection: collection.to_string(),
            shard,
            generation,
        }
    }

    /// The metadata group: no collection has an empty name.
    pub fn metadata() -> GroupId {
        GroupId::shard("", 0, 0)
    }

    pub fn is_metadata(&self) -> bool {
        self.collection.is_empty()
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_metadata() {
            write!(f, "metadata")
        } else {
            write!(f, "{}/{}@{}", self.collection, self.shard, self.generation)
        }
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
    /// Raft liveness (`raft::liveness`): the groups this node leads, unless the caller holds
    /// version `known` of that list already. `to` is the Raft id the caller means (0: any):
    /// a node that restarted under another id does not answer for its former self, so that
    /// id is suspected as it should be.
    Leaders { known: u64, to: u64 },
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
    /// A message of the group's Raft (append-entries, vote, a snapshot chunk), encoded by
    /// `raft::network`, for the copy whose Raft id is `to`: a node that restarted with a new
    /// id (a wiped disk) refuses messages meant for its former self.
    Raft { message: Vec<u8>, to: u64 },
    /// A follower of the group asks its quiet leader to heartbeat again: it holds entries it
    /// does not know to be committed (`raft::quiescence`).
    Wake,
    /// Cluster mode: node `id`, named `name`, reachable at `address`, asks to join. The
    /// metadata leader adds it (a learner first, then a voter while voters are few).
    Join {
        id: u64,
        name: String,
        address: String,
    },
    /// Cluster mode: proposes one write to the group's leader; answered once a majority
    /// committed it and the leader applied it. Past `within_ms` from its arrival the leader
    /// no longer appends it: a caller that gave up never sees it applied later.
    Propose {
        ops: Vec<prism_core::shard::Op>,
        within_ms: u64,
    },
    /// Cluster mode: proposes a metadata change to the metadata leader (never forwarded
    /// further: another node answers `NotLeader`).
    Meta {
        command: crate::metadata::MetaCommand,
        within_ms: u64,
    },
    /// Cluster mode: this copy of the group (the metadata's without a group) starts an
    /// election.
    Elect,
    /// A document of the group's shard by id, as last written (real-time).
    Get { id: String },
    /// Cluster mode: every copy this node holds, with its state.
    Copies,
    /// Makes every write the group's copy here applied searchable now.
    Refresh,
    /// Cluster mode, to the metadata leader: node `id` leaves the metadata group (demoted,
    /// then removed); voters are rebalanced.
    LeaveMetadata { id: u64 },
    /// Cluster mode, to a group's leader: the log index a read must wait for. With
    /// `confirm`, the linearizable read index (the leader confirmed its leadership with a
    /// majority first); without, the index the leader has applied (a `bounded` read).
    ReadIndex { confirm: bool },
    /// Cluster mode, to a group's leader: its last log index and how much of it each other
    /// member is known to hold (openraft's replication progress, term-checked).
    Progress,
    /// Cluster mode: answers once this copy of the group has applied index `applied` (and,
    /// with `searchable`, made it searchable), and, with `max_staleness_ms`, holds
    /// everything its leader had applied at most that long ago. `Unavailable` when it
    /// cannot within `within_ms`: another copy may.
    ReadFence {
        applied: u64,
        max_staleness_ms: Option<u64>,
        searchable: bool,
        within_ms: u64,
    },
}

/// One copy of one group on one node, as `/cluster/shards` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub group: GroupId,
    pub node: u64,
    /// leader, follower, learner or stopped.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub num_docs: u64,
    /// The searchable content's checksum: equal on copies that applied the same entries and
    /// refreshed.
    pub content_checksum: Option<u64>,
    /// The searchable (refreshed) log index.
    pub visible_index: u64,
    /// Every member of the group as this copy knows it.
    pub members: Vec<u64>,
    /// Bytes of the snapshot this copy is receiving now, if it is.
    #[serde(default)]
    pub receiving_snapshot_bytes: Option<u64>,
    /// Snapshots this copy installed since its process started.
    #[serde(default)]
    pub snapshots_installed: u64,
    /// Snapshot receptions it abandoned (cut off, started again, or refused as damaged).
    #[serde(default)]
    pub snapshot_receptions_failed: u64,
}

/// One document a write refused, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusedDocument {
    pub id: String,
    pub code: String,
    pub message: String,
}

/// This process's incarnation: drawn once per start, so that peers tell a restart from a
/// node that never went away.
pub fn process_incarnation() -> u64 {
    static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INCARNATION.get_or_init(rand::random)
}

/// The successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    Pong {
        node_id: String,
    },
    /// The groups the node leads, when their list changed since version `known`.
    Leaders {
        /// Differs at each start of the node: a peer learns from it that the node restarted.
        incarnation: u64,
        version: u64,
        groups: Option<Vec<GroupId>>,
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
    /// The answer of a group's Raft, encoded by `raft::network`.
    Raft {
        message: Vec<u8>,
    },
    /// A wake request was taken.
    Woken,
    /// The node is a member of the cluster's metadata group.
    Joined,
    /// A proposed write committed at this log id.
    Proposed {
        term: u64,
        index: u64,
    },
    /// A metadata change committed; what applying it answered.
    Meta(crate::metadata::MetaResponse),
    /// An election was started.
    Electing,
    /// The document (id, stored fields), if the shard holds it.
    Document(Option<(String, Json)>),
    Copies(Vec<CopyReport>),
    /// The copy's searchable log index after a refresh.
    Refreshed {
        visible: u64,
    },
    /// The log index a read must wait for.
    ReadIndex(u64),
    /// A leader's last log index, and the last index each other member holds.
    Progress {
        last_log: Option<u64>,
        matched: BTreeMap<u64, Option<u64>>,
    },
    /// The copy meets the read's floor; it has applied this index.
    Fenced {
        applied: u64,
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
    /// The call never reached the node (no connection, no stream): it did nothing there.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A bug or an unexpected state on the other side.
    #[error("internal error: {0}")]
    Internal(String),
    /// A write was refused before it was appended: the leader cannot reach a majority. It
    /// will never apply.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A write may or may not have committed (it timed out, or leadership moved while it was
    /// in flight). Retrying an upsert or a delete by id is safe.
    #[error("outcome unknown: {0}")]
    WriteUnknown(String),
    /// A copy asked to lead does not hold its leader's whole log (spec 004's promotion
    /// barrier): its election could only fail and depose the leader.
    #[error("not caught up: {0}")]
    NotCaughtUp(String),
}

impl RpcError {
    /// Whether another copy, or the same one later, may answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RpcError::Overloaded(_)
                | RpcError::NotLeader { .. }
                | RpcError::Unavailable(_)
                | RpcError::Unreachable(_)
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
            | E::CollectionRecovering { .. }
            | E::Corrupt { .. }
            | E::Io { .. } => RpcError::Unavailable(message),
            _ => RpcError::Internal(message),
        }
    }
}

/// The reply to an [`Envelope`].
pub type Reply = Result<Answer, RpcError>;

/// Deepest nesting of arrays and objects a [`Json`] may rebuild: serde_json's own limit when it
/// parses a request, so anything that came in over HTTP fits.
pub const MAX_JSON_DEPTH: usize = 128;

/// A JSON value in a form postcard can carry (it cannot decode self-describing data): a flat
/// tape of tokens in document order, so that decoding one never recurses, however deep a
/// hostile peer nests it. Rebuilding the value checks the nesting ([`MAX_JSON_DEPTH`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Json(Vec<Token>);

/// One token of a [`Json`] tape. Containers give their length; an object's entries are each a
/// `Key` followed by its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Token {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    String(String),
    Array(u64),
    Object(u64),
    Key(String),
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Json {
        fn push(value: &Value, tape: &mut Vec<Token>) {
            match value {
                Value::Null => tape.push(Token::Null),
                Value::Bool(b) => tape.push(Token::Bool(*b)),
                Value::Number(n) => tape.push(match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => Token::Int(i),
                    (None, Some(u)) => Token::Uint(u),
                    _ => Token::Float(n.as_f64().unwrap_or_default()),
                }),
                Value::String(s) => tape.push(Token::String(s.clone())),
                Value::Array(items) => {
                    tape.push(Token::Array(items.len() as u64));
                    items.iter().for_each(|item| push(item, tape));
                }
                Value::Object(map) => {
                    tape.push(Token::Object(map.len() as u64));
                    for (key, item) in map {
                        tape.push(Token::Key(key.clone()));
                        push(item, tape);
                    }
                }
            }
        }
        let mut tape = Vec::new();
        push(value, &mut tape);
        Json(tape)
    }
}

impl TryFrom<Json> for Value {
    type Error = RpcError;

    /// Rebuilds the value without recursion; a malformed tape or one nested deeper than
    /// [`MAX_JSON_DEPTH`] is an invalid request.
    fn try_from(json: Json) -> Result<Value, RpcError> {
        enum Open {
            Array(Vec<Value>, u64),
            Object(Map<String, Value>, u64, Option<String>),
        }
        let bad = |why: &str| RpcError::InvalidRequest(format!("malformed JSON value: {why}"));
        let mut stack: Vec<Open> = Vec::new();
        let mut tokens = json.0.into_iter();
        let mut done: Option<Value> = None;
        loop {
            // The next complete value, if this token finishes one.
            let mut value = match tokens.next() {
                None => break,
                Some(_) if done.is_some() => return Err(bad("tokens after the value")),
                Some(Token::Key(key)) => match stack.last_mut() {
                    Some(Open::Object(_, _, pending @ None)) => {
                        *pending = Some(key);
                        continue;
                    }
                    _ => return Err(bad("a key outside an object")),
                },
                Some(Token::Array(_) | Token::Object(_)) if stack.len() >= MAX_JSON_DEPTH => {
                    return Err(bad(&format!("nested deeper than {MAX_JSON_DEPTH} levels")));
                }
                Some(Token::Array(0)) => Value::Array(Vec::new()),
                Some(Token::Object(0)) => Value::Object(Map::new()),
                Some(Token::Array(len)) => {
                    stack.push(Open::Array(Vec::new(), len));
                    continue;
                }
                Some(Token::Object(len)) => {
                    stack.push(Open::Object(Map::new(), len, None));
                    continue;
                }
                Some(Token::Null) => Value::Null,
                Some(Token::Bool(b)) => Value::Bool(b),
                Some(Token::Int(i)) => Value::from(i),
                Some(Token::Uint(u)) => Value::from(u),
                Some(Token::Float(f)) => Number::from_f64(f).map_or(Value::Null, Value::Number),
                Some(Token::String(s)) => Value::String(s),
            };
            // Put it into its container; a container it fills is itself complete.
            loop {
                match stack.last_mut() {
                    None => {
                        done = Some(value);
                        break;
                    }
                    Some(Open::Array(items, len)) => {
                        items.push(value);
                        if (items.len() as u64) < *len {
                            break;
                        }
                    }
                    Some(Open::Object(map, len, pending)) => {
                        let key = pending.take().ok_or_else(|| bad("a value without a key"))?;
                        map.insert(key, value);
                        if (map.len() as u64) < *len {
                            break;
                        }
                    }
                }
                value = match stack.pop() {
                    Some(Open::Array(items, _)) => Value::Array(items),
                    Some(Open::Object(map, _, _)) => Value::Object(map),
                    None => return Err(bad("a container closed twice")),
                };
            }
        }
        match (done, stack.is_empty()) {
            (Some(value), true) => Ok(value),
            _ => Err(bad("the value ends early")),
        }
    }
}

/// An object's entries as a tape each.
fn entries(map: &Map<String, Value>) -> Vec<(String, Json)> {
    map.iter()
        .map(|(k, v)| (k.clone(), Json::from(v)))
        .collect()
}

fn object(entries: Vec<(String, Json)>) -> Result<Map<String, Value>, RpcError> {
    entries
        .into_iter()
        .map(|(k, v)| Ok((k, Value::try_from(v)?)))
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
    /// The search's deadline, in milliseconds.
    pub timeout_ms: Option<u64>,
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
            timeout_ms: r.timeout.map(|t| t.as_millis() as u64),
        }
    }
}

impl TryFrom<WireSearch> for SearchRequest {
    type Error = RpcError;

    fn try_from(w: WireSearch) -> Result<SearchRequest, RpcError> {
        Ok(SearchRequest {
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
            aggregations: w.aggregations.map(Value::try_from).transpose()?,
            highlight: w.highlight.map(|h| match h {
                WireHighlight::Enabled(on) => HighlightRequest::Enabled(on),
                WireHighlight::Fields { fields, max_chars } => HighlightRequest::Fields {
                    fields,
                    max_chars: max_chars as usize,
                },
            }),
            timeout: w.timeout_ms.map(std::time::Duration::from_millis),
        })
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

impl TryFrom<WireHit> for Hit {
    type Error = RpcError;

    fn try_from(w: WireHit) -> Result<Hit, RpcError> {
        Ok(Hit {
            id: w.id,
            score: w.score,
            fields: object(w.fields)?,
            highlights: w.highlights.map(object).transpose()?,
        })
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
            assert_eq!(SearchRequest::try_from(wire).unwrap(), request, "{body}");
        }
    }

    #[test]
    fn json_values_keep_their_types_and_key_order() {
        let value = json!({"z": 1, "a": [true, null, -3, 18446744073709551615u64, 2.5,
                           "s", {"nested": {"deep": []}}]});
        let back = Value::try_from(roundtrip(&Json::from(&value))).unwrap();
        assert_eq!(back, value);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a"]);
        for scalar in [json!(null), json!("s"), json!(-1), json!([]), json!({})] {
            assert_eq!(Value::try_from(Json::from(&scalar)).unwrap(), scalar);
        }
    }

    #[test]
    fn a_hostile_tape_is_refused_without_recursing() {
        // A million nested arrays decode (the tape is flat) and are refused by depth.
        let deep = Json(vec![Token::Array(1); 1_000_000]);
        let decoded: Json = roundtrip(&deep);
        let refused = Value::try_from(decoded).unwrap_err();
        assert!(
            refused.to_string().contains("nested deeper than 128"),
            "{refused}"
        );
        // 128 levels are fine.
        let mut ok = vec![Token::Array(1); MAX_JSON_DEPTH];
        ok.push(Token::Null);
        assert!(Value::try_from(Json(ok)).is_ok());
        for malformed in [
            vec![Token::Array(2), Token::Null],
            vec![Token::Object(1), Token::Null],
            vec![Token::Key("k".into())],
            vec![Token::Null, Token::Null],
            vec![],
        ] {
            assert!(
                Value::try_from(Json(malformed.clone())).is_err(),
                "{malformed:?}"
            );
        }
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
