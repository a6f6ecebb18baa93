//! Helpers shared by the integration tests: a fake external API that honours idempotency
//! keys and counts what it did, an orchestrator calling it, and SQLite files in temp dirs.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod servers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely::{
    Attempt, CrashPoint, Decision, DomainName, Engine, EngineBuilder, EngineConfig, Failpoints,
    FollowUp, IdempotencyKey, InvalidName, ManualClock, Operation, OperationState, Orchestrator,
    Outcome, RetryPolicy, Scope, Store,
};
use oncely_sqlx::SqliteStore;
use serde::{Deserialize, Serialize};

/// What the fake API does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behaviour {
    /// Charges and answers.
    Charge,
    /// Answers 503 this many times, then charges.
    Unavailable(u32),
    /// Declines for good.
    Decline,
    /// Panics inside the orchestrator.
    Panic,
    /// Takes this many milliseconds, then charges.
    Slow(u64),
    /// Takes this many milliseconds, then answers 503.
    SlowUnavailable(u64),
    /// Takes this many milliseconds, then declines.
    SlowDecline(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub customer: String,
    pub amount: i64,
    pub behaviour: Behaviour,
}

impl Charge {
    pub fn new(customer: &str, amount: i64) -> Self {
        Self {
            customer: customer.into(),
            amount,
            behaviour: Behaviour::Charge,
        }
    }

    pub fn behaving(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }
}

#[derive(Debug, Default)]
struct Ledger {
    /// key → transaction id of the one charge made under it.
    charges: HashMap<String, String>,
    /// key → side effects performed (must never exceed 1).
    side_effects: HashMap<String, u32>,
    /// key → calls received.
    calls: HashMap<String, u32>,
    /// key → call numbers answered, in order.
    answers: HashMap<String, Vec<u32>>,
    next_transaction: u64,
}

/// A payment provider in memory that honours the `Idempotency-Key` it is given, as real
/// ones do: a second call with the same key returns the first charge, never a new one.
#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    ledger: Arc<Mutex<Ledger>>,
    /// When set, the call trips `CrashPoint::DuringCall` after charging and never answers.
    crash_during_call: Arc<Mutex<Option<Failpoints>>>,
}

impl FakeApi {
    pub fn crash_during_call(&self, failpoints: Failpoints) {
        *self.crash_during_call.lock().unwrap() = Some(failpoints);
    }

    /// The process that was to die has died: calls from now on answer normally.
    pub fn stop_crashing(&self) {
        *self.crash_during_call.lock().unwrap() = None;
    }

    pub fn side_effects(&self, key: &str) -> u32 {
        self.ledger
            .lock()
            .unwrap()
            .side_effects
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn calls(&self, key: &str) -> u32 {
        self.ledger
            .lock()
            .unwrap()
            .calls
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_calls(&self) -> u32 {
        self.ledger.lock().unwrap().calls.values().sum()
    }

    pub fn max_side_effects(&self) -> u32 {
        self.ledger
            .lock()
            .unwrap()
            .side_effects
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    pub fn answered(&self, key: &str) -> Vec<u32> {
        self.ledger
            .lock()
            .unwrap()
            .answers
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// One call, as the gateway sees it: (call number, outcome).
    pub fn call(&self, key: &str, charge: &Charge) -> (u32, Outcome) {
        let mut ledger = self.ledger.lock().unwrap();
        let calls = ledger.calls.entry(key.to_owned()).or_default();
        *calls += 1;
        let call_number = *calls;
        let outcome = match charge.behaviour {
            Behaviour::Decline | Behaviour::SlowDecline(_) => {
                Outcome::fail("card declined").with_error_code("card_declined")
            }
            Behaviour::SlowUnavailable(_) => Outcome::retry("503 Service Unavailable"),
            Behaviour::Unavailable(times) if call_number <= times => {
                Outcome::retry("503 Service Unavailable").with_backoff(Duration::from_secs(1))
            }
            Behaviour::Charge
            | Behaviour::Unavailable(_)
            | Behaviour::Panic
            | Behaviour::Slow(_) => {
                let transaction = match ledger.charges.get(key) {
                    Some(existing) => existing.clone(),
                    None => {
                        ledger.next_transaction += 1;
                        let id = format!("tx_{}", ledger.next_transaction);
                        ledger.charges.insert(key.to_owned(), id.clone());
                        *ledger.side_effects.entry(key.to_owned()).or_default() += 1;
                        id
                    }
                };
                Outcome::ok()
                    .with_data("transactionId", transaction)
                    .with_data("callNumber", call_number)
                    .with_data("amount", charge.amount)
            }
        };
        (call_number, outcome)
    }

    fn answer(&self, key: &str, call_number: u32) {
        let mut ledger = self.ledger.lock().unwrap();
        ledger
            .answers
            .entry(key.to_owned())
            .or_default()
            .push(call_number);
    }
}

/// Calls the fake API once per attempt, forwarding the operation's key (I7).
#[derive(Debug, Clone)]
pub struct ChargeOrchestrator {
    pub api: FakeApi,
    pub policy: RetryPolicy,
    /// Whether a completed charge submits a receipt ([`ReceiptOrchestrator`]) as its
    /// follow-up, under the key `{key}:receipt`.
    pub receipts: bool,
}

impl ChargeOrchestrator {
    pub fn new(api: FakeApi) -> Self {
        Self {
            api,
            policy: RetryPolicy::default(),
            receipts: false,
        }
    }

    pub fn with_receipts(mut self) -> Self {
        self.receipts = true;
        self
    }
}

/// The key of the receipt of the charge `key`.
pub fn receipt_key(key: &str) -> IdempotencyKey {
    IdempotencyKey::new(format!("{key}:receipt")).unwrap()
}

/// Sends receipts through its own fake API: the follow-ups of completed charges.
#[derive(Debug, Clone)]
pub struct ReceiptOrchestrator {
    pub api: FakeApi,
}

impl Orchestrator for ReceiptOrchestrator {
    type Command = Charge;
    const DOMAIN: &'static str = "TEST_RECEIPT";
    const EVENT_TYPE: &'static str = "TEST_RECEIPT_REQUESTED";

    async fn execute(&self, command: Charge, attempt: Attempt) -> Outcome {
        ChargeOrchestrator::new(self.api.clone())
            .execute(command, attempt)
            .await
    }
}

impl Orchestrator for ChargeOrchestrator {
    type Command = Charge;
    const DOMAIN: &'static str = "TEST_CHARGE";
    const EVENT_TYPE: &'static str = "TEST_CHARGE_REQUESTED";

    fn business_key(&self, command: &Charge) -> Option<Result<IdempotencyKey, InvalidName>> {
        Some(IdempotencyKey::new(format!(
            "CHARGE-{}-{}",
            command.customer, command.amount
        )))
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.policy.clone()
    }

    fn follow_ups(&self, operation: &Operation, decision: &Decision) -> Vec<FollowUp> {
        if !self.receipts || decision.target_state() != OperationState::Completed {
            return Vec::new();
        }
        let mut receipt: Charge = serde_json::from_value(operation.payload.clone()).unwrap();
        receipt.behaviour = Behaviour::Charge;
        vec![FollowUp {
            domain: DomainName::new(ReceiptOrchestrator::DOMAIN).unwrap(),
            key: receipt_key(operation.scope.key.as_str()),
            event_type: ReceiptOrchestrator::EVENT_TYPE.to_owned(),
            payload: serde_json::to_value(receipt).unwrap(),
        }]
    }

    async fn execute(&self, command: Charge, attempt: Attempt) -> Outcome {
        let key = attempt.idempotency_key().as_str().to_owned();
        if command.behaviour == Behaviour::Panic {
            panic!("orchestrator bug for {key}");
        }
        if let Behaviour::Slow(millis)
        | Behaviour::SlowUnavailable(millis)
        | Behaviour::SlowDecline(millis) = command.behaviour
        {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        let (call_number, outcome) = self.api.call(&key, &command);
        let crash = self.api.crash_during_call.lock().unwrap().clone();
        if let Some(failpoints) = crash
            && failpoints.hit(CrashPoint::DuringCall)
        {
            std::future::pending::<()>().await;
        }
        self.api.answer(&key, call_number);
        outcome
    }
}

impl std::ops::Deref for ChargeOrchestrator {
    type Target = FakeApi;
    fn deref(&self) -> &FakeApi {
        &self.api
    }
}

/// A SQLite file in a temporary directory, removed at drop.
pub struct TestDb {
    _dir: tempfile::TempDir,
    pub url: String,
}

impl TestDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("oncely.db").display());
        Self { _dir: dir, url }
    }

    pub async fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.url).await.unwrap()
    }
}

/// A configuration for tests: fast polls, a 30 s lease that only a manual clock expires.
pub fn test_config() -> EngineConfig {
    EngineConfig {
        workers: 8,
        lease_ttl: Duration::from_secs(30),
        call_timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
        maintenance_interval: Duration::from_millis(50),
        finalize_grace: Duration::from_secs(1),
        batch_size_max: 16,
        retention: None,
        claim_on_accept: true,
        batches_in_flight: 2,
    }
}

pub fn engine<S: Store>(
    store: S,
    api: &FakeApi,
    clock: &ManualClock,
) -> EngineBuilder<S, ChargeOrchestrator> {
    Engine::builder(store, ChargeOrchestrator::new(api.clone()))
        .config(test_config())
        .clock(clock.clone())
}

/// A database, a fake API, a manual clock and an engine started on them with
/// [`test_config`]. Keep the database guard alive for the test.
pub async fn started() -> (
    TestDb,
    FakeApi,
    ManualClock,
    Engine<SqliteStore, ChargeOrchestrator>,
) {
    let db = TestDb::new();
    let api = FakeApi::default();
    let clock = ManualClock::starting_now();
    let engine = engine(db.open().await, &api, &clock).start().unwrap();
    (db, api, clock, engine)
}

pub fn key(text: &str) -> IdempotencyKey {
    IdempotencyKey::new(text).unwrap()
}

/// Moves the clock past every lease and backoff until each operation is terminal.
/// Panics after a bounded number of rounds (I2 broken).
pub async fn drive_until_terminal<S: Store, O: Orchestrator>(
    engine: &Engine<S, O>,
    clock: &ManualClock,
    scopes: &[Scope],
) -> Vec<Operation> {
    for _round in 0..200 {
        let mut operations = Vec::with_capacity(scopes.len());
        for scope in scopes {
            operations.push(engine.get(scope).await.unwrap());
        }
        if operations
            .iter()
            .all(|operation| operation.state.is_terminal())
        {
            return operations;
        }
        clock.advance(Duration::from_secs(600));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let stuck: Vec<_> = {
        let mut stuck = Vec::new();
        for scope in scopes {
            let operation = engine.get(scope).await.unwrap();
            if !operation.state.is_terminal() {
                stuck.push((scope.to_string(), operation.state));
            }
        }
        stuck
    };
    panic!("operations never reached a terminal state: {stuck:?}");
}

/// Polls `condition` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
