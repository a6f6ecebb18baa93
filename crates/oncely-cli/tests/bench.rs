//! `oncely bench --quick`: every workload runs, loses nothing, and the report is written.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use common::oncely;

/// The server's URL from `variable` (or the local default), if it answers; outside CI an
/// unreachable server is skipped with a visible line, under `CI=true` it fails the test.
fn server(variable: &str, default: &str, host_port: &str) -> Option<String> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if reachable {
        return Some(url);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{url} is unreachable and CI=true"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {url} unreachable; benchmarking without it"
    );
    None
}

/// Keeps every CPU busy until dropped: the quick bench must pass on a loaded machine.
struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0_u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn quick_bench_beside_a_cpu_hog_runs_every_workload_without_losing_a_payment() {
    let _hog = CpuHog::start();
    let out = tempfile::tempdir().unwrap();
    let mut backends = vec!["sqlite"];
    let mut urls: Vec<String> = Vec::new();
    if let Some(url) = server(
        "ONCELY_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        "127.0.0.1:5432",
    ) {
        backends.push("postgres");
        urls.extend(["--postgres-url".to_owned(), url]);
    }
    if let Some(url) = server(
        "ONCELY_TEST_MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
        "127.0.0.1:3306",
    ) {
        backends.push("mysql");
        urls.extend(["--mysql-url".to_owned(), url]);
    }
    let output = oncely()
        .args(["bench", "--quick", "--keep-autovacuum"])
        .args(["--backends", &backends.join(",")])
        .args(&urls)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let json = std::fs::read_dir(out.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let stem = json.file_stem().unwrap().to_str().unwrap().to_owned();
    assert!(stem.ends_with("-quick"), "{stem}");
    assert!(out.path().join(format!("{stem}.md")).is_file());
    assert!(out.path().join(format!("{stem}.png")).is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["quick"], true);
    let results = report["results"].as_array().unwrap();
    let mut expected = vec![
        ("e2e-0ms", "sqlite"),
        ("e2e-20ms", "sqlite"),
        ("overhead-1", "sqlite"),
        ("overhead-8", "-"),
        ("http-accept", "sqlite"),
        ("queued", "sqlite"),
        ("bigtable-1k", "sqlite"),
        ("soak-closed", "sqlite"),
        ("soak-open", "sqlite"),
    ];
    if backends.contains(&"postgres") {
        expected.extend([
            ("e2e-0ms", "postgres"),
            ("limit", "postgres"),
            ("http-accept", "postgres"),
            ("sweep-20ms-w64", "postgres"),
            ("bigtable-0", "postgres"),
            ("bigtable-1k", "postgres"),
            ("soak-open", "postgres"),
            ("metrics-overhead", "postgres"),
        ]);
    }
    if backends.contains(&"mysql") {
        expected.extend([("e2e-20ms", "mysql"), ("bigtable-1k", "mysql")]);
    }
    // The uploads run against moto when there is one (always under CI, which installs it).
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci || std::env::var_os("ONCELY_MOTO_SERVER").is_some() {
        expected.extend([
            ("uploads-1k", "-"),
            ("uploads-1k", "sqlite"),
            ("uploads-1m", "-"),
            ("uploads-1m", "sqlite"),
        ]);
        assert!(
            stdout.contains("uploads-1m: added per upload on sqlite"),
            "{stdout}"
        );
    } else {
        eprintln!("SKIPPED: the uploads workloads (no ONCELY_MOTO_SERVER)");
    }
    assert!(
        results.iter().any(|r| r["workload"] == "overhead-1"
            && r["backend"] == "sqlite"
            && r["system"] == "two commits, by hand"),
        "no floor beside overhead-1 in {stdout}"
    );
    assert!(
        stdout.contains("overhead-1: added by two commits by hand on sqlite"),
        "{stdout}"
    );
    for (workload, backend) in expected {
        assert!(
            results
                .iter()
                .any(|r| r["workload"] == workload && r["backend"] == backend),
            "no {workload} on {backend} in {stdout}"
        );
    }
    for result in results {
        let workload = result["workload"].as_str().unwrap();
        if ["e2e", "overhead", "uploads", "metrics-overhead", "limit"]
            .iter()
            .any(|w| workload.starts_with(w))
        {
            assert_eq!(result["round"], 1, "one round when quick: {result}");
        }
        if workload == "metrics-overhead" && result["system"] != "oncely serve" {
            for polled in ["metrics scrapes", "console refreshes"] {
                let count = result["settings"][polled].as_str();
                assert!(
                    count.and_then(|s| s.parse::<u64>().ok()) >= Some(1),
                    "{polled}: {result}"
                );
            }
        }
        if workload.starts_with("soak") {
            assert!(
                result["timeline"].as_array().unwrap().len() >= 2,
                "{result}"
            );
        }
        if workload.starts_with("bigtable") {
            assert!(
                result["acceptLatency"]["p99_ms"].as_f64().unwrap() > 0.0,
                "{result}"
            );
        }
        assert_eq!(result["errors"], 0, "{result}");
        assert_eq!(result["lost"], 0, "{result}");
        assert_eq!(result["completed"], result["operations"], "{result}");
        assert!(result["opsPerSec"].as_f64().unwrap() > 0.0, "{result}");
    }
    assert!(
        stdout.contains("| workload | system | backend |"),
        "{stdout}"
    );
    assert!(out.path().join(format!("{stem}-soak.png")).is_file());
    assert!(out.path().join(format!("{stem}-bigtable.png")).is_file());
}

#[test]
fn bench_refuses_an_unknown_backend() {
    let output = oncely()
        .args(["bench", "--quick", "--backends", "oracle"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oracle"), "{stderr}");
}
