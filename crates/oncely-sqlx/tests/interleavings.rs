//! Random interleavings of accept, duplicate and conflicting accept, claim, execute,
//! record, finalize, crash, reap and the Finalizer across two workers and a controlled
//! clock, with I1–I4 checked after every step and I2 at the end.
//!
//! The workers drive the `Store` directly, one lifecycle step per proptest step, so that
//! the interleavings the engine's tasks could produce (and the ones only a zombie could)
//! are all reachable.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
mod conformance;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Behaviour, Charge, FakeApi};
use conformance::{domain, new_operation, owner, scope};
use oncely::engine::{decide, decide_reap};
use oncely::{
    Accepted, ClaimRequest, Decision, Fence, Fenced, ListFilter, Operation, OperationState,
    Outcome, RecordOutcome, RetryPolicy, Store, Transition, WalEntry, WalKind,
};
use oncely_sqlx::SqliteStore;
use proptest::prelude::*;

const KEYS: u8 = 4;
const WORKERS: u8 = 2;
const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Step {
    Accept { key: u8, variant: u8 },
    Claim { worker: u8 },
    Execute { worker: u8, slot: u8 },
    Record { worker: u8, slot: u8 },
    Finalize { worker: u8, slot: u8 },
    Crash { worker: u8 },
    Reap,
    RunFinalizer,
    Advance { seconds: u16 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..KEYS, 0..2u8).prop_map(|(key, variant)| Step::Accept { key, variant }),
        3 => (0..WORKERS).prop_map(|worker| Step::Claim { worker }),
        3 => (0..WORKERS, 0..4u8).prop_map(|(worker, slot)| Step::Execute { worker, slot }),
        3 => (0..WORKERS, 0..4u8).prop_map(|(worker, slot)| Step::Record { worker, slot }),
        3 => (0..WORKERS, 0..4u8).prop_map(|(worker, slot)| Step::Finalize { worker, slot }),
        1 => (0..WORKERS).prop_map(|worker| Step::Crash { worker }),
        2 => Just(Step::Reap),
        2 => Just(Step::RunFinalizer),
        2 => (0..90u16).prop_map(|seconds| Step::Advance { seconds }),
    ]
}

/// Key 0 charges, key 1 is unavailable once, key 2 is declined, key 3 is unavailable
/// three times (enough to run out of attempts).
fn command(key: u8, variant: u8) -> Charge {
    let behaviour = match key {
        0 => Behaviour::Charge,
        1 => Behaviour::Unavailable(1),
        2 => Behaviour::Decline,
        _ => Behaviour::Unavailable(3),
    };
    Charge::new("p", i64::from(variant)).behaving(behaviour)
}

fn key_name(key: u8) -> String {
    format!("key-{key}")
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts_max: 3,
        ..RetryPolicy::default()
    }
}

/// What one worker believes it holds.
#[derive(Debug, Clone)]
struct Held {
    operation: Operation,
    fence: Fence,
    outcome: Option<Outcome>,
    decision: Option<Decision>,
}

struct World {
    store: SqliteStore,
    api: FakeApi,
    now: DateTime<Utc>,
    workers: Vec<Vec<Held>>,
    /// The command first accepted under each key.
    commands: HashMap<u8, Charge>,
    /// Terminal operations as first seen: they must never change again.
    terminal: HashMap<String, Operation>,
    /// Every operation's log as last seen: it may only grow.
    logs: HashMap<String, Vec<WalEntry>>,
}

impl World {
    async fn new() -> Self {
        Self {
            store: SqliteStore::open("sqlite::memory:").await.unwrap(),
            api: FakeApi::default(),
            now: conformance::at(0),
            workers: vec![Vec::new(); usize::from(WORKERS)],
            commands: HashMap::new(),
            terminal: HashMap::new(),
            logs: HashMap::new(),
        }
    }

    async fn operation(&self, key: &str) -> Option<Operation> {
        self.store.get(&scope(key)).await.unwrap()
    }

    async fn run(&mut self, step: Step) {
        match step {
            Step::Accept { key, variant } => self.accept(key, variant).await,
            Step::Claim { worker } => self.claim(worker, "w").await,
            Step::Execute { worker, slot } => self.execute(worker, slot),
            Step::Record { worker, slot } => self.record(worker, slot).await,
            Step::Finalize { worker, slot } => self.finalize(worker, slot).await,
            Step::Crash { worker } => self.workers[usize::from(worker)].clear(),
            Step::Reap => {
                self.reap().await;
            }
            Step::RunFinalizer => {
                self.run_finalizer().await;
            }
            Step::Advance { seconds } => {
                self.now += chrono::Duration::seconds(i64::from(seconds));
            }
        }
    }

    async fn accept(&mut self, key: u8, variant: u8) {
        let name = key_name(key);
        let command = command(key, variant);
        let before = self.operation(&name).await;
        let mut new = new_operation(&name, command.amount, self.now);
        new.payload = serde_json::to_value(&command).unwrap();
        new.fingerprint = oncely::Fingerprint::of_json(&new.payload);
        let result = self.store.accept(vec![new], None).await.unwrap().remove(0);
        let after = self.operation(&name).await.unwrap();
        // I1: one key, one operation; a replay returns it, a conflict changes nothing.
        match (&before, &result) {
            (None, Accepted::New(created)) => {
                assert_eq!(created, &after);
                self.commands.insert(key, command);
            }
            (Some(existing), Accepted::Existing(returned)) => {
                assert_eq!(self.commands[&key], command, "replay of the same command");
                assert_eq!(returned, existing);
                assert_eq!(&after, existing);
            }
            (Some(existing), Accepted::Conflict(returned)) => {
                assert_ne!(
                    self.commands[&key], command,
                    "conflict means another command"
                );
                assert_eq!(returned, existing);
                assert_eq!(&after, existing, "a conflict writes nothing");
            }
            (before, result) => panic!("accept of {name}: {before:?} then {result:?}"),
        }
    }

    async fn claim(&mut self, worker: u8, prefix: &str) {
        let who = owner(&format!("{prefix}{worker}"));
        let before = self.all().await;
        let claimed = self
            .store
            .claim(ClaimRequest {
                domain: domain(),
                owner: who.clone(),
                now: self.now,
                lease_ttl: LEASE,
                limit: 2,
            })
            .await
            .unwrap();
        for operation in claimed {
            let previous = &before[operation.scope.key.as_str()];
            assert_eq!(
                previous.state,
                OperationState::Accepted,
                "claimed only if accepted"
            );
            assert!(
                previous.next_retry_at.unwrap() <= self.now,
                "claimed only if due"
            );
            assert_eq!(operation.attempt_count, previous.attempt_count + 1);
            let fence = operation.fence().unwrap();
            assert_eq!(fence.owner, who);
            let held = Held {
                operation,
                fence,
                outcome: None,
                decision: None,
            };
            self.hold(worker, held);
        }
    }

    fn hold(&mut self, worker: u8, held: Held) {
        let slots = &mut self.workers[usize::from(worker)];
        if slots.len() < 4 {
            slots.push(held);
        }
        // A worker with no free slot forgets the claim, as a crashed one would.
    }

    fn held(&mut self, worker: u8, slot: u8) -> Option<&mut Held> {
        self.workers[usize::from(worker)].get_mut(usize::from(slot))
    }

    fn execute(&mut self, worker: u8, slot: u8) {
        let api = self.api.clone();
        let commands = self.commands.clone();
        let Some(held) = self.held(worker, slot) else {
            return;
        };
        if held.outcome.is_some() {
            return;
        }
        let key = held.operation.scope.key.to_string();
        let number: u8 = key.trim_start_matches("key-").parse().unwrap();
        // Honours the key (I7): the same key never charges twice.
        let (_, outcome) = api.call(&key, &commands[&number]);
        held.outcome = Some(outcome);
    }

    async fn record(&mut self, worker: u8, slot: u8) {
        let now = self.now;
        let Some(held) = self.held(worker, slot).cloned() else {
            return;
        };
        let (Some(outcome), None) = (held.outcome.clone(), &held.decision) else {
            return;
        };
        let key = held.operation.scope.key.to_string();
        let before = self.operation(&key).await.unwrap();
        let decision = decide(&policy(), &held.operation, &outcome, false, now);
        let fenced = self
            .store
            .record_outcomes(vec![RecordOutcome {
                reconciled: false,
                fence: held.fence.clone(),
                outcome,
                decision: decision.clone(),
                now,
                follow_ups: Vec::new(),
            }])
            .await
            .unwrap()
            .remove(0);
        let after = self.operation(&key).await.unwrap();
        // I4: only the current attempt's owner may record.
        let current = fence_matches(&before, &held.fence);
        assert_eq!(
            fenced == Fenced::Applied,
            current,
            "record fencing for {key}"
        );
        if fenced == Fenced::Rejected {
            assert_eq!(after, before, "a rejected record changes nothing");
            self.workers[usize::from(worker)].remove(usize::from(slot));
        } else if let Some(held) = self.held(worker, slot) {
            held.decision = Some(decision);
        }
    }

    async fn finalize(&mut self, worker: u8, slot: u8) {
        let now = self.now;
        let Some(held) = self.held(worker, slot).cloned() else {
            return;
        };
        let Some(decision) = held.decision.clone() else {
            return;
        };
        self.workers[usize::from(worker)].remove(usize::from(slot));
        self.apply(held.fence, decision, now).await;
    }

    /// A fenced finalize, checked against I3 and I4.
    async fn apply(&mut self, fence: Fence, decision: Decision, now: DateTime<Utc>) -> bool {
        let before = self.by_id(&fence).await;
        let fenced = self
            .store
            .finalize(vec![Transition {
                fence: fence.clone(),
                decision: decision.clone(),
                now,
                follow_ups: Vec::new(),
            }])
            .await
            .unwrap()
            .remove(0);
        let after = self.by_id(&fence).await;
        let expected =
            fence_matches(&before, &fence) && before.recorded_attempt == Some(before.attempt_count);
        assert_eq!(
            fenced == Fenced::Applied,
            expected,
            "finalize fencing for {}",
            before.scope
        );
        if fenced == Fenced::Rejected {
            assert_eq!(after, before, "a rejected finalize changes nothing");
        } else {
            assert_eq!(after.state, decision.target_state());
        }
        fenced == Fenced::Applied
    }

    async fn by_id(&self, fence: &Fence) -> Operation {
        self.all()
            .await
            .into_values()
            .find(|operation| operation.id == fence.id)
            .unwrap()
    }

    async fn reap(&mut self) -> usize {
        let expired = self
            .store
            .expired_leases(&domain(), self.now, 100)
            .await
            .unwrap();
        let transitions: Vec<Transition> = expired
            .iter()
            .map(|operation| {
                assert!(operation.lease.as_ref().unwrap().until <= self.now);
                assert_ne!(operation.recorded_attempt, Some(operation.attempt_count));
                Transition {
                    fence: operation.fence().unwrap(),
                    decision: decide_reap(&policy(), operation, self.now),
                    now: self.now,
                    follow_ups: Vec::new(),
                }
            })
            .collect();
        let results = self.store.reap(transitions).await.unwrap();
        results.iter().filter(|r| **r == Fenced::Applied).count()
    }

    async fn run_finalizer(&mut self) -> usize {
        let pending = self
            .store
            .pending_outcomes(&domain(), self.now, 100)
            .await
            .unwrap();
        let mut applied = 0;
        for pending in pending {
            let fence = pending.operation.fence().unwrap();
            applied += usize::from(self.apply(fence, pending.decision, self.now).await);
        }
        applied
    }

    async fn all(&self) -> HashMap<String, Operation> {
        let page = self
            .store
            .list(ListFilter {
                limit: 100,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        page.items
            .into_iter()
            .map(|operation| (operation.scope.key.to_string(), operation))
            .collect()
    }

    /// I1–I4 over the whole store, after any step.
    async fn check(&mut self) {
        let all = self.all().await;
        assert!(all.len() <= usize::from(KEYS), "I1: one operation per key");
        assert!(self.api.max_side_effects() <= 1, "one side effect per key");
        for (key, operation) in &all {
            if let Some(terminal) = self.terminal.get(key) {
                assert_eq!(terminal, operation, "a terminal operation never changes");
            } else if operation.state.is_terminal() {
                self.terminal.insert(key.clone(), operation.clone());
            }
            assert_eq!(
                operation.lease.is_some(),
                operation.state == OperationState::Processing,
                "{key}: a lease exactly while PROCESSING"
            );
            let log = self.store.history(&operation.scope).await.unwrap();
            let previous = self.logs.get(key).map_or(&[][..], Vec::as_slice);
            assert_eq!(&log[..previous.len()], previous, "I6: the log only grows");
            check_recorded_outcomes_are_final(key, &log);
            self.logs.insert(key.clone(), log);
        }
    }

    /// Runs a fresh worker, the reaper and the Finalizer until everything is terminal.
    async fn drain(&mut self) {
        for _round in 0..40 {
            let all = self.all().await;
            if all.values().all(|operation| operation.state.is_terminal()) {
                return;
            }
            self.now += chrono::Duration::seconds(1_000);
            self.run_finalizer().await;
            self.reap().await;
            self.workers[0].clear();
            self.claim(0, "drain").await;
            while !self.workers[0].is_empty() {
                self.execute(0, 0);
                self.record(0, 0).await;
                self.finalize(0, 0).await;
            }
            self.check().await;
        }
        panic!(
            "I2: operations never reached a terminal state: {:?}",
            self.all().await
        );
    }
}

fn fence_matches(operation: &Operation, fence: &Fence) -> bool {
    operation.state == OperationState::Processing
        && operation.attempt_count == fence.attempt
        && operation.lease.as_ref().map(|lease| &lease.owner) == Some(&fence.owner)
}

/// I3: once an attempt's outcome is recorded with a final decision, no later attempt
/// starts, and the operation ends the way the recorded decision says.
fn check_recorded_outcomes_are_final(key: &str, log: &[WalEntry]) {
    for (index, entry) in log.iter().enumerate() {
        if entry.kind != WalKind::OutcomeRecorded {
            continue;
        }
        let decision: Decision = serde_json::from_value(entry.detail["decision"].clone()).unwrap();
        if matches!(decision, Decision::RetryAt { .. }) {
            continue;
        }
        for later in &log[index + 1..] {
            assert!(
                !(later.kind == WalKind::Executing && later.attempt > entry.attempt),
                "{key}: attempt {} started after attempt {}'s outcome was recorded",
                later.attempt,
                entry.attempt
            );
            if later.kind == WalKind::Finalized {
                assert_eq!(later.state_after, decision.target_state(), "{key}");
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_under_any_interleaving(steps in proptest::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut world = World::new().await;
            for step in steps {
                world.run(step).await;
                world.check().await;
            }
            world.drain().await;
            for operation in world.all().await.values() {
                assert!(operation.state.is_terminal());
            }
        });
    }
}
