//! `serve` and `audit` as processes: signals and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{free_port, oncely, wait_healthy};

use std::process::{Command, Stdio};

use serde_json::json;

#[tokio::test]
async fn sigterm_stops_serve_cleanly_with_the_in_process_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let (port, sim_port) = (free_port(), free_port());
    let child = oncely()
        .current_dir(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--sim-listen", &format!("127.0.0.1:{sim_port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let paid = reqwest::Client::new()
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
        log.contains("SIMULATION"),
        "the simulation is announced: {log}"
    );
    assert!(log.contains("engine stopped"), "{log}");
    assert!(dir.path().join("oncely.db").exists() && dir.path().join("oncely-gateway.db").exists());
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
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "no schema yet");
    let migrated = oncely().args(["migrate", "--db", &db]).output().unwrap();
    assert!(migrated.status.success());
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ready.status(), 200, "ready once `oncely migrate` ran");
}
