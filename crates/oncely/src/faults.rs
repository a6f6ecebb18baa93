//! A [`Store`] wrapper that injects faults, for tests that prove the engine survives them
//! (`failpoints` feature).
//!
//! A [`FaultPlan`] queues faults per kind of store call: a call that fails before it
//! reaches the database (nothing is written), or one whose commit succeeds and is then
//! reported as failed, as when a connection drops after `COMMIT` was sent ("commit
//! unknown"). The engine must treat both the same way and stay effectively once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::key::{DomainName, NodeId, Scope};
use crate::operation::{LeaseOwner, Operation, WalEntry};
use crate::store::{
    AcceptLease, Accepted, Backlog, ClaimRequest, DomainOverview, Fenced, FollowUps, ListFilter,
    NewOperation, OverviewOf, Page, PendingOutcome, RecordOutcome, Store, StoreError, Transition,
    settle_in_two_steps,
};

/// The store calls a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCall {
    /// [`Store::accept`].
    Accept,
    /// [`Store::claim`].
    Claim,
    /// [`Store::record_outcomes`].
    Record,
    /// [`Store::settle`], when it runs as one call.
    Settle,
    /// [`Store::finalize`].
    Finalize,
    /// [`Store::reap`].
    Reap,
}

/// What an injected fault does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The call fails before it reaches the store: nothing is written.
    FailBefore,
    /// The call runs and commits, then reports a database error: the caller cannot tell
    /// whether it was written.
    CommitUnknown,
}

#[derive(Debug, Default)]
struct Plan {
    queued: HashMap<StoreCall, VecDeque<Fault>>,
    injected: HashMap<(StoreCall, Fault), u32>,
    settle_in_two_steps: bool,
}

/// The faults to inject, shared between a test and its [`FaultyStore`]s.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    plan: Arc<Mutex<Plan>>,
}

impl FaultPlan {
    /// Makes the next `times` calls of `call` suffer `fault`.
    pub fn inject(&self, call: StoreCall, fault: Fault, times: u32) {
        let mut plan = self.lock();
        let queue = plan.queued.entry(call).or_default();
        queue.extend(std::iter::repeat_n(fault, times as usize));
    }

    /// Runs `settle` as `record_outcomes` then `finalize`, in two transactions, as a store
    /// without a one-transaction settle does.
    pub fn settle_in_two_steps(&self) {
        self.lock().settle_in_two_steps = true;
    }

    /// How many calls of `call` have suffered `fault` so far.
    pub fn injected(&self, call: StoreCall, fault: Fault) -> u32 {
        self.lock()
            .injected
            .get(&(call, fault))
            .copied()
            .unwrap_or(0)
    }

    /// Faults queued and not yet injected.
    pub fn pending(&self) -> usize {
        self.lock().queued.values().map(VecDeque::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next(&self, call: StoreCall) -> Option<Fault> {
        let mut plan = self.lock();
        let fault = plan.queued.get_mut(&call)?.pop_front()?;
        *plan.injected.entry((call, fault)).or_default() += 1;
        Some(fault)
    }

    fn in_two_steps(&self) -> bool {
        self.lock().settle_in_two_steps
    }

    async fn run<T, F>(&self, call: StoreCall, inner: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        match self.next(call) {
            None => inner.await,
            Some(Fault::FailBefore) => Err(StoreError::Database(
                format!("injected: {call:?} failed before reaching the store").into(),
            )),
            Some(Fault::CommitUnknown) => {
                inner.await?;
                Err(StoreError::Database(
                    format!("injected: {call:?} committed, then the connection dropped").into(),
                ))
            }
        }
    }
}

/// `inner` with the faults of a [`FaultPlan`] injected into its calls.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    plan: FaultPlan,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, plan: FaultPlan) -> Self {
        Self { inner, plan }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for FaultyStore<S> {
    async fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        let call = self.inner.accept(batch, lease);
        self.plan.run(StoreCall::Accept, call).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        self.plan
            .run(StoreCall::Claim, self.inner.claim(request))
            .await
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let call = self.inner.record_outcomes(batch);
        self.plan.run(StoreCall::Record, call).await
    }

    async fn settle(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        if self.plan.in_two_steps() {
            return settle_in_two_steps(self, batch).await;
        }
        self.plan
            .run(StoreCall::Settle, self.inner.settle(batch))
            .await
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        let call = self.inner.finalize(batch);
        self.plan.run(StoreCall::Finalize, call).await
    }

    async fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        self.inner.expired_leases(domain, now, limit).await
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        self.plan.run(StoreCall::Reap, self.inner.reap(batch)).await
    }

    async fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> Result<Backlog, StoreError> {
        self.inner.backlog(domain, now).await
    }

    async fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainOverview>, StoreError> {
        self.inner.overview(of, since, now).await
    }

    async fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.release_node(domain, node, current, now).await
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        self.inner
            .pending_outcomes(domain, recorded_before, limit)
            .await
    }

    async fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        self.inner.retry(scope, by, now).await
    }

    async fn cancel(
        &self,
        scope: &Scope,
        by: Option<&str>,
        at_once: bool,
        follow_ups: FollowUps,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        self.inner.cancel(scope, by, at_once, follow_ups, now).await
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.purge(domain, completed_before, limit).await
    }

    fn work_signal(&self, domain: &DomainName) -> impl Future<Output = ()> + Send {
        self.inner.work_signal(domain)
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        self.inner.get(scope).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        self.inner.list(filter).await
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        self.inner.history(scope).await
    }
}
