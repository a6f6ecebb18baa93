//! The `{{module}}` domain: one call to an HTTP API per operation, effectively once.
//! Serve it with `oncely_http::Service::builder().domain(engine)`: `POST /v1/{{resource}}`.

use std::time::Duration;

use oncely::{Attempt, Orchestrator, Outcome, RetryPolicy};
use oncely_http::HttpDomain;
use oncely_reqwest::ApiClient;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a client sends. Its JSON Schema (in `/openapi.json`) is derived from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct {{Type}}Request {
    /// Who or what it is for. Replace these fields with your API's.
    #[schemars(length(min = 1, max = 200))]
    pub target: String,
    /// What to send.
    pub data: Map<String, Value>,
}

/// A checked request: stored as its request and read back through the same checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "{{Type}}Request", into = "{{Type}}Request")]
pub struct {{Type}}({{Type}}Request);

impl TryFrom<{{Type}}Request> for {{Type}} {
    type Error = String;

    fn try_from(request: {{Type}}Request) -> Result<Self, String> {
        let length = request.target.trim().chars().count();
        if !(1..=200).contains(&length) {
            return Err("target must be 1 to 200 characters".into());
        }
        Ok(Self(request))
    }
}

impl From<{{Type}}> for {{Type}}Request {
    fn from(command: {{Type}}) -> Self {
        command.0
    }
}

/// Calls `POST {base_url}/v1/{{resource}}` once per operation, with its key.
#[derive(Debug, Clone)]
pub struct {{Type}}Orchestrator {
    /// The client: forwards the key, turns answers into outcomes.
    pub client: ApiClient,
    /// The API's base URL.
    pub base_url: String,
}

/// What the API answers.
#[derive(Deserialize)]
struct Answer {
    id: String,
}

impl Orchestrator for {{Type}}Orchestrator {
    type Command = {{Type}};
    const DOMAIN: &'static str = "{{DOMAIN}}";
    const EVENT_TYPE: &'static str = "{{DOMAIN}}_REQUESTED";

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)).attempts(8)
    }

    async fn execute(&self, command: {{Type}}, attempt: Attempt) -> Outcome {
        let url = format!("{}/v1/{{resource}}", self.base_url);
        let request = self.client.post(&url).json(&command.0);
        match self.client.call::<Answer>(request, &attempt).await {
            Ok(answer) => Outcome::ok().with_data("id", answer.id),
            Err(outcome) => outcome,
        }
    }
}

impl HttpDomain for {{Type}}Orchestrator {
    const RESOURCE: &'static str = "{{resource}}";
    type Request = {{Type}}Request;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use axum::routing::post;
    use oncely::{Engine, IdempotencyKey, OperationState};
    use oncely_reqwest::Timeouts;
    use oncely_sqlx::SqliteStore;
    use serde_json::json;

    use super::*;

    /// A stub of the API that records the key of every call.
    async fn stub() -> (String, Arc<Mutex<Vec<String>>>) {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = keys.clone();
        let app = axum::Router::new().route(
            "/v1/{{resource}}",
            post(move |headers: HeaderMap| async move {
                let key = headers["idempotency-key"].to_str().unwrap_or_default().to_owned();
                seen.lock().unwrap().push(key);
                axum::Json(json!({ "id": "stub-1" }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, keys)
    }

    fn command(target: &str) -> Result<{{Type}}, String> {
        let data = Map::from_iter([("hello".to_owned(), json!("world"))]);
        {{Type}}::try_from({{Type}}Request { target: target.into(), data })
    }

    #[tokio::test]
    async fn a_request_calls_the_api_once_with_its_key() {
        let (base_url, keys) = stub().await;
        let client = ApiClient::new(Timeouts::default()).unwrap();
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let engine = Engine::builder(store, {{Type}}Orchestrator { client, base_url })
            .start()
            .unwrap();
        let key = IdempotencyKey::new("first").unwrap();
        let submitted = engine.submit(key.clone(), command("ada").unwrap()).await.unwrap();
        let done = engine
            .wait(&submitted.operation.scope, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(done.state, OperationState::Completed);
        assert_eq!(done.outcome_data.unwrap()["id"], "stub-1");
        let again = engine.submit(key, command("ada").unwrap()).await.unwrap();
        assert!(again.replayed, "the same key and request is a replay, not a call");
        assert_eq!(*keys.lock().unwrap(), ["first"]);
        engine.shutdown(Duration::from_secs(5)).await;
    }

    #[test]
    fn a_bad_request_is_refused_with_a_reason() {
        assert!(command("ada").is_ok());
        assert_eq!(command(" ").unwrap_err(), "target must be 1 to 200 characters");
    }
}
