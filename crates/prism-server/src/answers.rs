//! The JSON bodies of the HTTP API as types. Handlers answer with these and read their query
//! parameters through them, so the OpenAPI document (`GET /openapi.json`), generated from the
//! same types, describes what the server does.

use prism_core::engine::{DocumentError, RecoveryStatus};
use prism_core::pipeline::PipelineSummary;
use prism_core::schema::CollectionSchema;
use prism_core::shard::WriteHealth;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// Every failure: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `collection_not_found`, `invalid_query`, ...
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// More about some failures, such as the refused documents of a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    Ok,
    Recovering,
}

/// `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerIdentity {
    /// Always `prism`.
    pub name: String,
    pub version: String,
    pub status: ServerStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every collection is open and takes writes.
    Ok,
    /// Some collection cannot take writes or could not open: see `degraded`.
    Degraded,
    /// Logs are replaying after a start: see `recovering`.
    Recovering,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeHealth {
    pub status: HealthStatus,
    pub version: String,
    pub uptime_secs: u64,
    /// Collections open.
    pub collections: usize,
    pub max_collections: usize,
    /// Collections that cannot take writes, or could not open, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<CollectionProblem>,
    /// Collections whose logs are replaying, with the progress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovering: Vec<RecoveryStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionProblem {
    pub collection: String,
    pub write: WriteState,
}

/// A collection's write state: its shard's, or `unavailable` when it could not open.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WriteState {
    Shard(WriteHealth),
    Unavailable(Unavailable),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unavailable {
    pub state: UnavailableState,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnavailableState {
    Unavailable,
}

/// `GET /collections`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionSummary {
    pub name: String,
    pub num_docs: u64,
    pub size_bytes: u64,
    pub shards: u32,
    pub replication_factor: u32,
}

/// `GET /collections/{name}`, and the answer to creating one.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionDescription {
    pub name: String,
    pub schema: CollectionSchema,
    pub stats: CollectionStats,
    pub write: WriteHealth,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionStats {
    pub num_docs: u64,
    pub size_bytes: u64,
    /// Highest log index searchable.
    pub visible_log_index: u64,
    /// Order-independent checksum of the searchable content, in hex; equal on two copies
    /// that applied the same writes. Null for an index older than the checksum.
    pub content_checksum: Option<String>,
}

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The collection or document id deleted.
    pub deleted: String,
}

/// `POST /collections/{name}/documents`. Its schema only: `http::documents_of` moves the
/// documents out of the parsed body rather than rebuilding them through serde.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct IndexRequest {
    /// Each document is checked alone: an invalid one is refused and reported, the rest are
    /// indexed.
    pub documents: Vec<DocumentInput>,
}

/// A document to index. Indexing an id again replaces the document. Only its schema is used:
/// the engine checks each document alone, so that one bad document does not fail the batch.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct DocumentInput {
    #[schema(schema_with = document_id_schema)]
    pub id: String,
    /// Field values by name, as the collection's schema types them; a vector field takes an
    /// array of numbers.
    pub fields: Map<String, Value>,
}

/// A document id: 1 to 512 bytes of text, or an integer (kept as its digits); see
/// [`prism_core::schema::document_id`].
fn document_id_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(prism_core::schema::MAX_ID_LEN)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(i64::MIN))
                .maximum(Some(u64::MAX)),
        )
        .description(Some(
            "1 to 512 bytes of text, or an integer from -2^63 to 2^64-1 written without a fraction or an exponent, kept as its digits (`3` is \"3\"); any other number is refused, since it would be rounded",
        ))
        .into()
}

/// The answer to indexing documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexResponse {
    pub total_docs: usize,
    pub successful_docs: usize,
    pub failed_docs: usize,
    /// The refused documents, the first 100 of them.
    pub errors: Vec<DocumentError>,
    pub latency_ms: u64,
    /// The original Prism's name for `successful_docs`.
    pub indexed: usize,
    /// The original Prism's name for `failed_docs`.
    pub failed: usize,
    /// Cluster mode: the log id each shard committed the write at
    /// (`g<generation>:<shard>=<term>.<index>,...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency_token: Option<String>,
}

/// `GET /collections/{name}/documents/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentOutput {
    pub id: String,
    /// The stored fields.
    pub fields: Map<String, Value>,
}

/// `POST /collections/{name}/refresh`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refreshed {
    pub collection: String,
    /// Highest log index searchable now.
    pub visible_log_index: u64,
}

/// When a write answers relative to search visibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RefreshParam {
    /// Once durable (the default).
    #[default]
    False,
    /// Once a scheduled refresh made the write searchable.
    WaitFor,
    /// After refreshing now.
    True,
    /// `?refresh` alone, as `true`.
    Bare,
}

impl RefreshParam {
    /// Every value `?refresh=` takes, as parsed and as documented.
    pub const BY_NAME: [(&'static str, RefreshParam); 4] = [
        ("false", RefreshParam::False),
        ("wait_for", RefreshParam::WaitFor),
        ("true", RefreshParam::True),
        ("", RefreshParam::Bare),
    ];
}

impl<'de> Deserialize<'de> for RefreshParam {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        RefreshParam::BY_NAME
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not one of false, wait_for, true (or empty, as true)"
                ))
            })
    }
}

// By hand: utoipa drops the `""` of `?refresh` alone (an empty rename means none to it).
impl utoipa::PartialSchema for RefreshParam {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Self::BY_NAME.map(|(name, _)| name)))
            .into()
    }
}

impl ToSchema for RefreshParam {}

/// The collection a route names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CollectionPath {
    /// Collection name: a letter or digit, then letters, digits, `_` and `-`.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length = 64)]
    pub name: String,
}

/// The document a route names.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DocumentPath {
    /// Collection name: a letter or digit, then letters, digits, `_` and `-`.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length = 64)]
    pub name: String,
    /// Document id.
    #[param(min_length = 1, max_length = 512)]
    pub id: String,
}

/// Query parameters of the routes that index documents.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IndexParams {
    /// When the write answers: `false` (default) once durable, `wait_for` once searchable,
    /// `true` after refreshing now.
    #[param(inline)]
    pub refresh: Option<RefreshParam>,
    /// An ingest pipeline (`conf/pipelines/*.yaml` beside the config file) to run on every
    /// document first; an unknown name is a 400 and nothing is indexed.
    pub pipeline: Option<String>,
}

/// Query parameters of reading a document (cluster mode; the headers `X-Prism-Consistency`
/// and `X-Prism-Consistency-Token` say the same).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// `eventual` (default), `read_your_writes`, `bounded` or `strong`.
    pub consistency: Option<String>,
    /// The `consistency_token` of a write: the read waits until its copy applied it.
    pub consistency_token: Option<String>,
}

/// Query parameters of deleting a document.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// When the delete answers: `false` (default) once durable, `wait_for` once searchable,
    /// `true` after refreshing now.
    #[param(inline)]
    pub refresh: Option<RefreshParam>,
}

/// Query parameters of the federated index route.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PipelineParam {
    /// An ingest pipeline to run on every document first.
    pub pipeline: Option<String>,
}

/// `GET /admin/collections`: the names, as the original Prism lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionNames {
    pub collections: Vec<String>,
}

/// `GET /collections/{name}/schema`, in the original Prism's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct OriginalSchema {
    pub collection: String,
    pub description: Option<String>,
    pub fields: Vec<OriginalField>,
    pub vector_dimensions: Option<usize>,
    pub vector_field: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OriginalField {
    pub name: String,
    /// `text`, `string` (keyword), `i64`, `u64`, `f64`, `bool` or `date`.
    #[serde(rename = "type")]
    pub field_type: String,
    pub indexed: bool,
    pub stored: bool,
    pub vector_source: bool,
}

/// `GET /collections/{name}/stats`, in the original Prism's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct OriginalStats {
    pub collection: String,
    pub document_count: u64,
    pub storage_bytes: u64,
}

/// `GET /stats/server`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerVersion {
    pub version: String,
    pub prism_version: String,
}

/// `GET /admin/pipelines`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineSummary>,
}
