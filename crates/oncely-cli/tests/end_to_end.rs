//! Black box: `oncely gateway-sim` and `oncely serve` as real processes, payments with
//! duplicates and conflicting bodies, faults on, the service SIGKILLed and restarted
//! mid-run, then `oncely audit`: zero discrepancies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PAYMENTS: usize = 640;
const KILLS: usize = 6;
const SENDERS: usize = 8;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn oncely() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oncely"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ONCELY_") {
            command.env_remove(name);
        }
    }
    command
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    Stdio::from(file)
}

struct Service {
    dir: PathBuf,
    port: u16,
    gateway: String,
    child: Option<Child>,
}

impl Service {
    fn start(&mut self) {
        let child = oncely()
            .args(["serve", "--db"])
            .arg(format!("sqlite://{}", self.dir.join("oncely.db").display()))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--gateway-url", &self.gateway])
            .args(["--lease-ttl", "3s", "--gateway-timeout", "1s"])
            .args(["--backoff-base", "50ms", "--backoff-max", "500ms"])
            .args([
                "--attempts-max",
                "30",
                "--poll-interval",
                "50ms",
                "--workers",
                "16",
            ])
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "serve.log"))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL: no shutdown, no flush, no goodbye
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{base} never became healthy");
}

#[derive(Clone)]
struct Planned {
    key: String,
    body: Value,
    conflicting: bool,
}

fn body(order: usize, cents: usize) -> Value {
    json!({
        "orderId": order + 1,
        "customerId": 1 + order % 13,
        "amount": format!("{}.{:02}", 1 + order % 97, cents % 100),
        "paymentMethod": "CARD",
    })
}

/// 20 % of requests repeat an earlier key with the same body; then some reuse a key with
/// another body, once the original is surely accepted.
fn plan() -> (Vec<Planned>, Vec<Planned>) {
    let mut first: Vec<Planned> = Vec::new();
    for i in 0..PAYMENTS {
        if i % 5 == 4 {
            let original = first[i / 2].clone();
            first.push(original);
        } else {
            first.push(Planned {
                key: format!("e2e-{i:04}"),
                body: body(i, i),
                conflicting: false,
            });
        }
    }
    let conflicts = (0..PAYMENTS)
        .step_by(40)
        .map(|i| Planned {
            key: format!("e2e-{i:04}"),
            body: body(i, i + 1),
            conflicting: true,
        })
        .collect();
    (first, conflicts)
}

/// Sends one request until the service answers; a killed service is retried, as a real
/// client retries with the same key.
async fn send(client: &reqwest::Client, base: &str, planned: &Planned) -> u16 {
    for _ in 0..2_000 {
        let sent = client
            .post(format!("{base}/v1/payments"))
            .header("Idempotency-Key", &planned.key)
            .json(&planned.body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().as_u16() != 503 => return response.status().as_u16(),
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    panic!("{} never answered", planned.key);
}

async fn send_all(
    client: reqwest::Client,
    base: String,
    requests: Vec<Planned>,
    progress: Arc<AtomicUsize>,
) -> Vec<(Planned, u16)> {
    let queue = Arc::new(Mutex::new(requests.into_iter().rev().collect::<Vec<_>>()));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, base, queue, progress) = (
            client.clone(),
            base.clone(),
            queue.clone(),
            progress.clone(),
        );
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(planned) = next else { return answers };
                let status = send(&client, &base, &planned).await;
                progress.fetch_add(1, Ordering::SeqCst);
                answers.push((planned, status));
            }
        }));
    }
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.unwrap());
    }
    answers
}

async fn count(client: &reqwest::Client, base: &str, state: &str) -> Option<usize> {
    let response = client
        .get(format!("{base}/v1/payments?state={state}&limit=1000"))
        .send()
        .await
        .ok()?;
    let page: Value = response.json().await.ok()?;
    Some(page["items"].as_array()?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_repeated_sigkill_and_the_audit_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let gateway_port = free_port();
    let gateway_url = format!("http://127.0.0.1:{gateway_port}");
    let _gateway = Gateway(
        oncely()
            .args([
                "gateway-sim",
                "--listen",
                &format!("127.0.0.1:{gateway_port}"),
            ])
            .arg("--ledger")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("ledger.db").display()
            ))
            .args([
                "--seed",
                "2026",
                "--latency-min",
                "1ms",
                "--latency-max",
                "15ms",
            ])
            .args([
                "--error-rate",
                "0.05",
                "--rate-limit-rate",
                "0.05",
                "--decline-rate",
                "0.05",
            ])
            .args([
                "--timeout-rate",
                "0.02",
                "--hang",
                "2s",
                "--lost-answer-rate",
                "0.05",
            ])
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), "gateway.log"))
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_healthy(&client, &gateway_url).await;
    let mut service = Service {
        dir: dir.path().to_owned(),
        port: free_port(),
        gateway: gateway_url.clone(),
        child: None,
    };
    service.start();
    let base = service.url();
    wait_healthy(&client, &base).await;

    // Kill the service each time another sixth of the requests has been answered.
    let (first, conflicts) = plan();
    let progress = Arc::new(AtomicUsize::new(0));
    let sending = tokio::spawn(send_all(
        client.clone(),
        base.clone(),
        first.clone(),
        progress.clone(),
    ));
    let mut kills = 0;
    while kills < KILLS {
        let threshold = (kills + 1) * first.len() / (KILLS + 1);
        while progress.load(Ordering::SeqCst) < threshold && !sending.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        service.kill();
        kills += 1;
        service.start();
        wait_healthy(&client, &base).await;
    }
    let mut answers = sending.await.unwrap();
    answers.extend(
        send_all(
            client.clone(),
            base.clone(),
            conflicts,
            Arc::new(AtomicUsize::new(0)),
        )
        .await,
    );

    for (planned, status) in &answers {
        let expected: &[u16] = if planned.conflicting {
            &[422]
        } else {
            &[200, 202]
        };
        assert!(
            expected.contains(status),
            "{} (conflicting: {}) answered {status}",
            planned.key,
            planned.conflicting
        );
    }
    let keys: HashMap<_, _> = first.iter().map(|p| (p.key.clone(), ())).collect();
    assert!(
        keys.len() >= 500,
        "at least 500 distinct payments, not {}",
        keys.len()
    );

    // Every payment ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let accepted = count(&client, &base, "ACCEPTED").await;
        let processing = count(&client, &base, "PROCESSING").await;
        if accepted == Some(0) && processing == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in flight: {accepted:?} accepted, {processing:?} processing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    service.kill();

    let audit = oncely()
        .args(["audit", "--json", "--gateway", &gateway_url, "--db"])
        .arg(format!(
            "sqlite://{}",
            dir.path().join("oncely.db").display()
        ))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap_or_else(|_| {
        panic!(
            "audit printed no JSON: {}",
            String::from_utf8_lossy(&audit.stderr)
        )
    });
    eprintln!(
        "audit after {kills} kills, {} requests, {:?}: {report}",
        answers.len(),
        started.elapsed()
    );
    assert!(
        audit.status.success(),
        "audit found discrepancies: {report:#}"
    );
    assert_eq!(report["discrepancies"], json!([]));
    assert_eq!(report["nonTerminal"], json!([]));
    let completed = report["operations"]["COMPLETED"].as_u64().unwrap_or(0);
    let failed = report["operations"]["FAILED"].as_u64().unwrap_or(0);
    assert_eq!(
        completed + failed,
        keys.len() as u64,
        "one operation per key: {report}"
    );
    assert_eq!(
        report["charges"].as_u64(),
        Some(completed),
        "one charge per completed payment"
    );
    assert!(
        completed > failed,
        "the faults left most payments completable: {report}"
    );
}
