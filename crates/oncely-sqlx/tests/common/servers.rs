//! Databases on the local servers for tests: one fresh database per test, dropped after.
//! An unreachable server skips the test with a message, except under `CI=true`, where it
//! fails: CI must never pass by skipping.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use oncely_sqlx::PgStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

pub const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

fn unreachable(what: &str, url: &str, error: &dyn std::fmt::Display) {
    assert!(
        !in_ci(),
        "{what} at {url} is unreachable under CI=true: {error}"
    );
    // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} at {url} is unreachable ({error}); set ONCELY_TEST_{}_URL or start it",
        what.to_uppercase()
    );
}

/// A database of its own on the PostgreSQL server, dropped when this is dropped.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub options: PgConnectOptions,
}

impl PgDatabase {
    pub async fn create() -> Option<Self> {
        let admin_url =
            std::env::var("ONCELY_TEST_POSTGRES_URL").unwrap_or_else(|_| POSTGRES_DEFAULT.into());
        let connecting = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&admin_url);
        let admin = match connecting.await {
            Ok(pool) => pool,
            Err(error) => {
                unreachable("Postgres", &admin_url, &error);
                return None;
            }
        };
        let name = format!("oncely_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let options = PgConnectOptions::from_str(&admin_url)
            .unwrap()
            .database(&name);
        Some(Self {
            admin_url,
            name,
            options,
        })
    }

    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    pub async fn store(&self) -> PgStore {
        let store = PgStore::connect_with(self.options.clone(), 8)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async: a thread with a runtime of its own does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut connection = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

pub const MYSQL_DEFAULT: &str = "mysql://root@127.0.0.1:3306/test";

/// A database of its own on the MySQL / MariaDB server, dropped when this is dropped.
pub struct MySqlDatabase {
    admin_url: String,
    pub name: String,
    pub options: sqlx::mysql::MySqlConnectOptions,
}

impl MySqlDatabase {
    pub async fn create() -> Option<Self> {
        let admin_url =
            std::env::var("ONCELY_TEST_MYSQL_URL").unwrap_or_else(|_| MYSQL_DEFAULT.into());
        let connecting = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&admin_url);
        let admin = match connecting.await {
            Ok(pool) => pool,
            Err(error) => {
                unreachable("MySQL", &admin_url, &error);
                return None;
            }
        };
        let name = format!("oncely_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let options = sqlx::mysql::MySqlConnectOptions::from_str(&admin_url)
            .unwrap()
            .database(&name);
        Some(Self {
            admin_url,
            name,
            options,
        })
    }

    pub async fn store(&self) -> oncely_sqlx::MySqlStore {
        let store = oncely_sqlx::MySqlStore::connect_with(self.options.clone(), 8)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for MySqlDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut connection = sqlx::MySqlConnection::connect(&url).await?;
                // DROP DATABASE waits for every open connection's metadata locks: end them.
                let open: Vec<u64> = sqlx::query_scalar(
                    "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
                )
                .bind(&name)
                .fetch_all(&mut connection)
                .await?;
                for id in open {
                    let _ = sqlx::query(&format!("KILL {id}")).execute(&mut connection).await;
                }
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}
