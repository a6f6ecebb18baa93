//! The webhook receiver as a sender sees it: signatures checked, one record per id,
//! a durable ledger, reproducible faults.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use oncely_gateway_sim::{Deliveries, SimConfig, WebhookSim};
use oncely_reqwest::WebhookSecret;
use serde_json::json;

struct Sender {
    client: reqwest::Client,
    url: String,
    secret: WebhookSecret,
}

impl Sender {
    /// Posts `body` under `id`, signed with `secret` at `timestamp` (now by default).
    async fn send_signed(
        &self,
        secret: &WebhookSecret,
        id: &str,
        body: &str,
        timestamp: Option<i64>,
    ) -> reqwest::Result<reqwest::Response> {
        let timestamp = timestamp.unwrap_or_else(chrono_now);
        let signature = secret.sign(id, timestamp, body.as_bytes()).unwrap();
        self.client
            .post(format!("{}/v1/webhooks", self.url))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
    }

    async fn send(&self, id: &str, body: &str) -> reqwest::Response {
        self.send_signed(&self.secret, id, body, None)
            .await
            .unwrap()
    }

    async fn ledger(&self) -> Deliveries {
        self.client
            .get(format!("{}/v1/deliveries", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn sender(ledger: &str, config: SimConfig, secret: WebhookSecret) -> Sender {
    let sim = WebhookSim::open(ledger, secret.expose(), config)
        .await
        .unwrap();
    let running = sim.spawn("127.0.0.1:0").await.unwrap();
    Sender {
        client: reqwest::Client::new(),
        url: running.url(),
        secret,
    }
}

fn event(amount: &str) -> String {
    json!({ "type": "payment.completed", "data": { "amount": amount } }).to_string()
}

#[tokio::test]
async fn one_record_per_id_repeats_counted_and_forgeries_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}", dir.path().join("webhooks.db").display());
    let secret = WebhookSecret::generate().unwrap();
    let sender = sender(&ledger, SimConfig::default(), secret.clone()).await;

    let first = sender.send("pay-1:completed", &event("10.00")).await;
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    let again: serde_json::Value = sender
        .send("pay-1:completed", &event("10.00"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true);

    let reused = sender.send("pay-1:completed", &event("99.00")).await;
    assert_eq!(reused.status(), 409);
    let forger = WebhookSecret::generate().unwrap();
    let forged = sender
        .send_signed(&forger, "pay-2:completed", &event("1.00"), None)
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let stale = sender
        .send_signed(
            &secret,
            "pay-3:completed",
            &event("1.00"),
            Some(chrono_now() - 600),
        )
        .await
        .unwrap();
    assert_eq!(
        stale.status(),
        401,
        "a timestamp 10 minutes old is a replay"
    );
    let unsigned = sender
        .client
        .post(format!("{}/v1/webhooks", sender.url))
        .body(event("1.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let not_an_event = sender.send("pay-4:completed", r#"{"hello":1}"#).await;
    assert_eq!(not_an_event.status(), 400);

    let ledger_now = sender.ledger().await;
    assert_eq!(ledger_now.deliveries.len(), 1);
    let delivery = &ledger_now.deliveries[0];
    assert_eq!(
        (delivery.webhook_id.as_str(), delivery.received),
        ("pay-1:completed", 2)
    );
    assert_eq!(delivery.event_type, "payment.completed");
    assert_eq!(delivery.data, json!({ "amount": "10.00" }));
    let reasons: Vec<(Option<&str>, &str)> = ledger_now
        .rejections
        .iter()
        .map(|r| (r.webhook_id.as_deref(), r.reason.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("pay-1:completed"), "id reused for another event"),
            (Some("pay-2:completed"), "invalid signature"),
            (Some("pay-3:completed"), "invalid signature"),
            (None, "invalid signature"),
            (Some("pay-4:completed"), "not an event"),
        ]
    );

    // The ledger survives a restart.
    let reopened = self::sender(&ledger, SimConfig::default(), secret).await;
    assert_eq!(reopened.ledger().await, ledger_now);
}

#[tokio::test]
async fn faults_record_nothing_or_lose_the_answer_after_recording() {
    let secret = WebhookSecret::generate().unwrap();
    let failing = SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    };
    let sender_503 = sender("sqlite::memory:", failing, secret.clone()).await;
    assert_eq!(sender_503.send("a", &event("1")).await.status(), 503);
    assert!(sender_503.ledger().await.deliveries.is_empty());

    let declining = SimConfig {
        decline_rate: 1.0,
        ..SimConfig::default()
    };
    let sender_400 = sender("sqlite::memory:", declining, secret.clone()).await;
    assert_eq!(sender_400.send("b", &event("1")).await.status(), 400);
    assert!(sender_400.ledger().await.deliveries.is_empty());

    let losing = SimConfig {
        lost_answer_rate: 1.0,
        ..SimConfig::default()
    };
    let sender_lost = sender("sqlite::memory:", losing, secret).await;
    let answer = sender_lost
        .send_signed(&sender_lost.secret, "c", &event("1"), None)
        .await;
    let answered = match answer {
        Ok(response) => response.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "the answer is cut off");
    let recorded = sender_lost.ledger().await;
    assert_eq!(recorded.deliveries.len(), 1, "but the event was recorded");
}

#[tokio::test]
async fn a_secret_that_is_not_whsec_is_refused() {
    let error = WebhookSim::open("sqlite::memory:", "hunter2", SimConfig::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("whsec_"), "{error}");
}
