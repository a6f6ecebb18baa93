//! The embedded default: the store on one SQLite file.
//!
//! The file runs in WAL journal mode with `synchronous = FULL`, so a committed transaction
//! survives a crash of the process and of the machine. Writes go through one connection
//! (SQLite allows one writer at a time; queueing them in the pool instead of in SQLite's
//! busy loop keeps latency flat), so no row locks are needed; reads go through a small
//! pool of their own, which WAL mode lets run beside the writer. One `oncely` process per
//! file: for several nodes, use PostgreSQL or MySQL.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};

use crate::OpenError;
use crate::backend::impl_backend;
use crate::dialect::{Column, Dialect, Locks, each, never_missing, update_from};
use crate::store::{SqlStore, connect_failed, connect_options, pool_options};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite backend of [`SqlStore`].
#[derive(Debug, Clone, Copy)]
pub struct SqliteBackend;

/// The SQLite store.
pub type SqliteStore = SqlStore<SqliteBackend>;

const DIALECT: Dialect = Dialect {
    numbered_placeholders: false,
    writable_cte: false,
    returning: true,
    returning_prefix: "",
    insert_or_ignore: true,
    batch_join: "JOIN",
    locks: Locks {
        for_update: "",
        skip_locked: "",
    },
    notify: None,
    rows,
    json_in: as_is,
    json_out: as_is,
    update: update_from,
    // A racing migration's transaction rolls back whole; it is retried.
    migration_lock: None,
    missing_database: never_missing,
};

impl_backend!(
    SqliteBackend,
    sqlx::Sqlite,
    SqliteRow,
    "sqlite",
    DIALECT,
    MIGRATOR,
    connect
);

/// Each row object is parsed once, by `json_each` over its fields, and its fields pivoted
/// into columns: reading `value ->> 'name'` per column would turn the row back into text
/// and parse it again for every column.
fn rows(alias: &str, columns: &[Column]) -> String {
    let fields = each(columns, |column| {
        format!(
            "MAX(CASE f.key WHEN '{0}' THEN f.value END) AS {0}",
            column.name
        )
    });
    format!("(SELECT {fields} FROM json_each(?) e, json_each(e.value) f GROUP BY e.key) AS {alias}")
}

/// JSON is kept as text.
fn as_is(expression: &str) -> String {
    expression.to_owned()
}

/// Opens (creating if missing) the database at `url` (`sqlite://oncely.db`,
/// `sqlite:///var/lib/oncely.db`, `sqlite::memory:`), without touching its schema.
async fn connect(url: &str) -> Result<SqlStore<SqliteBackend>, OpenError> {
    if !url.starts_with("sqlite:") {
        return Err(OpenError::Scheme {
            url: url.to_owned(),
            expected: "sqlite://PATH or sqlite::memory:",
        });
    }
    let options = connect_options::<SqliteConnectOptions>(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = |options: SqliteConnectOptions, connections: u32| {
        pool_options::<sqlx::Sqlite>(connections)
            .min_connections(1)
            .connect_with(options)
    };
    let writer = pool(options.clone(), 1)
        .await
        .map_err(connect_failed(url))?;
    // An in-memory database lives in its one connection: readers must share it.
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let reader = if in_memory {
        writer.clone()
    } else {
        pool(options.read_only(true), 4)
            .await
            .map_err(connect_failed(url))?
    };
    Ok(SqlStore::from_pools(writer, reader, None))
}
