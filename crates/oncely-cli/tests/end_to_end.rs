//! Black box, issue by issue as a user would do it: `oncely chaos` runs `oncely gateway-sim`
//! and `oncely serve` as real processes, sends payments with duplicates and conflicting
//! bodies while SIGKILLing and restarting the service, and waits for every payment to end;
//! then the gateway is restarted on its ledger file and `oncely audit` reconciles.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use common::{free_port, oncely, wait_healthy};

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

fn find_ledger(dir: &Path) -> PathBuf {
    for entry in std::fs::read_dir(dir).unwrap() {
        let candidate = entry.unwrap().path().join("ledger.db");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("no ledger under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_repeated_sigkill_and_the_audit_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let chaos = oncely()
        .args([
            "chaos",
            "--db",
            &db,
            "--nodes",
            "1",
            "--payments",
            "512",
            "--kills",
            "6",
            "--json",
        ])
        .arg("--workdir")
        .arg(dir.path())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&chaos.stdout)
        .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&chaos.stderr)));
    eprintln!("chaos: {report}");
    assert!(chaos.status.success(), "{report:#}");
    assert_eq!(report["payments"], 512);
    assert!(
        report["requests"].as_u64().unwrap() >= 512 + 128 + 13,
        "duplicates and conflicts sent"
    );
    assert_eq!(report["kills"], 6);
    assert_eq!(report["unexpectedAnswers"], json!([]));

    // The gateway again, on the same ledger file: it survived, and `oncely audit` agrees.
    let port = free_port();
    let gateway_url = format!("http://127.0.0.1:{port}");
    let mut gateway = oncely()
        .args([
            "gateway-sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ledger",
        ])
        .arg(format!("sqlite://{}", find_ledger(dir.path()).display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&gateway_url).await;
    let audit = oncely()
        .args(["audit", "--json", "--db", &db, "--gateway", &gateway_url])
        .output()
        .unwrap();
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let audit_report: Value = serde_json::from_slice(&audit.stdout).unwrap();
    eprintln!("audit: {audit_report}");
    assert!(audit.status.success(), "{audit_report:#}");
    assert_eq!(audit_report["discrepancies"], json!([]));
    assert_eq!(audit_report["nonTerminal"], json!([]));
    let completed = audit_report["operations"]["COMPLETED"]
        .as_u64()
        .unwrap_or(0);
    let failed = audit_report["operations"]["FAILED"].as_u64().unwrap_or(0);
    assert_eq!(completed + failed, 512, "one operation per key");
    assert_eq!(
        audit_report["charges"].as_u64(),
        Some(completed),
        "one charge per completed payment"
    );
    assert!(completed > failed);
}
