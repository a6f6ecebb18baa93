//! `oncely new`: a domain generated into a temporary workspace — as a new crate and into
//! an existing one — compiles and its own tests pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::oncely;

/// The workspace's lockfile, so the temporary workspace resolves to the crates already
/// downloaded (the test runs offline).
fn lockfile() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock")
}

/// The target directory this test was built in: the generated crates reuse what is built.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

#[test]
fn a_generated_domain_compiles_and_passes_its_own_tests() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("Cargo.toml"),
        // Lints the new crate inherits: the generated file must pass them.
        "[workspace]\nresolver = \"3\"\nmembers = [\"app\"]\n\n[workspace.lints.rust]\nmissing_docs = \"deny\"\nunreachable_pub = \"deny\"\n",
    )
    .unwrap();
    std::fs::copy(lockfile(), root.join("Cargo.lock")).unwrap();
    // An existing crate of the user's.
    std::fs::create_dir_all(root.join("app/src")).unwrap();
    std::fs::write(
        root.join("app/Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\nserde_json = \"1\"\n",
    )
    .unwrap();
    std::fs::write(root.join("app/src/lib.rs"), "//! The user's crate.\n").unwrap();

    let new_crate = oncely()
        .args(["new", "sms", "--workspace"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        new_crate.status.success(),
        "{}",
        String::from_utf8_lossy(&new_crate.stderr)
    );
    let into = oncely()
        .args(["new", "file-upload", "--into"])
        .arg(root.join("app"))
        .output()
        .unwrap();
    assert!(
        into.status.success(),
        "{}",
        String::from_utf8_lossy(&into.stderr)
    );

    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(workspace.contains("\"app\", \"sms\""), "{workspace}");
    let sms = std::fs::read_to_string(root.join("sms/Cargo.toml")).unwrap();
    assert!(sms.contains("[lints]\nworkspace = true"), "{sms}");
    let lib = std::fs::read_to_string(root.join("app/src/lib.rs")).unwrap();
    assert!(lib.ends_with("pub mod file_upload;\n"), "{lib}");
    let manifest = std::fs::read_to_string(root.join("app/Cargo.toml")).unwrap();
    assert!(manifest.contains("serde_json = \"1\""), "kept: {manifest}");
    assert!(
        manifest.contains("oncely-reqwest = { path = "),
        "{manifest}"
    );
    let domain = std::fs::read_to_string(root.join("sms/src/sms.rs")).unwrap();
    assert!(domain.contains("impl HttpDomain for SmsOrchestrator"));

    let tested = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--offline", "--workspace", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&tested.stderr);
    let out = String::from_utf8_lossy(&tested.stdout);
    let _ = writeln!(std::io::stderr(), "{out}");
    assert!(tested.status.success(), "{log}\n{out}");
    for test in [
        "sms::tests::a_request_calls_the_api_once_with_its_key ... ok",
        "file_upload::tests::a_request_calls_the_api_once_with_its_key ... ok",
        "file_upload::tests::a_bad_request_is_refused_with_a_reason ... ok",
    ] {
        assert!(out.contains(test), "{test} missing from {out}");
    }
}

#[test]
fn nothing_is_overwritten_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    let first = oncely()
        .args(["new", "sms", "--workspace"])
        .arg(root)
        .output()
        .unwrap();
    assert!(first.status.success());
    let again = oncely()
        .args(["new", "sms", "--workspace"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let bad = oncely()
        .args(["new", "Bad Name", "--workspace"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a domain name"));
    let not_a_workspace = oncely()
        .args(["new", "mail", "--workspace"])
        .arg(root.join("sms"))
        .output()
        .unwrap();
    assert_eq!(not_a_workspace.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&not_a_workspace.stderr).contains("[workspace]"));
}
