//! The console's server side, request by request: its files and their headers, sessions
//! opened with an API key and held in a cookie, CSRF on actions, revocation, and the
//! tenant-scoped overview the page reads. The page itself runs in Chromium in
//! `crates/oncely-cli/tests/console.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::Utc;
use oncely::{Engine, EngineConfig, KeySpec, KeyStore, Role, TenantId};
use oncely_gateway_sim::{GatewaySim, RunningSim, SimConfig};
use oncely_http::{Console, Keys, PROBLEM_JSON, Service};
use oncely_payment::{GatewayClient, GatewayTimeouts, PaymentOrchestrator};
use oncely_sqlx::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Setup {
    router: Router,
    store: SqliteStore,
    /// A key of tenant `acme` with every role, and its id.
    token: String,
    key_id: String,
    /// A key of tenant `other` that may only read.
    other: String,
    _dir: tempfile::TempDir,
    _gateway: RunningSim,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn key(store: &SqliteStore, tenant: &str, roles: Vec<Role>) -> (String, String) {
    let made = KeySpec {
        tenant: TenantId::new(tenant).unwrap(),
        roles,
        name: None,
        expires_at: None,
    }
    .issue(Utc::now())
    .unwrap();
    store.create_key(&made.key).await.unwrap();
    (made.token.clone(), made.key.id.clone())
}

async fn setup(with_keys: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("api.db").display()))
        .await
        .unwrap();
    let (token, key_id) = key(&store, "acme", Role::ALL.to_vec()).await;
    let (other, _) = key(&store, "other", vec![Role::Read]).await;
    let gateway = GatewaySim::open("sqlite::memory:", SimConfig::default())
        .await
        .unwrap()
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = GatewayClient::new(&gateway.url(), GatewayTimeouts::default()).unwrap();
    let config = EngineConfig {
        poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let engine = Engine::builder(store.clone(), PaymentOrchestrator::new(client))
        .config(config)
        .start()
        .unwrap();
    let mut builder = Service::builder()
        .console(Console::with_secret(&[9; 32]).unwrap())
        .domain(engine);
    if with_keys {
        builder = builder.keys(Keys::load(store.clone(), Duration::from_millis(100)).await);
    }
    Setup {
        router: builder.build().unwrap().router(),
        store,
        token,
        key_id,
        other,
        _dir: dir,
        _gateway: gateway,
    }
}

impl Setup {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Logs in with `token`: the cookie to send back and the CSRF token.
    async fn login(&self, token: &str) -> (String, String) {
        let answer = self
            .send(
                "POST",
                "/console/session",
                &[],
                Some(json!({ "apiKey": token })),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let set = answer.headers["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        (
            cookie,
            answer.body["csrfToken"].as_str().unwrap().to_owned(),
        )
    }
}

fn assert_problem(answer: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], PROBLEM_JSON);
    assert_eq!(
        answer.body["type"],
        format!("urn:oncely:problem:{kind}"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_allows_only_itself() {
    let setup = setup(true).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let answer = setup.send("GET", path, &[], None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        let content_type = answer.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let policy = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(answer.headers["x-frame-options"], "DENY");
        assert_eq!(answer.headers["x-content-type-options"], "nosniff");
    }
    let page = setup.send("GET", "/console", &[], None).await;
    let html = page.body.as_str().unwrap();
    assert!(html.contains("/console/console.js"));
    assert!(!html.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn a_session_acts_as_its_key_and_needs_the_csrf_token_to_act() {
    let setup = setup(true).await;
    let anonymous = setup.send("GET", "/console/session", &[], None).await;
    assert_problem(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    let wrong = setup
        .send(
            "POST",
            "/console/session",
            &[],
            Some(json!({ "apiKey": format!("oncely_{}_{}", "0".repeat(16), "A".repeat(43)) })),
        )
        .await;
    assert_problem(&wrong, StatusCode::UNAUTHORIZED, "invalid-api-key");
    assert!(!wrong.headers.contains_key("set-cookie"));
    let not_json = setup
        .send(
            "POST",
            "/console/session",
            &[],
            Some(json!({ "token": "x" })),
        )
        .await;
    assert_eq!(
        not_json.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        not_json.body
    );

    // The cookie: HttpOnly, SameSite=Strict, not Secure without TLS, and without the
    // key's secret.
    let answer = setup
        .send(
            "POST",
            "/console/session",
            &[],
            Some(json!({ "apiKey": setup.token })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let set = answer.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("oncely_session="), "{set}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let secret = &setup.token["oncely_".len() + 17..];
    assert!(!set.contains(secret));
    assert_eq!(answer.body["tenant"], "acme");
    assert_eq!(answer.body["keyId"], setup.key_id.as_str());
    let (cookie, csrf) = setup.login(&setup.token).await;
    let with_cookie = [("cookie", cookie.as_str())];

    let me = setup
        .send("GET", "/console/session", &with_cookie, None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(
        me.body["csrfToken"],
        csrf.as_str(),
        "the page gets it back after a reload"
    );
    let paid = setup
        .send(
            "POST",
            "/v1/payments",
            &[with_cookie[0], ("x-csrf-token", &csrf), ("prefer", "wait=10")],
            Some(json!({ "orderId": 1, "amount": "25.00", "paymentMethod": "CARD", "customerId": 7 })),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["tenant"], "acme");
    let key = paid.body["key"].as_str().unwrap().to_owned();
    let listed = setup.send("GET", "/v1/payments", &with_cookie, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    // An action without the token, or with another, is refused before it does anything.
    let cancel = format!("/v1/payments/{key}/cancel");
    for headers in [
        vec![with_cookie[0]],
        vec![with_cookie[0], ("x-csrf-token", "not-the-token")],
    ] {
        let refused = setup.send("POST", &cancel, &headers, None).await;
        assert_problem(&refused, StatusCode::FORBIDDEN, "csrf");
    }
    let ended = setup
        .send(
            "POST",
            &cancel,
            &[with_cookie[0], ("x-csrf-token", &csrf)],
            None,
        )
        .await;
    assert_problem(&ended, StatusCode::CONFLICT, "not-cancellable");
    let history = setup
        .send(
            "GET",
            &format!("/v1/payments/{key}/history"),
            &with_cookie,
            None,
        )
        .await;
    let kinds: Vec<&str> = history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"OPERATOR_CANCELLED"), "{kinds:?}");

    // A bearer token wins over the cookie: another tenant sees none of it.
    let bearer = format!("Bearer {}", setup.other);
    let as_other = setup
        .send(
            "GET",
            "/v1/payments",
            &[with_cookie[0], ("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(as_other.body["items"], json!([]));

    // A cookie changed by hand is nobody's.
    let tampered = cookie.replace(&setup.key_id, &"f".repeat(16));
    let refused = setup
        .send("GET", "/v1/payments", &[("cookie", &tampered)], None)
        .await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "invalid-api-key");

    // Logging out clears the cookie; revoking the key ends every session of it.
    let out = setup
        .send("DELETE", "/console/session", &with_cookie, None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(
        setup
            .store
            .revoke_key(&setup.key_id, Utc::now())
            .await
            .unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = setup.send("GET", "/v1/payments", &with_cookie, None).await;
        if answer.status == StatusCode::UNAUTHORIZED {
            assert!(answer.body["detail"].as_str().unwrap().contains("revoked"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {}",
            answer.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_overview_counts_the_keys_tenant_only() {
    let setup = setup(true).await;
    let own = format!("Bearer {}", setup.token);
    let other = format!("Bearer {}", setup.other);
    for order in 1..=2 {
        let paid = setup
            .send(
                "POST",
                "/v1/payments",
                &[("authorization", &own), ("prefer", "wait=10")],
                Some(json!({ "orderId": order, "amount": "5.00", "paymentMethod": "CARD", "customerId": 7 })),
            )
            .await;
        assert_eq!(paid.body["state"], "COMPLETED", "{}", paid.body);
    }
    let mine = setup
        .send("GET", "/v1/overview", &[("authorization", &own)], None)
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(mine.body["tenant"], "acme");
    let payments = &mine.body["domains"][0];
    assert_eq!(payments["resource"], "payments");
    assert_eq!(payments["domain"], "PAYMENT");
    assert_eq!(payments["states"]["COMPLETED"], 2);
    assert_eq!(payments["states"]["CANCELLED"], 0, "every state named");
    assert_eq!(payments["ended"], 2);
    let theirs = setup
        .send(
            "GET",
            "/v1/overview?windowMinutes=60",
            &[("authorization", &other)],
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.body);
    assert_eq!(theirs.body["tenant"], "other");
    assert_eq!(theirs.body["domains"][0]["states"]["COMPLETED"], 0);
    assert_eq!(theirs.body["domains"][0]["ended"], 0);
    for bad in [
        "windowMinutes=0",
        "windowMinutes=1441",
        "windowMinutes=x",
        "tenant=acme",
    ] {
        let refused = setup
            .send(
                "GET",
                &format!("/v1/overview?{bad}"),
                &[("authorization", &own)],
                None,
            )
            .await;
        assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid-query");
    }
    let anonymous = setup.send("GET", "/v1/overview", &[], None).await;
    assert_problem(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn without_keys_the_console_needs_no_login() {
    let setup = setup(false).await;
    let me = setup.send("GET", "/console/session", &[], None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["tenant"], "default");
    assert_eq!(me.body["keyId"], Value::Null);
    let login = setup
        .send(
            "POST",
            "/console/session",
            &[],
            Some(json!({ "apiKey": setup.token })),
        )
        .await;
    assert_problem(&login, StatusCode::CONFLICT, "no-login");
}
