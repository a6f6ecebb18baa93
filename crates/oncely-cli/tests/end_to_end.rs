//! Black box, as a user would do it: `oncely chaos` runs `oncely gateway-sim`, `oncely
//! webhook-sim` and `oncely serve` on SQLite as real processes, sends payments and
//! notifications with duplicates and conflicting bodies while SIGKILLing and restarting
//! the service, and waits for every operation to end; then both simulators are restarted
//! on their ledger files and `oncely audit` reconciles payments, notifications and payment
//! events, and uploads against the S3 server (moto, behind a fault proxy) they went to.
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

fn find_ledger(dir: &Path, name: &str) -> PathBuf {
    for entry in std::fs::read_dir(dir).unwrap() {
        let candidate = entry.unwrap().path().join(name);
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("no ledger under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_notifications_and_uploads_survive_repeated_sigkill_and_the_audit_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let moto = oncely_testkit::moto::Moto::start().await;
    let mut chaos = oncely();
    chaos.arg("chaos");
    if let Some(moto) = &moto {
        chaos.args(["--s3-endpoint", &moto.endpoint]);
    }
    let chaos = chaos
        .args([
            "--db",
            &db,
            "--nodes",
            "1",
            "--payments",
            "512",
            "--notifications",
            "128",
            "--kills",
            "6",
            "--uploads",
            "100",
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
    assert_eq!(
        (report["payments"].clone(), report["notifications"].clone()),
        (json!(512), json!(128))
    );
    assert!(
        report["requests"].as_u64().unwrap() >= 640 + 160 + 13 + 4,
        "duplicates and conflicts sent"
    );
    assert_eq!(report["kills"], 6);
    assert_eq!(report["unexpectedAnswers"], json!([]));
    common::assert_uploads_clean(&report, moto.is_some());

    // The simulators again, on the same ledger files: they survived, and `oncely audit`
    // agrees.
    let (port, hooks_port) = (free_port(), free_port());
    let gateway_url = format!("http://127.0.0.1:{port}");
    let hooks_url = format!("http://127.0.0.1:{hooks_port}");
    let mut gateway = oncely()
        .args([
            "gateway-sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ledger",
        ])
        .arg(format!(
            "sqlite://{}",
            find_ledger(dir.path(), "gateway-sim.db").display()
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut receiver = oncely()
        .args([
            "webhook-sim",
            "--listen",
            &format!("127.0.0.1:{hooks_port}"),
            "--ledger",
        ])
        .arg(format!(
            "sqlite://{}",
            find_ledger(dir.path(), "webhook-sim.db").display()
        ))
        // Only checks what arrives from now on; the audit reads what arrived before.
        .env(
            "ONCELY_WEBHOOK_SECRET",
            "whsec_b25jZWx5LWVuZC10by1lbmQtdGVzdC1zZWNyZXQtMzI=",
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(&gateway_url).await;
    wait_healthy(&hooks_url).await;
    let mut audit = oncely();
    audit.arg("audit");
    match &moto {
        Some(moto) => audit
            .args(["--s3-endpoint", &moto.endpoint])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing"),
        None => audit.args(["--uploads-dir", report["uploadsTo"].as_str().unwrap()]),
    };
    let audit = audit
        .args(["--json", "--db", &db, "--gateway", &gateway_url])
        .args(["--webhooks", &hooks_url, "--payment-events"])
        .args(["--webhook-endpoint", report["webhooks"].as_str().unwrap()])
        .output()
        .unwrap();
    for child in [&mut gateway, &mut receiver] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let audit_report: Value = serde_json::from_slice(&audit.stdout)
        .unwrap_or_else(|_| panic!("no audit: {}", String::from_utf8_lossy(&audit.stderr)));
    eprintln!("audit: {audit_report}");
    assert!(audit.status.success(), "{audit_report:#}");
    let payments = &audit_report["payments"];
    assert_eq!(payments["discrepancies"], json!([]));
    assert_eq!(payments["nonTerminal"], json!([]));
    let completed = payments["operations"]["COMPLETED"].as_u64().unwrap_or(0);
    let failed = payments["operations"]["FAILED"].as_u64().unwrap_or(0);
    assert_eq!(completed + failed, 512, "one operation per key");
    assert_eq!(
        payments["charges"].as_u64(),
        Some(completed),
        "one charge per completed payment"
    );
    assert!(completed > failed);
    let notifications = &audit_report["notifications"];
    assert_eq!(notifications["discrepancies"], json!([]));
    assert_eq!(
        notifications["operations"],
        json!({ "COMPLETED": 512 + 128 }),
        "every notification and payment event delivered"
    );
    assert_eq!(
        notifications["deliveries"],
        512 + 128,
        "once per webhook-id"
    );
    assert_eq!(audit_report["paymentEvents"], json!([]));
    let uploads = &audit_report["uploads"];
    assert_eq!(uploads["discrepancies"], json!([]), "{uploads:#}");
    assert_eq!(uploads["objectsChecked"], 100, "{uploads:#}");
}
