//! The `Store` port: everything the engine asks of a database, in batches.
//!
//! Each method is one transaction over a batch, so a store can commit many operations with
//! one fsync (group commit). Every method that changes an operation's state appends the
//! matching write-ahead log entry in the same transaction (I6), and every write about an
//! attempt is conditional on its [`Fence`] (I4). The engine decides *what* happens (the
//! retry policy, the next state); the store makes it durable, atomically, or not at all.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::key::{DomainName, NodeId, Scope, TenantId};
use crate::operation::{Fence, Fingerprint, LeaseOwner, Operation, OperationId, WalEntry, WalKind};
use crate::outcome::Outcome;
use crate::state::OperationState;
use crate::trace::TraceParent;

/// An operation to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOperation {
    /// Tenant, domain, key.
    pub scope: Scope,
    /// The domain's event type.
    pub event_type: String,
    /// The command as JSON.
    pub payload: Value,
    /// The payload's digest.
    pub fingerprint: Fingerprint,
    /// Accept time; also when the first attempt becomes due.
    pub now: DateTime<Utc>,
    /// The W3C trace context it is submitted under, if any.
    pub traceparent: Option<TraceParent>,
}

/// What an accept came to, for one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A new operation was written.
    New(Operation),
    /// An operation with this scope and fingerprint existed: it is returned, nothing written.
    Existing(Operation),
    /// An operation with this scope but another fingerprint existed: nothing written (I1).
    Conflict(Operation),
}

/// A lease to take on operations as they are accepted, in the accept's own transaction:
/// a node with free worker slots starts what it accepts without a claim of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptLease {
    /// The worker.
    pub owner: LeaseOwner,
    /// When the lease starts; also the attempt's start.
    pub now: DateTime<Utc>,
    /// How long the lease lasts.
    pub lease_ttl: Duration,
    /// At most this many of the batch's new operations, first come first.
    pub limit: u32,
}

impl AcceptLease {
    /// When the leases end: `now + lease_ttl`, saturating.
    pub fn lease_until(&self) -> DateTime<Utc> {
        crate::clock::add(self.now, self.lease_ttl)
    }
}

/// A worker's request for due operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Only operations of this domain.
    pub domain: DomainName,
    /// The worker.
    pub owner: LeaseOwner,
    /// Due means `next_retry_at <= now`.
    pub now: DateTime<Utc>,
    /// How long the lease lasts.
    pub lease_ttl: Duration,
    /// At most this many.
    pub limit: u32,
}

impl ClaimRequest {
    /// When the leases this claim takes end: `now + lease_ttl`, saturating.
    pub fn lease_until(&self) -> DateTime<Utc> {
        crate::clock::add(self.now, self.lease_ttl)
    }
}

/// Operations that the end of another submits in the same transaction as that end (a
/// transactional outbox): a payment's completion and the webhook that announces it, under
/// a key derived from the payment's, so a crash can neither lose the second nor send it
/// twice. Inserted only when the end they follow is applied; a key already taken is left
/// as it is.
pub type FollowUps = Vec<NewOperation>;

/// An outcome to append to the write-ahead log, fenced by its attempt, with the decision
/// the engine made of it. The decision is logged too, so that the Finalizer applies
/// exactly what the worker would have, whatever the policy is when it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordOutcome {
    /// The attempt that produced it.
    pub fence: Fence,
    /// What the external API answered.
    pub outcome: Outcome,
    /// What it does to the operation.
    pub decision: Decision,
    /// When it was recorded.
    pub now: DateTime<Utc>,
    /// What the decision submits, when it is applied.
    pub follow_ups: FollowUps,
    /// Whether the outcome is the domain's reconcile of an unknown earlier attempt rather
    /// than an answer to a call ([`crate::Orchestrator::reconcile`]); said in the log.
    pub reconciled: bool,
}

/// What an attempt's end does to its operation: computed by the engine from the outcome
/// and the retry policy, applied by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    /// `COMPLETED`, keeping the outcome's data.
    Complete {
        /// The `Ok` outcome's data.
        data: Map<String, Value>,
    },
    /// `FAILED`.
    Fail {
        /// Why.
        reason: String,
        /// The error code, if any.
        code: Option<String>,
    },
    /// Back to `ACCEPTED`, due again at `at`.
    RetryAt {
        /// Why.
        reason: String,
        /// When the next attempt becomes due.
        #[serde(rename = "nextRetryAt")]
        at: DateTime<Utc>,
    },
    /// `TIMEOUT`: no more attempts.
    GiveUp {
        /// Why.
        reason: String,
    },
    /// `CANCELLED`: an operator asked for it, and this attempt did not succeed.
    Cancel {
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// The state the operation moves to.
    pub fn target_state(&self) -> OperationState {
        match self {
            Self::Complete { .. } => OperationState::Completed,
            Self::Fail { .. } => OperationState::Failed,
            Self::RetryAt { .. } => OperationState::Accepted,
            Self::GiveUp { .. } => OperationState::Timeout,
            Self::Cancel { .. } => OperationState::Cancelled,
        }
    }
}

/// A fenced move out of `PROCESSING`: a finalize or a reap.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The attempt it ends.
    pub fence: Fence,
    /// Where the operation goes.
    pub decision: Decision,
    /// When.
    pub now: DateTime<Utc>,
    /// What the move submits, when it is applied.
    pub follow_ups: FollowUps,
}

/// Whether a fenced write matched its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// It matched and was written.
    Applied,
    /// It matched nothing: the attempt is no longer the current one, its lease has another
    /// owner, or the operation already moved on. Nothing was changed.
    Rejected,
}

/// An outcome in the write-ahead log whose operation is still `PROCESSING` under the
/// attempt that produced it: the Finalizer's work.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingOutcome {
    /// The operation.
    pub operation: Operation,
    /// Its recorded outcome.
    pub outcome: Outcome,
    /// The decision recorded with it.
    pub decision: Decision,
}

/// Which operations to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListFilter {
    /// Only this tenant.
    pub tenant: Option<TenantId>,
    /// Only this domain.
    pub domain: Option<DomainName>,
    /// Only this state.
    pub state: Option<OperationState>,
    /// Only operations that have started at least this many attempts.
    pub attempts_min: Option<u32>,
    /// Only operations whose last error carries this code.
    pub error_code: Option<String>,
    /// Only operations accepted at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only operations accepted before this time.
    pub created_until: Option<DateTime<Utc>>,
    /// Only operations with a smaller id (the previous page's cursor): newest first.
    pub before: Option<OperationId>,
    /// At most this many (the store caps it at [`LIST_LIMIT_MAX`]).
    pub limit: u32,
}

impl ListFilter {
    /// Whether `operation` is one the filter lets through (the cursor and the limit
    /// aside). Every store selects exactly these.
    pub fn matches(&self, operation: &Operation) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| &operation.scope.tenant == t)
            && self
                .domain
                .as_ref()
                .is_none_or(|d| &operation.scope.domain == d)
            && self.state.is_none_or(|s| operation.state == s)
            && self
                .attempts_min
                .is_none_or(|n| operation.attempt_count >= n)
            && self
                .error_code
                .as_ref()
                .is_none_or(|code| operation.error_code.as_ref() == Some(code))
            && self
                .created_from
                .is_none_or(|from| operation.created_at >= from)
            && self
                .created_until
                .is_none_or(|until| operation.created_at < until)
    }
}

/// The largest page a store returns.
pub const LIST_LIMIT_MAX: u32 = 1_000;

/// One page of a listing, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The operations.
    pub items: Vec<Operation>,
    /// Pass as [`ListFilter::before`] for the next page; `None` on the last page.
    pub next: Option<OperationId>,
}

/// Whose operations an overview counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverviewOf<'a> {
    /// Every tenant's, in every domain: the whole store, for its operator
    /// (`oncely status --db`).
    All,
    /// One tenant's operations in one domain: what an API key of that tenant may see.
    Tenant(&'a TenantId, &'a DomainName),
}

impl OverviewOf<'_> {
    /// Whether `scope` is counted.
    pub fn counts(&self, scope: &Scope) -> bool {
        match self {
            Self::All => true,
            Self::Tenant(tenant, domain) => &scope.tenant == *tenant && &scope.domain == *domain,
        }
    }
}

/// How one domain stands, for operators (`oncely status`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainOverview {
    /// The domain.
    pub domain: String,
    /// Operations by state (every state, zeros included): `ACCEPTED` and `PROCESSING` as
    /// they are now; the terminal states, those that ended since the overview's `since`.
    pub states: std::collections::BTreeMap<String, u64>,
    /// `ACCEPTED` operations that have had an attempt: waiting for a retry.
    pub retrying: u64,
    /// `PROCESSING` operations whose lease has ended: their worker died or hangs, and the
    /// Reaper has not taken them back yet.
    pub stuck: u64,
    /// When the oldest operation that is due now became due; `None` when none waits.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Operations that ended since the `since` asked for.
    pub ended_since: u64,
    /// Leases the Reaper took back since then.
    pub rescued_since: u64,
}

impl DomainOverview {
    /// A domain with nothing counted yet: every state at zero.
    pub fn empty(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            states: OperationState::ALL
                .iter()
                .map(|state| (state.as_str().to_owned(), 0))
                .collect(),
            ..Self::default()
        }
    }
}

/// The live part of one domain, read at a cost bounded by its size (the partial indexes
/// over live states), for the engine's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// `ACCEPTED` operations due now: waiting for a worker.
    pub due: u64,
    /// `ACCEPTED` operations due later: retries in their backoff.
    pub waiting: u64,
    /// `PROCESSING` operations.
    pub processing: u64,
    /// When the oldest operation that is due now became due.
    pub oldest_due: Option<DateTime<Utc>>,
}

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation does not exist.
    #[error("no operation {scope}")]
    NotFound {
        /// What was asked for.
        scope: Scope,
    },
    /// An operator retry of an operation that is not `FAILED` or `TIMEOUT`.
    #[error("operation {scope} is {state}; only FAILED or TIMEOUT operations can be retried")]
    NotRetryable {
        /// The operation.
        scope: Scope,
        /// Its state.
        state: OperationState,
    },
    /// An operator cancel of an operation that has already ended.
    #[error(
        "operation {scope} is {state}; only ACCEPTED or PROCESSING operations can be cancelled"
    )]
    NotCancellable {
        /// The operation.
        scope: Scope,
        /// Its state.
        state: OperationState,
    },
    /// The operation changed between the read and the write of an operator's action; the
    /// same action asked again sees the new state.
    #[error("operation {scope} changed meanwhile; ask again")]
    Busy {
        /// The operation.
        scope: Scope,
    },
    /// The database failed or could not be reached. Retrying later may help.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored row could not be read back (a bug, or a database edited by hand).
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// A test's failpoint stopped the store before it committed.
    #[error("stopped by a failpoint before commit")]
    Crashed,
}

impl StoreError {
    /// Whether trying the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(_) | Self::Busy { .. } => true,
            Self::NotFound { .. }
            | Self::NotRetryable { .. }
            | Self::NotCancellable { .. }
            | Self::Corrupt(_)
            | Self::Crashed => false,
        }
    }
}

/// A database that keeps operations and their write-ahead log.
///
/// Implementations must keep the contract in each method's doc; the conformance tests in
/// `oncely-sqlx` check it. Batches come from one engine; a method's batch is one
/// transaction.
pub trait Store: Send + Sync + 'static {
    /// Inserts each operation, or returns the existing one with the same scope (I1):
    /// `Existing` when the fingerprints match, `Conflict` when they differ. New operations
    /// are `ACCEPTED`, due at `now`, with an `ACCEPTED` log entry; with a `lease`, the first
    /// `lease.limit` new ones are instead `PROCESSING` under that lease at attempt 1, with
    /// an `EXECUTING` entry too, as if claimed in the same transaction.
    fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> impl Future<Output = Result<Vec<Accepted>, StoreError>> + Send;

    /// Moves up to `limit` due `ACCEPTED` operations of the domain to `PROCESSING` with a
    /// lease for `owner` and `attempt_count + 1`, oldest due first, with an `EXECUTING`
    /// entry each. Never hands one operation to two workers at once.
    fn claim(
        &self,
        request: ClaimRequest,
    ) -> impl Future<Output = Result<Vec<Operation>, StoreError>> + Send;

    /// Appends each outcome to the log. When its fence matches, the entry is
    /// `OUTCOME_RECORDED` and the operation's `recorded_attempt` becomes the attempt (I3);
    /// otherwise it is kept as `OUTCOME_REJECTED` and nothing else changes (I4).
    fn record_outcomes(
        &self,
        batch: Vec<RecordOutcome>,
    ) -> impl Future<Output = Result<Vec<Fenced>, StoreError>> + Send;

    /// Applies each decision when its fence matches and the attempt's outcome was recorded
    /// (WAL first, I3), with a `FINALIZED` entry; otherwise changes nothing (I4).
    fn finalize(
        &self,
        batch: Vec<Transition>,
    ) -> impl Future<Output = Result<Vec<Fenced>, StoreError>> + Send;

    /// Records each outcome and, where its fence matches, applies its decision: the
    /// worker's fast path, `record_outcomes` then `finalize` as one. A store that can do
    /// both in one transaction should (one commit instead of two); this default runs them
    /// one after the other, which is just as safe: a crash between the two leaves a
    /// recorded outcome for the Finalizer (I3).
    fn settle(
        &self,
        batch: Vec<RecordOutcome>,
    ) -> impl Future<Output = Result<Vec<Fenced>, StoreError>> + Send {
        settle_in_two_steps(self, batch)
    }

    /// `PROCESSING` operations of the domain whose lease ended at or before `now` and whose
    /// attempt has no recorded outcome: the reaper's candidates.
    fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Operation>, StoreError>> + Send;

    /// Applies each decision when its fence matches, the lease has ended at or before
    /// `now`, and no outcome of the attempt was recorded (a recorded outcome is the
    /// Finalizer's, I3), with a `REAPED` entry; otherwise changes nothing.
    fn reap(
        &self,
        batch: Vec<Transition>,
    ) -> impl Future<Output = Result<Vec<Fenced>, StoreError>> + Send;

    /// Ends at `now` the leases that earlier incarnations of `node` hold on the domain's
    /// `PROCESSING` operations: those whose owner is `node/…` but not `current`. Called
    /// by a node at start, so that what it was running when it died is reaped at once,
    /// not when the lease would have run out. Nothing else changes: the Reaper then
    /// takes them back under its usual fence (an outcome recorded meanwhile wins, I3),
    /// and a late write of the earlier incarnation matches no row (I4). Returns how many
    /// leases it ended.
    fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The domain's live operations at `now`: due, waiting for a retry, processing, and
    /// the oldest due.
    fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Backlog, StoreError>> + Send;

    /// The overview at `now` of the domains `of` counts: their live operations, and what
    /// ended and what the Reaper rescued since `since`. Its cost is bounded by what is
    /// live and what happened since `since`, not by the operations kept (an overview
    /// since the epoch counts them all). A domain with nothing live and nothing since is
    /// left out.
    fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<DomainOverview>, StoreError>> + Send;

    /// `PROCESSING` operations of the domain whose current attempt's outcome was recorded
    /// at or before `recorded_before` but not finalized: the Finalizer's work.
    fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PendingOutcome>, StoreError>> + Send;

    /// Sends a `FAILED` or `TIMEOUT` operation back to `ACCEPTED`, due at `now`, with a
    /// fresh budget of attempts and an `OPERATOR_RETRIED` entry naming who asked (`by`: an
    /// API key's id, say). The key stays the same (I7).
    fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Operation, StoreError>> + Send;

    /// An operator's cancel (`by`: an API key's id, say). An `ACCEPTED` operation is
    /// `CANCELLED` at once when `at_once` (no attempt's outcome is unknown), with an
    /// `OPERATOR_CANCELLED` entry; otherwise, and for a `PROCESSING` one, the cancel is
    /// requested (`cancel_requested_at`, a `CANCEL_REQUESTED` entry; an `ACCEPTED` one
    /// becomes due at once) and the next attempt turns into it. `follow_ups` are submitted
    /// in the same transaction when the operation ends here. A cancel already made or
    /// requested answers the operation as it is; a `COMPLETED`, `FAILED` or `TIMEOUT` one is
    /// [`StoreError::NotCancellable`]. [`StoreError::Busy`] when the operation changed
    /// meanwhile: ask again.
    fn cancel(
        &self,
        scope: &Scope,
        by: Option<&str>,
        at_once: bool,
        follow_ups: FollowUps,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Operation, StoreError>> + Send;

    /// Deletes up to `limit` terminal operations of the domain that ended before
    /// `completed_before`, with their write-ahead log, oldest first; returns how many. After
    /// that their keys can be accepted again.
    fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Resolves when another process may have accepted work for `domain` (PostgreSQL's
    /// `LISTEN/NOTIFY`), so idle engines start at once instead of at their next poll. Stores
    /// without such a signal never resolve; polling covers them.
    fn work_signal(&self, domain: &DomainName) -> impl Future<Output = ()> + Send {
        let _ = domain;
        std::future::pending()
    }

    /// The operation with this scope, if any.
    fn get(
        &self,
        scope: &Scope,
    ) -> impl Future<Output = Result<Option<Operation>, StoreError>> + Send;

    /// Operations matching the filter, newest first, one page.
    fn list(&self, filter: ListFilter) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// The write-ahead log of one operation, oldest first; `NotFound` when it does not exist.
    fn history(
        &self,
        scope: &Scope,
    ) -> impl Future<Output = Result<Vec<WalEntry>, StoreError>> + Send;
}

// ---------------------------------------------------------------------------------------
// What every store writes the same way: the log entries' details, the message kept on an
// operation, and the answers of accept and retry. Each store calls these, so the stores
// cannot drift apart.
// ---------------------------------------------------------------------------------------

/// The longest error message kept on an operation (its log keeps the whole reason).
pub const ERROR_MESSAGE_MAX: usize = 1_000;

/// `reason` cut to [`ERROR_MESSAGE_MAX`] characters, as an operation keeps it.
pub fn error_message(reason: &str) -> String {
    match reason.char_indices().nth(ERROR_MESSAGE_MAX) {
        Some((end, _)) => reason[..end].to_owned(),
        None => reason.to_owned(),
    }
}

/// The detail of an `ACCEPTED` entry: the domain's event type.
pub fn accepted_detail(event_type: &str) -> Value {
    serde_json::json!({ "eventType": event_type })
}

/// The detail of an `EXECUTING` entry: when its lease ends.
pub fn executing_detail(lease_until: DateTime<Utc>) -> Value {
    serde_json::json!({ "leaseUntil": lease_until.to_rfc3339() })
}

/// The detail of an `OUTCOME_RECORDED` or `OUTCOME_REJECTED` entry: the outcome and the
/// decision made of it, which the Finalizer applies as they are, and `"reconciled": true`
/// when the outcome came from the domain's reconcile rather than a call.
pub fn recorded_detail(record: &RecordOutcome) -> Value {
    let mut detail = serde_json::json!({ "outcome": record.outcome, "decision": record.decision });
    if record.reconciled {
        detail["reconciled"] = Value::Bool(true);
    }
    detail
}

/// The detail of an `OPERATOR_RETRIED` entry: what the operation was before, and who
/// asked (an API key's id, say).
pub fn retried_detail(previous: &Operation, by: Option<&str>) -> Value {
    serde_json::json!({
        "previousState": previous.state,
        "previousError": previous.error_message,
        "by": by,
    })
}

/// The detail of an `OPERATOR_CANCELLED` or `CANCEL_REQUESTED` entry: the state it was in,
/// and who asked.
pub fn cancelled_detail(previous: &Operation, by: Option<&str>) -> Value {
    serde_json::json!({ "previousState": previous.state, "by": by })
}

/// How an operator's cancel of `current` is written, or why it is not: `None` when there
/// is nothing to write (already cancelled, or already requested).
pub fn cancel_step(
    current: &Operation,
    at_once: bool,
) -> Result<Option<(OperationState, WalKind)>, StoreError> {
    use OperationState::{Accepted, Cancelled, Processing};
    match current.state {
        Cancelled => Ok(None),
        Accepted | Processing if current.cancel_requested_at.is_some() => Ok(None),
        Accepted if at_once => Ok(Some((Cancelled, WalKind::OperatorCancelled))),
        Accepted | Processing => Ok(Some((current.state, WalKind::CancelRequested))),
        state => Err(StoreError::NotCancellable {
            scope: current.scope.clone(),
            state,
        }),
    }
}

/// I1: what an accept of `fingerprint` answers when its scope holds `existing`: the same
/// request is a replay, another one a conflict.
pub fn replay_or_conflict(existing: Operation, fingerprint: &Fingerprint) -> Accepted {
    if &existing.fingerprint == fingerprint {
        Accepted::Existing(existing)
    } else {
        Accepted::Conflict(existing)
    }
}

/// Only `FAILED` and `TIMEOUT` operations take an operator's retry.
pub fn check_retryable(operation: &Operation) -> Result<(), StoreError> {
    match operation.state {
        OperationState::Failed | OperationState::Timeout => {
            debug_assert!(operation.state.can_move_to(OperationState::Accepted));
            Ok(())
        }
        state @ (OperationState::Accepted
        | OperationState::Processing
        | OperationState::Completed
        | OperationState::Cancelled) => Err(StoreError::NotRetryable {
            scope: operation.scope.clone(),
            state,
        }),
    }
}

/// [`Store::settle`] as two transactions: [`Store::record_outcomes`], then
/// [`Store::finalize`] of what was recorded. The trait's default; a crash between the two
/// leaves recorded outcomes for the Finalizer (I3).
pub async fn settle_in_two_steps<S: Store + ?Sized>(
    store: &S,
    batch: Vec<RecordOutcome>,
) -> Result<Vec<Fenced>, StoreError> {
    let recorded = store.record_outcomes(batch.clone()).await?;
    let transitions: Vec<Transition> = batch
        .into_iter()
        .zip(&recorded)
        .filter(|(_, fenced)| **fenced == Fenced::Applied)
        .map(|(record, _)| Transition {
            fence: record.fence,
            decision: record.decision,
            now: record.now,
            follow_ups: record.follow_ups,
        })
        .collect();
    let mut finalized = store.finalize(transitions).await?.into_iter();
    Ok(recorded
        .into_iter()
        .map(|fenced| match fenced {
            Fenced::Applied => finalized.next().unwrap_or(Fenced::Rejected),
            Fenced::Rejected => Fenced::Rejected,
        })
        .collect())
}
