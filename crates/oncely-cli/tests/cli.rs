//! The `oncely` binary, run as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::oncely;

#[test]
fn version_prints_the_crate_version() {
    let output = oncely().arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("oncely {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn migrate_creates_the_schema_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let url = format!("sqlite://{}", path.display());
    for _ in 0..2 {
        let output = oncely().args(["migrate", "--db", &url]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(path.exists());
}

#[test]
fn migrate_reads_the_database_from_oncely_db() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-env.db");
    let output = oncely()
        .arg("migrate")
        .env("ONCELY_DB", format!("sqlite://{}", path.display()))
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(path.exists());
}

#[test]
fn migrate_with_a_bad_url_says_why_and_exits_non_zero() {
    let output = oncely()
        .args(["migrate", "--db", "ftp://example"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
}

#[test]
fn help_explains_every_command() {
    let output = oncely().arg("--help").output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    for command in [
        "serve",
        "gateway-sim",
        "webhook-sim",
        "audit",
        "chaos",
        "bench",
        "migrate",
    ] {
        assert!(stdout.contains(command), "{command} missing from {stdout}");
    }
    assert!(stdout.contains("effectively once"), "{stdout}");
}

#[test]
fn audit_needs_a_book_to_compare_with() {
    let output = oncely()
        .args(["audit", "--db", "sqlite::memory:"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--gateway") && stderr.contains("--webhooks"),
        "{stderr}"
    );
}

#[test]
fn webhook_sim_refuses_a_secret_that_is_not_whsec() {
    let output = oncely()
        .args([
            "webhook-sim",
            "--listen",
            "127.0.0.1:0",
            "--ledger",
            "sqlite::memory:",
        ])
        .env("ONCELY_WEBHOOK_SECRET", "hunter2")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("whsec_"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the secret is not echoed: {stderr}"
    );
}
