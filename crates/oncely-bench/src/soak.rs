//! `soak-*`: `oncely serve` as users run it, over HTTP, for a long while: does it hold its
//! speed as its tables age? Each payment is a `POST /v1/payments` with a fresh key and
//! `Prefer: wait=30`, so a request ends when its payment is finished. Throughput, latency
//! and the service's resident memory are reported interval by interval.
//!
//! Closed loop: a fixed number of clients, each sending its next payment when its last
//! one has finished. Open loop: payments sent at a fixed rate whatever happens, latency
//! counted from when each was due to be sent (so a stall is not hidden by fewer sends).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::BenchError;
use crate::gateway::Gateway;
use crate::harness::Plan;
use crate::http::{free_port, wait_healthy};
use crate::limit::count_operations;
use crate::result::{Interval, WorkloadResult};
use crate::scratch::Scratch;
use crate::stats::Latencies;
use crate::workload::{backend, scratch_done};

/// Requests an open loop lets be in flight before it counts new ones as refused.
const IN_FLIGHT_MAX: u64 = 20_000;

/// One soak run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SoakSpec {
    /// Its name in reports: `soak-closed`, `soak-open`.
    pub workload: String,
    /// The database server, or `sqlite`.
    pub db: String,
    /// How long.
    pub seconds: u64,
    /// How long one interval of the timeline is.
    pub interval_seconds: u64,
    /// Closed loop: how many clients.
    pub clients: usize,
    /// Open loop: payments per second; closed loop when absent.
    pub rate: Option<f64>,
    /// `serve --workers`.
    pub workers: usize,
    /// The gateway's latency, in milliseconds.
    pub latency_ms: u64,
    /// The `oncely` binary.
    pub exe: String,
    /// A note for the report (how the database was configured).
    #[serde(default)]
    pub note: Option<String>,
    /// Serve `/metrics` (`--metrics-listen`) and scrape it every this many seconds, as
    /// Prometheus would; absent: no metrics recorder at all.
    #[serde(default)]
    pub scrape_seconds: Option<u64>,
    /// Ask what an open console asks (the overview and a page of the list) every this many
    /// seconds; absent: no console open.
    #[serde(default)]
    pub console_seconds: Option<u64>,
}

impl SoakSpec {
    /// A closed-loop soak of `plan`'s length on `db`.
    pub fn closed(plan: &Plan, db: &str, note: Option<&str>) -> Self {
        Self {
            workload: "soak-closed".to_owned(),
            db: db.to_owned(),
            seconds: plan.soak_seconds,
            interval_seconds: plan.soak_interval_seconds,
            clients: 32,
            rate: None,
            workers: 256,
            latency_ms: 0,
            exe: plan.exe.display().to_string(),
            note: note.map(str::to_owned),
            scrape_seconds: None,
            console_seconds: None,
        }
    }

    /// The system name of the run: what watches the service besides the load.
    fn system(&self) -> &'static str {
        match (
            self.scrape_seconds.is_some(),
            self.console_seconds.is_some(),
        ) {
            (false, false) => "oncely serve",
            (true, false) => SCRAPED,
            (true, true) => OBSERVED,
            (false, true) => "oncely serve, console open",
        }
    }
}

/// The system name of a soak whose `/metrics` is scraped.
pub const SCRAPED: &str = "oncely serve, /metrics scraped";
/// The system name of a soak whose `/metrics` is scraped while a console is open.
pub const OBSERVED: &str = "oncely serve, /metrics scraped, console open";

/// What one interval gathered.
#[derive(Debug, Default)]
struct Bucket {
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `spec`: a scratch database, the in-process gateway, `oncely serve`, the load.
pub async fn run(spec: &SoakSpec) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::create(&spec.db).await?;
    let gateway = Gateway::start(Duration::from_millis(spec.latency_ms)).await?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let port = free_port()?;
    let metrics_port = free_port()?;
    let log = std::fs::File::create(dir.path().join("serve.log"))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut command = Command::new(&spec.exe);
    command
        .args([
            "serve",
            "--db",
            &scratch.url,
            "--gateway-url",
            &gateway.url(),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--workers", &spec.workers.to_string()])
        .args([
            "--webhook-sim-listen",
            "127.0.0.1:0",
            "--payment-webhook-url",
            "off",
        ])
        .current_dir(dir.path())
        .env("ONCELY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if spec.scrape_seconds.is_some() {
        command.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    }
    let mut serve = command
        .spawn()
        .map_err(|e| BenchError::Setup(format!("starting oncely serve: {e}")))?;
    let pid = serve.id().map(|p| p.to_string()).unwrap_or_default();
    let driven = match wait_healthy(port).await {
        Ok(()) => {
            let base = format!("http://127.0.0.1:{port}");
            let scraper = spec.scrape_seconds.map(|every| {
                let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
                tokio::spawn(poll(vec![(metrics, "oncely_")], every, spec.seconds))
            });
            // What the console's page asks on each refresh of its overview and its list.
            let console = spec.console_seconds.map(|every| {
                let pages = vec![
                    (
                        format!("{base}/v1/overview?windowMinutes=15"),
                        "\"domains\"",
                    ),
                    (format!("{base}/v1/payments?limit=50"), "\"items\""),
                ];
                tokio::spawn(poll(pages, every, spec.seconds))
            });
            let driven = drive(spec, port, &pid).await;
            let mut polls = Vec::new();
            for (name, poller) in [("metrics scrapes", scraper), ("console refreshes", console)] {
                if let Some(poller) = poller {
                    polls.push((name, poller.await.unwrap_or_else(|e| Err(e.to_string()))));
                }
            }
            Ok((driven, polls))
        }
        Err(error) => Err(error),
    };
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    if tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .is_err()
    {
        let _ = serve.kill().await;
    }
    let stored = count_operations(&scratch.url).await;
    let charges = gateway.charges().await;
    gateway.stop();
    scratch_done(scratch).await;
    let ((timeline, total, elapsed), polls) = driven?;
    let (stored, charges) = (stored?, charges?);
    let completed = total.latencies.len();
    let mut result = WorkloadResult {
        workload: spec.workload.clone(),
        system: spec.system().to_owned(),
        backend: backend(&spec.db).to_owned(),
        operations: completed + total.errors,
        completed,
        // Every payment answered COMPLETED is stored and charged.
        lost: completed.saturating_sub(stored.min(charges)),
        errors: total.errors,
        first_error: total.first_error.clone(),
        seconds: elapsed.as_secs_f64(),
        ops_per_sec: completed as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: total.latencies.summary(),
        peak_rss_mib: crate::stats::peak_rss_mib(&pid),
        settings: Default::default(),
        round: None,
        accept_latency: None,
        timeline,
    };
    if completed == 0 {
        result.errors += 1;
        result
            .first_error
            .get_or_insert("no payment completed".to_owned());
    }
    let result = result
        .with("workers", spec.workers)
        .with("interval", format!("{} s", spec.interval_seconds))
        .with("gateway latency", format!("{} ms", spec.latency_ms));
    let mut result = result;
    for (name, polled) in polls {
        match polled {
            Ok(count) => result = result.with(name, count),
            Err(error) => {
                result.errors += 1;
                result.first_error.get_or_insert(error);
            }
        }
    }
    let result = match spec.rate {
        Some(rate) => result.with("rate", format!("{rate:.0}/s (open loop)")),
        None => result.with("clients", format!("{} (closed loop)", spec.clients)),
    };
    Ok(match &spec.note {
        Some(note) => result.with("database", note),
        None => result,
    })
}

/// Asks each of `urls` every `every` seconds for `seconds`, as Prometheus or an open
/// console would, checking each answer holds its needle; how many rounds were answered
/// in full, or the first answer that was not good.
async fn poll(urls: Vec<(String, &'static str)>, every: u64, seconds: u64) -> Result<u64, String> {
    let client = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs(seconds.max(1));
    let mut ticks = tokio::time::interval(Duration::from_secs(every.max(1)));
    let mut rounds = 0;
    loop {
        ticks.tick().await;
        if Instant::now() >= end {
            return Ok(rounds);
        }
        for (url, needle) in &urls {
            match client.get(url).send().await {
                Ok(answer) if answer.status().is_success() => {
                    let body = answer.text().await.map_err(|e| e.to_string())?;
                    if !body.contains(needle) {
                        return Err(format!("{url} answered without {needle}"));
                    }
                }
                Ok(answer) => return Err(format!("{url} answered {}", answer.status())),
                Err(error) => return Err(format!("asking {url}: {error}")),
            }
        }
        rounds += 1;
    }
}

/// Sends the load for `spec.seconds` and gathers it interval by interval.
async fn drive(spec: &SoakSpec, port: u16, pid: &str) -> (Vec<Interval>, Bucket, Duration) {
    let url = format!("http://127.0.0.1:{port}/v1/payments");
    // Idle connections are dropped here before `serve` closes them (its idle timeout is
    // 60 s): a request sent on a connection the server is closing at that moment fails
    // with no answer, and an open loop, whose pool grows in bursts and then idles, would
    // count those as the service's errors.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1_024)
        .pool_idle_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let bucket = Arc::new(Mutex::new(Bucket::default()));
    let started = Instant::now();
    let end = started + Duration::from_secs(spec.seconds.max(1));
    let next = Arc::new(AtomicU64::new(0));
    let sender = {
        let (bucket, next) = (bucket.clone(), next.clone());
        let (spec, client, url) = (spec.clone(), client.clone(), url.clone());
        tokio::spawn(async move {
            match spec.rate {
                None => closed(&spec, &client, &url, end, &next, &bucket).await,
                Some(rate) => open(rate, &client, &url, end, &next, &bucket).await,
            }
        })
    };
    let mut timeline = Vec::new();
    let mut total = Bucket::default();
    let interval = Duration::from_secs(spec.interval_seconds.max(1));
    let mut at = started;
    while at < end {
        at = (at + interval).min(end);
        tokio::time::sleep_until(at.into()).await;
        let done = std::mem::take(&mut *bucket.lock().unwrap_or_else(PoisonError::into_inner));
        let seconds = interval.as_secs_f64();
        timeline.push(Interval {
            at_seconds: at.duration_since(started).as_secs_f64(),
            ops_per_sec: done.latencies.len() as f64 / seconds,
            latency: done.latencies.summary(),
            errors: done.errors,
            rss_mib: current_rss_mib(pid),
        });
        total.latencies.merge(&done.latencies);
        total.errors += done.errors;
        total.first_error = total.first_error.or(done.first_error);
    }
    let _ = sender.await;
    // Requests still in flight at the end are let finish, and counted in the total only.
    let late = std::mem::take(&mut *bucket.lock().unwrap_or_else(PoisonError::into_inner));
    total.latencies.merge(&late.latencies);
    total.errors += late.errors;
    (timeline, total, started.elapsed())
}

async fn closed(
    spec: &SoakSpec,
    client: &reqwest::Client,
    url: &str,
    end: Instant,
    next: &Arc<AtomicU64>,
    bucket: &Arc<Mutex<Bucket>>,
) {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..spec.clients.max(1) {
        let (client, url, next, bucket) =
            (client.clone(), url.to_owned(), next.clone(), bucket.clone());
        clients.spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let answer = pay(&client, &url, i).await;
                record(&bucket, started, answer);
            }
        });
    }
    while clients.join_next().await.is_some() {}
}

async fn open(
    rate: f64,
    client: &reqwest::Client,
    url: &str,
    end: Instant,
    next: &Arc<AtomicU64>,
    bucket: &Arc<Mutex<Bucket>>,
) {
    let in_flight = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut sent = 0_u64;
    let mut requests = tokio::task::JoinSet::new();
    while Instant::now() < end {
        // Every payment due by now is sent now, each timed from when it was due.
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let due_at = started + Duration::from_secs_f64(sent as f64 / rate);
            sent += 1;
            if in_flight.load(Ordering::Relaxed) >= IN_FLIGHT_MAX {
                record(
                    bucket,
                    due_at,
                    Err("refused: too many requests in flight".into()),
                );
                continue;
            }
            let (client, url, next, bucket, in_flight) = (
                client.clone(),
                url.to_owned(),
                next.clone(),
                bucket.clone(),
                in_flight.clone(),
            );
            in_flight.fetch_add(1, Ordering::Relaxed);
            requests.spawn(async move {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let answer = pay(&client, &url, i).await;
                record(&bucket, due_at, answer);
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while requests.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while requests.join_next().await.is_some() {}
}

/// One payment: accepted and waited for until it is finished.
async fn pay(client: &reqwest::Client, url: &str, i: u64) -> Result<(), String> {
    let body = serde_json::json!({
        "orderId": i + 1,
        "amount": "10.00",
        "paymentMethod": "CARD",
        "customerId": 1,
    });
    let response = client
        .post(url)
        .header("Idempotency-Key", format!("soak-{i}"))
        .header("Prefer", "wait=30")
        .json(&body)
        .send()
        .await
        .map_err(|e| with_causes(&e))?;
    let status = response.status();
    let operation: serde_json::Value = response.json().await.map_err(|e| with_causes(&e))?;
    match (status.as_u16(), operation["state"].as_str()) {
        (200, Some("COMPLETED")) => Ok(()),
        (status, state) => Err(format!("payment {i}: {status} {state:?}")),
    }
}

/// An error with its causes, which reqwest's message leaves out ("error sending request
/// for url …" says nothing of a reset or a timeout).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        message.push_str(": ");
        message.push_str(&next.to_string());
        cause = next.source();
    }
    message
}

fn record(bucket: &Mutex<Bucket>, started: Instant, answer: Result<(), String>) {
    let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
    match answer {
        Ok(()) => bucket.latencies.record(started.elapsed()),
        Err(error) => {
            bucket.errors += 1;
            bucket.first_error.get_or_insert(error);
        }
    }
}

/// The resident memory of process `pid` now, in MiB (`VmRSS`).
fn current_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("error sending request for url (http://127.0.0.1:1/v1/payments)")]
    struct Sending(#[source] std::io::Error);

    #[test]
    fn a_request_error_names_its_causes() {
        let error = Sending(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        assert_eq!(
            with_causes(&error),
            "error sending request for url (http://127.0.0.1:1/v1/payments): \
             connection reset by peer"
        );
    }
}
