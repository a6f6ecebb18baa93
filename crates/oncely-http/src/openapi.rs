//! `/openapi.json`: an OpenAPI 3.1 document built from [`DOMAIN_ROUTES`] and
//! [`SERVICE_ROUTES`], the tables the routers are built from, so a route cannot be served
//! without being documented. Each domain's request schema is derived from its request type.

use oncely::Role;
use serde_json::{Map, Value, json};

/// A route a domain serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    /// `POST /v1/{resource}`.
    Create,
    /// `GET /v1/{resource}`.
    List,
    /// `GET /v1/{resource}/{key}`.
    Get,
    /// `GET /v1/{resource}/{key}/history`.
    History,
    /// `POST /v1/{resource}/{key}/retry`.
    Retry,
    /// `POST /v1/{resource}/{key}/cancel`.
    Cancel,
    /// `POST /v1/bulk/{resource}/retry`.
    BulkRetry,
    /// `POST /v1/bulk/{resource}/cancel`.
    BulkCancel,
}

impl RouteId {
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::List => "list",
            Self::Get => "get",
            Self::History => "history",
            Self::Retry => "retry",
            Self::Cancel => "cancel",
            Self::BulkRetry => "bulk-retry",
            Self::BulkCancel => "bulk-cancel",
        }
    }
}

/// One documented route. `{resource}` in the path is the domain's resource name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDoc<Id> {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path template.
    pub path: &'static str,
    /// The handler it is served by.
    pub id: Id,
    /// One line.
    pub summary: &'static str,
    /// Status codes it answers with, and what they mean.
    pub responses: &'static [(u16, &'static str)],
    /// The role an API key needs for it; `None`: no key needed.
    pub role: Option<Role>,
}

/// Every route of one domain.
pub const DOMAIN_ROUTES: &[RouteDoc<RouteId>] = &[
    RouteDoc {
        method: "post",
        path: "/v1/{resource}",
        id: RouteId::Create,
        summary: "Accept a command under Idempotency-Key (or the business key); Prefer: wait=N waits up to N s (≤ 60) for the end",
        responses: &[
            (
                200,
                "the operation, terminal (after Prefer: wait); Idempotent-Replayed: true on a replay",
            ),
            (
                202,
                "the operation, accepted and not yet terminal; Location names it",
            ),
            (
                400,
                "malformed JSON, an empty, repeated or invalid Idempotency-Key, or a missing one where one is required",
            ),
            (408, "the body did not arrive within the body timeout"),
            (413, "body over the domain's limit"),
            (415, "not application/json"),
            (
                422,
                "not a JSON object, a value the schema refuses, a value the domain refuses, or the key reused with another body",
            ),
        ],
        role: Some(Role::Submit),
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}",
        id: RouteId::List,
        summary: "List the tenant's operations, newest first: ?state=&attemptsMin=&errorCode=&createdFrom=&createdUntil=&limit=(1..1000, 50)&cursor=",
        responses: &[
            (200, "one page"),
            (400, "a bad state, limit or cursor, or an unknown parameter"),
        ],
        role: Some(Role::Read),
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}/{key}",
        id: RouteId::Get,
        summary: "One operation: state, attempts, outcome, error, timestamps",
        responses: &[
            (200, "the operation"),
            (400, "a bad key"),
            (404, "no such operation"),
        ],
        role: Some(Role::Read),
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}/{key}/history",
        id: RouteId::History,
        summary: "The operation's write-ahead log, oldest first",
        responses: &[
            (200, "the log"),
            (400, "a bad key"),
            (404, "no such operation"),
        ],
        role: Some(Role::Read),
    },
    RouteDoc {
        method: "post",
        path: "/v1/{resource}/{key}/retry",
        id: RouteId::Retry,
        summary: "Operator retry of a FAILED or TIMEOUT operation, under the same key",
        responses: &[
            (200, "the operation, ACCEPTED again"),
            (400, "a bad key"),
            (404, "no such operation"),
            (409, "the operation is not FAILED or TIMEOUT"),
        ],
        role: Some(Role::Operate),
    },
    RouteDoc {
        method: "post",
        path: "/v1/{resource}/{key}/cancel",
        id: RouteId::Cancel,
        summary: "Operator cancel: an operation no attempt is running is CANCELLED at once; a running one gets cancelRequestedAt and ends CANCELLED unless that attempt succeeds",
        responses: &[
            (
                200,
                "the operation: CANCELLED, or still running with cancelRequestedAt set",
            ),
            (400, "a bad key"),
            (404, "no such operation"),
            (409, "the operation is COMPLETED, FAILED or TIMEOUT"),
        ],
        role: Some(Role::Operate),
    },
    RouteDoc {
        method: "post",
        path: "/v1/bulk/{resource}/retry",
        id: RouteId::BulkRetry,
        summary: "Operator retry of every operation on one page of the list with the same query (state, attemptsMin, errorCode, createdFrom, createdUntil, limit, cursor); nextCursor continues",
        responses: &[
            (
                200,
                "how many matched, how many were retried, which were not and why, and the next cursor",
            ),
            (
                400,
                "a bad state, number, time, limit or cursor, or an unknown parameter",
            ),
        ],
        role: Some(Role::Operate),
    },
    RouteDoc {
        method: "post",
        path: "/v1/bulk/{resource}/cancel",
        id: RouteId::BulkCancel,
        summary: "Operator cancel of every operation on one page of the list with the same query; nextCursor continues",
        responses: &[
            (
                200,
                "how many matched, how many were cancelled (or their cancel requested), which were not and why, and the next cursor",
            ),
            (
                400,
                "a bad state, number, time, limit or cursor, or an unknown parameter",
            ),
        ],
        role: Some(Role::Operate),
    },
];

/// A route the service serves once, whatever its domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRouteId {
    /// `GET /healthz`.
    Health,
    /// `GET /readyz`.
    Ready,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /v1/overview`.
    Overview,
}

/// Every route of the service itself.
pub const SERVICE_ROUTES: &[RouteDoc<ServiceRouteId>] = &[
    RouteDoc {
        method: "get",
        path: "/healthz",
        id: ServiceRouteId::Health,
        summary: "The process is up",
        responses: &[(200, "ok")],
        role: None,
    },
    RouteDoc {
        method: "get",
        path: "/readyz",
        id: ServiceRouteId::Ready,
        summary: "Every domain's store answers",
        responses: &[(200, "ready"), (503, "a store is unavailable")],
        role: None,
    },
    RouteDoc {
        method: "get",
        path: "/openapi.json",
        id: ServiceRouteId::OpenApi,
        summary: "This document",
        responses: &[(200, "OpenAPI 3.1")],
        role: None,
    },
    RouteDoc {
        method: "get",
        path: "/v1/overview",
        id: ServiceRouteId::Overview,
        summary: "How every domain stands for the key's tenant: operations by state, retrying, stuck past their lease, the oldest due, and what ended and what the Reaper rescued in the last ?windowMinutes=(1..1440, 15)",
        responses: &[
            (200, "one entry per domain"),
            (400, "a bad windowMinutes, or an unknown parameter"),
        ],
        role: Some(Role::Read),
    },
];

/// What the document needs of one mounted domain.
#[derive(Debug, Clone)]
pub struct DocumentedDomain {
    /// Its resource name.
    pub resource: &'static str,
    /// Its request's JSON Schema.
    pub request_schema: Value,
    /// Whether a create must carry `Idempotency-Key`.
    pub key_required: bool,
}

fn content(schema: &str) -> Value {
    json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } })
}

/// What every route that needs a key can answer besides its own statuses.
const GUARDED_RESPONSES: &[(u16, &str)] = &[
    (
        401,
        "no API key, or one that is unknown, expired or revoked (WWW-Authenticate says which)",
    ),
    (
        403,
        "the key lacks the role, or (protected mode) the client is not on this machine",
    ),
    (
        429,
        "over the key's rate limit; Retry-After and RateLimit say when to come back",
    ),
    (
        503,
        "the store is unavailable or the service is stopping; retrying with the same key is safe",
    ),
];

fn responses(route_responses: &[(u16, &str)], success: impl Fn(u16) -> Value) -> Value {
    let responses: Map<String, Value> = route_responses
        .iter()
        .map(|(status, description)| {
            let body = if *status >= 400 {
                json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } })
            } else {
                success(*status)
            };
            (
                status.to_string(),
                json!({ "description": description, "content": body }),
            )
        })
        .collect();
    Value::Object(responses)
}

/// Sets `operation`'s responses and, for a route that needs a key, its security, its
/// description and the answers every such route can give.
fn guarded<Id>(operation: &mut Value, route: &RouteDoc<Id>, success: impl Fn(u16) -> Value) {
    let mut documented: Vec<(u16, &str)> = route.responses.to_vec();
    if let Some(role) = route.role {
        for extra in GUARDED_RESPONSES {
            if !documented.iter().any(|(status, _)| *status == extra.0) {
                documented.push(*extra);
            }
        }
        documented.sort_by_key(|(status, _)| *status);
        operation["security"] = json!([{ "apiKey": [] }]);
        operation["description"] = json!(format!("Needs an API key with the `{role}` role."));
    }
    operation["responses"] = responses(&documented, success);
}

/// The schema name of a domain's request (`payments` → `PaymentsRequest`).
fn request_name(resource: &str) -> String {
    let mut name: String = resource
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    name.push_str("Request");
    name
}

fn domain_paths(domain: &DocumentedDomain, paths: &mut Map<String, Value>) {
    for route in DOMAIN_ROUTES {
        let path = route.path.replace("{resource}", domain.resource);
        let success = |_status| match route.id {
            RouteId::Create | RouteId::Get | RouteId::Retry | RouteId::Cancel => {
                content("Operation")
            }
            RouteId::List => content("Page"),
            RouteId::BulkRetry | RouteId::BulkCancel => content("Bulk"),
            RouteId::History => content("History"),
        };
        let mut operation = json!({
            "operationId": format!("{}-{}", domain.resource, route.id.name()),
            "tags": [domain.resource],
            "summary": route.summary,
        });
        guarded(&mut operation, route, success);
        let mut parameters = Vec::new();
        if route.path.contains("{key}") {
            parameters.push(json!({ "name": "key", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" } }));
        }
        if route.id == RouteId::Create {
            parameters.push(json!({ "name": "Idempotency-Key", "in": "header", "required": domain.key_required, "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" } }));
            parameters.push(json!({ "name": "Prefer", "in": "header", "required": false, "schema": { "type": "string", "examples": ["wait=2"] } }));
            parameters.push(json!({ "name": "traceparent", "in": "header", "required": false, "description": "a W3C trace context: stored with the operation, every span of its life joins that trace, and its external calls carry it onward; one that does not parse is ignored", "schema": { "type": "string", "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] } }));
            operation["requestBody"] =
                json!({ "required": true, "content": content(&request_name(domain.resource)) });
        }
        if matches!(
            route.id,
            RouteId::List | RouteId::BulkRetry | RouteId::BulkCancel
        ) {
            parameters.push(
                json!({ "name": "state", "in": "query", "schema": { "enum": state_names() } }),
            );
            parameters.push(json!({ "name": "attemptsMin", "in": "query", "schema": { "type": "string", "pattern": "^[0-9]{1,9}$" } }));
            parameters.push(json!({ "name": "errorCode", "in": "query", "schema": { "type": "string", "minLength": 1, "maxLength": 128 } }));
            parameters.push(json!({ "name": "createdFrom", "in": "query", "schema": { "type": "string", "format": "date-time" } }));
            parameters.push(json!({ "name": "createdUntil", "in": "query", "schema": { "type": "string", "format": "date-time" } }));
            parameters.push(json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }));
            parameters
                .push(json!({ "name": "cursor", "in": "query", "schema": { "type": "string", "pattern": "^[0-9]{1,18}$" } }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
}

/// The document of a service with `domains`.
pub fn openapi_document(title: &str, domains: &[DocumentedDomain]) -> Value {
    let mut paths = Map::new();
    let mut schemas = shared_schemas();
    for domain in domains {
        domain_paths(domain, &mut paths);
        schemas.insert(request_name(domain.resource), domain.request_schema.clone());
    }
    for route in SERVICE_ROUTES {
        let success = |_status| match route.id {
            ServiceRouteId::OpenApi => {
                json!({ "application/json": { "schema": { "type": "object" } } })
            }
            ServiceRouteId::Health | ServiceRouteId::Ready => {
                json!({ "text/plain": { "schema": { "type": "string" } } })
            }
            ServiceRouteId::Overview => content("Overview"),
        };
        let mut operation = json!({
            "operationId": route.path.trim_start_matches('/').replace(['.', '/'], "-"),
            "tags": ["service"],
            "summary": route.summary,
        });
        guarded(&mut operation, route, success);
        if route.id == ServiceRouteId::Overview {
            operation["parameters"] = json!([{ "name": "windowMinutes", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1440 } }]);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An oncely API key, `oncely_<id>_<secret>`, from `oncely keys create`"
                }
            }
        },
    })
}

/// Every state's name, as the API writes them.
fn state_names() -> Vec<&'static str> {
    oncely::OperationState::ALL
        .iter()
        .map(|state| state.as_str())
        .collect()
}

fn shared_schemas() -> Map<String, Value> {
    let schemas = json!({
        "Operation": { "type": "object", "required": ["key", "tenant", "domain", "eventType", "state", "attempts", "request", "createdAt", "updatedAt"], "properties": {
            "key": { "type": "string" }, "tenant": { "type": "string" }, "domain": { "type": "string" }, "eventType": { "type": "string" },
            "state": { "enum": state_names() },
            "attempts": { "type": "integer" }, "request": { "type": "object" },
            "outcome": { "type": ["object", "null"] },
            "error": { "type": ["object", "null"], "properties": { "code": { "type": ["string", "null"] }, "message": { "type": "string" } } },
            "nextRetryAt": { "type": ["string", "null"], "format": "date-time" },
            "createdAt": { "type": "string", "format": "date-time" },
            "updatedAt": { "type": "string", "format": "date-time" },
            "completedAt": { "type": ["string", "null"], "format": "date-time" },
            "cancelRequestedAt": { "type": ["string", "null"], "format": "date-time" },
            "traceId": { "type": ["string", "null"], "pattern": "^[0-9a-f]{32}$", "description": "the W3C trace every span of the operation's life belongs to" }
        } },
        "Page": { "type": "object", "properties": { "items": { "type": "array", "items": { "$ref": "#/components/schemas/Operation" } }, "nextCursor": { "type": ["string", "null"] } } },
        "Bulk": { "type": "object", "required": ["matched", "done", "failed"], "properties": {
            "matched": { "type": "integer" }, "done": { "type": "integer" },
            "failed": { "type": "array", "items": { "type": "object", "required": ["key", "type", "detail"], "properties": {
                "key": { "type": "string" }, "type": { "type": "string" }, "detail": { "type": "string" } } } },
            "nextCursor": { "type": ["string", "null"] } } },
        "Overview": { "type": "object", "required": ["tenant", "now", "since", "domains"], "properties": {
            "tenant": { "type": "string" },
            "now": { "type": "string", "format": "date-time" },
            "since": { "type": "string", "format": "date-time" },
            "domains": { "type": "array", "items": { "type": "object",
                "required": ["resource", "domain", "states", "retrying", "stuck", "ended", "rescued"], "properties": {
                "resource": { "type": "string" }, "domain": { "type": "string" },
                "states": { "type": "object", "additionalProperties": { "type": "integer" } },
                "retrying": { "type": "integer" }, "stuck": { "type": "integer" },
                "oldestDue": { "type": ["string", "null"], "format": "date-time" },
                "ended": { "type": "integer" }, "rescued": { "type": "integer" } } } } } },
        "History": { "type": "object", "properties": { "key": { "type": "string" }, "entries": { "type": "array", "items": { "type": "object" } } } },
        "Problem": { "type": "object", "required": ["type", "title", "status", "detail"], "properties": {
            "type": { "type": "string", "format": "uri" }, "title": { "type": "string" }, "status": { "type": "integer" },
            "detail": { "type": "string" }, "key": { "type": "string" } } }
    });
    match schemas {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_schemas_are_named_after_their_resource() {
        assert_eq!(request_name("payments"), "PaymentsRequest");
        assert_eq!(request_name("file-uploads"), "FileUploadsRequest");
    }
}
