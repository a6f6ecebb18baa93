//! A database of its own for each workload, dropped afterwards.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor};

use crate::BenchError;

/// Which database a workload runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Backend {
    /// The backend a URL names.
    pub fn of(url: &str) -> Result<Self, BenchError> {
        match url.split(':').next() {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            Some("mysql" | "mariadb") => Ok(Self::MySql),
            _ => Err(BenchError::Setup(format!(
                "unsupported database URL {url:?}: use sqlite:, postgres:// or mysql://"
            ))),
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }
}

/// A fresh, empty database on the server at `server_url` (or a SQLite file), with its
/// URL. [`Scratch::drop_database`] removes it.
pub struct Scratch {
    /// Where it is.
    pub url: String,
    /// Its backend.
    pub backend: Backend,
    server_url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// Creates it. `server_url` is `sqlite` (or any `sqlite:` URL: a temporary file is
    /// used instead), or a PostgreSQL / MySQL URL whose user may create databases.
    pub async fn create(server_url: &str) -> Result<Self, BenchError> {
        let backend = Backend::of(server_url)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("oncely_bench_{}_{nanos}", std::process::id());
        let setup = |e: sqlx::Error| BenchError::Setup(format!("{server_url}: {e}"));
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()
                    .map_err(|e| BenchError::Setup(format!("temporary directory: {e}")))?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                return Ok(Self {
                    url,
                    backend,
                    server_url: server_url.to_owned(),
                    name,
                    _dir: Some(dir),
                });
            }
            Backend::Postgres | Backend::MySql => {
                admin(backend, server_url, &format!("CREATE DATABASE {name}"))
                    .await
                    .map_err(setup)?;
            }
        }
        Ok(Self {
            url: with_database(server_url, &name),
            backend,
            server_url: server_url.to_owned(),
            name,
            _dir: None,
        })
    }

    /// Creates it ([`Scratch::create`]) with oncely's schema: the same tables, indexes
    /// and triggers, for the workloads that write rows without an engine.
    pub async fn with_schema(server_url: &str) -> Result<Self, BenchError> {
        let scratch = Self::create(server_url).await?;
        oncely_sqlx::AnyStore::open(&scratch.url)
            .await
            .map_err(|e| BenchError::Setup(format!("migrating {}: {e}", scratch.url)))?
            .close()
            .await;
        Ok(scratch)
    }

    /// Drops it (SQLite: the directory goes when this is dropped).
    pub async fn drop_database(self) -> Result<(), BenchError> {
        let setup = |e: sqlx::Error| BenchError::Setup(format!("dropping {}: {e}", self.name));
        let sql = match self.backend {
            Backend::Sqlite => return Ok(()),
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Backend::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        admin(self.backend, &self.server_url, &sql)
            .await
            .map_err(setup)
    }
}

/// Runs one statement on a connection of its own to a PostgreSQL or MySQL server.
async fn admin(backend: Backend, url: &str, sql: &str) -> Result<(), sqlx::Error> {
    match backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(url).await?;
            connection.execute(sql).await?;
        }
        Backend::MySql => {
            let mut connection = sqlx::MySqlConnection::connect(url).await?;
            connection.execute(sql).await?;
        }
        Backend::Sqlite => {}
    }
    Ok(())
}

/// `url` with its database (path) replaced by `name`, query kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[test]
    fn backends_are_told_by_scheme() {
        assert_eq!(Backend::of("sqlite").ok(), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of("postgresql://h/d").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of("mariadb://h/d").ok(), Some(Backend::MySql));
        assert!(Backend::of("redis://h").is_err());
    }
}
