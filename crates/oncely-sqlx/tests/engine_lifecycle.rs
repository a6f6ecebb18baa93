//! The engine end to end on SQLite: submit, replay, retry, fail, wake, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Behaviour, Charge, FakeApi, TestDb, drive_until_terminal, engine, key};
use oncely::faults::{Fault, FaultPlan, FaultyStore, StoreCall};
use oncely::{
    Error, IdempotencyKey, ListFilter, ManualClock, OperationState, RetryPolicy, Store, TenantId,
    WalKind,
};

#[tokio::test]
async fn submitted_operation_completes_once_and_forwards_its_key() {
    let (_db, api, _clock, engine) = common::started().await;

    let submitted = engine
        .submit(key("order-1"), Charge::new("ada", 1000))
        .await
        .unwrap();
    assert!(!submitted.replayed);
    // A worker was free, so the accept leased it at once: no claim, no poll.
    assert_eq!(submitted.operation.state, OperationState::Processing);
    assert_eq!(submitted.operation.attempt_count, 1);
    assert_eq!(
        submitted.operation.lease.as_ref().map(|lease| &lease.owner),
        Some(engine.owner())
    );
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(10))
        .await
        .unwrap();

    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(done.attempt_count, 1);
    assert_eq!(done.outcome_data.as_ref().unwrap()["transactionId"], "tx_1");
    assert!(done.completed_at.is_some() && done.lease.is_none());
    assert_eq!(api.calls("order-1"), 1);
    assert_eq!(api.side_effects("order-1"), 1);
    let kinds: Vec<WalKind> = engine
        .history(&done.scope)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            WalKind::Accepted,
            WalKind::Executing,
            WalKind::OutcomeRecorded,
            WalKind::Finalized
        ]
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_claim_on_accept_the_dispatcher_claims_what_was_accepted() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let config = oncely::EngineConfig {
        claim_on_accept: false,
        ..common::test_config()
    };
    let engine = engine(db.open().await, &api, &clock)
        .config(config)
        .start()
        .unwrap();
    let submitted = engine
        .submit(key("claimed-later"), Charge::new("ada", 1))
        .await
        .unwrap();
    assert_eq!(submitted.operation.state, OperationState::Accepted);
    assert!(submitted.operation.lease.is_none());
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(api.calls("claimed-later"), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn duplicate_submit_replays_and_conflicting_submit_is_refused() {
    let (_db, api, _clock, engine) = common::started().await;

    let first = engine
        .submit(key("k"), Charge::new("ada", 10))
        .await
        .unwrap();
    let again = engine
        .submit(key("k"), Charge::new("ada", 10))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.operation.id, first.operation.id);

    let conflict = engine.submit(key("k"), Charge::new("ada", 11)).await;
    match conflict {
        Err(Error::Conflict { scope }) => assert_eq!(scope.key.as_str(), "k"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let done = engine
        .wait(&first.operation.scope, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.payload["amount"], 10,
        "the conflicting body changed nothing"
    );
    let page = engine
        .list(ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(api.calls("k"), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn concurrent_duplicates_join_one_operation() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let engine = std::sync::Arc::new(engine(db.open().await, &api, &clock).start().unwrap());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .submit(key("same"), Charge::new("bob", 5))
                .await
                .unwrap()
        }));
    }
    let mut new = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let submission = task.await.unwrap();
        new += usize::from(!submission.replayed);
        ids.insert(submission.operation.id);
    }
    assert_eq!((new, ids.len()), (1, 1));
    let scope = engine.scope(key("same"));
    let done = engine.wait(&scope, Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(api.calls("same"), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_key_until_success() {
    let (_db, api, clock, engine) = common::started().await;
    let charge = Charge::new("cy", 7).behaving(Behaviour::Unavailable(2));
    let submitted = engine.submit(key("flaky"), charge).await.unwrap();

    let done = drive_until_terminal(
        &engine,
        &clock,
        std::slice::from_ref(&submitted.operation.scope),
    )
    .await;
    assert_eq!(done[0].state, OperationState::Completed);
    assert_eq!(done[0].attempt_count, 3);
    assert_eq!(api.calls("flaky"), 3);
    assert_eq!(api.side_effects("flaky"), 1);
    assert_eq!(done[0].outcome_data.as_ref().unwrap()["callNumber"], 3);
}

#[tokio::test]
async fn retries_exhausted_end_in_timeout_and_an_operator_retry_finishes_them() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let orchestrator = common::ChargeOrchestrator::new(api.clone());
    // The engine's policy wins over the orchestrator's (5 attempts).
    let engine = oncely::Engine::builder(db.open().await, orchestrator)
        .retry_policy(RetryPolicy::default().attempts(2))
        .config(common::test_config())
        .clock(clock.clone())
        .start()
        .unwrap();
    let charge = Charge::new("dee", 9).behaving(Behaviour::Unavailable(3));
    let scope = engine
        .submit(key("stubborn"), charge)
        .await
        .unwrap()
        .operation
        .scope;

    let done = drive_until_terminal(&engine, &clock, std::slice::from_ref(&scope)).await;
    assert_eq!(done[0].state, OperationState::Timeout);
    assert_eq!(done[0].attempt_count, 2);

    let retried = engine.retry(&scope).await.unwrap();
    assert_eq!(retried.state, OperationState::Accepted);
    let done = drive_until_terminal(&engine, &clock, std::slice::from_ref(&scope)).await;
    assert_eq!(done[0].state, OperationState::Completed);
    assert_eq!(done[0].attempt_count, 4, "call 3 fails, call 4 charges");
    assert_eq!(api.side_effects("stubborn"), 1);
    let history = engine.history(&scope).await.unwrap();
    assert!(
        history
            .iter()
            .any(|entry| entry.kind == WalKind::OperatorRetried)
    );

    match engine.retry(&scope).await {
        Err(Error::NotRetryable { state, .. }) => assert_eq!(state, OperationState::Completed),
        other => panic!("a completed operation cannot be retried: {other:?}"),
    }
}

#[tokio::test]
async fn a_decline_fails_at_once_with_its_code() {
    let (_db, api, _clock, engine) = common::started().await;
    let charge = Charge::new("eve", 3).behaving(Behaviour::Decline);
    let scope = engine
        .submit(key("declined"), charge)
        .await
        .unwrap()
        .operation
        .scope;
    let done = engine.wait(&scope, Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.state, OperationState::Failed);
    assert_eq!(done.error_code.as_deref(), Some("card_declined"));
    assert_eq!(api.calls("declined"), 1);
}

#[tokio::test]
async fn a_panicking_orchestrator_is_retried_then_timed_out_without_killing_the_engine() {
    let (_db, _api, clock, engine) = common::started().await;
    let bad = engine
        .submit(key("bug"), Charge::new("f", 1).behaving(Behaviour::Panic))
        .await
        .unwrap();
    let good = engine
        .submit(key("fine"), Charge::new("g", 1))
        .await
        .unwrap();
    let scopes = [bad.operation.scope, good.operation.scope];
    let done = drive_until_terminal(&engine, &clock, &scopes).await;
    assert_eq!(done[0].state, OperationState::Timeout);
    assert_eq!(done[0].attempt_count, RetryPolicy::default().attempts_max);
    assert_eq!(done[1].state, OperationState::Completed);
}

#[tokio::test]
async fn a_local_accept_wakes_a_worker_without_waiting_for_a_poll() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let mut config = common::test_config();
    config.poll_interval = Duration::from_secs(3_600);
    config.maintenance_interval = Duration::from_secs(3_600);
    let engine = engine(db.open().await, &api, &clock)
        .config(config)
        .start()
        .unwrap();
    // Let the dispatcher find nothing and go to sleep for its hour.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let scope = engine
        .submit(key("now"), Charge::new("h", 1))
        .await
        .unwrap()
        .operation
        .scope;
    let done = engine.wait(&scope, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.state, OperationState::Completed);
}

#[tokio::test]
async fn business_key_is_used_without_a_key_and_tenants_do_not_share_keys() {
    let (_db, _api, _clock, engine) = common::started().await;
    let a = engine
        .submit_for(TenantId::default(), None, Charge::new("ida", 42))
        .await
        .unwrap();
    assert_eq!(a.operation.scope.key.as_str(), "CHARGE-ida-42");
    let b = engine
        .submit_for(TenantId::new("acme").unwrap(), None, Charge::new("ida", 43))
        .await
        .unwrap();
    assert_ne!(a.operation.id, b.operation.id);
    let same_key_other_tenant = engine
        .submit_for(
            TenantId::new("acme").unwrap(),
            Some(key("CHARGE-ida-42")),
            Charge::new("ida", 99),
        )
        .await
        .unwrap();
    assert!(!same_key_other_tenant.replayed);
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_stores_nothing() {
    let (_db, api, _clock, engine) = common::started().await;

    for bad in ["", "   ", "has space", "naïve", &"x".repeat(256)] {
        assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
    }
    // A business key built from bad fields is refused before anything is written.
    let refused = engine
        .submit_for(TenantId::default(), None, Charge::new("with space", 1))
        .await;
    assert!(matches!(refused, Err(Error::InvalidName(_))), "{refused:?}");

    let unknown = engine.scope(key("never-submitted"));
    assert!(matches!(
        engine.get(&unknown).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        engine.history(&unknown).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        engine.retry(&unknown).await,
        Err(Error::NotFound { .. })
    ));

    let page = engine
        .list(ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(page.items.is_empty(), "nothing was stored");
    assert_eq!(api.total_calls(), 0);
}

#[tokio::test]
async fn shutdown_lets_running_calls_finish_and_records_them() {
    let (_db, api, _clock, engine) = common::started().await;
    let mut scopes = Vec::new();
    for i in 0..20 {
        let key = key(&format!("s-{i}"));
        scopes.push(
            engine
                .submit(key, Charge::new("s", i))
                .await
                .unwrap()
                .operation
                .scope,
        );
    }
    let store = engine.store().clone();
    engine.shutdown(Duration::from_secs(5)).await;
    // Whatever was called was also recorded and finalized before shutdown returned.
    for scope in &scopes {
        let operation = oncely::Store::get(&store, scope).await.unwrap().unwrap();
        let calls = api.calls(scope.key.as_str());
        match operation.state {
            OperationState::Completed => assert_eq!(calls, 1),
            OperationState::Accepted => assert_eq!(calls, 0),
            other => panic!("{scope} left {other} with {calls} calls"),
        }
    }
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_before_anything_starts() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let config = oncely::EngineConfig {
        workers: 0,
        ..common::test_config()
    };
    let refused = engine(db.open().await, &api, &clock).config(config).start();
    assert!(matches!(refused, Err(Error::Config(_))));
}

#[tokio::test]
async fn shutdown_waits_for_a_running_call_within_its_grace() {
    let (_db, api, _clock, engine) = common::started().await;
    let slow = Charge::new("slow", 1).behaving(Behaviour::Slow(300));
    let scope = engine
        .submit(key("slow"), slow)
        .await
        .unwrap()
        .operation
        .scope;
    let store = engine.store().clone();
    wait_until_processing(&engine, &scope).await; // the call is running
    engine.shutdown(Duration::from_secs(5)).await;
    let operation = oncely::Store::get(&store, &scope).await.unwrap().unwrap();
    assert_eq!(operation.state, OperationState::Completed);
    assert_eq!(api.calls("slow"), 1);
}

#[tokio::test]
async fn shutdown_abandons_a_call_that_outlives_its_grace_to_the_reaper() {
    let (db, api, clock, engine) = common::started().await;
    let slow = Charge::new("slower", 1).behaving(Behaviour::Slow(2_000));
    let scope = engine
        .submit(key("slower"), slow)
        .await
        .unwrap()
        .operation
        .scope;
    wait_until_processing(&engine, &scope).await;
    engine.shutdown(Duration::from_millis(50)).await;

    let next = common::engine(db.open().await, &api, &clock)
        .start()
        .unwrap();
    let abandoned = next.get(&scope).await.unwrap();
    assert_eq!(
        abandoned.state,
        OperationState::Processing,
        "left to its lease"
    );
    clock.advance(Duration::from_secs(31));
    // The engine's own maintenance loop may reap it first; either way it is reaped once.
    next.reap_expired().await.unwrap();
    clock.advance(Duration::from_secs(21)); // past the seed's 20 s backoff after attempt 1
    let done = next.wait(&scope, Duration::from_secs(10)).await.unwrap();
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(done.attempt_count, 2, "retried after the lease expired");
    let history = next.history(&scope).await.unwrap();
    let reaped = history
        .iter()
        .filter(|entry| entry.kind == WalKind::Reaped)
        .count();
    assert_eq!(reaped, 1, "{history:#?}");
    assert_eq!(
        api.side_effects("slower"),
        1,
        "with the same key: charged once"
    );
}

#[tokio::test]
async fn retention_purges_terminal_operations_and_frees_their_keys() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let config = oncely::EngineConfig {
        retention: Some(Duration::from_secs(3_600)),
        ..common::test_config()
    };
    let engine = engine(db.open().await, &api, &clock)
        .config(config)
        .start()
        .unwrap();
    let scope = engine
        .submit(key("kept-an-hour"), Charge::new("r", 1))
        .await
        .unwrap()
        .operation
        .scope;
    assert_eq!(
        engine
            .wait(&scope, Duration::from_secs(10))
            .await
            .unwrap()
            .state,
        OperationState::Completed
    );
    assert_eq!(
        engine.purge_expired().await.unwrap(),
        0,
        "younger than the retention"
    );
    clock.advance(Duration::from_secs(3_601));
    // The engine's maintenance loop may purge it first; either way it is gone.
    engine.purge_expired().await.unwrap();
    assert!(matches!(
        engine.get(&scope).await,
        Err(Error::NotFound { .. })
    ));
    let again = engine
        .submit(key("kept-an-hour"), Charge::new("r", 2))
        .await
        .unwrap();
    assert!(!again.replayed, "after retention the key is new again");
}

async fn wait_until_processing<S: oncely::Store>(
    engine: &oncely::Engine<S, common::ChargeOrchestrator>,
    scope: &oncely::Scope,
) {
    for _ in 0..500 {
        if engine.get(scope).await.unwrap().state == OperationState::Processing {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{scope} was never claimed");
}

#[tokio::test]
async fn on_terminal_reports_each_terminal_operation_once_after_it_is_committed() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let engine = engine(db.open().await, &api, &clock)
        .on_terminal(move |id, state| {
            let _ = seen_tx.send((id, state));
        })
        .start()
        .unwrap();

    let paid = engine
        .submit(key("paid"), Charge::new("ada", 5))
        .await
        .unwrap();
    let declined = engine
        .submit(
            key("declined"),
            Charge::new("bob", 5).behaving(Behaviour::Decline),
        )
        .await
        .unwrap();
    let mut reported = std::collections::HashMap::new();
    while reported.len() < 2 {
        let (id, state) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("both operations reported")
            .unwrap();
        // Committed before it is reported: a read now sees the same state.
        let stored = engine
            .store()
            .get(&if id == paid.operation.id {
                paid.operation.scope.clone()
            } else {
                declined.operation.scope.clone()
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.state, state);
        assert!(reported.insert(id, state).is_none(), "{id} reported twice");
    }
    assert_eq!(reported[&paid.operation.id], OperationState::Completed);
    assert_eq!(reported[&declined.operation.id], OperationState::Failed);
    engine.shutdown(Duration::from_secs(5)).await;
    assert!(seen.try_recv().is_err(), "nothing else was reported");
}

#[tokio::test]
async fn an_accept_that_fails_and_rolls_back_is_tried_again_and_stored_once() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    // The first two accepts fail as a deadlock would: rolled back, worth trying again.
    let faults = FaultPlan::default();
    faults.inject(StoreCall::Accept, Fault::FailBefore, 2);
    let store = FaultyStore::new(db.open().await, faults.clone());
    let engine = engine(store, &api, &clock).start().unwrap();

    let submitted = engine
        .submit(key("deadlocked"), Charge::new("ada", 5))
        .await
        .expect("accepted on the third try");
    assert!(!submitted.replayed);
    assert_eq!(faults.injected(StoreCall::Accept, Fault::FailBefore), 2);
    assert_eq!(faults.pending(), 0);
    let done = engine
        .wait(&submitted.operation.scope, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.state, OperationState::Completed);
    assert_eq!(api.side_effects("deadlocked"), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_follow_up_wakes_its_domains_idle_engine_on_the_same_store() {
    let db = TestDb::new();
    let (api, receipt_api) = (FakeApi::default(), FakeApi::default());
    let clock = ManualClock::starting_now();
    // Polls that never come within the test: only the wake can start the receipt.
    let config = oncely::EngineConfig {
        poll_interval: Duration::from_secs(3_600),
        ..common::test_config()
    };
    let store = db.open().await;
    let orchestrator = common::ChargeOrchestrator::new(api.clone()).with_receipts();
    let charges = oncely::Engine::builder(store.clone(), orchestrator)
        .config(config.clone())
        .clock(clock.clone())
        .start()
        .unwrap();
    let receipts = oncely::Engine::builder(
        store,
        common::ReceiptOrchestrator {
            api: receipt_api.clone(),
        },
    )
    .config(config)
    .clock(clock.clone())
    .start()
    .unwrap();
    // Both idle before the charge arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let charged = charges
        .submit(key("woken"), Charge::new("ada", 5))
        .await
        .unwrap();
    charges
        .wait(&charged.operation.scope, Duration::from_secs(10))
        .await
        .unwrap();
    let receipt = receipts.scope(common::receipt_key("woken"));
    common::eventually("the receipt to be delivered", || {
        receipt_api.side_effects(receipt.key.as_str()) == 1
    })
    .await;
    charges.shutdown(Duration::from_secs(5)).await;
    receipts.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cancel_ends_a_waiting_operation_at_once_and_a_running_one_only_if_it_does_not_succeed() {
    let (_db, api, clock, engine) = common::started().await;
    let cancelled_kind = |history: Vec<oncely::WalEntry>| {
        history
            .into_iter()
            .filter(|entry| {
                matches!(
                    entry.kind,
                    WalKind::OperatorCancelled | WalKind::CancelRequested
                )
            })
            .map(|entry| entry.kind)
            .collect::<Vec<_>>()
    };

    // Waiting for a retry: cancelled at once, never called again.
    let waiting = engine
        .submit(
            key("waiting"),
            Charge::new("w", 1).behaving(Behaviour::Unavailable(9)),
        )
        .await
        .unwrap()
        .operation
        .scope;
    common::eventually("the first attempt answered 503", || {
        api.answered("waiting").len() == 1
    })
    .await;
    for _ in 0..500 {
        if engine.get(&waiting).await.unwrap().state == OperationState::Accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = engine.cancel(&waiting).await.unwrap();
    assert_eq!(cancelled.state, OperationState::Cancelled);
    let done = engine.wait(&waiting, Duration::from_secs(5)).await.unwrap();
    assert_eq!(done.state, OperationState::Cancelled);
    clock.advance(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.calls("waiting"), 1, "no attempt after the cancel");
    assert_eq!(
        cancelled_kind(engine.history(&waiting).await.unwrap()),
        [WalKind::OperatorCancelled]
    );

    // Running, and the attempt succeeds: the cancel loses, the payment completes.
    for (name, behaviour, ends, calls) in [
        (
            "succeeds",
            Behaviour::Slow(300),
            OperationState::Completed,
            1,
        ),
        (
            "busy",
            Behaviour::SlowUnavailable(300),
            OperationState::Cancelled,
            1,
        ),
        (
            "declined",
            Behaviour::SlowDecline(300),
            OperationState::Failed,
            1,
        ),
    ] {
        let scope = engine
            .submit(key(name), Charge::new(name, 2).behaving(behaviour))
            .await
            .unwrap()
            .operation
            .scope;
        wait_until_processing(&engine, &scope).await;
        let requested = engine.cancel_by(&scope, Some("ops-key")).await.unwrap();
        assert_eq!(requested.state, OperationState::Processing, "{name}");
        assert!(requested.cancel_requested_at.is_some(), "{name}");
        let mut done = engine.wait(&scope, Duration::from_secs(2)).await.unwrap();
        for _ in 0..20 {
            if done.state.is_terminal() {
                break;
            }
            // A retry waits for its backoff; the cancel comes with its next attempt.
            clock.advance(Duration::from_secs(30));
            done = engine.wait(&scope, Duration::from_secs(1)).await.unwrap();
        }
        assert_eq!(done.state, ends, "{name}");
        assert_eq!(api.calls(name), calls, "{name}: never called again");
        let history = engine.history(&scope).await.unwrap();
        let request = history
            .iter()
            .find(|entry| entry.kind == WalKind::CancelRequested)
            .unwrap();
        assert_eq!(request.detail["by"], "ops-key", "{name}");
        assert_eq!(request.detail["previousState"], "PROCESSING", "{name}");
    }

    // Ended: refused; unknown: not found.
    let succeeded = oncely::Scope::new(
        TenantId::default(),
        engine.domain().clone(),
        key("succeeds"),
    );
    match engine.cancel(&succeeded).await {
        Err(Error::NotCancellable { state, .. }) => assert_eq!(state, OperationState::Completed),
        other => panic!("a completed operation cannot be cancelled: {other:?}"),
    }
    let missing = oncely::Scope::new(TenantId::default(), engine.domain().clone(), key("nope"));
    assert!(matches!(
        engine.cancel(&missing).await,
        Err(Error::NotFound { .. })
    ));
    engine.shutdown(Duration::from_secs(5)).await;
}
