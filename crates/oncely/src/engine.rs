//! The lifecycle of an operation, top to bottom: accept → claim → execute → record →
//! finalize, with the Reaper and the Finalizer beside them.
//!
//! An [`Engine`] runs four tasks over one [`Store`] and one [`Orchestrator`]:
//!
//! - **accept**: batches callers' submissions into one store transaction, then wakes the
//!   dispatcher, so a new operation starts without waiting for a poll.
//! - **dispatch**: claims due operations (a lease each) while worker slots are free and runs
//!   each attempt in its own task. `execute` gets the command and the attempt, no store and
//!   no connection (I5).
//! - **record**: batches finished attempts: appends their outcomes to the write-ahead log
//!   (one transaction, I3), then finalizes them (one transaction, fenced, I4).
//! - **maintenance**: the Finalizer applies outcomes that are in the log but were never
//!   finalized (their worker died); the Reaper takes back expired leases.
//!
//! Dropping an engine without [`Engine::shutdown`] stops it at once, as a crash would: the
//! next engine on the same store finishes everything (I2).
//!
//! Every `select!` here is `biased` (its branches are polled in order): the engine's tasks
//! then make the same choices whenever the same things are ready, so that on a
//! single-threaded runtime with simulated time a run replays exactly from its seed
//! (`oncely sim`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::clock::{self, Clock, SystemClock};
use crate::error::Error;
use crate::failpoint::{CrashPoint, Failpoints};
use crate::key::{DomainName, IdempotencyKey, NodeId, Scope, TenantId};
use crate::operation::{Fence, Fingerprint, LeaseOwner, Operation, OperationId, WalEntry, WalKind};
use crate::orchestrator::{Attempt, Orchestrator};
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::state::OperationState;
use crate::store::{
    AcceptLease, Accepted, ClaimRequest, Decision, DomainOverview, Fenced, FollowUps, ListFilter,
    NewOperation, OverviewOf, Page, RecordOutcome, Store, StoreError, Transition,
};
use crate::telemetry::Telemetry;
use crate::trace::{self, TraceParent};

/// How an engine runs. Every field has a bound; [`EngineConfig::validate`] checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// External calls running at once (1 to 10,000).
    pub workers: usize,
    /// How long a claim lasts before the reaper may take it back.
    pub lease_ttl: Duration,
    /// How long one call may run; the engine gives up waiting after it and retries with
    /// the same key. Must be shorter than `lease_ttl`, so a live worker never outlives
    /// its lease.
    pub call_timeout: Duration,
    /// How often an idle dispatcher looks for due operations (retries, other nodes' work).
    pub poll_interval: Duration,
    /// How often the Reaper and the Finalizer run.
    pub maintenance_interval: Duration,
    /// How old a recorded, unfinalized outcome must be before the Finalizer applies it,
    /// so that it does not race the worker that is finalizing it right now.
    pub finalize_grace: Duration,
    /// The most operations one store transaction carries (1 to 10,000).
    pub batch_size_max: usize,
    /// How long terminal operations are kept before the maintenance task purges them with
    /// their log (and their keys become usable again); `None` keeps them for ever.
    pub retention: Option<Duration>,
    /// Whether the engine leases what it accepts in the accept's own transaction when a
    /// worker slot is free, and starts it at once (no claim, no dispatcher hop). Work that
    /// finds no free slot is claimed later as usual.
    pub claim_on_accept: bool,
    /// How many accept batches, and how many settle batches, may be in the store at once
    /// (1 to 8): while one commits, the next gathers and is sent.
    pub batches_in_flight: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 64,
            lease_ttl: Duration::from_secs(60),
            call_timeout: Duration::from_secs(45),
            poll_interval: Duration::from_millis(500),
            maintenance_interval: Duration::from_secs(5),
            finalize_grace: Duration::from_secs(5),
            batch_size_max: 256,
            retention: Some(Duration::from_secs(7 * 24 * 3_600)),
            claim_on_accept: true,
            batches_in_flight: 2,
        }
    }
}

impl EngineConfig {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: String| Err(Error::Config(message));
        if !(1..=10_000).contains(&self.workers) {
            return fail(format!("workers must be 1 to 10000, not {}", self.workers));
        }
        if !(1..=10_000).contains(&self.batch_size_max) {
            return fail(format!(
                "batch_size_max must be 1 to 10000, not {}",
                self.batch_size_max
            ));
        }
        if self.call_timeout.is_zero() || self.call_timeout >= self.lease_ttl {
            return fail(format!(
                "call_timeout ({:?}) must be above zero and below lease_ttl ({:?})",
                self.call_timeout, self.lease_ttl
            ));
        }
        if !(1..=8).contains(&self.batches_in_flight) {
            return fail(format!(
                "batches_in_flight must be 1 to 8, not {}",
                self.batches_in_flight
            ));
        }
        if self.poll_interval.is_zero() || self.maintenance_interval.is_zero() {
            return fail("poll_interval and maintenance_interval must be above zero".into());
        }
        Ok(())
    }
}

/// What [`Engine::submit`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The operation, as stored.
    pub operation: Operation,
    /// True when the key was seen before with the same command: this is that operation,
    /// and nothing new was stored.
    pub replayed: bool,
}

/// Builds an [`Engine`]; see [`Engine::builder`].
pub struct EngineBuilder<S, O> {
    store: S,
    orchestrator: O,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    owner: Option<LeaseOwner>,
    failpoints: Failpoints,
    on_terminal: Option<TerminalObserver>,
    retry_policy: Option<RetryPolicy>,
}

/// Called with each operation this engine moves to a terminal state; see
/// [`EngineBuilder::on_terminal`].
type TerminalObserver = Arc<dyn Fn(OperationId, OperationState) + Send + Sync>;

impl<S: Store, O: Orchestrator> EngineBuilder<S, O> {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// External calls running at once.
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// The lease length; the call timeout becomes four fifths of it.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.config.lease_ttl = lease_ttl;
        self.config.call_timeout = lease_ttl.mul_f64(0.8);
        self
    }

    /// Retries this engine's operations by `policy` instead of the orchestrator's
    /// [`retry_policy`](Orchestrator::retry_policy): the same domain may retry differently
    /// in different deployments.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// The time source (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The lease owner name; a fresh random one by default.
    pub fn owner(mut self, owner: LeaseOwner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Runs as a new incarnation of `node` (see [`NodeId`]): at start the engine ends the
    /// leases that the node's earlier incarnations left on this domain and reaps them at
    /// once, so what a crashed process was running resumes within a maintenance pass of
    /// its restart, not after the lease.
    pub fn node(self, node: &NodeId) -> Self {
        self.owner(LeaseOwner::incarnation(node))
    }

    /// Crash points shared with a test (only useful with the `failpoints` feature).
    pub fn failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    /// Calls `observer` with each operation this engine moves to a terminal state (by its
    /// workers, its Finalizer or its Reaper), right after that state is committed. For
    /// metrics and for callers that track many operations without polling; it runs on the
    /// engine's own task, so it must be quick and must not block.
    pub fn on_terminal(
        mut self,
        observer: impl Fn(OperationId, OperationState) + Send + Sync + 'static,
    ) -> Self {
        self.on_terminal = Some(Arc::new(observer));
        self
    }

    /// Checks the configuration and starts the engine's tasks on the current tokio runtime.
    pub fn start(self) -> Result<Engine<S, O>, Error> {
        self.config.validate()?;
        let domain = DomainName::new(O::DOMAIN)?;
        let telemetry = Telemetry::new(&domain);
        let (accept_tx, accept_rx) = mpsc::channel(self.config.batch_size_max * 4);
        let (finished_tx, finished_rx) = mpsc::channel(self.config.workers);
        let (stop_tx, stop_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            policy: self
                .retry_policy
                .unwrap_or_else(|| self.orchestrator.retry_policy()),
            store: self.store,
            orchestrator: self.orchestrator,
            domain,
            slots: Arc::new(Semaphore::new(self.config.workers)),
            attempts: Mutex::new(JoinSet::new()),
            config: self.config,
            clock: self.clock,
            owner: self.owner.unwrap_or_else(LeaseOwner::random),
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            failpoints: self.failpoints,
            on_terminal: self.on_terminal,
            telemetry,
        });
        tracing::info!(domain = %shared.domain, owner = %shared.owner, workers = shared.config.workers, "engine starting");
        let tasks = Tasks {
            accept: tokio::spawn(accept_loop(shared.clone(), accept_rx, finished_tx.clone())),
            dispatch: tokio::spawn(dispatch_loop(shared.clone(), finished_tx, stop_rx.clone())),
            record: tokio::spawn(record_loop(shared.clone(), finished_rx)),
            maintenance: tokio::spawn(maintenance_loop(shared.clone(), stop_rx)),
        };
        Ok(Engine {
            shared,
            accept_tx: Mutex::new(Some(accept_tx)),
            stop: stop_tx,
            tasks: Mutex::new(Some(tasks)),
        })
    }
}

/// Runs one orchestrator's operations over one store. See the [module docs](self).
///
/// ```ignore
/// let engine = Engine::builder(store, PaymentOrchestrator::new(gateway)).workers(32).start()?;
/// let submitted = engine.submit(IdempotencyKey::new("order-1001")?, command).await?;
/// let done = engine.wait(&submitted.operation.scope, Duration::from_secs(30)).await?;
/// engine.shutdown(Duration::from_secs(10)).await;
/// ```
pub struct Engine<S: Store, O: Orchestrator> {
    shared: Arc<Shared<S, O>>,
    accept_tx: Mutex<Option<mpsc::Sender<AcceptRequest>>>,
    stop: watch::Sender<Option<Duration>>,
    tasks: Mutex<Option<Tasks>>,
}

/// The engine's four tasks.
struct Tasks {
    accept: JoinHandle<()>,
    dispatch: JoinHandle<()>,
    record: JoinHandle<()>,
    maintenance: JoinHandle<()>,
}

impl Tasks {
    fn abort(&self) {
        for task in [
            &self.accept,
            &self.dispatch,
            &self.record,
            &self.maintenance,
        ] {
            task.abort();
        }
    }
}

struct Shared<S, O> {
    store: S,
    orchestrator: O,
    domain: DomainName,
    policy: RetryPolicy,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    owner: LeaseOwner,
    /// Free worker slots; an attempt holds one from claim until its finalize.
    slots: Arc<Semaphore>,
    /// The running attempts, whoever started them (the dispatcher or the accept loop).
    attempts: Mutex<JoinSet<()>>,
    /// Wakes the dispatcher when work arrives locally.
    wake: Notify,
    /// Callers of `wait`, by operation, woken when it reaches a terminal state here.
    waiters: Mutex<HashMap<OperationId, Arc<Notify>>>,
    failpoints: Failpoints,
    on_terminal: Option<TerminalObserver>,
    telemetry: Telemetry,
}

struct AcceptRequest {
    operation: NewOperation,
    reply: oneshot::Sender<Result<Accepted, Error>>,
}

/// An attempt whose call has ended, on its way to the log.
struct Finished {
    operation: Operation,
    fence: Fence,
    outcome: Outcome,
    /// True when the outcome is the orchestrator's reconcile, not a call.
    reconciled: bool,
    /// The attempt's span, which ends when its outcome is settled.
    span: tracing::Span,
    _slot: OwnedSemaphorePermit,
}

impl<S: Store, O: Orchestrator> Engine<S, O> {
    /// Starts building an engine over `store` for `orchestrator`'s domain.
    pub fn builder(store: S, orchestrator: O) -> EngineBuilder<S, O> {
        EngineBuilder {
            store,
            orchestrator,
            config: EngineConfig::default(),
            clock: Arc::new(SystemClock),
            owner: None,
            failpoints: Failpoints::default(),
            on_terminal: None,
            retry_policy: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &O {
        &self.shared.orchestrator
    }

    /// The domain this engine serves.
    pub fn domain(&self) -> &DomainName {
        &self.shared.domain
    }

    /// This engine's lease owner name.
    pub fn owner(&self) -> &LeaseOwner {
        &self.shared.owner
    }

    /// The scope of `key` in this engine's domain, for the default tenant.
    pub fn scope(&self, key: IdempotencyKey) -> Scope {
        Scope::new(TenantId::default(), self.shared.domain.clone(), key)
    }

    /// Hands `command` over under `key`, for the default tenant. Returns once the operation
    /// is durably accepted; the call itself happens later, on a worker.
    pub async fn submit(
        &self,
        key: IdempotencyKey,
        command: O::Command,
    ) -> Result<Submission, Error> {
        self.submit_for(TenantId::default(), Some(key), command)
            .await
    }

    /// Hands `command` over for `tenant`, under `key` or, when `None`, the orchestrator's
    /// business key. The same key and command again return the same operation
    /// (`replayed`); the same key with another command is [`Error::Conflict`] and stores
    /// nothing (I1).
    pub async fn submit_for(
        &self,
        tenant: TenantId,
        key: Option<IdempotencyKey>,
        command: O::Command,
    ) -> Result<Submission, Error> {
        self.submit_traced(tenant, key, command, None).await
    }

    /// [`Engine::submit_for`] under the caller's W3C trace context: it is stored with the
    /// operation, and every span of the operation's life (on any node) belongs to that
    /// trace. A replay keeps the trace of the first submit.
    pub async fn submit_traced(
        &self,
        tenant: TenantId,
        key: Option<IdempotencyKey>,
        command: O::Command,
        traceparent: Option<TraceParent>,
    ) -> Result<Submission, Error> {
        let key = match key {
            Some(key) => key,
            None => match self.shared.orchestrator.business_key(&command) {
                Some(key) => key?,
                None => {
                    return Err(Error::MissingKey {
                        domain: self.shared.domain.to_string(),
                    });
                }
            },
        };
        let payload = serde_json::to_value(&command).map_err(Error::Command)?;
        let operation = NewOperation {
            scope: Scope::new(tenant, self.shared.domain.clone(), key),
            event_type: O::EVENT_TYPE.to_owned(),
            fingerprint: Fingerprint::of_json(&payload),
            payload,
            now: self.shared.clock.now(),
            traceparent,
        };
        let (reply, answer) = oneshot::channel();
        let sender = self
            .accept_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sender = sender.ok_or(Error::Stopped)?;
        sender
            .send(AcceptRequest { operation, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        match answer.await.map_err(|_| Error::Stopped)?? {
            Accepted::New(operation) => Ok(Submission {
                operation,
                replayed: false,
            }),
            Accepted::Existing(operation) => Ok(Submission {
                operation,
                replayed: true,
            }),
            Accepted::Conflict(existing) => Err(Error::Conflict {
                scope: existing.scope,
            }),
        }
    }

    /// The operation, now.
    pub async fn get(&self, scope: &Scope) -> Result<Operation, Error> {
        self.shared
            .store
            .get(scope)
            .await?
            .ok_or_else(|| Error::NotFound {
                scope: scope.clone(),
            })
    }

    /// Waits until the operation is terminal or `timeout` has passed, and returns it as it
    /// is then. Finalizes on this engine wake the waiter at once; others (another node's)
    /// are seen by polling every `poll_interval`.
    pub async fn wait(&self, scope: &Scope, timeout: Duration) -> Result<Operation, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = self.get(scope).await?;
        if first.state.is_terminal() {
            return Ok(first);
        }
        let notify = self.shared.waiter(first.id);
        let result = loop {
            // Created before the read, so a finalize between the two still wakes us.
            let notified = notify.notified();
            let operation = match self.get(scope).await {
                Ok(operation) => operation,
                Err(error) => break Err(error),
            };
            if operation.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                break Ok(operation);
            }
            tokio::select! {
                biased;
                () = notified => {}
                () = tokio::time::sleep(self.shared.config.poll_interval) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        };
        self.shared.forget_waiter(first.id, notify);
        result
    }

    /// Operations of this engine's domain, newest first, one page.
    pub async fn list(&self, mut filter: ListFilter) -> Result<Page, Error> {
        filter.domain = Some(self.shared.domain.clone());
        Ok(self.shared.store.list(filter).await?)
    }

    /// How `tenant`'s operations in this domain stand at `now`, with what ended and what
    /// the Reaper rescued since `since`: every state counted, zeros included.
    pub async fn overview(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<DomainOverview, Error> {
        let domain = &self.shared.domain;
        let found = self
            .shared
            .store
            .overview(OverviewOf::Tenant(tenant, domain), since, now)
            .await?;
        Ok(found
            .into_iter()
            .find(|overview| overview.domain == domain.as_str())
            .unwrap_or_else(|| DomainOverview::empty(domain.as_str())))
    }

    /// The write-ahead log of one operation, oldest first.
    pub async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, Error> {
        Ok(self.shared.store.history(scope).await?)
    }

    /// An operator's retry of a `FAILED` or `TIMEOUT` operation: back to `ACCEPTED` with a
    /// fresh budget of attempts, due now. Its attempts forward the same key (I7).
    pub async fn retry(&self, scope: &Scope) -> Result<Operation, Error> {
        self.retry_by(scope, None).await
    }

    /// [`Engine::retry`], recording who asked (an API key's id) in the log entry.
    pub async fn retry_by(&self, scope: &Scope, by: Option<&str>) -> Result<Operation, Error> {
        let operation = self
            .shared
            .store
            .retry(scope, by, self.shared.clock.now())
            .await?;
        self.shared.wake.notify_one();
        Ok(operation)
    }

    /// An operator's cancel: no attempt starts again. An `ACCEPTED` operation — not yet
    /// run, or waiting for a retry — is `CANCELLED` at once. For a `PROCESSING` one the
    /// cancel is requested: its attempt ends as it ends (`Ok` completes, `Fail` fails), and
    /// instead of another attempt it is `CANCELLED`. So is an `ACCEPTED` one whose last
    /// attempt's outcome is unknown, after the domain's [`Orchestrator::reconcile`] says
    /// that attempt did not succeed. Cancelling a cancelled operation answers it as it is;
    /// a `COMPLETED`, `FAILED` or `TIMEOUT` one is [`Error::NotCancellable`].
    pub async fn cancel(&self, scope: &Scope) -> Result<Operation, Error> {
        self.cancel_by(scope, None).await
    }

    /// [`Engine::cancel`], recording who asked (an API key's id) in the log entry.
    pub async fn cancel_by(&self, scope: &Scope, by: Option<&str>) -> Result<Operation, Error> {
        let shared = &self.shared;
        let mut tries = 0;
        loop {
            let current = self.get(scope).await?;
            let at_once = current.state == OperationState::Accepted
                && !(current.attempt_count > 0
                    && outcome_unknown(shared, &current, current.attempt_count).await);
            let now = shared.now();
            // What the domain submits when an operation ends: a cancel is an end too.
            let follow_ups = if at_once {
                let decision = Decision::Cancel {
                    reason: "cancelled by an operator".to_owned(),
                };
                shared.follow_ups(&current, &decision, now)
            } else {
                Vec::new()
            };
            match shared
                .store
                .cancel(scope, by, at_once, follow_ups, now)
                .await
            {
                Ok(operation) => {
                    if operation.state == OperationState::Cancelled
                        && current.state != OperationState::Cancelled
                    {
                        shared.terminal(operation.id, OperationState::Cancelled);
                    } else if operation.state == OperationState::Accepted {
                        // Due at once: a worker reconciles it and ends it.
                        shared.wake.notify_one();
                    }
                    return Ok(operation);
                }
                // The operation moved meanwhile (claimed, finalized): look again.
                Err(StoreError::Busy { .. }) if tries < 5 => tries += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Runs the Reaper once: expired leases without a recorded outcome go back to
    /// `ACCEPTED` with a backoff while attempts remain, else to `TIMEOUT`. Returns how many
    /// operations it moved. The engine runs it every `maintenance_interval` by itself.
    pub async fn reap_expired(&self) -> Result<usize, Error> {
        Ok(reap_expired(&self.shared).await?)
    }

    /// Runs the Finalizer once: applies outcomes that are in the log but whose operation
    /// was never finalized. Returns how many it finalized. The engine runs it every
    /// `maintenance_interval` by itself.
    pub async fn finalize_pending(&self) -> Result<usize, Error> {
        Ok(finalize_pending(&self.shared, self.shared.config.finalize_grace).await?)
    }

    /// Purges terminal operations older than the retention, in batches, and returns how
    /// many. The engine runs it every `maintenance_interval` by itself.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        Ok(purge_expired(&self.shared).await?)
    }

    /// Stops every task and running attempt of this engine at once, as `kill -9` would: no
    /// outcome is recorded, no lease released. For tests and the simulator, which need to
    /// crash an engine that others still hold.
    pub fn crash(&self) {
        if let Some(tasks) = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            tasks.abort();
        }
        self.accept_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
    }

    /// Stops taking work, lets running calls finish for up to `grace`, records and
    /// finalizes what they return, then stops. Calls still running after `grace` are
    /// abandoned: their leases expire and another engine retries them with the same key.
    /// Takes `&self`, so an engine shared with HTTP routes through an `Arc` can be shut
    /// down where it is; a second call returns at once.
    pub async fn shutdown(&self, grace: Duration) {
        tracing::info!(owner = %self.shared.owner, ?grace, "engine shutting down");
        self.accept_tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tasks) = tasks else { return };
        // The accept loop first: what it accepted and leased must be among the attempts
        // the dispatcher waits for.
        let Tasks {
            accept,
            dispatch,
            record,
            maintenance,
        } = tasks;
        let ended = |result: Result<(), tokio::task::JoinError>| {
            if let Err(error) = result {
                tracing::error!(%error, "engine task ended abnormally");
            }
        };
        ended(accept.await);
        self.stop.send_replace(Some(grace));
        for task in [dispatch, record, maintenance] {
            ended(task.await);
        }
        tracing::info!(owner = %self.shared.owner, "engine stopped");
    }
}

impl<S: Store, O: Orchestrator> Drop for Engine<S, O> {
    fn drop(&mut self) {
        // As a crash would: the attempts stop too, their leases are left to expire.
        self.crash();
    }
}

impl<S: Store, O: Orchestrator> Shared<S, O> {
    /// Whether `owner` is another incarnation of this engine's node.
    fn is_earlier_incarnation(&self, owner: &LeaseOwner) -> bool {
        owner != &self.owner && owner.node().is_some() && owner.node() == self.owner.node()
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// What `decision` submits (the orchestrator's follow-ups), as operations to insert
    /// with it: the same tenant, the orchestrator's keys.
    fn follow_ups(
        &self,
        operation: &Operation,
        decision: &Decision,
        now: DateTime<Utc>,
    ) -> FollowUps {
        self.orchestrator
            .follow_ups(operation, decision)
            .into_iter()
            .map(|follow_up| NewOperation {
                scope: Scope::new(
                    operation.scope.tenant.clone(),
                    follow_up.domain,
                    follow_up.key,
                ),
                event_type: follow_up.event_type,
                fingerprint: Fingerprint::of_json(&follow_up.payload),
                payload: follow_up.payload,
                now,
                // What an operation's end submits belongs to its trace.
                traceparent: operation.traceparent,
            })
            .collect()
    }

    /// Up to `wanted` worker slots that are free right now, without waiting.
    fn free_slots_now(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        let mut slots = Vec::new();
        while slots.len() < wanted {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
        slots
    }

    /// Runs one claimed attempt on `slot`, in a task the engine can drain or abort.
    fn start_attempt(
        self: &Arc<Self>,
        operation: Operation,
        slot: OwnedSemaphorePermit,
        finished: &mpsc::Sender<Finished>,
    ) {
        let span = tracing::debug_span!(
            "oncely.attempt",
            domain = %operation.scope.domain,
            key = %operation.scope.key,
            attempt = operation.attempt_count,
            owner = %self.owner,
            result = tracing::field::Empty,
        );
        trace::follow(&span, operation.traceparent.as_ref());
        let attempt = run_attempt(
            self.clone(),
            operation,
            slot,
            finished.clone(),
            span.clone(),
        );
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        while attempts.try_join_next().is_some() {}
        attempts.spawn(attempt.instrument(span));
    }

    fn waiter(&self, id: OperationId) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.entry(id).or_default().clone()
    }

    fn forget_waiter(&self, id: OperationId, notify: Arc<Notify>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's reference and ours are left: no other caller waits on it.
        if let Some(current) = waiters.get(&id)
            && Arc::ptr_eq(current, &notify)
            && Arc::strong_count(&notify) == 2
        {
            waiters.remove(&id);
        }
    }

    /// `id` reached `state`, a terminal state, and it is committed.
    fn terminal(&self, id: OperationId, state: OperationState) {
        self.telemetry.terminal(state);
        if let Some(observer) = &self.on_terminal {
            observer(id, state);
        }
        let notify = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Runs a store write of `what` over a batch of `size` until it succeeds, the crash
    /// switch trips, or `lease_ttl` has passed (after which another worker owns the
    /// attempt anyway).
    async fn persist<T, F, Fut>(&self, what: &str, size: usize, write: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match self.persist_or_error(what, size, write).await {
            Ok(value) => Some(value),
            Err(error) => {
                if !matches!(error, StoreError::Crashed) {
                    tracing::error!(%error, what, "store write failed; giving up, the Finalizer or the Reaper will recover");
                }
                None
            }
        }
    }

    /// [`Shared::persist`], returning the last error.
    async fn persist_or_error<T, F, Fut>(
        &self,
        what: &str,
        size: usize,
        mut write: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.lease_ttl;
        let mut pause = Duration::from_millis(50);
        loop {
            if self.failpoints.is_crashed() {
                return Err(StoreError::Crashed);
            }
            let started = tokio::time::Instant::now();
            let written = write().await;
            self.telemetry.store(what, size, started.elapsed());
            match written {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, what, "store write failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Accept: one transaction per batch of submissions.
// ---------------------------------------------------------------------------------------

async fn accept_loop<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    requests: mpsc::Receiver<AcceptRequest>,
    finished: mpsc::Sender<Finished>,
) {
    let step = shared.clone();
    pipelined(&shared, requests, move |batch| {
        accept_batch(step.clone(), batch, finished.clone())
    })
    .await;
}

/// Receives batches of up to `batch_size_max` and runs `step` on each, with up to
/// `batches_in_flight` of them at once; returns when the channel is closed and every batch
/// is done, or at once when a step says the engine crashed (returns false).
async fn pipelined<S, O, T, F, Fut>(
    shared: &Shared<S, O>,
    mut receiver: mpsc::Receiver<T>,
    mut step: F,
) where
    S: Store,
    O: Orchestrator,
    T: Send + 'static,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut batch = Vec::with_capacity(shared.config.batch_size_max);
    // A step that ended false, or panicked: the engine crashed.
    let crashed = |done: Option<Result<bool, tokio::task::JoinError>>| {
        matches!(done, Some(Ok(false) | Err(_)))
    };
    loop {
        while running.len() >= shared.config.batches_in_flight {
            if crashed(running.join_next().await) {
                return;
            }
        }
        tokio::select! {
            biased;
            received = receiver.recv_many(&mut batch, shared.config.batch_size_max) => {
                if received == 0 {
                    break;
                }
                running.spawn(step(std::mem::take(&mut batch)));
            }
            done = running.join_next(), if !running.is_empty() => {
                if crashed(done) {
                    return;
                }
            }
        }
    }
    while !running.is_empty() {
        if crashed(running.join_next().await) {
            return;
        }
    }
}

/// Accepts one batch of submissions in one store transaction, leasing what free worker
/// slots allow, and answers each caller. Returns false when the engine crashed.
async fn accept_batch<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    batch: Vec<AcceptRequest>,
    finished: mpsc::Sender<Finished>,
) -> bool {
    if shared.failpoints.is_crashed() {
        return false;
    }
    let batch_len = batch.len();
    let (mut operations, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|request| (request.operation, request.reply))
        .unzip();
    // One span per operation, in its trace; an operation submitted under none begins its
    // own when spans are exported. They end as the callers are answered.
    let _spans: Vec<tracing::Span> = operations
        .iter_mut()
        .map(|operation| {
            let span = tracing::debug_span!(
                "oncely.accept",
                domain = %operation.scope.domain,
                key = %operation.scope.key,
                batch = batch_len,
            );
            trace::follow(&span, operation.traceparent.as_ref());
            if operation.traceparent.is_none() {
                operation.traceparent = trace::onward(&span, None);
            }
            span
        })
        .collect();
    // Free worker slots lease what this batch accepts, in the same transaction.
    let slots = if shared.config.claim_on_accept {
        shared.free_slots_now(operations.len())
    } else {
        Vec::new()
    };
    let lease = (!slots.is_empty()).then(|| AcceptLease {
        owner: shared.owner.clone(),
        now: shared.now(),
        lease_ttl: shared.config.lease_ttl,
        limit: u32::try_from(slots.len()).unwrap_or(u32::MAX),
    });
    // A batch that failed (a deadlock, a dropped connection) was rolled back whole, so it
    // is tried again as it is; callers wait meanwhile.
    let accepted = shared
        .persist_or_error("accept", operations.len(), || {
            shared.store.accept(operations.clone(), lease.clone())
        })
        .await;
    match accepted {
        Ok(accepted) => {
            shared.telemetry.accepted(&accepted);
            if !start_leased(&shared, &accepted, slots, &finished) {
                return false;
            }
            for (reply, accepted) in replies.into_iter().zip(accepted) {
                // A caller that stopped waiting still has its operation accepted.
                let _ = reply.send(Ok(accepted));
            }
            true
        }
        Err(StoreError::Crashed) => false,
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            let message = error.to_string();
            for reply in replies {
                let error = StoreError::Database(message.clone().into());
                let _ = reply.send(Err(error.into()));
            }
            true
        }
    }
}

/// Starts the attempts an accept leased to this engine, each on one of `slots`, and wakes
/// the dispatcher for new operations nobody leased. Returns false when the engine crashed.
fn start_leased<S: Store, O: Orchestrator>(
    shared: &Arc<Shared<S, O>>,
    accepted: &[Accepted],
    slots: Vec<OwnedSemaphorePermit>,
    finished: &mpsc::Sender<Finished>,
) -> bool {
    if shared.failpoints.hit(CrashPoint::AfterAccept) {
        return false;
    }
    let (leased, waiting): (Vec<&Operation>, Vec<&Operation>) = accepted
        .iter()
        .filter_map(|accepted| match accepted {
            Accepted::New(operation) => Some(operation),
            Accepted::Existing(_) | Accepted::Conflict(_) => None,
        })
        .partition(|operation| {
            operation
                .fence()
                .is_some_and(|fence| fence.owner == shared.owner)
        });
    debug_assert!(
        leased.len() <= slots.len(),
        "leased more than the free slots"
    );
    if !leased.is_empty() && shared.failpoints.hit(CrashPoint::AfterClaim) {
        return false;
    }
    // Slots beyond the leased operations go back to the pool as they drop here.
    for (operation, slot) in leased.into_iter().zip(slots) {
        shared.start_attempt(operation.clone(), slot, finished);
    }
    if !waiting.is_empty() {
        shared.wake.notify_one();
    }
    true
}

// ---------------------------------------------------------------------------------------
// 2. Claim and execute: a lease per operation, the call with no connection held (I5).
// ---------------------------------------------------------------------------------------

async fn dispatch_loop<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    finished: mpsc::Sender<Finished>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    'claiming: loop {
        if stop.borrow().is_some() || shared.failpoints.is_crashed() {
            break;
        }
        // Slots are counted, not taken, while the claim runs: an accept may lease them
        // meanwhile, and it starts its work without a claim at all.
        let Some(free) = free_slot_count(&shared, &mut stop).await else {
            break;
        };
        let requested = free.min(shared.config.batch_size_max);
        let claimed = match claim(&shared, requested).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "claim failed");
                Vec::new()
            }
        };
        if !claimed.is_empty() && shared.failpoints.hit(CrashPoint::AfterClaim) {
            return;
        }
        let idle = claimed.len() < requested;
        let claims = claim_spans(&claimed);
        for (operation, _claim) in claimed.into_iter().zip(claims) {
            let slot = tokio::select! {
                biased;
                slot = shared.slots.clone().acquire_owned() => slot,
                // Stopping: what is claimed and not started is left to its lease.
                _ = stop.changed() => break 'claiming,
            };
            let Ok(slot) = slot else { break 'claiming };
            shared.start_attempt(operation, slot, &finished);
        }
        if idle {
            tokio::select! {
                biased;
                () = shared.wake.notified() => {}
                () = shared.store.work_signal(&shared.domain) => {}
                () = tokio::time::sleep(shared.config.poll_interval) => {}
                _ = stop.changed() => {}
            }
        }
    }
    let grace = (*stop.borrow()).unwrap_or_default();
    let mut attempts = std::mem::take(
        &mut *shared
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let drained = tokio::time::timeout(grace, async {
        while attempts.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = attempts.len(),
            "calls still running after the shutdown grace; their leases will expire"
        );
        attempts.abort_all();
    }
}

/// Waits until at least one worker slot is free, and says how many are. `None` when the
/// engine is stopping.
async fn free_slot_count<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Option<usize> {
    tokio::select! {
        biased;
        permit = shared.slots.acquire() => drop(permit.ok()?),
        _ = stop.changed() => return None,
    }
    Some(shared.slots.available_permits().max(1))
}

async fn claim<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    limit: usize,
) -> Result<Vec<Operation>, StoreError> {
    let started = tokio::time::Instant::now();
    let claimed = shared
        .store
        .claim(ClaimRequest {
            domain: shared.domain.clone(),
            owner: shared.owner.clone(),
            now: shared.now(),
            lease_ttl: shared.config.lease_ttl,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        })
        .await;
    let size = claimed.as_ref().map_or(0, Vec::len);
    shared.telemetry.store("claim", size, started.elapsed());
    claimed
}

/// One span per claimed operation, in its trace: from the claim's answer until a worker
/// starts the attempt (the wait for a slot).
fn claim_spans(claimed: &[Operation]) -> Vec<tracing::Span> {
    claimed
        .iter()
        .map(|operation| {
            let span = tracing::debug_span!(
                "oncely.claim",
                domain = %operation.scope.domain,
                key = %operation.scope.key,
                batch = claimed.len(),
            );
            trace::follow(&span, operation.traceparent.as_ref());
            span
        })
        .collect()
}

async fn run_attempt<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    operation: Operation,
    slot: OwnedSemaphorePermit,
    finished: mpsc::Sender<Finished>,
    span: tracing::Span,
) {
    let Some(fence) = operation.fence() else {
        debug_assert!(
            false,
            "the store returned a claimed operation without a lease"
        );
        tracing::error!(id = %operation.id, "claimed operation has no lease; skipping it");
        return;
    };
    debug_assert_eq!(fence.owner, shared.owner);
    let Some((outcome, reconciled)) = call(&shared, &operation).await else {
        return; // crashed during the call
    };
    span.record("result", outcome_result(&outcome));
    if shared.failpoints.hit(CrashPoint::AfterAnswer) {
        return;
    }
    let finished_attempt = Finished {
        operation,
        fence,
        outcome,
        reconciled,
        span,
        _slot: slot,
    };
    if finished.send(finished_attempt).await.is_err() {
        tracing::error!("the recorder has stopped; the outcome is lost and the lease will expire");
    }
}

/// Makes the external call, in a task of its own so that a panic or a hang in the
/// orchestrator cannot take the engine with it; when the previous attempt's outcome is
/// unknown, asks the orchestrator to reconcile first. The outcome, and whether it came
/// from a reconcile; `None` if the engine crashed meanwhile.
async fn call<S: Store, O: Orchestrator>(
    shared: &Arc<Shared<S, O>>,
    operation: &Operation,
) -> Option<(Outcome, bool)> {
    let command = match serde_json::from_value::<O::Command>(operation.payload.clone()) {
        Ok(command) => command,
        Err(error) => {
            let outcome = Outcome::fail(format!("the stored command cannot be read: {error}"))
                .with_error_code("INVALID_STORED_COMMAND");
            return Some((outcome, false));
        }
    };
    let ask_first = previous_outcome_unknown(shared, operation).await;
    let span = tracing::debug_span!("oncely.call", reconcile = ask_first);
    let attempt = Attempt {
        number: operation.attempt_count,
        scope: operation.scope.clone(),
        traceparent: trace::onward(&span, operation.traceparent.as_ref()),
    };
    // An operator asked to cancel: this attempt does not call. It only asks first when the
    // attempt before may have succeeded.
    let cancelling = operation.cancel_requested_at.is_some();
    if cancelling && !ask_first {
        return Some((Outcome::retry(CANCELLED_BEFORE_THE_CALL), false));
    }
    let worker = shared.clone();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(
        async move {
            // A task spawned just before a simulated crash may first run just after it;
            // a dead process calls nothing, so it waits here to be aborted.
            if worker.failpoints.is_crashed() {
                std::future::pending::<()>().await;
            }
            if ask_first
                && let Some(answer) = worker.orchestrator.reconcile(&command, &attempt).await
            {
                // A provider that could not tell leaves the outcome as unknown as it was.
                return (answer.into_unknown(), true);
            }
            if cancelling {
                return (Outcome::retry(CANCELLED_BEFORE_THE_CALL), false);
            }
            if worker.failpoints.is_crashed() {
                std::future::pending::<()>().await;
            }
            (worker.orchestrator.execute(command, attempt).await, false)
        }
        .instrument(span),
    );
    let abort = task.abort_handle();
    // If this attempt is dropped unfinished (the engine crashed or gave up on it at
    // shutdown), its call goes with it, as it would with the process: a detached call
    // could still act long after its operation was taken over.
    let _call = AbortOnDrop(abort.clone());
    let timeout = shared.config.call_timeout;
    let answer = tokio::select! {
        biased;
        answer = tokio::time::timeout(timeout, task) => answer,
        () = shared.failpoints.crashed() => {
            abort.abort();
            return None;
        }
    };
    let (outcome, reconciled) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => (
            Outcome::unknown(format!("the call panicked: {error}")),
            false,
        ),
        Err(_) => {
            abort.abort();
            let reason = format!("no answer within {timeout:?}; the outcome is unknown");
            (Outcome::unknown(reason), false)
        }
    };
    shared
        .telemetry
        .attempt(&outcome, outcome.is_unknown(), started.elapsed());
    Some((outcome, reconciled))
}

/// Whether the attempt before `operation`'s current one ended without a known outcome:
/// no outcome of it is in the log (its worker died, or its lease was taken over), or the
/// recorded one is an unknown `Retry`. Read from the log only for attempts after the
/// first; a log that cannot be read counts as unknown, so the domain is asked first.
async fn previous_outcome_unknown<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    operation: &Operation,
) -> bool {
    let Some(previous) = operation.attempt_count.checked_sub(1).filter(|n| *n > 0) else {
        return false;
    };
    outcome_unknown(shared, operation, previous).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether `operation`'s attempt `attempt` ended without a known outcome, as its log says.
async fn outcome_unknown<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    operation: &Operation,
    attempt: u32,
) -> bool {
    let log = match shared.store.history(&operation.scope).await {
        Ok(log) => log,
        Err(error) => {
            tracing::warn!(id = %operation.id, %error, "the log cannot be read; reconciling before the call");
            return true;
        }
    };
    let recorded = log
        .iter()
        .rev()
        .find(|entry| entry.kind == WalKind::OutcomeRecorded && entry.attempt == attempt);
    recorded.is_none_or(|entry| {
        entry
            .detail
            .get("outcome")
            .and_then(|outcome| Outcome::deserialize(outcome).ok())
            .is_none_or(|outcome| outcome.is_unknown())
    })
}

// ---------------------------------------------------------------------------------------
// 3. Record, then finalize: the outcome is in the log before anything else (I3), and the
//    state change is fenced by attempt and owner (I4).
// ---------------------------------------------------------------------------------------

async fn record_loop<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    finished: mpsc::Receiver<Finished>,
) {
    let step = shared.clone();
    pipelined(&shared, finished, move |batch| {
        record_and_finalize(step.clone(), batch)
    })
    .await;
}

/// Records the batch's outcomes and applies their decisions ([`Store::settle`]: the log
/// entry first, I3; fenced, I4). Returns false when the engine crashed.
async fn record_and_finalize<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    batch: Vec<Finished>,
) -> bool {
    let now = shared.now();
    let records: Vec<RecordOutcome> = batch
        .iter()
        .map(|attempt| {
            let decision = decide(
                &shared.policy,
                &attempt.operation,
                &attempt.outcome,
                false,
                now,
            );
            RecordOutcome {
                reconciled: attempt.reconciled,
                fence: attempt.fence.clone(),
                follow_ups: shared.follow_ups(&attempt.operation, &decision, now),
                decision,
                outcome: attempt.outcome.clone(),
                now,
            }
        })
        .collect();
    let _spans: Vec<tracing::Span> = batch
        .iter()
        .map(|attempt| {
            tracing::debug_span!(parent: &attempt.span, "oncely.record", batch = batch.len())
        })
        .collect();
    // On failure the outcome is not in the log: the lease expires and the Reaper retries
    // with the same key (I7), as after a crash before the record.
    let settled = shared
        .persist("settle", records.len(), || {
            shared.store.settle(records.clone())
        })
        .await;
    let Some(settled) = settled else {
        return !shared.failpoints.is_crashed();
    };
    let mut retrying = false;
    for (record, fenced) in records.iter().zip(settled) {
        match fenced {
            Fenced::Applied => {
                let state = record.decision.target_state();
                if state.is_terminal() {
                    shared.terminal(record.fence.id, state);
                } else {
                    retrying = true;
                }
            }
            Fenced::Rejected => {
                shared.telemetry.fenced(1);
                tracing::warn!(id = %record.fence.id, attempt = record.fence.attempt, "outcome of a lease taken over by another worker; kept in the log, not applied");
            }
        }
    }
    if retrying {
        shared.wake.notify_one();
    }
    true
}

/// Applies recorded decisions and wakes their waiters. Returns false when the engine
/// crashed.
async fn finalize<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    transitions: Vec<Transition>,
) -> bool {
    if transitions.is_empty() {
        return true;
    }
    let finalized = shared
        .persist("finalize", transitions.len(), || {
            shared.store.finalize(transitions.clone())
        })
        .await;
    let Some(finalized) = finalized else {
        return !shared.failpoints.is_crashed();
    };
    for (transition, fenced) in transitions.iter().zip(finalized) {
        match fenced {
            Fenced::Applied => {
                let state = transition.decision.target_state();
                if state.is_terminal() {
                    shared.terminal(transition.fence.id, state);
                }
            }
            Fenced::Rejected => tracing::debug!(
                id = %transition.fence.id,
                attempt = transition.fence.attempt,
                "finalize matched nothing: already finalized or taken over"
            ),
        }
    }
    if transitions
        .iter()
        .any(|t| !t.decision.target_state().is_terminal())
    {
        shared.wake.notify_one();
    }
    true
}

/// The reason an attempt of an operation an operator cancelled gives instead of calling.
const CANCELLED_BEFORE_THE_CALL: &str = "not called: an operator cancelled the operation";

/// What an attempt's outcome does to its operation under `policy`. An operation an
/// operator asked to cancel is cancelled instead of being retried or given up, unless the
/// outcome is unknown: that attempt may have succeeded, and the next one asks first.
pub fn decide(
    policy: &RetryPolicy,
    operation: &Operation,
    outcome: &Outcome,
    unknown: bool,
    now: DateTime<Utc>,
) -> Decision {
    let decision = decide_outcome(policy, operation, outcome, unknown, now);
    if operation.cancel_requested_at.is_none() || unknown || outcome.is_unknown() {
        return decision;
    }
    match decision {
        Decision::RetryAt { reason, .. } | Decision::GiveUp { reason } => Decision::Cancel {
            reason: if reason == CANCELLED_BEFORE_THE_CALL {
                reason
            } else {
                format!("cancelled by an operator; the last attempt: {reason}")
            },
        },
        decision => decision,
    }
}

fn decide_outcome(
    policy: &RetryPolicy,
    operation: &Operation,
    outcome: &Outcome,
    unknown: bool,
    now: DateTime<Utc>,
) -> Decision {
    match outcome {
        Outcome::Ok { data } => Decision::Complete { data: data.clone() },
        Outcome::Fail { reason, code } => Decision::Fail {
            reason: reason.clone(),
            code: code.clone(),
        },
        Outcome::Retry {
            reason,
            backoff,
            unknown: said_unknown,
        } => {
            let unknown = unknown || *said_unknown;
            if unknown && !policy.retry_unknown_outcome {
                return Decision::GiveUp {
                    reason: format!("{reason}; unknown outcomes are not retried"),
                };
            }
            retry_or_give_up(policy, operation, reason, *backoff, now)
        }
    }
}

fn retry_or_give_up(
    policy: &RetryPolicy,
    operation: &Operation,
    reason: &str,
    backoff: Option<Duration>,
    now: DateTime<Utc>,
) -> Decision {
    let used = operation.attempts_used();
    if used >= policy.attempts_max {
        return Decision::GiveUp {
            reason: format!("gave up after {used} attempts; last: {reason}"),
        };
    }
    let backoff = backoff.unwrap_or_else(|| policy.backoff(used));
    Decision::RetryAt {
        reason: reason.to_owned(),
        at: clock::add(now, backoff),
    }
}

// ---------------------------------------------------------------------------------------
// 4. Maintenance: the Finalizer and the Reaper.
// ---------------------------------------------------------------------------------------

async fn maintenance_loop<S: Store, O: Orchestrator>(
    shared: Arc<Shared<S, O>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    // At start, what this node's earlier incarnations left: their recorded outcomes are
    // finalized and their leases reaped in this first pass, without waiting.
    let mut grace = Duration::ZERO;
    if let Err(error) = release_earlier_incarnations(&shared).await {
        tracing::warn!(%error, "could not end the leases of this node's earlier incarnations; the Reaper takes them when they expire");
    }
    loop {
        if shared.failpoints.is_crashed() {
            return;
        }
        // The Finalizer first: an outcome in the log must never be reaped and re-run (I3).
        if let Err(error) = finalize_pending(&shared, grace).await {
            tracing::warn!(%error, "finalizer run failed");
        }
        grace = shared.config.finalize_grace;
        if let Err(error) = reap_expired(&shared).await {
            tracing::warn!(%error, "reaper run failed");
        }
        if let Err(error) = purge_expired(&shared).await {
            tracing::warn!(%error, "retention purge failed");
        }
        let now = shared.now();
        match shared.store.backlog(&shared.domain, now).await {
            Ok(backlog) => shared.telemetry.backlog(&backlog, now),
            Err(error) => tracing::debug!(%error, "could not read the backlog for the gauges"),
        }
        tokio::select! {
            biased;
            () = tokio::time::sleep(shared.config.maintenance_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Ends the leases that earlier incarnations of this engine's node hold, for the Reaper's
/// next pass. Two live processes given the same node id end each other's leases at start:
/// fencing keeps that safe, and the log says it happened.
async fn release_earlier_incarnations<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
) -> Result<(), StoreError> {
    // An owner set by hand may hold a '/' without naming a node.
    let Some(Ok(node)) = shared.owner.node().map(NodeId::new) else {
        return Ok(());
    };
    let released = shared
        .store
        .release_node(&shared.domain, &node, &shared.owner, shared.now())
        .await?;
    if released > 0 {
        tracing::warn!(
            %node,
            owner = %shared.owner,
            released,
            "took over the operations an earlier incarnation of this node left running; \
             if that process is in fact alive, two processes share this --node-id: its late \
             writes are fenced, but give each process its own id"
        );
    }
    Ok(())
}

async fn finalize_pending<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
    grace: Duration,
) -> Result<usize, StoreError> {
    let now = shared.now();
    let recorded_before = now - chrono::Duration::from_std(grace).unwrap_or_default();
    let limit = u32::try_from(shared.config.batch_size_max).unwrap_or(u32::MAX);
    let pending = shared
        .store
        .pending_outcomes(&shared.domain, recorded_before, limit)
        .await?;
    let _spans = recovery_spans(
        Recovery::Finalize,
        pending.iter().map(|pending| &pending.operation),
    );
    let transitions: Vec<Transition> = pending
        .into_iter()
        .filter_map(|pending| {
            let fence = pending.operation.fence()?;
            Some(Transition {
                fence,
                follow_ups: shared.follow_ups(&pending.operation, &pending.decision, now),
                decision: pending.decision,
                now,
            })
        })
        .collect();
    let count = transitions.len();
    if count > 0 {
        tracing::info!(count, "finalizer: applying recorded outcomes");
    }
    if !finalize(shared, transitions).await {
        return Err(StoreError::Crashed);
    }
    Ok(count)
}

async fn reap_expired<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
) -> Result<usize, StoreError> {
    let now = shared.now();
    let limit = u32::try_from(shared.config.batch_size_max).unwrap_or(u32::MAX);
    let expired = shared
        .store
        .expired_leases(&shared.domain, now, limit)
        .await?;
    let transitions: Vec<Transition> = expired
        .iter()
        .filter_map(|operation| {
            let decision = match &operation.lease {
                // Left by an earlier incarnation of this node: that process is gone (or
                // fenced), so the attempt is retried at once.
                Some(lease) if shared.is_earlier_incarnation(&lease.owner) => {
                    decide_takeover(&shared.policy, operation, &lease.owner, now)
                }
                _ => decide_reap(&shared.policy, operation, now),
            };
            Some(Transition {
                fence: operation.fence()?,
                follow_ups: shared.follow_ups(operation, &decision, now),
                decision,
                now,
            })
        })
        .collect();
    if transitions.is_empty() {
        return Ok(0);
    }
    let _spans = recovery_spans(Recovery::Reap, expired.iter());
    let started = tokio::time::Instant::now();
    let reaped = shared.store.reap(transitions.clone()).await;
    shared
        .telemetry
        .store("reap", transitions.len(), started.elapsed());
    let reaped = reaped?;
    let mut count = 0;
    for (transition, fenced) in transitions.iter().zip(reaped) {
        if fenced == Fenced::Applied {
            count += 1;
            tracing::warn!(id = %transition.fence.id, attempt = transition.fence.attempt, owner = %transition.fence.owner, state = %transition.decision.target_state(), "reaper: lease expired");
            let state = transition.decision.target_state();
            if state.is_terminal() {
                shared.terminal(transition.fence.id, state);
            }
        }
    }
    shared.telemetry.rescued(count as u64);
    shared.wake.notify_one();
    Ok(count)
}

/// Who takes up an operation its worker left.
#[derive(Debug, Clone, Copy)]
enum Recovery {
    /// The Finalizer: an outcome recorded but not applied.
    Finalize,
    /// The Reaper: a lease that ended with no outcome recorded.
    Reap,
}

/// A span per operation of a Finalizer's or Reaper's batch, in its trace.
fn recovery_spans<'a>(
    recovery: Recovery,
    operations: impl ExactSizeIterator<Item = &'a Operation>,
) -> Vec<tracing::Span> {
    let batch = operations.len();
    operations
        .map(|operation| {
            let span = match recovery {
                Recovery::Reap => tracing::debug_span!(
                    "oncely.reap",
                    domain = %operation.scope.domain,
                    key = %operation.scope.key,
                    attempt = operation.attempt_count,
                    owner = operation.lease.as_ref().map(|lease| tracing::field::display(&lease.owner)),
                    batch,
                ),
                Recovery::Finalize => tracing::debug_span!(
                    "oncely.finalize",
                    domain = %operation.scope.domain,
                    key = %operation.scope.key,
                    attempt = operation.attempt_count,
                    batch,
                ),
            };
            trace::follow(&span, operation.traceparent.as_ref());
            span
        })
        .collect()
}

/// What an outcome is counted and traced as.
fn outcome_result(outcome: &Outcome) -> &'static str {
    match outcome {
        _ if outcome.is_unknown() => "unknown",
        Outcome::Ok { .. } => "ok",
        Outcome::Retry { .. } => "retry",
        Outcome::Fail { .. } => "fail",
    }
}

/// Retention: at most ten batches a run, so a large backlog never starves the other tasks.
async fn purge_expired<S: Store, O: Orchestrator>(
    shared: &Shared<S, O>,
) -> Result<u64, StoreError> {
    let Some(retention) = shared.config.retention else {
        return Ok(0);
    };
    let before =
        shared.now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let limit = u32::try_from(shared.config.batch_size_max).unwrap_or(u32::MAX);
    let mut total = 0;
    for _batch in 0..10 {
        let purged = shared.store.purge(&shared.domain, before, limit).await?;
        total += purged;
        if purged < u64::from(limit) {
            break;
        }
    }
    if total > 0 {
        tracing::info!(purged = total, "retention: purged terminal operations");
    }
    Ok(total)
}

/// What the Reaper does with an operation that an earlier incarnation of this node left
/// `PROCESSING` with no recorded outcome: as [`decide_reap`], but due at once, since the
/// process that held it has restarted.
pub fn decide_takeover(
    policy: &RetryPolicy,
    operation: &Operation,
    owner: &LeaseOwner,
    now: DateTime<Utc>,
) -> Decision {
    let reason = format!(
        "attempt {} was running on {owner}, an earlier incarnation of a node that restarted",
        operation.attempt_count
    );
    if !policy.retry_unknown_outcome {
        return Decision::GiveUp {
            reason: format!("{reason}; unknown outcomes are not retried"),
        };
    }
    retry_or_give_up(policy, operation, &reason, Some(Duration::ZERO), now)
}

/// What the Reaper does with an operation whose lease expired with no recorded outcome:
/// its worker died or hung, so the outcome of the attempt is unknown.
pub fn decide_reap(policy: &RetryPolicy, operation: &Operation, now: DateTime<Utc>) -> Decision {
    let reason = format!(
        "the lease of attempt {} expired without an outcome",
        operation.attempt_count
    );
    if !policy.retry_unknown_outcome {
        return Decision::GiveUp {
            reason: format!("{reason}; unknown outcomes are not retried"),
        };
    }
    retry_or_give_up(policy, operation, &reason, None, now)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::OperationState;

    fn operation(attempt_count: u32, attempt_floor: u32) -> Operation {
        let now = Utc::now();
        Operation {
            id: OperationId(1),
            scope: Scope::new(
                TenantId::default(),
                DomainName::new("TEST").unwrap(),
                IdempotencyKey::new("k").unwrap(),
            ),
            event_type: "TEST_REQUESTED".into(),
            state: OperationState::Processing,
            payload: json!({}),
            fingerprint: Fingerprint::of_json(&json!({})),
            attempt_count,
            attempt_floor,
            recorded_attempt: None,
            last_attempt_at: Some(now),
            next_retry_at: None,
            lease: None,
            outcome_data: None,
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            cancel_requested_at: None,
            traceparent: None,
        }
    }

    #[test]
    fn a_cancel_request_turns_retries_and_give_ups_into_a_cancel_but_not_unknowns() {
        let policy =
            RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)).attempts(3);
        let now = Utc::now();
        let mut cancelled = operation(1, 0);
        cancelled.cancel_requested_at = Some(now);
        let cases = [
            (Outcome::ok(), OperationState::Completed),
            (Outcome::fail("card declined"), OperationState::Failed),
            (Outcome::retry("busy"), OperationState::Cancelled),
            (Outcome::unknown("timed out"), OperationState::Accepted),
        ];
        for (outcome, state) in cases {
            let decision = decide(&policy, &cancelled, &outcome, false, now);
            assert_eq!(decision.target_state(), state, "{outcome:?}");
        }
        // A call that ended unknown by the engine's own account (a timeout) is not cancelled.
        let decision = decide(&policy, &cancelled, &Outcome::retry("x"), true, now);
        assert_eq!(decision.target_state(), OperationState::Accepted);
        // Out of attempts: cancelled rather than timed out.
        let mut spent = operation(3, 0);
        spent.cancel_requested_at = Some(now);
        let decision = decide(&policy, &spent, &Outcome::retry("busy"), false, now);
        assert_eq!(decision.target_state(), OperationState::Cancelled);
        // Without a request, the same retry is a retry.
        let decision = decide(
            &policy,
            &operation(1, 0),
            &Outcome::retry("busy"),
            false,
            now,
        );
        assert_eq!(decision.target_state(), OperationState::Accepted);
    }

    #[test]
    fn retry_uses_the_outcome_backoff_then_the_policy_then_gives_up() {
        let policy = RetryPolicy {
            attempts_max: 3,
            ..RetryPolicy::default()
        };
        let now = Utc::now();
        let own = Outcome::retry("503").with_backoff(Duration::from_secs(7));
        assert_eq!(
            decide(&policy, &operation(1, 0), &own, false, now),
            Decision::RetryAt {
                reason: "503".into(),
                at: now + chrono::Duration::seconds(7)
            }
        );
        let plain = Outcome::retry("503");
        assert_eq!(
            decide(&policy, &operation(2, 0), &plain, false, now),
            Decision::RetryAt {
                reason: "503".into(),
                at: now + chrono::Duration::seconds(40)
            }
        );
        assert!(matches!(
            decide(&policy, &operation(3, 0), &plain, false, now),
            Decision::GiveUp { .. }
        ));
        // An operator retry wrote off the first three attempts.
        assert!(matches!(
            decide(&policy, &operation(4, 3), &plain, false, now),
            Decision::RetryAt { .. }
        ));
    }

    #[test]
    fn unknown_outcomes_are_given_up_when_the_policy_says_so() {
        let policy = RetryPolicy {
            retry_unknown_outcome: false,
            ..RetryPolicy::default()
        };
        let now = Utc::now();
        let unknown = Outcome::retry("no answer");
        assert!(matches!(
            decide(&policy, &operation(1, 0), &unknown, true, now),
            Decision::GiveUp { .. }
        ));
        assert!(matches!(
            decide(&policy, &operation(1, 0), &unknown, false, now),
            Decision::RetryAt { .. }
        ));
        assert!(matches!(
            decide_reap(&policy, &operation(1, 0), now),
            Decision::GiveUp { .. }
        ));
        assert!(matches!(
            decide_reap(&RetryPolicy::default(), &operation(1, 0), now),
            Decision::RetryAt { .. }
        ));
    }

    #[test]
    fn a_takeover_from_an_earlier_incarnation_is_due_at_once_within_the_budget() {
        let now = Utc::now();
        let owner = LeaseOwner::incarnation(&NodeId::new("web-1").unwrap());
        assert_eq!(owner.node(), Some("web-1"));
        let policy = RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(60));
        let Decision::RetryAt { at, reason } =
            decide_takeover(&policy, &operation(1, 0), &owner, now)
        else {
            panic!("a takeover retries");
        };
        assert_eq!(at, now, "no backoff: the process that held it is gone");
        assert!(reason.contains("earlier incarnation"), "{reason}");
        let spent = operation(policy.attempts_max, 0);
        assert!(matches!(
            decide_takeover(&policy, &spent, &owner, now),
            Decision::GiveUp { .. }
        ));
        let strict = policy.without_retrying_unknown_outcomes();
        assert!(matches!(
            decide_takeover(&strict, &operation(1, 0), &owner, now),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn ok_and_fail_map_to_complete_and_fail() {
        let policy = RetryPolicy::default();
        let now = Utc::now();
        let ok = Outcome::ok().with_data("transactionId", "tx");
        assert_eq!(
            decide(&policy, &operation(1, 0), &ok, false, now).target_state(),
            OperationState::Completed
        );
        let fail = Outcome::fail("declined").with_error_code("card_declined");
        assert_eq!(
            decide(&policy, &operation(1, 0), &fail, false, now),
            Decision::Fail {
                reason: "declined".into(),
                code: Some("card_declined".into())
            }
        );
    }

    #[test]
    fn config_bounds_are_checked() {
        assert!(EngineConfig::default().validate().is_ok());
        let zero_workers = EngineConfig {
            workers: 0,
            ..EngineConfig::default()
        };
        assert!(zero_workers.validate().is_err());
        let timeout_past_lease = EngineConfig {
            call_timeout: Duration::from_secs(90),
            ..EngineConfig::default()
        };
        assert!(timeout_past_lease.validate().is_err());
    }
}
