//! The MySQL / MariaDB (≥ 10.6) backend, for several nodes sharing the work.
//!
//! As on PostgreSQL: claims take rows with `FOR UPDATE SKIP LOCKED`, every fenced write
//! touches only rows its fence matches, and batches touch rows in a fixed order. MySQL has
//! neither `RETURNING` nor `ON CONFLICT DO NOTHING`, so a fenced write locks and reads the
//! rows its fence matches before it updates them, and an accept reads which keys exist
//! before it inserts the rest. Connections run at `READ COMMITTED`: reads see what other
//! nodes committed, and lookups of keys that do not exist yet take no gap locks, which
//! would make concurrent accepts deadlock.

use sqlx::Executor;
use sqlx::mysql::{MySqlConnectOptions, MySqlRow};

use crate::OpenError;
use crate::backend::impl_backend;
use crate::dialect::{Column, Dialect, Locks, MigrationLock, Ty, each};
use crate::store::{SqlStore, connect_failed, connect_options, pool_options};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// The MySQL / MariaDB backend of [`SqlStore`].
#[derive(Debug, Clone, Copy)]
pub struct MySqlBackend;

/// The MySQL / MariaDB store.
pub type MySqlStore = SqlStore<MySqlBackend>;

const DIALECT: Dialect = Dialect {
    numbered_placeholders: false,
    writable_cte: false,
    returning: false,
    returning_prefix: "",
    insert_or_ignore: false,
    batch_join: "STRAIGHT_JOIN",
    locks: Locks {
        for_update: " FOR UPDATE",
        skip_locked: " FOR UPDATE SKIP LOCKED",
    },
    notify: None,
    rows,
    json_in: as_is,
    json_out: as_is,
    update,
    migration_lock: Some(MigrationLock {
        acquire: "SELECT GET_LOCK('oncely.migrate', 600) AS locked",
        release: "SELECT RELEASE_LOCK('oncely.migrate') AS released",
    }),
    missing_database,
};

/// `ER_BAD_DB_ERROR`: "Unknown database".
fn missing_database(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|error| error.number() == 1049)
}

impl_backend!(
    MySqlBackend,
    sqlx::MySql,
    MySqlRow,
    "mysql",
    DIALECT,
    MIGRATOR,
    connect
);

fn rows(alias: &str, columns: &[Column]) -> String {
    let typed = each(columns, |column| {
        let ty = match column.ty {
            Ty::Int => "BIGINT",
            // The name columns' own type, so that comparisons use their indexes.
            Ty::Name => "VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin",
            Ty::Text => "LONGTEXT",
        };
        format!("{0} {ty} PATH '$.{0}'", column.name)
    });
    format!("JSON_TABLE(?, '$[*]' COLUMNS ({typed})) AS {alias}")
}

/// A JSON column takes and gives text.
fn as_is(expression: &str) -> String {
    expression.to_owned()
}

/// `UPDATE … JOIN … SET`, MySQL's form of `UPDATE … FROM`, the batch first.
fn update(assignments: &[(&str, &str)], source: &str, predicate: &str) -> String {
    let set: Vec<String> = assignments
        .iter()
        .map(|(column, value)| format!("o.{column} = {value}"))
        .collect();
    format!(
        "UPDATE {source} STRAIGHT_JOIN oncely_operations AS o ON {predicate} SET {}",
        set.join(", ")
    )
}

/// Connects to `url` with a pool of up to 16 connections, without touching the schema.
async fn connect(url: &str) -> Result<SqlStore<MySqlBackend>, OpenError> {
    SqlStore::<MySqlBackend>::connect_with(connect_options(url)?, 16).await
}

impl SqlStore<MySqlBackend> {
    /// Connects with explicit options and pool size, without touching the schema.
    pub async fn connect_with(
        options: MySqlConnectOptions,
        connections_max: u32,
    ) -> Result<Self, OpenError> {
        let pool = pool_options::<sqlx::MySql>(connections_max)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection
                        .execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_failed("mysql"))?;
        Ok(Self::from_pools(pool.clone(), pool, None))
    }
}
