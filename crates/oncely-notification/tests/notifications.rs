//! Notifications over HTTP, as a client and a receiver see them: `POST /v1/notifications`
//! on a SQLite service, delivered signed to the simulated receiver once per key; refused
//! destinations are a 422 and nothing is stored or sent.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use oncely::{Engine, EngineConfig, RetryPolicy};
use oncely_gateway_sim::{Deliveries, RunningSim, SimConfig, WebhookSim};
use oncely_http::Service;
use oncely_notification::Notifier;
use oncely_reqwest::{Destinations, Timeouts, WebhookClient, WebhookSecret};
use oncely_sqlx::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Setup {
    router: Router,
    receiver: RunningSim,
    sim: std::sync::Arc<WebhookSim>,
    _dir: tempfile::TempDir,
}

/// A service whose notifications may go where `destinations` allow (plus, when
/// `allow_receiver`, the simulated receiver's exact address).
async fn setup(destinations: Destinations, allow_receiver: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("n.db").display());
    let store = SqliteStore::open(&db).await.unwrap();
    let secret = WebhookSecret::generate().unwrap();
    let sim = WebhookSim::open("sqlite::memory:", secret.expose(), SimConfig::default())
        .await
        .unwrap();
    let receiver = sim.clone().spawn("127.0.0.1:0").await.unwrap();
    let destinations = if allow_receiver {
        destinations.also_allowing(&receiver.addr.to_string())
    } else {
        destinations
    };
    let client = WebhookClient::new(secret, destinations, Timeouts::default()).unwrap();
    let engine = Engine::builder(store, Notifier(client))
        .config(EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        })
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .start()
        .unwrap();
    let router = Service::builder().domain(engine).build().unwrap().router();
    Setup {
        router,
        receiver,
        sim,
        _dir: dir,
    }
}

impl Setup {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body.map(|b| Body::from(b.to_string())).unwrap_or_default();
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn notify(&self, key: &str, url: &str) -> (StatusCode, Value) {
        let body = json!({ "url": url, "eventType": "order.shipped", "payload": { "order": 42 } });
        self.send("POST", "/v1/notifications", Some(key), Some(body))
            .await
    }

    async fn stored(&self) -> usize {
        let (_, page) = self.send("GET", "/v1/notifications", None, None).await;
        page["items"].as_array().unwrap().len()
    }

    async fn received(&self) -> Deliveries {
        self.sim.deliveries().await.unwrap()
    }

    fn hook(&self) -> String {
        format!("{}/v1/webhooks", self.receiver.url())
    }
}

#[tokio::test]
async fn a_notification_is_delivered_signed_once_per_key() {
    let setup = setup(Destinations::public(), true).await;
    let hook = setup.hook();
    let (status, created) = setup.notify("ship-42", &hook).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let (status, done) = setup
        .send("GET", "/v1/notifications/ship-42", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut state = done["state"].clone();
    for _ in 0..200 {
        if state == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        state = setup
            .send("GET", "/v1/notifications/ship-42", None, None)
            .await
            .1["state"]
            .clone();
    }
    assert_eq!(state, "COMPLETED");
    // The same request again is a replay, not a second delivery.
    let (status, _) = setup.notify("ship-42", &hook).await;
    assert_eq!(status, StatusCode::OK);
    let received = setup.received().await;
    assert_eq!(received.rejections, [], "the signature verified");
    assert_eq!(received.deliveries.len(), 1);
    let delivery = &received.deliveries[0];
    assert_eq!(
        (
            delivery.webhook_id.as_str(),
            delivery.event_type.as_str(),
            delivery.received
        ),
        ("ship-42", "order.shipped", 1)
    );
    assert_eq!(delivery.data, json!({ "order": 42 }));
}

#[tokio::test]
async fn internal_destinations_are_422_and_nothing_is_stored_or_sent() {
    // The receiver listens on 127.0.0.1 but is not allowed: a public-only service.
    let setup = setup(Destinations::public(), false).await;
    let port = setup.receiver.addr.port();
    let refused = [
        setup.hook(),
        format!("http://[::1]:{port}/v1/webhooks"),
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://localhost:{port}/v1/webhooks"),
        "ftp://example.com/".to_owned(),
    ];
    for (i, url) in refused.iter().enumerate() {
        let (status, problem) = setup.notify(&format!("evil-{i}"), url).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:oncely:problem:"),
            "{problem}"
        );
    }
    assert_eq!(setup.stored().await, 0, "nothing stored");
    let received = setup.received().await;
    assert!(
        received.deliveries.is_empty() && received.rejections.is_empty(),
        "nothing sent"
    );
}

#[tokio::test]
async fn the_request_schema_is_in_the_openapi_document() {
    let setup = setup(Destinations::public(), true).await;
    let (_, document) = setup.send("GET", "/openapi.json", None, None).await;
    let schema = &document["components"]["schemas"]["NotificationsRequest"];
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["url", "eventType", "payload"], "{schema}");
    assert_eq!(schema["additionalProperties"], false);
    assert!(document["paths"]["/v1/notifications"]["post"].is_object());
}
