//! A fault proxy: any HTTP provider behind the simulators' faults. Requests go to the
//! upstream as they came; on the way, the seeded faults of [`SimConfig`] answer some of
//! them `429`, `503` or not at all (a hang) before the upstream sees them, and lose the
//! answer to some writes that the upstream did carry out ("lost after commit"; reads are
//! never lost, as they commit nothing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::sim::{self, Faults, RunningSim, SimConfig, SimError, problem};

/// The largest request body forwarded.
const BODY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Where the proxy reports what it saw; every other path goes to the upstream.
pub const STATS_PATH: &str = "/_fault-proxy/stats";

/// What a proxy saw, by method: requests received, and those the upstream carried out
/// (it answered, whether or not the answer was then lost).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStats {
    /// Requests received, by method.
    pub received: BTreeMap<String, u64>,
    /// Requests the upstream answered, by method and status (`PUT 200`).
    pub forwarded: BTreeMap<String, u64>,
    /// Answers lost after the upstream carried the request out, by method.
    pub lost: BTreeMap<String, u64>,
}

impl ProxyStats {
    /// Requests with `method` that the upstream answered with a 2xx.
    pub fn succeeded(&self, method: &str) -> u64 {
        self.forwarded
            .iter()
            .filter(|(key, _)| {
                key.split_once(' ')
                    .is_some_and(|(m, status)| m == method && status.starts_with('2'))
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// A proxy in front of one upstream, with seeded faults.
#[derive(Debug)]
pub struct FaultProxy {
    upstream: String,
    faults: Faults,
    client: reqwest::Client,
    stats: Mutex<ProxyStats>,
}

/// Headers that belong to one connection, not to the request: not forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

impl FaultProxy {
    /// A proxy to `upstream` (`http://HOST:PORT`) with the faults of `config`. The
    /// upstream gets the proxy's request with its own `Host`.
    pub fn new(upstream: &str, config: SimConfig) -> Result<Arc<Self>, SimError> {
        let upstream = upstream.trim_end_matches('/');
        let valid = (upstream.starts_with("http://") || upstream.starts_with("https://"))
            && reqwest::Url::parse(upstream).is_ok_and(|url| url.host().is_some());
        if !valid {
            return Err(SimError::Config(format!(
                "the upstream {upstream:?} is not an http(s) URL"
            )));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| SimError::Config(format!("cannot build the HTTP client: {error}")))?;
        Ok(Arc::new(Self {
            upstream: upstream.to_owned(),
            faults: Faults::new(config)?,
            client,
            stats: Mutex::new(ProxyStats::default()),
        }))
    }

    /// What it saw so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, pick: impl FnOnce(&mut ProxyStats) -> &mut BTreeMap<String, u64>, key: String) {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        *pick(&mut stats).entry(key).or_default() += 1;
    }

    /// The routes: the stats, and everything else forwarded.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                STATS_PATH,
                get(|State(proxy): State<Arc<Self>>| async move {
                    axum::Json(proxy.stats()).into_response()
                }),
            )
            .fallback(forward)
            .with_state(self)
    }

    /// Serves on `addr` (`127.0.0.1:0` picks a free port) in a background task.
    pub async fn spawn(self: Arc<Self>, addr: &str) -> Result<RunningSim, SimError> {
        sim::spawn(self.router(), addr, "fault-proxy").await
    }
}

async fn forward(State(proxy): State<Arc<FaultProxy>>, request: Request) -> Response {
    let method = request.method().clone();
    proxy.count(|s| &mut s.received, method.to_string());
    if let Some(fault) = proxy.faults.before_serving().await {
        return fault;
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let mut headers = HeaderMap::new();
    for (name, value) in request.headers() {
        if !HOP_BY_HOP.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = match axum::body::to_bytes(request.into_body(), BODY_MAX_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the proxy forwards bodies up to {BODY_MAX_BYTES} bytes: {error}"),
            );
        }
    };
    // In a task of its own: a client that goes away (timed out, killed) does not cancel
    // what the upstream is already doing, and the answer is still counted.
    let upstream = {
        let proxy = proxy.clone();
        let request = proxy
            .client
            .request(method.clone(), format!("{}{path}", proxy.upstream))
            .headers(headers)
            .body(body);
        let method = method.clone();
        tokio::spawn(async move {
            let answer = request.send().await?;
            let status = answer.status();
            proxy.count(
                |s| &mut s.forwarded,
                format!("{method} {}", status.as_u16()),
            );
            let headers = answer.headers().clone();
            let body = answer.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        })
    };
    let (status, upstream_headers, body) = match upstream.await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            tracing::warn!(%error, "the upstream could not be reached");
            return problem(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                format!("the upstream could not be reached: {error}"),
            );
        }
        Err(error) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                format!("the upstream call failed: {error}"),
            );
        }
    };
    // Only a write has something to commit: a lost answer to a read loses nothing.
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if status.is_success() && write && proxy.faults.loses_answer() {
        tracing::info!(%method, %path, "losing the answer after the upstream carried the request out");
        proxy.count(|s| &mut s.lost, method.to_string());
        return sim::lost_answer();
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &upstream_headers {
        if !HOP_BY_HOP.contains(name) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
