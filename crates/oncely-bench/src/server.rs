//! The database servers' own settings: read for every report (a figure means little without
//! the durability it was measured with), and PostgreSQL's autovacuum turned on for a run
//! (production runs it; a test server may not) and restored after.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{Connection, Row};

use crate::scratch::Backend;

/// What to read, per backend.
const POSTGRES: &[&str] = &[
    "server_version",
    "autovacuum",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
];
const MYSQL: &[&str] = &[
    "version",
    "innodb_flush_log_at_trx_commit",
    "sync_binlog",
    "innodb_buffer_pool_size",
    "transaction_isolation",
];

/// The settings of the server at `url` that bear on durability and speed.
pub async fn settings(url: &str) -> Result<BTreeMap<String, String>, String> {
    let failed = |e: sqlx::Error| format!("reading the settings of {url}: {e}");
    let mut settings = BTreeMap::new();
    match Backend::of(url).map_err(|e| e.to_string())? {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(url).await.map_err(failed)?;
            for name in POSTGRES {
                let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                    .fetch_one(&mut connection)
                    .await
                    .map_err(failed)?;
                settings.insert((*name).to_owned(), value);
            }
        }
        Backend::MySql => {
            let mut connection = sqlx::MySqlConnection::connect(url).await.map_err(failed)?;
            for name in MYSQL {
                let row = sqlx::query(&format!("SELECT CAST(@@{name} AS CHAR)"))
                    .fetch_one(&mut connection)
                    .await;
                // MariaDB says tx_isolation where MySQL says transaction_isolation.
                if let Ok(row) = row {
                    let value: Option<String> = row.try_get(0).map_err(failed)?;
                    settings.insert((*name).to_owned(), value.unwrap_or_default());
                }
            }
        }
        Backend::Sqlite => {
            settings.insert("journal_mode".to_owned(), "wal".to_owned());
            settings.insert("synchronous".to_owned(), "full".to_owned());
        }
    }
    Ok(settings)
}

/// Sets PostgreSQL's autovacuum for the whole server (`ALTER SYSTEM`, then a reload) and
/// waits until new sessions see it. `None` resets it to the configuration file's value.
pub async fn set_autovacuum(url: &str, on: Option<bool>) -> Result<(), String> {
    let failed = |e: sqlx::Error| format!("setting autovacuum on {url}: {e}");
    let mut connection = sqlx::PgConnection::connect(url).await.map_err(failed)?;
    let statement = match on {
        Some(true) => "ALTER SYSTEM SET autovacuum = on",
        Some(false) => "ALTER SYSTEM SET autovacuum = off",
        None => "ALTER SYSTEM RESET autovacuum",
    };
    sqlx::query(statement)
        .execute(&mut connection)
        .await
        .map_err(failed)?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut connection)
        .await
        .map_err(failed)?;
    connection.close().await.map_err(failed)?;
    let Some(wanted) = on else {
        return Ok(());
    };
    let wanted = if wanted { "on" } else { "off" };
    for _ in 0..50 {
        let mut connection = sqlx::PgConnection::connect(url).await.map_err(failed)?;
        let now: String = sqlx::query_scalar("SHOW autovacuum")
            .fetch_one(&mut connection)
            .await
            .map_err(failed)?;
        if now == wanted {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("autovacuum did not become {wanted} on {url}"))
}
