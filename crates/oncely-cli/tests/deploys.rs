//! Deploys: several nodes started at the same moment on a database that does not exist
//! yet all come up, on every backend (one creates it, one migrates it, the others wait).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::oncely;
use sqlx::ConnectOptions;

const NODES: usize = 5;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

fn skip(what: &str, error: impl std::fmt::Display) {
    assert!(!in_ci(), "{what} is unreachable under CI=true: {error}");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} is unreachable ({error})"
    );
}

/// How many migrations the binary embeds, per backend directory.
fn migrations(backend: &str) -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../oncely-sqlx/migrations");
    std::fs::read_dir(format!("{dir}/{backend}"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}

/// Running nodes, killed when dropped (also when a test fails).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `NODES` serve processes at once on `db`, each in its own directory, listening on
/// ports the system picks (no port is chosen ahead and lost to another process), and waits
/// until every one says it is serving and its `/readyz` answers, or fails with its log.
async fn start_at_once(db: &str) -> Nodes {
    let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Nodes(Vec::new());
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Option<String>, String)>();
    for (index, dir) in dirs.iter().enumerate() {
        let mut child = oncely()
            .current_dir(dir.path())
            .args(["serve", "--db", db, "--listen", "127.0.0.1:0"])
            // No provider is needed to come up: nothing is submitted.
            .args(["--gateway-url", "http://127.0.0.1:9"])
            .args(["--webhook-sim-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx = tx.clone();
        // Reads the node's log until it says where it serves (or ends), then drains it.
        std::thread::spawn(move || {
            let mut log = String::new();
            let mut told = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.push_str(&line);
                log.push('\n');
                if !told && let Some(at) = line.find("listen=http://") {
                    let url = line[at + "listen=".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    told = tx.send((index, Some(url), String::new())).is_ok();
                }
            }
            if !told {
                let _ = tx.send((index, None, log));
            }
        });
        nodes.0.push(child);
    }
    drop(tx);
    let mut urls = vec![None; NODES];
    while urls.iter().any(Option::is_none) {
        let (index, url, log) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("nodes never all served on {db}"));
        let Some(url) = url else {
            panic!("a node starting beside {NODES} others exited on {db}: {log}");
        };
        urls[index] = Some(url);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in urls.into_iter().flatten() {
        loop {
            if let Ok(response) = reqwest::get(format!("{url}/readyz")).await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never became ready on {db}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(dirs);
    nodes
}

/// How many migrations succeeded, read through `pool` (any backend's).
macro_rules! applied {
    ($pool:expr) => {{
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one($pool)
                .await
                .unwrap();
        usize::try_from(applied).unwrap()
    }};
}

#[tokio::test]
async fn five_nodes_starting_at_once_on_a_new_sqlite_file_all_come_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("new.db").display());
    drop(start_at_once(&db).await);
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    assert_eq!(applied!(&pool), migrations("sqlite"));
}

/// A test that five nodes come up at once on a database of the server at `$env` (default
/// `$default`) that does not exist yet, dropped afterwards.
macro_rules! on_a_new_database {
    ($test:ident, $pool:ty, $options:ty, $env:literal, $default:literal, $force:literal, $migrations:literal) => {
        #[tokio::test]
        async fn $test() {
            let admin = std::env::var($env).unwrap_or_else(|_| $default.into());
            let pool = match <$pool>::connect(&admin).await {
                Ok(pool) => pool,
                Err(error) => return skip(&format!("the server at {admin}"), error),
            };
            let name = format!("oncely_deploy_{}", std::process::id());
            let drop_it = format!("DROP DATABASE IF EXISTS {name}{}", $force);
            sqlx::query(&drop_it).execute(&pool).await.unwrap();
            let db = <$options>::from_str(&admin)
                .unwrap()
                .database(&name)
                .to_url_lossy()
                .to_string();

            drop(start_at_once(&db).await);
            let created = <$pool>::connect(&db).await.unwrap();
            let applied = applied!(&created);
            created.close().await;
            sqlx::query(&drop_it).execute(&pool).await.unwrap();
            assert_eq!(applied, migrations($migrations));
        }
    };
}

on_a_new_database!(
    five_nodes_starting_at_once_on_a_postgres_database_not_yet_created_all_come_up,
    sqlx::PgPool,
    sqlx::postgres::PgConnectOptions,
    "ONCELY_TEST_POSTGRES_URL",
    "postgres://postgres@127.0.0.1:5432/test",
    " WITH (FORCE)",
    "postgres"
);

on_a_new_database!(
    five_nodes_starting_at_once_on_a_mysql_database_not_yet_created_all_come_up,
    sqlx::MySqlPool,
    sqlx::mysql::MySqlConnectOptions,
    "ONCELY_TEST_MYSQL_URL",
    "mysql://root@127.0.0.1:3306/test",
    "",
    "mysql"
);
