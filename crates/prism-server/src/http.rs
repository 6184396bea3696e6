//! The HTTP API (`/collections/...`, `/health`, `/metrics`). Handlers parse and validate, call
//! the engine off the async runtime, and shape the JSON the API documents.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
#[cfg(test)]
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use prism_core::engine::{Collection, DocumentError, Engine, PreparedBatch, Refresh};
use prism_core::schema::CollectionSchema;
use prism_core::search::pool::Started;
use prism_core::search::{SearchRequest, SearchResponse};
use prism_core::shard::Op;
use serde_json::{json, Value};

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answers::*;
use crate::budget::{InFlightBudget, Reservation};
use crate::error::{ApiError, ApiResult};
use crate::metrics;
use crate::openapi::{CollectionReadErrors, SearchErrors, WriteErrors};

/// What every handler can reach.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set once the data directory is recovered and the `--schemas-dir` collections exist.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Ingest pipelines (`conf/pipelines/*.yaml` beside the config file), by name.
    pub pipelines: Arc<prism_core::pipeline::Pipelines>,
    /// Collections of `--schemas-dir` that could not be created, with why.
    pub schema_failures: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Present when `[cluster] enabled = true`.
    #[cfg(feature = "cluster")]
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Present in cluster mode (`--cluster`): collections live in the cluster's shard groups.
    #[cfg(feature = "cluster")]
    pub raft: Option<Arc<crate::raft_cluster::RaftCluster>>,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    /// The threads searches run on, with their deadlines.
    pub search_pool: Arc<prism_core::search::pool::SearchPool>,
    /// What all requests in flight may hold together.
    pub in_flight: Arc<InFlightBudget>,
    /// Largest request body accepted, in bytes (`server.max_body_bytes`).
    pub max_body_bytes: usize,
}

type Shared = State<Arc<AppState>>;

/// Longest URI accepted. hyper itself answers longer than 64 KiB with an empty 414.
pub const MAX_URI_BYTES: usize = 8 << 10;

/// The routes of the API with their OpenAPI description: each handler's `#[utoipa::path]`
/// both registers the route and describes it, so no route is served undocumented or documented
/// unserved. Its answers are listed by hand beside the handler; the tests and
/// `tests/api-fuzz` hold the server to them.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(root))
        .routes(routes!(health))
        .routes(routes!(openapi_document))
        // The original Prism's routes, beside ours (docs/api.md, "Routes of the original Prism").
        .routes(routes!(collection_names))
        .routes(routes!(original_schema))
        .routes(routes!(original_stats))
        .routes(routes!(server_info))
        .routes(routes!(list_pipelines))
        .routes(routes!(render_metrics))
        .routes(routes!(list_collections))
        .routes(routes!(
            get_collection,
            create_collection,
            delete_collection,
            patch_collection
        ))
        .routes(routes!(index_documents))
        .routes(routes!(bulk_documents))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(search))
        .routes(routes!(refresh))
        .routes(routes!(cluster_health))
        .routes(routes!(cluster_status))
        .routes(routes!(cluster_shards))
        .routes(routes!(cluster_election))
        .routes(routes!(cluster_remove_node))
        .routes(routes!(cluster_search))
        .routes(routes!(cluster_index))
}

/// The router of the single-node API.
pub fn router(
    state: Arc<AppState>,
    max_body_bytes: usize,
    body_read_timeout: std::time::Duration,
) -> Router {
    let (router, document) = routes().split_for_parts();
    let document = crate::openapi::finish(document);
    let parameters = Arc::new(crate::openapi::QueryParameterNames::of(&document));
    router
        .route_layer(axum::middleware::from_fn_with_state(
            parameters,
            check_query_parameters,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_read_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            max_body_bytes,
            check_request_head,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// A panic in a handler is a bug: the client gets a JSON 500 and the server keeps serving.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = prism_core::error::panic_message(&*panic);
    tracing::error!(panic = detail, "a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the server failed on this request ({detail}); it was not applied if it was a write. Please report it"),
    )
    .into_response()
}

/// Refuses what the head of a request already shows to be too large: the URI, and a body
/// whose declared length is over the limit (answered before the client sends it).
async fn check_request_head(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return payload_too_large().into_response();
    }
    let len = request.uri().to_string().len();
    if len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the URI is {len} bytes, over the {MAX_URI_BYTES}-byte limit; send long queries in the body"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Parsed query parameters of a request, each named at most once.
#[derive(Debug, Clone, Default)]
pub struct QueryParameters(pub std::collections::BTreeMap<String, String>);

impl QueryParameters {
    /// The parameters as the route's parameter type, whose `IntoParams` the OpenAPI document
    /// lists: a value it does not take is a 400.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> ApiResult<T> {
        let as_object = |params: &mut dyn Iterator<Item = (&String, &String)>| {
            let object = params
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>();
            serde_json::from_value::<T>(Value::Object(object))
        };
        as_object(&mut self.0.iter()).map_err(|e| {
            // Name the parameter: serde's message for a bad enum value does not.
            let culprit = self
                .0
                .iter()
                .find(|(k, v)| as_object(&mut std::iter::once((*k, *v))).is_err());
            let message = match culprit {
                Some((k, v)) => format!("{k}={v:?}: {e}"),
                None => format!("query parameters: {e}"),
            };
            ApiError::bad_request("invalid_parameter", message)
        })
    }
}

fn parse_query_parameters<S: AsRef<str>>(query: &str, allowed: &[S]) -> ApiResult<QueryParameters> {
    let mut params = std::collections::BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if !allowed.iter().any(|name| name.as_ref() == key) {
            let known = if allowed.is_empty() {
                "this route takes no query parameters".to_string()
            } else {
                let names: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
                format!("this route takes only {}", names.join(", "))
            };
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("unknown query parameter {key:?}; {known}"),
            ));
        }
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("query parameter {key:?} is given more than once"),
            ));
        }
    }
    Ok(QueryParameters(params))
}

/// Refuses a query parameter the route does not take, rather than ignoring it.
async fn check_query_parameters(
    State(names): State<Arc<crate::openapi::QueryParameterNames>>,
    mut request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let allowed = names.of_route(request.method(), route.as_ref().map_or("", |r| r.as_str()));
    let query = request.uri().query().unwrap_or("");
    match parse_query_parameters(query, allowed) {
        Ok(params) => {
            request.extensions_mut().insert(params);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// Path parameters whose rejections (such as a name that is not UTF-8) are JSON errors.
pub struct JsonPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for JsonPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(JsonPath(value)),
            Err(e) if e.status().is_server_error() => {
                tracing::error!(error = %e.body_text(), "a route's path parameters do not fit its handler");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server failed on this request's path; please report it",
                ))
            }
            Err(e) => Err(ApiError::bad_request("invalid_path", e.body_text())),
        }
    }
}

/// A raw request body whose rejections (too large, unreadable) are JSON errors. Its bytes
/// are reserved from the node's in-flight budget before they are read, and stay reserved
/// while the handler holds the reservation.
pub struct Body(pub Bytes, pub Reservation);

impl FromRequest<Arc<AppState>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        // A body without a declared length may grow to the limit.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(state.max_body_bytes as u64);
        let reserved = state
            .in_flight
            .reserve(declared, "this request's body")
            .map_err(ApiError::from)?;
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes, reserved)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(payload_too_large()),
            Err(e)
                if std::error::Error::source(&e).is_some_and(|s| {
                    s.to_string().contains("timed out") || format!("{s:?}").contains("Timeout")
                }) =>
            {
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive within server.body_read_timeout_ms",
                ))
            }
            Err(e) => Err(ApiError::bad_request("unreadable_body", e.body_text())),
        }
    }
}

/// What parsing a JSON body may hold per byte of it: a tree of small values holds about ten
/// times its text.
const JSON_TREE_BYTES_PER_BYTE: u64 = 10;

fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body exceeds server.max_body_bytes; split it into smaller batches",
    )
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "the request body is empty; send a JSON object",
        ));
    }
    prism_core::schema::parse_json_strict(body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })
}

/// serde reads a JSON array into a struct by position; a search body must be an object.
fn require_object(body: &[u8]) -> ApiResult<()> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            "the search body must be a JSON object",
        )),
    }
}

/// Runs blocking engine work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> prism_core::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/api.md for the routes",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method; see docs/api.md",
    )
}

/// `GET /health`: 200 once every collection is open (`ok`, or `degraded` with every
/// collection that cannot take writes or open, and why), 503 while logs replay after a start
/// (`recovering`, with the progress), so that a client or load balancer that waits for 200
/// waits for a node that can answer. `GET /` answers 200 throughout.
#[utoipa::path(get, path = "/health", tag = "node",
    responses(
        (status = 200, description = "Every collection is open: `ok` or `degraded`", body = NodeHealth),
        (status = 503, description = "Logs are replaying after a start: `recovering`", body = NodeHealth),
    ))]
async fn health(State(state): Shared) -> (StatusCode, Json<NodeHealth>) {
    let collections = state.engine.collections();
    let mut degraded: Vec<CollectionProblem> = collections
        .iter()
        .filter_map(|c| {
            let health = c.shard().health();
            (!health.is_ok()).then(|| CollectionProblem {
                collection: c.name().to_string(),
                write: WriteState::Shard(health),
            })
        })
        .collect();
    let schema_failures = state.schema_failures.lock().expect("not poisoned").clone();
    for (name, reason) in state
        .engine
        .unavailable()
        .into_iter()
        .chain(schema_failures)
    {
        degraded.push(CollectionProblem {
            collection: name,
            write: WriteState::Unavailable(Unavailable {
                state: UnavailableState::Unavailable,
                reason,
            }),
        });
    }
    let recovering = state.engine.recovering();
    let ready = state.ready.load(std::sync::atomic::Ordering::SeqCst);
    let status = match (ready && recovering.is_empty(), degraded.is_empty()) {
        (false, _) => HealthStatus::Recovering,
        (true, true) => HealthStatus::Ok,
        (true, false) => HealthStatus::Degraded,
    };
    let code = if status == HealthStatus::Recovering {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let report = NodeHealth {
        status,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        collections: collections.len(),
        max_collections: state.engine.max_collections(),
        degraded,
        recovering,
    };
    (code, Json(report))
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "node",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_document() -> Response {
    // The document is a function of the build alone: made once, on first request.
    static DOCUMENT: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        Bytes::from(
            crate::openapi::document()
                .to_json()
                .expect("the OpenAPI document serializes"),
        )
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "node",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 503, description = "`metrics_disabled`: `[observability] metrics_enabled = false`", body = ErrorBody),
    ))]
async fn render_metrics(State(state): Shared) -> Response {
    let Some(handle) = &state.metrics else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_disabled",
            "metrics are not enabled",
        )
        .into_response();
    };
    ::metrics::gauge!(metrics::SEARCHES_QUEUED).set(state.search_pool.queued() as f64);
    ::metrics::gauge!(metrics::SEARCHES_RUNNING).set(state.search_pool.running() as f64);
    ::metrics::gauge!(metrics::IN_FLIGHT_BYTES).set(state.in_flight.used() as f64);
    ::metrics::gauge!(metrics::CONNECTIONS_OPEN).set(crate::serve::open_connections() as f64);
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        raft.record_metrics();
    }
    for c in state.engine.collections() {
        let stats = c.stats();
        let name = c.name().to_string();
        ::metrics::gauge!(metrics::COLLECTION_DOCS, "collection" => name.clone())
            .set(stats.num_docs as f64);
        ::metrics::gauge!(metrics::COLLECTION_BYTES, "collection" => name)
            .set(stats.size_bytes as f64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

fn collection_summary(c: &Collection) -> CollectionSummary {
    let stats = c.stats();
    CollectionSummary {
        name: c.name().to_string(),
        num_docs: stats.num_docs,
        size_bytes: stats.size_bytes,
        shards: c.schema().shards,
        replication_factor: c.schema().replication_factor,
    }
}

#[utoipa::path(get, path = "/collections", tag = "collections",
    responses((status = 200, description = "The open collections", body = CollectionList)))]
async fn list_collections(State(state): Shared) -> ApiResult<Response> {
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        return Ok(Json(json!({ "collections": raft.list() })).into_response());
    }
    let engine = state.engine.clone();
    let collections = blocking(move || {
        Ok(engine
            .collections()
            .iter()
            .map(|c| collection_summary(c))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(CollectionList { collections }).into_response())
}

/// `GET /`: what this server is.
#[utoipa::path(get, path = "/", tag = "node",
    responses((status = 200, description = "Answers throughout a start; `status` says whether it is ready", body = ServerIdentity)))]
async fn root(State(state): Shared) -> Json<ServerIdentity> {
    let ready = state.ready.load(std::sync::atomic::Ordering::SeqCst)
        && state.engine.recovering().is_empty();
    Json(ServerIdentity {
        name: "prism".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        status: if ready {
            ServerStatus::Ok
        } else {
            ServerStatus::Recovering
        },
    })
}

/// `GET /admin/collections`: the names of the open collections, as the original Prism lists
/// them.
#[utoipa::path(get, path = "/admin/collections", tag = "original",
    responses((status = 200, description = "The names of the open collections", body = CollectionNames)))]
async fn collection_names(State(state): Shared) -> Json<CollectionNames> {
    let collections = state
        .engine
        .collections()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    Json(CollectionNames { collections })
}

/// `GET /collections/{name}/schema` in the original Prism's shape: its field types (`string`
/// for keyword), and the vector field with its dimensions.
#[utoipa::path(get, path = "/collections/{name}/schema", tag = "original",
    params(CollectionPath),
    responses(
        (status = 200, description = "The schema in the original Prism's shape", body = OriginalSchema),
        CollectionReadErrors,
    ))]
async fn original_schema(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
) -> ApiResult<Json<OriginalSchema>> {
    let collection = state.engine.collection(&name)?;
    let schema = collection.schema();
    let mut fields = Vec::new();
    let mut vector = None;
    for (field, def) in &schema.fields {
        if let Some(params) = def.vector_params() {
            vector.get_or_insert((field.clone(), params.dimension));
            continue;
        }
        let field_type = match def.field_type {
            prism_core::schema::FieldType::Keyword => "string".to_string(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        fields.push(OriginalField {
            name: field.clone(),
            field_type,
            indexed: def.indexed,
            stored: def.stored,
            vector_source: false,
        });
    }
    Ok(Json(OriginalSchema {
        collection: schema.name.clone(),
        description: schema.description.clone(),
        fields,
        vector_dimensions: vector.as_ref().map(|v| v.1),
        vector_field: vector.map(|v| v.0),
    }))
}

/// `GET /collections/{name}/stats` in the original Prism's shape.
#[utoipa::path(get, path = "/collections/{name}/stats", tag = "original",
    params(CollectionPath),
    responses(
        (status = 200, description = "Counts in the original Prism's shape", body = OriginalStats),
        CollectionReadErrors,
    ))]
async fn original_stats(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
) -> ApiResult<Json<OriginalStats>> {
    let engine = state.engine.clone();
    let (collection, stats) = blocking(move || {
        engine
            .collection(&name)
            .map(|c| (c.name().to_string(), c.stats()))
    })
    .await?;
    Ok(Json(OriginalStats {
        collection,
        document_count: stats.num_docs,
        storage_bytes: stats.size_bytes,
    }))
}

/// `GET /admin/pipelines`: the ingest pipelines loaded at start.
#[utoipa::path(get, path = "/admin/pipelines", tag = "original",
    responses((status = 200, description = "The ingest pipelines of this node", body = PipelineList)))]
async fn list_pipelines(State(state): Shared) -> Json<PipelineList> {
    Json(PipelineList {
        pipelines: state.pipelines.values().map(|p| p.summary()).collect(),
    })
}

/// The pipeline a request names with `?pipeline=`; an unknown name is a 400, before anything
/// is written.
pub fn named_pipeline(
    pipelines: &Arc<prism_core::pipeline::Pipelines>,
    name: Option<&str>,
) -> ApiResult<Option<prism_core::pipeline::Pipeline>> {
    let Some(name) = name else {
        return Ok(None);
    };
    match pipelines.get(name) {
        Some(pipeline) => Ok(Some(pipeline.clone())),
        None => {
            let known: Vec<&str> = pipelines.keys().map(String::as_str).collect();
            Err(ApiError::bad_request(
                "unknown_pipeline",
                format!(
                    "no pipeline is named {name:?}; this node has {known:?} (conf/pipelines/*.yaml beside the config file); nothing was indexed"
                ),
            ))
        }
    }
}

/// Runs `pipeline` over `documents`: those it refuses come out as errors, the rest go on.
pub fn run_pipeline(
    pipeline: &prism_core::pipeline::Pipeline,
    documents: Vec<Value>,
) -> (Vec<Value>, Vec<DocumentError>) {
    let now = prism_core::pipeline::now_rfc3339();
    let mut kept = Vec::with_capacity(documents.len());
    let mut refused = Vec::new();
    for mut doc in documents {
        match pipeline.apply(&mut doc, &now) {
            Ok(()) => kept.push(doc),
            Err(message) => refused.push(DocumentError {
                id: prism_core::schema::document_id(&doc["id"]).unwrap_or_default(),
                code: "pipeline_failed".into(),
                message,
            }),
        }
    }
    (kept, refused)
}

/// `GET /stats/server`.
#[utoipa::path(get, path = "/stats/server", tag = "original",
    responses((status = 200, description = "The server's version", body = ServerVersion)))]
async fn server_info() -> Json<ServerVersion> {
    Json(ServerVersion {
        version: env!("CARGO_PKG_VERSION").into(),
        prism_version: env!("CARGO_PKG_VERSION").into(),
    })
}

fn describe(c: &Collection) -> CollectionDescription {
    let stats = c.stats();
    CollectionDescription {
        name: c.name().to_string(),
        schema: (**c.schema()).clone(),
        stats: CollectionStats {
            num_docs: stats.num_docs,
            size_bytes: stats.size_bytes,
            visible_log_index: stats.visible_index,
            content_checksum: stats.content_checksum.map(|c| format!("{c:016x}")),
        },
        write: c.shard().health(),
    }
}

#[utoipa::path(get, path = "/collections/{name}", tag = "collections",
    params(CollectionPath),
    responses(
        (status = 200, description = "The collection's schema, counts and write state", body = CollectionDescription),
        CollectionReadErrors,
    ))]
async fn get_collection(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
) -> ApiResult<Response> {
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        return Ok(Json(raft.describe(&name).await?).into_response());
    }
    let engine = state.engine.clone();
    blocking(move || Ok(describe(&*engine.collection(&name)?)))
        .await
        .map(|d| Json(d).into_response())
}

/// Creates a collection; the same schema again is a no-op (200), a different one a 409. The
/// body may also be a schema in the original Prism's format (`collection:`, `backends:`).
#[utoipa::path(put, path = "/collections/{name}", tag = "collections",
    params(CollectionPath),
    request_body(content = crate::openapi::NewCollection, description = "The schema; `name` may be left out"),
    responses(
        (status = 201, description = "Created", body = CollectionDescription),
        (status = 200, description = "Exists already with this schema", body = CollectionDescription),
        (status = 400, description = "`invalid_schema`, `invalid_collection_name`, `malformed_json`, `limit_exceeded`", body = ErrorBody),
        (status = 409, description = "`collection_exists` with another schema", body = ErrorBody),
        (status = 503, description = "`shutting_down`, `collection_recovering`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the disk is full", body = ErrorBody),
    ))]
async fn create_collection(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    Body(body, _body_reserved): Body,
) -> ApiResult<Response> {
    prism_core::schema::validate_collection_name(&name)?;
    let mut value = parse_json(&body)?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_schema",
            "the schema must be a JSON object",
        ));
    };
    // The original Prism's format names the collection with `collection`.
    let key = if prism_core::schema::original::is_original(&Value::Object(obj.clone())) {
        "collection"
    } else {
        "name"
    };
    match obj.get(key) {
        None => {
            obj.insert(key.into(), Value::String(name.clone()));
        }
        Some(Value::String(n)) if *n == name => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_schema",
                format!("the body names the collection {other} but the path names {name:?}"),
            ))
        }
    }
    #[cfg(feature = "cluster")]
    let replication_given = value
        .get("replication_factor")
        .is_some()
        .then(|| value["replication_factor"].as_u64().unwrap_or(0) as u32);
    let schema = CollectionSchema::from_json(value.to_string().as_bytes())?;
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        let (status, created) = raft.create(&schema, replication_given).await?;
        return Ok((status, Json(created)).into_response());
    }
    let engine = state.engine.clone();
    let (collection, created) = blocking(move || engine.create_collection(schema)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(describe(&collection))).into_response())
}

#[utoipa::path(delete, path = "/collections/{name}", tag = "collections",
    params(CollectionPath),
    responses(
        (status = 200, description = "Deleted with all its data", body = Deleted),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 503, description = "`collection_recovering`, `shutting_down`", body = ErrorBody),
    ))]
async fn delete_collection(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
) -> ApiResult<Json<Deleted>> {
    let deleted = name.clone();
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        raft.delete(&name).await?;
        return Ok(Json(Deleted { deleted }));
    }
    let engine = state.engine.clone();
    blocking(move || engine.delete_collection(&name)).await?;
    // Gauges sampled at scrape time would otherwise keep the last values forever.
    ::metrics::gauge!(metrics::COLLECTION_DOCS, "collection" => deleted.clone()).set(0.0);
    ::metrics::gauge!(metrics::COLLECTION_BYTES, "collection" => deleted.clone()).set(0.0);
    Ok(Json(Deleted { deleted }))
}

/// `PATCH /collections/{c}`: changes a live collection's replication factor (cluster mode).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionPatch {
    /// Copies of each shard, 1 to 16, at most the number of nodes.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 16)]
    pub replication_factor: u32,
}

/// A JSON integer, also written as a number with a zero fraction (`3.0`), as JSON Schema's
/// `integer` allows.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    let number = <serde_json::Number as serde::Deserialize>::deserialize(deserializer)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64)
                .map(|f| f as u64)
        })
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number of copies")))
}

#[utoipa::path(patch, path = "/collections/{name}", tag = "collections",
    params(CollectionPath),
    request_body(content = CollectionPatch),
    responses(
        (status = 200, description = "The new placement; new copies catch up in the background (`GET /cluster/shards`)", body = Object),
        (status = 400, description = "`invalid_request`, `malformed_json`, `invalid_replication` (more copies than nodes)", body = ErrorBody),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 409, description = "`not_in_cluster_mode`: a single node holds one copy of each collection", body = ErrorBody),
        (status = 503, description = "`no_quorum`, `write_timeout`, `unavailable`", body = ErrorBody),
    ))]
async fn patch_collection(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    Body(body, _body_reserved): Body,
) -> ApiResult<Response> {
    let value = parse_json(&body)?;
    let patch: CollectionPatch = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"replication_factor\": N}}: {e}"),
        )
    })?;
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        return Ok(Json(
            raft.set_replication(&name, patch.replication_factor)
                .await?,
        )
        .into_response());
    }
    // A single node holds one copy of everything: a valid request the node's mode refuses.
    let _ = (state.engine.collection(&name)?, patch);
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_in_cluster_mode",
        "a single node holds one copy of each collection; start the node with --cluster --bootstrap and join more nodes to raise the replication factor",
    ))
}

/// When a write returns relative to search visibility: `false` (default) once durable,
/// `wait_for` once a scheduled refresh made it searchable, `true` after refreshing now.
fn refresh_mode(param: Option<RefreshParam>) -> Refresh {
    match param.unwrap_or_default() {
        RefreshParam::False => Refresh::No,
        RefreshParam::WaitFor => Refresh::WaitFor,
        RefreshParam::True | RefreshParam::Bare => Refresh::Now,
    }
}

fn collection(state: &AppState, name: &str) -> ApiResult<Arc<Collection>> {
    Ok(state.engine.collection(name)?)
}

/// Where a write goes: the node's own collection, or in cluster mode the collection's shard
/// groups. Both validate documents against the collection's schema the same way.
#[derive(Clone)]
enum WriteTarget {
    Local(Arc<Collection>),
    #[cfg(feature = "cluster")]
    Cluster {
        raft: Arc<crate::raft_cluster::RaftCluster>,
        schema: Arc<CollectionSchema>,
    },
}

impl WriteTarget {
    fn of(state: &AppState, name: &str) -> ApiResult<WriteTarget> {
        #[cfg(feature = "cluster")]
        if let Some(raft) = &state.raft {
            return Ok(WriteTarget::Cluster {
                schema: Arc::new(raft.schema(name)?),
                raft: raft.clone(),
            });
        }
        Ok(WriteTarget::Local(collection(state, name)?))
    }

    fn name(&self) -> &str {
        match self {
            WriteTarget::Local(c) => c.name(),
            #[cfg(feature = "cluster")]
            WriteTarget::Cluster { schema, .. } => &schema.name,
        }
    }

    fn prepare_upserts(&self, documents: Vec<Value>) -> PreparedBatch {
        match self {
            WriteTarget::Local(c) => c.prepare_upserts(documents),
            #[cfg(feature = "cluster")]
            WriteTarget::Cluster { schema, .. } => {
                prism_core::engine::prepare_upserts(schema, documents)
            }
        }
    }

    /// Writes `ops`; returns the cluster's consistency token, and the documents a shard
    /// refused (nothing of them applied).
    async fn write(
        &self,
        ops: Vec<Op>,
        refresh: Refresh,
    ) -> ApiResult<(Option<String>, Vec<DocumentError>)> {
        match self {
            WriteTarget::Local(c) => write(c, ops, refresh).await.map(|_| (None, Vec::new())),
            #[cfg(feature = "cluster")]
            WriteTarget::Cluster { raft, schema } => {
                let (token, refused) = raft.write(&schema.name, ops).await?;
                if refresh != Refresh::No {
                    raft.refresh(&schema.name).await?;
                }
                Ok((Some(token), refused))
            }
        }
    }
}

/// Writes through the collection's one write path; a durable write whose refresh did not
/// happen is a 504 that says the write is kept.
async fn write(collection: &Collection, ops: Vec<Op>, refresh: Refresh) -> ApiResult<u64> {
    let receipt = collection.write(ops, refresh).await?;
    match receipt.not_searchable {
        None => Ok(receipt.log_id.index),
        Some(why) => Err(not_yet_searchable(receipt.log_id.index, &why)),
    }
}

/// The answer to a durable write whose requested refresh did not happen.
fn not_yet_searchable(index: u64, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "refresh_timeout",
        format!("the write is durable (log index {index}) and will be searchable after the next successful refresh, but it is not searchable yet: {why}"),
    )
}

fn too_many_documents(count: &str) -> ApiError {
    ApiError::bad_request(
        "too_many_documents",
        format!(
            "the request holds {count} documents, over the {} limit per request; split it",
            prism_core::shard::MAX_OPS_PER_ENTRY
        ),
    )
}

/// Writes the valid documents of a request, `total` of them sent, and answers with what was
/// indexed and what was refused.
async fn index_batch(
    collection: WriteTarget,
    batch: PreparedBatch,
    total: usize,
    mut errors: Vec<DocumentError>,
    refresh: Refresh,
    started: Instant,
    success: StatusCode,
) -> ApiResult<(StatusCode, Json<IndexResponse>)> {
    let failed = total - batch.ops.len();
    errors.extend(batch.errors);
    errors.truncate(prism_core::engine::MAX_REPORTED_ERRORS);
    let ops = batch.ops;
    if ops.is_empty() {
        let message = match errors.first() {
            Some(first) => format!(
                "all {total} documents failed validation; first: {}{}",
                if first.id.is_empty() {
                    String::new()
                } else {
                    format!("document {:?}: ", first.id)
                },
                first.message
            ),
            None => "the request holds no documents".into(),
        };
        let code = if errors.is_empty() {
            "no_documents"
        } else {
            "invalid_documents"
        };
        return Err(ApiError::bad_request(code, message)
            .with_details(json!({ "errors": errors, "failed_docs": failed })));
    }
    let written = ops.len();
    let (consistency_token, refused) = collection.write(ops, refresh).await?;
    let successful = written - refused.len();
    let failed = failed + refused.len();
    errors.extend(refused);
    errors.truncate(prism_core::engine::MAX_REPORTED_ERRORS);
    ::metrics::counter!(metrics::DOCS_INDEXED, "collection" => collection.name().to_string())
        .increment(successful as u64);
    Ok((
        success,
        Json(IndexResponse {
            total_docs: total,
            successful_docs: successful,
            failed_docs: failed,
            errors,
            latency_ms: started.elapsed().as_millis() as u64,
            indexed: successful,
            failed,
            consistency_token,
        }),
    ))
}

/// The `documents` of an [`IndexRequest`] body, moved out rather than rebuilt (a serde pass
/// over `Vec<Value>` would copy every vector); any other key is refused by name.
pub fn documents_of(value: Value) -> ApiResult<Vec<Value>> {
    let shape = "the body must be {\"documents\": [{\"id\": ..., \"fields\": {...}}, ...]}";
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request("invalid_request", shape));
    };
    let documents = match obj.remove("documents") {
        Some(Value::Array(documents)) => documents,
        _ => return Err(ApiError::bad_request("invalid_request", shape)),
    };
    if let Some(key) = obj.keys().next() {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("unknown key {key:?}: {shape}"),
        ));
    }
    Ok(documents)
}

/// Indexes a batch of documents: each is checked alone, the valid ones are written together.
#[utoipa::path(post, path = "/collections/{name}/documents", tag = "documents",
    params(CollectionPath, IndexParams),
    request_body(content = IndexRequest),
    responses(
        (status = 201, description = "Durable (and searchable as `refresh` asks); refused documents are listed", body = IndexResponse),
        (status = 400, description = "`invalid_documents` (every one refused), `invalid_request`, `malformed_json`, `too_many_documents`, `unknown_pipeline`", body = ErrorBody),
        WriteErrors,
    ))]
async fn index_documents(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    axum::Extension(params): axum::Extension<QueryParameters>,
    Body(body, _body_reserved): Body,
) -> ApiResult<(StatusCode, Json<IndexResponse>)> {
    let started = Instant::now();
    let params: IndexParams = params.typed()?;
    let refresh = refresh_mode(params.refresh);
    let pipeline = named_pipeline(&state.pipelines, params.pipeline.as_deref())?;
    let collection = WriteTarget::of(&state, &name)?;
    // A JSON tree of small values holds about ten times its text.
    let parsing = state.in_flight.reserve(
        (body.len() as u64).saturating_mul(JSON_TREE_BYTES_PER_BYTE),
        "parsing this request's documents",
    )?;
    let documents = documents_of(parse_json(&body)?)?;
    if documents.len() > prism_core::shard::MAX_OPS_PER_ENTRY {
        return Err(too_many_documents(&documents.len().to_string()));
    }
    let total = documents.len();
    let preparing = collection.clone();
    // The reservation travels with the work: a client that leaves drops this handler, not
    // the blocking task, which holds the memory until it ends.
    let (batch, refused, _parsing) = tokio::task::spawn_blocking(move || {
        let (documents, refused) = match &pipeline {
            Some(pipeline) => run_pipeline(pipeline, documents),
            None => (documents, Vec::new()),
        };
        (preparing.prepare_upserts(documents), refused, parsing)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // 201, as the original Prism answers (spec 000 is silent on this route's status).
    index_batch(
        collection,
        batch,
        total,
        refused,
        refresh,
        started,
        StatusCode::CREATED,
    )
    .await
}

/// Newline-delimited JSON: one `{"id": ..., "fields": {...}}` per line. A line that is not
/// JSON fails alone, like an invalid document.
#[utoipa::path(post, path = "/collections/{name}/documents/bulk", tag = "documents",
    params(CollectionPath, IndexParams),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One `{\"id\": ..., \"fields\": {...}}` per line"),
    responses(
        (status = 200, description = "Durable (and searchable as `refresh` asks); refused lines are listed", body = IndexResponse),
        (status = 400, description = "`invalid_documents` (every line refused), `no_documents`, `too_many_documents`, `unknown_pipeline`", body = ErrorBody),
        WriteErrors,
    ))]
async fn bulk_documents(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    axum::Extension(params): axum::Extension<QueryParameters>,
    Body(body, _body_reserved): Body,
) -> ApiResult<(StatusCode, Json<IndexResponse>)> {
    let started = Instant::now();
    let params: IndexParams = params.typed()?;
    let refresh = refresh_mode(params.refresh);
    let pipeline = named_pipeline(&state.pipelines, params.pipeline.as_deref())?;
    let collection = WriteTarget::of(&state, &name)?;
    let lines = body.iter().filter(|b| **b == b'\n').count() + 1;
    let preparing_reserved = state.in_flight.reserve(
        crate::budget::batch_estimate(body.len(), lines),
        format!("preparing this bulk of {lines} lines"),
    )?;
    let preparing = collection.clone();
    // Each line is validated as soon as it is parsed, so that one document's JSON tree (32
    // bytes a number: 12 KB for a 384-d vector) is alive at a time, not the whole batch's.
    // The reservations travel with the body into the blocking task: a client that leaves
    // drops this handler, not the task, which holds the memory until it ends.
    let held = (preparing_reserved, _body_reserved);
    let prepared = tokio::task::spawn_blocking(move || {
        let mut batch = PreparedBatch {
            ops: Vec::new(),
            errors: Vec::new(),
            failed: 0,
        };
        let mut errors = Vec::new();
        let (mut total, mut parsed) = (0, 0);
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            total += 1;
            match prism_core::schema::parse_json_strict(line) {
                Ok(doc) => {
                    // Documents count against the limit, as in the JSON route; lines that
                    // are not JSON are refused one by one.
                    parsed += 1;
                    if parsed > prism_core::shard::MAX_OPS_PER_ENTRY {
                        return Err(too_many_documents(&format!(
                            "more than {}",
                            prism_core::shard::MAX_OPS_PER_ENTRY
                        )));
                    }
                    let (docs, refused) = match &pipeline {
                        Some(pipeline) => run_pipeline(pipeline, vec![doc]),
                        None => (vec![doc], Vec::new()),
                    };
                    batch.failed += refused.len();
                    if errors.len() < prism_core::engine::MAX_REPORTED_ERRORS {
                        errors.extend(refused);
                    }
                    let one = preparing.prepare_upserts(docs);
                    batch.ops.extend(one.ops);
                    batch.failed += one.failed;
                    if batch.errors.len() < prism_core::engine::MAX_REPORTED_ERRORS {
                        batch.errors.extend(one.errors);
                    }
                }
                Err(e) => {
                    batch.failed += 1;
                    if errors.len() < prism_core::engine::MAX_REPORTED_ERRORS {
                        errors.push(DocumentError {
                            id: String::new(),
                            code: "malformed_json".into(),
                            message: format!("line {}: {e}", n + 1),
                        });
                    }
                }
            }
        }
        Ok((batch, total, errors, held))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let (batch, total, errors, _held) = prepared?;
    index_batch(
        collection,
        batch,
        total,
        errors,
        refresh,
        started,
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(get, path = "/collections/{name}/documents/{id}", tag = "documents",
    params(DocumentPath, GetParams),
    responses(
        (status = 200, description = "The document's stored fields, as last written (durable writes are visible at once)", body = DocumentOutput),
        (status = 400, description = "`invalid_consistency`: an unknown level, or a bad or missing token", body = ErrorBody),
        (status = 404, description = "`collection_not_found`, `document_not_found`", body = ErrorBody),
        (status = 503, description = "`collection_recovering` or `collection_unavailable`; in cluster mode `no_quorum` (a strong read without a majority, or any read in a minority partition without `allow_stale_reads`) or `unavailable` (no copy met the consistency in time)", body = ErrorBody),
    ))]
async fn get_document(
    State(state): Shared,
    JsonPath(DocumentPath { name, id }): JsonPath<DocumentPath>,
    axum::Extension(params): axum::Extension<QueryParameters>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Json<DocumentOutput>> {
    let params: GetParams = params.typed()?;
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        let header = read_settings_of(&headers)?;
        let asked = crate::cluster::ReadSettings {
            consistency: params.consistency.or(header.consistency),
            consistency_token: params.consistency_token.or(header.consistency_token),
        };
        return match raft.get(&name, &id, &asked).await? {
            Some((id, Value::Object(fields))) => Ok(Json(DocumentOutput { id, fields })),
            Some(_) | None => Err(prism_core::Error::DocumentNotFound(id).into()),
        };
    }
    let _ = (params, headers);
    let collection = collection(&state, &name)?;
    let wanted = id.clone();
    let doc = blocking(move || collection.shard().get(&wanted)).await?;
    match doc {
        Some(doc) => Ok(Json(DocumentOutput {
            id: doc.id,
            fields: doc.fields,
        })),
        None => Err(prism_core::Error::DocumentNotFound(id).into()),
    }
}

#[utoipa::path(delete, path = "/collections/{name}/documents/{id}", tag = "documents",
    params(DocumentPath, DeleteParams),
    responses(
        (status = 200, description = "Deleted, durably", body = Deleted),
        (status = 404, description = "`collection_not_found`, `document_not_found`", body = ErrorBody),
        (status = 429, description = "`overloaded`: the write queue is full; retry with backoff", body = ErrorBody),
        (status = 503, description = "`storage_failed`, `collection_recovering`, `write_unknown`, `shutting_down`", body = ErrorBody),
        (status = 504, description = "`refresh_timeout`: durable, not yet searchable", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`: the disk is full; nothing was applied", body = ErrorBody),
    ))]
async fn delete_document(
    State(state): Shared,
    JsonPath(DocumentPath { name, id }): JsonPath<DocumentPath>,
    axum::Extension(params): axum::Extension<QueryParameters>,
) -> ApiResult<Json<Deleted>> {
    let params: DeleteParams = params.typed()?;
    let refresh = refresh_mode(params.refresh);
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        // A strong read: a copy that has not applied the document yet must not answer 404.
        let strong = crate::cluster::ReadSettings {
            consistency: Some("strong".into()),
            consistency_token: None,
        };
        if raft.get(&name, &id, &strong).await?.is_none() {
            return Err(prism_core::Error::DocumentNotFound(id).into());
        }
        let target = WriteTarget::Cluster {
            schema: Arc::new(raft.schema(&name)?),
            raft: raft.clone(),
        };
        target.write(vec![Op::Delete(id.clone())], refresh).await?;
        return Ok(Json(Deleted { deleted: id }));
    }
    let collection = collection(&state, &name)?;
    let check = collection.clone();
    let wanted = id.clone();
    let existed = blocking(move || check.shard().get(&wanted))
        .await?
        .is_some();
    if !existed {
        return Err(prism_core::Error::DocumentNotFound(id).into());
    }
    write(&collection, vec![Op::Delete(id.clone())], refresh).await?;
    ::metrics::counter!(metrics::DOCS_DELETED, "collection" => collection.name().to_string())
        .increment(1);
    Ok(Json(Deleted { deleted: id }))
}

/// A read's consistency as the headers `X-Prism-Consistency` and `X-Prism-Consistency-Token`
/// name it.
#[cfg(feature = "cluster")]
fn read_settings_of(headers: &axum::http::HeaderMap) -> ApiResult<crate::cluster::ReadSettings> {
    let text = |name: &str| -> ApiResult<Option<String>> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_consistency",
                        format!("the header {name} is not visible ASCII"),
                    )
                })
            })
            .transpose()
    };
    Ok(crate::cluster::ReadSettings {
        consistency: text("x-prism-consistency")?,
        consistency_token: text("x-prism-consistency-token")?,
    })
}

#[cfg(feature = "cluster")]
fn cluster_of(state: &AppState) -> ApiResult<Arc<crate::cluster::Cluster>> {
    state.cluster.clone().ok_or_else(cluster_disabled)
}

fn cluster_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "cluster_disabled",
        "cluster mode is not enabled on this node; set [cluster] enabled = true in prism.toml",
    )
}

#[cfg(feature = "cluster")]
#[utoipa::path(get, path = "/cluster/health", tag = "cluster",
    responses(
        (status = 200, description = "The federation's members as this node sees them", body = prism_cluster::membership::HealthReport),
        (status = 404, description = "`cluster_disabled`", body = ErrorBody),
    ))]
async fn cluster_health(State(state): Shared) -> ApiResult<Response> {
    if let Some(raft) = &state.raft {
        return Ok(Json(raft.health().await).into_response());
    }
    Ok(Json(cluster_of(&state)?.health()).into_response())
}

#[cfg(feature = "cluster")]
fn raft_of(state: &AppState) -> ApiResult<Arc<crate::raft_cluster::RaftCluster>> {
    state.raft.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "cluster_disabled",
            "this node does not run in cluster mode; start it with --cluster (see docs/cluster.md)",
        )
    })
}

/// The metadata group's leader and term, and each node's state (spec 002).
#[cfg(feature = "cluster")]
#[utoipa::path(get, path = "/cluster/status", tag = "cluster",
    responses(
        (status = 200, description = "`{leader, term, nodes: [{id, address, state}], healthy}`; a state is leader, follower, learner, candidate, suspect or dead", body = Object),
        (status = 404, description = "`cluster_disabled`: not in cluster mode", body = ErrorBody),
    ))]
async fn cluster_status(State(state): Shared) -> ApiResult<Response> {
    Ok(Json(raft_of(&state)?.status()).into_response())
}

/// Every shard copy in the cluster: role, term, applied index, lag, content checksum.
#[cfg(feature = "cluster")]
#[utoipa::path(get, path = "/cluster/shards", tag = "cluster",
    responses(
        (status = 200, description = "One entry per copy, and the leaders per node", body = crate::raft_cluster::ShardsReport),
        (status = 404, description = "`cluster_disabled`: not in cluster mode", body = ErrorBody),
    ))]
async fn cluster_shards(State(state): Shared) -> ApiResult<Response> {
    Ok(Json(raft_of(&state)?.shards().await).into_response())
}

/// Starts an election: the metadata group's, or a shard's (`{"collection", "shard"}`), on a
/// chosen copy (`"node"`) or any other live one.
#[cfg(feature = "cluster")]
#[utoipa::path(post, path = "/cluster/election", tag = "cluster",
    request_body(content = Object, description = "Optional `{\"collection\": c, \"shard\": n, \"node\": name}`"),
    responses(
        (status = 200, description = "The election was started on the candidate", body = Object),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`cluster_disabled`, `collection_not_found`, `node_not_found`", body = ErrorBody),
        (status = 409, description = "`not_caught_up`: the node named does not hold its leader's whole log within 2 s (spec 004's promotion barrier); nothing changed", body = ErrorBody),
        (status = 503, description = "`unavailable`: no other live copy", body = ErrorBody),
    ))]
async fn cluster_election(
    State(state): Shared,
    Body(body, _body_reserved): Body,
) -> ApiResult<Response> {
    Ok(Json(raft_of(&state)?.election(&body).await?).into_response())
}

/// A search over every shard of the federation, ranked as one index would rank it.
#[cfg(feature = "cluster")]
#[utoipa::path(post, path = "/cluster/collections/{name}/search", tag = "cluster",
    params(CollectionPath),
    request_body(content = crate::cluster::FederatedSearchRequest,
        description = "A search request, with the partial-results settings of this query"),
    responses(
        (status = 200, description = "Results; `is_partial` when some shards did not answer", body = crate::cluster::FederatedSearchResponse),
        (status = 400, description = "`invalid_query`, `malformed_json`", body = ErrorBody),
        (status = 404, description = "`cluster_disabled`; `collection_not_found` when no shard that answered has the collection", body = ErrorBody),
        (status = 503, description = "`shards_unavailable`: too few shards answered; `details` has the shard status", body = ErrorBody),
    ))]
async fn cluster_search(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    headers: axum::http::HeaderMap,
    Body(body, _body_reserved): Body,
) -> ApiResult<Json<crate::cluster::FederatedSearchResponse>> {
    prism_core::schema::validate_collection_name(&name)?;
    if let Some(raft) = &state.raft {
        let header = read_settings_of(&headers)?;
        return Ok(Json(raft.search(&name, &body, &header).await?));
    }
    let mut answer = cluster_of(&state)?.search(&name, &body).await?;
    // Every member holds the collection's schema: it decodes `top_hits` sort values.
    if let (Some(answered), Ok(local)) =
        (answer.aggregations.as_mut(), state.engine.collection(&name))
    {
        let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
        prism_core::search::decode_top_hits_sort(&asked["aggregations"], answered, &|field| {
            local.schema().fields.get(field).map(|d| d.field_type)
        });
    }
    Ok(Json(answer))
}

/// Indexes documents, each on the node that owns its id.
#[cfg(feature = "cluster")]
#[utoipa::path(post, path = "/cluster/collections/{name}/documents", tag = "cluster",
    params(CollectionPath, PipelineParam),
    request_body(content = IndexRequest),
    responses(
        (status = 200, description = "What each owner indexed and refused", body = crate::cluster::FederatedIndexResponse),
        (status = 400, description = "`invalid_request`, `malformed_json`, `unknown_pipeline`", body = ErrorBody),
        (status = 404, description = "`cluster_disabled`", body = ErrorBody),
    ))]
async fn cluster_index(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    axum::Extension(params): axum::Extension<QueryParameters>,
    Body(body, _body_reserved): Body,
) -> ApiResult<Json<crate::cluster::FederatedIndexResponse>> {
    prism_core::schema::validate_collection_name(&name)?;
    let params: PipelineParam = params.typed()?;
    let pipeline = named_pipeline(&state.pipelines, params.pipeline.as_deref())?;
    if let Some(raft) = &state.raft {
        return cluster_mode_index(raft, &name, &body, pipeline.as_ref()).await;
    }
    Ok(Json(
        cluster_of(&state)?
            .index(&name, &body, pipeline.as_ref())
            .await?,
    ))
}

/// Removes a node: its copies are re-created on other nodes first (a learner catches up, is
/// promoted, then the old copy leaves), then it leaves the cluster.
#[cfg(feature = "cluster")]
#[utoipa::path(delete, path = "/cluster/nodes/{id}", tag = "cluster",
    params(("id" = String, Path, description = "The node's name (`--node-id`)")),
    responses(
        (status = 200, description = "The node left; it can be stopped", body = Object),
        (status = 404, description = "`cluster_disabled`, `node_not_found`", body = ErrorBody),
        (status = 409, description = "`cannot_remove_node`: no other node can take its copies", body = ErrorBody),
        (status = 503, description = "`unavailable`: its copies are still moving (DELETE again resumes); `no_quorum`", body = ErrorBody),
    ))]
async fn cluster_remove_node(
    State(state): Shared,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    Ok(Json(raft_of(&state)?.remove_node(&id).await?).into_response())
}

/// `POST /cluster/collections/{c}/documents` in cluster mode: the same write as
/// `/collections/{c}/documents`, answered in the federation's shape.
#[cfg(feature = "cluster")]
async fn cluster_mode_index(
    raft: &Arc<crate::raft_cluster::RaftCluster>,
    name: &str,
    body: &[u8],
    pipeline: Option<&prism_core::pipeline::Pipeline>,
) -> ApiResult<Json<crate::cluster::FederatedIndexResponse>> {
    let started = Instant::now();
    let documents = documents_of(parse_json(body)?)?;
    if documents.len() > prism_core::shard::MAX_OPS_PER_ENTRY {
        return Err(too_many_documents(&documents.len().to_string()));
    }
    let total = documents.len();
    let (documents, mut errors) = match pipeline {
        Some(pipeline) => run_pipeline(pipeline, documents),
        None => (documents, Vec::new()),
    };
    let target = WriteTarget::Cluster {
        schema: Arc::new(raft.schema(name)?),
        raft: raft.clone(),
    };
    let batch = target.prepare_upserts(documents);
    errors.extend(batch.errors);
    let mut successful = batch.ops.len();
    if !batch.ops.is_empty() {
        let (_, refused) = target.write(batch.ops, Refresh::No).await?;
        successful -= refused.len();
        errors.extend(refused);
    }
    errors.truncate(prism_core::engine::MAX_REPORTED_ERRORS);
    let summary = prism_cluster::coordinator::IndexSummary {
        total_docs: total as u64,
        successful_docs: successful as u64,
        failed_docs: (total - successful) as u64,
        errors: errors
            .into_iter()
            .map(|e| prism_cluster::rpc::RefusedDocument {
                id: e.id,
                code: e.code,
                message: e.message,
            })
            .collect(),
    };
    Ok(Json(crate::cluster::FederatedIndexResponse {
        latency_ms: started.elapsed().as_millis() as u64,
        indexed: summary.successful_docs,
        failed: summary.failed_docs,
        summary,
    }))
}

#[cfg(not(feature = "cluster"))]
#[utoipa::path(get, path = "/cluster/health", tag = "cluster",
    responses((status = 404, description = "`cluster_disabled`: built without the cluster feature", body = ErrorBody)))]
async fn cluster_health() -> ApiError {
    cluster_disabled()
}

#[cfg(not(feature = "cluster"))]
#[utoipa::path(post, path = "/cluster/collections/{name}/search", tag = "cluster",
    params(CollectionPath),
    responses((status = 404, description = "`cluster_disabled`: built without the cluster feature", body = ErrorBody)))]
async fn cluster_search() -> ApiError {
    cluster_disabled()
}

#[cfg(not(feature = "cluster"))]
#[utoipa::path(post, path = "/cluster/collections/{name}/documents", tag = "cluster",
    params(CollectionPath, PipelineParam),
    responses((status = 404, description = "`cluster_disabled`: built without the cluster feature", body = ErrorBody)))]
async fn cluster_index() -> ApiError {
    cluster_disabled()
}

/// Makes every acknowledged write searchable now, like Elasticsearch's `_refresh`.
#[utoipa::path(post, path = "/collections/{name}/refresh", tag = "documents",
    params(CollectionPath),
    responses(
        (status = 200, description = "Every acknowledged write is searchable", body = Refreshed),
        (status = 404, description = "`collection_not_found`", body = ErrorBody),
        (status = 429, description = "`overloaded`: the write queue is full; retry with backoff", body = ErrorBody),
        (status = 503, description = "`storage_failed`, `collection_recovering`, `shutting_down`", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`", body = ErrorBody),
    ))]
async fn refresh(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
) -> ApiResult<Json<Refreshed>> {
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        let visible = raft.refresh(&name).await?;
        return Ok(Json(Refreshed {
            collection: name,
            visible_log_index: visible,
        }));
    }
    let collection = collection(&state, &name)?;
    let visible = collection
        .shard()
        .request_refresh()?
        .await
        .map_err(|_| ApiError::from(prism_core::Error::ShuttingDown))??;
    Ok(Json(Refreshed {
        collection: name,
        visible_log_index: visible,
    }))
}

/// Full-text (BM25), vector (HNSW) or hybrid search; see docs/api.md for the query forms.
#[utoipa::path(post, path = "/collections/{name}/search", tag = "search",
    params(CollectionPath),
    request_body(content = SearchRequest),
    responses(
        (status = 200, description = "The page of results and the true total", body = SearchResponse),
        (status = 400, description = "`invalid_query`, `malformed_json`", body = ErrorBody),
        SearchErrors,
    ))]
async fn search(
    State(state): Shared,
    JsonPath(CollectionPath { name }): JsonPath<CollectionPath>,
    headers: axum::http::HeaderMap,
    Body(body, _body_reserved): Body,
) -> ApiResult<Response> {
    let started = Instant::now();
    #[cfg(feature = "cluster")]
    if let Some(raft) = &state.raft {
        let header = read_settings_of(&headers)?;
        return Ok(Json(raft.search(&name, &body, &header).await?).into_response());
    }
    let _ = headers;
    let collection = collection(&state, &name)?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "the request body is empty; send a JSON object",
        ));
    }
    require_object(&body)?;
    let request: SearchRequest = serde_json::from_slice(&body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::from(prism_core::Error::InvalidQuery(e.to_string())),
            _ => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        }
    })?;
    request.validate()?;
    let budget = state.search_pool.budget(request.timeout)?;
    let reserved = state
        .in_flight
        .reserve(search_estimate(&request, &state), "this search")?;
    // The search runs on the search pool, or within a short slice on this async worker
    // (SearchPool::start). If this handler is dropped while it waits (the client left) the
    // guard cancels the search at its next check.
    let cancel_on_drop = CancelOnDrop(budget.clone());
    let started_search = state.search_pool.start(&name, budget, move |budget| {
        let _held_until_answered = &reserved;
        collection.shard().search_within(&request, budget)
    })?;
    let mut response = match started_search {
        Started::Answered(answer) => answer?,
        Started::Queued(answer) => answer.await.map_err(|_| search_failed())??,
    };
    drop(cancel_on_drop);
    response.latency_ms = started.elapsed().as_millis() as u64;
    if response.timed_out {
        ::metrics::counter!(metrics::SEARCHES_TIMED_OUT).increment(1);
    }
    Ok(Json(response).into_response())
}

/// What a search may hold until it answers: its lists over the result window, and the
/// memory its aggregations may use.
fn search_estimate(request: &SearchRequest, state: &AppState) -> u64 {
    let window = request.rank_window().max(request.offset + request.limit) as u64;
    let aggregations = if request.aggregations.is_some() {
        state.search_pool.limits().aggregation_memory_bytes
    } else {
        0
    };
    crate::budget::SEARCH_BASE_BYTES + window * crate::budget::SEARCH_BYTES_PER_HIT + aggregations
}

/// Cancels a search when the request that started it is dropped.
struct CancelOnDrop(Arc<prism_core::search::budget::SearchBudget>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn search_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the search failed on a bug (it panicked); please report it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn query_parameters_are_known_and_given_once() {
        let p: IndexParams = parse_query_parameters("refresh=wait_for", &["refresh"])
            .unwrap()
            .typed()
            .unwrap();
        assert_eq!(p.refresh, Some(RefreshParam::WaitFor));
        let bad = parse_query_parameters("refresh=soon", &["refresh"])
            .unwrap()
            .typed::<IndexParams>()
            .unwrap_err();
        assert_eq!(bad.code, "invalid_parameter");
        assert!(
            bad.message.starts_with("refresh=\"soon\""),
            "{}",
            bad.message
        );
        for (query, allowed) in [
            ("refresh=true&refresh=false", &["refresh"][..]),
            ("pipeline=x", &["refresh"][..]),
            ("timeout=1ms", &[][..]),
        ] {
            let e = parse_query_parameters(query, allowed).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(e.code, "invalid_parameter", "{query}");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_json_500_and_the_service_keeps_serving() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("deliberate");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", get(|| async { "fine" }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let response = app
            .clone()
            .oneshot(
                Request::get("/boom")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliberate"));
        let response = app
            .oneshot(
                Request::get("/fine")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
