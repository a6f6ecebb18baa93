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

fn stop(nodes: Nodes) {
    drop(nodes);
}

#[tokio::test]
async fn five_nodes_starting_at_once_on_a_new_sqlite_file_all_come_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("new.db").display());
    let nodes = start_at_once(&db).await;
    stop(nodes);
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, migrations("sqlite"));
}

#[tokio::test]
async fn five_nodes_starting_at_once_on_a_postgres_database_not_yet_created_all_come_up() {
    let admin = std::env::var("ONCELY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = match sqlx::PgPool::connect(&admin).await {
        Ok(pool) => pool,
        Err(error) => return skip(&format!("PostgreSQL at {admin}"), error),
    };
    let name = format!("oncely_deploy_{}", std::process::id());
    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(&drop).execute(&pool).await.unwrap();
    let db = sqlx::postgres::PgConnectOptions::from_str(&admin)
        .unwrap()
        .database(&name)
        .to_url_lossy()
        .to_string();

    let nodes = start_at_once(&db).await;
    stop(nodes);
    let created = sqlx::PgPool::connect(&db).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&created)
        .await
        .unwrap();
    created.close().await;
    sqlx::query(&drop).execute(&pool).await.unwrap();
    assert_eq!(applied as usize, migrations("postgres"));
}

#[tokio::test]
async fn five_nodes_starting_at_once_on_a_mysql_database_not_yet_created_all_come_up() {
    let admin = std::env::var("ONCELY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = match sqlx::MySqlPool::connect(&admin).await {
        Ok(pool) => pool,
        Err(error) => return skip(&format!("MySQL at {admin}"), error),
    };
    let name = format!("oncely_deploy_{}", std::process::id());
    let drop = format!("DROP DATABASE IF EXISTS {name}");
    sqlx::query(&drop).execute(&pool).await.unwrap();
    let db = sqlx::mysql::MySqlConnectOptions::from_str(&admin)
        .unwrap()
        .database(&name)
        .to_url_lossy()
        .to_string();

    let nodes = start_at_once(&db).await;
    stop(nodes);
    let created = sqlx::MySqlPool::connect(&db).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&created)
        .await
        .unwrap();
    created.close().await;
    sqlx::query(&drop).execute(&pool).await.unwrap();
    assert_eq!(applied as usize, migrations("mysql"));
}
