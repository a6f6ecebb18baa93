//! Uploads against a real S3-compatible server (moto), with the fault proxy in front of it
//! counting every request: a lost answer and a crash during the PUT are settled by looking
//! first, never by a second PUT; another writer's object is never overwritten; and over
//! HTTP, a 5 MiB upload is taken and a wrong checksum is a 422 with nothing stored.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use oncely::{
    CrashPoint, Engine, EngineConfig, Failpoints, IdempotencyKey, NodeId, OperationState,
    RetryPolicy, WalKind,
};
use oncely_gateway_sim::{FaultProxy, RunningSim, SimConfig};
use oncely_http::Service;
use oncely_sqlx::SqliteStore;
use oncely_testkit::moto::Moto;
use oncely_upload::storage::hex_sha256;
use oncely_upload::{Storage, Upload, UploadRequest, Uploader};
use serde_json::{Value, json};
use tower::ServiceExt;

const BUCKET: &str = "oncely-test";

struct Setup {
    moto: Moto,
    proxy: Arc<FaultProxy>,
    _running: RunningSim,
    /// Talks to moto directly, past the proxy: the test's own view of the bucket.
    direct: Storage,
    /// Talks through the proxy: what oncely uses.
    proxied: Storage,
    db: String,
    _dir: tempfile::TempDir,
}

async fn setup(faults: SimConfig) -> Option<Setup> {
    let moto = Moto::start().await?;
    moto.create_bucket(BUCKET).await.unwrap();
    let proxy = FaultProxy::new(&moto.endpoint, faults).unwrap();
    let running = proxy.clone().spawn("127.0.0.1:0").await.unwrap();
    let storage = |endpoint: &str| {
        Storage::s3_with_keys(endpoint, "us-east-1", Duration::from_secs(5), "t", "t").unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    Some(Setup {
        direct: storage(&moto.endpoint),
        proxied: storage(&running.url()),
        moto,
        proxy,
        _running: running,
        db: format!("sqlite://{}", dir.path().join("u.db").display()),
        _dir: dir,
    })
}

fn upload(object_key: &str, content: &[u8]) -> Upload {
    Upload::try_from(UploadRequest {
        bucket: BUCKET.into(),
        object_key: object_key.into(),
        content_type: "text/plain".into(),
        content_base64: base64::engine::general_purpose::STANDARD.encode(content),
        sha256: hex_sha256(content),
    })
    .unwrap()
}

async fn engine(setup: &Setup, failpoints: Option<Failpoints>) -> Engine<SqliteStore, Uploader> {
    let mut store = SqliteStore::open(&setup.db).await.unwrap();
    if let Some(failpoints) = &failpoints {
        store = store.with_failpoints(failpoints.clone());
    }
    let mut builder = Engine::builder(store, Uploader(setup.proxied.clone()))
        .node(&NodeId::new("upload-test").unwrap())
        .config(EngineConfig {
            poll_interval: Duration::from_millis(20),
            maintenance_interval: Duration::from_millis(50),
            ..EngineConfig::default()
        })
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ));
    if let Some(failpoints) = failpoints {
        builder = builder.failpoints(failpoints);
    }
    builder.start().unwrap()
}

#[tokio::test]
async fn a_lost_answer_is_settled_by_looking_first_with_no_second_put() {
    let faults = SimConfig {
        lost_answer_rate: 1.0,
        ..SimConfig::default()
    };
    let Some(setup) = setup(faults).await else {
        return;
    };
    let engine = engine(&setup, None).await;
    let key = IdempotencyKey::new("u-lost").unwrap();
    let submitted = engine
        .submit(key, upload("a/lost.txt", b"hello"))
        .await
        .unwrap();
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(20))
        .await
        .unwrap();

    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    assert_eq!(done.attempt_count, 2);
    let stats = setup.proxy.stats();
    assert_eq!(stats.succeeded("PUT"), 1, "{stats:?}");
    assert_eq!(stats.lost.get("PUT"), Some(&1), "{stats:?}");
    assert_eq!(
        setup
            .direct
            .read(BUCKET, "a/lost.txt")
            .await
            .unwrap()
            .unwrap(),
        Bytes::from_static(b"hello")
    );
    let log = engine.history(&done.scope).await.unwrap();
    let recorded: Vec<&Value> = log
        .iter()
        .filter(|entry| entry.kind == WalKind::OutcomeRecorded)
        .map(|entry| &entry.detail)
        .collect();
    assert_eq!(recorded.len(), 2, "{log:#?}");
    assert_eq!(recorded[0]["outcome"]["unknown"], true);
    assert_eq!(recorded[1]["reconciled"], true);
    assert_eq!(recorded[1]["outcome"]["type"], "OK");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_crash_during_the_put_is_settled_after_restart_with_no_second_put() {
    let Some(setup) = setup(SimConfig::default()).await else {
        return;
    };
    let failpoints = Failpoints::default();
    failpoints.arm(CrashPoint::AfterAnswer);
    let first = engine(&setup, Some(failpoints.clone())).await;
    let key = IdempotencyKey::new("u-crash").unwrap();
    let submitted = first
        .submit(key, upload("b/crash.txt", b"crash"))
        .await
        .unwrap();
    let scope = submitted.operation.scope.clone();
    // The PUT went through; the engine died before its outcome was recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !failpoints.is_crashed() {
        assert!(tokio::time::Instant::now() < deadline, "never crashed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
    assert_eq!(setup.proxy.stats().succeeded("PUT"), 1);

    // The same node restarts and takes back what its earlier incarnation was running.
    let second = engine(&setup, None).await;
    let done = second.wait(&scope, Duration::from_secs(20)).await.unwrap();
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    let stats = setup.proxy.stats();
    assert_eq!(
        stats.succeeded("PUT"),
        1,
        "a second PUT was sent: {stats:?}"
    );
    assert!(
        stats.received.get("HEAD").copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
    let log = second.history(&scope).await.unwrap();
    let last = log
        .iter()
        .rfind(|entry| entry.kind == WalKind::OutcomeRecorded)
        .unwrap();
    assert_eq!(last.detail["reconciled"], true, "{log:#?}");
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn another_writers_object_is_never_overwritten() {
    let Some(setup) = setup(SimConfig::default()).await else {
        return;
    };
    setup
        .direct
        .create(
            BUCKET,
            "c/taken.txt",
            Bytes::from_static(b"theirs"),
            "text/plain",
            &hex_sha256(b"theirs"),
        )
        .await
        .unwrap();
    let engine = engine(&setup, None).await;
    let key = IdempotencyKey::new("u-taken").unwrap();
    let submitted = engine
        .submit(key, upload("c/taken.txt", b"mine"))
        .await
        .unwrap();
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(20))
        .await
        .unwrap();

    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    assert_eq!(done.error_code.as_deref(), Some("object-exists"));
    assert_eq!(
        setup
            .direct
            .read(BUCKET, "c/taken.txt")
            .await
            .unwrap()
            .unwrap(),
        Bytes::from_static(b"theirs")
    );
    // The conditional PUT was refused (412), not carried out.
    let stats = setup.proxy.stats();
    assert_eq!(stats.succeeded("PUT"), 0, "{stats:?}");
    assert_eq!(stats.forwarded.get("PUT 412"), Some(&1), "{stats:?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn over_http_five_mebibytes_are_taken_and_a_wrong_checksum_stores_nothing() {
    let Some(setup) = setup(SimConfig::default()).await else {
        return;
    };
    let engine = engine(&setup, None).await;
    let store = engine.store().clone();
    let router = Service::builder().domain(engine).build().unwrap().router();
    let post = |key: &str, body: Value| {
        Request::post("/v1/uploads")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .header("prefer", "wait=20")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let body = |content: &[u8], sha256: String| {
        json!({
            "bucket": BUCKET,
            "objectKey": "d/five.bin",
            "contentType": "application/octet-stream",
            "contentBase64": base64::engine::general_purpose::STANDARD.encode(content),
            "sha256": sha256,
        })
    };

    let five = vec![0x5au8; 5 * 1024 * 1024];
    let wrong = router
        .clone()
        .oneshot(post("u-wrong", body(&five, hex_sha256(b"other"))))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong.headers()["content-type"], "application/problem+json");
    let page = oncely::Store::list(
        &store,
        oncely::ListFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(page.items.is_empty(), "nothing is stored: {:?}", page.items);
    assert_eq!(setup.proxy.stats().received.get("PUT"), None);

    let over = vec![0u8; 5 * 1024 * 1024 + 1];
    let too_big = router
        .clone()
        .oneshot(post("u-big", body(&over, hex_sha256(&over))))
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let answer = router
        .oneshot(post("u-five", body(&five, hex_sha256(&five))))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "waited for the end");
    let answer: Value = serde_json::from_slice(
        &axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer["state"], "COMPLETED", "{answer}");
    assert_eq!(answer["outcome"]["size"], five.len(), "{answer}");
    let stored = setup
        .direct
        .read(BUCKET, "d/five.bin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hex_sha256(&stored), hex_sha256(&five));
    drop(setup.moto);
}
