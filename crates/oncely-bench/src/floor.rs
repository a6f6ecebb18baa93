//! The floor under `overhead-*`: the least any design that makes a call effectively once
//! must pay, written by hand with sqlx on oncely's own tables and with its durability —
//! one commit that records the operation (and its log) before the call, the call, and one
//! commit that records the outcome after it. No engine, no batching, no lease handling.
//!
//! This row above the direct call is what two durable commits cost on this machine's
//! disk; oncely above this row is what the engine itself adds.

use std::str::FromStr;
use std::time::Duration;

use oncely::Outcome;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::BenchError;
use crate::drive::{Driven, closed_loop};
use crate::gateway::{Gateway, payment, payment_key};
use crate::result::WorkloadResult;
use crate::scratch::{Backend, Scratch};
use crate::workload::{Load, backend, scratch_done};

/// The name of this system in reports.
pub const SYSTEM: &str = "two commits, by hand";

const ACCEPT: &str = "INSERT INTO oncely_operations (tenant, domain, idem_key, event_type, \
     state, payload, fingerprint, attempt_count, last_attempt_at, lease_owner, lease_until, \
     created_at, updated_at) \
     VALUES ('default', 'PAYMENT', $1, 'PAYMENT_REQUESTED', 'PROCESSING', $2, $3, 1, $4, \
     'floor', $5, $4, $4) RETURNING id";
const FINISH: &str = "UPDATE oncely_operations SET state = 'COMPLETED', recorded_attempt = 1, \
     outcome_data = $2, lease_owner = NULL, lease_until = NULL, updated_at = $3, \
     completed_at = $3 WHERE id = $1";
const LOG: &str = "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, \
     state_after, detail, recorded_at) VALUES ($1, $2, $3, 'floor', $4, '{}', $5), \
     ($1, $6, 1, 'floor', $7, '{}', $5)";

/// Writes one payment's lifecycle around its call, on whichever pool `$pool` is: both
/// dialects take the same statements.
macro_rules! one_payment {
    ($pool:expr, $client:expr, $i:expr) => {{
        let (pool, client, i) = ($pool, $client, $i);
        let key = payment_key(i)?;
        let command = payment(i)?;
        let now = chrono::Utc::now().timestamp_millis();
        let failed = |e: sqlx::Error| format!("payment {i}: {e}");
        let mut tx = pool.begin().await.map_err(failed)?;
        let id: i64 = sqlx::query_scalar(ACCEPT)
            .bind(key.as_str())
            .bind(json!(command))
            .bind(format!("{i:064}"))
            .bind(now)
            .bind(now + 60_000)
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(LOG)
            .bind(id)
            .bind("ACCEPTED")
            .bind(0_i32)
            .bind("ACCEPTED")
            .bind(now)
            .bind("EXECUTING")
            .bind("PROCESSING")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        let data = match client.charge(&key, &command).await {
            Outcome::Ok { data } => Value::Object(data),
            other => return Err(format!("payment {i}: {other:?}")),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let mut tx = pool.begin().await.map_err(failed)?;
        sqlx::query(FINISH)
            .bind(id)
            .bind(data)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(LOG)
            .bind(id)
            .bind("OUTCOME_RECORDED")
            .bind(1_i32)
            .bind("PROCESSING")
            .bind(now)
            .bind("FINALIZED")
            .bind("COMPLETED")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(())
    }};
}

/// Runs the closed loop of `$load` on `$pool`, one payment by hand per operation, with
/// `$gateway`'s client, and closes the pool.
macro_rules! drive {
    ($pool:ident, $load:ident, $gateway:ident) => {{
        let (client, driving) = ($gateway.client.clone(), $pool.clone());
        let driven = closed_loop($load.n, $load.clients, move |i| {
            let (pool, client) = (driving.clone(), client.clone());
            async move { one_payment!(&pool, &client, i) }
        })
        .await;
        $pool.close().await;
        driven
    }};
}

/// Runs `load` by hand on PostgreSQL or SQLite.
pub async fn run(load: &Load) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::with_schema(&load.db).await?;
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let connections = u32::try_from(load.clients).unwrap_or(64).clamp(1, 64);
    let connect_failed = |e: sqlx::Error| BenchError::Setup(format!("{}: {e}", scratch.url));
    let driven: Driven = match Backend::of(&scratch.url)? {
        Backend::Postgres => {
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .connect(&scratch.url)
                .await
                .map_err(connect_failed)?;
            drive!(pool, load, gateway)
        }
        Backend::Sqlite => {
            // As oncely opens it: WAL, every commit synced, writers waiting their turn.
            let options = SqliteConnectOptions::from_str(&scratch.url)
                .map_err(connect_failed)?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(connections)
                .connect_with(options)
                .await
                .map_err(connect_failed)?;
            drive!(pool, load, gateway)
        }
        Backend::MySql => {
            return Err(BenchError::Setup(
                "the two-commit floor runs on PostgreSQL and SQLite".to_owned(),
            ));
        }
    };
    let charges = gateway.charges().await?;
    gateway.stop();
    let stored = crate::limit::count_operations(&scratch.url).await?;
    scratch_done(scratch).await;
    let mut result =
        WorkloadResult::from_driven(&load.workload, SYSTEM, backend(&load.db), load.n, &driven);
    result.lost = load.n.saturating_sub(charges.min(stored));
    Ok(result
        .with("clients", load.clients)
        .with("gateway latency", format!("{} ms", load.latency_ms))
        .with("commits per payment", 2))
}
