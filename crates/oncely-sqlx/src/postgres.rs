//! The PostgreSQL backend, for several nodes sharing the work.
//!
//! Every lifecycle write is one statement (a data-modifying `WITH`), so a batch costs one
//! round trip. Claims take rows with `FOR UPDATE SKIP LOCKED`, so nodes never wait on each
//! other's claims and never claim the same operation twice. Every fenced write re-checks
//! its `WHERE` after waiting for a concurrent writer of its row, so a fence is exact under
//! the default `READ COMMITTED` isolation. Batches touch their rows in a fixed order (by
//! scope, by id), so two nodes' batches cannot deadlock. `LISTEN/NOTIFY` wakes idle nodes
//! when another accepts work.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgRow};
use sqlx::{Executor, Row};
use tokio::sync::Notify;

use crate::OpenError;
use crate::backend::impl_backend;
use crate::dialect::{Column, Dialect, Locks, Ty, each, update_from};
use crate::store::{SqlStore, connect_failed, connect_options, pool_options};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel accepts notify on (payload: the domain).
const WORK_CHANNEL: &str = "oncely_work";

/// The PostgreSQL backend of [`SqlStore`].
#[derive(Debug, Clone, Copy)]
pub struct PgBackend;

/// The PostgreSQL store.
pub type PgStore = SqlStore<PgBackend>;

const DIALECT: Dialect = Dialect {
    numbered_placeholders: true,
    writable_cte: true,
    returning: true,
    returning_prefix: "o.",
    insert_or_ignore: true,
    batch_join: "JOIN",
    locks: Locks {
        for_update: " FOR UPDATE",
        skip_locked: " FOR UPDATE SKIP LOCKED",
    },
    notify: Some(notify),
    rows,
    json_in,
    json_out,
    update: update_from,
    // sqlx takes `pg_advisory_lock` around the migrations.
    migration_lock: None,
    missing_database,
};

/// `invalid_catalog_name`: the database does not exist.
fn missing_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == "3D000")
}

impl_backend!(
    PgBackend,
    sqlx::Postgres,
    PgRow,
    "postgres",
    DIALECT,
    MIGRATOR,
    connect
);

fn rows(alias: &str, columns: &[Column]) -> String {
    let typed = each(columns, |column| {
        let ty = match column.ty {
            Ty::Int => "bigint",
            Ty::Name | Ty::Text => "text",
        };
        format!("{} {ty}", column.name)
    });
    format!("jsonb_to_recordset(?::jsonb) AS {alias}({typed})")
}

fn notify(domain: &str) -> String {
    format!("pg_notify('{WORK_CHANNEL}', {domain})")
}

/// JSON in; a JSONB column converts it on assignment.
fn json_in(expression: &str) -> String {
    format!("({expression})::json")
}

fn json_out(expression: &str) -> String {
    format!("({expression})::text")
}

/// Connects to `url` with a pool of up to 16 connections, without touching the schema.
async fn connect(url: &str) -> Result<SqlStore<PgBackend>, OpenError> {
    SqlStore::<PgBackend>::connect_with(connect_options(url)?, 16).await
}

impl SqlStore<PgBackend> {
    /// Connects with explicit options and pool size, without touching the schema.
    pub async fn connect_with(
        options: PgConnectOptions,
        connections_max: u32,
    ) -> Result<Self, OpenError> {
        let pool = pool_options::<sqlx::Postgres>(connections_max)
            .after_connect(plan_as_autovacuum_allows)
            .connect_with(options)
            .await
            .map_err(connect_failed("postgres"))?;
        let signal = Arc::new(Notify::new());
        tokio::spawn(listen(pool.clone(), Arc::downgrade(&signal)));
        Ok(Self::from_pools(pool.clone(), pool, Some(signal)))
    }
}

/// Sets a new connection's `plan_cache_mode` from the server's `autovacuum` setting.
fn plan_as_autovacuum_allows(
    connection: &mut PgConnection,
    _: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        let autovacuum: String = connection
            .fetch_one("SELECT current_setting('autovacuum')")
            .await?
            .try_get(0)?;
        let set = match plan_cache_mode(&autovacuum) {
            "auto" => "SET plan_cache_mode = auto",
            _ => "SET plan_cache_mode = force_custom_plan",
        };
        connection.execute(set).await?;
        Ok(())
    })
}

/// How a connection plans oncely's statements, given the server's `autovacuum` setting.
///
/// A generic plan is made once per connection from the statistics of that moment and
/// serves until they change. Where autovacuum keeps them current (its `ANALYZE`
/// invalidates the cached plans), reusing plans spares planning every statement again —
/// at one payment in flight, most of the database's CPU per payment. Where nothing
/// analyzes the tables, a plan made while they were small (a sequential scan) would serve
/// for the connection's life, so each statement is planned for the tables as they are.
fn plan_cache_mode(autovacuum: &str) -> &'static str {
    if autovacuum.eq_ignore_ascii_case("on") {
        "auto"
    } else {
        "force_custom_plan"
    }
}

/// Wakes idle engines when any node accepts work: a `LISTEN` connection of its own,
/// re-established when it drops, until the last clone of the store is gone.
async fn listen(pool: PgPool, signal: Weak<Notify>) {
    while signal.strong_count() > 0 && !pool.is_closed() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection failed; idle nodes fall back to polling");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(WORK_CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; idle nodes fall back to polling");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            let received = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
            let Some(notify) = signal.upgrade() else {
                return;
            };
            match received {
                Ok(Ok(_)) => notify.notify_waiters(),
                Ok(Err(_)) => break,
                Err(_elapsed) if pool.is_closed() => return,
                Err(_elapsed) => {}
            }
        }
    }
}

#[cfg(test)]
mod plans {
    //! The statements an operator's overview and the engine's gauges run often must read
    //! indexes, never the whole table: checked against PostgreSQL's own plans over a
    //! table of 60,000 finished operations and a log of 60,000 entries.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{ConnectOptions, Row};

    use super::*;
    use crate::backend::Param;

    /// A fresh database on the test server; `None` (a visible skip) when it is unreachable
    /// outside CI.
    async fn scratch(tag: &str) -> Option<(PgPool, String, String)> {
        let admin = std::env::var("ONCELY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&admin)
            .await
        {
            Ok(pool) => pool,
            Err(error) => {
                let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(
                    !in_ci,
                    "PostgreSQL at {admin} is unreachable under CI=true: {error}"
                );
                eprintln!("SKIPPED: PostgreSQL at {admin} is unreachable ({error})");
                return None;
            }
        };
        let name = format!("oncely_{tag}_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        let url = PgConnectOptions::from_str(&admin)
            .unwrap()
            .database(&name)
            .to_url_lossy()
            .to_string();
        Some((pool, name, url))
    }

    async fn plan(pool: &PgPool, sql: &str, params: &[Param]) -> String {
        let explain = format!("EXPLAIN {sql}");
        let mut query = sqlx::query(&explain);
        for param in params {
            query = match param {
                Param::Int(n) => query.bind(*n),
                Param::Text(text) => query.bind(text.clone()),
                other => panic!("no such parameter here: {other:?}"),
            };
        }
        let rows = query.fetch_all(pool).await.unwrap();
        rows.iter()
            .map(|row| row.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn the_overview_and_the_gauges_read_indexes_not_the_tables() {
        let Some((admin, name, url)) = scratch("plans").await else {
            return;
        };
        let store = connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        // 60,000 finished payments, a few live ones, and their log, as a service has
        // after some days; then the statistics autovacuum would gather.
        for statement in [
            "INSERT INTO oncely_operations (tenant, domain, idem_key, event_type, state, \
             payload, fingerprint, attempt_count, created_at, updated_at, completed_at) \
             SELECT 'default', 'PAYMENT', 'k' || n, 'PAYMENT_REQUESTED', \
             CASE WHEN n % 5000 = 0 THEN 'ACCEPTED' WHEN n % 5000 = 1 THEN 'PROCESSING' \
                  ELSE 'COMPLETED' END, '{}', repeat('0', 64), 1, n, n, \
             CASE WHEN n % 5000 IN (0, 1) THEN NULL ELSE n END \
             FROM generate_series(1, 60000) AS n",
            "INSERT INTO oncely_wal (operation_id, kind, attempt, state_after, detail, \
             recorded_at) SELECT n, CASE WHEN n % 1000 = 0 THEN 'REAPED' ELSE 'ACCEPTED' END, \
             0, 'ACCEPTED', '{}', n FROM generate_series(1, 60000) AS n",
            "ANALYZE oncely_operations",
            "ANALYZE oncely_wal",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        let statements = store.statements();
        let (now, since) = (Param::Int(60_001), Param::Int(59_000));
        let (tenant, domain) = (Param::Text("default".into()), Param::Text("PAYMENT".into()));
        let checked = [
            (
                "backlog",
                &statements.backlog,
                vec![now.clone(), now.clone(), now.clone(), domain.clone()],
            ),
            (
                "overview_of",
                &statements.overview_of,
                vec![
                    now.clone(),
                    now.clone(),
                    tenant.clone(),
                    domain.clone(),
                    since.clone(),
                    tenant.clone(),
                    domain.clone(),
                ],
            ),
            (
                "rescued_of",
                &statements.rescued_of,
                vec![since.clone(), tenant, domain],
            ),
        ];
        let mut scans = Vec::new();
        for (what, sql, params) in checked {
            let plan = plan(&pool, sql, &params).await;
            if plan.contains("Seq Scan") {
                scans.push(format!("{what}:\n{plan}"));
            }
        }
        pool.close().await;
        store.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
        assert!(
            scans.is_empty(),
            "whole-table scans:\n{}",
            scans.join("\n\n")
        );
    }

    #[test]
    fn plans_are_reused_only_where_autovacuum_keeps_the_statistics_current() {
        assert_eq!(plan_cache_mode("on"), "auto");
        assert_eq!(plan_cache_mode("off"), "force_custom_plan");
        assert_eq!(plan_cache_mode(""), "force_custom_plan");
    }

    #[tokio::test]
    async fn each_connection_plans_as_the_servers_autovacuum_allows() {
        let Some((admin, name, url)) = scratch("plan_mode").await else {
            return;
        };
        let store = connect(&url).await.unwrap();
        let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
            .fetch_one(&admin)
            .await
            .unwrap();
        // Every connection of the pool, not only the first one.
        let mut connections = Vec::new();
        for _ in 0..3 {
            connections.push(store.writer().acquire().await.unwrap());
        }
        for connection in &mut connections {
            let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            assert_eq!(
                mode,
                plan_cache_mode(&autovacuum),
                "autovacuum {autovacuum}"
            );
        }
        drop(connections);
        store.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
    }
}
