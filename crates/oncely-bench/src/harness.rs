//! Runs a plan of workloads, each in a process of its own, and gathers the report.

use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::BenchError;
use crate::report::{Machine, Report};
use crate::result::WorkloadResult;
use crate::soak::SoakSpec;
use crate::uploads::{DIRECT, UploadSpec};
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
    /// Also run underway, apalis and DBOS (built from `peers_manifest` on first use).
    pub peers: bool,
    /// The peers crate's `Cargo.toml`.
    pub peers_manifest: PathBuf,
    /// Only workloads whose name starts with one of these (all when empty).
    pub only: Vec<String>,
    /// The `oncely` binary: runs the child processes and `oncely serve`.
    pub exe: PathBuf,
    /// The command line, for the report.
    pub command: String,
    /// Rounds of each comparison (e2e, overhead, limit): every system runs once per round,
    /// in turn, so a ratio is a median of rounds and not one draw.
    pub rounds: u32,
    /// Finished payments retained before `bigtable-*` runs, per backend (PostgreSQL
    /// gets the whole list; SQLite and MySQL the sizes up to `bigtable_other_max`).
    pub bigtable: Vec<u64>,
    /// The largest retained size on SQLite and MySQL (their fill is slower).
    pub bigtable_other_max: u64,
    /// Seconds of each soak run.
    pub soak_seconds: u64,
    /// Seconds of one interval of a soak's timeline.
    pub soak_interval_seconds: u64,
    /// Turn PostgreSQL's autovacuum on for the run (and restore it), as production runs
    /// it; otherwise the server's setting stands.
    pub autovacuum: bool,
}

/// A peer's workload, as the peers binary takes it (JSON, one argument).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// `underway`, `apalis` or `dbos`.
    pub system: String,
    /// The load, the same as oncely's.
    pub load: Load,
}

/// The closed-loop soak on PostgreSQL with autovacuum turned off for it.
const AUTOVACUUM_OFF_SOAK: &str = "soak-closed-autovacuum-off";

/// The workload that measures what serving `/metrics` costs.
pub const METRICS_OVERHEAD: &str = "metrics-overhead";

/// The peers, in the order each round runs them.
pub const PEERS: [&str; 3] = ["underway", "apalis", "dbos"];

enum Job {
    Child(Spec),
    Peer(PeerSpec),
    Http {
        db: String,
    },
    /// A soak in the open loop, at `share` of what the closed-loop soak on `db` sustained.
    OpenSoak {
        db: String,
        share: f64,
    },
    /// Sets PostgreSQL's autovacuum (`None`: as configured).
    Autovacuum(Option<bool>),
    /// An uploads run; its endpoint is the moto server the plan starts.
    Upload(UploadSpec),
}

struct Scheduled {
    job: Job,
    round: Option<u32>,
}

impl Job {
    fn describe(&self) -> String {
        match self {
            Job::Child(spec) => serde_json::to_string(spec).unwrap_or_default(),
            Job::Peer(peer) => format!("{} {}", peer.system, peer.load.workload),
            Job::Http { db } => format!("http-accept on {db}"),
            Job::OpenSoak { db, share } => format!("soak-open on {db} at {share} of peak"),
            Job::Autovacuum(on) => format!("autovacuum {on:?}"),
            Job::Upload(spec) => format!(
                "{} {} on {}",
                spec.load.workload,
                if spec.direct { DIRECT } else { "oncely" },
                spec.load.db
            ),
        }
    }

    fn workload(&self) -> String {
        match self {
            Job::Child(
                Spec::Oncely(l)
                | Spec::Direct(l)
                | Spec::Queued(l)
                | Spec::Naive(l)
                | Spec::Floor(l),
            ) => l.workload.clone(),
            Job::Child(Spec::Limit { .. }) => "limit".to_owned(),
            Job::Child(Spec::BigTable { retained, .. }) => {
                format!("bigtable-{}", crate::bigtable::size_label(*retained))
            }
            Job::Child(Spec::Soak(soak)) => soak.workload.clone(),
            Job::Peer(peer) => peer.load.workload.clone(),
            Job::Http { .. } => "http-accept".to_owned(),
            Job::OpenSoak { .. } => "soak-open".to_owned(),
            // The switches belong to the soak they surround: kept or dropped with it.
            Job::Autovacuum(_) => AUTOVACUUM_OFF_SOAK.to_owned(),
            Job::Upload(spec) | Job::Child(Spec::Upload(spec)) => spec.load.workload.clone(),
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

    fn load(&self, workload: &str, db: &str, n: u64, clients: usize, workers: usize) -> Load {
        Load {
            workload: workload.to_owned(),
            db: db.to_owned(),
            n,
            clients,
            workers,
            batch: 256,
            latency_ms: 0,
        }
    }

    /// The comparison jobs of one round: every system of every compared workload, in
    /// the same order each round.
    fn round(&self) -> Vec<Job> {
        let small = |n: u64| if self.quick { n.min(300) } else { n };
        let mut jobs = Vec::new();
        // Engine-bound: the gateway answers at once. Concurrency-bound: 20 ms a call.
        // Every system gets as many workers as there are clients.
        let e2e = [("e2e-0ms", 256, 0), ("e2e-20ms", 512, 20)];
        for (workload, clients, latency) in e2e {
            let load = |db: &str| Load {
                latency_ms: latency,
                ..self.load(workload, db, small(self.n), clients, clients)
            };
            for db in &self.databases {
                jobs.push(Job::Child(Spec::Oncely(load(db))));
            }
            if let Some(pg) = self.postgres() {
                jobs.push(Job::Child(Spec::Naive(Load {
                    workers: 64,
                    ..load(pg)
                })));
                if self.peers {
                    for system in PEERS {
                        jobs.push(Job::Peer(PeerSpec {
                            system: system.to_owned(),
                            load: peer_load(system, load(pg)),
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
            jobs.push(Job::Child(Spec::Direct(
                self.load(&workload, "-", overhead_n, clients, 64),
            )));
            for db in &self.databases {
                jobs.push(Job::Child(Spec::Oncely(
                    self.load(&workload, db, overhead_n, clients, 64),
                )));
                if crate::scratch::Backend::of(db)
                    .is_ok_and(|b| b != crate::scratch::Backend::MySql)
                {
                    jobs.push(Job::Child(Spec::Floor(
                        self.load(&workload, db, overhead_n, clients, 64),
                    )));
                }
            }
        }
        // What oncely adds to an upload, one client, beside the same create made directly.
        for (workload, size) in crate::uploads::SIZES {
            let n = match (self.quick, size > 64 * 1024) {
                (true, big) => {
                    if big {
                        5
                    } else {
                        20
                    }
                }
                (false, true) => 100,
                (false, false) => (self.n / 50).max(100),
            };
            let upload = |db: &str, direct: bool| {
                Job::Upload(UploadSpec {
                    load: Load {
                        batch: 2,
                        ..self.load(workload, db, n, 1, 8)
                    },
                    size,
                    endpoint: String::new(),
                    direct,
                })
            };
            jobs.push(upload("-", true));
            for db in &self.databases {
                jobs.push(upload(db, false));
            }
        }
        // What watching the service costs: `oncely serve` over HTTP with no metrics
        // recorder and nobody looking, beside the same with /metrics scraped every 5 s, as
        // Prometheus would, and a console open (refreshing every 2 s, as its page does).
        if let Some(pg) = self.postgres() {
            let seconds = if self.quick { 4 } else { 60 };
            for (scrape_seconds, console_seconds) in [(None, None), (Some(5), Some(2))] {
                jobs.push(Job::Child(Spec::Soak(SoakSpec {
                    workload: METRICS_OVERHEAD.to_owned(),
                    seconds,
                    interval_seconds: seconds.div_ceil(3),
                    scrape_seconds,
                    console_seconds,
                    ..SoakSpec::closed(self, pg, None)
                })));
            }
        }
        if let Some(pg) = self.postgres() {
            for (batch, writers) in [(1, 16), (256, 4)] {
                jobs.push(Job::Child(Spec::Limit {
                    db: pg.to_owned(),
                    n: small(self.n),
                    batch,
                    writers,
                }));
            }
        }
        jobs
    }

    /// Jobs that run once: how cost grows, HTTP, memory, soaks.
    fn once(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        if let Some(pg) = self.postgres() {
            // Throughput against the gateway's latency and the workers.
            let (latencies, workers): (&[u64], &[usize]) = if self.quick {
                (&[0, 20], &[64])
            } else {
                (&[0, 20, 100], &[64, 256])
            };
            for &latency in latencies {
                for &workers in workers {
                    let workload = format!("sweep-{latency}ms-w{workers}");
                    let n = if self.quick { 200 } else { self.n / 2 };
                    jobs.push(Job::Child(Spec::Oncely(Load {
                        latency_ms: latency,
                        ..self.load(&workload, pg, n, 512, workers)
                    })));
                }
            }
        }
        for db in &self.databases {
            for &retained in &self.bigtable {
                if db.starts_with("postgres") || retained <= self.bigtable_other_max {
                    let n = if self.quick { 200 } else { self.n / 2 };
                    jobs.push(Job::Child(Spec::BigTable {
                        load: self.load("bigtable", db, n, 256, 256),
                        retained,
                    }));
                }
            }
        }
        for db in &self.databases {
            if !db.starts_with("mysql") {
                jobs.push(Job::Http { db: db.clone() });
                jobs.push(Job::Child(Spec::Queued(self.load(
                    "queued",
                    db,
                    self.queued,
                    64,
                    64,
                ))));
            }
        }
        for db in &self.databases {
            jobs.push(Job::Child(Spec::Soak(SoakSpec::closed(self, db, None))));
            jobs.push(Job::OpenSoak {
                db: db.clone(),
                share: 0.7,
            });
        }
        if let Some(pg) = self.postgres().filter(|_| self.autovacuum) {
            // The same with autovacuum off, as a test server often runs: what happens then.
            jobs.push(Job::Autovacuum(Some(false)));
            let note = "autovacuum off";
            let mut soak = SoakSpec::closed(self, pg, Some(note));
            soak.workload = AUTOVACUUM_OFF_SOAK.to_owned();
            jobs.push(Job::Child(Spec::Soak(soak)));
            jobs.push(Job::Autovacuum(Some(true)));
        }
        jobs
    }

    fn jobs(&self) -> Vec<Scheduled> {
        let mut jobs = Vec::new();
        for round in 1..=self.rounds.max(1) {
            jobs.extend(self.round().into_iter().map(|job| Scheduled {
                job,
                round: Some(round),
            }));
        }
        jobs.extend(
            self.once()
                .into_iter()
                .map(|job| Scheduled { job, round: None }),
        );
        jobs.retain(|scheduled| {
            let workload = scheduled.job.workload();
            self.only.is_empty() || self.only.iter().any(|o| workload.starts_with(o.as_str()))
        });
        jobs
    }
}

/// A peer's load: apalis fetches in batches of 64 (its default, 10, measured slower).
fn peer_load(system: &str, load: Load) -> Load {
    match system {
        "apalis" => Load { batch: 64, ..load },
        _ => load,
    }
}

/// Runs every workload of `plan`, one at a time, and returns the report. A workload that
/// cannot run is a failed result in it, not an early return.
pub async fn run_plan(plan: &Plan) -> Report {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let jobs = plan.jobs();
    let mut notes = Vec::new();
    let mut servers = std::collections::BTreeMap::new();
    for db in &plan.databases {
        match crate::server::settings(db).await {
            Ok(settings) => {
                servers.insert(crate::workload::backend(db).to_owned(), settings);
            }
            Err(error) => notes.push(error),
        }
    }
    let pg = plan.postgres().map(str::to_owned);
    let autovacuum_was = servers
        .get("postgres")
        .and_then(|settings| settings.get("autovacuum"))
        .cloned();
    let mut autovacuum_changed = false;
    if let Some(pg) = &pg
        && plan.autovacuum
        && autovacuum_was.as_deref() == Some("off")
    {
        match crate::server::set_autovacuum(pg, Some(true)).await {
            Ok(()) => {
                autovacuum_changed = true;
                notes.push(
                    "PostgreSQL's autovacuum was off on this server; it was turned on for the \
                     run (ALTER SYSTEM) and reset after, except where a workload says otherwise"
                        .to_owned(),
                );
            }
            Err(error) => notes.push(format!("autovacuum left as it was: {error}")),
        }
    }
    let peers_binary = if plan.peers {
        Some(build_peers(plan).await)
    } else {
        None
    };
    let moto = if jobs.iter().any(|s| matches!(s.job, Job::Upload(_))) {
        match oncely_testkit::moto::Moto::spawn().await {
            Ok(moto) => Some(moto),
            Err(error) => {
                notes.push(format!(
                    "uploads-* not run: no S3-compatible server ({error}); pip install \
                     'moto[server]' or set ONCELY_MOTO_SERVER"
                ));
                None
            }
        }
    } else {
        None
    };
    let mut results: Vec<WorkloadResult> = Vec::with_capacity(jobs.len());
    let mut autovacuum = if autovacuum_changed {
        Some("on".to_owned())
    } else {
        autovacuum_was.clone()
    };
    for (i, scheduled) in jobs.iter().enumerate() {
        let job = &scheduled.job;
        tracing::info!("[{}/{}] {}", i + 1, jobs.len(), job.describe());
        let result = match job {
            Job::Autovacuum(on) => {
                if let Some(pg) = &pg {
                    match crate::server::set_autovacuum(pg, *on).await {
                        Ok(()) => {
                            autovacuum = on.map(|on| if on { "on" } else { "off" }.to_owned());
                        }
                        Err(error) => notes.push(error),
                    }
                }
                continue;
            }
            Job::Child(spec) => run_child(plan, spec).await,
            Job::Upload(spec) => {
                let Some(moto) = &moto else { continue };
                let spec = UploadSpec {
                    endpoint: moto.endpoint.clone(),
                    ..spec.clone()
                };
                let result = run_child(plan, &Spec::Upload(spec)).await;
                if let Err(error) = crate::uploads::reset_moto(&moto.endpoint).await {
                    notes.push(error);
                }
                result
            }
            Job::Peer(peer) => match &peers_binary {
                Some(Ok(binary)) => run_peer(binary, peer).await,
                Some(Err(error)) => Err(BenchError::Setup(error.to_string())),
                None => Err(BenchError::Setup("peers not built".to_owned())),
            },
            Job::Http { db } => crate::http::run(plan, db).await,
            Job::OpenSoak { db, share } => {
                let closed = results.iter().find(|r| {
                    r.workload == "soak-closed" && r.backend == crate::workload::backend(db)
                });
                match closed.filter(|r| r.ops_per_sec > 0.0) {
                    Some(closed) => {
                        let mut spec = SoakSpec::closed(plan, db, None);
                        spec.workload = "soak-open".to_owned();
                        spec.rate = Some((closed.ops_per_sec * share).max(1.0));
                        run_child(plan, &Spec::Soak(spec)).await
                    }
                    None => Err(BenchError::Setup(
                        "the closed-loop soak it is paced from did not run".to_owned(),
                    )),
                }
            }
        };
        let mut result = result.unwrap_or_else(|error| {
            let (system, backend) = match job {
                Job::Peer(peer) => (peer.system.as_str(), "postgres"),
                Job::Upload(spec) if spec.direct => (DIRECT, "-"),
                Job::Upload(spec) => ("oncely", crate::workload::backend(&spec.load.db)),
                _ => ("oncely", "-"),
            };
            WorkloadResult::failed(&job.workload(), system, backend, error.to_string())
        });
        result.round = scheduled.round;
        if result.backend == "postgres"
            && let Some(autovacuum) = &autovacuum
        {
            result
                .settings
                .insert("autovacuum".to_owned(), autovacuum.clone());
        }
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
    if let Some(pg) = &pg
        && (autovacuum_changed || autovacuum.as_deref() != autovacuum_was.as_deref())
        && let Err(error) = crate::server::set_autovacuum(pg, None).await
    {
        notes.push(format!("could not reset autovacuum: {error}"));
    }
    let mut report = Report {
        started_at,
        command: plan.command.clone(),
        quick: plan.quick,
        machine: Machine::here(),
        servers,
        notes,
        results,
        summary: Vec::new(),
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
        "building the peers (underway, apalis, DBOS) in release mode; the first build takes minutes"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(only: &[&str]) -> Plan {
        Plan {
            quick: true,
            n: 300,
            queued: 1_000,
            http_seconds: 1,
            databases: vec!["postgres://postgres@127.0.0.1:5432/test".to_owned()],
            peers: false,
            peers_manifest: PathBuf::new(),
            only: only.iter().map(|o| (*o).to_owned()).collect(),
            exe: PathBuf::new(),
            command: String::new(),
            rounds: 1,
            bigtable: vec![0],
            bigtable_other_max: 0,
            soak_seconds: 6,
            soak_interval_seconds: 2,
            autovacuum: true,
        }
    }

    #[test]
    fn the_autovacuum_off_soak_keeps_its_switches_under_only() {
        for only in [&["soak-closed"][..], &["soak"], &[AUTOVACUUM_OFF_SOAK], &[]] {
            let jobs: Vec<String> = plan(only)
                .jobs()
                .iter()
                .map(|scheduled| scheduled.job.describe())
                .collect();
            let off = jobs
                .iter()
                .position(|job| job.contains(AUTOVACUUM_OFF_SOAK))
                .unwrap_or_else(|| panic!("{only:?}: no autovacuum-off soak in {jobs:#?}"));
            assert_eq!(jobs[off - 1], "autovacuum Some(false)", "{only:?}");
            assert_eq!(jobs[off + 1], "autovacuum Some(true)", "{only:?}");
        }
        let others = plan(&["soak-open"]).jobs();
        assert!(
            others
                .iter()
                .all(|scheduled| !matches!(scheduled.job, Job::Autovacuum(_))),
            "no switch without its soak"
        );
    }
}
