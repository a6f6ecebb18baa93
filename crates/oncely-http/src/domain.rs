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

    /// The largest request body this domain takes, in bytes (64 KiB by default).
    const BODY_LIMIT_BYTES: usize = 64 * 1024;

    /// The JSON body a client sends, turned into the command by its `TryFrom`.
    type Request: DeserializeOwned
        + JsonSchema
        + TryInto<Self::Command, Error: Display>
        + Send
        + 'static;

    /// Checks an accepted-to-be command further where that takes I/O (a webhook's
    /// destination address must be resolved to be checked). An error is a `422` and
    /// nothing is stored. Nothing to check by default.
    fn admit(&self, command: &Self::Command) -> impl Future<Output = Result<(), String>> + Send {
        let _ = command;
        async { Ok(()) }
    }
}
