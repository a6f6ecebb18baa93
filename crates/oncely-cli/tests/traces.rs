//! Traces: `serve --otlp-endpoint` exports one payment's spans to an OTLP/HTTP receiver,
//! all in the trace its request's `traceparent` named, across a SIGKILL of the node that
//! ran its first attempt and a restart; and the gateway receives that trace onward.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{free_port, oncely, wait_healthy};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A child process killed when dropped, also when the test fails.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1; every span it is sent.
async fn receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(|State(spans): State<Spans>, body: Bytes| async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let mut spans = spans.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
                StatusCode::OK
            }),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(span: &Span, name: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == name)?;
    match value.value.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The spans of `key`'s operation received so far.
fn spans_of(spans: &Spans, key: &str) -> Vec<Span> {
    let spans = spans.lock().unwrap();
    let ids: Vec<Vec<u8>> = spans
        .iter()
        .filter(|span| attribute(span, "key").as_deref() == Some(key))
        .map(|span| span.span_id.clone())
        .collect();
    // The operation's spans carry its key; their children (the call, the record) are
    // found by parent.
    spans
        .iter()
        .filter(|span| {
            attribute(span, "key").as_deref() == Some(key) || ids.contains(&span.parent_span_id)
        })
        .cloned()
        .collect()
}

async fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `serve` as node `web-1` on `db`, exporting to `otlp`.
async fn node(dir: &Path, db: &str, gateway: &str, otlp: &str) -> (Process, String) {
    let port = free_port();
    let child = oncely()
        .current_dir(dir)
        .args(["serve", "--db", db])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gateway-url", gateway, "--node-id", "web-1"])
        .args(["--webhook-sim-listen", "127.0.0.1:0"])
        .args(["--poll-interval", "100ms", "--otlp-endpoint", otlp])
        // Batches sent every 100 ms, so the first node's spans leave before it dies.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    (Process(child), base)
}

#[tokio::test]
async fn one_payments_spans_share_its_trace_across_a_kill_9_and_the_gateway_gets_it_onward() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("oncely.db").display());
    let (otlp, spans) = receiver().await;

    // Every gateway request takes 2 s; the gateway logs the traceparent of each charge.
    let gateway_log = dir.path().join("gateway.log");
    let port = free_port();
    let _gateway = Process(
        oncely()
            .current_dir(dir.path())
            .args(["gateway-sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--latency-min", "2s", "--latency-max", "2s"])
            .env("ONCELY_LOG", "warn,oncely_gateway_sim=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&gateway_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let gateway = format!("http://127.0.0.1:{port}");
    wait_healthy(&gateway).await;

    let (first, base) = node(dir.path(), &db, &gateway, &otlp).await;
    let key = "PAY-1-7-CARD";
    let accepted = reqwest::Client::new()
        .post(format!("{base}/v1/payments"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .json(&json!({"orderId": 7, "amount": "5.00", "paymentMethod": "CARD", "customerId": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let view: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(view["traceId"], TRACE_ID, "the API shows the trace: {view}");

    // The accept's span is exported and the charge is at the gateway: then the node dies.
    wait_for("the accept span", Duration::from_secs(20), || {
        spans_of(&spans, key)
            .into_iter()
            .find(|span| span.name == "oncely.accept")
    })
    .await;
    wait_for("the first charge", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&gateway_log).unwrap();
        log.contains("charge requested").then_some(())
    })
    .await;
    drop(first); // SIGKILL

    // Restarted under the same node id: it ends its dead incarnation's lease, the Reaper
    // takes the payment back, and attempt 2 completes it.
    let (second, base) = node(dir.path(), &db, &gateway, &otlp).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let view: serde_json::Value = reqwest::get(format!("{base}/v1/payments/{key}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if view["state"] == "COMPLETED" {
            break;
        }
        assert!(Instant::now() < deadline, "not COMPLETED in 40 s: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The webhook that announces the payment, submitted by its end, joins its trace.
    let event: serde_json::Value = reqwest::get(format!("{base}/v1/notifications/{key}:completed"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["traceId"], TRACE_ID, "{event}");
    // A graceful stop sends what is batched.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let mut second = second;
    let exited = wait_for("the node to stop", Duration::from_secs(30), || {
        second.0.try_wait().unwrap()
    })
    .await;
    assert!(exited.success(), "serve exited with {exited}");

    let spans = spans_of(&spans, key);
    let by_id: HashMap<Vec<u8>, &Span> = spans
        .iter()
        .map(|span| (span.span_id.clone(), span))
        .collect();
    let tree: Vec<String> = spans
        .iter()
        .map(|span| {
            let parent = by_id
                .get(&span.parent_span_id)
                .map_or_else(|| hex(&span.parent_span_id), |parent| parent.name.clone());
            let attempt = attribute(span, "attempt").unwrap_or_default();
            let owner = attribute(span, "owner").unwrap_or_default();
            let result = attribute(span, "result").unwrap_or_default();
            format!(
                "{} {} parent={parent} attempt={attempt} owner={owner} result={result} ({} ms)",
                hex(&span.span_id),
                span.name,
                span.end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano)
                    / 1_000_000
            )
        })
        .collect();
    eprintln!("trace {TRACE_ID}:\n  {}", tree.join("\n  "));

    // Every span of the payment is in the caller's trace.
    for span in &spans {
        assert_eq!(hex(&span.trace_id), TRACE_ID, "{tree:#?}");
    }
    let named =
        |name: &str| -> Vec<&Span> { spans.iter().filter(|span| span.name == name).collect() };
    let under_caller = |span: &&Span| hex(&span.parent_span_id) == PARENT_ID;
    // The accept (first node), the reap of the dead incarnation's lease and attempt 2
    // (second node) are children of the caller's span.
    let accept = named("oncely.accept");
    assert!(accept.iter().any(under_caller), "{tree:#?}");
    let reap = named("oncely.reap");
    assert!(
        reap.iter()
            .any(|span| under_caller(span) && attribute(span, "attempt").as_deref() == Some("1")),
        "the Reaper's span for attempt 1: {tree:#?}"
    );
    let attempts = named("oncely.attempt");
    let retried = attempts
        .iter()
        .find(|span| attribute(span, "attempt").as_deref() == Some("2"))
        .unwrap_or_else(|| panic!("attempt 2's span: {tree:#?}"));
    assert!(under_caller(retried), "{tree:#?}");
    assert_eq!(
        attribute(retried, "result").as_deref(),
        Some("ok"),
        "{tree:#?}"
    );
    // The call and the record are the attempt's children.
    let call = named("oncely.call")
        .into_iter()
        .find(|span| span.parent_span_id == retried.span_id)
        .unwrap_or_else(|| panic!("attempt 2's call: {tree:#?}"));
    assert!(
        named("oncely.record")
            .iter()
            .any(|span| span.parent_span_id == retried.span_id),
        "attempt 2's record: {tree:#?}"
    );
    // The gateway got the trace onward, with the call's span as the parent.
    let onward = format!("00-{TRACE_ID}-{}-01", hex(&call.span_id));
    let log = std::fs::read_to_string(&gateway_log).unwrap();
    assert!(
        log.contains(&onward),
        "the gateway's log has no charge with traceparent {onward}:\n{log}"
    );
}
