//! Helpers shared by the CLI's process tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The `oncely` binary, without any `ONCELY_*` setting from the caller's environment.
pub fn oncely() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oncely"));
    for (name, _) in std::env::vars() {
        if name.starts_with("ONCELY_") {
            command.env_remove(name);
        }
    }
    command
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 30 s for `GET {base}/healthz` to answer 2xx.
pub async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("{base}/healthz")).await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{base} never became healthy");
}

/// A fresh database on the test server; `None` (a visible skip) when the server is
/// unreachable outside CI.
pub async fn postgres_database() -> Option<(String, String, String)> {
    let admin = std::env::var("ONCELY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = match PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(3))
        .connect(&admin)
        .await
    {
        Ok(pool) => pool,
        Err(error) => {
            let in_ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
            assert!(
                !in_ci,
                "PostgreSQL at {admin} is unreachable under CI=true: {error}"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: PostgreSQL at {admin} is unreachable ({error})"
            );
            return None;
        }
    };
    let name = format!("oncely_chaos_{}", std::process::id());
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
    Some((admin, name, url))
}

/// Drops the database `postgres_database` made.
pub async fn drop_postgres_database(admin: &str, name: &str) {
    let pool = PgPoolOptions::new().connect(admin).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
}
