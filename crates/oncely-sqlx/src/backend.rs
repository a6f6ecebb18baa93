//! What a database backend supplies to the one [`SqlStore`](crate::SqlStore): its sqlx
//! driver, how it binds and runs a statement, how it reads a row, and its [`Dialect`].
//!
//! Everything here is the same for every backend except the types, so the implementations
//! come from one macro ([`impl_backend!`]), as sqlx's own `impl_*!` macros do: the
//! statements and the lifecycle live in `sql` and `store`, written once.

use std::future::Future;

use oncely::StoreError;

use crate::dialect::Dialect;

/// A value bound to a statement's `?`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A 64-bit integer.
    Int(i64),
    /// Text: a name, or a batch of rows as JSON.
    Text(String),
    /// A nullable integer.
    IntOpt(Option<i64>),
    /// Nullable text.
    TextOpt(Option<String>),
}

/// Where a statement runs: on the pool (a read, or one statement on its own) or inside a
/// transaction.
pub enum Exec<'a, B: Backend> {
    /// Any connection of the pool.
    Pool(&'a sqlx::Pool<B::Db>),
    /// The transaction's connection.
    Tx(&'a mut sqlx::Transaction<'static, B::Db>),
    /// One connection taken from the pool (a session lock's).
    Conn(&'a mut sqlx::pool::PoolConnection<B::Db>),
}

/// Reading a row's columns by name, the same way on every backend.
pub trait Columns {
    /// A non-null integer column.
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    /// A nullable integer column.
    fn int_opt(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// A non-null text column.
    fn text(&self, name: &str) -> Result<String, StoreError>;
    /// A nullable text column.
    fn text_opt(&self, name: &str) -> Result<Option<String>, StoreError>;
}

/// One database backend. Implemented by `impl_backend!` for SQLite, PostgreSQL and MySQL.
pub trait Backend: Send + Sync + Sized + 'static {
    /// The sqlx database.
    type Db: sqlx::Database<Connection: sqlx::migrate::Migrate> + sqlx::migrate::MigrateDatabase;
    /// Its row type.
    type Row: Columns + Send + 'static;
    /// The name in logs and errors.
    const NAME: &'static str;
    /// How its SQL differs.
    const DIALECT: Dialect;

    /// Its embedded migrations.
    fn migrator() -> &'static sqlx::migrate::Migrator;

    /// Connects to `url` without touching the schema.
    fn connect(
        url: &str,
    ) -> impl Future<Output = Result<crate::SqlStore<Self>, crate::OpenError>> + Send;

    /// Runs a statement and returns its rows.
    fn fetch_all<'a>(
        on: Exec<'a, Self>,
        sql: &'a str,
        params: Vec<Param>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send + 'a;

    /// Runs a statement and returns how many rows it changed.
    fn execute<'a>(
        on: Exec<'a, Self>,
        sql: &'a str,
        params: Vec<Param>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}

/// Implements [`Backend`] and [`Columns`] for one sqlx driver.
macro_rules! impl_backend {
    ($backend:ty, $db:ty, $row:ty, $name:literal, $dialect:expr, $migrator:expr, $connect:path) => {
        impl $backend {
            fn bound<'a>(
                sql: &'a str,
                params: Vec<$crate::backend::Param>,
            ) -> sqlx::query::Query<'a, $db, <$db as sqlx::Database>::Arguments<'a>> {
                let mut query = sqlx::query(sql);
                for param in params {
                    query = match param {
                        $crate::backend::Param::Int(value) => query.bind(value),
                        $crate::backend::Param::Text(value) => query.bind(value),
                        $crate::backend::Param::IntOpt(value) => query.bind(value),
                        $crate::backend::Param::TextOpt(value) => query.bind(value),
                    };
                }
                query
            }
        }

        impl $crate::backend::Backend for $backend {
            type Db = $db;
            type Row = $row;
            const NAME: &'static str = $name;
            const DIALECT: $crate::dialect::Dialect = $dialect;

            fn migrator() -> &'static sqlx::migrate::Migrator {
                &$migrator
            }

            fn connect(
                url: &str,
            ) -> impl std::future::Future<
                Output = Result<$crate::SqlStore<Self>, $crate::OpenError>,
            > + Send {
                $connect(url)
            }

            fn fetch_all<'a>(
                on: $crate::backend::Exec<'a, Self>,
                sql: &'a str,
                params: Vec<$crate::backend::Param>,
            ) -> impl std::future::Future<Output = Result<Vec<$row>, sqlx::Error>> + Send + 'a
            {
                async move {
                    let query = <$backend>::bound(sql, params);
                    match on {
                        $crate::backend::Exec::Pool(pool) => query.fetch_all(pool).await,
                        $crate::backend::Exec::Tx(tx) => query.fetch_all(&mut **tx).await,
                        $crate::backend::Exec::Conn(conn) => query.fetch_all(&mut **conn).await,
                    }
                }
            }

            fn execute<'a>(
                on: $crate::backend::Exec<'a, Self>,
                sql: &'a str,
                params: Vec<$crate::backend::Param>,
            ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'a {
                async move {
                    let query = <$backend>::bound(sql, params);
                    let done = match on {
                        $crate::backend::Exec::Pool(pool) => query.execute(pool).await?,
                        $crate::backend::Exec::Tx(tx) => query.execute(&mut **tx).await?,
                        $crate::backend::Exec::Conn(conn) => query.execute(&mut **conn).await?,
                    };
                    Ok(done.rows_affected())
                }
            }
        }

        impl $crate::backend::Columns for $row {
            fn int(&self, name: &str) -> Result<i64, oncely::StoreError> {
                sqlx::Row::try_get(self, name).map_err($crate::rows::database)
            }

            fn int_opt(&self, name: &str) -> Result<Option<i64>, oncely::StoreError> {
                sqlx::Row::try_get(self, name).map_err($crate::rows::database)
            }

            // Binary-collated text (MySQL's `ascii_bin` names) arrives flagged as bytes; its
            // bytes are the text, so they are read as bytes when a string is refused.
            fn text(&self, name: &str) -> Result<String, oncely::StoreError> {
                match sqlx::Row::try_get::<String, _>(self, name) {
                    Ok(text) => Ok(text),
                    Err(_) => {
                        let bytes: Vec<u8> =
                            sqlx::Row::try_get(self, name).map_err($crate::rows::database)?;
                        $crate::rows::utf8(name, bytes)
                    }
                }
            }

            fn text_opt(&self, name: &str) -> Result<Option<String>, oncely::StoreError> {
                match sqlx::Row::try_get::<Option<String>, _>(self, name) {
                    Ok(text) => Ok(text),
                    Err(_) => {
                        let bytes: Option<Vec<u8>> =
                            sqlx::Row::try_get(self, name).map_err($crate::rows::database)?;
                        bytes.map(|bytes| $crate::rows::utf8(name, bytes)).transpose()
                    }
                }
            }
        }
    };
}

pub(crate) use impl_backend;
