//! Helpers shared by the CLI's process tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

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
