//! `oncely chaos`: several `oncely serve` nodes on one database and a faulty simulated
//! gateway; payments with duplicates and conflicting bodies sent to random nodes; random
//! nodes SIGKILLed and restarted throughout; then every payment must end, and the audit
//! must be clean.
//!
//! It runs this very binary as child processes, so what it tests is what users run.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use oncely::{ListFilter, OperationState, Store};
use oncely_payment::audit::{AuditReport, reconcile};
use oncely_payment::{GatewayClient, GatewayTimeouts};
use oncely_sqlx::AnyStore;
use serde::Serialize;
use serde_json::{Value, json};

use crate::duration;

/// Flags of `oncely chaos`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// The database the nodes share. Use an empty one: every payment in it is audited.
    /// SQLite allows one node only.
    #[arg(long, env = "ONCELY_DB")]
    db: String,
    /// How many `oncely serve` nodes run at once.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Distinct payments to send (plus 25 % duplicate requests and a few conflicting ones).
    #[arg(long, default_value_t = 300)]
    payments: usize,
    /// How many times a random node is SIGKILLed and restarted.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Seed of the gateway's faults and of the choice of nodes.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Give up waiting for every payment to end after this long.
    #[arg(long, default_value = "300s", value_parser = duration::parse)]
    timeout: Duration,
    /// Keep logs and the gateway ledger here instead of a temporary directory.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What a chaos run found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChaosReport {
    nodes: usize,
    payments: usize,
    requests: usize,
    kills: usize,
    unexpected_answers: Vec<String>,
    seconds: f64,
    audit: AuditReport,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

struct Cluster {
    exe: PathBuf,
    db: String,
    gateway: String,
    workdir: PathBuf,
    nodes: Vec<Node>,
    gateway_child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_to(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))?;
    Ok(Stdio::from(file))
}

impl Cluster {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.exe);
        for (name, _) in std::env::vars() {
            if name.starts_with("ONCELY_") {
                command.env_remove(name);
            }
        }
        command
    }

    fn start_gateway(&mut self, port: u16, seed: u64) -> anyhow::Result<()> {
        let child = self
            .command()
            .args(["gateway-sim", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--ledger")
            .arg(format!(
                "sqlite://{}",
                self.workdir.join("ledger.db").display()
            ))
            .args([
                "--seed",
                &seed.to_string(),
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
            .stderr(log_to(&self.workdir, "gateway.log")?)
            .spawn()
            .context("starting oncely gateway-sim")?;
        self.gateway_child = Some(child);
        Ok(())
    }

    fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let port = self.nodes[index].port;
        let child = self
            .command()
            .args([
                "serve",
                "--db",
                &self.db,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
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
            .stderr(log_to(&self.workdir, &format!("node-{index}.log"))?)
            .spawn()
            .context("starting oncely serve")?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("http://127.0.0.1:{}", node.port))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut child) = self.gateway_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_healthy(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{base} did not become healthy within 30 s")
}

#[derive(Debug, Clone)]
struct Request {
    key: String,
    body: Value,
    conflicting: bool,
}

/// Distinct payments, a duplicate after every fourth, then conflicting bodies for keys
/// that are surely accepted by then.
fn plan(run: &str, payments: usize) -> (Vec<Request>, Vec<Request>) {
    let body = |order: usize, cents: usize| {
        json!({
            "orderId": order + 1,
            "customerId": 1 + order % 13,
            "amount": format!("{}.{:02}", 1 + order % 97, cents % 100),
            "paymentMethod": "CARD",
        })
    };
    let mut first: Vec<Request> = Vec::new();
    for order in 0..payments {
        first.push(Request {
            key: format!("chaos-{run}-{order:05}"),
            body: body(order, order),
            conflicting: false,
        });
        if order % 4 == 3 {
            let duplicate = first[first.len() / 2].clone();
            first.push(duplicate);
        }
    }
    let conflicts = (0..payments)
        .step_by(40)
        .map(|order| Request {
            key: format!("chaos-{run}-{order:05}"),
            body: body(order, order + 1),
            conflicting: true,
        })
        .collect();
    (first, conflicts)
}

/// How long one request is retried across nodes before it counts as unanswered.
const SEND_DEADLINE: Duration = Duration::from_secs(60);

/// Sends one request to random nodes until one answers (a dead node is skipped, as a load
/// balancer would). Returns the status; 0 when no node answered within [`SEND_DEADLINE`].
async fn send(
    client: &reqwest::Client,
    urls: &[String],
    rng: &Mutex<fastrand::Rng>,
    request: &Request,
) -> u16 {
    let deadline = Instant::now() + SEND_DEADLINE;
    while Instant::now() < deadline {
        let node = rng
            .lock()
            .map(|mut rng| rng.usize(..urls.len()))
            .unwrap_or(0);
        let sent = client
            .post(format!("{}/v1/payments", urls[node]))
            .header("Idempotency-Key", &request.key)
            .json(&request.body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().as_u16() != 503 => return response.status().as_u16(),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    0
}

async fn send_all(
    client: &reqwest::Client,
    urls: &[String],
    rng: &Arc<Mutex<fastrand::Rng>>,
    requests: Vec<Request>,
    clients: usize,
    progress: &Arc<AtomicUsize>,
) -> Vec<(Request, u16)> {
    let queue = Arc::new(Mutex::new(requests.into_iter().rev().collect::<Vec<_>>()));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, urls, rng, queue, progress) = (
            client.clone(),
            urls.to_vec(),
            rng.clone(),
            queue.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut queue| queue.pop());
                let Some(request) = next else { return answers };
                let status = send(&client, &urls, &rng, &request).await;
                progress.fetch_add(1, Ordering::SeqCst);
                answers.push((request, status));
            }
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        if let Ok(mut part) = task.await {
            answers.append(&mut part);
        }
    }
    answers
}

async fn in_flight(store: &AnyStore) -> anyhow::Result<usize> {
    let mut count = 0;
    for state in [OperationState::Accepted, OperationState::Processing] {
        let filter = ListFilter {
            state: Some(state),
            limit: oncely::store::LIST_LIMIT_MAX,
            ..ListFilter::default()
        };
        count += store.list(filter).await?.items.len();
    }
    Ok(count)
}

async fn audit(store: &AnyStore, gateway: &str) -> anyhow::Result<AuditReport> {
    let operations = crate::audit::all_payments(store).await?;
    let charges = GatewayClient::new(gateway, GatewayTimeouts::default())?
        .ledger()
        .await?;
    Ok(reconcile(&operations, &charges))
}

pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        args.nodes == 1 || !args.db.starts_with("sqlite:"),
        "SQLite is one process per file: use --nodes 1, or a PostgreSQL database"
    );
    let started = Instant::now();
    let temporary = tempfile_dir(args.workdir.as_deref())?;
    let workdir = temporary.path().to_owned();
    // Migrate once, before any node starts.
    AnyStore::open(&args.db)
        .await
        .with_context(|| format!("opening {}", args.db))?
        .close()
        .await;
    let gateway_port = free_port()?;
    let mut cluster = Cluster {
        exe: std::env::current_exe()?,
        db: args.db.clone(),
        gateway: format!("http://127.0.0.1:{gateway_port}"),
        workdir: workdir.clone(),
        nodes: (0..args.nodes)
            .map(|_| {
                Ok(Node {
                    port: free_port()?,
                    child: None,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        gateway_child: None,
    };
    cluster.start_gateway(gateway_port, args.seed)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    wait_healthy(&client, &cluster.gateway).await?;
    for index in 0..args.nodes {
        cluster.start(index)?;
    }
    let urls = cluster.urls();
    for url in &urls {
        wait_healthy(&client, url).await?;
    }
    tracing::info!(nodes = args.nodes, payments = args.payments, kills = args.kills, workdir = %workdir.display(), "chaos: starting");

    let run_id = format!(
        "{:x}",
        args.seed ^ u64::from(started.elapsed().subsec_nanos())
    );
    let (first, conflicts) = plan(&run_id, args.payments);
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(args.seed)));
    let progress = Arc::new(AtomicUsize::new(0));
    let total = first.len();
    let sending = {
        let (client, urls, rng, progress) =
            (client.clone(), urls.clone(), rng.clone(), progress.clone());
        let clients = args.clients;
        tokio::spawn(async move { send_all(&client, &urls, &rng, first, clients, &progress).await })
    };
    let mut killer = fastrand::Rng::with_seed(args.seed.wrapping_add(1));
    for kill in 0..args.kills {
        let threshold = (kill + 1) * total / (args.kills + 1);
        while progress.load(Ordering::SeqCst) < threshold && !sending.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if sending.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let victim = killer.usize(..args.nodes);
        cluster.kill(victim)?;
        cluster.start(victim)?;
        wait_healthy(&client, &urls[victim]).await?;
    }
    let mut answers = sending.await?;
    answers.extend(
        send_all(
            &client,
            &urls,
            &rng,
            conflicts,
            args.clients,
            &Arc::new(AtomicUsize::new(0)),
        )
        .await,
    );

    let store = AnyStore::open(&args.db).await?;
    let deadline = Instant::now() + args.timeout;
    while in_flight(&store).await? > 0 {
        ensure!(
            Instant::now() < deadline,
            "payments still in flight after {:?}",
            args.timeout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for index in 0..args.nodes {
        cluster.kill(index)?;
    }
    // The gateway stays up until its ledger is read.
    let audit = audit(&store, &cluster.gateway).await.context("auditing")?;
    drop(cluster);
    store.close().await;

    let unexpected_answers = answers
        .iter()
        .filter(|(request, status)| {
            let expected: &[u16] = if request.conflicting {
                &[422]
            } else {
                &[200, 202]
            };
            !expected.contains(status)
        })
        .map(|(request, status)| format!("{} answered {status}", request.key))
        .collect::<Vec<_>>();
    let payments = answers
        .iter()
        .filter(|(r, _)| !r.conflicting)
        .map(|(r, _)| r.key.clone())
        .collect::<HashSet<_>>()
        .len();
    let report = ChaosReport {
        nodes: args.nodes,
        payments,
        requests: answers.len(),
        kills: args.kills,
        unexpected_answers,
        seconds: started.elapsed().as_secs_f64(),
        audit,
    };
    print(&report, args.json)?;
    Ok(report.unexpected_answers.is_empty()
        && report.audit.is_clean()
        && report.audit.non_terminal.is_empty())
}

fn tempfile_dir(keep: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    match keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok(tempfile::Builder::new()
                .prefix("chaos-")
                .disable_cleanup(true)
                .tempdir_in(dir)?)
        }
        None => Ok(tempfile::Builder::new().prefix("oncely-chaos-").tempdir()?),
    }
}

fn print(report: &ChaosReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "nodes          {}", report.nodes)?;
    writeln!(
        out,
        "payments       {} ({} requests)",
        report.payments, report.requests
    )?;
    writeln!(out, "kills          {}", report.kills)?;
    writeln!(out, "time           {:.1} s", report.seconds)?;
    writeln!(out, "unexpected     {}", report.unexpected_answers.len())?;
    for line in report.unexpected_answers.iter().take(20) {
        writeln!(out, "  {line}")?;
    }
    let states: Vec<String> = report
        .audit
        .operations
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    writeln!(out, "operations     {}", states.join(", "))?;
    writeln!(out, "charges        {}", report.audit.charges)?;
    writeln!(out, "non-terminal   {}", report.audit.non_terminal.len())?;
    writeln!(out, "discrepancies  {}", report.audit.discrepancies.len())?;
    for discrepancy in report.audit.discrepancies.iter().take(20) {
        writeln!(
            out,
            "  {:?} {} {}",
            discrepancy.kind, discrepancy.key, discrepancy.detail
        )?;
    }
    Ok(())
}
