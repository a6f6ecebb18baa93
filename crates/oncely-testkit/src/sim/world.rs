//! What the simulated nodes run on: one [`MemoryStore`] behind a faulty connection per
//! node ([`NodeStore`]), a clock per node that can jump ([`NodeClock`]), and one payment
//! provider that deduplicates by idempotency key and loses answers ([`Provider`]).
//!
//! Every random choice comes from one seeded generator per concern, and every wait is on
//! tokio's paused clock, so a seed gives the same run every time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::store::{
    AcceptLease, Accepted, Backlog, ClaimRequest, DomainOverview, Fenced, ListFilter, NewOperation,
    OverviewOf, Page, PendingOutcome, RecordOutcome, Transition,
};
use oncely::{
    Attempt, Clock, Decision, DomainName, FollowUp, FollowUps, IdempotencyKey, LeaseOwner,
    MemoryStore, NodeId, Operation, Orchestrator, Outcome, RetryPolicy, Scope, Store, StoreError,
    WalEntry,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The run's event log, kept as a running SHA-256: two runs with the same digest made
/// the same choices in the same order at the same simulated times.
#[derive(Debug)]
pub(crate) struct Journal {
    start: tokio::time::Instant,
    hasher: Mutex<Sha256>,
    events: AtomicU64,
    /// The lines themselves, when asked for.
    kept: Option<Mutex<Vec<String>>>,
}

impl Journal {
    pub(crate) fn new(keep: bool) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            hasher: Mutex::new(Sha256::new()),
            events: AtomicU64::new(0),
            kept: keep.then(|| Mutex::new(Vec::new())),
        }
    }

    /// The lines, if they were kept.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.kept
            .as_ref()
            .map(|kept| lock(kept).clone())
            .unwrap_or_default()
    }

    /// Milliseconds of simulated time since the start.
    pub(crate) fn elapsed_ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    pub(crate) fn note(&self, event: &str) {
        let line = format!("{} {event}\n", self.elapsed_ms());
        lock(&self.hasher).update(line.as_bytes());
        if let Some(kept) = &self.kept {
            lock(kept).push(line.trim_end().to_owned());
        }
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// The digest so far, as 16 hex digits.
    pub(crate) fn digest(&self) -> String {
        let digest = lock(&self.hasher).clone().finalize();
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// What the faults did, for the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fail_before: AtomicU64,
    pub(crate) commit_unknown: AtomicU64,
    pub(crate) provider_unavailable: AtomicU64,
    pub(crate) provider_hangs: AtomicU64,
    pub(crate) lost_answers: AtomicU64,
    pub(crate) charges: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) notices: AtomicU64,
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A seeded generator shared by tasks of one run (all on one thread).
#[derive(Debug)]
pub(crate) struct Dice(Mutex<fastrand::Rng>);

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self(Mutex::new(fastrand::Rng::with_seed(seed)))
    }

    /// True with probability `percent` in 100.
    pub(crate) fn chance(&self, percent: u32) -> bool {
        lock(&self.0).u32(0..100) < percent
    }

    pub(crate) fn below(&self, n: usize) -> usize {
        lock(&self.0).usize(0..n.max(1))
    }

    pub(crate) fn millis(&self, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(lock(&self.0).u64(range))
    }

    pub(crate) fn i64(&self, range: std::ops::RangeInclusive<i64>) -> i64 {
        lock(&self.0).i64(range)
    }
}

/// Faults that the heal phase turns off.
#[derive(Debug)]
pub(crate) struct Weather {
    pub(crate) stormy: AtomicBool,
    pub(crate) dice: Dice,
    pub(crate) counters: Counters,
    pub(crate) journal: Arc<Journal>,
}

impl Weather {
    pub(crate) fn stormy(&self) -> bool {
        self.stormy.load(Ordering::Relaxed)
    }
}

/// Whether a node's process is stopped (SIGSTOP): its calls wait until it is not.
///
/// Not a `watch` channel: tokio's spreads its waiters over several lists at random, so
/// they would wake in another order on every run. One `Notify` wakes them in the order
/// they came.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    paused: AtomicBool,
    resumed: Notify,
}

impl Gate {
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }
}

/// A node's gate, shared by its store connection and its calls.
pub(crate) type Pause = Arc<Gate>;

async fn running(gate: &Gate) {
    loop {
        let resumed = gate.resumed.notified();
        if !gate.is_paused() {
            return;
        }
        resumed.await;
    }
}

/// One node's connection to the shared store: it waits while the node is paused, takes
/// a little time each way (so that nodes interleave), and sometimes fails before the
/// store sees the call or after it committed.
#[derive(Clone)]
pub(crate) struct NodeStore {
    pub(crate) inner: MemoryStore,
    pub(crate) node: usize,
    pub(crate) pause: Pause,
    pub(crate) weather: Arc<Weather>,
    /// Settle as a record then a finalize, two transactions (the `Store` trait's default,
    /// for databases that cannot do both in one): a crash or another node can come
    /// between them.
    pub(crate) settle_in_two_steps: bool,
}

impl NodeStore {
    async fn call<T, F>(&self, what: &str, write: bool, inner: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        running(&self.pause).await;
        let stormy = self.weather.stormy();
        // Now and then a statement waits on a lock or a slow disk: long enough for other
        // nodes to act on what it read or is about to write.
        let latency = if stormy && self.weather.dice.chance(5) {
            self.weather.dice.millis(20..=400)
        } else {
            self.weather.dice.millis(0..=3)
        };
        tokio::time::sleep(latency).await;
        if stormy && self.weather.dice.chance(2) {
            count(&self.weather.counters.fail_before);
            self.weather.journal.note(&format!(
                "node {} {what}: fails before the store",
                self.node
            ));
            return Err(StoreError::Database(
                format!("simulated: {what} failed before reaching the store").into(),
            ));
        }
        let result = inner.await;
        // The answer travels back; the process may stop or die meanwhile.
        tokio::time::sleep(self.weather.dice.millis(0..=3)).await;
        running(&self.pause).await;
        if write && result.is_ok() && stormy && self.weather.dice.chance(2) {
            count(&self.weather.counters.commit_unknown);
            self.weather.journal.note(&format!(
                "node {} {what}: committed, answer lost",
                self.node
            ));
            return Err(StoreError::Database(
                format!("simulated: {what} committed, then the connection dropped").into(),
            ));
        }
        result
    }
}

impl Store for NodeStore {
    async fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        self.call("accept", true, self.inner.accept(batch, lease))
            .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        self.call("claim", true, self.inner.claim(request)).await
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        self.call("record", true, self.inner.record_outcomes(batch))
            .await
    }

    async fn settle(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        if self.settle_in_two_steps {
            return oncely::store::settle_in_two_steps(self, batch).await;
        }
        self.call("settle", true, self.inner.settle(batch)).await
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        self.call("finalize", true, self.inner.finalize(batch))
            .await
    }

    async fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        self.call(
            "expired",
            false,
            self.inner.expired_leases(domain, now, limit),
        )
        .await
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        self.call("reap", true, self.inner.reap(batch)).await
    }

    async fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.call(
            "release",
            true,
            self.inner.release_node(domain, node, current, now),
        )
        .await
    }

    async fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> Result<Backlog, StoreError> {
        self.call("backlog", false, self.inner.backlog(domain, now))
            .await
    }

    async fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainOverview>, StoreError> {
        self.inner.overview(of, since, now).await
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        self.call(
            "pending",
            false,
            self.inner.pending_outcomes(domain, recorded_before, limit),
        )
        .await
    }

    async fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        self.call("retry", true, self.inner.retry(scope, by, now))
            .await
    }

    async fn cancel(
        &self,
        scope: &Scope,
        by: Option<&str>,
        at_once: bool,
        follow_ups: FollowUps,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        self.call(
            "cancel",
            true,
            self.inner.cancel(scope, by, at_once, follow_ups, now),
        )
        .await
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.purge(domain, completed_before, limit).await
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        self.call("get", false, self.inner.get(scope)).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        self.inner.list(filter).await
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        self.inner.history(scope).await
    }
}

/// A node's wall clock: simulated time, plus the jumps the node's clock made.
#[derive(Debug, Clone)]
pub(crate) struct NodeClock {
    pub(crate) origin: DateTime<Utc>,
    pub(crate) start: tokio::time::Instant,
    pub(crate) skew_ms: Arc<AtomicI64>,
}

impl Clock for NodeClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        let millis = self
            .origin
            .timestamp_millis()
            .saturating_add(elapsed)
            .saturating_add(self.skew_ms.load(Ordering::Relaxed));
        DateTime::from_timestamp_millis(millis).unwrap_or(self.origin)
    }
}

/// One charge the provider made.
#[derive(Debug, Clone)]
pub(crate) struct Charge {
    /// The operation's key, as the simulation knows it (not what was sent).
    pub(crate) operation: String,
    pub(crate) amount: i64,
}

/// The providers' books.
#[derive(Debug, Default)]
pub(crate) struct Books {
    /// Charges by the idempotency key they were made under.
    pub(crate) charges: BTreeMap<String, Charge>,
    /// Notices acted on, by the key they were sent under, with the payment they announce
    /// and how many times they arrived.
    pub(crate) notices: BTreeMap<String, Notice>,
    /// The keys each operation's attempts sent, by the operation's own key.
    pub(crate) keys_sent: BTreeMap<String, BTreeSet<String>>,
}

/// One notice the receiver acted on.
#[derive(Debug, Clone)]
pub(crate) struct Notice {
    /// The notice operation's key, as the simulation knows it.
    pub(crate) operation: String,
    /// Times it arrived; acted on once.
    pub(crate) arrivals: u32,
}

/// The payment provider and the notice receiver: both honour idempotency keys, and under
/// stormy weather are unavailable, hang, or lose their answer after acting.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) books: Mutex<Books>,
    pub(crate) weather: Arc<Weather>,
}

/// Amounts ending in 7 are declined: the same answer on every attempt.
pub(crate) fn declined(amount: i64) -> bool {
    amount % 10 == 7
}

/// How long a hung call hangs: past any call timeout.
const HANG: Duration = Duration::from_secs(30);

impl Provider {
    /// One call under `key` for the operation `operation`: the weather's faults around
    /// `act`, which does what the call does to the books and answers.
    async fn call(
        &self,
        operation: &str,
        key: &str,
        act: impl FnOnce(&mut Books, &Journal) -> Outcome,
    ) -> Outcome {
        let weather = &self.weather;
        tokio::time::sleep(weather.dice.millis(1..=150)).await;
        let stormy = weather.stormy();
        let journal = &weather.journal;
        if stormy && weather.dice.chance(4) {
            count(&weather.counters.provider_unavailable);
            journal.note(&format!("provider {key}: 503"));
            return Outcome::retry("503 from the provider");
        }
        if stormy && weather.dice.chance(3) {
            count(&weather.counters.provider_hangs);
            journal.note(&format!("provider {key}: hangs before acting"));
            tokio::time::sleep(HANG).await;
        }
        let outcome = {
            let mut books = lock(&self.books);
            books
                .keys_sent
                .entry(operation.to_owned())
                .or_default()
                .insert(key.to_owned());
            act(&mut books, journal)
        };
        if stormy && weather.dice.chance(5) {
            count(&weather.counters.lost_answers);
            journal.note(&format!("provider {key}: answer lost"));
            if weather.dice.chance(50) {
                tokio::time::sleep(HANG).await;
            }
            // The request was sent: whether it acted is unknown, as a real client says.
            return Outcome::unknown("connection reset after the request was sent");
        }
        outcome
    }

    async fn charge(&self, operation: &str, key: &str, amount: i64) -> Outcome {
        let counters = &self.weather.counters;
        self.call(operation, key, |books, journal| {
            if declined(amount) {
                journal.note(&format!("provider {key}: declined"));
                return Outcome::fail("card declined").with_error_code("card_declined");
            }
            if let Some(charge) = books.charges.get(key) {
                count(&counters.replays);
                journal.note(&format!("provider {key}: replayed"));
                return Outcome::ok()
                    .with_data("amount", charge.amount)
                    .with_data("replayed", true);
            }
            count(&counters.charges);
            journal.note(&format!("provider {key}: charged {amount}"));
            books.charges.insert(
                key.to_owned(),
                Charge {
                    operation: operation.to_owned(),
                    amount,
                },
            );
            Outcome::ok().with_data("amount", amount)
        })
        .await
    }

    /// What the provider holds under `key`, without the weather: a lookup.
    fn charged(&self, key: &str) -> Option<i64> {
        lock(&self.books)
            .charges
            .get(key)
            .map(|charge| charge.amount)
    }

    async fn deliver(&self, operation: &str, key: &str) -> Outcome {
        let counters = &self.weather.counters;
        self.call(operation, key, |books, journal| {
            let notice = books.notices.entry(key.to_owned()).or_insert(Notice {
                operation: operation.to_owned(),
                arrivals: 0,
            });
            notice.arrivals += 1;
            if notice.arrivals == 1 {
                count(&counters.notices);
                journal.note(&format!("receiver {key}: acted on"));
            } else {
                journal.note(&format!("receiver {key}: seen before"));
            }
            Outcome::ok()
        })
        .await
    }
}

/// The simulated payment command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pay {
    pub(crate) amount: i64,
}

/// The simulated domain: one charge per operation at the provider.
pub(crate) struct Payments {
    pub(crate) provider: Arc<Provider>,
    pub(crate) pause: Pause,
    /// A flaw on purpose: each attempt sends a key of its own (breaks I7).
    pub(crate) fresh_key_per_attempt: bool,
}

/// The retry policy of both simulated domains.
fn policy() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(2))
        .attempts(8)
        .with_jitter()
}

/// The key of the notice that announces the end of payment `key`.
pub(crate) fn notice_key(key: &str) -> String {
    format!("{key}:ended")
}

impl Orchestrator for Payments {
    type Command = Pay;
    const DOMAIN: &'static str = "SIM_PAYMENT";
    const EVENT_TYPE: &'static str = "SIM_PAYMENT_REQUESTED";

    fn retry_policy(&self) -> RetryPolicy {
        policy()
    }

    /// A payment's end announces itself (the outbox): a notice under a key derived from
    /// the payment's, in the transaction that applies the end.
    fn follow_ups(&self, operation: &Operation, decision: &Decision) -> Vec<FollowUp> {
        let state = decision.target_state();
        if !state.is_terminal() {
            return Vec::new();
        }
        let key = notice_key(operation.scope.key.as_str());
        let Ok(key) = IdempotencyKey::new(key) else {
            return Vec::new();
        };
        let Ok(domain) = DomainName::new(Notices::DOMAIN) else {
            return Vec::new();
        };
        let notice = Announce {
            payment: operation.scope.key.to_string(),
            state: state.as_str().to_owned(),
        };
        vec![FollowUp {
            domain,
            key,
            event_type: Notices::EVENT_TYPE.to_owned(),
            payload: serde_json::to_value(notice).unwrap_or_default(),
        }]
    }

    async fn execute(&self, command: Pay, attempt: Attempt) -> Outcome {
        let operation = attempt.idempotency_key().as_str().to_owned();
        let key = if self.fresh_key_per_attempt {
            format!("{operation}#{}", attempt.number)
        } else {
            operation.clone()
        };
        let outcome = self.provider.charge(&operation, &key, command.amount).await;
        // A stopped process reads the answer only when it runs again.
        running(&self.pause).await;
        outcome
    }

    /// After an unknown outcome: the provider is asked whether it charged under the key.
    async fn reconcile(&self, _command: &Pay, attempt: &Attempt) -> Option<Outcome> {
        if self.fresh_key_per_attempt {
            return None;
        }
        let key = attempt.idempotency_key().as_str();
        let amount = self.provider.charged(key)?;
        running(&self.pause).await;
        Some(
            Outcome::ok()
                .with_data("amount", amount)
                .with_data("found", true),
        )
    }
}

/// The notice a payment's end sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Announce {
    pub(crate) payment: String,
    pub(crate) state: String,
}

/// The simulated notification domain: payments' ends, delivered to a receiver that acts
/// on each key once.
pub(crate) struct Notices {
    pub(crate) provider: Arc<Provider>,
    pub(crate) pause: Pause,
}

impl Orchestrator for Notices {
    type Command = Announce;
    const DOMAIN: &'static str = "SIM_NOTICE";
    const EVENT_TYPE: &'static str = "SIM_NOTICE_REQUESTED";

    fn retry_policy(&self) -> RetryPolicy {
        policy()
    }

    async fn execute(&self, _command: Announce, attempt: Attempt) -> Outcome {
        let key = attempt.idempotency_key().as_str();
        let outcome = self.provider.deliver(key, key).await;
        running(&self.pause).await;
        outcome
    }
}

/// The key of the simulation's `n`th operation.
pub(crate) fn key(n: usize) -> IdempotencyKey {
    // Always valid: letters, digits and '-'.
    IdempotencyKey::new(format!("op-{n:04}")).unwrap_or_else(|_| unreachable!("a valid key"))
}
