//! Destinations a user chooses are checked against SSRF: internal addresses, names that
//! resolve to them, and redirects get nothing sent to them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use oncely::{Attempt, DomainName, IdempotencyKey, Scope, TenantId};
use oncely_reqwest::{Destinations, Timeouts, WebhookClient, WebhookSecret};

/// A receiver on 127.0.0.1 that counts what reaches it and answers with `answer`.
async fn receiver(answer: fn() -> axum::response::Response) -> (String, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { answer() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{port}"), hits)
}

fn attempt() -> Attempt {
    Attempt {
        number: 1,
        scope: Scope::new(
            TenantId::default(),
            DomainName::new("NOTIFICATION").unwrap(),
            IdempotencyKey::new("evt-1").unwrap(),
        ),
        traceparent: None,
    }
}

fn client(destinations: Destinations) -> WebhookClient {
    WebhookClient::new(
        WebhookSecret::generate().unwrap(),
        destinations,
        Timeouts::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn internal_destinations_are_refused_and_get_nothing() {
    let (address, hits) = receiver(|| StatusCode::OK.into_response()).await;
    let port = address.rsplit(':').next().unwrap();
    let public = client(Destinations::public());
    let refused = [
        format!("http://{address}/hook"),
        format!("http://[::1]:{port}/hook"),
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        // A name that resolves to loopback: refused on the address, not the name.
        format!("http://localhost:{port}/hook"),
    ];
    for url in &refused {
        assert!(public.check(url).await.is_err(), "{url} passed the check");
        let outcome = public
            .deliver(url, "test.event", &serde_json::json!({}), &attempt())
            .await;
        assert!(outcome.is_fail(), "{url}: {outcome:?}");
        assert_eq!(
            serde_json::to_value(&outcome).unwrap()["code"],
            "destination-refused",
            "{url}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was sent");

    // The same receiver, allowed explicitly, gets the delivery.
    let allowed = client(Destinations::allowing(["127.0.0.1"]));
    let outcome = allowed
        .deliver(
            &format!("http://{address}/hook"),
            "test.event",
            &serde_json::json!({"n": 1}),
            &attempt(),
        )
        .await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let (target, target_hits) = receiver(|| StatusCode::OK.into_response()).await;
    let port = target.rsplit(':').next().unwrap().to_owned();
    static PORT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PORT.set(port).unwrap();
    let (redirector, redirector_hits) = receiver(|| {
        let location = format!("http://localhost:{}/hook", PORT.get().unwrap());
        (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
    })
    .await;
    let allowed = client(Destinations::allowing(["127.0.0.1"]));
    let outcome = allowed
        .deliver(
            &format!("http://{redirector}/hook"),
            "test.event",
            &serde_json::json!({}),
            &attempt(),
        )
        .await;
    assert!(outcome.is_fail(), "{outcome:?}");
    assert_eq!(serde_json::to_value(&outcome).unwrap()["code"], "redirect");
    assert_eq!(redirector_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}
