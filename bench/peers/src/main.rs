//! `oncely-bench-peers SPEC`: runs one `oncely bench` workload on underway, apalis or DBOS and
//! prints its result as one JSON line. The job is the same as oncely's: enqueue a
//! payment, a handler that calls the same simulated gateway once with the same client,
//! and the queue marks it done; clients wait for each payment's handler before the next.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_bench::drive::closed_loop;
use oncely_bench::gateway::{Finishes, Gateway, payment, payment_key};
use oncely_bench::harness::PeerSpec;
use oncely_bench::result::WorkloadResult;
use oncely_bench::scratch::Scratch;
use oncely_bench::workload::{Load, OPERATION_TIMEOUT, scratch_done};
use oncely_bench::{BenchError, GatewayClient, Outcome};
use serde::{Deserialize, Serialize};

type Done = Arc<Finishes<u64, Result<(), String>>>;

/// The job's input: which payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pay {
    i: u64,
}

async fn charge(client: &GatewayClient, i: u64) -> Result<(), String> {
    match client.charge(&payment_key(i)?, &payment(i)?).await {
        Outcome::Ok { .. } => Ok(()),
        other => Err(format!("payment {i}: {other:?}")),
    }
}

fn setup(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

/// Waits until `done_count` reports all `n` jobs marked done by the queue itself.
async fn until_marked_done<F, Fut>(n: u64, done_count: F) -> Result<Duration, BenchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<i64, String>>,
{
    let start = Instant::now();
    loop {
        let count = done_count().await.map_err(|e| setup("counting done jobs")(&e))?;
        if u64::try_from(count).unwrap_or(0) >= n {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Setup(format!(
                "only {count} of {n} jobs marked done after 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn underway(load: &Load) -> Result<WorkloadResult, BenchError> {
    use underway::{Job, To};
    let scratch = Scratch::create(&load.db).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(load.workers + 16).unwrap_or(80).min(90))
        .connect(&scratch.url)
        .await
        .map_err(|e| setup("underway pool")(&e))?;
    underway::run_migrations(&pool)
        .await
        .map_err(|e| setup("underway migrations")(&e))?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let done: Done = Arc::default();
    let (client, reporter) = (gateway.client.clone(), done.clone());
    let job = Job::builder()
        .step(move |_cx, Pay { i }| {
            let (client, reporter) = (client.clone(), reporter.clone());
            async move {
                reporter.report(i, charge(&client, i).await);
                To::done()
            }
        })
        .name("bench-payment")
        .pool(pool.clone())
        .build()
        .await
        .map_err(|e| setup("underway job")(&e))?;
    let job = Arc::new(job);
    let mut worker = job.worker();
    worker.set_concurrency_limit(load.workers);
    let worker_task = tokio::spawn(async move { worker.run().await });
    let (enqueuer, waiter) = (job.clone(), done.clone());
    let driven = closed_loop(load.n, load.clients, move |i| {
        let (job, done) = (enqueuer.clone(), waiter.clone());
        async move {
            job.enqueue(&Pay { i }).await.map_err(|e| e.to_string())?;
            done.wait(i, OPERATION_TIMEOUT).await?
        }
    })
    .await;
    let count_pool = pool.clone();
    let tail = until_marked_done(load.n, move || {
        let pool = count_pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM underway.task WHERE state = 'succeeded'",
            )
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())
        }
    })
    .await;
    worker_task.abort();
    let charges = gateway.charges().await?;
    gateway.stop();
    pool.close().await;
    scratch_done(scratch).await;
    finish("underway", load, driven, tail, charges)
}

async fn apalis(load: &Load) -> Result<WorkloadResult, BenchError> {
    use apalis::layers::WorkerBuilderExt;
    use apalis::prelude::*;
    use apalis_postgres::{Config, PostgresStorage};
    let scratch = Scratch::create(&load.db).await?;
    let pool = apalis_postgres::PgPool::connect(&scratch.url)
        .await
        .map_err(|e| setup("apalis pool")(&e))?;
    PostgresStorage::setup(&pool)
        .await
        .map_err(|e| setup("apalis migrations")(&e))?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let done: Done = Arc::default();
    let config = Config::default()
        .queue("bench-payment")
        .batch_size(load.batch.min(load.workers).max(1));
    let backend = PostgresStorage::<Pay>::new(&pool).with_config(config);
    #[derive(Clone)]
    struct Ctx {
        client: GatewayClient,
        done: Done,
    }
    async fn handle(pay: Pay, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
        ctx.done.report(pay.i, charge(&ctx.client, pay.i).await);
        Ok(())
    }
    let worker = WorkerBuilder::new("bench-payment")
        .backend(backend.clone().with_pubsub())
        .data(Ctx {
            client: gateway.client.clone(),
            done: done.clone(),
        })
        .concurrency(load.workers)
        .parallelize(tokio::spawn)
        .build(handle);
    let waiter = done.clone();
    let count_pool = pool.clone();
    let measured = async move {
        let driven = closed_loop(load.n, load.clients, move |i| {
            let (mut backend, done) = (backend.clone(), waiter.clone());
            async move {
                backend.push(Pay { i }).await.map_err(|e| e.to_string())?;
                done.wait(i, OPERATION_TIMEOUT).await?
            }
        })
        .await;
        let tail = until_marked_done(load.n, move || {
            let pool = count_pool.clone();
            async move {
                sqlx09::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'",
                )
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())
            }
        })
        .await;
        (driven, tail)
    };
    // The worker runs beside the clients, in this task, until they are done.
    let (driven, tail) = tokio::select! {
        measured = measured => measured,
        ended = worker.run() => {
            return Err(BenchError::Setup(format!("the apalis worker stopped: {ended:?}")));
        }
    };
    let charges = gateway.charges().await?;
    gateway.stop();
    pool.close().await;
    scratch_done(scratch).await;
    finish("apalis", load, driven, tail, charges)
}

/// A charge that did not go through, as DBOS records a step's failure.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("{0}")]
struct ChargeFailed(String);

/// DBOS's connection pool: 16 won a sweep of 10, 16, 32 and 64 (e2e-0ms, 10,000 payments,
/// 256 clients: 1,261 / 1,303 / 1,090 / 803 payments/s).
const DBOS_POOL: u32 = 16;

/// DBOS Transact: a workflow of one step per payment, started directly (`run_with`) with
/// the payment's key as its workflow id, so a repeated start joins the first. Its queue
/// path measured about five times slower.
async fn dbos_workflows(load: &Load) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::create(&load.db).await?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let done: Done = Arc::default();
    let config = dbos::Config {
        max_connections: DBOS_POOL,
        app_version: Some("bench".to_owned()),
        ..dbos::Config::new("oncely-bench", scratch.url.clone())
    };
    let dbos = dbos::DBOS::new(config);
    let (client, reporter) = (gateway.client.clone(), done.clone());
    let pay = dbos
        .register_workflow("pay", move |i: u64| {
            let (client, reporter) = (client.clone(), reporter.clone());
            async move {
                let charged = dbos::step("charge", || {
                    let client = client.clone();
                    async move { charge(&client, i).await.map_err(|e| ChargeFailed(e).into()) }
                })
                .await;
                reporter.report(i, charged.as_ref().map(|_| ()).map_err(ToString::to_string));
                charged
            }
        })
        .map_err(|e| setup("dbos workflow")(&e))?;
    dbos.launch().await.map_err(|e| setup("dbos launch")(&e))?;
    let pay = Arc::new(pay);
    let driver = pay.clone();
    let driven = closed_loop(load.n, load.clients, move |i| {
        let pay = driver.clone();
        async move {
            let id = payment_key(i)?.to_string();
            let options = dbos::RunOptions {
                workflow_id: Some(&id),
                ..Default::default()
            };
            pay.run_with(i, options).await.map_err(|e| e.to_string())
        }
    })
    .await;
    let count_url = scratch.url.clone();
    let tail = until_marked_done(load.n, move || {
        let url = count_url.clone();
        async move {
            let mut connection =
                <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.map_err(|e| e.to_string())?;
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'",
            )
            .fetch_one(&mut connection)
            .await
            .map_err(|e| e.to_string())
        }
    })
    .await;
    dbos.shutdown().await;
    drop(pay);
    let charges = gateway.charges().await?;
    gateway.stop();
    scratch_done(scratch).await;
    finish("dbos", load, driven, tail, charges)
}

/// The result: throughput counts until the queue marked the last job done.
fn finish(
    system: &str,
    load: &Load,
    mut driven: oncely_bench::drive::Driven,
    tail: Result<Duration, BenchError>,
    charges: u64,
) -> Result<WorkloadResult, BenchError> {
    let tail = match tail {
        Ok(tail) => tail,
        Err(error) => {
            driven.errors += 1;
            driven.first_error.get_or_insert(error.to_string());
            Duration::ZERO
        }
    };
    driven.elapsed += tail;
    let mut result = WorkloadResult::from_driven(&load.workload, system, "postgres", load.n, &driven);
    result.lost = load.n.saturating_sub(charges);
    Ok(result
        .with("clients", load.clients)
        .with("workers", load.workers)
        .with("gateway latency", format!("{} ms", load.latency_ms)))
}

fn main() -> ExitCode {
    let Some(spec) = std::env::args().nth(1) else {
        eprintln!("usage: oncely-bench-peers SPEC (JSON, as `oncely bench` writes it)");
        return ExitCode::from(2);
    };
    let spec: PeerSpec = match serde_json::from_str(&spec) {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("error: reading the workload: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match spec.system.as_str() {
            "underway" => underway(&spec.load).await,
            "apalis" => apalis(&spec.load).await,
            "dbos" => dbos_workflows(&spec.load).await,
            other => Err(BenchError::Setup(format!("unknown peer {other:?}"))),
        }
    });
    match result.and_then(|r| serde_json::to_string(&r).map_err(|e| BenchError::Child(e.to_string()))) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
