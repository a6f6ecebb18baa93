//! `GET /metrics` on `--metrics-listen`: the engine's and the HTTP layer's counters, which
//! must agree with the store after a run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Logged, oncely, wait_healthy};
use serde_json::json;

/// The value of the series `name{labels}` (labels as written, in order), or 0.
fn value(scrape: &str, name: &str, labels: &str) -> f64 {
    let series = format!("{name}{{{labels}}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_count_what_the_store_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    // Every listener on a port of the system's choosing, read back from the log.
    let mut serve = Logged::spawn(
        oncely()
            .current_dir(dir.path())
            .args(["serve", "--db", &db, "--listen", "127.0.0.1:0"])
            .args([
                "--sim-listen",
                "127.0.0.1:0",
                "--webhook-sim-listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let metrics_url = serve.field("serving Prometheus metrics", "listen");
    let base = serve.field("oncely is serving", "listen");
    wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let pay = |order: u32, amount: &'static str| {
        client
            .post(format!("{base}/v1/payments"))
            .header("Prefer", "wait=10")
            .json(&json!({"orderId": order, "amount": amount, "paymentMethod": "CARD", "customerId": 3}))
            .send()
    };
    for order in 1..=5 {
        assert_eq!(pay(order, "5.00").await.unwrap().status(), 200);
    }
    assert_eq!(pay(1, "5.00").await.unwrap().status(), 200, "a replay");
    assert_eq!(pay(1, "6.00").await.unwrap().status(), 422, "a conflict");

    let scrape = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payment = r#"domain="PAYMENT""#;
    let status = |source: [&str; 2]| {
        let output = oncely()
            .args(["status", "--json"])
            .args(source)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let overview: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        overview
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == "PAYMENT")
            .unwrap()["states"]["COMPLETED"]
            .as_f64()
            .unwrap()
    };
    let stored = status(["--db", db.as_str()]);
    // The same count from the running node (protected mode: this machine, no key).
    assert_eq!(status(["--url", base.as_str()]), stored);
    drop(serve);

    assert_eq!(
        value(&scrape, "oncely_operations_accepted_total", payment),
        5.0,
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "oncely_operations_replayed_total", payment),
        1.0
    );
    assert_eq!(
        value(&scrape, "oncely_operations_conflicts_total", payment),
        1.0
    );
    let completed = r#"domain="PAYMENT",state="COMPLETED""#;
    assert_eq!(
        value(&scrape, "oncely_operations_terminal_total", completed),
        stored
    );
    assert_eq!(stored, 5.0);
    let ok = r#"domain="PAYMENT",result="ok""#;
    assert_eq!(value(&scrape, "oncely_attempts_total", ok), 5.0);
    assert_eq!(
        value(&scrape, "oncely_call_duration_seconds_count", ok),
        5.0
    );
    let created = r#"route="/v1/payments",method="POST",status="200""#;
    assert_eq!(
        value(&scrape, "oncely_http_requests_total", created),
        6.0,
        "{scrape}"
    );
    let refused = r#"route="/v1/payments",method="POST",status="422""#;
    assert_eq!(value(&scrape, "oncely_http_requests_total", refused), 1.0);
    // The store's side: every submission went through an accept batch (the replay and
    // the conflict too), every attempt's outcome through a settle, each timed.
    let step = |step: &str| format!(r#"domain="PAYMENT",step="{step}""#);
    assert_eq!(
        value(&scrape, "oncely_batch_size_sum", &step("accept")),
        7.0,
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "oncely_batch_size_sum", &step("settle")),
        5.0
    );
    for name in ["accept", "settle", "claim"] {
        let timed = value(&scrape, "oncely_store_seconds_count", &step(name));
        assert!(timed >= 1.0, "{name}: {timed}\n{scrape}");
    }
}
