//! A small typed client for the Prism HTTP API, over `reqwest::blocking`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::blocking::{Client as HttpClient, RequestBuilder};
use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How the server is started, for the hint shown when it cannot be reached.
const START_HINT: &str = "start it with `cargo run --release -p prism-server`";

#[derive(Debug)]
pub enum ApiError {
    /// The server answered with a 4xx/5xx status.
    Server {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// Nothing listening at the base URL.
    Connect {
        url: String,
    },
    Timeout {
        url: String,
    },
    /// Any other transport failure.
    Transport(reqwest::Error),
    /// A 2xx answer whose body is not what the API documents.
    Decode {
        what: String,
        detail: String,
    },
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Server { code, message, .. } => write!(f, "{code}: {message}"),
            ApiError::Connect { url } => write!(
                f,
                "could not connect to {url}: is prism-server running at {url}? {START_HINT}"
            ),
            ApiError::Timeout { url } => write!(f, "request to {url} timed out"),
            ApiError::Transport(err) => write!(f, "request failed: {err}"),
            ApiError::Decode { what, detail } => {
                write!(f, "unexpected response to {what}: {detail}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// The error body every failing route returns.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CollectionsResponse {
    pub collections: Vec<CollectionSummary>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct CollectionSummary {
    pub name: String,
    #[serde(default)]
    pub num_docs: u64,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub shards: u32,
    #[serde(default)]
    pub replication_factor: u32,
}

#[derive(Debug, Deserialize)]
pub struct CollectionInfo {
    pub schema: Schema,
}

#[derive(Debug, Deserialize)]
pub struct Schema {
    #[serde(default)]
    pub fields: BTreeMap<String, FieldSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub dimension: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct BulkResponse {
    #[serde(default)]
    pub successful_docs: u64,
    #[serde(default)]
    pub failed_docs: u64,
    #[serde(default)]
    pub errors: Vec<BulkItemError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BulkItemError {
    #[serde(default)]
    pub id: String,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct SearchRequest {
    pub query: String,
    pub limit: usize,
    pub offset: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<SearchHit>,
    pub total: u64,
    #[serde(default)]
    pub latency_ms: f64,
}

#[derive(Debug, Deserialize)]
pub struct SearchHit {
    pub id: String,
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub fields: Map<String, Value>,
}

#[derive(Clone)]
pub struct Client {
    base: Url,
    http: HttpClient,
}

impl Client {
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let base = Url::parse(base_url)
            .map_err(|err| anyhow::anyhow!("invalid --url `{base_url}`: {err}"))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("invalid --url `{base_url}`: expected an http:// URL");
        }
        let http = HttpClient::builder()
            .connect_timeout(Duration::from_secs(5))
            // Bulk batches can take a while to index; don't give up on a busy server.
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("prism-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client { base, http })
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub fn health(&self) -> Result<Value, ApiError> {
        self.get_json(&["health"])
    }

    pub fn collections(&self) -> Result<Value, ApiError> {
        self.get_json(&["collections"])
    }

    pub fn collection(&self, name: &str) -> Result<CollectionInfo, ApiError> {
        let value = self.get_json(&["collections", name])?;
        decode(value, &format!("GET /collections/{name}"))
    }

    /// Sends one NDJSON body (one document per line) to the bulk route.
    pub fn bulk(&self, collection: &str, ndjson: Vec<u8>) -> Result<BulkResponse, ApiError> {
        let url = self.url(&["collections", collection, "documents", "bulk"]);
        let request = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(ndjson);
        let value = self.send(request, &url)?;
        decode(
            value,
            &format!("POST /collections/{collection}/documents/bulk"),
        )
    }

    /// Makes every acknowledged write of `collection` searchable, waiting for it.
    pub fn refresh(&self, collection: &str) -> Result<Value, ApiError> {
        let url = self.url(&["collections", collection, "refresh"]);
        self.send(self.http.post(url.clone()), &url)
    }

    pub fn search(&self, collection: &str, request: &SearchRequest) -> Result<Value, ApiError> {
        let url = self.url(&["collections", collection, "search"]);
        self.send(self.http.post(url.clone()).json(request), &url)
    }

    fn get_json(&self, segments: &[&str]) -> Result<Value, ApiError> {
        let url = self.url(segments);
        self.send(self.http.get(url.clone()), &url)
    }

    /// Appends path segments to the base URL, percent-encoding each one.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn send(&self, request: RequestBuilder, url: &Url) -> Result<Value, ApiError> {
        let response = request.send().map_err(|err| self.transport_error(err))?;
        let status = response.status();
        let body = response.bytes().map_err(|err| self.transport_error(err))?;
        if !status.is_success() {
            return Err(server_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|err| ApiError::Decode {
            what: url.path().to_string(),
            detail: err.to_string(),
        })
    }

    fn transport_error(&self, err: reqwest::Error) -> ApiError {
        let url = self.base_url().to_string();
        if err.is_connect() {
            ApiError::Connect { url }
        } else if err.is_timeout() {
            ApiError::Timeout { url }
        } else {
            ApiError::Transport(err)
        }
    }
}

fn decode<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|err| ApiError::Decode {
        what: what.to_string(),
        detail: err.to_string(),
    })
}

/// Builds the error for a non-2xx answer, falling back to the raw body when it
/// is not the documented `{"error":{...}}` shape (e.g. from a proxy).
fn server_error(status: StatusCode, body: &[u8]) -> ApiError {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return ApiError::Server {
            status,
            code: parsed.error.code,
            message: parsed.error.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no response body")
            .to_string()
    } else {
        crate::output::truncate(text, 300)
    };
    ApiError::Server {
        status,
        code: format!("http_{}", status.as_u16()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_uses_documented_shape() {
        let body = br#"{"error":{"code":"collection_not_found","message":"no collection `x`"}}"#;
        let err = server_error(StatusCode::NOT_FOUND, body);
        assert_eq!(err.to_string(), "collection_not_found: no collection `x`");
        assert!(matches!(
            err,
            ApiError::Server {
                status: StatusCode::NOT_FOUND,
                ..
            }
        ));
    }

    #[test]
    fn server_error_falls_back_to_status_and_body() {
        let err = server_error(StatusCode::BAD_GATEWAY, b"upstream down\n");
        assert_eq!(err.to_string(), "http_502: upstream down");
        let err = server_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(err.to_string(), "http_503: Service Unavailable");
    }

    #[test]
    fn url_segments_are_encoded_and_base_path_kept() {
        let client = Client::new("http://localhost:3000/prism/").unwrap();
        let url = client.url(&["collections", "a b/c", "search"]);
        assert_eq!(
            url.as_str(),
            "http://localhost:3000/prism/collections/a%20b%2Fc/search"
        );
        let client = Client::new("http://localhost:3000").unwrap();
        assert_eq!(
            client.url(&["health"]).as_str(),
            "http://localhost:3000/health"
        );
        assert_eq!(client.base_url(), "http://localhost:3000");
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(Client::new("localhost:3000").is_err());
        assert!(Client::new("ftp://example.org").is_err());
    }
}
