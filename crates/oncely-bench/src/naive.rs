//! The baseline a user would write by hand from the seed: the same tables and rows as
//! oncely, but one transaction per lifecycle step, one statement per row, and a worker
//! pool that polls for work. Correct (unique key, lease, log first), just not batched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oncely::Outcome;
use oncely_payment::{GatewayClient, PaymentCommand};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::BenchError;
use crate::drive::closed_loop;
use crate::gateway::{Finishes, Gateway, payment};
use crate::result::WorkloadResult;
use crate::scratch::{Backend, Scratch};
use crate::workload::{Load, OPERATION_TIMEOUT, scratch_done};

/// How long an idle naive worker sleeps before it polls again.
pub const POLL: Duration = Duration::from_millis(5);

type Done = Arc<Finishes<i64, Result<(), String>>>;

/// Runs `load` on PostgreSQL.
pub async fn run(load: &Load) -> Result<WorkloadResult, BenchError> {
    if Backend::of(&load.db)? != Backend::Postgres {
        return Err(BenchError::Setup(
            "the naive baseline runs on PostgreSQL only".to_owned(),
        ));
    }
    let scratch = Scratch::with_schema(&load.db).await?;
    let connections = u32::try_from(load.workers + load.clients).unwrap_or(200);
    // As long to get a connection as an operation may take: on a busy machine, 256
    // clients and the workers share these.
    let pool = PgPoolOptions::new()
        .max_connections(connections.min(90))
        .acquire_timeout(OPERATION_TIMEOUT)
        .connect(&scratch.url)
        .await
        .map_err(|e| BenchError::Setup(format!("{}: {e}", scratch.url)))?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let done: Done = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..load.workers {
        let (pool, client, done, stop) = (
            pool.clone(),
            gateway.client.clone(),
            done.clone(),
            stop.clone(),
        );
        workers.spawn(async move {
            let owner = format!("naive-{worker}");
            while !stop.load(Ordering::Relaxed) {
                match work_one(&pool, &client, &owner).await {
                    Ok(Some((id, result))) => done.report(id, result),
                    Ok(None) => tokio::time::sleep(POLL).await,
                    Err(error) => {
                        tracing::warn!(%error, "naive worker");
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        });
    }
    let (client_pool, client_done) = (pool.clone(), done.clone());
    let driven = closed_loop(load.n, load.clients, move |i| {
        let (pool, done) = (client_pool.clone(), client_done.clone());
        async move {
            let id = accept(&pool, i).await.map_err(|e| e.to_string())?;
            done.wait(id, OPERATION_TIMEOUT).await?
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    pool.close().await;
    let charges = gateway.charges().await?;
    gateway.stop();
    scratch_done(scratch).await;
    let mut result =
        WorkloadResult::from_driven(&load.workload, "naive", "postgres", load.n, &driven);
    result.lost = load.n.saturating_sub(charges);
    Ok(result
        .with("clients", load.clients)
        .with("workers", load.workers)
        .with("poll", format!("{} ms", POLL.as_millis()))
        .with("gateway latency", format!("{} ms", load.latency_ms)))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Step 1, its own transaction: the operation and its ACCEPTED entry.
async fn accept(pool: &PgPool, i: u64) -> Result<i64, sqlx::Error> {
    let command = payment(i).map_err(sqlx::Error::Protocol)?;
    let payload = json!(command);
    let fingerprint = oncely::Fingerprint::of_json(&payload);
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO oncely_operations (tenant, domain, idem_key, event_type, state, payload, \
         fingerprint, next_retry_at, created_at, updated_at) \
         VALUES ('default', 'PAYMENT', $1, 'PAYMENT_REQUESTED', 'ACCEPTED', $2, $3, $4, $4, $4) \
         RETURNING id",
    )
    .bind(format!("bench-{i}"))
    .bind(&payload)
    .bind(fingerprint.as_str())
    .bind(now())
    .fetch_one(&mut *tx)
    .await?;
    log(&mut tx, id, "ACCEPTED", 0, None, "ACCEPTED", json!({})).await?;
    tx.commit().await?;
    Ok(id)
}

/// Steps 2 to 4, one transaction each: claim, call, record, finalize.
async fn work_one(
    pool: &PgPool,
    client: &GatewayClient,
    owner: &str,
) -> Result<Option<(i64, Result<(), String>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT id, idem_key, payload::text AS payload FROM oncely_operations \
         WHERE domain = 'PAYMENT' AND state = 'ACCEPTED' AND next_retry_at <= $1 \
         ORDER BY next_retry_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(now())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let id: i64 = row.try_get("id")?;
    let key: String = row.try_get("idem_key")?;
    let payload: String = row.try_get("payload")?;
    sqlx::query(
        "UPDATE oncely_operations SET state = 'PROCESSING', attempt_count = attempt_count + 1, \
         lease_owner = $2, lease_until = $3, last_attempt_at = $4, updated_at = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(owner)
    .bind(now() + 60_000)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    log(
        &mut tx,
        id,
        "EXECUTING",
        1,
        Some(owner),
        "PROCESSING",
        json!({}),
    )
    .await?;
    tx.commit().await?;

    let outcome = match (
        oncely::IdempotencyKey::new(key.clone()),
        serde_json::from_str::<PaymentCommand>(&payload),
    ) {
        (Ok(key), Ok(command)) => client.charge(&key, &command).await,
        _ => Outcome::fail("unreadable operation"),
    };
    let data = match &outcome {
        Outcome::Ok { data } => data.clone(),
        other => return Ok(Some((id, Err(format!("{key}: {other:?}"))))),
    };

    let mut tx = pool.begin().await?;
    log(
        &mut tx,
        id,
        "OUTCOME_RECORDED",
        1,
        Some(owner),
        "PROCESSING",
        json!({ "outcome": data }),
    )
    .await?;
    sqlx::query(
        "UPDATE oncely_operations SET recorded_attempt = 1 \
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE oncely_operations SET state = 'COMPLETED', outcome_data = $2, completed_at = $3, \
         updated_at = $3, lease_owner = NULL, lease_until = NULL \
         WHERE id = $1 AND state = 'PROCESSING' AND lease_owner = $4",
    )
    .bind(id)
    .bind(serde_json::Value::Object(data))
    .bind(now())
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    log(
        &mut tx,
        id,
        "FINALIZED",
        1,
        Some(owner),
        "COMPLETED",
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Some((id, Ok(()))))
}

async fn log(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: i64,
    kind: &str,
    attempt: i32,
    owner: Option<&str>,
    state_after: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, \
         recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(kind)
    .bind(attempt)
    .bind(owner)
    .bind(state_after)
    .bind(detail)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
