//! The routes of one domain, `/v1/{resource}…`, generic over its engine: accept, get,
//! list, history, operator retry.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use oncely::{Engine, IdempotencyKey, ListFilter, OperationId, OperationState, Store, TenantId};
use serde::Deserialize;

use crate::domain::HttpDomain;
use crate::openapi::{DOMAIN_ROUTES, RouteId};
use crate::problem::Problem;
use crate::view::{HistoryView, OperationView, PageView};

/// The longest `Prefer: wait=N`, in seconds.
pub const WAIT_SECONDS_MAX: u64 = 60;
/// The page size when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: u32 = 50;

/// What the routes of one domain share.
pub(crate) struct DomainApi<S: Store, O: HttpDomain> {
    pub(crate) engine: Arc<Engine<S, O>>,
    /// Refuse a create without `Idempotency-Key` instead of using the business key.
    pub(crate) require_idempotency_key: bool,
}

/// The routes of one domain, from the one route table the OpenAPI document is built from,
/// so none is served undocumented.
pub(crate) fn router<S: Store, O: HttpDomain>(api: Arc<DomainApi<S, O>>) -> Router {
    let mut router = Router::new();
    for route in DOMAIN_ROUTES {
        let path = route.path.replace("{resource}", O::RESOURCE);
        let handler: MethodRouter<Arc<DomainApi<S, O>>> = match route.id {
            RouteId::Create => post(create::<S, O>),
            RouteId::List => get(list::<S, O>),
            RouteId::Get => get(one::<S, O>),
            RouteId::History => get(history::<S, O>),
            RouteId::Retry => post(retry::<S, O>),
        };
        router = router.route(&path, handler);
    }
    router
        .layer(DefaultBodyLimit::max(O::BODY_LIMIT_BYTES))
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

async fn create<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    headers: HeaderMap,
    body: Result<Json<O::Request>, JsonRejection>,
) -> Result<Response, Problem> {
    let key = key_from_headers(&headers)?;
    let wait = preferred_wait(&headers)?;
    if key.is_none() && api.require_idempotency_key {
        return Err(Problem::bad_request(
            "missing-idempotency-key",
            "this server requires an Idempotency-Key header",
        ));
    }
    let Json(request) = body.map_err(|rejection| Problem::from_rejection(&rejection))?;
    let command: O::Command = request
        .try_into()
        .map_err(|error| Problem::invalid(error.to_string()))?;
    api.engine
        .orchestrator()
        .admit(&command)
        .await
        .map_err(Problem::invalid)?;
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
    let location = format!("/v1/{}/{}", O::RESOURCE, operation.scope.key);
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

async fn one<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    Path(key): Path<String>,
) -> Result<Json<OperationView>, Problem> {
    let scope = api.engine.scope(key_from_path(key)?);
    Ok(Json(OperationView::from(&api.engine.get(&scope).await?)))
}

async fn history<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    Path(key): Path<String>,
) -> Result<Json<HistoryView>, Problem> {
    let scope = api.engine.scope(key_from_path(key)?);
    let entries = api.engine.history(&scope).await?;
    Ok(Json(HistoryView::new(scope.key.as_str(), &entries)))
}

async fn retry<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
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

async fn list<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    query: Result<Query<ListQuery>, QueryRejection>,
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
