//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`). Its paths come from the
//! handlers' `#[utoipa::path]` annotations as `http::routes` registers them, its schemas from
//! the request and answer types; [`finish`] adds the answers that the middleware in front of
//! every route can give.

use std::collections::HashMap;

use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{Ref, Schema};
use utoipa::openapi::{Content, OpenApi, RefOr, Response};
use utoipa::PartialSchema;

#[derive(utoipa::OpenApi)]
#[openapi(
    components(schemas(crate::answers::ErrorBody, crate::answers::ErrorDetail)),
    info(
        title = "Prism",
        description = "Hybrid search: BM25 full text, HNSW vectors and their fusion. Every \
            failure answers `{\"error\": {\"code\", \"message\"}}`; see docs/api.md."
    ),
    tags(
        (name = "node", description = "This server: identity, health, metrics, this document"),
        (name = "collections", description = "Creating, describing and deleting collections"),
        (name = "documents", description = "Writing and reading documents"),
        (name = "search", description = "Text, vector and hybrid search"),
        (name = "cluster", description = "Federated routes over every node of `[cluster]`"),
        (name = "original", description = "The original Prism's routes, kept for its clients"),
    )
)]
pub struct ApiDoc;

/// `PUT /collections/{name}`: a `CollectionSchema` whose `name` may be left out, as the path
/// names the collection. Only its schema is used ([`finish`] writes it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NewCollection {}

/// Answers that any route can give before or around its handler, with when.
const MIDDLEWARE_ANSWERS: &[(&str, &str, bool)] = &[
    (
        "400",
        "`invalid_parameter`: a query parameter the route does not take, or a bad value; \
         `invalid_path`: a path parameter that is not UTF-8; `invalid_collection_name`",
        false,
    ),
    (
        "408",
        "`body_timeout`: the body did not arrive within `server.body_read_timeout_ms`",
        true,
    ),
    (
        "413",
        "`payload_too_large`: the body (or its declared length) is over `server.max_body_bytes`; \
         `request_too_large`: the request would hold more than the node's whole in-flight budget \
         (`server.max_in_flight_bytes`)",
        false,
    ),
    (
        "429",
        "`circuit_breaking`: the requests in flight hold the node's in-flight memory budget \
         (`server.max_in_flight_bytes`); retry with backoff (`Retry-After`)",
        true,
    ),
    (
        "414",
        "`uri_too_long`: the URI is over 8 KiB; send long queries in the body",
        false,
    ),
    (
        "500",
        "`internal`: a bug; a write that fails so was not applied",
        false,
    ),
];

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("GET", item.get.as_mut()),
        ("PUT", item.put.as_mut()),
        ("POST", item.post.as_mut()),
        ("DELETE", item.delete.as_mut()),
        ("PATCH", item.patch.as_mut()),
        ("HEAD", item.head.as_mut()),
        ("OPTIONS", item.options.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
    .collect()
}

fn error_answer(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ErrorBody")))),
    );
    RefOr::T(response)
}

fn error_answers(answers: &[(&str, &str)]) -> std::collections::BTreeMap<String, RefOr<Response>> {
    answers
        .iter()
        .map(|(status, description)| (status.to_string(), error_answer(description)))
        .collect()
}

/// The error answers of a route that reads a collection.
pub struct CollectionReadErrors;

impl utoipa::IntoResponses for CollectionReadErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        error_answers(&[
            ("404", "`collection_not_found`"),
            ("503", "`collection_recovering` or `collection_unavailable`"),
        ])
    }
}

/// The error answers of a search: those of a collection read, the search queue and deadline.
pub struct SearchErrors;

impl utoipa::IntoResponses for SearchErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        error_answers(&[
            ("404", "`collection_not_found`"),
            (
                "429",
                "`overloaded`: `search.queue_size` searches wait for a search thread; retry with backoff (`Retry-After`)",
            ),
            (
                "503",
                "`collection_recovering` or `collection_unavailable`; `search_timeout`: the deadline passed before a search thread took the search",
            ),
        ])
    }
}

/// The error answers of a route that writes documents: nothing of a refused write is applied;
/// a 504 is durable, not yet searchable.
pub struct WriteErrors;

impl utoipa::IntoResponses for WriteErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        error_answers(&[
            ("404", "`collection_not_found`"),
            ("429", "`overloaded`: the write queue is full; retry with backoff"),
            ("503", "`storage_failed`, `collection_recovering`, `write_unknown`, `shutting_down`: nothing acknowledged"),
            ("504", "`refresh_timeout`: durable, not yet searchable"),
            ("507", "`insufficient_storage`: the disk is full; nothing was applied"),
        ])
    }
}

/// Completes the generated document: the middleware's answers on every operation, and the
/// federated search body (a search request whose object also takes the federation settings).
pub fn finish(mut document: OpenApi) -> OpenApi {
    for item in document.paths.paths.values_mut() {
        for (_, operation) in operations(item) {
            let has_body = operation.request_body.is_some();
            for (status, description, needs_body) in MIDDLEWARE_ANSWERS {
                if *needs_body && !has_body {
                    continue;
                }
                match operation.responses.responses.get_mut(*status) {
                    // The route lists its own; the middleware's codes are added to it.
                    Some(RefOr::T(answer)) => {
                        answer.description = format!("{}; {description}", answer.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        operation
                            .responses
                            .responses
                            .insert(status.to_string(), error_answer(description));
                    }
                }
            }
        }
    }
    if let Some(components) = document.components.as_mut() {
        if components.schemas.contains_key("NewCollection") {
            let mut schema = prism_core::schema::CollectionSchema::schema();
            if let RefOr::T(Schema::Object(object)) = &mut schema {
                object.required.retain(|field| field != "name");
                object.description = Some(
                    "A collection's schema (see CollectionSchema); `name` may be left out, and \
                     must be the path's when given"
                        .into(),
                );
            }
            components.schemas.insert("NewCollection".into(), schema);
        }
    }
    #[cfg(feature = "cluster")]
    if let Some(components) = document.components.as_mut() {
        if components.schemas.contains_key("FederatedSearchRequest") {
            let mut merged = prism_core::search::SearchRequest::schema();
            let settings = crate::cluster::FederationSettings::schema();
            if let (RefOr::T(Schema::Object(merged)), RefOr::T(Schema::Object(settings))) =
                (&mut merged, settings)
            {
                merged.properties.extend(settings.properties);
                merged.description = Some(
                    "A search request (see SearchRequest) with this query's partial-results \
                     settings"
                        .into(),
                );
            }
            components
                .schemas
                .insert("FederatedSearchRequest".into(), merged);
        }
    }
    document
}

/// The query parameters each operation takes, read from the document: by route, then method
/// (looked up on every request, without allocating).
#[derive(Debug, Default)]
pub struct QueryParameterNames(HashMap<String, HashMap<&'static str, Vec<String>>>);

impl QueryParameterNames {
    pub fn of(document: &OpenApi) -> QueryParameterNames {
        let mut names = HashMap::new();
        let mut paths = document.paths.paths.clone();
        for (path, item) in paths.iter_mut() {
            for (method, operation) in operations(item) {
                let query: Vec<String> = operation
                    .parameters
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        RefOr::T(p) if p.parameter_in == ParameterIn::Query => Some(p.name.clone()),
                        _ => None,
                    })
                    .collect();
                names
                    .entry(path.clone())
                    .or_insert_with(HashMap::new)
                    .insert(method, query);
            }
        }
        QueryParameterNames(names)
    }

    /// The names `method` on `route` (as axum matched it, `/collections/{name}/...`) takes.
    pub fn of_route(&self, method: &axum::http::Method, route: &str) -> &[String] {
        // axum answers HEAD with the GET handler.
        let method = if method == axum::http::Method::HEAD {
            "GET"
        } else {
            method.as_str()
        };
        self.0
            .get(route)
            .and_then(|methods| methods.get(method))
            .map_or(&[], Vec::as_slice)
    }
}

/// The document, as `GET /openapi.json` serves it.
pub fn document() -> OpenApi {
    finish(crate::http::routes().split_for_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document_json() -> Value {
        serde_json::from_str(&document().to_json().unwrap()).unwrap()
    }

    fn references(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| references(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = document_json();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut refs = Vec::new();
        references(&doc, &mut refs);
        assert!(refs.len() > 50, "{} references", refs.len());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} is not a schema reference"));
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} is referenced but not defined"
            );
        }
    }

    #[test]
    fn every_route_is_described_with_its_answers() {
        let doc = document_json();
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/",
            "/health",
            "/openapi.json",
            "/metrics",
            "/collections",
            "/collections/{name}",
            "/collections/{name}/documents",
            "/collections/{name}/documents/bulk",
            "/collections/{name}/documents/{id}",
            "/collections/{name}/search",
            "/collections/{name}/refresh",
            "/admin/collections",
            "/collections/{name}/schema",
            "/collections/{name}/stats",
            "/stats/server",
            "/admin/pipelines",
            "/cluster/health",
            "/cluster/collections/{name}/search",
            "/cluster/collections/{name}/documents",
        ] {
            assert!(paths.contains_key(route), "{route} is not in the document");
        }
        for (route, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "414", "500"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {route} does not list {status}"
                    );
                }
                for (status, response) in responses {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    if status.starts_with('4') || (status.starts_with('5') && route != "/health") {
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {route} {status}"
                        );
                    }
                }
                if operation.get("requestBody").is_some() {
                    assert!(responses.contains_key("413"), "{method} {route}");
                }
            }
        }
    }

    #[test]
    fn federated_and_new_collection_bodies_are_completed() {
        let doc = document_json();
        let schemas = &doc["components"]["schemas"];
        if cfg!(feature = "cluster") {
            let federated = &schemas["FederatedSearchRequest"]["properties"];
            for key in ["query", "vector", "hybrid", "allow_partial_results"] {
                assert!(federated.get(key).is_some(), "{key}: {federated}");
            }
        }
        let new = &schemas["NewCollection"];
        assert!(new["properties"].get("fields").is_some(), "{new}");
        assert!(!new["required"]
            .as_array()
            .unwrap()
            .contains(&Value::from("name")));
    }

    #[test]
    fn the_query_parameters_a_route_takes_are_read_from_the_document() {
        let names = QueryParameterNames::of(&document());
        use axum::http::Method;
        assert_eq!(
            names.of_route(&Method::POST, "/collections/{name}/documents"),
            ["refresh", "pipeline"]
        );
        assert_eq!(
            names.of_route(&Method::DELETE, "/collections/{name}/documents/{id}"),
            ["refresh"]
        );
        assert_eq!(
            names.of_route(&Method::GET, "/collections/{name}/documents/{id}"),
            ["consistency", "consistency_token"]
        );
        assert!(names
            .of_route(&Method::POST, "/collections/{name}/search")
            .is_empty());
    }

    #[test]
    fn the_refresh_values_documented_are_the_ones_accepted() {
        use crate::answers::RefreshParam;
        for (name, value) in RefreshParam::BY_NAME {
            let parsed = serde_json::from_value::<RefreshParam>(Value::from(name))
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(parsed, value);
        }
        assert!(serde_json::from_value::<RefreshParam>(Value::from("soon")).is_err());
        let doc = document_json();
        let refresh = doc["paths"]["/collections/{name}/documents"]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "refresh")
            .unwrap()
            .clone();
        assert_eq!(
            refresh["schema"]["enum"],
            serde_json::json!(RefreshParam::BY_NAME.map(|(name, _)| name))
        );
    }

    #[test]
    fn the_documented_bounds_are_the_engines() {
        use prism_core::schema::{MAX_COLLECTION_NAME_LEN, MAX_ID_LEN, MAX_VECTOR_DIMENSION};
        let doc = document_json();
        let parameters = doc["paths"]["/collections/{name}/documents/{id}"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .clone();
        let bound = |name: &str| {
            parameters.iter().find(|p| p["name"] == name).unwrap()["schema"]["maxLength"].clone()
        };
        assert_eq!(bound("name"), MAX_COLLECTION_NAME_LEN);
        assert_eq!(bound("id"), MAX_ID_LEN);
        let dimension = &doc["components"]["schemas"]["FieldDef"]["properties"]["dimension"];
        assert_eq!(dimension["maximum"], MAX_VECTOR_DIMENSION, "{dimension}");
        let id = &doc["components"]["schemas"]["DocumentInput"]["properties"]["id"];
        assert_eq!(id["oneOf"][0]["maxLength"], MAX_ID_LEN, "{id}");
        // Numeric ids: exactly the integers the engine keeps as their digits.
        assert_eq!(id["oneOf"][1]["type"], "integer", "{id}");
        assert_eq!(id["oneOf"][1]["minimum"], i64::MIN, "{id}");
        assert_eq!(id["oneOf"][1]["maximum"], u64::MAX, "{id}");
    }
}
