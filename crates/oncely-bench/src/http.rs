//! `http-accept`: `POST /v1/payments` on a real `oncely serve`, driven by `wrk` at a fixed
//! number of connections, each request with a fresh idempotency key.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::BenchError;
use crate::harness::Plan;
use crate::limit::count_operations;
use crate::result::WorkloadResult;
use crate::scratch::Scratch;
use crate::stats::LatencySummary;
use crate::workload::{backend, scratch_done};

/// Open connections (and so requests in flight).
pub const CONNECTIONS: usize = 64;

/// Prints one `ONCELY {json}` line when wrk is done; keys are unique per thread and
/// request.
const SCRIPT: &str = r#"
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
counter = 0
function request()
  counter = counter + 1
  local order = (id + 1) * 100000000 + counter
  local body = '{"orderId":' .. order .. ',"amount":"10.00","paymentMethod":"CARD","customerId":1}'
  return wrk.format("POST", "/v1/payments",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "wrk-" .. order}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'ONCELY {"requests":%d,"durationUs":%d,"non2xx":%d,"socketErrors":%d,"p50Us":%d,"p95Us":%d,"p99Us":%d,"maxUs":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"#;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WrkSummary {
    requests: u64,
    duration_us: u64,
    non2xx: u64,
    socket_errors: u64,
    p50_us: u64,
    p95_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// Starts `oncely serve` on a scratch database of `db`, loads it with wrk for
/// `plan.http_seconds`, stops it, and checks every accepted payment is stored.
pub async fn run(plan: &Plan, db: &str) -> Result<WorkloadResult, BenchError> {
    let wrk = ensure_wrk().await?;
    let scratch = Scratch::create(db).await?;
    let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
    let port = free_port()?;
    let sim_port = free_port()?;
    let log = std::fs::File::create(dir.path().join("serve.log"))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut serve = Command::new(&plan.exe)
        .args(["serve", "--db", &scratch.url, "--retention", "off"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--sim-listen", &format!("127.0.0.1:{sim_port}")])
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
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("starting oncely serve: {e}")))?;
    let pid = serve.id().map(|p| p.to_string()).unwrap_or_default();
    let outcome = async {
        wait_healthy(port).await?;
        let script = dir.path().join("accept.lua");
        std::fs::write(&script, SCRIPT).map_err(|e| BenchError::Setup(e.to_string()))?;
        let seconds = plan.http_seconds.max(1);
        let output = Command::new(&wrk)
            .args(["-t", "2", "-c", &CONNECTIONS.to_string()])
            .args(["-d", &format!("{seconds}s"), "--timeout", "10s", "-s"])
            .arg(&script)
            .arg(format!("http://127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BenchError::Setup(format!("running wrk: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ONCELY "))
            .ok_or_else(|| {
                BenchError::Child(format!(
                    "wrk printed no summary ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ))
            })?;
        let summary: WrkSummary = serde_json::from_str(line)
            .map_err(|e| BenchError::Child(format!("wrk's summary {line}: {e}")))?;
        Ok::<_, BenchError>(summary)
    }
    .await;
    let rss = crate::stats::peak_rss_mib(&pid);
    // A graceful stop, as an operator's would be.
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    if tokio::time::timeout(Duration::from_secs(30), serve.wait())
        .await
        .is_err()
    {
        let _ = serve.kill().await;
    }
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            scratch_done(scratch).await;
            return Err(BenchError::Child(format!(
                "{error} (serve: {})",
                tail.join(" | ")
            )));
        }
    };
    let stored = count_operations(&scratch.url).await?;
    scratch_done(scratch).await;
    let accepted = summary.requests.saturating_sub(summary.non2xx);
    let seconds = summary.duration_us as f64 / 1e6;
    let ms = |us: u64| us as f64 / 1_000.0;
    let mut result = WorkloadResult {
        workload: "http-accept".to_owned(),
        system: "oncely".to_owned(),
        backend: backend(db).to_owned(),
        operations: accepted,
        completed: accepted,
        // Every answered 2xx must be stored (more may be: requests cut off at the end).
        lost: accepted.saturating_sub(stored),
        errors: summary.non2xx + summary.socket_errors,
        first_error: (summary.non2xx + summary.socket_errors > 0).then(|| {
            format!(
                "{} non-2xx answers, {} socket errors",
                summary.non2xx, summary.socket_errors
            )
        }),
        seconds,
        ops_per_sec: accepted as f64 / seconds.max(1e-9),
        latency: LatencySummary {
            p50_ms: ms(summary.p50_us),
            p95_ms: ms(summary.p95_us),
            p99_ms: ms(summary.p99_us),
            max_ms: ms(summary.max_us),
        },
        peak_rss_mib: rss,
        settings: Default::default(),
        round: None,
        accept_latency: None,
        timeline: Vec::new(),
    };
    if accepted == 0 {
        result.errors += 1;
        result
            .first_error
            .get_or_insert("no request was accepted".to_owned());
    }
    Ok(result
        .with("load generator", "wrk -t2")
        .with("connections", CONNECTIONS)
        .with("workers", 64))
}

/// wrk's path; installs it with apt-get when it is missing and this user can.
async fn ensure_wrk() -> Result<std::path::PathBuf, BenchError> {
    if let Some(path) = on_path("wrk") {
        return Ok(path);
    }
    tracing::info!("wrk not found; installing it with apt-get");
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-qq", "wrk"]);
    let installed = install
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !installed {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .status()
            .await;
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "wrk"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await;
    }
    on_path("wrk").ok_or_else(|| {
        BenchError::Setup(
            "wrk (the HTTP load generator) is not installed and apt-get could not install it: \
             install it (apt-get install wrk) or leave out http-accept with --only"
                .to_owned(),
        )
    })
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

pub(crate) fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))
}

pub(crate) async fn wait_healthy(port: u16) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if probe(port).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Setup(
                "oncely serve did not become ready within 30 s".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /readyz` answered 200.
async fn probe(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer.starts_with(b"HTTP/1.1 200")
}
