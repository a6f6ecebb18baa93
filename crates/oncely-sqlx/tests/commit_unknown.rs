//! Commit-unknown: a store call whose transaction committed but whose answer was lost (the
//! connection dropped after `COMMIT`), for each write the engine makes. The engine cannot
//! tell it from a failure and tries again or leaves the work to the Finalizer or the
//! Reaper; either way every operation ends once, and no lost answer causes a second call.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{Charge, FakeApi, TestDb, drive_until_terminal, engine, eventually, key};
use oncely::faults::{Fault, FaultPlan, FaultyStore, StoreCall};
use oncely::{CrashPoint, Failpoints, ManualClock, Operation, OperationState, Scope, WalKind};

const OPERATIONS: i64 = 4;

struct Run {
    api: FakeApi,
    operations: Vec<Operation>,
    /// Per operation: its FINALIZED and REAPED entries.
    ends: Vec<(usize, usize)>,
    faults: FaultPlan,
}

fn keys() -> Vec<String> {
    (0..OPERATIONS).map(|i| format!("cu-{i}")).collect()
}

/// Submits the operations to an engine over a store whose first `call` commits and then
/// reports an error, and drives them to their end.
async fn commit_unknown(call: StoreCall, in_two_steps: bool) -> Run {
    let claims = call == StoreCall::Claim;
    let mut config = common::test_config();
    if claims {
        // Claims by the dispatcher, woken by the accepts only, so that the claim under
        // test is one that leases them (not an idle poll that finds nothing).
        config.claim_on_accept = false;
        config.poll_interval = Duration::from_secs(3_600);
    }
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let faults = FaultPlan::default();
    if in_two_steps {
        faults.settle_in_two_steps();
    }
    let store = FaultyStore::new(db.open().await, faults.clone());
    let mut builder = engine(store, &api, &clock).config(config);
    if claims {
        // A reaped operation is due at once, when the reap wakes the dispatcher.
        builder = builder.retry_policy(oncely::RetryPolicy::exponential(
            Duration::ZERO,
            Duration::ZERO,
        ));
    }
    let engine = builder.start().unwrap();
    if claims {
        // Past the dispatcher's first, empty claim at start.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    faults.inject(call, Fault::CommitUnknown, 1);
    let mut scopes: Vec<Scope> = Vec::new();
    for (i, key_text) in keys().iter().enumerate() {
        let submitted = engine
            .submit(key(key_text), Charge::new("cu", 10 + i as i64))
            .await
            .expect("a lost answer is retried, not returned");
        scopes.push(submitted.operation.scope);
    }
    let operations = drive_until_terminal(&engine, &clock, &scopes).await;
    let mut ends = Vec::new();
    for scope in &scopes {
        let history = engine.history(scope).await.unwrap();
        let count = |kind: WalKind| history.iter().filter(|e| e.kind == kind).count();
        ends.push((count(WalKind::Finalized), count(WalKind::Reaped)));
    }
    engine.shutdown(Duration::from_secs(5)).await;
    Run {
        api,
        operations,
        ends,
        faults,
    }
}

/// Every operation completed, was finalized once, and was called once. `reaped`: how many
/// operations the lost write had leased, which nobody ran: the Reaper takes them back
/// when the lease ends (a restarted node at once) and they run then.
fn assert_once(run: &Run, call: StoreCall, reaped: usize) {
    assert_eq!(
        run.faults.injected(call, Fault::CommitUnknown),
        1,
        "the fault fired"
    );
    for (operation, (finalized, _)) in run.operations.iter().zip(&run.ends) {
        assert_eq!(operation.state, OperationState::Completed, "{operation:?}");
        assert_eq!(*finalized, 1, "finalized once: {operation:?}");
    }
    let reaps: usize = run.ends.iter().map(|(_, reaped)| reaped).sum();
    assert_eq!(reaps, reaped, "{:?}", run.ends);
    for key in keys() {
        assert_eq!(run.api.side_effects(&key), 1, "{key} charged once");
        assert_eq!(
            run.api.calls(&key),
            1,
            "{key}: a lost store answer never causes another call"
        );
    }
}

#[tokio::test]
async fn an_accept_whose_answer_is_lost_is_replayed_and_runs_once() {
    let run = commit_unknown(StoreCall::Accept, false).await;
    // The first submit's accept leased its operation to this engine.
    assert_once(&run, StoreCall::Accept, 1);
}

#[tokio::test]
async fn a_claim_whose_answer_is_lost_is_reaped_and_runs_once() {
    let run = commit_unknown(StoreCall::Claim, false).await;
    let claimed = run.ends.iter().filter(|(_, reaped)| *reaped == 1).count();
    assert!(
        claimed >= 1,
        "the lost claim leased something: {:?}",
        run.ends
    );
    assert_once(&run, StoreCall::Claim, claimed);
}

#[tokio::test]
async fn a_settle_whose_answer_is_lost_is_not_applied_twice() {
    let run = commit_unknown(StoreCall::Settle, false).await;
    assert_once(&run, StoreCall::Settle, 0);
}

#[tokio::test]
async fn a_record_whose_answer_is_lost_is_finished_from_the_log() {
    let run = commit_unknown(StoreCall::Record, true).await;
    assert_once(&run, StoreCall::Record, 0);
}

#[tokio::test]
async fn a_finalize_whose_answer_is_lost_is_not_applied_twice() {
    let run = commit_unknown(StoreCall::Finalize, true).await;
    assert_once(&run, StoreCall::Finalize, 0);
}

#[tokio::test]
async fn a_reap_whose_answer_is_lost_is_not_applied_twice() {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    // The first engine dies during its calls: they charged, nobody recorded.
    let failpoints = Failpoints::default();
    failpoints.arm(CrashPoint::DuringCall);
    api.crash_during_call(failpoints.clone());
    let first = engine(
        db.open().await.with_failpoints(failpoints.clone()),
        &api,
        &clock,
    )
    .failpoints(failpoints.clone())
    .start()
    .unwrap();
    let submitted = first
        .submit(key("reaped"), Charge::new("cu", 7))
        .await
        .unwrap();
    eventually("the call to crash the engine", || failpoints.is_crashed()).await;
    drop(first);
    api.stop_crashing();

    // The second engine's Reaper takes the lease back; its answer is lost.
    let faults = FaultPlan::default();
    faults.inject(StoreCall::Reap, Fault::CommitUnknown, 1);
    let store = FaultyStore::new(db.open().await, faults.clone());
    let second = engine(store, &api, &clock).start().unwrap();
    clock.advance(Duration::from_secs(3_600));
    let scope = submitted.operation.scope;
    let done = drive_until_terminal(&second, &clock, std::slice::from_ref(&scope)).await;
    let history = second.history(&scope).await.unwrap();
    second.shutdown(Duration::from_secs(5)).await;

    assert_eq!(faults.injected(StoreCall::Reap, Fault::CommitUnknown), 1);
    assert_eq!(done[0].state, OperationState::Completed);
    let reaped = history.iter().filter(|e| e.kind == WalKind::Reaped).count();
    assert_eq!(reaped, 1, "reaped once: {history:?}");
    assert_eq!(api.side_effects("reaped"), 1, "charged once");
    assert_eq!(
        api.calls("reaped"),
        2,
        "the dead engine's call and one retry, none for the lost answer"
    );
}
