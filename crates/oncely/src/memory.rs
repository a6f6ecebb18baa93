//! [`MemoryStore`]: the [`Store`] contract kept in memory, for tests and for the
//! deterministic simulator (`oncely sim`). Nothing survives the process.
//!
//! Each method takes one lock and does its whole batch under it, so every batch is one
//! atomic step, as a transaction is on a database; a "crash" between two calls loses
//! nothing that a call returned. The rules that carry the invariants are the same as the
//! SQL stores' (`oncely-sqlx`'s `sql.rs`), and the same conformance suite checks both:
//! [`fence_matches`] (I4), [`recorded`] (I3, WAL first) and [`reapable`] (I3, for the
//! Reaper).
//!
//! [`MemoryStore::weakened`] removes one of those rules on purpose, so that a test can
//! show its checker notices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::key::{DomainName, NodeId, Scope};
use crate::keys::{ApiKey, KeyStore};
use crate::operation::{Fence, Lease, LeaseOwner, Operation, OperationId, WalEntry, WalKind};
use crate::state::OperationState;
use crate::store::{
    AcceptLease, Accepted, Backlog, ClaimRequest, Decision, DomainOverview, Fenced, FollowUps,
    LIST_LIMIT_MAX, ListFilter, NewOperation, OverviewOf, Page, PendingOutcome, RecordOutcome,
    Store, StoreError, Transition, accepted_detail, cancel_step, cancelled_detail, check_retryable,
    error_message, executing_detail, recorded_detail, replay_or_conflict, retried_detail,
};

/// A rule of the store that [`MemoryStore::weakened`] removes, to show that the tests and
/// the simulator catch its absence. Never used outside such checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weakness {
    /// Finalize and reap match any lease owner: only the attempt number fences them.
    NoOwnerFence,
    /// The Reaper takes back leases whose outcome is recorded (the Finalizer's, I3).
    ReapRecorded,
    /// A settle applies the decision first and records the outcome in a second step, and a
    /// finalize needs no recorded outcome: the log no longer comes first.
    FinalizeBeforeRecord,
    /// An end's follow-ups are inserted after it, in a transaction of their own, instead
    /// of with it: no longer an outbox.
    FollowUpsApart,
}

/// Operations, their write-ahead log and API keys, in memory. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    data: Arc<Mutex<Data>>,
    weakness: Option<Weakness>,
}

#[derive(Debug, Default)]
struct Data {
    operations: BTreeMap<OperationId, Operation>,
    scopes: BTreeMap<String, OperationId>,
    wal: BTreeMap<i64, WalEntry>,
    next_id: i64,
    next_sequence: i64,
    keys: BTreeMap<String, ApiKey>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store without one of its rules (see [`Weakness`]): only for showing that a
    /// checker notices.
    pub fn weakened(mut self, weakness: Weakness) -> Self {
        self.weakness = Some(weakness);
        self
    }

    /// Every operation, by id, and the whole write-ahead log, in order: what a checker
    /// reads between two steps.
    pub fn snapshot(&self) -> (Vec<Operation>, Vec<WalEntry>) {
        let data = self.lock();
        (
            data.operations.values().cloned().collect(),
            data.wal.values().cloned().collect(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn weak(&self, weakness: Weakness) -> bool {
        self.weakness == Some(weakness)
    }
}

/// Times are kept to the millisecond, as the SQL stores keep them.
fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// I4: the fence's attempt, under the fence's owner, is the operation's current one.
fn fence_matches(operation: &Operation, fence: &Fence, check_owner: bool) -> bool {
    operation.state == OperationState::Processing
        && operation.attempt_count == fence.attempt
        && (!check_owner
            || operation.lease.as_ref().map(|lease| &lease.owner) == Some(&fence.owner))
}

/// I3, WAL first: the current attempt's outcome is in the log.
fn recorded(operation: &Operation) -> bool {
    operation.recorded_attempt == Some(operation.attempt_count)
}

/// I3, for the Reaper: the lease ended at or before `now` and the attempt has no recorded
/// outcome.
fn reapable(operation: &Operation, now: DateTime<Utc>) -> bool {
    operation
        .lease
        .as_ref()
        .is_some_and(|lease| lease.until <= now)
        && !recorded(operation)
}

fn corrupt(error: serde_json::Error) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// How a fenced write changes an operation and what it logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Record,
    Settle,
    Finalize,
    Reap,
}

impl Data {
    fn append(
        &mut self,
        operation: &Operation,
        kind: WalKind,
        attempt: u32,
        owner: Option<LeaseOwner>,
        detail: Value,
        at: DateTime<Utc>,
    ) {
        self.next_sequence += 1;
        let entry = WalEntry {
            sequence: self.next_sequence,
            operation_id: operation.id,
            kind,
            attempt,
            owner,
            state_after: operation.state,
            detail,
            recorded_at: at,
        };
        self.wal.insert(entry.sequence, entry);
    }

    fn by_scope(&self, scope: &Scope) -> Option<&Operation> {
        self.scopes
            .get(&scope.to_string())
            .and_then(|id| self.operations.get(id))
    }

    /// The operation with this scope, for an operator's action on it.
    fn current(&self, scope: &Scope) -> Result<Operation, StoreError> {
        self.by_scope(scope)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                scope: scope.clone(),
            })
    }

    /// Inserts what is new in `batch` (one transaction's worth) and says, per item, what
    /// came of it.
    fn accept(
        &mut self,
        batch: &[NewOperation],
        lease: Option<&AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        // The first item of each scope; the first `limit` scopes in batch order are leased
        // if they turn out new; new rows are inserted in scope order (as the SQL stores do).
        let mut first: BTreeMap<String, usize> = BTreeMap::new();
        for (index, new) in batch.iter().enumerate() {
            first.entry(new.scope.to_string()).or_insert(index);
        }
        let mut in_batch_order: Vec<usize> = first.values().copied().collect();
        in_batch_order.sort_unstable();
        let limit = lease.map_or(0, |lease| lease.limit as usize);
        let leased: Vec<usize> = in_batch_order.into_iter().take(limit).collect();
        let mut inserted: BTreeMap<usize, Operation> = BTreeMap::new();
        for &index in first.values() {
            let new = &batch[index];
            if self.by_scope(&new.scope).is_some() {
                continue;
            }
            let now = ms(new.now);
            let lease = lease
                .filter(|_| leased.contains(&index))
                .map(|lease| Lease {
                    owner: lease.owner.clone(),
                    until: ms(lease.lease_until()),
                });
            self.next_id += 1;
            let operation = Operation {
                id: OperationId(self.next_id),
                scope: new.scope.clone(),
                event_type: new.event_type.clone(),
                state: if lease.is_some() {
                    OperationState::Processing
                } else {
                    OperationState::Accepted
                },
                payload: new.payload.clone(),
                fingerprint: new.fingerprint.clone(),
                attempt_count: u32::from(lease.is_some()),
                attempt_floor: 0,
                recorded_attempt: None,
                last_attempt_at: lease.as_ref().map(|_| now),
                next_retry_at: Some(now),
                lease,
                outcome_data: None,
                error_code: None,
                error_message: None,
                created_at: now,
                updated_at: now,
                completed_at: None,
                cancel_requested_at: None,
                traceparent: new.traceparent,
            };
            let mut as_accepted = operation.clone();
            as_accepted.state = OperationState::Accepted;
            self.append(
                &as_accepted,
                WalKind::Accepted,
                0,
                None,
                accepted_detail(&new.event_type),
                now,
            );
            if let Some(lease) = &operation.lease {
                self.append(
                    &operation,
                    WalKind::Executing,
                    1,
                    Some(lease.owner.clone()),
                    executing_detail(lease.until),
                    now,
                );
            }
            self.scopes.insert(new.scope.to_string(), operation.id);
            self.operations.insert(operation.id, operation.clone());
            inserted.insert(index, operation);
        }
        batch
            .iter()
            .enumerate()
            .map(|(index, new)| {
                if let Some(operation) = inserted.remove(&index) {
                    return Ok(Accepted::New(operation));
                }
                self.by_scope(&new.scope)
                    .cloned()
                    .map(|existing| replay_or_conflict(existing, &new.fingerprint))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "{} was accepted but cannot be read",
                            new.scope
                        ))
                    })
            })
            .collect()
    }

    /// Applies `decision` to `operation` at `now`.
    fn apply(operation: &mut Operation, decision: &Decision, now: DateTime<Utc>) {
        let state = decision.target_state();
        operation.state = state;
        operation.outcome_data = None;
        operation.error_code = None;
        operation.error_message = None;
        operation.next_retry_at = None;
        match decision {
            Decision::Complete { data } => {
                operation.outcome_data = Some(Value::Object(data.clone()));
            }
            Decision::Fail { reason, code } => {
                operation.error_code.clone_from(code);
                operation.error_message = Some(error_message(reason));
            }
            Decision::RetryAt { reason, at } => {
                operation.error_message = Some(error_message(reason));
                operation.next_retry_at = Some(ms(*at));
            }
            Decision::GiveUp { reason } | Decision::Cancel { reason } => {
                operation.error_message = Some(error_message(reason));
            }
        }
        operation.completed_at = state.is_terminal().then_some(now);
        operation.updated_at = now;
        operation.lease = None;
    }

    /// One fenced write of `step` for one operation; whether it was applied.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        step: Step,
        fence: &Fence,
        decision: Option<&Decision>,
        record: Option<Value>,
        now: DateTime<Utc>,
        check_owner: bool,
        guard: impl Fn(&Operation, DateTime<Utc>) -> bool,
    ) -> Result<Fenced, StoreError> {
        let now = ms(now);
        let Some(current) = self.operations.get(&fence.id) else {
            return Ok(Fenced::Rejected);
        };
        let applies = fence_matches(current, fence, check_owner) && guard(current, now);
        let mut operation = current.clone();
        let owner = Some(fence.owner.clone());
        if !applies {
            if let Some(detail) = record {
                // I4: a zombie's outcome is kept for the record, never applied.
                self.append(
                    &operation,
                    WalKind::OutcomeRejected,
                    fence.attempt,
                    owner,
                    detail,
                    now,
                );
            }
            return Ok(Fenced::Rejected);
        }
        operation.updated_at = now;
        if let Some(detail) = record {
            operation.recorded_attempt = Some(operation.attempt_count);
            let mut as_recorded = operation.clone();
            as_recorded.state = OperationState::Processing;
            self.append(
                &as_recorded,
                WalKind::OutcomeRecorded,
                fence.attempt,
                owner.clone(),
                detail,
                now,
            );
        }
        if let Some(decision) = decision {
            Self::apply(&mut operation, decision, now);
            let kind = if step == Step::Reap {
                WalKind::Reaped
            } else {
                WalKind::Finalized
            };
            let detail = serde_json::to_value(decision).map_err(corrupt)?;
            self.append(&operation, kind, fence.attempt, owner, detail, now);
        }
        self.operations.insert(operation.id, operation);
        Ok(Fenced::Applied)
    }

    /// Inserts the follow-ups of an applied end; a key already taken is left as it is.
    fn follow_ups(&mut self, follow_ups: &FollowUps) -> Result<(), StoreError> {
        if !follow_ups.is_empty() {
            self.accept(follow_ups, None)?;
        }
        Ok(())
    }
}

/// Indexes of `items` in the order of `key`, as the SQL stores write batches (id order).
fn by_id<T>(items: &[T], key: impl Fn(&T) -> OperationId) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..items.len()).collect();
    indexes.sort_by_key(|&index| key(&items[index]));
    indexes
}

impl MemoryStore {
    /// Inserts the follow-ups that [`Weakness::FollowUpsApart`] kept from their ends'
    /// transactions, after a window in which a crash loses them.
    async fn insert_apart(&self, kept: FollowUps) -> Result<(), StoreError> {
        if kept.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        self.lock().follow_ups(&kept)
    }

    /// Inserts `follow_ups` of an applied end in `data`, or keeps them in `kept` for later
    /// when the store is weakened so.
    fn submit(
        &self,
        data: &mut Data,
        follow_ups: &FollowUps,
        kept: &mut FollowUps,
    ) -> Result<(), StoreError> {
        if self.weak(Weakness::FollowUpsApart) {
            kept.extend(follow_ups.iter().cloned());
            return Ok(());
        }
        data.follow_ups(follow_ups)
    }

    fn records(
        &self,
        batch: &[RecordOutcome],
        step: Step,
        kept: &mut FollowUps,
    ) -> Result<Vec<Fenced>, StoreError> {
        let mut data = self.lock();
        let mut fenced = vec![Fenced::Rejected; batch.len()];
        for index in by_id(batch, |record| record.fence.id) {
            let record = &batch[index];
            let decision = (step == Step::Settle).then_some(&record.decision);
            fenced[index] = data.write(
                step,
                &record.fence,
                decision,
                Some(recorded_detail(record)),
                record.now,
                true,
                |_, _| true,
            )?;
            if fenced[index] == Fenced::Applied && step == Step::Settle {
                self.submit(&mut data, &record.follow_ups, kept)?;
            }
        }
        Ok(fenced)
    }

    fn transitions(
        &self,
        batch: &[Transition],
        step: Step,
        kept: &mut FollowUps,
    ) -> Result<Vec<Fenced>, StoreError> {
        let check_owner = !self.weak(Weakness::NoOwnerFence);
        let reap_recorded = self.weak(Weakness::ReapRecorded);
        let unrecorded_finalize = self.weak(Weakness::FinalizeBeforeRecord);
        let mut data = self.lock();
        let mut fenced = vec![Fenced::Rejected; batch.len()];
        for index in by_id(batch, |transition| transition.fence.id) {
            let transition = &batch[index];
            let guard = |operation: &Operation, now: DateTime<Utc>| match step {
                Step::Reap if reap_recorded => operation
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.until <= now),
                Step::Reap => reapable(operation, now),
                _ => unrecorded_finalize || recorded(operation),
            };
            fenced[index] = data.write(
                step,
                &transition.fence,
                Some(&transition.decision),
                None,
                transition.now,
                check_owner,
                guard,
            )?;
            if fenced[index] == Fenced::Applied {
                self.submit(&mut data, &transition.follow_ups, kept)?;
            }
        }
        Ok(fenced)
    }

    /// The weakened settle: the decision first, the outcome after it, in two steps.
    async fn settle_backwards(&self, batch: &[RecordOutcome]) -> Result<Vec<Fenced>, StoreError> {
        let transitions: Vec<Transition> = batch
            .iter()
            .map(|record| Transition {
                fence: record.fence.clone(),
                decision: record.decision.clone(),
                now: record.now,
                follow_ups: record.follow_ups.clone(),
            })
            .collect();
        let mut kept = FollowUps::new();
        let finalized = self.transitions(&transitions, Step::Finalize, &mut kept)?;
        self.insert_apart(kept).await?;
        // The window between the two steps, where a crash loses the outcome.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let mut data = self.lock();
        for (record, fenced) in batch.iter().zip(&finalized) {
            if *fenced == Fenced::Applied
                && let Some(operation) = data.operations.get(&record.fence.id).cloned()
            {
                data.append(
                    &operation,
                    WalKind::OutcomeRecorded,
                    record.fence.attempt,
                    Some(record.fence.owner.clone()),
                    recorded_detail(record),
                    ms(record.now),
                );
            }
        }
        Ok(finalized)
    }
}

impl Store for MemoryStore {
    async fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        self.lock().accept(&batch, lease.as_ref())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        let now = ms(request.now);
        let until = ms(request.lease_until());
        let mut data = self.lock();
        let mut due: Vec<(DateTime<Utc>, OperationId)> = data
            .operations
            .values()
            .filter(|o| {
                o.scope.domain == request.domain
                    && o.state == OperationState::Accepted
                    && o.next_retry_at.is_some_and(|at| at <= now)
            })
            .map(|o| (o.next_retry_at.unwrap_or(now), o.id))
            .collect();
        due.sort();
        due.truncate(request.limit as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(operation) = data.operations.get_mut(&id) else {
                continue;
            };
            operation.state = OperationState::Processing;
            operation.attempt_count += 1;
            operation.lease = Some(Lease {
                owner: request.owner.clone(),
                until,
            });
            operation.last_attempt_at = Some(now);
            operation.updated_at = now;
            let operation = operation.clone();
            data.append(
                &operation,
                WalKind::Executing,
                operation.attempt_count,
                Some(request.owner.clone()),
                executing_detail(until),
                now,
            );
            claimed.push(operation);
        }
        Ok(claimed)
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        self.records(&batch, Step::Record, &mut FollowUps::new())
    }

    async fn settle(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        if self.weak(Weakness::FinalizeBeforeRecord) {
            return self.settle_backwards(&batch).await;
        }
        let mut kept = FollowUps::new();
        let fenced = self.records(&batch, Step::Settle, &mut kept)?;
        self.insert_apart(kept).await?;
        Ok(fenced)
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        let mut kept = FollowUps::new();
        let fenced = self.transitions(&batch, Step::Finalize, &mut kept)?;
        self.insert_apart(kept).await?;
        Ok(fenced)
    }

    async fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        let now = ms(now);
        let data = self.lock();
        let mut expired: Vec<&Operation> = data
            .operations
            .values()
            .filter(|o| {
                &o.scope.domain == domain
                    && o.state == OperationState::Processing
                    && reapable(o, now)
            })
            .collect();
        expired.sort_by_key(|o| (o.lease.as_ref().map(|lease| lease.until), o.id));
        Ok(expired.into_iter().take(limit as usize).cloned().collect())
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        let mut kept = FollowUps::new();
        let fenced = self.transitions(&batch, Step::Reap, &mut kept)?;
        self.insert_apart(kept).await?;
        Ok(fenced)
    }

    async fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let now = ms(now);
        let prefix = format!("{node}/");
        let mut data = self.lock();
        let mut released = 0;
        for operation in data.operations.values_mut() {
            if &operation.scope.domain != domain || operation.state != OperationState::Processing {
                continue;
            }
            if let Some(lease) = &mut operation.lease
                && lease.until > now
                && lease.owner.as_str().starts_with(&prefix)
                && &lease.owner != current
            {
                lease.until = now;
                released += 1;
            }
        }
        Ok(released)
    }

    async fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> Result<Backlog, StoreError> {
        let now = ms(now);
        let data = self.lock();
        let mut backlog = Backlog::default();
        for operation in data.operations.values() {
            if &operation.scope.domain != domain {
                continue;
            }
            match (operation.state, operation.next_retry_at) {
                (OperationState::Accepted, Some(at)) if at <= now => {
                    backlog.due += 1;
                    backlog.oldest_due = Some(backlog.oldest_due.map_or(at, |d| d.min(at)));
                }
                (OperationState::Accepted, Some(_)) => backlog.waiting += 1,
                (OperationState::Processing, _) => backlog.processing += 1,
                _ => {}
            }
        }
        Ok(backlog)
    }

    async fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainOverview>, StoreError> {
        let (since, now) = (ms(since), ms(now));
        let data = self.lock();
        let mut domains: BTreeMap<String, DomainOverview> = BTreeMap::new();
        let mut domain_of = BTreeMap::new();
        for operation in data.operations.values() {
            if !of.counts(&operation.scope) {
                continue;
            }
            let name = operation.scope.domain.to_string();
            domain_of.insert(operation.id, name.clone());
            // Live operations, and those that ended since `since`: what the SQL stores
            // count, from their indexes.
            let ended = operation.completed_at.is_some_and(|at| at >= since);
            if operation.state.is_terminal() && !ended {
                continue;
            }
            let domain = domains
                .entry(name.clone())
                .or_insert_with(|| DomainOverview::empty(name));
            *domain
                .states
                .entry(operation.state.as_str().to_owned())
                .or_default() += 1;
            match operation.state {
                OperationState::Accepted => {
                    if operation.attempt_count > operation.attempt_floor {
                        domain.retrying += 1;
                    }
                    if let Some(at) = operation.next_retry_at.filter(|at| *at <= now) {
                        domain.oldest_due = Some(domain.oldest_due.map_or(at, |d| d.min(at)));
                    }
                }
                OperationState::Processing
                    if operation
                        .lease
                        .as_ref()
                        .is_some_and(|lease| lease.until <= now) =>
                {
                    domain.stuck += 1;
                }
                _ => {}
            }
            if ended {
                domain.ended_since += 1;
            }
        }
        for entry in data.wal.values() {
            if entry.kind == WalKind::Reaped
                && entry.recorded_at >= since
                && let Some(domain) = domain_of
                    .get(&entry.operation_id)
                    .and_then(|name| domains.get_mut(name))
            {
                domain.rescued_since += 1;
            }
        }
        Ok(domains.into_values().collect())
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Recorded {
            outcome: crate::outcome::Outcome,
            decision: Decision,
        }
        let recorded_before = ms(recorded_before);
        let data = self.lock();
        let mut pending = Vec::new();
        for operation in data.operations.values() {
            if pending.len() >= limit as usize {
                break;
            }
            if &operation.scope.domain != domain
                || operation.state != OperationState::Processing
                || !recorded(operation)
            {
                continue;
            }
            let owner = operation.lease.as_ref().map(|lease| &lease.owner);
            let entry = data.wal.values().find(|entry| {
                entry.operation_id == operation.id
                    && entry.kind == WalKind::OutcomeRecorded
                    && entry.attempt == operation.attempt_count
                    && entry.owner.as_ref() == owner
                    && entry.recorded_at <= recorded_before
            });
            if let Some(entry) = entry {
                let recorded: Recorded =
                    serde_json::from_value(entry.detail.clone()).map_err(corrupt)?;
                pending.push(PendingOutcome {
                    operation: operation.clone(),
                    outcome: recorded.outcome,
                    decision: recorded.decision,
                });
            }
        }
        Ok(pending)
    }

    async fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        let now = ms(now);
        let mut data = self.lock();
        let current = data.current(scope)?;
        check_retryable(&current)?;
        let mut retried = current.clone();
        retried.state = OperationState::Accepted;
        retried.attempt_floor = retried.attempt_count;
        retried.next_retry_at = Some(now);
        retried.completed_at = None;
        retried.outcome_data = None;
        retried.error_code = None;
        retried.error_message = None;
        retried.updated_at = now;
        let detail = retried_detail(&current, by);
        let owner = retried.lease.as_ref().map(|lease| lease.owner.clone());
        data.append(
            &retried,
            WalKind::OperatorRetried,
            retried.attempt_count,
            owner,
            detail,
            now,
        );
        data.operations.insert(retried.id, retried.clone());
        Ok(retried)
    }

    async fn cancel(
        &self,
        scope: &Scope,
        by: Option<&str>,
        at_once: bool,
        follow_ups: FollowUps,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        let now = ms(now);
        let mut data = self.lock();
        let current = data.current(scope)?;
        let Some((state, kind)) = cancel_step(&current, at_once)? else {
            return Ok(current);
        };
        let mut cancelled = current.clone();
        cancelled.state = state;
        cancelled.cancel_requested_at = Some(now);
        cancelled.updated_at = now;
        if state == OperationState::Cancelled {
            cancelled.next_retry_at = None;
            cancelled.completed_at = Some(now);
        } else if state == OperationState::Accepted {
            // Due at once: the next attempt turns into the cancel.
            cancelled.next_retry_at = Some(now);
        }
        let owner = cancelled.lease.as_ref().map(|lease| lease.owner.clone());
        data.append(
            &cancelled,
            kind,
            cancelled.attempt_count,
            owner,
            cancelled_detail(&current, by),
            now,
        );
        data.operations.insert(cancelled.id, cancelled.clone());
        if state == OperationState::Cancelled {
            data.follow_ups(&follow_ups)?;
        }
        Ok(cancelled)
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let completed_before = ms(completed_before);
        let mut data = self.lock();
        let mut ended: Vec<(DateTime<Utc>, OperationId)> = data
            .operations
            .values()
            .filter(|o| &o.scope.domain == domain)
            .filter_map(|o| o.completed_at.map(|at| (at, o.id)))
            .filter(|(at, _)| *at < completed_before)
            .collect();
        ended.sort();
        ended.truncate(limit as usize);
        for (_, id) in &ended {
            if let Some(operation) = data.operations.remove(id) {
                data.scopes.remove(&operation.scope.to_string());
            }
            data.wal.retain(|_, entry| entry.operation_id != *id);
        }
        Ok(ended.len() as u64)
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        Ok(self.lock().by_scope(scope).cloned())
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX) as usize;
        let data = self.lock();
        let mut items: Vec<Operation> = data
            .operations
            .values()
            .rev()
            .filter(|o| filter.matches(o))
            .filter(|o| filter.before.is_none_or(|before| o.id < before))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|operation| operation.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        let data = self.lock();
        let operation = data.by_scope(scope).ok_or_else(|| StoreError::NotFound {
            scope: scope.clone(),
        })?;
        Ok(data
            .wal
            .values()
            .filter(|entry| entry.operation_id == operation.id)
            .cloned()
            .collect())
    }
}

impl KeyStore for MemoryStore {
    async fn create_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut data = self.lock();
        if data.keys.contains_key(&key.id) {
            return Err(StoreError::Database(
                format!("an API key with id {} exists", key.id).into(),
            ));
        }
        let mut key = key.clone();
        key.created_at = ms(key.created_at);
        data.keys.insert(key.id.clone(), key);
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys: Vec<ApiKey> = self.lock().keys.values().cloned().collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut data = self.lock();
        match data.keys.get_mut(id) {
            Some(key) if key.revoked_at.is_none() => {
                key.revoked_at = Some(ms(at));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        let mut data = self.lock();
        for (id, at) in used {
            let at = ms(*at);
            if let Some(key) = data.keys.get_mut(id)
                && key.last_used_at.is_none_or(|last| last < at)
            {
                key.last_used_at = Some(at);
            }
        }
        Ok(())
    }
}
