//! `/openapi.json`: an OpenAPI 3.1 document built from [`ROUTES`], the same table the
//! router is built from, so a route cannot be served without being documented.

use serde_json::{Value, json};

use crate::ApiConfig;

/// One documented route. `{resource}` in the path is the configured resource name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDoc {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path template.
    pub path: &'static str,
    /// The handler it is served by; also the OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Status codes it answers with, and what they mean.
    pub responses: &'static [(u16, &'static str)],
}

/// Every route of a domain's API.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "post",
        path: "/v1/{resource}",
        operation_id: "create",
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
                "malformed JSON, a bad key, a bad Prefer, or a missing key where one is required",
            ),
            (413, "body over 64 KiB"),
            (415, "not application/json"),
            (
                422,
                "unknown or missing fields, invalid values, or the key reused with another body",
            ),
            (
                503,
                "the store is unavailable or the service is stopping; retrying with the same key is safe",
            ),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}",
        operation_id: "list",
        summary: "List operations, newest first: ?state=&limit=(1..1000, 50)&cursor=",
        responses: &[(200, "one page"), (400, "a bad state, limit or cursor")],
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}/{key}",
        operation_id: "get",
        summary: "One operation: state, attempts, outcome, error, timestamps",
        responses: &[
            (200, "the operation"),
            (400, "a bad key"),
            (404, "no such operation"),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/{resource}/{key}/history",
        operation_id: "history",
        summary: "The operation's write-ahead log, oldest first",
        responses: &[
            (200, "the log"),
            (400, "a bad key"),
            (404, "no such operation"),
        ],
    },
    RouteDoc {
        method: "post",
        path: "/v1/{resource}/{key}/retry",
        operation_id: "retry",
        summary: "Operator retry of a FAILED or TIMEOUT operation, under the same key",
        responses: &[
            (200, "the operation, ACCEPTED again"),
            (404, "no such operation"),
            (409, "the operation is not FAILED or TIMEOUT"),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/healthz",
        operation_id: "health",
        summary: "The process is up",
        responses: &[(200, "ok")],
    },
    RouteDoc {
        method: "get",
        path: "/readyz",
        operation_id: "ready",
        summary: "The store answers",
        responses: &[(200, "ready"), (503, "the store is unavailable")],
    },
    RouteDoc {
        method: "get",
        path: "/openapi.json",
        operation_id: "openapi",
        summary: "This document",
        responses: &[(200, "OpenAPI 3.1")],
    },
];

fn schema_for(operation_id: &str, status: u16) -> Value {
    if status >= 400 {
        return json!({ "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } });
    }
    let schema = match operation_id {
        "create" | "get" | "retry" => "Operation",
        "list" => "Page",
        "history" => "History",
        _ => return json!({ "text/plain": { "schema": { "type": "string" } } }),
    };
    json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } })
}

/// The document for `config`.
pub fn openapi_document(config: &ApiConfig) -> Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let path = route.path.replace("{resource}", config.resource);
        let responses: serde_json::Map<String, Value> = route
            .responses
            .iter()
            .map(|(status, description)| {
                (
                    status.to_string(),
                    json!({ "description": description, "content": schema_for(route.operation_id, *status) }),
                )
            })
            .collect();
        let mut operation = json!({
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": responses,
        });
        let mut parameters = Vec::new();
        if route.path.contains("{key}") {
            parameters.push(json!({ "name": "key", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 255 } }));
        }
        if route.operation_id == "create" {
            parameters.push(json!({ "name": "Idempotency-Key", "in": "header", "required": config.require_idempotency_key, "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" } }));
            parameters.push(json!({ "name": "Prefer", "in": "header", "required": false, "schema": { "type": "string", "examples": ["wait=10"] } }));
            operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Request" } } } });
        }
        if route.operation_id == "list" {
            parameters.push(json!({ "name": "state", "in": "query", "schema": { "enum": ["ACCEPTED", "PROCESSING", "COMPLETED", "FAILED", "TIMEOUT"] } }));
            parameters.push(json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }));
            parameters
                .push(json!({ "name": "cursor", "in": "query", "schema": { "type": "string" } }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": format!("oncely {}", config.resource), "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": {
            "Request": config.request_schema,
            "Operation": { "type": "object", "required": ["key", "tenant", "domain", "eventType", "state", "attempts", "request", "createdAt", "updatedAt"], "properties": {
                "key": { "type": "string" }, "tenant": { "type": "string" }, "domain": { "type": "string" }, "eventType": { "type": "string" },
                "state": { "enum": ["ACCEPTED", "PROCESSING", "COMPLETED", "FAILED", "TIMEOUT"] },
                "attempts": { "type": "integer" }, "request": { "type": "object" },
                "outcome": { "type": ["object", "null"] },
                "error": { "type": ["object", "null"], "properties": { "code": { "type": ["string", "null"] }, "message": { "type": "string" } } },
                "nextRetryAt": { "type": ["string", "null"], "format": "date-time" },
                "createdAt": { "type": "string", "format": "date-time" },
                "updatedAt": { "type": "string", "format": "date-time" },
                "completedAt": { "type": ["string", "null"], "format": "date-time" }
            } },
            "Page": { "type": "object", "properties": { "items": { "type": "array", "items": { "$ref": "#/components/schemas/Operation" } }, "nextCursor": { "type": ["string", "null"] } } },
            "History": { "type": "object", "properties": { "key": { "type": "string" }, "entries": { "type": "array", "items": { "type": "object" } } } },
            "Problem": { "type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": { "type": "string", "format": "uri" }, "title": { "type": "string" }, "status": { "type": "integer" },
                "detail": { "type": "string" }, "key": { "type": "string" } } }
        } }
    })
}
