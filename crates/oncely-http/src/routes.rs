//! The routes of one domain, `/v1/{resource}…`, generic over its engine: accept, get,
//! list, history, operator retry.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use chrono::{DateTime, Utc};
use oncely::{
    Engine, IdempotencyKey, ListFilter, OperationId, OperationState, Scope, Store, TraceParent,
};
use serde::Deserialize;

use crate::auth::{Principal, require};
use crate::domain::HttpDomain;
use crate::openapi::{DOMAIN_ROUTES, RouteId};
use crate::problem::Problem;
use crate::view::{BulkFailure, BulkView, HistoryView, OperationView, PageView};

/// The longest `Prefer: wait=N`, in seconds.
pub const WAIT_SECONDS_MAX: u64 = 60;
/// The page size when `limit` is not given.
pub const LIST_LIMIT_DEFAULT: u32 = 50;

/// What the routes of one domain share.
pub(crate) struct DomainApi<S: Store, O: HttpDomain> {
    pub(crate) engine: Arc<Engine<S, O>>,
    /// Refuse a create without `Idempotency-Key` instead of using the business key.
    pub(crate) require_idempotency_key: bool,
    /// The request's published JSON Schema…
    pub(crate) schema: serde_json::Value,
    /// …compiled: a body must pass it.
    pub(crate) validator: jsonschema::Validator,
}

impl<S: Store, O: HttpDomain> DomainApi<S, O> {
    /// Whether a create must carry `Idempotency-Key`.
    pub(crate) fn key_required(&self) -> bool {
        self.require_idempotency_key || !O::BUSINESS_KEY
    }
}

/// The routes of one domain, from the one route table the OpenAPI document is built from,
/// so none is served undocumented.
pub(crate) fn router<S: Store, O: HttpDomain>(api: Arc<DomainApi<S, O>>) -> Router {
    let mut router = Router::new();
    for route in DOMAIN_ROUTES {
        let path = route.path.replace("{resource}", O::RESOURCE);
        let mut handler: MethodRouter<Arc<DomainApi<S, O>>> = match route.id {
            RouteId::Create => post(create::<S, O>),
            RouteId::List => get(list::<S, O>),
            RouteId::Get => get(one::<S, O>),
            RouteId::History => get(history::<S, O>),
            RouteId::Retry => post(retry::<S, O>),
            RouteId::Cancel => post(cancel::<S, O>),
            RouteId::BulkRetry => post(bulk_retry::<S, O>),
            RouteId::BulkCancel => post(bulk_cancel::<S, O>),
        };
        if let Some(role) = route.role {
            handler = handler.layer(from_fn(move |request, next| require(role, request, next)));
        }
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

/// `Idempotency-Key`, when present; a present but invalid, empty or repeated key is
/// refused.
fn key_from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::bad_request(
            "invalid-idempotency-key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let text = value.to_str().map_err(|_| {
        Problem::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be visible ASCII",
        )
    })?;
    key_from_path(text.to_owned()).map(Some)
}

/// `Prefer: wait=N` (RFC 7240), capped at [`WAIT_SECONDS_MAX`]. A preference that cannot
/// be honoured is ignored, as RFC 7240 asks; `Preference-Applied` says when it was not.
fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    for value in headers.get_all("prefer") {
        let text = value.to_str().unwrap_or_default();
        for preference in text.split([',', ';']) {
            let mut parts = preference.trim().splitn(2, '=');
            if parts
                .next()
                .map(str::trim)
                .is_some_and(|name| name.eq_ignore_ascii_case("wait"))
            {
                let seconds = parts.next().unwrap_or_default().trim().trim_matches('"');
                if let Ok(seconds) = seconds.parse::<u64>() {
                    return Some(seconds.min(WAIT_SECONDS_MAX));
                }
            }
        }
    }
    None
}

/// `Location` of `key`: every character outside the unreserved set percent-encoded, so
/// following it names the same key.
fn location(resource: &str, key: &IdempotencyKey) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(key.as_str(), UNRESERVED);
    format!("/v1/{resource}/{encoded}")
}

/// Whether `headers` say the body is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The request body, read to the domain's limit, then checked to the letter of the
/// published schema, then turned into the domain's request type.
async fn read_request<S: Store, O: HttpDomain>(
    api: &DomainApi<S, O>,
    headers: &HeaderMap,
    body: Body,
) -> Result<O::Request, Problem> {
    if !is_json(headers) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Expected application/json",
            "send the body as Content-Type: application/json",
        ));
    }
    let bytes = axum::body::to_bytes(body, O::BODY_LIMIT_BYTES)
        .await
        .map_err(|error| body_error(&error, O::BODY_LIMIT_BYTES))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            "The body is not valid JSON",
            format!("the body is not JSON: {error}"),
        )
    })?;
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "The body does not match the request schema",
            detail,
        )
    };
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object".into()));
    }
    let errors: Vec<String> = api
        .validator
        .iter_errors(&value)
        .take(5)
        .map(|error| {
            let at = error.instance_path().to_string();
            let at = if at.is_empty() {
                "the body".to_owned()
            } else {
                at
            };
            format!("{at}: {}", error.masked())
        })
        .collect();
    if !errors.is_empty() {
        return Err(invalid(errors.join("; ")));
    }
    O::check_body(&bytes).map_err(invalid)?;
    let mut value = value;
    integers_as_integers(&api.schema, &mut value);
    serde_json::from_value(value).map_err(|error| {
        // The schema passed, so this is a check the schema does not express; say what
        // without naming internal types.
        let text = error.to_string();
        let detail = if text.contains("struct ") || text.contains("enum ") {
            "the body does not match the request schema".to_owned()
        } else {
            text
        };
        invalid(detail)
    })
}

/// Writes as integers the numbers the schema calls integers: JSON Schema takes `9532.0` as
/// the integer 9532, and so does the API.
fn integers_as_integers(schema: &serde_json::Value, value: &mut serde_json::Value) {
    use serde_json::Value;
    let is_integer = schema.get("type").is_some_and(|t| {
        t == "integer"
            || t.as_array()
                .is_some_and(|types| types.iter().any(|t| t == "integer"))
    });
    match value {
        Value::Number(number) if is_integer && !number.is_i64() && !number.is_u64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
                && float.abs() < 9.0e15
            {
                // Exact: every integer below 2^53 is a float exactly.
                #[allow(clippy::cast_possible_truncation)]
                let integer = float as i64;
                *value = Value::from(integer);
            }
        }
        Value::Object(fields) => {
            if let Some(Value::Object(properties)) = schema.get("properties") {
                for (name, field) in fields.iter_mut() {
                    if let Some(field_schema) = properties.get(name) {
                        integers_as_integers(field_schema, field);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    integers_as_integers(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

/// Why a body could not be read: too large (`413`), too slow (`408`), or cut off (`400`).
fn body_error(error: &axum::Error, limit: usize) -> Problem {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("the body may be at most {limit} bytes"),
            );
        }
        if cause.is::<tower_http::timeout::TimeoutError>() {
            return Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "The body took too long to arrive",
                "send the whole body within the server's body timeout",
            );
        }
        source = cause.source();
    }
    Problem::bad_request("malformed-body", "the body could not be read")
}

/// The caller's W3C trace context. One that does not parse is ignored, as the
/// recommendation asks (the operation then begins a trace of its own).
fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    match value.parse() {
        Ok(traceparent) => Some(traceparent),
        Err(error) => {
            tracing::debug!(%error, "traceparent ignored");
            None
        }
    }
}

async fn create<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let principal = who(principal);
    let key = key_from_headers(&headers)?;
    let wait = preferred_wait(&headers);
    if key.is_none() && api.key_required() {
        return Err(Problem::bad_request(
            "missing-idempotency-key",
            format!("/v1/{} requires an Idempotency-Key header", O::RESOURCE),
        ));
    }
    let request = read_request(&api, &headers, body).await?;
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
        .submit_traced(principal.tenant, key, command, traceparent(&headers))
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
    let location = location(O::RESOURCE, &operation.scope.key);
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

/// The principal the guard found, or the local one when the service has no guard.
/// The request's principal: the guard's, or the local one on a router without it.
pub(crate) fn who(principal: Option<Extension<Principal>>) -> Principal {
    principal.map_or_else(Principal::local, |Extension(principal)| principal)
}

/// `key` of the principal's tenant in this domain.
fn scope_of<S: Store, O: HttpDomain>(
    api: &DomainApi<S, O>,
    principal: &Principal,
    key: Result<Path<String>, PathRejection>,
) -> Result<Scope, Problem> {
    let Path(key) = key.map_err(|_| {
        Problem::bad_request(
            "invalid-idempotency-key",
            "the key in the path is not valid percent-encoded UTF-8",
        )
    })?;
    let key = key_from_path(key)?;
    Ok(Scope::new(
        principal.tenant.clone(),
        api.engine.domain().clone(),
        key,
    ))
}

async fn one<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<OperationView>, Problem> {
    let scope = scope_of(&api, &who(principal), key)?;
    Ok(Json(OperationView::from(&api.engine.get(&scope).await?)))
}

async fn history<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<HistoryView>, Problem> {
    let scope = scope_of(&api, &who(principal), key)?;
    let entries = api.engine.history(&scope).await?;
    Ok(Json(HistoryView::new(scope.key.as_str(), &entries)))
}

async fn retry<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<OperationView>, Problem> {
    act(&api, principal, key, Action::Retry).await
}

async fn cancel<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<OperationView>, Problem> {
    act(&api, principal, key, Action::Cancel).await
}

/// An operator's action on one operation, alone or in bulk.
#[derive(Debug, Clone, Copy)]
enum Action {
    Retry,
    Cancel,
}

impl Action {
    /// Applies it to `scope`, logged as asked by `by`.
    async fn apply<S: Store, O: HttpDomain>(
        self,
        api: &DomainApi<S, O>,
        scope: &Scope,
        by: Option<&str>,
    ) -> Result<oncely::Operation, oncely::Error> {
        match self {
            Self::Retry => api.engine.retry_by(scope, by).await,
            Self::Cancel => api.engine.cancel_by(scope, by).await,
        }
    }
}

async fn act<S: Store, O: HttpDomain>(
    api: &DomainApi<S, O>,
    principal: Option<Extension<Principal>>,
    key: Result<Path<String>, PathRejection>,
    action: Action,
) -> Result<Json<OperationView>, Problem> {
    let principal = who(principal);
    let scope = scope_of(api, &principal, key)?;
    let operation = action
        .apply(api, &scope, principal.key_id.as_deref())
        .await?;
    Ok(Json(OperationView::from(&operation)))
}

/// `GET /v1/{resource}` parameters, and the selection of a bulk action; anything else is
/// refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    attempts_min: Option<String>,
    error_code: Option<String>,
    created_from: Option<String>,
    created_until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl ListQuery {
    /// The filter it asks for, within the principal's tenant.
    fn filter(self, principal: &Principal) -> Result<ListFilter, Problem> {
        let invalid = |detail: String| Problem::bad_request("invalid-query", detail);
        let state = self
            .state
            .map(|state| state.parse::<OperationState>())
            .transpose()
            .map_err(|error| invalid(error.to_string()))?;
        let limit = match self.limit {
            None => LIST_LIMIT_DEFAULT,
            Some(limit) => limit
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=oncely::store::LIST_LIMIT_MAX).contains(limit))
                .ok_or_else(|| {
                    invalid(format!(
                        "limit must be 1 to {}, not {limit:?}",
                        oncely::store::LIST_LIMIT_MAX
                    ))
                })?,
        };
        let attempts_min = self
            .attempts_min
            .map(|n| {
                n.parse::<u32>()
                    .map_err(|_| invalid(format!("attemptsMin must be a whole number, not {n:?}")))
            })
            .transpose()?;
        let time = |name: &str, text: Option<String>| {
            text.map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(|error| {
                        invalid(format!(
                            "{name} must be an RFC 3339 time, not {text:?}: {error}"
                        ))
                    })
            })
            .transpose()
        };
        let error_code = self
            .error_code
            .map(|code| {
                if (1..=128).contains(&code.len()) {
                    Ok(code)
                } else {
                    Err(invalid("errorCode must be 1 to 128 bytes".to_owned()))
                }
            })
            .transpose()?;
        let before = self
            .cursor
            .map(|cursor| {
                cursor
                    .parse::<i64>()
                    .map(OperationId)
                    .map_err(|_| invalid(format!("unknown cursor {cursor:?}")))
            })
            .transpose()?;
        Ok(ListFilter {
            tenant: Some(principal.tenant.clone()),
            domain: None,
            state,
            attempts_min,
            error_code,
            created_from: time("createdFrom", self.created_from)?,
            created_until: time("createdUntil", self.created_until)?,
            before,
            limit,
        })
    }
}

fn list_query(query: Result<Query<ListQuery>, QueryRejection>) -> Result<ListQuery, Problem> {
    let Query(query) =
        query.map_err(|rejection| Problem::bad_request("invalid-query", rejection.body_text()))?;
    Ok(query)
}

async fn list<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<PageView>, Problem> {
    let filter = list_query(query)?.filter(&who(principal))?;
    let page = api.engine.list(filter).await?;
    Ok(Json(PageView::from(&page)))
}

/// One page of a bulk action: the operations of the page that the list with the same
/// query would show are acted on, one by one; `nextCursor` continues with the next page.
async fn bulk<S: Store, O: HttpDomain>(
    api: Arc<DomainApi<S, O>>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
    action: Action,
) -> Result<Json<BulkView>, Problem> {
    let principal = who(principal);
    let filter = list_query(query)?.filter(&principal)?;
    let page = api.engine.list(filter).await?;
    let by = principal.key_id.as_deref();
    let mut view = BulkView {
        matched: page.items.len(),
        done: 0,
        failed: Vec::new(),
        next_cursor: page.next.map(|id| id.0.to_string()),
    };
    for operation in &page.items {
        match action.apply(&api, &operation.scope, by).await {
            Ok(_) => view.done += 1,
            Err(error) => {
                let problem = Problem::from_engine(&error);
                view.failed.push(BulkFailure {
                    key: operation.scope.key.to_string(),
                    kind: problem.kind,
                    detail: problem.detail,
                });
            }
        }
    }
    Ok(Json(view))
}

async fn bulk_retry<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BulkView>, Problem> {
    bulk(api, principal, query, Action::Retry).await
}

async fn bulk_cancel<S: Store, O: HttpDomain>(
    State(api): State<Arc<DomainApi<S, O>>>,
    principal: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BulkView>, Problem> {
    bulk(api, principal, query, Action::Cancel).await
}
