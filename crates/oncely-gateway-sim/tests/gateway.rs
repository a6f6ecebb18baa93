//! The simulator as a client sees it: idempotency, conflicts, a durable ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use oncely_gateway_sim::{GatewaySim, Ledger, SimConfig};
use serde_json::json;

fn body(amount: &str) -> serde_json::Value {
    json!({"amount": amount, "currency": "USD", "orderId": 1, "customerId": 2, "paymentMethod": "CARD"})
}

#[tokio::test]
async fn one_charge_per_key_and_a_reused_key_with_another_body_is_422() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let sim = GatewaySim::open(&url, SimConfig::default()).await.unwrap();
    let running = sim.clone().spawn("127.0.0.1:0").await.unwrap();
    let client = reqwest::Client::new();
    let charges = format!("{}/v1/charges", running.url());

    let first = client
        .post(&charges)
        .header("Idempotency-Key", "k1")
        .json(&body("10.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.unwrap();
    let again = client
        .post(&charges)
        .header("Idempotency-Key", "k1")
        .json(&body("10.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first, again, "the same charge");
    let conflict = client
        .post(&charges)
        .header("Idempotency-Key", "k1")
        .json(&body("11.00"))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 422);
    let missing = client.post(&charges).json(&body("1")).send().await.unwrap();
    assert_eq!(missing.status(), 400);

    running.stop();
    drop(sim);
    // The ledger survives a restart.
    let reopened = GatewaySim::open(&url, SimConfig::default()).await.unwrap();
    let running = reopened.spawn("127.0.0.1:0").await.unwrap();
    let ledger: Ledger = client
        .get(format!("{}/v1/ledger", running.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].idempotency_key, "k1");
    assert_eq!(ledger.charges[0].amount.to_string(), "10.00");
    assert_eq!(ledger.charges[0].transaction_id, first["transactionId"]);
    assert_eq!(first["transactionId"], "txn_00000001");
    // Numbering goes on where it stopped: no transaction id is handed out twice.
    let next: serde_json::Value = client
        .post(format!("{}/v1/charges", running.url()))
        .header("Idempotency-Key", "k2")
        .json(&body("1.00"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["transactionId"], "txn_00000002");
}

#[tokio::test]
async fn faults_are_reproducible_with_a_seed() {
    let config = SimConfig {
        seed: 42,
        error_rate: 0.3,
        rate_limit_rate: 0.2,
        decline_rate: 0.2,
        ..SimConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sim = GatewaySim::open("sqlite::memory:", config.clone())
            .await
            .unwrap();
        let running = sim.spawn("127.0.0.1:0").await.unwrap();
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for i in 0..40 {
            let response = client
                .post(format!("{}/v1/charges", running.url()))
                .header("Idempotency-Key", format!("key-{i}"))
                .json(&body("1"))
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        running.stop();
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    for status in [200, 402, 429, 503] {
        assert!(
            runs[0].contains(&status),
            "{status} never drawn: {:?}",
            runs[0]
        );
    }
}

#[tokio::test]
async fn invalid_fault_rates_are_refused() {
    let config = SimConfig {
        error_rate: 1.5,
        ..SimConfig::default()
    };
    let error = GatewaySim::open("sqlite::memory:", config)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("error rate"), "{error}");
}

#[tokio::test]
async fn the_memory_ledger_charges_once_per_key_like_the_sqlite_one() {
    let sim = GatewaySim::in_memory(SimConfig::default()).unwrap();
    let running = sim.clone().spawn("127.0.0.1:0").await.unwrap();
    let client = reqwest::Client::new();
    let charges = format!("{}/v1/charges", running.url());
    let send = |key: &'static str, amount: &'static str| {
        client
            .post(&charges)
            .header("Idempotency-Key", key)
            .json(&body(amount))
            .send()
    };
    let first: serde_json::Value = send("m1", "5.00").await.unwrap().json().await.unwrap();
    let replay = send("m1", "5.00").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(first, replay);
    assert_eq!(send("m1", "6.00").await.unwrap().status(), 422);
    let second: serde_json::Value = send("m2", "1.00").await.unwrap().json().await.unwrap();
    assert_eq!(second["transactionId"], "txn_00000002");
    let ledger = sim.charges().await.unwrap();
    let keys: Vec<_> = ledger.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["m1", "m2"]);
    running.stop();
}
