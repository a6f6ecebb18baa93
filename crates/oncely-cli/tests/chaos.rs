//! `oncely chaos` on PostgreSQL and MySQL, three nodes each: payments, notifications and
//! uploads (to moto behind a fault proxy), random SIGKILLs, pauses past the lease, cut
//! database connections and a lying gateway, then a clean audit of every book. (SQLite, one node: end_to_end.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use common::{oncely, postgres_database};

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};

/// How to restart the local PostgreSQL server, where this run may: under CI=true, as root
/// on the machine that runs it (pg_ctlcluster), against the default local server.
fn postgres_restart() -> Option<String> {
    let in_ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
    let local = std::env::var("ONCELY_TEST_POSTGRES_URL").map_or(true, |url| {
        url.contains("127.0.0.1") || url.contains("localhost")
    });
    let cluster = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .min()?;
    let tool = std::path::Path::new("/usr/bin/pg_ctlcluster").exists();
    (in_ci && local && tool)
        .then(|| format!("pg_ctlcluster --skip-systemctl-redirect {cluster} main restart"))
}

/// How to restart the local MariaDB server, where this run may: under CI=true, as root on
/// the machine that runs it, against the default local server, started as `.ci/run` starts
/// it. `mariadb-admin shutdown` returns before the server has exited: wait for it, start it
/// again, and return once it answers.
fn mariadb_restart() -> Option<String> {
    let in_ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
    let local = std::env::var("ONCELY_TEST_MYSQL_URL").map_or(true, |url| {
        url.contains("127.0.0.1") || url.contains("localhost")
    });
    let tools = [
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadb-admin",
        "/usr/bin/pgrep",
    ]
    .iter()
    .all(|tool| std::path::Path::new(tool).exists())
        && std::path::Path::new("/sbin/start-stop-daemon").exists();
    (in_ci && local && tools).then(|| {
        "mariadb-admin -h 127.0.0.1 -u root shutdown; \
         while pgrep -x mariadbd >/dev/null; do sleep 0.2; done; \
         start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; \
         for i in $(seq 1 240); do \
         mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && exit 0; sleep 0.25; done; \
         exit 1"
            .to_owned()
    })
}

/// Runs a bounded chaos round of `nodes` nodes on `url` and checks its report; restarts the
/// database server halfway when `db_restart` says how.
fn assert_clean_chaos(url: &str, nodes: usize, db_restart: Option<String>, s3: Option<&str>) {
    let nodes_flag = nodes.to_string();
    let mut chaos = oncely();
    chaos
        .args(["chaos", "--db", url, "--nodes", &nodes_flag])
        .args([
            "--payments",
            "300",
            "--notifications",
            "100",
            "--uploads",
            "100",
        ])
        .args(["--kills", "6", "--pauses", "2", "--db-faults", "2"])
        .args(["--lie-rate", "0.05", "--json"]);
    if let Some(command) = &db_restart {
        chaos.args(["--db-restart", command]);
    }
    if let Some(endpoint) = s3 {
        chaos.args(["--s3-endpoint", endpoint]);
    }
    let restarts = u64::from(db_restart.is_some());
    let output = chaos.output().unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&output.stderr)));
    eprintln!("chaos: {report}");
    assert!(output.status.success(), "{report:#}");
    let shape = (
        report["nodes"].clone(),
        report["payments"].clone(),
        report["notifications"].clone(),
        report["kills"].clone(),
    );
    assert_eq!(shape, (json!(nodes), json!(300), json!(100), json!(6)));
    assert_eq!(
        (report["pauses"].clone(), report["dbFaults"].clone()),
        (json!(2), json!(2))
    );
    assert!(report["connectionsCut"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["dbRestarts"], json!(restarts), "{report:#}");
    assert!(
        report["lies"].as_u64().unwrap() > 0,
        "the gateway lied: {report:#}"
    );
    assert!(
        report["completionRate"].as_f64().unwrap() >= 0.5,
        "{report:#}"
    );
    let audit = &report["audit"];
    for book in ["payments", "notifications"] {
        assert_eq!(audit[book]["discrepancies"], json!([]), "{book}");
        assert_eq!(audit[book]["nonTerminal"], json!([]), "{book}");
    }
    assert_eq!(audit["paymentEvents"], json!([]));
    assert_eq!(report["unexpectedAnswers"], json!([]));
    assert_eq!(report["undelivered"], json!([]));
    common::assert_uploads_clean(&report, s3.is_some());
    // Every payment that ended COMPLETED or FAILED announced it; the receiver has each
    // payment event and notification once.
    let payments = &audit["payments"]["operations"];
    let ended = payments["COMPLETED"].as_u64().unwrap() + payments["FAILED"].as_u64().unwrap_or(0);
    let delivered = audit["notifications"]["deliveries"].as_u64().unwrap();
    assert_eq!(delivered, ended + 100, "{audit:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_survive_kills_pauses_cut_connections_and_lies_with_a_clean_audit()
{
    let Some((admin, name, url)) = postgres_database().await else {
        return;
    };
    let restart = postgres_restart();
    if restart.is_none() {
        eprintln!(
            "not restarting PostgreSQL mid-run: only under CI=true, on the local server, with pg_ctlcluster"
        );
    }
    let moto = oncely_testkit::moto::Moto::start().await;
    let s3 = moto.as_ref().map(|moto| moto.endpoint.as_str());
    let result = std::panic::catch_unwind(|| assert_clean_chaos(&url, 3, restart, s3));
    common::drop_postgres_database(&admin, &name).await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_mysql_survive_kills_pauses_cut_connections_and_lies_with_a_clean_audit() {
    let admin = std::env::var("ONCELY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let connecting = MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(3))
        .connect(&admin);
    let pool = match connecting.await {
        Ok(pool) => pool,
        Err(error) => {
            let in_ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
            assert!(
                !in_ci,
                "MySQL at {admin} is unreachable under CI=true: {error}"
            );
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: MySQL at {admin} is unreachable ({error})"
            );
            return;
        }
    };
    let name = format!("oncely_chaos_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    let url = MySqlConnectOptions::from_str(&admin)
        .unwrap()
        .database(&name)
        .to_url_lossy()
        .to_string();
    let restart = mariadb_restart();
    if restart.is_none() {
        eprintln!(
            "not restarting MariaDB mid-run: only under CI=true, on the local server, with its tools"
        );
    }
    let moto = oncely_testkit::moto::Moto::start().await;
    let s3 = moto.as_ref().map(|moto| moto.endpoint.as_str());
    let result = std::panic::catch_unwind(|| assert_clean_chaos(&url, 3, restart, s3));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&pool)
        .await
        .unwrap();
    result.unwrap();
}

/// Without kills or database faults no counter is lost: the nodes' `/metrics`, summed,
/// must equal the store's terminal counts and rescues and the logs' fenced writes; the
/// pauses past the lease make rescues (and, when a call was in flight, fenced writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_chaos_round_with_pauses_equal_the_store_and_show_the_rescues() {
    let Some((admin, name, url)) = postgres_database().await else {
        return;
    };
    let chaos = tokio::task::spawn_blocking(move || {
        oncely()
            .args(["chaos", "--db", &url, "--nodes", "2"])
            .args(["--payments", "120", "--notifications", "30"])
            .args(["--kills", "0", "--pauses", "3", "--db-faults", "0"])
            .args(["--seed", "11", "--json"])
            .output()
    });
    let output = chaos.await.unwrap().unwrap();
    common::drop_postgres_database(&admin, &name).await;
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&output.stderr)));
    let metrics = &report["metrics"];
    eprintln!("chaos /metrics: {metrics}");
    assert!(output.status.success(), "{report:#}");
    assert_eq!(metrics["exact"], json!(true), "{metrics:#}");
    assert_eq!(metrics["mismatches"], json!([]), "{metrics:#}");
    let figure = |what: &str| {
        metrics["figures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|figure| figure["what"] == what)
            .unwrap_or_else(|| panic!("no {what}: {metrics:#}"))
            .clone()
    };
    let completed = figure("PAYMENT COMPLETED");
    assert!(completed["metrics"].as_u64().unwrap() > 0, "{metrics:#}");
    assert_eq!(completed["metrics"], completed["expected"]);
    let rescues = figure("rescues");
    assert!(
        rescues["metrics"].as_u64().unwrap() > 0,
        "pauses past the lease make rescues: {metrics:#}"
    );
    assert_eq!(
        figure("fenced writes")["metrics"].as_u64(),
        report["fencedWrites"].as_u64()
    );
}

#[test]
fn several_nodes_on_one_sqlite_file_are_refused() {
    let output = oncely()
        .args(["chaos", "--db", "sqlite::memory:", "--nodes", "2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("one process per file"));
}
