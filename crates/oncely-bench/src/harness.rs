//! Runs a plan of workloads, each in a process of its own, and gathers the report.

use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::BenchError;
use crate::report::{Machine, Report};
use crate::result::WorkloadResult;
use crate::workload::{Load, Spec};

/// The flag a child process is started with, followed by its [`Spec`] as JSON.
pub const CHILD_FLAG: &str = "--child";

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Small sizes, for CI: checks that every workload runs and loses nothing.
    pub quick: bool,
    /// Payments per end-to-end workload.
    pub n: u64,
    /// Operations queued for the memory workload.
    pub queued: u64,
    /// Seconds of HTTP load.
    pub http_seconds: u64,
    /// Database servers to run on: `sqlite`, and PostgreSQL / MySQL URLs.
    pub databases: Vec<String>,
    /// Also run underway and apalis (built from `peers_manifest` on first use).
    pub peers: bool,
    /// The peers crate's `Cargo.toml`.
    pub peers_manifest: PathBuf,
    /// Only workloads whose name starts with one of these (all when empty).
    pub only: Vec<String>,
    /// The `oncely` binary: runs the child processes and `oncely serve`.
    pub exe: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// A peer's workload, as the peers binary takes it (JSON, one argument).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// `underway` or `apalis`.
    pub system: String,
    /// The load, the same as oncely's.
    pub load: Load,
}

enum Job {
    Child(Spec),
    Peer(PeerSpec),
    Http { db: String },
}

impl Job {
    fn describe(&self) -> String {
        match self {
            Job::Child(spec) => serde_json::to_string(spec).unwrap_or_default(),
            Job::Peer(peer) => format!("{} {}", peer.system, peer.load.workload),
            Job::Http { db } => format!("http-accept on {db}"),
        }
    }

    fn workload(&self) -> &str {
        match self {
            Job::Child(Spec::Oncely(l) | Spec::Direct(l) | Spec::Queued(l) | Spec::Naive(l)) => {
                &l.workload
            }
            Job::Child(Spec::Limit { .. }) => "limit",
            Job::Peer(peer) => &peer.load.workload,
            Job::Http { .. } => "http-accept",
        }
    }
}

impl Plan {
    fn postgres(&self) -> Option<&str> {
        self.databases
            .iter()
            .find(|db| db.starts_with("postgres"))
            .map(String::as_str)
    }

    fn jobs(&self) -> Vec<Job> {
        let load = |workload: &str, db: &str, n: u64, clients, workers, latency_ms| Load {
            workload: workload.to_owned(),
            db: db.to_owned(),
            n,
            clients,
            workers,
            batch: 256,
            latency_ms,
        };
        let small = |n: u64| if self.quick { n.min(300) } else { n };
        let mut jobs = Vec::new();
        // Engine-bound: the gateway answers at once; 256 clients keep 64 workers busy.
        // Concurrency-bound: 20 ms a call; 512 clients, 256 workers.
        let e2e = [("e2e-0ms", 256, 64, 0), ("e2e-20ms", 512, 256, 20)];
        for (workload, clients, workers, latency) in e2e {
            for db in &self.databases {
                jobs.push(Job::Child(Spec::Oncely(load(
                    workload, db, self.n, clients, workers, latency,
                ))));
            }
            if let Some(pg) = self.postgres() {
                jobs.push(Job::Child(Spec::Naive(load(
                    workload, pg, self.n, clients, workers, latency,
                ))));
                if self.peers {
                    for system in ["underway", "apalis"] {
                        jobs.push(Job::Peer(PeerSpec {
                            system: system.to_owned(),
                            load: load(workload, pg, self.n, clients, workers, latency),
                        }));
                    }
                }
            }
        }
        // What oncely adds to one call: alone (1 client), and at a moderate load (8
        // clients, one payment in flight each), beside the direct call at the same load.
        let overhead_n = small(self.n / 10).max(100);
        for clients in [1, 8] {
            let workload = format!("overhead-{clients}");
            jobs.push(Job::Child(Spec::Direct(load(
                &workload, "-", overhead_n, clients, 64, 0,
            ))));
            for db in &self.databases {
                jobs.push(Job::Child(Spec::Oncely(load(
                    &workload, db, overhead_n, clients, 64, 0,
                ))));
            }
        }
        if let Some(pg) = self.postgres() {
            for (batch, writers) in [(1, 16), (256, 4)] {
                jobs.push(Job::Child(Spec::Limit {
                    db: pg.to_owned(),
                    n: self.n,
                    batch,
                    writers,
                }));
            }
        }
        for db in &self.databases {
            if !db.starts_with("mysql") {
                jobs.push(Job::Http { db: db.clone() });
            }
        }
        for db in &self.databases {
            if !db.starts_with("mysql") {
                jobs.push(Job::Child(Spec::Queued(load(
                    "queued",
                    db,
                    self.queued,
                    64,
                    64,
                    0,
                ))));
            }
        }
        jobs.retain(|job| {
            self.only.is_empty() || self.only.iter().any(|o| job.workload().starts_with(o))
        });
        jobs
    }
}

/// Runs every workload of `plan`, one at a time, and returns the report. A workload that
/// cannot run is a failed result in it, not an early return.
pub async fn run_plan(plan: &Plan) -> Report {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let jobs = plan.jobs();
    let peers_binary = if plan.peers {
        Some(build_peers(plan).await)
    } else {
        None
    };
    let mut results = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        tracing::info!("[{}/{}] {}", i + 1, jobs.len(), job.describe());
        let result = match job {
            Job::Child(spec) => run_child(plan, spec).await,
            Job::Peer(peer) => match &peers_binary {
                Some(Ok(binary)) => run_peer(binary, peer).await,
                Some(Err(error)) => Err(BenchError::Setup(error.to_string())),
                None => Err(BenchError::Setup("peers not built".to_owned())),
            },
            Job::Http { db } => crate::http::run(plan, db).await,
        };
        let result = result.unwrap_or_else(|error| {
            let (system, backend) = match job {
                Job::Peer(peer) => (peer.system.as_str(), "postgres"),
                _ => ("oncely", "-"),
            };
            WorkloadResult::failed(job.workload(), system, backend, error.to_string())
        });
        match result.failure() {
            None => tracing::info!(
                "  {} {} {}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
                result.workload,
                result.system,
                result.backend,
                result.ops_per_sec,
                result.latency.p50_ms,
                result.latency.p99_ms
            ),
            Some(why) => tracing::error!("  {} {}: {why}", result.workload, result.system),
        }
        results.push(result);
    }
    let mut report = Report {
        started_at,
        command: plan.command.clone(),
        quick: plan.quick,
        machine: Machine::here(),
        results,
        findings: Vec::new(),
    };
    report.derive_findings();
    report
}

async fn run_child(plan: &Plan, spec: &Spec) -> Result<WorkloadResult, BenchError> {
    let json = serde_json::to_string(spec).map_err(|e| BenchError::Child(e.to_string()))?;
    let mut command = Command::new(&plan.exe);
    command.args(["bench", CHILD_FLAG, &json]);
    read_result(command, &plan.exe.display().to_string()).await
}

async fn run_peer(binary: &PathBuf, peer: &PeerSpec) -> Result<WorkloadResult, BenchError> {
    let json = serde_json::to_string(peer).map_err(|e| BenchError::Child(e.to_string()))?;
    let mut command = Command::new(binary);
    command.arg(json);
    read_result(command, &binary.display().to_string()).await
}

/// Runs a child and reads its result: the last line of its standard output, as JSON.
async fn read_result(mut command: Command, what: &str) -> Result<WorkloadResult, BenchError> {
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| BenchError::Child(format!("starting {what}: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty());
    match (output.status.success(), last) {
        (true, Some(line)) => serde_json::from_str(line)
            .map_err(|e| BenchError::Child(format!("unreadable result from {what}: {e}: {line}"))),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(BenchError::Child(format!(
                "{what} ended with {}: {}",
                output.status,
                tail.join(" | ")
            )))
        }
    }
}

/// Builds the peers binary (release) and returns its path.
async fn build_peers(plan: &Plan) -> Result<PathBuf, BenchError> {
    let manifest = &plan.peers_manifest;
    if !manifest.exists() {
        return Err(BenchError::Setup(format!(
            "{} not found: run from the oncely repository, or pass --peers-manifest",
            manifest.display()
        )));
    }
    let dir = manifest.parent().unwrap_or(manifest).to_path_buf();
    let target = dir.join("target");
    tracing::info!(
        "building the peers (underway, apalis) in release mode; the first build takes minutes"
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--release", "--manifest-path"])
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| BenchError::Setup(format!("running cargo: {e}")))?;
    if !status.success() {
        return Err(BenchError::Setup(format!(
            "building {} failed ({status})",
            manifest.display()
        )));
    }
    Ok(target.join("release").join("oncely-bench-peers"))
}
