//! `chaos`: several `oncely serve` nodes on one database, a faulty simulated gateway and a
//! faulty simulated webhook receiver; payments (each announcing its end as a webhook) and
//! notifications, with duplicates and conflicting bodies, sent to random nodes; faults
//! thrown throughout (SIGKILL and restart, SIGSTOP past the lease, cut database
//! connections, lying gateway answers); then every operation must end, every webhook must
//! have arrived once per `webhook-id` with a valid signature, and the audit must be clean.
//!
//! It runs the `oncely` binary as child processes, so what it tests is what users run.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely::{ListFilter, OperationState, OverviewOf, Store};
use oncely_reqwest::WebhookSecret;
use oncely_sqlx::AnyStore;
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::Audit;
use crate::error::{Context, Error, ensure};
use crate::metrics::{self, Counters, MetricsCheck};

/// What a chaos round runs. [`ChaosConfig::new`] gives `oncely chaos`'s defaults.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `oncely` binary the nodes and simulators run.
    pub exe: PathBuf,
    /// The database the nodes share. Use an empty one: every payment in it is audited.
    /// SQLite allows one node only.
    pub db: String,
    /// How many `oncely serve` nodes run at once.
    pub nodes: usize,
    /// Distinct payments to send (plus 25 % duplicate requests and a few conflicting ones).
    pub payments: usize,
    /// Distinct notifications to send, mixed with the payments (duplicates and conflicts
    /// likewise). Each payment that ends sends one more, its event.
    pub notifications: usize,
    /// How many times a random node is SIGKILLed and restarted (under its node id, so it
    /// takes back at once what it was running).
    pub kills: usize,
    /// How many times a random node is paused (SIGSTOP) past its lease, then resumed
    /// (SIGCONT): a real zombie, whose late writes must be fenced.
    pub pauses: usize,
    /// How many times every node's database connections are cut (PostgreSQL's
    /// `pg_terminate_backend`, MySQL's `KILL CONNECTION`); not on SQLite.
    pub db_faults: usize,
    /// Share of the gateway's successful charges answered with a lie (another amount,
    /// currency or key, a missing field, broken JSON): none may end COMPLETED as if fine.
    pub lie_rate: f64,
    /// The least share of distinct payments that must end COMPLETED: a run in which
    /// everything failed is not a pass.
    pub min_completion_rate: f64,
    /// Seed of the simulators' faults and of the choice of nodes.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Give up waiting for every payment to end after this long.
    pub timeout: Duration,
    /// Keep logs and the gateway ledger here instead of a temporary directory.
    pub workdir: Option<PathBuf>,
    /// Distinct uploads to send, mixed with the rest (duplicates and conflicts likewise);
    /// one in 25 goes to a name another writer took first, and must end FAILED with that
    /// object untouched.
    pub uploads: usize,
    /// The S3-compatible endpoint uploads go to, through a `fault-proxy` with the run's
    /// faults; its bucket `oncely-chaos` is created if missing. `None`: uploads go to a
    /// directory in the work directory, shared by the nodes.
    pub s3: Option<String>,
    /// A shell command that restarts the database server (as
    /// `pg_ctlcluster 15 main restart`), run once, halfway through the faults; the nodes
    /// must ride through it. `None`: the server is not restarted.
    pub db_restart: Option<String>,
}

impl ChaosConfig {
    /// `oncely chaos`'s defaults on `db`, running `exe`.
    pub fn new(exe: PathBuf, db: String) -> Self {
        Self {
            exe,
            db,
            nodes: 3,
            payments: 300,
            notifications: 100,
            kills: 10,
            pauses: 0,
            db_faults: 0,
            lie_rate: 0.02,
            min_completion_rate: 0.5,
            seed: 2026,
            clients: 8,
            timeout: Duration::from_secs(300),
            workdir: None,
            uploads: 0,
            s3: None,
            db_restart: None,
        }
    }
}

/// What a chaos run found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaosReport {
    /// How many nodes ran.
    pub nodes: usize,
    /// Where the simulated gateway listened.
    pub gateway: String,
    /// Where the simulated webhook receiver listened: the prefix of every notification's
    /// URL, for a later `oncely audit --webhook-endpoint`.
    pub webhooks: String,
    /// Distinct payments sent.
    pub payments: usize,
    /// Distinct notifications sent.
    pub notifications: usize,
    /// Distinct uploads sent.
    pub uploads: usize,
    /// Where uploads went: the fault proxy in front of the S3 endpoint, or a directory.
    pub uploads_to: String,
    /// Objects another writer put first whose content changed: must be none.
    pub overwritten: Vec<String>,
    /// What the fault proxy in front of the S3 endpoint saw, by method: requests
    /// received, answered by the upstream, and answers lost after the upstream acted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_requests: Option<oncely_gateway_sim::ProxyStats>,
    /// Requests sent, duplicates and conflicts included.
    pub requests: usize,
    /// SIGKILLs, each followed by a restart.
    pub kills: usize,
    /// SIGSTOPs past the lease, each followed by a SIGCONT.
    pub pauses: usize,
    /// Cuts of every database connection.
    pub db_faults: usize,
    /// Database connections the db faults cut.
    pub connections_cut: u64,
    /// Times the database server was restarted mid-run, and how long the restart took.
    pub db_restarts: usize,
    /// How long the restart command ran.
    pub db_restart_seconds: f64,
    /// Lying answers the gateway told.
    pub lies: usize,
    /// Outcomes of paused or killed nodes refused by the fence (I4).
    pub fenced_writes: usize,
    /// Leases a restarted node took back at once from its earlier incarnation.
    pub leases_taken_over: u64,
    /// Distinct payments that ended COMPLETED, as a share.
    pub completion_rate: f64,
    /// Requests answered other than expected (a conflict not 422, a request not 2xx).
    pub unexpected_answers: Vec<String>,
    /// Notifications (payment events included) that did not end COMPLETED: with no
    /// declines at the receiver, every one must arrive.
    pub undelivered: Vec<String>,
    /// How long the round took.
    pub seconds: f64,
    /// The audit of both simulators at the end.
    pub audit: Audit,
    /// What the nodes' `/metrics` counted (each scraped before each kill and at the end),
    /// against the store and the logs.
    pub metrics: MetricsCheck,
}

struct Node {
    port: u16,
    /// Where its `/metrics` listens.
    metrics_port: u16,
    child: Option<Child>,
    /// Its current incarnation's counters, as last scraped.
    scraped: Counters,
}

struct Cluster {
    exe: PathBuf,
    db: String,
    gateway: String,
    webhooks: String,
    secret: WebhookSecret,
    workdir: PathBuf,
    nodes: Vec<Node>,
    simulators: Vec<Child>,
    /// `--s3-endpoint …` or `--uploads-dir …` for the nodes.
    uploads: Vec<String>,
    /// The counters of the nodes' ended incarnations, each as last scraped.
    counted: Counters,
}

/// The bucket chaos uploads go to.
const BUCKET: &str = "oncely-chaos";

/// The AWS keys the nodes sign S3 requests with: the environment's, or any (a test
/// server such as moto takes any).
fn s3_keys() -> Vec<(&'static str, String)> {
    ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .into_iter()
        .map(|name| {
            (
                name,
                std::env::var(name).unwrap_or_else(|_| "testing".into()),
            )
        })
        .collect()
}

/// The storage the audit reads uploads from: the endpoint itself, past the proxy.
fn audit_storage(s3: Option<&str>, dir: &Path) -> Result<oncely_upload::Storage, Error> {
    let storage = match s3 {
        Some(endpoint) => {
            let keys = s3_keys();
            oncely_upload::Storage::s3_with_keys(
                endpoint,
                "us-east-1",
                Duration::from_secs(30),
                &keys[0].1,
                &keys[1].1,
            )
        }
        None => oncely_upload::Storage::local(dir),
    };
    storage.during("opening the upload storage")
}

/// What one upload's content is: about 1 KiB, different per upload and version.
fn upload_content(run: &str, n: usize, version: usize) -> Vec<u8> {
    format!("{run}:{n}:{version}:").repeat(64).into_bytes()
}

fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_to(dir: &Path, name: &str) -> Result<Stdio, Error> {
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

    /// Starts `gateway-sim` or `webhook-sim` with the run's faults, its ledger in the
    /// work directory.
    fn start_simulator(
        &mut self,
        which: &str,
        port: u16,
        seed: u64,
        extra: &[&str],
    ) -> Result<(), Error> {
        let child = self
            .command()
            .args([which, "--listen", &format!("127.0.0.1:{port}")])
            .args(match which {
                "fault-proxy" => Vec::new(),
                _ => vec![
                    "--ledger".to_owned(),
                    format!(
                        "sqlite://{}",
                        self.workdir.join(format!("{which}.db")).display()
                    ),
                ],
            })
            .args(["--seed", &seed.to_string()])
            .args(["--latency-min", "1ms", "--latency-max", "15ms"])
            .args(["--error-rate", "0.05", "--rate-limit-rate", "0.05"])
            .args(["--timeout-rate", "0.02", "--hang", "2s"])
            .args(["--lost-answer-rate", "0.05"])
            .args(extra)
            // webhook-sim checks signatures with it; the secret stays out of argv.
            .env("ONCELY_WEBHOOK_SECRET", self.secret.expose())
            .stdout(Stdio::null())
            .stderr(log_to(&self.workdir, &format!("{which}.log"))?)
            .spawn()
            .during_with(|| format!("starting oncely {which}"))?;
        self.simulators.push(child);
        Ok(())
    }

    fn start(&mut self, index: usize) -> Result<(), Error> {
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
            .args(["--node-id", &format!("chaos-{index}")])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", self.nodes[index].metrics_port),
            ])
            .args(["--gateway-url", &self.gateway])
            .args(["--lease-ttl", "3s", "--gateway-timeout", "1s"])
            .args(["--backoff-base", "50ms", "--backoff-max", "500ms"])
            .args(["--attempts-max", "30", "--poll-interval", "50ms"])
            .args(["--workers", "16"])
            .env("ONCELY_WEBHOOK_SECRET", self.secret.expose())
            .args([
                "--webhook-allow",
                self.webhooks.trim_start_matches("http://"),
            ])
            .args([
                "--payment-webhook-url",
                &format!("{}/v1/webhooks/payments", self.webhooks),
            ])
            .args(["--webhook-timeout", "1s", "--webhook-workers", "16"])
            .args([
                "--webhook-backoff-base",
                "50ms",
                "--webhook-backoff-max",
                "500ms",
            ])
            .args(["--webhook-attempts-max", "30"])
            .args(&self.uploads)
            .args(["--upload-timeout", "1s", "--upload-workers", "16"])
            .args([
                "--upload-backoff-base",
                "50ms",
                "--upload-backoff-max",
                "500ms",
            ])
            .args(["--upload-attempts-max", "30"])
            .envs(s3_keys())
            .stdout(Stdio::null())
            .stderr(log_to(&self.workdir, &format!("node-{index}.log"))?)
            .spawn()
            .during("starting oncely serve")?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    fn kill(&mut self, index: usize) -> Result<(), Error> {
        if let Some(mut child) = self.nodes[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Reads node `index`'s counters; a node that does not answer keeps its last scrape.
    async fn scrape(&mut self, client: &reqwest::Client, index: usize) {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            self.nodes[index].metrics_port
        );
        let text = async {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        };
        match text.await {
            Ok(text) => self.nodes[index].scraped = metrics::parse(&text),
            Err(error) => tracing::warn!(%error, index, "could not scrape the node"),
        }
    }

    /// Scrapes every node and tells whether their counters, with the ended incarnations',
    /// equal the store's terminal operations and rescues and the logs' fenced writes.
    async fn counted_all(
        &mut self,
        client: &reqwest::Client,
        store: &AnyStore,
    ) -> Result<bool, Error> {
        for index in 0..self.nodes.len() {
            self.scrape(client, index).await;
        }
        let mut counted = self.counted.clone();
        for node in &self.nodes {
            metrics::add(&mut counted, &node.scraped);
        }
        let check = self.check_metrics(&counted, store, true).await?;
        Ok(check.mismatches.is_empty())
    }

    /// Compares `counted` with the store's terminal operations and rescues since the run
    /// began and with the logs' fenced writes.
    async fn check_metrics(
        &self,
        counted: &Counters,
        store: &AnyStore,
        exact: bool,
    ) -> Result<MetricsCheck, Error> {
        let overview = store
            .overview(
                OverviewOf::All,
                chrono::DateTime::UNIX_EPOCH,
                chrono::Utc::now(),
            )
            .await?;
        Ok(MetricsCheck::new(
            counted,
            &overview,
            self.fenced_writes() as u64,
            exact,
        ))
    }

    /// How many writes the nodes' logs say were fenced.
    fn fenced_writes(&self) -> usize {
        self.count_in_logs("taken over by another worker", None).0
    }

    /// Scrapes node `index`, then SIGKILLs it: what it counted since is lost with it.
    async fn scrape_and_kill(
        &mut self,
        client: &reqwest::Client,
        index: usize,
    ) -> Result<(), Error> {
        self.scrape(client, index).await;
        self.kill(index)?;
        let scraped = std::mem::take(&mut self.nodes[index].scraped);
        metrics::add(&mut self.counted, &scraped);
        Ok(())
    }

    /// SIGSTOP for `pause`, then SIGCONT: the node sleeps through its lease and wakes up
    /// believing it still holds it.
    async fn pause(&mut self, index: usize, pause: Duration) -> Result<(), Error> {
        let Some(pid) = self.nodes[index].child.as_ref().map(Child::id) else {
            return Ok(());
        };
        signal(pid, "STOP")?;
        tokio::time::sleep(pause).await;
        signal(pid, "CONT")
    }

    /// Lines of the nodes' logs that contain `needle`, and the sum of the `field=N`
    /// values on them.
    fn count_in_logs(&self, needle: &str, field: Option<&str>) -> (usize, u64) {
        let (mut lines, mut sum) = (0, 0);
        for index in 0..self.nodes.len() {
            let log = std::fs::read_to_string(self.workdir.join(format!("node-{index}.log")))
                .unwrap_or_default();
            for line in log.lines().filter(|line| line.contains(needle)) {
                lines += 1;
                if let Some(field) = field {
                    sum += line
                        .split_whitespace()
                        .find_map(|word| {
                            word.strip_prefix(field)?
                                .strip_prefix('=')?
                                .parse::<u64>()
                                .ok()
                        })
                        .unwrap_or(0);
                }
            }
        }
        (lines, sum)
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
        for child in &mut self.simulators {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `SIGname` to `pid` with kill(1), which every Unix has.
fn signal(pid: u32, name: &str) -> Result<(), Error> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .during_with(|| format!("sending SIG{name} to {pid}"))?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// Cuts every connection to the run's database but this one's; returns how many.
async fn cut_connections(db: &str) -> Result<u64, Error> {
    use sqlx::Connection;
    if db.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(db).await?;
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        return Ok(cut.into_iter().filter(|cut| *cut).count() as u64);
    }
    let url = db.replacen("mariadb://", "mysql://", 1);
    let mut conn = sqlx::MySqlConnection::connect(&url).await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut cut = 0;
    for id in ids {
        // A connection that closed meanwhile is not an error.
        if sqlx::query(&format!("KILL CONNECTION {id}"))
            .execute(&mut conn)
            .await
            .is_ok()
        {
            cut += 1;
        }
    }
    conn.close().await?;
    Ok(cut)
}

/// Runs `command` with `sh -c`; returns how long it took.
async fn restart_database(command: &str) -> Result<f64, Error> {
    tracing::warn!(command, "chaos: restarting the database server");
    let started = Instant::now();
    let status = tokio::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .await
        .during_with(|| format!("running {command:?}"))?;
    ensure!(
        status.success(),
        "the database restart {command:?} failed: {status}"
    );
    Ok(started.elapsed().as_secs_f64())
}

/// The faults of a run, in the order they strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strike {
    Kill,
    Pause,
    DbFault,
}

/// `kills`, `pauses` and `db_faults` strikes, shuffled by `rng`.
fn strikes(kills: usize, pauses: usize, db_faults: usize, rng: &mut fastrand::Rng) -> Vec<Strike> {
    let mut strikes: Vec<Strike> = std::iter::repeat_n(Strike::Kill, kills)
        .chain(std::iter::repeat_n(Strike::Pause, pauses))
        .chain(std::iter::repeat_n(Strike::DbFault, db_faults))
        .collect();
    rng.shuffle(&mut strikes);
    strikes
}

/// How long a paused node sleeps: past the lease `start` gives the nodes (3 s).
const PAUSE: Duration = Duration::from_secs(4);

fn client_for_setup() -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Waits up to 30 s for `GET url` to answer 2xx.
async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Setup(format!("{url} did not answer within 30 s")))
}

async fn wait_healthy(client: &reqwest::Client, base: &str) -> Result<(), Error> {
    wait_ready(client, &format!("{base}/healthz")).await
}

#[derive(Debug, Clone)]
struct Request {
    /// `/v1/payments` or `/v1/notifications`.
    path: &'static str,
    key: String,
    body: Value,
    conflicting: bool,
}

/// Distinct payments and notifications, interleaved; a duplicate after every fourth; then
/// conflicting bodies for keys that are surely accepted by then.
fn plan(
    run: &str,
    payments: usize,
    notifications: usize,
    uploads: usize,
    webhooks: &str,
) -> (Vec<Request>, Vec<Request>) {
    use base64::Engine as _;
    let upload = |n: usize, version: usize| {
        let content = upload_content(run, n, version);
        Request {
            path: "/v1/uploads",
            key: format!("chaos-{run}-u{n:05}"),
            body: json!({
                "bucket": BUCKET,
                "objectKey": upload_name(run, n),
                "contentType": "text/plain",
                "contentBase64": base64::engine::general_purpose::STANDARD.encode(&content),
                "sha256": oncely_upload::storage::hex_sha256(&content),
            }),
            conflicting: false,
        }
    };
    let payment = |order: usize, cents: usize| Request {
        path: "/v1/payments",
        key: format!("chaos-{run}-p{order:05}"),
        body: json!({
            "orderId": order + 1,
            "customerId": 1 + order % 13,
            "amount": format!("{}.{:02}", 1 + order % 97, cents % 100),
            "paymentMethod": "CARD",
        }),
        conflicting: false,
    };
    let notification = |n: usize, version: usize| Request {
        path: "/v1/notifications",
        key: format!("chaos-{run}-n{n:05}"),
        body: json!({
            "url": format!("{webhooks}/v1/webhooks/orders"),
            "eventType": "order.shipped",
            "payload": { "order": n, "version": version },
        }),
        conflicting: false,
    };
    let total = payments + notifications;
    let mut first: Vec<Request> = Vec::new();
    // Uploads go in between, evenly.
    let every = (total + uploads) / uploads.max(1);
    let mut next_upload = 0;
    for i in 0..total {
        if uploads > 0 && i % every.max(1) == 0 && next_upload < uploads {
            first.push(upload(next_upload, 1));
            next_upload += 1;
        }
        // Spread the notifications evenly among the payments.
        let n = i * notifications / total.max(1);
        let is_notification = (i + 1) * notifications / total.max(1) > n;
        first.push(if is_notification {
            notification(n, 1)
        } else {
            payment(i - n, i - n)
        });
        if i % 4 == 3 {
            let duplicate = first[first.len() / 2].clone();
            first.push(duplicate);
        }
    }
    first.extend((next_upload..uploads).map(|n| upload(n, 1)));
    let conflicting = |mut request: Request| {
        request.conflicting = true;
        request
    };
    let conflicts = (0..payments)
        .step_by(40)
        .map(|order| conflicting(payment(order, order + 1)))
        .chain(
            (0..notifications)
                .step_by(40)
                .map(|n| conflicting(notification(n, 2))),
        )
        .chain((0..uploads).step_by(40).map(|n| conflicting(upload(n, 2))))
        .collect();
    (first, conflicts)
}

/// The object name of upload `n`: one in 25 is a name another writer takes first.
fn upload_name(run: &str, n: usize) -> String {
    if n % 25 == 7 {
        format!("chaos/{run}/taken-{n}.txt")
    } else {
        format!("chaos/{run}/u{n:05}.txt")
    }
}

/// What another writer puts at the taken names before the run.
fn theirs(run: &str, n: usize) -> Vec<u8> {
    format!("another writer's {run}/{n}").into_bytes()
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
            .post(format!("{}{}", urls[node], request.path))
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

/// Operations not yet terminal, counted in one statement: two lists, `ACCEPTED` then
/// `PROCESSING`, could both miss an operation a retry moved from the second state to the
/// first between them, and the round would end with it still running.
async fn in_flight(store: &AnyStore) -> Result<u64, Error> {
    let now = chrono::Utc::now();
    let overview = store.overview(OverviewOf::All, now, now).await?;
    Ok(overview
        .iter()
        .flat_map(|domain| {
            [OperationState::Accepted, OperationState::Processing]
                .map(|state| domain.states.get(state.as_str()).copied().unwrap_or(0))
        })
        .sum())
}

/// Keys of the notifications that did not end COMPLETED.
async fn undelivered(store: &AnyStore) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    for state in [OperationState::Failed, OperationState::Timeout] {
        let filter = ListFilter {
            domain: Some(oncely::DomainName::new("NOTIFICATION")?),
            state: Some(state),
            limit: oncely::store::LIST_LIMIT_MAX,
            ..ListFilter::default()
        };
        let page = store.list(filter).await?;
        keys.extend(page.items.into_iter().map(|op| {
            let why = op.error_message.unwrap_or_default();
            format!("{} {}: {why}", op.scope.key, op.state)
        }));
    }
    Ok(keys)
}

/// Runs a chaos round and reports what it found; [`ChaosReport::passed`] says whether it
/// passed. An error means the round could not run.
pub async fn run(args: ChaosConfig) -> Result<ChaosReport, Error> {
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(
        args.db_faults == 0 || !args.db.starts_with("sqlite:"),
        "--db-faults cuts database connections: it needs PostgreSQL or MySQL, not SQLite"
    );
    ensure!(
        (0.0..=1.0).contains(&args.min_completion_rate),
        "--min-completion-rate must be 0 to 1"
    );
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
        .during_with(|| format!("opening {}", args.db))?
        .close()
        .await;
    let (gateway_port, webhooks_port) = (free_port()?, free_port()?);
    let secret = WebhookSecret::generate().during("making a webhook secret")?;
    let mut cluster = Cluster {
        exe: args.exe.clone(),
        db: args.db.clone(),
        gateway: format!("http://127.0.0.1:{gateway_port}"),
        webhooks: format!("http://127.0.0.1:{webhooks_port}"),
        secret: secret.clone(),
        workdir: workdir.clone(),
        nodes: (0..args.nodes)
            .map(|_| {
                Ok(Node {
                    port: free_port()?,
                    metrics_port: free_port()?,
                    child: None,
                    scraped: Counters::new(),
                })
            })
            .collect::<Result<_, Error>>()?,
        simulators: Vec::new(),
        uploads: Vec::new(),
        counted: Counters::new(),
    };
    let uploads_dir = workdir.join("uploads");
    let storage = audit_storage(args.s3.as_deref(), &uploads_dir)?;
    let uploads_to = match &args.s3 {
        Some(endpoint) => {
            let created = client_for_setup()?
                .put(format!("{}/{BUCKET}", endpoint.trim_end_matches('/')))
                .send()
                .await
                .during_with(|| format!("creating bucket {BUCKET} at {endpoint}"))?;
            // 409: the bucket exists already (a run before this one).
            ensure!(
                created.status().is_success() || created.status().as_u16() == 409,
                "creating bucket {BUCKET} at {endpoint} answered {}",
                created.status()
            );
            let port = free_port()?;
            cluster.start_simulator(
                "fault-proxy",
                port,
                args.seed.wrapping_add(3),
                &["--upstream", endpoint],
            )?;
            let proxy = format!("http://127.0.0.1:{port}");
            cluster.uploads = vec!["--s3-endpoint".into(), proxy.clone()];
            proxy
        }
        None => {
            cluster.uploads = vec!["--uploads-dir".into(), uploads_dir.display().to_string()];
            uploads_dir.display().to_string()
        }
    };
    let lie_rate = args.lie_rate.to_string();
    cluster.start_simulator(
        "gateway-sim",
        gateway_port,
        args.seed,
        &["--decline-rate", "0.05", "--lie-rate", &lie_rate],
    )?;
    // No declines at the receiver: every notification must arrive.
    cluster.start_simulator("webhook-sim", webhooks_port, args.seed.wrapping_add(2), &[])?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    wait_healthy(&client, &cluster.gateway).await?;
    wait_healthy(&client, &cluster.webhooks).await?;
    if args.s3.is_some() {
        let stats = format!("{uploads_to}{}", oncely_gateway_sim::STATS_PATH);
        wait_ready(&client, &stats).await?;
    }
    for index in 0..args.nodes {
        cluster.start(index)?;
    }
    let urls = cluster.urls();
    for url in &urls {
        wait_healthy(&client, url).await?;
    }
    tracing::info!(nodes = args.nodes, payments = args.payments, notifications = args.notifications, kills = args.kills, workdir = %workdir.display(), "chaos: starting");

    let run_id = format!(
        "{:x}",
        args.seed ^ u64::from(started.elapsed().subsec_nanos())
    );
    let (first, conflicts) = plan(
        &run_id,
        args.payments,
        args.notifications,
        args.uploads,
        &cluster.webhooks,
    );
    let taken: Vec<usize> = (0..args.uploads).filter(|n| n % 25 == 7).collect();
    for n in &taken {
        let content = theirs(&run_id, *n);
        let sha256 = oncely_upload::storage::hex_sha256(&content);
        storage
            .create(
                BUCKET,
                &upload_name(&run_id, *n),
                content.into(),
                "text/plain",
                &sha256,
            )
            .await
            .during("writing another writer's object")?;
    }
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
    let strikes = strikes(args.kills, args.pauses, args.db_faults, &mut killer);
    let mut connections_cut = 0;
    let (mut db_restarts, mut db_restart_seconds) = (0, 0.0);
    for (n, strike) in strikes.iter().enumerate() {
        let threshold = (n + 1) * total / (strikes.len() + 1);
        while progress.load(Ordering::SeqCst) < threshold && !sending.is_finished() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if sending.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let victim = killer.usize(..args.nodes);
        match strike {
            Strike::Kill => {
                cluster.scrape_and_kill(&client, victim).await?;
                cluster.start(victim)?;
                wait_healthy(&client, &urls[victim]).await?;
            }
            Strike::Pause => cluster.pause(victim, PAUSE).await?,
            Strike::DbFault => connections_cut += cut_connections(&args.db).await?,
        }
        if n + 1 == strikes.len().div_ceil(2)
            && let Some(command) = &args.db_restart
        {
            db_restart_seconds = restart_database(command).await?;
            db_restarts += 1;
        }
    }
    if strikes.is_empty()
        && let Some(command) = &args.db_restart
    {
        db_restart_seconds = restart_database(command).await?;
        db_restarts += 1;
    }
    let mut answers = sending.await.during("sending the requests")?;
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
            "operations still in flight after {:?}",
            args.timeout
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A SIGKILL loses what a node counted since its scrape; a cut connection or a
    // restarted server can make a committed write look failed, and its retry is then
    // fenced instead of counted.
    let exact = args.kills == 0 && args.db_faults == 0 && args.db_restart.is_none();
    // Each node counts an operation's end just after its commit, on its own time, which a
    // busy machine can stretch past any fixed wait: where nothing may be lost, the nodes
    // are scraped until they have counted what the store shows (for at most 10 s; the
    // check below reports whatever is still missing).
    let counting = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !exact || Instant::now() >= counting || cluster.counted_all(&client, &store).await? {
            break;
        }
    }
    for index in 0..args.nodes {
        cluster.scrape_and_kill(&client, index).await?;
    }
    let s3_requests = match &args.s3 {
        Some(_) => {
            let stats = format!("{uploads_to}{}", oncely_gateway_sim::STATS_PATH);
            let read = async {
                client
                    .get(&stats)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
            };
            Some(read.await.during("reading the fault proxy's counts")?)
        }
        None => None,
    };
    // The simulators stay up until their ledgers are read.
    let books = crate::audit::Books {
        gateway: Some(&cluster.gateway),
        webhooks: Some((&cluster.webhooks, &cluster.webhooks)),
        payment_events: true,
        uploads: (args.uploads > 0).then(|| storage.clone()),
    };
    let audit = crate::audit::audit(&store, books)
        .await
        .during("auditing")?;
    let (gateway, webhooks) = (cluster.gateway.clone(), cluster.webhooks.clone());
    let undelivered = undelivered(&store).await?;
    let fenced_writes = cluster.fenced_writes();
    let metrics = cluster
        .check_metrics(&cluster.counted, &store, exact)
        .await?;
    let (_, leases_taken_over) = cluster.count_in_logs("took over", Some("released"));
    let lies = std::fs::read_to_string(workdir.join("gateway-sim.log"))
        .unwrap_or_default()
        .matches("simulating a lying answer")
        .count();
    drop(cluster);
    store.close().await;
    let mut overwritten = Vec::new();
    for n in taken {
        let name = upload_name(&run_id, n);
        let now = storage
            .read(BUCKET, &name)
            .await
            .during("reading a taken name")?;
        if now.as_deref() != Some(theirs(&run_id, n).as_slice()) {
            overwritten.push(name);
        }
    }

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
    let distinct = |path: &str| {
        answers
            .iter()
            .filter(|(r, _)| !r.conflicting && r.path == path)
            .map(|(r, _)| r.key.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    let payments = distinct("/v1/payments");
    let completed = audit
        .payments
        .as_ref()
        .and_then(|report| report.operations.get("COMPLETED"))
        .copied()
        .unwrap_or(0);
    let report = ChaosReport {
        nodes: args.nodes,
        gateway,
        webhooks,
        payments,
        notifications: distinct("/v1/notifications"),
        uploads: distinct("/v1/uploads"),
        uploads_to,
        overwritten,
        s3_requests,
        requests: answers.len(),
        kills: args.kills,
        pauses: args.pauses,
        db_faults: args.db_faults,
        connections_cut,
        db_restarts,
        db_restart_seconds,
        lies,
        fenced_writes,
        leases_taken_over,
        completion_rate: completed as f64 / payments.max(1) as f64,
        unexpected_answers,
        undelivered,
        seconds: started.elapsed().as_secs_f64(),
        audit,
        metrics,
    };
    if report.completion_rate < args.min_completion_rate {
        tracing::error!(
            completion_rate = report.completion_rate,
            min = args.min_completion_rate,
            "too few payments completed: a run in which everything fails is not a pass"
        );
    }
    Ok(report)
}

impl ChaosReport {
    /// Whether the round passed: every answer expected, every notification delivered, the
    /// audit clean, nothing in flight, and at least `min_completion_rate` of the payments
    /// completed.
    pub fn passed(&self, min_completion_rate: f64) -> bool {
        self.unexpected_answers.is_empty()
            && self.undelivered.is_empty()
            && self.overwritten.is_empty()
            && self.audit.is_clean()
            && self.audit.in_flight() == 0
            && self.metrics.mismatches.is_empty()
            && self.completion_rate >= min_completion_rate
    }
}

fn tempfile_dir(keep: Option<&Path>) -> Result<tempfile::TempDir, Error> {
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

/// Writes the report as a table.
pub fn write_report(out: &mut impl std::io::Write, report: &ChaosReport) -> std::io::Result<()> {
    writeln!(out, "nodes          {}", report.nodes)?;
    writeln!(
        out,
        "sent           {} payments, {} notifications, {} uploads ({} requests)",
        report.payments, report.notifications, report.uploads, report.requests
    )?;
    if report.uploads > 0 {
        writeln!(out, "uploads to     {}", report.uploads_to)?;
        writeln!(out, "overwritten    {}", report.overwritten.len())?;
        if let Some(stats) = &report.s3_requests {
            let each = |counts: &std::collections::BTreeMap<String, u64>| {
                let each: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
                each.join(", ")
            };
            writeln!(out, "s3 received    {}", each(&stats.received))?;
            writeln!(out, "s3 answered    {}", each(&stats.forwarded))?;
            writeln!(out, "s3 lost        {}", each(&stats.lost))?;
        }
        for name in &report.overwritten {
            writeln!(out, "  {name}")?;
        }
    }
    writeln!(
        out,
        "faults         {} kills, {} pauses, {} db faults ({} connections cut), {} lies",
        report.kills, report.pauses, report.db_faults, report.connections_cut, report.lies
    )?;
    if report.db_restarts > 0 {
        writeln!(
            out,
            "db restarts    {} ({:.1} s)",
            report.db_restarts, report.db_restart_seconds
        )?;
    }
    writeln!(out, "fenced writes  {}", report.fenced_writes)?;
    writeln!(
        out,
        "taken over     {} leases, at restart",
        report.leases_taken_over
    )?;
    writeln!(
        out,
        "completed      {:.1} % of payments",
        report.completion_rate * 100.0
    )?;
    writeln!(
        out,
        "/metrics       {} ({}): {}",
        if report.metrics.mismatches.is_empty() {
            "agrees"
        } else {
            "DISAGREES"
        },
        if report.metrics.exact {
            "must equal the store"
        } else {
            "nodes were killed: at most the store"
        },
        report
            .metrics
            .figures
            .iter()
            .filter(|figure| figure.expected > 0 || figure.metrics > 0)
            .map(|figure| format!("{} {}/{}", figure.what, figure.metrics, figure.expected))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    for line in &report.metrics.mismatches {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "time           {:.1} s", report.seconds)?;
    writeln!(out, "unexpected     {}", report.unexpected_answers.len())?;
    for line in report.unexpected_answers.iter().take(20) {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "undelivered    {}", report.undelivered.len())?;
    for line in report.undelivered.iter().take(20) {
        writeln!(out, "  {line}")?;
    }
    crate::audit::write_table(out, &report.audit)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_are_every_fault_asked_for_in_a_seeded_order() {
        let one = strikes(5, 3, 2, &mut fastrand::Rng::with_seed(7));
        let again = strikes(5, 3, 2, &mut fastrand::Rng::with_seed(7));
        assert_eq!(one, again, "the same seed, the same order");
        let count = |kind| one.iter().filter(|s| **s == kind).count();
        assert_eq!(
            (
                count(Strike::Kill),
                count(Strike::Pause),
                count(Strike::DbFault)
            ),
            (5, 3, 2)
        );
    }

    #[tokio::test]
    async fn db_faults_on_sqlite_and_rates_out_of_range_are_refused_before_anything_starts() {
        let mut config = ChaosConfig::new(
            PathBuf::from("/nonexistent/oncely"),
            "sqlite::memory:".into(),
        );
        config.nodes = 1;
        config.db_faults = 1;
        let error = run(config.clone()).await.unwrap_err();
        assert!(error.to_string().contains("--db-faults"), "{error}");
        config.db_faults = 0;
        config.min_completion_rate = 1.5;
        let error = run(config).await.unwrap_err();
        assert!(
            error.to_string().contains("--min-completion-rate"),
            "{error}"
        );
    }
}
