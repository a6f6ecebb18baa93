//! The database's own limit: the rows one completed payment leaves behind (its operation
//! and its four log entries), written straight with sqlx with the same durability, one
//! commit per operation or many per commit. No engine, no gateway: what oncely's writes
//! cost at best.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool, Postgres, QueryBuilder, Row};

use crate::BenchError;
use crate::drive::Driven;
use crate::gateway::payment;
use crate::result::WorkloadResult;
use crate::scratch::{Backend, Scratch};
use crate::workload::scratch_done;

/// Writes `n` completed payments' rows on PostgreSQL, `batch` per transaction, with
/// `writers` connections at once.
pub async fn run(
    db: &str,
    n: u64,
    batch: usize,
    writers: usize,
) -> Result<WorkloadResult, BenchError> {
    if Backend::of(db)? != Backend::Postgres {
        return Err(BenchError::Setup(
            "the raw write limit is measured on PostgreSQL only".to_owned(),
        ));
    }
    // The schema oncely would use: the same tables, indexes and trigger.
    let scratch = Scratch::with_schema(db).await?;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers).unwrap_or(64).max(1))
        .connect(&scratch.url)
        .await
        .map_err(|e| BenchError::Setup(format!("{}: {e}", scratch.url)))?;
    let batch = batch.max(1) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let pool = pool.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut driven = Driven::default();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= n {
                    return driven;
                }
                let last = (first + batch).min(n);
                let start = Instant::now();
                match write_completed(&pool, first..last).await {
                    Ok(()) => {
                        // Each operation of the batch waited for the whole commit.
                        for _ in first..last {
                            driven.latencies.record(start.elapsed());
                        }
                    }
                    Err(error) => {
                        driven.errors += last - first;
                        driven.first_error.get_or_insert(error.to_string());
                    }
                }
            }
        });
    }
    let mut total = Driven::default();
    while let Some(joined) = tasks.join_next().await {
        let driven = joined.map_err(|e| BenchError::Setup(format!("writer: {e}")))?;
        total.latencies.merge(&driven.latencies);
        total.errors += driven.errors;
        total.first_error = total.first_error.or(driven.first_error);
    }
    total.elapsed = started.elapsed();
    pool.close().await;
    let stored = count_operations(&scratch.url).await?;
    scratch_done(scratch).await;
    let system = if batch == 1 {
        "raw sqlx, commit each"
    } else {
        "raw sqlx, batched"
    };
    let mut result = WorkloadResult::from_driven("limit", system, "postgres", n, &total);
    result.lost = n.saturating_sub(stored);
    Ok(result
        .with("operations per commit", batch)
        .with("writers", writers)
        .with("rows per operation", "1 operation + 4 log entries"))
}

/// One transaction: the operations `range` as COMPLETED, with their four entries each.
async fn write_completed(pool: &PgPool, range: std::ops::Range<u64>) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = pool.begin().await?;
    let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO oncely_operations (tenant, domain, idem_key, event_type, state, payload, \
         fingerprint, attempt_count, recorded_attempt, last_attempt_at, outcome_data, \
         created_at, updated_at, completed_at) ",
    );
    insert.push_values(range.clone(), |mut row, i| {
        let payload = payment(i).map_or(json!({}), |p| json!(p));
        row.push_bind("default")
            .push_bind("PAYMENT")
            .push_bind(format!("bench-{i}"))
            .push_bind("PAYMENT_REQUESTED")
            .push_bind("COMPLETED")
            .push_bind(payload)
            .push_bind(format!("{i:064}"))
            .push_bind(1_i32)
            .push_bind(1_i32)
            .push_bind(now)
            .push_bind(json!({"transactionId": format!("txn_{i}"), "approvalCode": "A000000"}))
            .push_bind(now)
            .push_bind(now)
            .push_bind(now);
    });
    insert.push(" RETURNING id");
    let ids: Vec<i64> = insert
        .build()
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect();
    let mut wal: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, \
         recorded_at) ",
    );
    let entries = ids.iter().flat_map(|id| {
        [
            (*id, "ACCEPTED", 0, "ACCEPTED"),
            (*id, "EXECUTING", 1, "PROCESSING"),
            (*id, "OUTCOME_RECORDED", 1, "PROCESSING"),
            (*id, "FINALIZED", 1, "COMPLETED"),
        ]
    });
    wal.push_values(entries, |mut row, (id, kind, attempt, state)| {
        row.push_bind(id)
            .push_bind(kind)
            .push_bind(attempt)
            .push_bind("bench-writer")
            .push_bind(state)
            .push_bind(json!({}))
            .push_bind(now);
    });
    wal.build().execute(&mut *tx).await?;
    tx.commit().await
}

/// How many operations the database at `url` holds.
pub async fn count_operations(url: &str) -> Result<u64, BenchError> {
    const COUNT: &str = "SELECT COUNT(*) FROM oncely_operations";
    let failed = |e: sqlx::Error| BenchError::Setup(format!("counting operations: {e}"));
    let count: i64 = match Backend::of(url)? {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.map_err(failed)?;
            sqlx::query_scalar(COUNT)
                .fetch_one(&mut conn)
                .await
                .map_err(failed)?
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.map_err(failed)?;
            sqlx::query_scalar(COUNT)
                .fetch_one(&mut conn)
                .await
                .map_err(failed)?
        }
        Backend::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(url).await.map_err(failed)?;
            sqlx::query_scalar(COUNT)
                .fetch_one(&mut conn)
                .await
                .map_err(failed)?
        }
    };
    Ok(u64::try_from(count).unwrap_or(0))
}
