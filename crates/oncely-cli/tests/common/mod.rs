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
    // Several tests of one binary (one process) may each want one.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("oncely_chaos_{}_{n}", std::process::id());
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

/// A child process whose log (stderr) is read line by line, so a test can learn the
/// address it bound (`--listen 127.0.0.1:0`) instead of choosing a port ahead that another
/// process may take first. Killed when dropped.
pub struct Logged {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    /// Spawns `command` with stdout discarded and stderr read.
    pub fn spawn(command: &mut Command) -> Self {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The value of `field=` on the first log line that contains `needle`, waiting up to
    /// 30 s for it; panics with the log so far if the process ends or never says it.
    pub fn field(&mut self, needle: &str, field: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => line,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    continue;
                }
                Err(_) => panic!("no {needle:?} in the log:\n{}", self.seen.join("\n")),
            };
            let found = line.contains(needle).then(|| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(field)?.strip_prefix('='))
                    .map(str::to_owned)
            });
            self.seen.push(line);
            if let Some(Some(value)) = found {
                return value;
            }
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks the uploads of a chaos report (100 sent, one in 25 to a name another writer
/// took first): all ended, none lost, none overwritten, the taken names FAILED with their
/// objects untouched; through the fault proxy when `through_s3`.
pub fn assert_uploads_clean(report: &serde_json::Value, through_s3: bool) {
    use serde_json::json;
    assert_eq!(report["uploads"], 100, "{report:#}");
    assert_eq!(report["overwritten"], json!([]), "{report:#}");
    let audit = &report["audit"]["uploads"];
    assert_eq!(audit["discrepancies"], json!([]), "{audit:#}");
    assert_eq!(audit["nonTerminal"], json!([]), "{audit:#}");
    assert_eq!(
        audit["operations"],
        json!({ "COMPLETED": 96, "FAILED": 4 }),
        "every upload but the four to taken names completed: {audit:#}"
    );
    if through_s3 {
        let requests = &report["s3Requests"];
        // A conditional create succeeds once per name: one successful PUT per completed
        // upload means nothing was written twice and nothing overwritten. A 412 is no
        // failure: the taken names are refused so, and so is an upload's own second PUT
        // when its first, sent by a worker that died or whose answer was lost, landed
        // after the look that preceded the second (the attempt then finds its object).
        assert_eq!(requests["forwarded"]["PUT 200"], 96, "{requests:#}");
    }
}
