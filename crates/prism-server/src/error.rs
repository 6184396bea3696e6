//! HTTP errors: every failure is JSON `{"error":{"code","message"}}` with a fitting status.
//! The mapping from engine errors to statuses lives here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_core::Error;
use serde_json::Value;

use crate::answers::{ErrorBody, ErrorDetail};

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// The status each engine error maps to.
pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::InvalidCollectionName { .. }
        | Error::InvalidSchema(_)
        | Error::InvalidDocument { .. }
        | Error::InvalidQuery(_)
        | Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        Error::CollectionNotFound(_) | Error::DocumentNotFound(_) => StatusCode::NOT_FOUND,
        Error::CollectionExists(_) => StatusCode::CONFLICT,
        Error::Overloaded | Error::SearchesQueued { .. } | Error::CircuitBreaking { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Error::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::SearchTimedOut { .. } | Error::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Error::ShuttingDown
        | Error::StorageFailed { .. }
        | Error::CollectionUnavailable { .. }
        | Error::CollectionRecovering { .. }
        | Error::WriteUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Error::LimitExceeded(_) => StatusCode::BAD_REQUEST,
        Error::DataDirLocked { .. }
        | Error::Corrupt { .. }
        | Error::Io { .. }
        | Error::Tantivy(_)
        | Error::Vector(_)
        | Error::LogOrder(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = status_of(&error);
        // A cancelled search has no client to read its answer, and a search that timed out
        // in the queue is load, not a fault.
        let expected = matches!(error, Error::Cancelled | Error::SearchTimedOut { .. });
        if status.is_server_error() && !expected {
            tracing::error!(error = %error, "request failed");
        }
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // Over a queue or a budget that drains within a moment.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The body was not read, so the connection cannot carry another request: say so,
            // or a client reuses it and fails on the next request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
