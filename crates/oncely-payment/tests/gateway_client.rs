//! The gateway client against the simulated gateway, one fault at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::str::FromStr;
use std::time::Duration;

use oncely::{IdempotencyKey, Outcome};
use oncely_gateway_sim::{GatewaySim, RunningSim, SimConfig};
use oncely_payment::{Currency, GatewayClient, GatewayTimeouts, PaymentCommand};
use rust_decimal::Decimal;

async fn gateway(config: SimConfig) -> (std::sync::Arc<GatewaySim>, RunningSim, GatewayClient) {
    let sim = GatewaySim::open("sqlite::memory:", config).await.unwrap();
    let running = sim.clone().spawn("127.0.0.1:0").await.unwrap();
    let timeouts = GatewayTimeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_millis(500),
    };
    let client = GatewayClient::new(&running.url(), timeouts).unwrap();
    (sim, running, client)
}

fn command(amount: &str) -> PaymentCommand {
    PaymentCommand::new(
        1,
        Decimal::from_str(amount).unwrap(),
        "CARD",
        2,
        Currency::default(),
    )
    .unwrap()
}

/// Payments through `client` on a SQLite file in `dir`, polling every 20 ms.
async fn payments(
    dir: &tempfile::TempDir,
    client: GatewayClient,
    policy: oncely::RetryPolicy,
) -> oncely::Engine<oncely_sqlx::SqliteStore, oncely_payment::PaymentOrchestrator> {
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let store = oncely_sqlx::SqliteStore::open(&db).await.unwrap();
    oncely::Engine::builder(store, oncely_payment::PaymentOrchestrator::new(client))
        .config(oncely::EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..oncely::EngineConfig::default()
        })
        .retry_policy(policy)
        .start()
        .unwrap()
}

fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).unwrap()
}

#[tokio::test]
async fn a_charge_is_ok_with_its_transaction_and_the_same_key_returns_the_same_charge() {
    let (sim, _running, client) = gateway(SimConfig::default()).await;
    let first = client.charge(&key("k"), &command("12.50")).await;
    let second = client.charge(&key("k"), &command("12.50")).await;
    let Outcome::Ok { data } = &first else {
        panic!("{first:?}")
    };
    assert!(data["transactionId"].as_str().unwrap().starts_with("txn_"));
    assert_eq!(data["amount"], "12.50");
    assert_eq!(first, second);
    assert_eq!(sim.charges().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_decline_is_a_fail_with_the_gateways_code() {
    let (_sim, _running, client) = gateway(SimConfig {
        decline_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let outcome = client.charge(&key("k"), &command("1")).await;
    assert_eq!(
        outcome,
        Outcome::fail("the issuer declined the card").with_error_code("card_declined")
    );
}

#[tokio::test]
async fn a_503_is_a_retry() {
    let (sim, _running, client) = gateway(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    assert!(client.charge(&key("k"), &command("1")).await.is_retry());
    assert!(sim.charges().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_429_is_a_retry_after_what_the_gateway_said() {
    let (_sim, _running, client) = gateway(SimConfig {
        rate_limit_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let outcome = client.charge(&key("k"), &command("1")).await;
    let Outcome::Retry { backoff, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(backoff, Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_timeout_is_a_retry_whose_outcome_is_unknown() {
    let config = SimConfig {
        timeout_rate: 1.0,
        hang: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let (_sim, _running, client) = gateway(config).await;
    let outcome = client.charge(&key("k"), &command("1")).await;
    let Outcome::Retry { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("did not answer in time"), "{reason}");
}

#[tokio::test]
async fn a_lost_answer_is_a_retry_and_the_retry_returns_the_committed_charge() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let timeouts = GatewayTimeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(2),
    };

    let lossy = GatewaySim::open(
        &ledger,
        SimConfig {
            lost_answer_rate: 1.0,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let running = lossy.clone().spawn("127.0.0.1:0").await.unwrap();
    let client = GatewayClient::new(&running.url(), timeouts).unwrap();
    let outcome = client.charge(&key("k"), &command("3")).await;
    assert!(outcome.is_retry(), "{outcome:?}");
    let charged = lossy.charges().await.unwrap();
    assert_eq!(
        charged.len(),
        1,
        "the charge was committed before the answer was lost"
    );
    running.stop();

    // The same ledger, answering this time: the retry under the same key gets that charge.
    let healthy = GatewaySim::open(&ledger, SimConfig::default())
        .await
        .unwrap();
    let running = healthy.clone().spawn("127.0.0.1:0").await.unwrap();
    let client = GatewayClient::new(&running.url(), timeouts).unwrap();
    let Outcome::Ok { data } = client.charge(&key("k"), &command("3")).await else {
        panic!("no charge")
    };
    assert_eq!(data["transactionId"], charged[0].transaction_id.as_str());
    assert_eq!(
        healthy.charges().await.unwrap().len(),
        1,
        "still one charge"
    );
}

#[tokio::test]
async fn an_unreachable_gateway_is_a_retry() {
    let client = GatewayClient::new("http://127.0.0.1:9", GatewayTimeouts::default()).unwrap();
    let outcome = client.charge(&key("k"), &command("1")).await;
    let Outcome::Retry { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("could not be reached"), "{reason}");
}

#[tokio::test]
async fn a_lying_answer_is_never_a_charge_and_the_truth_is_one_retry_away() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let liar = GatewaySim::open(
        &ledger,
        SimConfig {
            lie_rate: 1.0,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let running = liar.clone().spawn("127.0.0.1:0").await.unwrap();
    let timeouts = GatewayTimeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(2),
    };
    let client = GatewayClient::new(&running.url(), timeouts).unwrap();
    // Every lie, by seed: another amount, currency or key, a missing field, broken JSON.
    let mut reasons = Vec::new();
    for n in 0..40 {
        let outcome = client.charge(&key(&format!("k{n}")), &command("3")).await;
        let Outcome::Retry { reason, .. } = outcome else {
            panic!("a lie was taken for a charge: {outcome:?}")
        };
        assert!(reason.contains("unknown"), "{reason}");
        reasons.push(reason);
    }
    for told in [
        "amount 4.00",
        "currency \"XXX\"",
        "idempotencyKey",
        "could not be read",
    ] {
        assert!(
            reasons.iter().any(|reason| reason.contains(told)),
            "{told} never seen: {reasons:?}"
        );
    }
    assert_eq!(
        liar.charges().await.unwrap().len(),
        40,
        "each charged, once"
    );
    running.stop();

    // The same ledger, honest now: the same key returns the charge that was made.
    let honest = GatewaySim::open(&ledger, SimConfig::default())
        .await
        .unwrap();
    let running = honest.clone().spawn("127.0.0.1:0").await.unwrap();
    let client = GatewayClient::new(&running.url(), timeouts).unwrap();
    let outcome = client.charge(&key("k0"), &command("3")).await;
    assert!(matches!(outcome, Outcome::Ok { .. }), "{outcome:?}");
    assert_eq!(honest.charges().await.unwrap().len(), 40);
}

#[tokio::test]
async fn a_lost_answer_is_unknown_and_reconcile_finds_the_charge_without_charging() {
    let (sim, _running, client) = gateway(SimConfig {
        lost_answer_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let outcome = client.charge(&key("lost"), &command("4")).await;
    assert!(outcome.is_unknown(), "{outcome:?}");

    let Some(Outcome::Ok { data }) = client.reconcile(&key("lost"), &command("4")).await else {
        panic!("the charge was not found")
    };
    let charged = sim.charges().await.unwrap();
    assert_eq!(data["transactionId"], charged[0].transaction_id.as_str());
    assert_eq!(client.reconcile(&key("never"), &command("4")).await, None);
    // A charge under the key that is not this command's is never taken for it.
    let other = client.reconcile(&key("lost"), &command("5")).await;
    let Some(Outcome::Fail { code, .. }) = other else {
        panic!("{other:?}")
    };
    assert_eq!(code.as_deref(), Some("idempotency_key_reused"));
    let served = sim.served();
    assert_eq!((served.charge_requests, served.lookups), (1, 3));
}

#[tokio::test]
async fn a_payment_whose_answer_was_lost_is_charged_once_and_completes() {
    use oncely::{OperationState, RetryPolicy, WalKind};

    let (sim, _running, client) = gateway(SimConfig {
        lost_answer_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50));
    let engine = payments(&dir, client, policy).await;
    let submitted = engine.submit(key("pay-lost"), command("7")).await.unwrap();
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(20))
        .await
        .unwrap();

    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    // Every charge request's answer is lost, so only the lookup could complete it.
    assert_eq!(sim.served().charge_requests, 1, "charged again");
    assert_eq!(sim.charges().await.unwrap().len(), 1);
    let log = engine.history(&done.scope).await.unwrap();
    let reconciled = log
        .iter()
        .filter(|entry| entry.kind == WalKind::OutcomeRecorded)
        .filter(|entry| entry.detail["reconciled"] == true)
        .count();
    assert_eq!(reconciled, 1, "{log:#?}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_cancel_after_a_lost_answer_asks_the_gateway_and_keeps_the_charge() {
    use oncely::{OperationState, RetryPolicy, WalKind};

    let (sim, _running, client) = gateway(SimConfig {
        lost_answer_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A long backoff: after the lost answer the payment waits, its outcome unknown.
    let policy = RetryPolicy::exponential(Duration::from_secs(600), Duration::from_secs(600));
    let engine = payments(&dir, client, policy).await;
    let scope = engine
        .submit(key("pay-cancelled"), command("9"))
        .await
        .unwrap()
        .operation
        .scope;
    let mut waiting = engine.get(&scope).await.unwrap();
    for _ in 0..500 {
        if waiting.state == OperationState::Accepted && waiting.attempt_count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiting = engine.get(&scope).await.unwrap();
    }
    assert_eq!(waiting.state, OperationState::Accepted, "{waiting:?}");

    // The charge went through, but nobody knows: the cancel is only a request, and the
    // attempt it brings forward asks the gateway before anything else.
    let requested = engine.cancel(&scope).await.unwrap();
    assert_eq!(requested.state, OperationState::Accepted);
    assert!(requested.cancel_requested_at.is_some());
    let done = engine.wait(&scope, Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.state, OperationState::Completed, "{done:?}");
    assert_eq!(sim.served().charge_requests, 1, "never charged again");
    let log = engine.history(&scope).await.unwrap();
    let kinds: Vec<WalKind> = log.iter().map(|entry| entry.kind).collect();
    assert!(kinds.contains(&WalKind::CancelRequested), "{kinds:?}");
    assert!(
        log.iter()
            .any(|entry| entry.kind == WalKind::OutcomeRecorded
                && entry.detail["reconciled"] == true),
        "{log:#?}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
