//! oncely's [`Store`](oncely::Store) on SQL databases, through sqlx: one implementation,
//! [`SqlStore`], with a backend for each database.
//!
//! - [`SqliteStore`] (feature `sqlite`, on by default): the embedded default, one file,
//!   nothing to install.
//! - [`PgStore`] (feature `postgres`, on by default): several nodes on one PostgreSQL
//!   database, claims with `FOR UPDATE SKIP LOCKED`, a lifecycle step per statement.
//! - [`MySqlStore`] (feature `mysql`, on by default): the same on MySQL or MariaDB ≥ 10.6.
//!
//! [`AnyStore`] picks one from a URL's scheme, for programs that take `--db`.
//!
//! Every backend keeps the same two tables, `oncely_operations` and `oncely_wal`, with
//! migrations embedded in the binary and applied by `open` (or `oncely migrate`).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = oncely_sqlx::SqliteStore::open("sqlite://oncely.db").await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `store`: [`SqlStore`], the lifecycle over any backend, written once.
//! - `sql`: every statement, with the fence (I4) and the WAL-first guard (I3), written once.
//! - `dialect`: what a backend's SQL may differ in.
//! - `backend`: what a backend supplies (its driver, its dialect), and the macro that
//!   implements it.
//! - `sqlite`, `postgres`, `mysql`: the backends: connection set-up, dialect, migrations.
//! - `batch`: the rows of each batch, as the statements read them.
//! - `rows`: turning stored columns into oncely's types, shared by every backend.

#![forbid(unsafe_code)]

mod any;
#[doc(hidden)]
pub mod backend;
mod batch;
#[doc(hidden)]
pub mod dialect;
mod keys;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod rows;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

pub use any::AnyStore;
#[cfg(feature = "mysql")]
pub use mysql::{MySqlBackend, MySqlStore};
pub use oncely::store::LIST_LIMIT_MAX;
#[cfg(feature = "postgres")]
pub use postgres::{PgBackend, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteStore};
pub use store::SqlStore;

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names a database this store does not handle.
    #[error("unsupported database URL {url:?}: expected {expected}")]
    Scheme {
        /// The URL given.
        url: String,
        /// What this store takes.
        expected: &'static str,
    },
    /// The URL could not be understood.
    #[error("invalid database URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// What was wrong with it.
        #[source]
        source: sqlx::Error,
    },
    /// The database could not be reached or created.
    #[error("cannot open the database at {url:?}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Another process held the migration lock for ten minutes.
    #[error(
        "cannot bring the schema up to date: another process held the migration lock for 10 minutes"
    )]
    MigrationLock,
    /// A migration failed.
    #[error("cannot bring the schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
