//! One test per crash window of DESIGN.md: the engine dies at that point, a new engine
//! opens the same SQLite file, and every operation still ends exactly once.
//!
//! The store settles an outcome (records it and applies it) in one transaction; the
//! windows between the two steps are tested on a store that settles in two, as the
//! `Store` trait's default does.
//!
//! Every charge submits a receipt as its follow-up (the transactional outbox), delivered
//! by a second engine that only the process after the crash runs: the window between an
//! end and its follow-up's delivery is in every test.
//!
//! Each test checks, for every operation: it is `COMPLETED`; the fake API performed one
//! side effect for its key; no attempt was started after an outcome was recorded, and the
//! recorded outcome is the one kept (I3); its receipt exists once, exactly when its end
//! committed, and was delivered once. Each test also checks that its window was really
//! hit, so that a failpoint that never fires cannot pass for a recovery.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{
    Charge, ChargeOrchestrator, FakeApi, ReceiptOrchestrator, TestDb, drive_until_terminal,
    eventually, key, receipt_key, test_config,
};
use oncely::faults::{FaultPlan, FaultyStore};
use oncely::{
    Clock, CrashPoint, DomainName, Engine, EngineBuilder, Failpoints, ListFilter, ManualClock,
    Operation, OperationState, Orchestrator, Scope, Store, WalEntry, WalKind,
};

/// How the store of the engine that dies settles outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Record and apply in one transaction (the SQL store).
    InOneTransaction,
    /// Record, commit, then apply (the `Store` trait's default).
    InTwoSteps,
}

const OPERATIONS: i64 = 24;

/// What a crash-and-recover run leaves behind for the assertions.
struct Run {
    api: FakeApi,
    /// The receipts' API.
    receipt_api: FakeApi,
    /// The receipt of each operation, after the recovery.
    receipts: Vec<Operation>,
    /// Receipts in the store, all told.
    receipt_count: usize,
    restart: DateTime<Utc>,
    /// key → calls the API had received when the first engine died.
    calls_at_crash: HashMap<String, u32>,
    /// key → answers the API had given when the first engine died.
    answers_at_crash: HashMap<String, usize>,
    operations: Vec<Operation>,
    histories: Vec<Vec<WalEntry>>,
}

impl Run {
    fn key(&self, index: usize) -> &str {
        self.operations[index].scope.key.as_str()
    }

    fn before(&self, entry: &WalEntry) -> bool {
        entry.recorded_at < self.restart
    }

    fn has(&self, index: usize, kind: WalKind, before_restart: bool) -> bool {
        self.histories[index]
            .iter()
            .any(|entry| entry.kind == kind && self.before(entry) == before_restart)
    }

    /// Indexes of the operations for which `condition` holds.
    fn which(&self, condition: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.operations.len())
            .filter(|&i| condition(i))
            .collect()
    }
}

/// An engine for charges that submit receipts.
fn charges<S: Store>(
    store: S,
    api: &FakeApi,
    clock: &ManualClock,
) -> EngineBuilder<S, ChargeOrchestrator> {
    Engine::builder(store, ChargeOrchestrator::new(api.clone()).with_receipts())
        .config(test_config())
        .clock(clock.clone())
}

/// An engine that delivers receipts.
fn receipts<S: Store>(
    store: S,
    api: &FakeApi,
    clock: &ManualClock,
) -> EngineBuilder<S, ReceiptOrchestrator> {
    Engine::builder(store, ReceiptOrchestrator { api: api.clone() })
        .config(test_config())
        .clock(clock.clone())
}

async fn receipt_count<S: Store>(store: &S) -> usize {
    let filter = ListFilter {
        domain: Some(DomainName::new(ReceiptOrchestrator::DOMAIN).unwrap()),
        limit: 1_000,
        ..ListFilter::default()
    };
    store.list(filter).await.unwrap().items.len()
}

async fn crash_and_recover(point: CrashPoint, settle: Settle) -> Run {
    let db = TestDb::new();
    let api = FakeApi::default();
    let receipt_api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let failpoints = Failpoints::default();
    failpoints.arm(point);
    if point == CrashPoint::DuringCall {
        api.crash_during_call(failpoints.clone());
    }
    let commands: Vec<_> = (0..OPERATIONS)
        .map(|i| (key(&format!("op-{i:02}")), Charge::new("crash", 100 + i)))
        .collect();

    // The first engine, which dies at `point`.
    let faults = FaultPlan::default();
    if settle == Settle::InTwoSteps {
        faults.settle_in_two_steps();
    }
    let store = FaultyStore::new(db.open().await.with_failpoints(failpoints.clone()), faults);
    let first = Arc::new(
        charges(store, &api, &clock)
            .failpoints(failpoints.clone())
            .start()
            .unwrap(),
    );
    let mut submits = Vec::new();
    for (key, command) in commands.clone() {
        let first = first.clone();
        // After the crash a submit fails (the engine is gone); the caller will retry.
        submits.push(tokio::spawn(
            async move { first.submit(key, command).await },
        ));
    }
    for submit in submits {
        let _ = submit.await.unwrap();
    }
    eventually("the failpoint to fire", || failpoints.is_crashed()).await;
    let calls_at_crash = commands
        .iter()
        .map(|(key, _)| (key.to_string(), api.calls(key.as_str())))
        .collect();
    let answers_at_crash = commands
        .iter()
        .map(|(key, _)| (key.to_string(), api.answered(key.as_str()).len()))
        .collect();
    drop(Arc::into_inner(first).expect("no submit holds the engine any more"));
    api.stop_crashing();

    // Past every lease: whatever the dead engine held is now the reaper's or the
    // Finalizer's.
    clock.advance(Duration::from_secs(3_600));
    let restart = clock.now();
    let second = charges(db.open().await, &api, &clock).start().unwrap();
    let delivering = receipts(db.open().await, &receipt_api, &clock)
        .start()
        .unwrap();
    let mut scopes: Vec<Scope> = Vec::new();
    for (key, command) in commands {
        // The client retries every request; each is new or a replay, never a conflict.
        scopes.push(second.submit(key, command).await.unwrap().operation.scope);
    }
    let operations = drive_until_terminal(&second, &clock, &scopes).await;
    let mut histories = Vec::new();
    for scope in &scopes {
        histories.push(second.history(scope).await.unwrap());
    }
    let receipt_scopes: Vec<Scope> = scopes
        .iter()
        .map(|scope| delivering.scope(receipt_key(scope.key.as_str())))
        .collect();
    let receipts = drive_until_terminal(&delivering, &clock, &receipt_scopes).await;
    let receipt_count = receipt_count(delivering.store()).await;
    second.shutdown(Duration::from_secs(5)).await;
    delivering.shutdown(Duration::from_secs(5)).await;
    let run = Run {
        api,
        receipt_api,
        receipts,
        receipt_count,
        restart,
        calls_at_crash,
        answers_at_crash,
        operations,
        histories,
    };
    assert_each_operation_ended_exactly_once(&run);
    run
}

fn assert_each_operation_ended_exactly_once(run: &Run) {
    for (index, operation) in run.operations.iter().enumerate() {
        let key = run.key(index);
        assert_eq!(operation.state, OperationState::Completed, "{key}");
        assert_eq!(
            run.api.side_effects(key),
            1,
            "{key}: one side effect per key"
        );

        // I3: after an outcome is recorded, no attempt starts again, and that outcome
        // is the one kept.
        let history = &run.histories[index];
        let recorded = history
            .iter()
            .find(|entry| entry.kind == WalKind::OutcomeRecorded)
            .unwrap_or_else(|| panic!("{key}: no recorded outcome in {history:#?}"));
        let later_attempts = history
            .iter()
            .filter(|entry| entry.kind == WalKind::Executing && entry.attempt > recorded.attempt)
            .count();
        assert_eq!(
            later_attempts, 0,
            "{key}: re-executed after its outcome was recorded"
        );
        assert_eq!(
            operation.outcome_data.as_ref(),
            Some(&recorded.detail["outcome"]["data"]),
            "{key}: the recorded outcome must be the one kept"
        );
        // I6: every state change has its entry, in order.
        assert_eq!(
            history.first().map(|e| e.kind),
            Some(WalKind::Accepted),
            "{key}"
        );
        assert_eq!(
            history.last().map(|e| e.kind),
            Some(WalKind::Finalized),
            "{key}"
        );

        // The outbox: the receipt was committed with the end, never without it, and
        // delivered once.
        let receipt = &run.receipts[index];
        assert_eq!(
            receipt.created_at < run.restart,
            run.has(index, WalKind::Finalized, true),
            "{key}: a receipt exists before the restart exactly when the end committed then"
        );
        assert_eq!(receipt.state, OperationState::Completed, "{key}: receipt");
        let receipt_key = receipt.scope.key.as_str();
        assert_eq!(
            run.receipt_api.side_effects(receipt_key),
            1,
            "{receipt_key}"
        );
    }
    assert_eq!(
        run.receipt_count,
        run.operations.len(),
        "one receipt per charge"
    );
}

#[tokio::test]
async fn crash_after_accept_before_claim_loses_nothing() {
    let run = crash_and_recover(CrashPoint::AfterAccept, Settle::InOneTransaction).await;
    let hit =
        run.which(|i| run.has(i, WalKind::Accepted, true) && !run.has(i, WalKind::Executing, true));
    assert!(
        !hit.is_empty(),
        "no operation was accepted-but-unclaimed at the crash"
    );
    for i in hit {
        assert_eq!(run.api.calls(run.key(i)), 1);
    }
}

#[tokio::test]
async fn crash_after_claim_before_call_is_reaped_and_called_once() {
    let run = crash_and_recover(CrashPoint::AfterClaim, Settle::InOneTransaction).await;
    let hit =
        run.which(|i| run.has(i, WalKind::Executing, true) && run.calls_at_crash[run.key(i)] == 0);
    assert!(
        !hit.is_empty(),
        "no operation was claimed-but-uncalled at the crash"
    );
    for i in hit {
        assert!(
            run.has(i, WalKind::Reaped, false),
            "{}: not reaped",
            run.key(i)
        );
        assert_eq!(run.api.calls(run.key(i)), 1);
    }
}

#[tokio::test]
async fn crash_during_call_is_retried_with_the_same_key_and_charges_once() {
    let run = crash_and_recover(CrashPoint::DuringCall, Settle::InOneTransaction).await;
    let hit =
        run.which(|i| run.calls_at_crash[run.key(i)] == 1 && run.answers_at_crash[run.key(i)] == 0);
    assert!(!hit.is_empty(), "no call was in flight at the crash");
    for i in hit {
        let key = run.key(i);
        assert!(run.has(i, WalKind::Reaped, false), "{key}: not reaped");
        assert_eq!(run.api.calls(key), 2, "{key}: called again after the crash");
        assert_eq!(run.api.side_effects(key), 1, "{key}: but charged once");
    }
}

#[tokio::test]
async fn crash_after_answer_before_record_retries_with_the_same_key_and_charges_once() {
    let run = crash_and_recover(CrashPoint::AfterAnswer, Settle::InOneTransaction).await;
    let hit = run.which(|i| {
        run.answers_at_crash[run.key(i)] > 0 && !run.has(i, WalKind::OutcomeRecorded, true)
    });
    assert!(!hit.is_empty(), "no answer was lost in the crash");
    for i in hit {
        let key = run.key(i);
        assert!(run.has(i, WalKind::Reaped, false), "{key}: not reaped");
        assert_eq!(run.api.calls(key), 2);
        assert_eq!(run.api.side_effects(key), 1);
    }
}

#[tokio::test]
async fn crash_after_record_before_finalize_is_finished_from_the_log_without_a_call() {
    let run = crash_and_recover(CrashPoint::AfterRecord, Settle::InTwoSteps).await;
    let hit = run.which(|i| {
        run.has(i, WalKind::OutcomeRecorded, true) && run.has(i, WalKind::Finalized, false)
    });
    assert!(!hit.is_empty(), "no recorded outcome was left unfinalized");
    for i in hit {
        let key = run.key(i);
        assert_eq!(run.api.calls(key), 1, "{key}: I3 — never called again");
        assert!(
            !run.has(i, WalKind::Reaped, false),
            "{key}: reaped despite its outcome"
        );
        assert_eq!(
            run.operations[i].outcome_data.as_ref().unwrap()["callNumber"],
            1
        );
    }
}

#[tokio::test]
async fn crash_during_finalize_rolls_back_and_is_finished_from_the_log() {
    let run = crash_and_recover(CrashPoint::DuringFinalize, Settle::InTwoSteps).await;
    let hit = run.which(|i| {
        run.has(i, WalKind::OutcomeRecorded, true)
            && !run.has(i, WalKind::Finalized, true)
            && run.has(i, WalKind::Finalized, false)
    });
    assert!(!hit.is_empty(), "no finalize was interrupted");
    for i in hit {
        let key = run.key(i);
        assert_eq!(run.api.calls(key), 1, "{key}: I3 — never called again");
        assert_eq!(
            run.operations[i].outcome_data.as_ref().unwrap()["callNumber"],
            1
        );
    }
}

#[tokio::test]
async fn crash_during_settle_rolls_the_outcome_back_with_its_finalize_and_charges_once() {
    let run = crash_and_recover(CrashPoint::DuringFinalize, Settle::InOneTransaction).await;
    // The settle's transaction rolled back: the answer is lost with its record, never
    // half-applied, and the Reaper retries with the same key.
    let hit = run.which(|i| {
        run.answers_at_crash[run.key(i)] > 0 && !run.has(i, WalKind::OutcomeRecorded, true)
    });
    assert!(!hit.is_empty(), "no settle was interrupted");
    for i in hit {
        let key = run.key(i);
        assert!(!run.has(i, WalKind::Finalized, true), "{key}: half-applied");
        assert!(run.has(i, WalKind::Reaped, false), "{key}: not reaped");
        assert_eq!(run.api.calls(key), 2, "{key}: called again after the crash");
        assert_eq!(run.api.side_effects(key), 1, "{key}: but charged once");
    }
}

#[tokio::test]
async fn a_crash_during_a_follow_ups_delivery_delivers_it_once() {
    let db = TestDb::new();
    let (api, receipt_api) = (FakeApi::default(), FakeApi::default());
    let clock = ManualClock::starting_now();
    let failpoints = Failpoints::default();
    failpoints.arm(CrashPoint::DuringCall);
    receipt_api.crash_during_call(failpoints.clone());

    // One process: the charges end, their receipts are committed with them, and the
    // process dies in the middle of delivering one.
    let charging = charges(db.open().await, &api, &clock).start().unwrap();
    let first = receipts(
        db.open().await.with_failpoints(failpoints.clone()),
        &receipt_api,
        &clock,
    )
    .failpoints(failpoints.clone())
    .start()
    .unwrap();
    let mut scopes = Vec::new();
    for i in 0..OPERATIONS {
        let command = Charge::new("outbox", 100 + i);
        let submitted = charging.submit(key(&format!("out-{i:02}")), command).await;
        scopes.push(submitted.unwrap().operation.scope);
    }
    drive_until_terminal(&charging, &clock, &scopes).await;
    eventually("a delivery to crash", || failpoints.is_crashed()).await;
    charging.shutdown(Duration::from_secs(5)).await;
    drop(first);
    receipt_api.stop_crashing();
    let interrupted: Vec<String> = scopes
        .iter()
        .map(|scope| receipt_key(scope.key.as_str()).to_string())
        .filter(|key| receipt_api.calls(key) == 1 && receipt_api.answered(key).is_empty())
        .collect();
    assert!(
        !interrupted.is_empty(),
        "no delivery was in flight at the crash"
    );

    // The next process delivers what is left, the interrupted one again under its key.
    clock.advance(Duration::from_secs(3_600));
    let second = receipts(db.open().await, &receipt_api, &clock)
        .start()
        .unwrap();
    let receipt_scopes: Vec<Scope> = scopes
        .iter()
        .map(|scope| second.scope(receipt_key(scope.key.as_str())))
        .collect();
    let delivered = drive_until_terminal(&second, &clock, &receipt_scopes).await;
    for receipt in &delivered {
        let key = receipt.scope.key.as_str();
        assert_eq!(receipt.state, OperationState::Completed, "{key}");
        assert_eq!(receipt_api.side_effects(key), 1, "{key}: delivered once");
    }
    for key in &interrupted {
        assert_eq!(receipt_api.calls(key), 2, "{key}: tried again with its key");
    }
    assert_eq!(receipt_count(second.store()).await, scopes.len());
    second.shutdown(Duration::from_secs(5)).await;
}
