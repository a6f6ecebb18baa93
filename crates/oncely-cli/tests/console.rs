//! The web console in a real browser: `oncely serve` with an API key, payments left
//! FAILED, COMPLETED and waiting for a retry, then `tests/browser/console.mjs` drives
//! Debian's Chromium through playwright-core over them (see that script for the steps).
//! Needs `chromium` (or `ONCELY_CHROMIUM`), `node`, and `npm ci --prefix
//! crates/oncely-cli/tests/browser`; skipped with a message without them, except under
//! `CI=true`, where `.ci/run` installs them. `ONCELY_CONSOLE_SCREENSHOTS=docs` writes the
//! screenshots the README shows.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Logged, free_port, oncely, wait_healthy};
use serde_json::{Value, json};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Chromium and the directory of the script (with its `node_modules`), or what is missing.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("ONCELY_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set ONCELY_CHROMIUM)",
            chromium.display()
        ));
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !scripts.join("node_modules/playwright-core").exists() {
        return Err(format!(
            "playwright-core is not installed: npm ci --prefix {}",
            scripts.display()
        ));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        return Err("no node on the PATH".to_owned());
    }
    Ok((chromium, scripts))
}

/// The simulated gateway on `port`, declining every card when `decline` is `1`.
fn gateway(dir: &Path, port: u16, decline: &str) -> Logged {
    let ledger = format!("sqlite://{}", dir.join("gateway.db").display());
    let mut sim = Logged::spawn(oncely().current_dir(dir).args([
        "gateway-sim",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--ledger",
        &ledger,
        "--decline-rate",
        decline,
    ]));
    sim.field("simulated payment gateway", "url");
    sim
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// Pays order `order` (waiting up to `wait` seconds for its end) and returns its key
    /// and state.
    async fn pay(&self, order: u32, wait: u32) -> (String, String) {
        let answer: Value = self
            .http
            .post(format!("{}/v1/payments", self.base))
            .bearer_auth(&self.token)
            .header("Prefer", format!("wait={wait}"))
            .json(&json!({"orderId": order, "amount": "12.50", "paymentMethod": "CARD", "customerId": 7}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            answer["key"].as_str().unwrap().to_owned(),
            answer["state"].as_str().unwrap().to_owned(),
        )
    }

    async fn get(&self, key: &str) -> Value {
        self.http
            .get(format!("{}/v1/payments/{key}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn an_operator_logs_in_finds_retries_bulk_retries_and_cancels_in_chromium() {
    let (chromium, scripts) = match browser() {
        Ok(found) => found,
        Err(why) => {
            assert!(!in_ci(), "the browser test must run under CI=true: {why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let made = oncely()
        .args([
            "keys",
            "--db",
            &db,
            "create",
            "--tenant",
            "default",
            "--role",
            "submit,read,operate",
            "--name",
            "console test",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(made.status.success());
    let token = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let key_id = token["oncely_".len().."oncely_".len() + 16].to_owned();

    // The gateway is not up yet: the first payment's attempt cannot reach it and waits
    // five minutes for its retry.
    let gateway_port = free_port();
    let mut serve = Logged::spawn(
        oncely()
            .current_dir(dir.path())
            .args(["serve", "--db", &db, "--listen", "127.0.0.1:0"])
            .args(["--gateway-url", &format!("http://127.0.0.1:{gateway_port}")])
            .args(["--webhook-sim-listen", "127.0.0.1:0"])
            .args(["--backoff-base", "300s", "--backoff-max", "300s"])
            .args(["--poll-interval", "100ms"]),
    );
    let base = serve.field("oncely is serving", "listen");
    wait_healthy(&base).await;
    let client = Client {
        http: reqwest::Client::new(),
        base: base.clone(),
        token,
    };
    let (waiting, _) = client.pay(100, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let operation = client.get(&waiting).await;
        if operation["state"] == "ACCEPTED" && operation["attempts"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{operation}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A gateway that declines every card, then one that declines none.
    let declining = gateway(dir.path(), gateway_port, "1");
    let mut failed = Vec::new();
    for order in 1..=3 {
        let (key, state) = client.pay(order, 10).await;
        assert_eq!(state, "FAILED", "{key}");
        failed.push(key);
    }
    drop(declining);
    let _gateway = gateway(dir.path(), gateway_port, "0");
    let mut completed = Vec::new();
    for order in 4..=5 {
        let (key, state) = client.pay(order, 10).await;
        assert_eq!(state, "COMPLETED", "{key}");
        completed.push(key);
    }

    let mut script = Command::new("node");
    script
        .arg(scripts.join("console.mjs"))
        .current_dir(&scripts)
        .env("CHROMIUM", &chromium)
        .env("ONCELY_BASE", &base)
        .env("ONCELY_KEY", &client.token)
        .env("ONCELY_KEY_ID", &key_id)
        .env("ONCELY_FAILED_KEYS", failed.join(","))
        .env("ONCELY_COMPLETED_KEYS", completed.join(","))
        .env("ONCELY_WAITING_KEY", &waiting);
    if let Some(shots) = std::env::var_os("ONCELY_CONSOLE_SCREENSHOTS") {
        let shots = std::fs::canonicalize(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(shots),
        )
        .unwrap();
        script.env("ONCELY_SCREENSHOTS", shots);
    }
    let output = tokio::task::spawn_blocking(move || script.output())
        .await
        .unwrap()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the browser steps failed:\n{log}");
    assert!(log.contains("every step passed"), "{log}");

    // What the browser did is in the store: every payment ended, the waiting one
    // CANCELLED, and the actions logged under the key's id.
    for key in failed.iter().chain(&completed) {
        assert_eq!(client.get(key).await["state"], "COMPLETED", "{key}");
    }
    assert_eq!(client.get(&waiting).await["state"], "CANCELLED");
    let history: Value = client
        .http
        .get(format!("{base}/v1/payments/{}/history", failed[1]))
        .bearer_auth(&client.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retried = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["kind"] == "OPERATOR_RETRIED")
        .unwrap_or_else(|| panic!("{history}"));
    assert_eq!(retried["detail"]["by"], key_id.as_str());
}
