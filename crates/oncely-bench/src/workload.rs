//! The workloads that run inside one process each (so each has its own peak memory):
//! oncely end to end, a direct call of the gateway, a backlog of queued operations, the
//! database's raw write limit, and the naive hand-written lifecycle.

use std::sync::Arc;
use std::time::Duration;

use oncely::{Engine, EngineConfig, OperationId, OperationState, Orchestrator, Outcome};
use oncely_payment::PaymentOrchestrator;
use oncely_sqlx::AnyStore;
use serde::{Deserialize, Serialize};

use crate::drive::closed_loop;
use crate::gateway::{Finishes, Gateway, payment, payment_key};
use crate::result::WorkloadResult;
use crate::scratch::Scratch;
use crate::{BenchError, limit, naive};

/// How long one operation may take before the run counts it as an error.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// One workload, as the harness hands it to a child process (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Spec {
    /// oncely: submit through the library, wait until finalized.
    Oncely(Load),
    /// The gateway called directly with the same client: the baseline of `overhead-*`.
    Direct(Load),
    /// `n` operations submitted while every worker is stuck on a call: memory with a
    /// backlog.
    Queued(Load),
    /// The same rows written straight with sqlx, one commit per operation or batched.
    Limit {
        /// Where.
        db: String,
        /// Operations.
        n: u64,
        /// Operations per commit (1 = one commit per operation).
        batch: usize,
        /// Concurrent writers.
        writers: usize,
    },
    /// The lifecycle written by hand from the seed: one transaction per step, a polling
    /// worker pool, no batching.
    Naive(Load),
    /// The e2e load on a database already holding `retained` finished payments.
    BigTable {
        /// The load.
        load: Load,
        /// Finished payments in the tables before it starts.
        retained: u64,
    },
    /// `oncely serve` over HTTP for a long while; throughput, latency and memory per
    /// interval.
    Soak(crate::soak::SoakSpec),
    /// Objects written to S3 through the uploads domain, or directly.
    Upload(crate::uploads::UploadSpec),
    /// The two commits around the call, by hand: the floor of `overhead-*`.
    Floor(Load),
}

/// The shape of a load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    /// The name in reports (`e2e-0ms`, `overhead-1`, …).
    pub workload: String,
    /// Database server URL, or `sqlite`.
    pub db: String,
    /// Operations.
    pub n: u64,
    /// Concurrent clients, each with one operation in flight.
    pub clients: usize,
    /// Worker slots (calls in flight).
    pub workers: usize,
    /// Most operations per transaction.
    pub batch: usize,
    /// The gateway's latency per call, in milliseconds.
    pub latency_ms: u64,
}

impl Spec {
    /// Runs it here and returns what it measured.
    pub async fn run(&self) -> Result<WorkloadResult, BenchError> {
        match self {
            Spec::Oncely(load) => oncely_e2e(load).await,
            Spec::Direct(load) => direct(load).await,
            Spec::Queued(load) => queued(load).await,
            Spec::Limit {
                db,
                n,
                batch,
                writers,
            } => limit::run(db, *n, *batch, *writers).await,
            Spec::Naive(load) => naive::run(load).await,
            Spec::BigTable { load, retained } => crate::bigtable::run(load, *retained).await,
            Spec::Soak(spec) => crate::soak::run(spec).await,
            Spec::Upload(spec) => crate::uploads::run(spec).await,
            Spec::Floor(load) => crate::floor::run(load).await,
        }
    }
}

fn engine_config(load: &Load) -> EngineConfig {
    EngineConfig {
        workers: load.workers,
        batch_size_max: load.batch,
        retention: None,
        ..EngineConfig::default()
    }
}

pub(crate) type Observed = Arc<Finishes<OperationId, OperationState>>;

/// Waits until oncely has finalized operation `id` (`what`, for the error): `Ok` when it
/// completed.
pub(crate) async fn completed(
    finishes: &Observed,
    id: OperationId,
    what: &str,
) -> Result<(), String> {
    match finishes.wait(id, OPERATION_TIMEOUT).await? {
        OperationState::Completed => Ok(()),
        state => Err(format!("{what} ended {state}")),
    }
}

/// Starts an engine for `orchestrator` on `scratch`, reporting each operation's end.
pub(crate) async fn start_engine<O: Orchestrator>(
    load: &Load,
    scratch: &Scratch,
    orchestrator: O,
) -> Result<(Arc<Engine<AnyStore, O>>, Observed), BenchError> {
    let store = AnyStore::open(&scratch.url)
        .await
        .map_err(|e| BenchError::Setup(format!("opening {}: {e}", scratch.url)))?;
    let finishes: Observed = Arc::default();
    let observer = finishes.clone();
    let engine = Engine::builder(store, orchestrator)
        .config(engine_config(load))
        .on_terminal(move |id, state| observer.report(id, state))
        .start()
        .map_err(|e| BenchError::Setup(format!("starting the engine: {e}")))?;
    Ok((Arc::new(engine), finishes))
}

/// The payment orchestrator on the bench's gateway.
pub(crate) fn payments(gateway: &Gateway) -> PaymentOrchestrator {
    PaymentOrchestrator::new(gateway.client.clone())
}

pub(crate) async fn stop_engine<O: Orchestrator>(
    engine: Arc<Engine<AnyStore, O>>,
    grace: Duration,
) {
    match Arc::try_unwrap(engine) {
        Ok(engine) => {
            let store = engine.store().clone();
            engine.shutdown(grace).await;
            store.close().await;
        }
        Err(engine) => drop(engine),
    }
}

/// Each client submits a payment, waits until oncely has finalized it, and goes on.
async fn oncely_e2e(load: &Load) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::create(&load.db).await?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let (engine, finishes) = start_engine(load, &scratch, payments(&gateway)).await?;
    let driver = engine.clone();
    let driven = closed_loop(load.n, load.clients, move |i| {
        let engine = driver.clone();
        let finishes = finishes.clone();
        async move {
            let submitted = engine
                .submit(payment_key(i)?, payment(i)?)
                .await
                .map_err(|e| e.to_string())?;
            completed(&finishes, submitted.operation.id, &format!("payment {i}")).await
        }
    })
    .await;
    stop_engine(engine, Duration::from_secs(5)).await;
    let charges = gateway.charges().await?;
    gateway.stop();
    scratch_done(scratch).await;
    let mut result =
        WorkloadResult::from_driven(&load.workload, "oncely", backend(&load.db), load.n, &driven);
    result.lost = load.n.saturating_sub(charges);
    Ok(with_load(result, load))
}

/// The baseline of `overhead-*`: the same client calling the same gateway, no oncely.
async fn direct(load: &Load) -> Result<WorkloadResult, BenchError> {
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let client = gateway.client.clone();
    let driven = closed_loop(load.n, load.clients, move |i| {
        let client = client.clone();
        async move {
            match client.charge(&payment_key(i)?, &payment(i)?).await {
                Outcome::Ok { .. } => Ok(()),
                other => Err(format!("payment {i}: {other:?}")),
            }
        }
    })
    .await;
    let charges = gateway.charges().await?;
    gateway.stop();
    let mut result =
        WorkloadResult::from_driven(&load.workload, "direct call", "-", load.n, &driven);
    result.lost = load.n.saturating_sub(charges);
    Ok(result
        .with("clients", load.clients)
        .with("gateway latency", format!("{} ms", load.latency_ms)))
}

/// Submits `n` payments while every worker is stuck on a call that outlasts the run, and
/// reports the process's peak memory with them all queued. Latency is the accept's.
async fn queued(load: &Load) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::create(&load.db).await?;
    // Longer than the run: the first `workers` calls hang, everything else stays queued.
    let gateway = Gateway::start(Duration::from_secs(600)).await?;
    let (engine, _finishes) = start_engine(load, &scratch, payments(&gateway)).await?;
    let driver = engine.clone();
    let driven = closed_loop(load.n, load.clients, move |i| {
        let engine = driver.clone();
        async move {
            let submitted = engine
                .submit(payment_key(i)?, payment(i)?)
                .await
                .map_err(|e| e.to_string())?;
            if submitted.replayed {
                return Err(format!("payment {i} was already there"));
            }
            Ok(())
        }
    })
    .await;
    let rss = crate::stats::peak_rss_mib("self");
    let page = engine
        .list(oncely::ListFilter {
            state: Some(OperationState::Accepted),
            limit: 1,
            ..oncely::ListFilter::default()
        })
        .await
        .map_err(|e| BenchError::Setup(format!("listing: {e}")))?;
    let stored = crate::limit::count_operations(&scratch.url).await?;
    stop_engine(engine, Duration::ZERO).await;
    gateway.stop();
    scratch_done(scratch).await;
    let mut result =
        WorkloadResult::from_driven(&load.workload, "oncely", backend(&load.db), load.n, &driven);
    result.peak_rss_mib = rss;
    result.lost = load.n.saturating_sub(stored);
    if page.items.is_empty() {
        result.errors += 1;
        result.first_error = Some("nothing was left queued".to_owned());
    }
    Ok(with_load(result, load).with("measured", "accept latency; RSS with all queued"))
}

pub(crate) fn with_load(result: WorkloadResult, load: &Load) -> WorkloadResult {
    result
        .with("clients", load.clients)
        .with("workers", load.workers)
        .with("batch", load.batch)
        .with("gateway latency", format!("{} ms", load.latency_ms))
}

/// The report's name for the backend of `db`.
pub fn backend(db: &str) -> &'static str {
    crate::scratch::Backend::of(db).map_or("?", |b| b.name())
}

/// Drops a scratch database; a failure to drop is logged, not fatal.
pub async fn scratch_done(scratch: Scratch) {
    if let Err(error) = scratch.drop_database().await {
        tracing::warn!(%error, "could not drop the scratch database");
    }
}
