//! The HTTP contract, status by status, over the real payment stack: SQLite store,
//! payment orchestrator, gateway client and the simulated gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use oncely::{Engine, EngineConfig};
use oncely_gateway_sim::{GatewaySim, RunningSim, SimConfig};
use oncely_http::{DOMAIN_ROUTES, PROBLEM_JSON, SERVICE_ROUTES, Service};
use oncely_payment::{GatewayClient, GatewayTimeouts, PaymentOrchestrator};
use oncely_sqlx::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApi {
    router: Router,
    _dir: tempfile::TempDir,
    _gateway: RunningSim,
}

async fn api_with(sim: SimConfig, require_key: bool) -> TestApi {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("api.db").display()))
        .await
        .unwrap();
    let gateway = GatewaySim::open("sqlite::memory:", sim)
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
    let engine = Engine::builder(store, PaymentOrchestrator::new(client))
        .config(config)
        .start()
        .unwrap();
    let router = Service::builder()
        .require_idempotency_key(require_key)
        .domain(engine)
        .build()
        .unwrap()
        .router();
    TestApi {
        router,
        _dir: dir,
        _gateway: gateway,
    }
}

async fn api() -> TestApi {
    api_with(SimConfig::default(), false).await
}

fn payment(order: i64) -> Value {
    json!({ "orderId": order, "amount": "25.00", "paymentMethod": "CARD", "customerId": 7 })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl TestApi {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_default())
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

    async fn pay(&self, key: Option<&str>, body: &Value, extra: &[(&str, &str)]) -> Answer {
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.send("POST", "/v1/payments", &headers, Some(body.to_string()))
            .await
    }

    async fn count(&self) -> usize {
        let answer = self.send("GET", "/v1/payments?limit=1000", &[], None).await;
        answer.body["items"].as_array().unwrap().len()
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
    assert_eq!(answer.body["status"], status.as_u16());
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
}

#[tokio::test]
async fn a_new_payment_is_202_with_location_and_completes() {
    let api = api().await;
    let created = api.pay(Some("pay-1"), &payment(1), &[]).await;
    assert_eq!(created.status, StatusCode::ACCEPTED, "{}", created.body);
    assert_eq!(created.headers["location"], "/v1/payments/pay-1");
    assert!(created.headers.get("idempotent-replayed").is_none());
    assert_eq!(created.body["key"], "pay-1");
    assert_eq!(created.body["request"]["amount"], "25.00");

    let waited = api
        .pay(Some("pay-1"), &payment(1), &[("prefer", "wait=10")])
        .await;
    assert_eq!(waited.status, StatusCode::OK);
    assert_eq!(waited.headers["preference-applied"], "wait=10");
    assert_eq!(waited.headers["idempotent-replayed"], "true");
    assert_eq!(waited.body["state"], "COMPLETED");
    assert!(
        waited.body["outcome"]["transactionId"]
            .as_str()
            .unwrap()
            .starts_with("txn_")
    );
    assert!(waited.body["outcome"]["approvalCode"].is_string());

    let fetched = api.send("GET", "/v1/payments/pay-1", &[], None).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, waited.body);
    let history = api
        .send("GET", "/v1/payments/pay-1/history", &[], None)
        .await;
    let kinds: Vec<_> = history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        ["ACCEPTED", "EXECUTING", "OUTCOME_RECORDED", "FINALIZED"]
    );
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_naming_the_key_and_changes_nothing() {
    let api = api().await;
    api.pay(Some("k"), &payment(1), &[]).await;
    let mut other = payment(1);
    other["amount"] = json!("26.00");
    let conflict = api.pay(Some("k"), &other, &[]).await;
    assert_problem(
        &conflict,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    );
    assert_eq!(conflict.body["key"], "k");
    let stored = api.send("GET", "/v1/payments/k", &[], None).await;
    assert_eq!(stored.body["request"]["amount"], "25.00");
    assert_eq!(api.count().await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_join_one_operation_without_5xx() {
    let api = Arc::new(api().await);
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.pay(Some("dup"), &payment(9), &[]).await
        }));
    }
    let mut replays = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(
            answer.status.is_success(),
            "{} {}",
            answer.status,
            answer.body
        );
        replays += usize::from(answer.headers.get("idempotent-replayed").is_some());
    }
    assert_eq!(replays, 24, "one accept, the rest replays");
    assert_eq!(api.count().await, 1);
}

#[tokio::test]
async fn without_a_key_the_business_key_is_used_unless_keys_are_required() {
    let api = api().await;
    let created = api.pay(None, &payment(1001), &[]).await;
    assert_eq!(created.status, StatusCode::ACCEPTED);
    assert_eq!(created.body["key"], "PAY-7-1001-CARD");
    assert_eq!(created.headers["location"], "/v1/payments/PAY-7-1001-CARD");

    let strict = api_with(SimConfig::default(), true).await;
    let refused = strict.pay(None, &payment(1), &[]).await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "missing-idempotency-key");
    assert_eq!(strict.count().await, 0);
}

#[tokio::test]
async fn bad_requests_are_problems_and_store_nothing() {
    let api = api().await;
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("idempotency-key", "a")], "{not json".into(), StatusCode::BAD_REQUEST, "malformed-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": 1, "paymentMethod": "CARD"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": 1, "paymentMethod": "CARD", "customerId": 1, "tip": 2}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        // What the published schema refuses is refused before anything else looks at it.
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": 0, "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "-3", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "1.001", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": 1, "paymentMethod": "CARD", "customerId": 1, "currency": "dollars"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": 1, "paymentMethod": "CARD", "customerId": 1, "currency": null}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!([30, "2.00", "CARD", 7, "USD"]).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], r#"{"orderId": 1, "amount": 1e3, "paymentMethod": "CARD", "customerId": 1}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], r#"{"orderId": 1, "amount": 10E0, "paymentMethod": "CARD", "customerId": 1}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], r#"{"orderId": 1, "amount": +1.00, "paymentMethod": "CARD", "customerId": 1}"#.into(), StatusCode::BAD_REQUEST, "malformed-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "1e3", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "+1.00", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": ".5", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "1e-2", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "0", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "0.00", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "a")], json!({"orderId": 1, "amount": "01.00", "paymentMethod": "CARD", "customerId": 1}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid-body"),
        (vec![("idempotency-key", "has space")], payment(1).to_string(), StatusCode::BAD_REQUEST, "invalid-idempotency-key"),
        (vec![("idempotency-key", "")], payment(1).to_string(), StatusCode::BAD_REQUEST, "invalid-idempotency-key"),
        (vec![("idempotency-key", "a"), ("idempotency-key", "b")], payment(1).to_string(), StatusCode::BAD_REQUEST, "invalid-idempotency-key"),
        (vec![("idempotency-key", "a"), ("content-type", "text/plain")], payment(1).to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
        (vec![("idempotency-key", "a")], format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024)), StatusCode::PAYLOAD_TOO_LARGE, "body-too-large"),
    ];
    for (headers, body, status, kind) in cases {
        let answer = api
            .send("POST", "/v1/payments", &headers, Some(body.clone()))
            .await;
        assert_problem(&answer, status, kind);
    }
    // No internal type names in what a client is told.
    let array = api
        .send(
            "POST",
            "/v1/payments",
            &[("idempotency-key", "a")],
            Some("[1]".into()),
        )
        .await;
    assert!(
        !array.body["detail"].as_str().unwrap().contains("struct"),
        "{}",
        array.body
    );
    let oversize_key = "k".repeat(256);
    let answer = api.pay(Some(&oversize_key), &payment(1), &[]).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid-idempotency-key");
    assert_eq!(api.count().await, 0, "nothing stored");
}

#[tokio::test]
async fn an_amount_written_plainly_is_taken_as_a_string_or_a_number() {
    let api = api().await;
    for (i, amount) in [r#""25""#, r#""0.01""#, r#""25.5""#, "25", "25.5", "0.01"]
        .iter()
        .enumerate()
    {
        let body = format!(
            r#"{{"orderId": {}, "amount": {amount}, "paymentMethod": "CARD", "customerId": 1}}"#,
            i + 1
        );
        let answer = api
            .send(
                "POST",
                "/v1/payments",
                &[("idempotency-key", &format!("plain-{i}"))],
                Some(body),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{amount}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn an_unreadable_prefer_is_ignored_and_a_location_can_always_be_followed() {
    let api = api().await;
    let ignored = api
        .pay(Some("p"), &payment(1), &[("prefer", "wait=soon")])
        .await;
    assert_eq!(
        ignored.status,
        StatusCode::ACCEPTED,
        "RFC 7240: ignored, not refused"
    );
    assert!(ignored.headers.get("preference-applied").is_none());
    for (i, key) in ["L?b#c", "L%2Fb", "a/b", "50%", "[]{}|^`\\\"<>"]
        .iter()
        .enumerate()
    {
        let created = api.pay(Some(key), &payment(100 + i as i64), &[]).await;
        assert_eq!(
            created.status,
            StatusCode::ACCEPTED,
            "{key}: {}",
            created.body
        );
        let location = created.headers["location"].to_str().unwrap().to_owned();
        let followed = api.send("GET", &location, &[], None).await;
        assert_eq!(followed.status, StatusCode::OK, "{key} via {location}");
        assert_eq!(followed.body["key"], *key, "{location}");
    }
    let undecodable = api.send("GET", "/v1/payments/%ff", &[], None).await;
    assert_problem(
        &undecodable,
        StatusCode::BAD_REQUEST,
        "invalid-idempotency-key",
    );
    let wrong_method = api.send("DELETE", "/v1/payments", &[], None).await;
    assert_problem(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );
    assert!(
        wrong_method.headers.get("allow").is_some(),
        "405 says what is allowed"
    );
}

#[tokio::test]
async fn a_traceparent_is_kept_with_the_operation_and_an_unreadable_one_ignored() {
    let api = api().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = api
        .pay(
            Some("t1"),
            &payment(1),
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(traced.status, StatusCode::ACCEPTED, "{}", traced.body);
    assert_eq!(traced.body["traceId"], trace);
    let read = api.send("GET", "/v1/payments/t1", &[], None).await;
    assert_eq!(read.body["traceId"], trace, "stored: {}", read.body);
    // A replay keeps the first submit's trace.
    let replay = api
        .pay(
            Some("t1"),
            &payment(1),
            &[(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )],
        )
        .await;
    assert_eq!(replay.body["traceId"], trace);
    for (key, unreadable) in [("t2", "00-zz-00f067aa0ba902b7-01"), ("t3", "garbage")] {
        let ignored = api
            .pay(Some(key), &payment(2), &[("traceparent", unreadable)])
            .await;
        assert_eq!(
            ignored.status,
            StatusCode::ACCEPTED,
            "W3C: ignored, not refused"
        );
        assert_eq!(ignored.body["traceId"], Value::Null, "{}", ignored.body);
    }
}

#[tokio::test]
async fn prefer_wait_is_capped_at_sixty_seconds() {
    let api = api().await;
    let answer = api
        .pay(
            Some("w"),
            &payment(1),
            &[("prefer", "respond-async, wait=600")],
        )
        .await;
    assert_eq!(answer.headers["preference-applied"], "wait=60");
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "completed well within the wait"
    );
}

#[tokio::test]
async fn unknown_operations_are_404_and_bad_keys_400() {
    let api = api().await;
    for uri in ["/v1/payments/nope", "/v1/payments/nope/history"] {
        assert_problem(
            &api.send("GET", uri, &[], None).await,
            StatusCode::NOT_FOUND,
            "not-found",
        );
    }
    assert_problem(
        &api.send("POST", "/v1/payments/nope/retry", &[], None).await,
        StatusCode::NOT_FOUND,
        "not-found",
    );
    assert_problem(
        &api.send("GET", "/v1/payments/a%20b", &[], None).await,
        StatusCode::BAD_REQUEST,
        "invalid-idempotency-key",
    );
    assert_problem(
        &api.send("GET", "/v1/nothing", &[], None).await,
        StatusCode::NOT_FOUND,
        "no-route",
    );
}

#[tokio::test]
async fn list_filters_by_state_and_pages_with_a_cursor() {
    let api = api_with(
        SimConfig {
            decline_rate: 1.0,
            ..SimConfig::default()
        },
        false,
    )
    .await;
    for order in 1..=5 {
        let key = format!("l{order}");
        api.pay(Some(&key), &payment(order), &[("prefer", "wait=10")])
            .await;
    }
    let mut keys = Vec::new();
    let mut uri = "/v1/payments?limit=2&state=FAILED".to_owned();
    loop {
        let page = api.send("GET", &uri, &[], None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        keys.extend(
            items
                .iter()
                .map(|item| item["key"].as_str().unwrap().to_owned()),
        );
        match page.body["nextCursor"].as_str() {
            Some(cursor) => uri = format!("/v1/payments?limit=2&state=FAILED&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(keys, ["l5", "l4", "l3", "l2", "l1"]);
    let completed = api
        .send("GET", "/v1/payments?state=COMPLETED", &[], None)
        .await;
    assert!(completed.body["items"].as_array().unwrap().is_empty());
    for bad in [
        "state=DONE",
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=abc",
        "colour=red",
    ] {
        let answer = api
            .send("GET", &format!("/v1/payments?{bad}"), &[], None)
            .await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid-query");
    }
}

#[tokio::test]
async fn an_operator_retries_a_failed_payment_under_the_same_key() {
    let api = api_with(
        SimConfig {
            decline_rate: 1.0,
            ..SimConfig::default()
        },
        false,
    )
    .await;
    let failed = api
        .pay(Some("r"), &payment(1), &[("prefer", "wait=10")])
        .await;
    assert_eq!(failed.body["state"], "FAILED");
    assert_eq!(failed.body["error"]["code"], "card_declined");
    let retried = api.send("POST", "/v1/payments/r/retry", &[], None).await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.body["state"], "ACCEPTED");
    assert_eq!(retried.body["key"], "r");
    let history = api.send("GET", "/v1/payments/r/history", &[], None).await;
    assert!(
        history.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "OPERATOR_RETRIED")
    );

    let healthy = api_with(SimConfig::default(), false).await;
    let done = healthy
        .pay(Some("ok"), &payment(2), &[("prefer", "wait=10")])
        .await;
    assert_eq!(done.body["state"], "COMPLETED");
    let refused = healthy
        .send("POST", "/v1/payments/ok/retry", &[], None)
        .await;
    assert_problem(&refused, StatusCode::CONFLICT, "not-retryable");
}

#[tokio::test]
async fn an_operator_cancels_a_payment_waiting_for_a_retry_and_not_a_completed_one() {
    let api = api_with(
        SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        },
        false,
    )
    .await;
    api.pay(Some("c"), &payment(1), &[]).await;
    let mut waiting = api.send("GET", "/v1/payments/c", &[], None).await;
    for _ in 0..200 {
        if waiting.body["state"] == "ACCEPTED" && waiting.body["attempts"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting = api.send("GET", "/v1/payments/c", &[], None).await;
    }
    assert_eq!(waiting.body["state"], "ACCEPTED", "{}", waiting.body);
    let cancelled = api.send("POST", "/v1/payments/c/cancel", &[], None).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["state"], "CANCELLED");
    assert!(cancelled.body["completedAt"].is_string());
    assert!(cancelled.body["cancelRequestedAt"].is_string());
    let again = api.send("POST", "/v1/payments/c/cancel", &[], None).await;
    assert_eq!(again.status, StatusCode::OK, "a cancel is idempotent");
    assert_eq!(again.body, cancelled.body);
    let history = api.send("GET", "/v1/payments/c/history", &[], None).await;
    let cancels = history.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "OPERATOR_CANCELLED")
        .count();
    assert_eq!(cancels, 1);
    let listed = api
        .send("GET", "/v1/payments?state=CANCELLED", &[], None)
        .await;
    assert_eq!(listed.body["items"][0]["key"], "c");
    let refused = api.send("POST", "/v1/payments/c/retry", &[], None).await;
    assert_problem(&refused, StatusCode::CONFLICT, "not-retryable");
    let missing = api
        .send("POST", "/v1/payments/nope/cancel", &[], None)
        .await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not-found");

    let healthy = api_with(SimConfig::default(), false).await;
    let done = healthy
        .pay(Some("ok"), &payment(2), &[("prefer", "wait=10")])
        .await;
    assert_eq!(done.body["state"], "COMPLETED");
    let refused = healthy
        .send("POST", "/v1/payments/ok/cancel", &[], None)
        .await;
    assert_problem(&refused, StatusCode::CONFLICT, "not-cancellable");
}

#[tokio::test]
async fn an_operator_filters_then_retries_and_cancels_in_bulk_page_by_page() {
    let declining = api_with(
        SimConfig {
            decline_rate: 1.0,
            ..SimConfig::default()
        },
        false,
    )
    .await;
    for i in 0..5 {
        let failed = declining
            .pay(
                Some(&format!("d{i}")),
                &payment(i + 1),
                &[("prefer", "wait=10")],
            )
            .await;
        assert_eq!(failed.body["state"], "FAILED");
    }
    let count = |answer: &Answer| answer.body["items"].as_array().unwrap().len();
    for (query, expected) in [
        ("errorCode=card_declined&attemptsMin=1", 5),
        ("errorCode=card_expired", 0),
        ("attemptsMin=2", 0),
        (
            "createdFrom=2000-01-01T00:00:00Z&createdUntil=2999-01-01T00:00:00Z",
            5,
        ),
        ("createdFrom=2999-01-01T00:00:00Z", 0),
    ] {
        let listed = declining
            .send("GET", &format!("/v1/payments?{query}"), &[], None)
            .await;
        assert_eq!(count(&listed), expected, "{query}");
    }
    for bad in ["attemptsMin=x", "createdFrom=yesterday", "errorCode="] {
        let answer = declining
            .send("POST", &format!("/v1/bulk/payments/retry?{bad}"), &[], None)
            .await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid-query");
    }
    // Everything FAILED, three at a time: two pages, every one retried once.
    let first = declining
        .send(
            "POST",
            "/v1/bulk/payments/retry?state=FAILED&limit=3",
            &[],
            None,
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(
        (first.body["matched"].clone(), first.body["done"].clone()),
        (json!(3), json!(3))
    );
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    let second = declining
        .send(
            "POST",
            &format!("/v1/bulk/payments/retry?state=FAILED&limit=3&cursor={cursor}"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (second.body["matched"].clone(), second.body["done"].clone()),
        (json!(2), json!(2))
    );
    assert!(second.body["nextCursor"].is_null());
    for i in 0..5 {
        let history = declining
            .send("GET", &format!("/v1/payments/d{i}/history"), &[], None)
            .await;
        let retries = history.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "OPERATOR_RETRIED")
            .count();
        assert_eq!(retries, 1, "d{i}");
    }

    // Waiting for retries: all cancelled in one call; a retry of them all fails, each
    // with its reason.
    let unavailable = api_with(
        SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        },
        false,
    )
    .await;
    for i in 0..3 {
        unavailable
            .pay(Some(&format!("w{i}")), &payment(i + 1), &[])
            .await;
    }
    for _ in 0..200 {
        let waiting = unavailable
            .send(
                "GET",
                "/v1/payments?state=ACCEPTED&attemptsMin=1",
                &[],
                None,
            )
            .await;
        if count(&waiting) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = unavailable
        .send(
            "POST",
            "/v1/bulk/payments/cancel?state=ACCEPTED&attemptsMin=1",
            &[],
            None,
        )
        .await;
    assert_eq!(
        (
            cancelled.body["matched"].clone(),
            cancelled.body["done"].clone()
        ),
        (json!(3), json!(3))
    );
    let listed = unavailable
        .send("GET", "/v1/payments?state=CANCELLED", &[], None)
        .await;
    assert_eq!(count(&listed), 3);
    let refused = unavailable
        .send("POST", "/v1/bulk/payments/retry", &[], None)
        .await;
    assert_eq!(
        (
            refused.body["matched"].clone(),
            refused.body["done"].clone()
        ),
        (json!(3), json!(0))
    );
    let failed = refused.body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3);
    assert!(
        failed
            .iter()
            .all(|f| f["type"] == "urn:oncely:problem:not-retryable" && f["key"].is_string()),
        "{failed:?}"
    );
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let api = api().await;
    assert_eq!(
        api.send("GET", "/healthz", &[], None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.send("GET", "/readyz", &[], None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_served() {
    let api = api().await;
    let document = api.send("GET", "/openapi.json", &[], None).await.body;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, DOMAIN_ROUTES.len() + SERVICE_ROUTES.len());
    let routes = DOMAIN_ROUTES
        .iter()
        .map(|r| (r.method, r.path))
        .chain(SERVICE_ROUTES.iter().map(|r| (r.method, r.path)));
    for (method, path) in routes {
        let path = path.replace("{resource}", "payments");
        assert!(
            paths[&path][method].is_object(),
            "{method} {path} undocumented"
        );
        let uri = path.replace("{key}", "probe");
        let answer = api
            .send(
                &method.to_uppercase(),
                &uri,
                &[("idempotency-key", "probe")],
                Some(payment(1).to_string()),
            )
            .await;
        assert_ne!(
            answer.body["type"], "urn:oncely:problem:no-route",
            "{method} {uri} not served"
        );
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
    }
}

/// Any JSON value, nested a little.
fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("25.00"),
            Just("1e3"),
            Just("0.001"),
            Just("-1"),
            Just("CARD")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A body: raw bytes, any JSON, or a valid payment with one field changed, dropped or added.
fn any_body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let fields = [
        "orderId",
        "amount",
        "paymentMethod",
        "customerId",
        "currency",
        "extra",
    ];
    let hostile = [
        r#"[30,"2.00","CARD",7,"USD"]"#,
        r#"{"orderId":1,"amount":"1.00","paymentMethod":"CARD","customerId":7,"currency":null}"#,
        r#"{"orderId":1,"amount":1e3,"paymentMethod":"CARD","customerId":7}"#,
        r#"{"orderId":1,"amount":"1e3","paymentMethod":"CARD","customerId":7}"#,
        r#"{"orderId":1,"amount":"+1.00","paymentMethod":"CARD","customerId":7}"#,
        r#"{"orderId":1,"amount":".5","paymentMethod":"CARD","customerId":7}"#,
        r#"{"orderId":1,"amount":"25.00","paymentMethod":"CARD","customerId":7}"#,
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        proptest::sample::select(hostile.to_vec()).prop_map(|b| b.as_bytes().to_vec()),
        (0..fields.len(), any_json(), any::<bool>()).prop_map(move |(field, value, drop)| {
            let mut body = payment(7);
            let object = body.as_object_mut().unwrap();
            if drop {
                object.remove(fields[field]);
            } else {
                object.insert(fields[field].to_owned(), value);
            }
            body.to_string().into_bytes()
        }),
    ]
}

#[test]
fn arbitrary_bodies_and_headers_never_cause_a_5xx_and_store_only_valid_requests() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(api());
    let document = runtime
        .block_on(api.send("GET", "/openapi.json", &[], None))
        .body;
    let published =
        jsonschema::validator_for(&document["components"]["schemas"]["PaymentsRequest"]).unwrap();
    let header_value = prop_oneof![
        Just(None),
        "[ -~]{0,40}".prop_map(Some),
        proptest::collection::vec(any::<u8>(), 0..20)
            .prop_map(|bytes| Some(String::from_utf8_lossy(&bytes).into_owned())),
    ];
    // Mostly fresh, valid keys, so that what the body checks let through is stored.
    let key = prop_oneof![
        3 => "[a-zA-Z0-9]{12,20}".prop_map(Some),
        1 => header_value.clone(),
    ];
    let content_type = prop_oneof![
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(None),
    ];
    let content_type =
        prop_oneof![3 => Just(Some("application/json".to_owned())), 1 => content_type];
    let case = (any_body(), key, header_value, content_type);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&case, |(body, key, prefer, content_type)| {
            runtime.block_on(async {
                let before = api.count().await;
                let mut request = Request::builder().method("POST").uri("/v1/payments");
                for (name, value) in [
                    ("idempotency-key", &key),
                    ("prefer", &prefer),
                    ("content-type", &content_type),
                ] {
                    if let Some(value) = value {
                        if let Ok(value) = axum::http::HeaderValue::from_str(value) {
                            request = request.header(name, value);
                        }
                    }
                }
                let request = request.body(Body::from(body.clone())).unwrap();
                let response = api.router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                prop_assert!(
                    status.as_u16() < 500,
                    "{status} for {:?}",
                    String::from_utf8_lossy(&body)
                );
                let after = api.count().await;
                if status.is_success() {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Only a body the published schema and the checks allow gets here.
                    let value: Value = serde_json::from_slice(&body).unwrap();
                    prop_assert!(
                        published.is_valid(&value),
                        "accepted against the schema: {value}"
                    );
                    let request: oncely_payment::PaymentRequest =
                        serde_json::from_value(value).unwrap();
                    prop_assert!(oncely_payment::PaymentCommand::try_from(request).is_ok());
                    prop_assert!(after == before || after == before + 1);
                } else {
                    prop_assert_eq!(after, before, "a refused request stored something");
                    let content_type = response.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    prop_assert_eq!(content_type, PROBLEM_JSON);
                }
                Ok(())
            })
        })
        .unwrap();
    let accepted = accepted.into_inner();
    assert!(
        accepted > 0,
        "no valid request was generated: the strategy is too wild"
    );
}
