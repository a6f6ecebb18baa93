//! Fast recovery: a node killed with payments in flight and restarted under the same
//! `--node-id` resumes them at once, not after the (default, 60 s) lease; two live
//! processes wrongly given one id stay effectively once, and say so.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, oncely, wait_healthy};
use serde_json::json;

/// A child process killed when dropped, also when the test fails.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// SIGKILL, then everything it wrote to stderr.
    fn kill(mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut log = String::new();
        if let Some(stderr) = self.0.stderr.as_mut() {
            stderr.read_to_string(&mut log).unwrap();
        }
        log
    }
}

/// A gateway whose every charge takes `latency`.
async fn slow_gateway(dir: &Path, latency: &str) -> (Process, String) {
    let port = free_port();
    let child = oncely()
        .current_dir(dir)
        .args(["gateway-sim", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--latency-min", latency, "--latency-max", latency])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    (Process(child), url)
}

/// `serve` as node `node` on `db`, with the default lease.
async fn node(dir: &Path, db: &str, gateway: &str, node: &str) -> (Process, String) {
    let port = free_port();
    let child = oncely()
        .current_dir(dir)
        .args([
            "serve",
            "--db",
            db,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--gateway-url", gateway, "--node-id", node])
        .args(["--webhook-sim-listen", "127.0.0.1:0"])
        .args(["--poll-interval", "100ms"])
        .env("ONCELY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    (Process(child), base)
}

async fn submit(base: &str, orders: std::ops::Range<u32>) {
    let client = reqwest::Client::new();
    for order in orders {
        let accepted = client
            .post(format!("{base}/v1/payments"))
            .json(&json!({"orderId": order, "amount": "5.00", "paymentMethod": "CARD", "customerId": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(accepted.status(), 202);
    }
}

async fn states(base: &str, orders: std::ops::Range<u32>) -> Vec<String> {
    let mut states = Vec::new();
    for order in orders {
        let payment: serde_json::Value =
            reqwest::get(format!("{base}/v1/payments/PAY-1-{order}-CARD"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        states.push(payment["state"].as_str().unwrap_or("?").to_owned());
    }
    states
}

/// Waits until every payment of `orders` is COMPLETED; returns how long that took.
async fn all_completed(base: &str, orders: std::ops::Range<u32>, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = states(base, orders.clone()).await;
        if now.iter().all(|state| state == "COMPLETED") {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not all completed within {within:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audit(db: &str, gateway: &str) {
    let output = oncely()
        .args(["audit", "--db", db, "--gateway", gateway])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{table}");
    assert!(table.contains("discrepancies  0"), "{table}");
}

#[tokio::test]
async fn a_node_restarted_after_kill_9_resumes_its_payments_at_once_not_after_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let (_gateway, gateway) = slow_gateway(dir.path(), "3s").await;
    let (first, base) = node(dir.path(), &db, &gateway, "web-1").await;
    submit(&base, 1..7).await;
    // Every call is in flight at the gateway when the node dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        states(&base, 1..7).await.iter().all(|s| s == "PROCESSING"),
        "in flight"
    );
    first.kill();

    let restarted = Instant::now();
    let (second, base) = node(dir.path(), &db, &gateway, "web-1").await;
    // The lease is 60 s; the takeover is at start, and each retry takes one 3 s call.
    let took = all_completed(&base, 1..7, Duration::from_secs(20)).await;
    let total = restarted.elapsed();
    let log = second.kill();
    assert!(log.contains("took over"), "{log}");
    assert!(log.contains("released=6"), "{log}");
    eprintln!(
        "recovery: all 6 completed {took:?} after the restarted node was healthy ({total:?} after its start); calls take 3 s"
    );
    audit(&db, &gateway).await;
}

#[tokio::test]
async fn two_live_processes_given_one_node_id_charge_once_and_the_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    // Calls of 5 s: the second node starts and takes over long before the first's end.
    let (_gateway, gateway) = slow_gateway(dir.path(), "5s").await;
    let (first, base) = node(dir.path(), &db, &gateway, "same").await;
    submit(&base, 1..5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A second process under the same id takes the first one's leases while its calls
    // are still running; the first finishes them and is fenced.
    let (second, other) = node(dir.path(), &db, &gateway, "same").await;
    all_completed(&other, 1..5, Duration::from_secs(20)).await;
    // Let the first process's calls return and be refused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (first_log, second_log) = (first.kill(), second.kill());
    assert!(second_log.contains("took over"), "{second_log}");
    assert!(
        second_log.contains("give each process its own id"),
        "{second_log}"
    );
    assert!(
        first_log.contains("taken over by another worker"),
        "the fenced process logs its refused outcomes: {first_log}"
    );
    audit(&db, &gateway).await;
    drop(base);
}
