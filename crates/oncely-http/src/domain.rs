//! [`HttpDomain`]: what a domain adds to its [`Orchestrator`] to be served over HTTP — a
//! resource name and the request a client sends.

use std::fmt::Display;
use std::future::Future;

use oncely::Orchestrator;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// A domain served under `/v1/{RESOURCE}`.
///
/// The request is the JSON a client sends; its JSON Schema (for `/openapi.json`) is derived
/// from the type, and it becomes the command through the command's `TryFrom`: one place
/// says what a valid request is. Let the command deserialize through the same `TryFrom`
/// (`#[serde(try_from = "Request", into = "Request")]`) and a command read back from the
/// store is checked the same way.
///
/// ```
/// use oncely::{Attempt, Orchestrator, Outcome};
/// use oncely_http::HttpDomain;
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize, JsonSchema)]
/// #[serde(deny_unknown_fields)]
/// struct PingRequest { target: String }
///
/// #[derive(Clone, Serialize, Deserialize)]
/// #[serde(try_from = "PingRequest", into = "PingRequest")]
/// struct Ping { target: String }
///
/// impl TryFrom<PingRequest> for Ping {
///     type Error = String;
///     fn try_from(request: PingRequest) -> Result<Self, String> {
///         if request.target.is_empty() { return Err("target must not be empty".into()) }
///         Ok(Ping { target: request.target })
///     }
/// }
///
/// impl From<Ping> for PingRequest {
///     fn from(ping: Ping) -> Self { PingRequest { target: ping.target } }
/// }
///
/// struct Pinger;
///
/// impl Orchestrator for Pinger {
///     type Command = Ping;
///     const DOMAIN: &'static str = "PING";
///     const EVENT_TYPE: &'static str = "PING_REQUESTED";
///     async fn execute(&self, ping: Ping, _: Attempt) -> Outcome {
///         Outcome::ok().with_data("target", ping.target)
///     }
/// }
///
/// impl HttpDomain for Pinger {
///     const RESOURCE: &'static str = "pings";
///     type Request = PingRequest;
/// }
/// ```
pub trait HttpDomain: Orchestrator {
    /// The plural name in paths: `payments` is served at `/v1/payments`.
    const RESOURCE: &'static str;

    /// Whether a create without `Idempotency-Key` is keyed by the orchestrator's
    /// [`business_key`](oncely::Orchestrator::business_key) (`true`), or refused with `400`
    /// (`false`, the default: the OpenAPI document then marks the header required).
    const BUSINESS_KEY: bool = false;

    /// The largest request body this domain takes, in bytes (64 KiB by default).
    const BODY_LIMIT_BYTES: usize = 64 * 1024;

    /// The JSON body a client sends, turned into the command by its `TryFrom`.
    type Request: DeserializeOwned
        + JsonSchema
        + TryInto<Self::Command, Error: Display>
        + Send
        + 'static;

    /// Adds to the request's published JSON Schema what depends on this instance (which
    /// destinations this deployment allows, say). Bodies are checked against the result.
    fn refine_schema(&self, schema: &mut serde_json::Value) {
        let _ = schema;
    }

    /// Checks the body's text where its JSON value cannot tell (how a number was written,
    /// say), after the schema and before the request is built. An error is a `422`. Nothing
    /// to check by default.
    fn check_body(body: &[u8]) -> Result<(), String> {
        let _ = body;
        Ok(())
    }

    /// Checks an accepted-to-be command further where that takes I/O (a webhook's
    /// destination address must be resolved to be checked). An error is a `422` and
    /// nothing is stored. Nothing to check by default.
    fn admit(&self, command: &Self::Command) -> impl Future<Output = Result<(), String>> + Send {
        let _ = command;
        async { Ok(()) }
    }
}

/// The JSON Schema of a request type, self-contained (no references to resolve), as it is
/// published and as bodies are checked against it. `Option` fields may be absent, not
/// `null`.
pub fn request_schema<T: JsonSchema>() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let serde_json::Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("$defs");
    }
    absent_not_null(&mut schema);
    schema
}

/// Removes `null` from the schemas of optional properties, here and in nested objects: an
/// `Option` field is left out when it has no value, never sent as `null`.
fn absent_not_null(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = schema else { return };
    let required: Vec<String> = map
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for (name, property) in properties.iter_mut() {
            if !required.contains(name) {
                drop_null(property);
                if property.get("default") == Some(&Value::Null) {
                    if let Value::Object(property) = property {
                        property.remove("default");
                    }
                }
            }
            absent_not_null(property);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let Some(inner) = map.get_mut(nested) {
            absent_not_null(inner);
        }
    }
}

/// `{"type": ["string", "null"]}` → `{"type": "string"}`; `anyOf` without its null branch.
fn drop_null(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = schema else { return };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            map.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
        branches.retain(|b| b.get("type").is_none_or(|t| t != "null"));
        if branches.len() == 1 {
            let only = branches.remove(0);
            map.remove("anyOf");
            if let Value::Object(inner) = only {
                for (k, v) in inner {
                    map.entry(k).or_insert(v);
                }
            }
        }
    }
}
