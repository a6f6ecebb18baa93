//! `serve` and `audit` as processes: signals and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Logged, free_port, oncely, wait_healthy};

use std::process::{Command, Stdio};

use serde_json::json;

#[tokio::test]
async fn serve_with_no_flags_hosts_payments_and_notifications_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (port, sim_port, hooks_port) = (free_port(), free_port(), free_port());
    let child = oncely()
        .current_dir(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--sim-listen", &format!("127.0.0.1:{sim_port}")])
        .args(["--webhook-sim-listen", &format!("127.0.0.1:{hooks_port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let hooks = format!("http://127.0.0.1:{hooks_port}");
    wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let paid = client
        .post(format!("{base}/v1/payments"))
        .header("Prefer", "wait=10")
        .json(&json!({"orderId": 1, "amount": "5.00", "paymentMethod": "CARD", "customerId": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let ledger: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{sim_port}/v1/ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger["charges"][0]["idempotencyKey"], "PAY-2-1-CARD");

    // A notification to the built-in receiver is delivered; anywhere else is refused
    // without a --webhook-secret.
    let notify = |key: &'static str, url: String| {
        client
            .post(format!("{base}/v1/notifications"))
            .header("Idempotency-Key", key)
            .header("Prefer", "wait=10")
            .json(&json!({"url": url, "eventType": "order.shipped", "payload": {"order": 1}}))
            .send()
    };
    let sent = notify("ship-1", format!("{hooks}/v1/webhooks"))
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let refused = notify("ship-2", "https://example.com/hook".into())
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    // The payment's event went to the built-in receiver too, in the payment's wake.
    let mut deliveries = serde_json::Value::Null;
    for _ in 0..100 {
        deliveries = reqwest::get(format!("{hooks}/v1/deliveries"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if deliveries["deliveries"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut ids: Vec<&str> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["webhookId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["PAY-2-1-CARD:completed", "ship-1"], "{deliveries}");
    assert_eq!(deliveries["rejections"], json!([]), "signatures verified");
    let document: serde_json::Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in ["/v1/payments", "/v1/notifications"] {
        assert!(document["paths"][path]["post"].is_object(), "{path}");
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.matches("SIMULATION").count() >= 2,
        "both simulations are announced: {log}"
    );
    assert!(
        !log.contains("whsec_"),
        "the generated secret is never logged: {log}"
    );
    assert!(log.contains("engine stopped"), "{log}");
    for file in ["oncely.db", "oncely-gateway.db", "oncely-webhooks.db"] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
}

#[tokio::test]
async fn audit_exits_1_on_a_charge_no_payment_explains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut gateway = oncely()
        .current_dir(dir.path())
        .args(["gateway-sim", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let charged = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .header("Idempotency-Key", "stray")
        .json(&json!({"amount": "9.99", "currency": "USD", "orderId": 1, "customerId": 1, "paymentMethod": "CARD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(charged.status(), 200);

    let db = format!("sqlite://{}", dir.path().join("empty.db").display());
    let output = oncely()
        .args(["audit", "--db", &db, "--gateway", &base])
        .output()
        .unwrap();
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(table.contains("discrepancies  1"), "{table}");
    assert!(
        table.contains("ChargeWithoutOperation") && table.contains("stray"),
        "{table}"
    );

    let unreachable = oncely()
        .args(["audit", "--db", &db, "--gateway", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(2),
        "an audit that cannot run is not a clean one"
    );
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("reading the ledger"));
}

#[tokio::test]
async fn audit_exits_3_and_status_shows_the_retry_while_payments_are_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Every process binds a port of the system's choosing and says which in its log.
    // A gateway that answers every charge 503: the payment waits for its next attempt.
    let mut gateway = Logged::spawn(oncely().current_dir(dir.path()).args([
        "gateway-sim",
        "--listen",
        "127.0.0.1:0",
        "--error-rate",
        "1",
    ]));
    let gateway_url = gateway.field("simulated payment gateway", "url");
    wait_healthy(&gateway_url).await;
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let mut serve = Logged::spawn(
        oncely()
            .current_dir(dir.path())
            .args(["serve", "--db", &db, "--listen", "127.0.0.1:0"])
            .args(["--gateway-url", &gateway_url, "--backoff-base", "60s"])
            .args(["--webhook-sim-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"]),
    );
    let metrics_url = serve.field("serving Prometheus metrics", "listen");
    let base = serve.field("oncely is serving", "listen");
    wait_healthy(&base).await;
    let paid = reqwest::Client::new()
        .post(format!("{base}/v1/payments"))
        .header("Prefer", "wait=2")
        .json(&json!({"orderId": 7, "amount": "5.00", "paymentMethod": "CARD", "customerId": 2}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = paid.json().await.unwrap();
    // Waiting for its next attempt, which the API shows as ACCEPTED with a retry time.
    assert_eq!(body["state"], "ACCEPTED", "{body}");
    assert_eq!(body["attempts"], 1, "{body}");
    // The backlog gauge counts it as waiting after the engine's next maintenance pass.
    let waiting = r#"oncely_backlog{domain="PAYMENT",state="waiting"} 1"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let scrape = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if scrape.lines().any(|line| line == waiting) {
            assert!(
                scrape.contains(r#"oncely_attempts_total{domain="PAYMENT",result="retry"} 1"#),
                "{scrape}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(body["nextRetryAt"].is_string(), "{body}");
    drop(serve);

    let audit = |allow: bool| {
        let mut command = oncely();
        command.args(["audit", "--db", &db, "--gateway", &gateway_url]);
        if allow {
            command.arg("--allow-in-flight");
        }
        command.output().unwrap()
    };
    let strict = audit(false);
    let table = String::from_utf8_lossy(&strict.stdout);
    assert_eq!(strict.status.code(), Some(3), "{table}");
    assert!(table.contains("non-terminal   1"), "{table}");
    assert!(table.contains("still in flight"), "{table}");
    // `oncely status` sees the same payment waiting for its retry.
    let status = oncely()
        .args(["status", "--db", &db, "--json"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let overview: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let payments = overview
        .as_array()
        .unwrap()
        .iter()
        .find(|domain| domain["domain"] == "PAYMENT")
        .unwrap_or_else(|| panic!("{overview:#}"));
    assert_eq!(payments["states"]["ACCEPTED"], 1, "{overview:#}");
    assert_eq!(payments["retrying"], 1, "{overview:#}");
    assert_eq!(payments["stuck"], 0, "{overview:#}");
    let table = oncely().args(["status", "--db", &db]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("retrying") && table.contains("PAYMENT"),
        "{table}"
    );
    let allowed = audit(true);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    drop(gateway);
}

#[tokio::test]
async fn serve_without_migrating_is_not_ready_until_the_schema_exists() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("later.db").display());
    let (port, sim_port) = (free_port(), free_port());
    let mut child = oncely()
        .args([
            "serve",
            "--no-migrate",
            "--db",
            &db,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--sim-listen", &format!("127.0.0.1:{sim_port}")])
        .args(["--webhook-sim-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "no schema yet");
    let refused = reqwest::get(format!("{base}/v1/payments")).await.unwrap();
    assert_eq!(
        refused.status(),
        503,
        "keys unknown: nothing is served, not even locally"
    );
    let migrated = oncely().args(["migrate", "--db", &db]).output().unwrap();
    assert!(migrated.status.success());
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ready.status(), 200, "ready once `oncely migrate` ran");
}
