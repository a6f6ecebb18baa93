//! `bigtable-*`: how oncely's cost grows with the age of its tables. A scratch database
//! is filled with `retained` finished payments (each with its four log entries, as a
//! service that ran for months keeps them until retention purges them), analyzed as
//! autovacuum would, and then the e2e-0ms load runs on it: its throughput, and the latency
//! of the accept alone (until `submit` returns: the payment is durably accepted).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

use crate::BenchError;
use crate::drive::closed_loop;
use crate::gateway::{Gateway, payment, payment_key};
use crate::result::WorkloadResult;
use crate::scratch::{Backend, Scratch};
use crate::stats::Latencies;
use crate::workload::{
    Load, backend, completed, payments, scratch_done, start_engine, stop_engine, with_load,
};

/// Rows written per fill statement.
const FILL_CHUNK: u64 = 1_000_000;

/// Fills a scratch database with `retained` finished payments, then runs `load` on it.
pub async fn run(load: &Load, retained: u64) -> Result<WorkloadResult, BenchError> {
    let scratch = Scratch::with_schema(&load.db).await?;
    let filling = Instant::now();
    fill(&scratch, retained).await?;
    let fill_seconds = filling.elapsed().as_secs_f64();
    let gateway = Gateway::start(Duration::from_millis(load.latency_ms)).await?;
    let (engine, finishes) = start_engine(load, &scratch, payments(&gateway)).await?;
    let accepts = Arc::new(Mutex::new(Latencies::new()));
    let (driver, recorder) = (engine.clone(), accepts.clone());
    let driven = closed_loop(load.n, load.clients, move |i| {
        let (engine, finishes, recorder) = (driver.clone(), finishes.clone(), recorder.clone());
        async move {
            let started = Instant::now();
            let submitted = engine
                .submit(payment_key(i)?, payment(i)?)
                .await
                .map_err(|e| e.to_string())?;
            recorder
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(started.elapsed());
            completed(&finishes, submitted.operation.id, &format!("payment {i}")).await
        }
    })
    .await;
    stop_engine(engine, Duration::from_secs(5)).await;
    let charges = gateway.charges().await?;
    gateway.stop();
    scratch_done(scratch).await;
    let workload = format!("bigtable-{}", size_label(retained));
    let mut result =
        WorkloadResult::from_driven(&workload, "oncely", backend(&load.db), load.n, &driven);
    result.lost = load.n.saturating_sub(charges);
    let accepts = accepts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .summary();
    result.accept_latency = Some(accepts);
    Ok(with_load(result, load)
        .with("retained", retained)
        .with("fill seconds", format!("{fill_seconds:.0}")))
}

/// `0`, `1k`, `1M`, `10M`.
pub fn size_label(retained: u64) -> String {
    match retained {
        0 => "0".to_owned(),
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// Writes `retained` finished payments and their log, a chunk per statement, then
/// analyzes the tables.
async fn fill(scratch: &Scratch, retained: u64) -> Result<(), BenchError> {
    if retained == 0 {
        return Ok(());
    }
    let failed = |e: sqlx::Error| BenchError::Setup(format!("filling {}: {e}", scratch.url));
    // A day ago: finished, not yet due for purging.
    let at = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let mut first = 1;
    while first <= retained {
        let last = (first + FILL_CHUNK - 1).min(retained);
        let (operations, log) = statements(scratch.backend, first, last, at);
        run_all(scratch, &[operations, log]).await.map_err(failed)?;
        first = last + 1;
    }
    let analyze = match scratch.backend {
        Backend::Postgres => "ANALYZE oncely_operations, oncely_wal",
        Backend::MySql => "ANALYZE TABLE oncely_operations, oncely_wal",
        Backend::Sqlite => "ANALYZE",
    };
    run_all(scratch, &[analyze.to_owned()])
        .await
        .map_err(failed)
}

/// The two statements that write payments `first..=last` and their log entries.
fn statements(backend: Backend, first: u64, last: u64, at: i64) -> (String, String) {
    let payload =
        r#"{"amount":"10.00","currency":"USD","customerId":1,"orderId":1,"paymentMethod":"CARD"}"#;
    let outcome =
        r#"{"amount":"10.00","approvalCode":"A000000","currency":"USD","transactionId":"txn_0"}"#;
    let numbers = match backend {
        Backend::Postgres => format!("generate_series({first}, {last}) AS g(x)"),
        Backend::Sqlite | Backend::MySql => format!(
            "(WITH RECURSIVE s(x) AS (SELECT {first} UNION ALL SELECT x + 1 FROM s \
             WHERE x < {last}) SELECT x FROM s) AS g"
        ),
    };
    let key = match backend {
        Backend::MySql => "CONCAT('old-', g.x)",
        Backend::Postgres | Backend::Sqlite => "'old-' || g.x",
    };
    let operations = format!(
        "INSERT INTO oncely_operations (tenant, domain, idem_key, event_type, state, payload, \
         fingerprint, attempt_count, recorded_attempt, last_attempt_at, outcome_data, \
         created_at, updated_at, completed_at) \
         SELECT 'default', 'PAYMENT', {key}, 'PAYMENT_REQUESTED', 'COMPLETED', '{payload}', \
         '{fingerprint}', 1, 1, {at}, '{outcome}', {at}, {at}, {at} FROM {numbers}",
        fingerprint = "0".repeat(64),
    );
    let kinds = "(SELECT 'ACCEPTED' AS kind, 0 AS attempt, 'ACCEPTED' AS state UNION ALL \
                 SELECT 'EXECUTING', 1, 'PROCESSING' UNION ALL \
                 SELECT 'OUTCOME_RECORDED', 1, 'PROCESSING' UNION ALL \
                 SELECT 'FINALIZED', 1, 'COMPLETED') AS k";
    let log = format!(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, \
         recorded_at) \
         SELECT o.id, k.kind, k.attempt, 'bench-fill', k.state, '{{}}', {at} \
         FROM oncely_operations o CROSS JOIN {kinds} \
         WHERE o.idem_key LIKE 'old-%' AND o.id >= (SELECT MIN(id) FROM oncely_operations \
             WHERE idem_key = {first_key}) \
         ORDER BY o.id, k.attempt",
        first_key = match backend {
            Backend::MySql => format!("CONCAT('old-', {first})"),
            Backend::Postgres | Backend::Sqlite => format!("'old-' || {first}"),
        },
    );
    (operations, log)
}

async fn run_all(scratch: &Scratch, statements: &[String]) -> Result<(), sqlx::Error> {
    match scratch.backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&scratch.url).await?;
            for sql in statements {
                connection.execute(sql.as_str()).await?;
            }
        }
        Backend::MySql => {
            let mut connection = sqlx::MySqlConnection::connect(&scratch.url).await?;
            // MariaDB bounds recursive queries to 1,000 rows by default.
            let _ = connection
                .execute("SET SESSION max_recursive_iterations = 100000000")
                .await;
            let _ = connection
                .execute("SET SESSION cte_max_recursion_depth = 100000000")
                .await;
            for sql in statements {
                connection.execute(sql.as_str()).await?;
            }
        }
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&scratch.url).await?;
            for sql in statements {
                connection.execute(sql.as_str()).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_labelled_as_people_write_them() {
        assert_eq!(size_label(0), "0");
        assert_eq!(size_label(1_000), "1k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(10_000_000), "10M");
        assert_eq!(size_label(1_500), "1500");
    }
}
