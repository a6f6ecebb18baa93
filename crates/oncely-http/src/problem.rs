//! Every error the API returns, as RFC 9457 problem details, mapped in this one place.

use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oncely::Error;
use serde::Serialize;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem. `type` is a stable URN per kind of problem, so clients can branch
/// on it; `detail` is for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// `urn:oncely:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time.
    pub detail: String,
    /// The idempotency key concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Problem {
    /// A problem of the kind `slug`.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("urn:oncely:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            key: None,
        }
    }

    /// The same problem, naming the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// A request parameter that is not valid.
    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, "Bad request", detail)
    }

    /// A body that could not be read as the domain's request.
    pub fn from_rejection(rejection: &JsonRejection) -> Self {
        let status = rejection.status();
        let (slug, title) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ("body-too-large", "Request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "Expected application/json")
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                ("invalid-body", "The body does not match the request schema")
            }
            _ => ("malformed-body", "The body is not valid JSON"),
        };
        Self::new(status, slug, title, rejection.body_text())
    }

    /// A request that was read but is not valid (non-positive amount, …).
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "The request is not valid",
            detail,
        )
    }

    /// What an engine error means to an HTTP client.
    pub fn from_engine(error: &Error) -> Self {
        match error {
            Error::InvalidName(invalid) => {
                Self::bad_request("invalid-idempotency-key", invalid.to_string())
            }
            Error::Conflict { scope } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused with a different request",
                error.to_string(),
            )
            .with_key(scope.key.as_str()),
            Error::NotFound { scope } => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such operation",
                error.to_string(),
            )
            .with_key(scope.key.as_str()),
            Error::NotRetryable { scope, .. } => Self::new(
                StatusCode::CONFLICT,
                "not-retryable",
                "Only FAILED or TIMEOUT operations can be retried",
                error.to_string(),
            )
            .with_key(scope.key.as_str()),
            Error::NotCancellable { scope, .. } => Self::new(
                StatusCode::CONFLICT,
                "not-cancellable",
                "Only ACCEPTED or PROCESSING operations can be cancelled",
                error.to_string(),
            )
            .with_key(scope.key.as_str()),
            Error::MissingKey { .. } => {
                Self::bad_request("missing-idempotency-key", error.to_string())
            }
            Error::Command(_) => Self::invalid(error.to_string()),
            Error::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "The service is shutting down",
                "try again on another instance or in a moment",
            ),
            Error::Config(_) | Error::Store(_) => {
                tracing::error!(%error, "request failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The store is unavailable",
                    "the request was not processed; retrying it with the same idempotency key is safe",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        Self::from_engine(&error)
    }
}
