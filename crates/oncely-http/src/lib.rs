//! oncely's HTTP API: Idempotency-Key endpoints for any [`Orchestrator`], in one call.
//!
//! ```ignore
//! let api = oncely_http::routes(engine, ApiConfig::new("payments"), |request: PaymentRequest| {
//!     PaymentCommand::try_from(request)
//! });
//! axum::serve(listener, api).await?;
//! ```
//!
//! gives, for the resource `payments`:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/payments` | accept a command under `Idempotency-Key` (or the business key); `Prefer: wait=N` |
//! | `GET /v1/payments` | list, `?state=&limit=&cursor=`, newest first |
//! | `GET /v1/payments/{key}` | one operation |
//! | `GET /v1/payments/{key}/history` | its write-ahead log |
//! | `POST /v1/payments/{key}/retry` | an operator's retry of a `FAILED` or `TIMEOUT` operation |
//! | `GET /healthz`, `GET /readyz` | the process is up; the store answers |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of all of the above |
//!
//! Every error is `application/problem+json` (RFC 9457, [`Problem`]); a refused request
//! stores nothing.

#![forbid(unsafe_code)]

mod openapi;
mod problem;
mod view;

use std::fmt::Display;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use oncely::{
    Engine, IdempotencyKey, ListFilter, OperationId, OperationState, Orchestrator, Store, TenantId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use openapi::{ROUTES, RouteDoc, openapi_document};
pub use problem::{PROBLEM_JSON, Problem};
pub use view::{HistoryView, OperationView, PageView, WalEntryView};

/// The largest request body: 64 KiB.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;
/// The longest `Prefer: wait=N`, in seconds.
pub const WAIT_SECONDS_MAX: u64 = 60;
/// The page size when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: u32 = 50;

/// How the routes behave.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The plural resource name in paths: `payments` → `/v1/payments`.
    pub resource: &'static str,
    /// Refuse a create without `Idempotency-Key` (`400`) instead of using the business key.
    pub require_idempotency_key: bool,
    /// The JSON Schema of the request body, for `/openapi.json`.
    pub request_schema: serde_json::Value,
}

impl ApiConfig {
    /// Routes under `/v1/{resource}`, business keys allowed, an open request schema.
    pub fn new(resource: &'static str) -> Self {
        Self {
            resource,
            require_idempotency_key: false,
            request_schema: serde_json::json!({ "type": "object" }),
        }
    }
}

struct Api<S: Store, O: Orchestrator, B, F> {
    engine: Arc<Engine<S, O>>,
    config: ApiConfig,
    convert: F,
    _body: PhantomData<fn(B)>,
}

/// The routes of one domain over `engine`. `convert` turns the JSON body `B` into the
/// domain's command, or says why it cannot (`422`).
pub fn routes<S, O, B, F, E>(engine: Arc<Engine<S, O>>, config: ApiConfig, convert: F) -> Router
where
    S: Store,
    O: Orchestrator,
    B: DeserializeOwned + Send + 'static,
    F: Fn(B) -> Result<O::Command, E> + Send + Sync + 'static,
    E: Display + 'static,
{
    let document = openapi_document(&config);
    let api = Arc::new(Api {
        engine,
        config,
        convert,
        _body: PhantomData,
    });
    // Every route comes from ROUTES, so none is served undocumented.
    let mut router = Router::new();
    for route in ROUTES {
        let path = route.path.replace("{resource}", api.config.resource);
        let handler: MethodRouter<Arc<Api<S, O, B, F>>> = match route.operation_id {
            "create" => post(create::<S, O, B, F, E>),
            "list" => get(list::<S, O, B, F>),
            "get" => get(one::<S, O, B, F>),
            "history" => get(history::<S, O, B, F>),
            "retry" => post(retry::<S, O, B, F>),
            "ready" => get(ready::<S, O, B, F>),
            "health" => get(|| async { "ok" }),
            "openapi" => {
                let document = document.clone();
                get(move || {
                    let document = document.clone();
                    async move { Json(document) }
                })
            }
            other => {
                tracing::error!(operation_id = other, "documented route without a handler");
                continue;
            }
        };
        router = router.route(&path, handler);
    }
    router
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-route",
                "No such route",
                "see /openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(api)
}

fn key_from_path(key: String) -> Result<IdempotencyKey, Problem> {
    IdempotencyKey::new(key)
        .map_err(|error| Problem::bad_request("invalid-idempotency-key", error.to_string()))
}

/// `Idempotency-Key`, when present; a present but invalid key is refused.
fn key_from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        Problem::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be visible ASCII",
        )
    })?;
    key_from_path(text.to_owned()).map(Some)
}

/// `Prefer: wait=N` (RFC 7240), capped at [`WAIT_SECONDS_MAX`].
fn preferred_wait(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    for value in headers.get_all("prefer") {
        let text = value.to_str().unwrap_or_default();
        for preference in text.split([',', ';']) {
            let mut parts = preference.trim().splitn(2, '=');
            if parts.next().map(str::trim) == Some("wait") {
                let seconds = parts.next().unwrap_or_default().trim().trim_matches('"');
                let seconds: u64 = seconds.parse().map_err(|_| {
                    Problem::bad_request(
                        "invalid-prefer",
                        format!("Prefer: wait takes whole seconds, not {seconds:?}"),
                    )
                })?;
                return Ok(Some(seconds.min(WAIT_SECONDS_MAX)));
            }
        }
    }
    Ok(None)
}

async fn create<S, O, B, F, E>(
    State(api): State<Arc<Api<S, O, B, F>>>,
    headers: HeaderMap,
    body: Result<Json<B>, JsonRejection>,
) -> Result<Response, Problem>
where
    S: Store,
    O: Orchestrator,
    B: DeserializeOwned + Send + 'static,
    F: Fn(B) -> Result<O::Command, E> + Send + Sync + 'static,
    E: Display + 'static,
{
    let key = key_from_headers(&headers)?;
    let wait = preferred_wait(&headers)?;
    if key.is_none() && api.config.require_idempotency_key {
        return Err(Problem::bad_request(
            "missing-idempotency-key",
            "this server requires an Idempotency-Key header",
        ));
    }
    let Json(body) = body.map_err(|rejection| Problem::from_rejection(&rejection))?;
    let command = (api.convert)(body).map_err(|error| Problem::invalid(error.to_string()))?;
    let submitted = api
        .engine
        .submit_for(TenantId::default(), key, command)
        .await?;
    let mut operation = submitted.operation;
    if let Some(seconds) = wait {
        operation = api
            .engine
            .wait(&operation.scope, Duration::from_secs(seconds))
            .await?;
    }
    let status = if operation.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/{}/{}", api.config.resource, operation.scope.key);
    let mut response = (status, Json(OperationView::from(&operation))).into_response();
    let response_headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response_headers.insert(header::LOCATION, location);
    }
    if submitted.replayed {
        response_headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(seconds) = wait
        && let Ok(applied) = HeaderValue::from_str(&format!("wait={seconds}"))
    {
        response_headers.insert("preference-applied", applied);
    }
    Ok(response)
}

async fn one<S: Store, O: Orchestrator, B, F>(
    State(api): State<Arc<Api<S, O, B, F>>>,
    Path(key): Path<String>,
) -> Result<Json<OperationView>, Problem> {
    let scope = api.engine.scope(key_from_path(key)?);
    Ok(Json(OperationView::from(&api.engine.get(&scope).await?)))
}

async fn history<S: Store, O: Orchestrator, B, F>(
    State(api): State<Arc<Api<S, O, B, F>>>,
    Path(key): Path<String>,
) -> Result<Json<HistoryView>, Problem> {
    let scope = api.engine.scope(key_from_path(key)?);
    let entries = api.engine.history(&scope).await?;
    Ok(Json(HistoryView::new(scope.key.as_str(), &entries)))
}

async fn retry<S: Store, O: Orchestrator, B, F>(
    State(api): State<Arc<Api<S, O, B, F>>>,
    Path(key): Path<String>,
) -> Result<Json<OperationView>, Problem> {
    let scope = api.engine.scope(key_from_path(key)?);
    Ok(Json(OperationView::from(&api.engine.retry(&scope).await?)))
}

/// `GET /v1/{resource}` parameters; anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list<S: Store, O: Orchestrator, B, F>(
    State(api): State<Arc<Api<S, O, B, F>>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PageView>, Problem> {
    let Query(query) =
        query.map_err(|rejection| Problem::bad_request("invalid-query", rejection.body_text()))?;
    let state = query
        .state
        .map(|state| state.parse::<OperationState>())
        .transpose()
        .map_err(|error| Problem::bad_request("invalid-query", error.to_string()))?;
    let limit = match query.limit {
        None => LIST_LIMIT_DEFAULT,
        Some(limit) => limit
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=oncely::store::LIST_LIMIT_MAX).contains(limit))
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid-query",
                    format!(
                        "limit must be 1 to {}, not {limit:?}",
                        oncely::store::LIST_LIMIT_MAX
                    ),
                )
            })?,
    };
    let before = query
        .cursor
        .map(|cursor| {
            cursor.parse::<i64>().map(OperationId).map_err(|_| {
                Problem::bad_request("invalid-query", format!("unknown cursor {cursor:?}"))
            })
        })
        .transpose()?;
    let page = api
        .engine
        .list(ListFilter {
            state,
            limit,
            before,
            ..ListFilter::default()
        })
        .await?;
    Ok(Json(PageView::from(&page)))
}

async fn ready<S: Store, O: Orchestrator, B, F>(
    State(api): State<Arc<Api<S, O, B, F>>>,
) -> Result<&'static str, Problem> {
    let probe = ListFilter {
        limit: 1,
        ..ListFilter::default()
    };
    api.engine.list(probe).await?;
    Ok("ready")
}
