//! A hostile client against `oncely serve` as a process: every way in that an attacker
//! tried is a test here — no key, a stolen or revoked one, another tenant's data, key
//! squatting, bodies looser than the schema, slow and idle connections, floods, plain
//! HTTP on a TLS port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{free_port, oncely, wait_healthy};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `oncely serve` on a database of its own, killed when dropped.
struct Server {
    child: Child,
    base: String,
    port: u16,
    db: String,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sqlite_in(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("oncely.db").display())
}

/// Makes an API key on `db` and returns its token.
fn key(db: &str, tenant: &str, roles: &str) -> String {
    let output = oncely()
        .args([
            "keys", "--db", db, "create", "--tenant", tenant, "--role", roles,
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("oncely_"), "{token}");
    token
}

impl Server {
    /// Starts serve on `db` (in `dir`, kept for the server's life when given) with `args`.
    async fn start(db: &str, dir: Option<tempfile::TempDir>, args: &[&str]) -> Self {
        let port = free_port();
        let logs = tempfile::tempdir().unwrap().keep();
        let log = logs.join("serve.log");
        let child = oncely()
            .current_dir(&logs)
            .args([
                "serve",
                "--db",
                db,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args([
                "--sim-listen",
                "127.0.0.1:0",
                "--webhook-sim-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let scheme = if args.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let base = format!("{scheme}://127.0.0.1:{port}");
        if scheme == "http" {
            wait_healthy(&base).await;
        }
        Self {
            child,
            base,
            port,
            db: db.to_owned(),
            log,
            _dir: dir,
        }
    }

    /// A server on a fresh SQLite file, with keys made before it starts.
    async fn with_keys(args: &[&str], keys: &[(&str, &str)]) -> (Self, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_in(dir.path());
        let tokens = keys
            .iter()
            .map(|(tenant, roles)| key(&db, tenant, roles))
            .collect();
        (Self::start(&db, Some(dir), args).await, tokens)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn payment(order: i64, customer: i64) -> Value {
    json!({"orderId": order, "amount": "25.00", "paymentMethod": "CARD", "customerId": customer})
}

async fn problem(response: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.as_u16() >= 400 {
        assert_eq!(content_type, "application/problem+json", "{status} {body}");
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:oncely:problem:"),
            "{body}"
        );
    }
    (status, headers, body)
}

#[tokio::test]
async fn without_a_valid_key_nothing_is_served_and_roles_are_enforced() {
    let keys = [
        ("acme", "submit,read,operate"),
        ("acme", "read"),
        ("acme", "submit"),
    ];
    let (server, tokens) = Server::with_keys(&[], &keys).await;
    let (all, reader, submitter) = (&tokens[0], &tokens[1], &tokens[2]);
    let http = reqwest::Client::new();
    let list = server.url("/v1/payments?limit=1000");

    let (status, headers, body) = problem(http.get(&list).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"oncely\"");
    assert_eq!(body["type"], "urn:oncely:problem:unauthenticated");
    let forged = format!("{}x", &all[..all.len() - 1]);
    for bad in [
        "Bearer nope".to_owned(),
        format!("Basic {all}"),
        format!("Bearer {forged}"),
        "Bearer oncely_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    ] {
        let (status, headers, _) = problem(
            http.get(&list)
                .header("authorization", &bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{bad}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    let twice = http
        .get(&list)
        .header("authorization", format!("Bearer {all}"))
        .header("authorization", format!("Bearer {all}"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(twice).await.0, 401, "two Authorization headers");

    // Roles: read lists but cannot create; submit creates but cannot read.
    assert_eq!(
        http.get(&list)
            .bearer_auth(reader)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let create = |token: &str| {
        http.post(server.url("/v1/payments"))
            .bearer_auth(token)
            .header("idempotency-key", "role-1")
            .json(&payment(1, 1))
            .send()
    };
    let (status, _, body) = problem(create(reader).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), body["type"].as_str().unwrap()),
        (403, "urn:oncely:problem:forbidden")
    );
    assert_eq!(create(submitter).await.unwrap().status(), 202);
    assert_eq!(
        problem(http.get(&list).bearer_auth(submitter).send().await.unwrap())
            .await
            .0,
        403
    );
    for action in ["retry", "cancel"] {
        let url = server.url(&format!("/v1/payments/role-1/{action}"));
        assert_eq!(
            problem(http.post(&url).bearer_auth(reader).send().await.unwrap())
                .await
                .0,
            403,
            "{action}"
        );
    }
    // The service routes need no key.
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            http.get(server.url(open)).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
    assert!(!server.log().contains(&all[24..]), "a secret was logged");
}

#[tokio::test]
async fn a_key_revoked_on_the_command_line_is_refused_within_seconds() {
    let (server, tokens) = Server::with_keys(&["--keys-reload", "1s"], &[("acme", "read")]).await;
    let http = reqwest::Client::new();
    let list = server.url("/v1/payments");
    assert_eq!(
        http.get(&list)
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let id = &tokens[0]["oncely_".len().."oncely_".len() + 16];
    let revoked = oncely()
        .args(["keys", "--db", &server.db, "revoke", id])
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let started = Instant::now();
    loop {
        let status = http
            .get(&list)
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An expired key is refused too, and `keys list` shows both without any secret.
    let expired = oncely()
        .args([
            "keys",
            "--db",
            &server.db,
            "create",
            "--tenant",
            "acme",
            "--role",
            "read",
            "--expires",
            "1s",
        ])
        .output()
        .unwrap();
    let expired = String::from_utf8(expired.stdout).unwrap().trim().to_owned();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        http.get(&list)
            .bearer_auth(&expired)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let listed = oncely()
        .args(["keys", "--db", &server.db, "list", "--json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed[0]["revokedAt"].is_string() && listed[0]["lastUsedAt"].is_string());
    let text = listed.to_string();
    assert!(
        !text.contains(&tokens[0][24..]) && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_operations_and_keys_are_per_tenant() {
    let (server, tokens) = Server::with_keys(
        &[],
        &[
            ("acme", "submit,read,operate"),
            ("globex", "submit,read,operate"),
        ],
    )
    .await;
    let (acme, globex) = (&tokens[0], &tokens[1]);
    let http = reqwest::Client::new();
    let pay = |token: &str, key: Option<&str>, body: Value| {
        let mut request = http
            .post(server.url("/v1/payments"))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.header("prefer", "wait=10").send()
    };
    // The same key in two tenants is two operations.
    let a = pay(acme, Some("order-1"), payment(1, 1)).await.unwrap();
    let a: Value = a.json().await.unwrap();
    let b = pay(globex, Some("order-1"), payment(2, 2)).await.unwrap();
    assert_eq!(b.status(), 200, "a new operation, not a conflict");
    let b: Value = b.json().await.unwrap();
    assert_eq!(
        (a["tenant"].as_str(), b["tenant"].as_str()),
        (Some("acme"), Some("globex"))
    );
    assert_ne!(a["request"], b["request"]);

    // Squatting a business key in one tenant does not touch another's.
    let squat = pay(acme, Some("PAY-9-555-CARD"), payment(1, 1))
        .await
        .unwrap();
    assert_eq!(squat.status(), 200);
    let real = pay(globex, None, payment(555, 9)).await.unwrap();
    assert_eq!(
        real.status(),
        200,
        "customer 9's real order 555 in its tenant"
    );

    // Another tenant's operation is exactly as absent as one that does not exist.
    let only_acme = "only-acme";
    pay(acme, Some(only_acme), payment(3, 3)).await.unwrap();
    for path in ["", "/history"] {
        let theirs = http
            .get(server.url(&format!("/v1/payments/{only_acme}{path}")))
            .bearer_auth(globex)
            .send()
            .await
            .unwrap();
        let (status, _, theirs) = problem(theirs).await;
        let missing = http
            .get(server.url(&format!("/v1/payments/no-such{path}")))
            .bearer_auth(globex)
            .send()
            .await
            .unwrap();
        let (_, _, missing) = problem(missing).await;
        assert_eq!(status, 404);
        assert_eq!(theirs["type"], missing["type"]);
        assert_eq!(
            theirs["detail"].as_str().unwrap().replace(only_acme, "X"),
            missing["detail"].as_str().unwrap().replace("no-such", "X")
        );
    }
    for action in ["retry", "cancel"] {
        let answer = http
            .post(server.url(&format!("/v1/payments/{only_acme}/{action}")))
            .bearer_auth(globex)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "another tenant's {action}");
    }
    let listed: Value = http
        .get(server.url("/v1/payments?limit=1000"))
        .bearer_auth(globex)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert!(
        !keys.contains(&only_acme) && keys.contains(&"order-1"),
        "{keys:?}"
    );
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["tenant"] == "globex")
    );
    // A bulk action selects within its tenant only: globex's retry of everything acts on
    // its own payments and never on acme's.
    let bulk: Value = http
        .post(server.url("/v1/bulk/payments/retry?limit=1000"))
        .bearer_auth(globex)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bulk["matched"], keys.len(), "{bulk}");
    let history: Value = http
        .get(server.url(&format!("/v1/payments/{only_acme}/history")))
        .bearer_auth(acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = history["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{history}");
    assert!(
        entries.iter().all(|e| e["kind"] != "OPERATOR_RETRIED"),
        "{history}"
    );
}

/// A simulated gateway that declines every card.
struct Declining(Child, String);

impl Drop for Declining {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn declining_gateway() -> Declining {
    let port = free_port();
    let child = oncely()
        .args(["gateway-sim", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--ledger", "sqlite::memory:", "--decline-rate", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    Declining(child, url)
}

#[tokio::test]
async fn an_operators_retry_is_logged_with_its_key_and_retries_are_rate_limited() {
    let gateway = declining_gateway().await;
    // A rate of 5 a second with a burst of 5: a flood of retries gets 429s.
    let args = [
        "--gateway-url",
        gateway.1.as_str(),
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
    ];
    let (server, tokens) = Server::with_keys(&args, &[("acme", "submit,read,operate")]).await;
    let http = reqwest::Client::new();
    let declined: Value = http
        .post(server.url("/v1/payments"))
        .bearer_auth(&tokens[0])
        .header("idempotency-key", "to-retry")
        .header("prefer", "wait=10")
        .json(&payment(1, 1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(declined["state"], "FAILED", "{declined}");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let answer = http
            .post(server.url("/v1/payments/to-retry/retry"))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            let (_, headers, body) = problem(answer).await;
            assert!(headers.contains_key("retry-after"), "{headers:?}");
            assert!(headers["ratelimit"].to_str().unwrap().contains("r=0"));
            assert_eq!(headers["ratelimit-policy"], "\"per-key\";q=5;w=1");
            assert_eq!(body["type"], "urn:oncely:problem:rate-limited");
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let passed = statuses.iter().filter(|s| **s != 429).count();
    assert!(
        passed <= 6,
        "the burst, and no more, got through: {statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let history: Value = http
        .get(server.url("/v1/payments/to-retry/history"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = &tokens[0]["oncely_".len().."oncely_".len() + 16];
    let retried: Vec<&Value> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "OPERATOR_RETRIED")
        .collect();
    assert!(!retried.is_empty(), "{history}");
    assert!(
        retried.iter().all(|e| e["detail"]["by"] == *id),
        "{history}"
    );
}

#[tokio::test]
async fn the_rate_limit_holds_within_ten_percent_of_its_rate() {
    let args = ["--rate-limit", "20", "--rate-burst", "1"];
    let (server, tokens) = Server::with_keys(&args, &[("acme", "read")]).await;
    let http = reqwest::Client::new();
    let ok = Arc::new(AtomicU32::new(0));
    let limited = Arc::new(AtomicU32::new(0));
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url, token, ok, limited) = (
            http.clone(),
            server.url("/v1/payments?limit=1"),
            tokens[0].clone(),
            ok.clone(),
            limited.clone(),
        );
        clients.push(tokio::spawn(async move {
            while started.elapsed() < window {
                match http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(200) => ok.fetch_add(1, Ordering::SeqCst),
                    Ok(429) => limited.fetch_add(1, Ordering::SeqCst),
                    other => panic!("{other:?}"),
                };
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = f64::from(ok.load(Ordering::SeqCst)) / seconds;
    eprintln!(
        "rate limit 20/s: {rate:.1}/s allowed, {} refused",
        limited.load(Ordering::SeqCst)
    );
    assert!((18.0..=22.0).contains(&rate), "{rate:.1}/s");
    assert!(limited.load(Ordering::SeqCst) > 0);
}

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[tokio::test]
async fn slow_headers_slow_bodies_idle_and_surplus_connections_are_cut_off() {
    let args = [
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--max-connections",
        "4",
    ];
    let (server, tokens) = Server::with_keys(&args, &[("acme", "submit,read")]).await;
    let address = format!("127.0.0.1:{}", server.port);

    // Headers at a byte every 300 ms: cut off once the header timeout has passed.
    let slow = tokio::task::spawn_blocking({
        let address = address.clone();
        move || {
            let mut stream = TcpStream::connect(&address).unwrap();
            let started = Instant::now();
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
                if started.elapsed() > Duration::from_secs(6) {
                    break;
                }
            }
            let (_, closed) = read_until_closed(&mut stream, Duration::from_millis(200));
            (started.elapsed(), closed)
        }
    });
    let (elapsed, closed) = slow.await.unwrap();
    assert!(closed, "still open after {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(2_500),
        "cut off after {elapsed:?}"
    );

    // A body that stops coming: 408 once the body timeout has passed.
    let mut stream = TcpStream::connect(&address).unwrap();
    let request = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"orderId\":",
        tokens[0]
    );
    stream.write_all(request.as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // A kept-alive connection with nothing to do is closed after the idle timeout.
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "idle connection still open after 5 s");
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1_900) && idle_for < Duration::from_millis(3_500),
        "{idle_for:?}"
    );

    // Over the cap, a connection is closed at once; those within it are served.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut surplus = TcpStream::connect(&address).unwrap();
    let _ = surplus.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, closed) = read_until_closed(&mut surplus, Duration::from_secs(1));
    assert!(
        closed && answer.is_empty(),
        "the fifth connection was served: {answer}"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        reqwest::get(server.url("/healthz")).await.unwrap().status(),
        200,
        "slots come back"
    );
}

#[tokio::test]
async fn protected_mode_serves_loopback_only_and_refuses_a_public_listen() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_in(dir.path());
    let server = Server::start(&db, None, &[]).await;
    let created = reqwest::Client::new()
        .post(server.url("/v1/payments"))
        .header("idempotency-key", "local-1")
        .json(&payment(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        202,
        "the README's first session works without a key"
    );
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["tenant"], "default");
    assert!(server.log().contains("UNAUTHENTICATED"), "{}", server.log());
    drop(server);

    let refused = oncely()
        .current_dir(dir.path())
        .args([
            "serve",
            "--db",
            &db,
            "--listen",
            &format!("0.0.0.0:{}", free_port()),
        ])
        .args([
            "--sim-listen",
            "127.0.0.1:0",
            "--webhook-sim-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("oncely keys create"), "{stderr}");

    // Once a key exists, the same public listen is fine, and keys are required.
    let token = key(&db, "acme", "read");
    let port = free_port();
    let mut public = oncely()
        .current_dir(dir.path())
        .args(["serve", "--db", &db, "--listen", &format!("0.0.0.0:{port}")])
        .args([
            "--sim-listen",
            "127.0.0.1:0",
            "--webhook-sim-listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let anonymous = reqwest::get(format!("{base}/v1/payments")).await.unwrap();
    let keyed = reqwest::Client::new()
        .get(format!("{base}/v1/payments"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    public.kill().unwrap();
    public.wait().unwrap();
    assert_eq!(
        (anonymous.status(), keyed.status()),
        (StatusCode::UNAUTHORIZED, StatusCode::OK)
    );
}

#[tokio::test]
async fn the_findings_of_the_first_hostile_review_stay_fixed() {
    let (server, tokens) = Server::with_keys(&[], &[("acme", "submit,read")]).await;
    let http = reqwest::Client::new();
    let post = |key: Option<&str>, body: String| {
        let mut request = http
            .post(server.url("/v1/payments"))
            .bearer_auth(&tokens[0])
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let amounts = [
        r#""1e3""#,
        r#""+1.00""#,
        r#"".5""#,
        r#""1e-2""#,
        "1e3",
        "1E2",
    ];
    for (i, amount) in amounts.iter().enumerate() {
        let body = format!(
            r#"{{"orderId": {}, "amount": {amount}, "paymentMethod": "CARD", "customerId": 7}}"#,
            i + 1
        );
        let (status, _, body) =
            problem(post(Some(&format!("amount-{i}")), body).await.unwrap()).await;
        assert_eq!(status, 422, "{amount}: {body}");
    }
    let array = problem(
        post(Some("array"), r#"[30,"2.00","CARD",7,"USD"]"#.into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(array.0, 422);
    assert!(
        !array.2["detail"].as_str().unwrap().contains("struct"),
        "{}",
        array.2
    );
    let null = r#"{"orderId": 1, "amount": "1.00", "paymentMethod": "CARD", "customerId": 7, "currency": null}"#;
    assert_eq!(
        problem(post(Some("null"), null.into()).await.unwrap())
            .await
            .0,
        422
    );
    let valid = payment(1, 7).to_string();
    assert_eq!(
        problem(post(Some(""), valid.clone()).await.unwrap())
            .await
            .0,
        400,
        "an empty key"
    );
    let two = http
        .post(server.url("/v1/payments"))
        .bearer_auth(&tokens[0])
        .header("idempotency-key", "k1")
        .header("idempotency-key", "k2")
        .json(&payment(1, 7))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(two).await.0, 400, "two keys");
    for (key, order) in [("L?b#c", 40), ("L%2Fb", 41)] {
        let created = post(Some(key), payment(order, 7).to_string())
            .await
            .unwrap();
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let followed: Value = http
            .get(server.url(&location))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(followed["key"], key, "{location}");
    }
    let (status, _, _) = problem(
        http.delete(server.url("/v1/payments"))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _, _) = problem(
        http.get(server.url("/v1/payments/%ff"))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = problem(http.get(server.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let listed: Value = http
        .get(server.url("/v1/payments?limit=1000"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = listed["items"].as_array().unwrap().len();
    assert_eq!(stored, 2, "only the two valid payments were stored");
}

#[tokio::test]
async fn https_with_a_certificate_made_for_the_test() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let db = sqlite_in(dir.path());
    let token = key(&db, "acme", "read");
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ];
    let server = Server::start(&db, None, &args).await;
    let trusted = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(trusted)
        .resolve(
            "localhost",
            format!("127.0.0.1:{}", server.port).parse().unwrap(),
        )
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/payments", server.port);
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(response) = https.get(&url).bearer_auth(&token).send().await {
            answered = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered, Some(StatusCode::OK));
    let plain = reqwest::get(format!("http://127.0.0.1:{}/healthz", server.port)).await;
    assert!(plain.is_err(), "plain HTTP on the TLS port is not served");
    let mismatched = oncely()
        .args(["serve", "--db", &db, "--tls-cert", cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        mismatched.status.code(),
        Some(2),
        "a certificate without its key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_postgres_node_is_refused_by_another_within_five_seconds() {
    let Some((admin, name, url)) = common::postgres_database().await else {
        return;
    };
    let token = key(&url, "acme", "read");
    let args = ["--keys-reload", "2s"];
    let first = Server::start(&url, None, &args).await;
    let second = Server::start(&url, None, &args).await;
    let http = reqwest::Client::new();
    for node in [&first, &second] {
        let status = http
            .get(node.url("/v1/payments"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let id = &token["oncely_".len().."oncely_".len() + 16];
    let revoked = oncely()
        .args(["keys", "--db", &url, "revoke", id])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    let started = Instant::now();
    let mut refused_after = None;
    while started.elapsed() < Duration::from_secs(8) {
        let status = http
            .get(second.url("/v1/payments"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            refused_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((first, second));
    common::drop_postgres_database(&admin, &name).await;
    let refused_after = refused_after.expect("the other node still accepts the key after 8 s");
    eprintln!("revocation seen by the other node after {refused_after:?}");
    assert!(refused_after <= Duration::from_secs(5), "{refused_after:?}");
}
