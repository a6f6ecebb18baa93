//! [`ApiClient`]: one HTTP call per attempt, its answer turned into an outcome.

use std::sync::Arc;
use std::time::Duration;

use oncely::{Attempt, IdempotencyKey, Outcome, TraceParent};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::destination::Destinations;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Timeouts of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// The whole request, answer included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
        }
    }
}

/// The longest `Retry-After` taken into account.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3_600);

/// An HTTP client for orchestrators. Cheap to clone. Redirects are never followed: a
/// provider that answers 3xx gets `Fail` (an API that moved is a configuration error, and
/// following a redirect could take a call where its destination check does not reach).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
}

impl ApiClient {
    /// A client with these timeouts.
    pub fn new(timeouts: Timeouts) -> Result<Self, ClientError> {
        Self::build(timeouts, None)
    }

    /// A client whose every connection goes only where `destinations` allow, checked on
    /// the resolved address (see [`Destinations`]).
    pub fn guarded(timeouts: Timeouts, destinations: Destinations) -> Result<Self, ClientError> {
        Self::build(timeouts, Some(destinations))
    }

    fn build(timeouts: Timeouts, guard: Option<Destinations>) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(guard) = guard {
            builder = builder.dns_resolver(Arc::new(guard));
        }
        Ok(Self {
            http: builder.build().map_err(ClientError::Build)?,
        })
    }

    /// A `GET` to start a request.
    pub fn get(&self, url: &str) -> RequestBuilder {
        self.http.get(url)
    }

    /// A `POST` to start a request.
    pub fn post(&self, url: &str) -> RequestBuilder {
        self.http.post(url)
    }

    /// The underlying client, for anything else.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends `request` with the attempt's key as `Idempotency-Key` (the same on every
    /// attempt, I7) and its trace context as `traceparent`. A 2xx answer is read as `T`;
    /// everything else comes back as the outcome to return from `execute`, classified by
    /// [`classify`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        attempt: &Attempt,
    ) -> Result<T, Outcome> {
        let request = traced(request, attempt.traceparent.as_ref());
        self.call_with_key(request, attempt.idempotency_key()).await
    }

    /// [`ApiClient::call`] with the key given directly.
    pub async fn call_with_key<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        key: &IdempotencyKey,
    ) -> Result<T, Outcome> {
        let request = request.header("Idempotency-Key", key.as_str());
        let response = request.send().await.map_err(|e| transport_failure(&e))?;
        read::<T>(response).await
    }
}

/// `request` carrying the trace onward: a W3C `traceparent` header when there is one.
pub fn traced(request: RequestBuilder, traceparent: Option<&TraceParent>) -> RequestBuilder {
    match traceparent {
        Some(traceparent) => request.header("traceparent", traceparent.to_string()),
        None => request,
    }
}

/// A 2xx answer read as `T`; anything else, classified by [`classify`].
pub async fn read<T: DeserializeOwned>(response: Response) -> Result<T, Outcome> {
    let status = response.status();
    let wait = retry_after(response.headers());
    if status.is_success() {
        // The provider said yes but the answer could not be read: it may have acted. The
        // same key next time returns what it did.
        return response.json::<T>().await.map_err(|error| {
            Outcome::unknown(format!(
                "the API answered {status} but the body could not be read ({error}); the outcome is unknown"
            ))
        });
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(classify(status, &body, wait))
}

/// An error before any answer: a timeout, a refused or broken connection. A connection
/// that was never made sent nothing: a plain `Retry`. Any other failure may have reached
/// the provider: an unknown `Retry`, which the domain may reconcile before the next
/// attempt, and which is retried with the same key.
pub(crate) fn transport_failure(error: &reqwest::Error) -> Outcome {
    if error.is_connect() {
        return Outcome::retry(format!("the API could not be reached: {error}"));
    }
    let what = if error.is_timeout() {
        "the API did not answer in time"
    } else {
        "the request failed"
    };
    Outcome::unknown(format!("{what}; the outcome is unknown: {error}"))
}

/// `Retry-After` in seconds or as an HTTP date, capped at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// What a non-2xx answer means. 408, 429 and 5xx are transient: `Retry`, after
/// `retry_after` when the API said. 3xx is a redirect, not followed: `Fail`. Any other
/// status is the API refusing: `Fail` with its error code (`code`, or `error` when a
/// string, from a JSON body) or `http_<status>`.
pub fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |field: &str| {
        problem
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let message = text("message")
        .or_else(|| text("detail"))
        .or_else(|| text("title"))
        .unwrap_or_else(|| format!("the API answered {status}"));
    let transient = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if transient {
        let outcome = Outcome::retry(message);
        return match retry_after {
            Some(wait) => outcome.with_backoff(wait),
            None => outcome,
        };
    }
    if status.is_redirection() {
        return Outcome::fail(format!(
            "the API answered {status}; redirects are not followed"
        ))
        .with_error_code("redirect");
    }
    let code = text("code")
        .or_else(|| text("error"))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    Outcome::fail(message).with_error_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, b"", wait),
            Outcome::retry("the API answered 429 Too Many Requests")
                .with_backoff(Duration::from_secs(3))
        );
        assert!(classify(StatusCode::SERVICE_UNAVAILABLE, b"{}", None).is_retry());
        assert!(classify(StatusCode::REQUEST_TIMEOUT, b"", None).is_retry());
        assert_eq!(
            classify(
                StatusCode::PAYMENT_REQUIRED,
                br#"{"code":"card_declined","message":"insufficient funds"}"#,
                None
            ),
            Outcome::fail("insufficient funds").with_error_code("card_declined")
        );
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, b"not json", None),
            Outcome::fail("the API answered 422 Unprocessable Entity").with_error_code("http_422")
        );
        assert_eq!(
            classify(StatusCode::FOUND, b"", None),
            Outcome::fail("the API answered 302 Found; redirects are not followed")
                .with_error_code("redirect")
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_capped() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(RETRY_AFTER_MAX));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, soon.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
