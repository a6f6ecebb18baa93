//! [`SqlStore`]: oncely's [`Store`] on any of the SQL backends, written once.
//!
//! Each method is one transaction; each lifecycle write is one statement on PostgreSQL
//! (a data-modifying `WITH`), and two or three on SQLite and MySQL, which lack it. The
//! statements themselves, with the fence and the WAL-first guard, are in `sql`; what
//! differs between the databases is in each backend's `Dialect`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::store::{
    accepted_detail, cancel_step, cancelled_detail, check_retryable, replay_or_conflict,
    retried_detail,
};
use oncely::{
    AcceptLease, Accepted, Backlog, ClaimRequest, CrashPoint, DomainName, DomainOverview,
    Failpoints, Fenced, FollowUps, LeaseOwner, ListFilter, NewOperation, NodeId, Operation,
    OperationState, OverviewOf, Page, PendingOutcome, RecordOutcome, Scope, Store, StoreError,
    Transition, WalEntry, WalKind,
};
use serde_json::Value;
use sqlx::pool::PoolOptions;
use sqlx::{Pool, Transaction};
use tokio::sync::Notify;

use crate::backend::{Backend, Columns, Exec, Param};
use crate::batch::{
    self, AcceptRow, ActionRow, CancelRow, EntryRow, IdRow, InsertedRow, LeaseRow, ScopeRow,
    WriteRow,
};
use crate::rows::{self, database, millis};
use crate::sql::{
    AcceptSql, AcceptSteps, ClaimSql, LogSteps, Rows, Statements, WriteSql, WriteSteps,
    operation_columns,
};
use crate::{LIST_LIMIT_MAX, OpenError};

/// How many times an accept looks up its batch again after another node inserted one of
/// its keys first (MySQL, which has no `ON CONFLICT DO NOTHING`). Each round turns at
/// least one key into a replay, so a batch needs at most one per key; past this bound the
/// batch fails and the engine tries it again.
const ACCEPT_ROUNDS_MAX: usize = 16;

/// oncely's store on one SQL database: [`SqliteStore`](crate::SqliteStore),
/// [`PgStore`](crate::PgStore) or [`MySqlStore`](crate::MySqlStore). Cheap to clone:
/// clones share the pools.
pub struct SqlStore<B: Backend> {
    writer: Pool<B::Db>,
    reader: Pool<B::Db>,
    statements: Arc<Statements>,
    failpoints: Failpoints,
    /// Notified when work may have been accepted for an idle engine: by another node
    /// (PostgreSQL's `LISTEN`), or by this process inserting follow-ups into another
    /// domain. Clones share it, so engines of several domains on one store wake each other.
    signal: Arc<Notify>,
    _backend: PhantomData<fn() -> B>,
}

#[cfg(test)]
impl<B: Backend> SqlStore<B> {
    /// The statements, for tests that look at their plans.
    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }
}

impl<B: Backend> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
            statements: self.statements.clone(),
            failpoints: self.failpoints.clone(),
            signal: self.signal.clone(),
            _backend: PhantomData,
        }
    }
}

impl<B: Backend> fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &B::NAME)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> SqlStore<B> {
    pub(crate) fn writer(&self) -> &Pool<B::Db> {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &Pool<B::Db> {
        &self.reader
    }

    /// A store over `writer` (every write) and `reader` (reads; may be the same pool).
    /// `signal`, when given, is notified when another node may have accepted work.
    pub(crate) fn from_pools(
        writer: Pool<B::Db>,
        reader: Pool<B::Db>,
        signal: Option<Arc<Notify>>,
    ) -> Self {
        Self {
            writer,
            reader,
            statements: Arc::new(Statements::new(&B::DIALECT)),
            failpoints: Failpoints::default(),
            signal: signal.unwrap_or_default(),
            _backend: PhantomData,
        }
    }

    /// Opens the database `url` names, creating it if it does not exist yet, and brings
    /// its schema up to date. Any number of processes may do this at once on the same
    /// database: one creates it, one migrates it, the others wait and find it done.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let store = match Self::open_without_migrating(url).await {
            Err(OpenError::Connect { source, .. }) if (B::DIALECT.missing_database)(&source) => {
                create_database::<B>(url).await?;
                Self::open_without_migrating(url).await?
            }
            opened => opened?,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database `url` names without touching its schema (it must be migrated
    /// already, or `/readyz` says it is not).
    pub async fn open_without_migrating(url: &str) -> Result<Self, OpenError> {
        B::connect(url).await
    }

    /// Applies the embedded migrations that the database does not have yet, under a lock
    /// that other processes migrating the same database wait for.
    pub async fn migrate(&self) -> Result<(), OpenError> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(connect_failed(B::NAME))?;
        let lock = B::DIALECT.migration_lock;
        if let Some(lock) = lock {
            let rows = B::fetch_all(Exec::Conn(&mut conn), lock.acquire, Vec::new())
                .await
                .map_err(connect_failed(B::NAME))?;
            let locked = rows.first().map(|row| row.int_opt("locked"));
            if !matches!(locked, Some(Ok(Some(1)))) {
                return Err(OpenError::MigrationLock);
            }
        }
        let mut delay = Duration::from_millis(20);
        let mut tries = 1;
        let migrated = loop {
            match B::migrator().run_direct(&mut *conn).await {
                // Without a lock (SQLite), a migration racing another process's fails and
                // rolls back whole; run again, it finds the other's work done.
                Err(error) if lock.is_none() && tries < MIGRATE_TRIES && racing(&error) => {
                    tracing::debug!(backend = B::NAME, %error, tries, "migration raced another process; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    tries += 1;
                }
                migrated => break migrated,
            }
        };
        if let Some(lock) = lock {
            // The lock is the session's: should this fail, closing the connection frees it.
            if let Err(error) = B::execute(Exec::Conn(&mut conn), lock.release, Vec::new()).await {
                tracing::warn!(backend = B::NAME, %error, "could not release the migration lock; closing its connection");
                drop(conn.detach());
            }
        }
        migrated?;
        Ok(())
    }

    /// Shares crash points with a test: every write fails once the switch trips;
    /// `record_outcomes` trips [`CrashPoint::AfterRecord`] just after its commit, and
    /// `finalize` and `settle` trip [`CrashPoint::DuringFinalize`] just before theirs.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    /// Closes the pools, waiting for their connections to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, B::Db>, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        self.writer.begin().await.map_err(database)
    }

    async fn commit(&self, transaction: Transaction<'static, B::Db>) -> Result<(), StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed); // dropped: rolled back
        }
        transaction.commit().await.map_err(database)
    }

    /// Runs one statement as its own transaction (one round trip, no `BEGIN`/`COMMIT`),
    /// after tripping `crash` if a test armed it: then nothing is written.
    async fn autocommit(
        &self,
        sql: &str,
        params: Vec<Param>,
        crash: Option<CrashPoint>,
    ) -> Result<Vec<B::Row>, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        if let Some(point) = crash {
            self.crash_at(point)?;
        }
        fetch::<B>(Exec::Pool(&self.writer), sql, params).await
    }

    /// Trips `point` if a test armed it; the open transaction is then rolled back.
    fn crash_at(&self, point: CrashPoint) -> Result<(), StoreError> {
        if self.failpoints.hit(point) {
            return Err(StoreError::Crashed);
        }
        Ok(())
    }
}

/// The pool settings every backend shares. No ping per checkout: a dead connection fails
/// its statement, and every write is retried; the ping was a round trip per transaction.
pub(crate) fn pool_options<DB: sqlx::Database>(connections_max: u32) -> PoolOptions<DB> {
    PoolOptions::new()
        .test_before_acquire(false)
        .max_connections(connections_max.max(1))
        .acquire_timeout(Duration::from_secs(30))
}

/// A database URL parsed into a driver's connect options.
pub(crate) fn connect_options<O>(url: &str) -> Result<O, OpenError>
where
    O: std::str::FromStr<Err = sqlx::Error>,
{
    url.parse().map_err(|source| OpenError::Url {
        url: url.to_owned(),
        source,
    })
}

/// How many times a migration that raced another process's is run.
const MIGRATE_TRIES: u32 = 8;

/// Whether a migration failed in a way that another process migrating at the same moment
/// explains (a table or version row that appeared meanwhile, a busy database), rather than
/// a migration that cannot apply.
fn racing(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    matches!(
        error,
        MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)
    )
}

/// Creates the database `url` names; another process creating it at the same moment is
/// not an error.
async fn create_database<B: Backend>(url: &str) -> Result<(), OpenError> {
    use sqlx::migrate::MigrateDatabase;
    tracing::info!(
        backend = B::NAME,
        "the database does not exist; creating it"
    );
    match B::Db::create_database(url).await {
        Ok(()) => Ok(()),
        Err(error) => match B::Db::database_exists(url).await {
            Ok(true) => Ok(()),
            _ => Err(connect_failed(url)(error)),
        },
    }
}

/// The error of a failed connection to `url`.
pub(crate) fn connect_failed(url: &str) -> impl Fn(sqlx::Error) -> OpenError + '_ {
    move |source| OpenError::Connect {
        url: url.to_owned(),
        source,
    }
}

async fn fetch<B: Backend>(
    on: Exec<'_, B>,
    sql: &str,
    params: Vec<Param>,
) -> Result<Vec<B::Row>, StoreError> {
    B::fetch_all(on, sql, params).await.map_err(database)
}

async fn execute<B: Backend>(
    on: Exec<'_, B>,
    sql: &str,
    params: Vec<Param>,
) -> Result<u64, StoreError> {
    B::execute(on, sql, params).await.map_err(database)
}

fn operations<R: Columns>(rows: &[R]) -> Result<Vec<Operation>, StoreError> {
    rows.iter().map(rows::operation).collect()
}

/// `(id, attempt)` pairs, as statements return them and the log statements take them.
fn ids_and_attempts<R: Columns>(rows: &[R]) -> Result<Vec<(i64, i64)>, StoreError> {
    rows.iter()
        .map(|row| Ok((row.int("id")?, row.int("attempt")?)))
        .collect()
}

fn id_batch(ids: &[(i64, i64)]) -> Result<Param, StoreError> {
    let rows: Vec<IdRow> = ids
        .iter()
        .map(|&(id, attempt)| IdRow { id, attempt })
        .collect();
    batch::param(&rows)
}

// ---------------------------------------------------------------------------------------
// Accept: insert what is new (I1), lease some of it, log it.
// ---------------------------------------------------------------------------------------

/// An accept batch, ready for the database: its distinct scopes in scope order (so two
/// nodes' batches take their locks in one order and cannot deadlock), and which of them
/// are leased.
struct AcceptPlan<'a> {
    batch: &'a [NewOperation],
    lease: Option<&'a AcceptLease>,
    /// The first item of each scope, in scope order.
    unique: Vec<usize>,
    /// The same, as a set.
    first: HashSet<usize>,
    /// Items leased if they turn out to be new: the first `lease.limit` scopes, in batch
    /// order.
    leased: HashSet<usize>,
}

impl<'a> AcceptPlan<'a> {
    fn new(batch: &'a [NewOperation], lease: Option<&'a AcceptLease>) -> Self {
        let mut first: HashMap<String, usize> = HashMap::new();
        for (index, new) in batch.iter().enumerate() {
            first.entry(new.scope.to_string()).or_insert(index);
        }
        let mut in_batch_order: Vec<usize> = first.values().copied().collect();
        in_batch_order.sort_unstable();
        let limit = lease.map_or(0, |lease| lease.limit as usize);
        let leased = in_batch_order.iter().copied().take(limit).collect();
        let mut unique: Vec<usize> = first.into_values().collect();
        unique.sort_by_key(|&index| batch[index].scope.to_string());
        Self {
            batch,
            lease,
            first: unique.iter().copied().collect(),
            unique,
            leased,
        }
    }

    /// The batch rows of `items`.
    fn rows(&self, items: &[usize]) -> Result<Param, StoreError> {
        let rows: Vec<AcceptRow<'_>> = items
            .iter()
            .enumerate()
            .map(|(ord, &index)| {
                let new = &self.batch[index];
                let at = millis(new.now);
                let lease = self
                    .lease
                    .filter(|_| self.leased.contains(&index))
                    .map(|lease| (lease.owner.as_str(), millis(lease.lease_until())));
                AcceptRow {
                    ord,
                    tenant: new.scope.tenant.as_str(),
                    domain: new.scope.domain.as_str(),
                    idem_key: new.scope.key.as_str(),
                    event_type: &new.event_type,
                    state: if lease.is_some() {
                        OperationState::Processing.as_str()
                    } else {
                        OperationState::Accepted.as_str()
                    },
                    payload: new.payload.to_string(),
                    fingerprint: new.fingerprint.as_str(),
                    traceparent: new.traceparent.map(|parent| parent.to_string()),
                    attempt: i64::from(lease.is_some()),
                    owner: lease.map(|(owner, _)| owner),
                    lease_until: lease.map(|(_, until)| until),
                    last_attempt_at: lease.map(|_| at),
                    at,
                    accepted: accepted_detail(&new.event_type).to_string(),
                    executing: lease.map(|(_, until)| executing_detail(until).to_string()),
                }
            })
            .collect();
        batch::param(&rows)
    }

    fn scopes(&self, items: &[usize]) -> Result<Param, StoreError> {
        let rows: Vec<ScopeRow<'_>> = items
            .iter()
            .map(|&index| {
                let scope = &self.batch[index].scope;
                ScopeRow {
                    tenant: scope.tenant.as_str(),
                    domain: scope.domain.as_str(),
                    idem_key: scope.key.as_str(),
                }
            })
            .collect();
        batch::param(&rows)
    }

    fn key(&self, index: usize) -> String {
        self.batch[index].scope.to_string()
    }

    /// Each batch item's result: the first item of a scope that was inserted is new;
    /// every other item replays or conflicts with what its scope holds (I1).
    fn results(
        &self,
        mut inserted: HashMap<String, Operation>,
        mut existing: HashMap<String, Operation>,
    ) -> Result<Vec<Accepted>, StoreError> {
        self.batch
            .iter()
            .enumerate()
            .map(|(index, new)| {
                let key = new.scope.to_string();
                if self.first.contains(&index)
                    && let Some(operation) = inserted.remove(&key)
                {
                    existing.insert(key, operation.clone());
                    return Ok(Accepted::New(operation));
                }
                let current = existing.get(&key).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("{} conflicted but cannot be read", new.scope))
                })?;
                Ok(replay_or_conflict(current, &new.fingerprint))
            })
            .collect()
    }
}

/// The detail of an `EXECUTING` entry, from the lease's end in milliseconds.
fn executing_detail(lease_until: i64) -> Value {
    let until = DateTime::from_timestamp_millis(lease_until).unwrap_or(DateTime::<Utc>::MAX_UTC);
    oncely::store::executing_detail(until)
}

fn by_scope(operations: Vec<Operation>) -> HashMap<String, Operation> {
    operations
        .into_iter()
        .map(|operation| (operation.scope.to_string(), operation))
        .collect()
}

impl<B: Backend> SqlStore<B> {
    /// Inserts the plan's new scopes with their log entries. Returns the inserted
    /// operations, and the existing ones when the dialect had to read them first.
    async fn insert_new(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        steps: &AcceptSteps,
        plan: &AcceptPlan<'_>,
    ) -> Result<(Vec<Operation>, HashMap<String, Operation>), StoreError> {
        let (insert, log) = match steps {
            AcceptSteps::Returning { insert, log } => {
                let all = plan.rows(&plan.unique)?;
                let rows = fetch::<B>(Exec::Tx(tx), insert, vec![all]).await?;
                let inserted = operations(&rows)?;
                self.log_accepts(tx, &inserted, log).await?;
                return Ok((inserted, HashMap::new()));
            }
            AcceptSteps::Plain { insert, log } => (insert, log),
        };
        // No `ON CONFLICT DO NOTHING`: read what exists, insert the rest; a duplicate key
        // means another node inserted one of them meanwhile, so look again.
        for _round in 0..ACCEPT_ROUNDS_MAX {
            let rows = fetch::<B>(
                Exec::Tx(tx),
                &self.statements.by_scope,
                vec![plan.scopes(&plan.unique)?],
            )
            .await?;
            let existing = by_scope(operations(&rows)?);
            let new: Vec<usize> = plan
                .unique
                .iter()
                .copied()
                .filter(|&index| !existing.contains_key(&plan.key(index)))
                .collect();
            if new.is_empty() {
                return Ok((Vec::new(), existing));
            }
            match execute::<B>(Exec::Tx(tx), insert, vec![plan.rows(&new)?]).await {
                Err(StoreError::Database(error)) if is_unique_violation(error.as_ref()) => {
                    continue;
                }
                Err(error) => return Err(error),
                Ok(_) => {}
            }
            let rows = fetch::<B>(
                Exec::Tx(tx),
                &self.statements.by_scope,
                vec![plan.scopes(&new)?],
            )
            .await?;
            let inserted = operations(&rows)?;
            self.log_accepts(tx, &inserted, log).await?;
            return Ok((inserted, existing));
        }
        Err(StoreError::Database(
            "an accept kept meeting keys inserted by other nodes; try again".into(),
        ))
    }

    /// The operations of the plan's scopes that are neither `inserted` nor `known`: taken
    /// before this accept, so replays or conflicts (I1).
    async fn taken(
        &self,
        on: Exec<'_, B>,
        plan: &AcceptPlan<'_>,
        inserted: &HashMap<String, Operation>,
        known: &HashMap<String, Operation>,
    ) -> Result<HashMap<String, Operation>, StoreError> {
        let taken: Vec<usize> = plan
            .unique
            .iter()
            .copied()
            .filter(|&index| {
                let key = plan.key(index);
                !inserted.contains_key(&key) && !known.contains_key(&key)
            })
            .collect();
        if taken.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = fetch::<B>(on, &self.statements.by_scope, vec![plan.scopes(&taken)?]).await?;
        Ok(by_scope(operations(&rows)?))
    }

    async fn log_accepts(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        inserted: &[Operation],
        log: &LogSteps,
    ) -> Result<(), StoreError> {
        if inserted.is_empty() {
            return Ok(());
        }
        let rows: Vec<InsertedRow<'_>> = inserted
            .iter()
            .map(|operation| {
                let leased = operation.lease.as_ref().map(|lease| {
                    let until = millis(lease.until);
                    (lease.owner.as_str(), executing_detail(until).to_string())
                });
                InsertedRow {
                    id: operation.id.0,
                    owner: leased.as_ref().map(|(owner, _)| *owner),
                    attempt: i64::from(operation.attempt_count),
                    at: millis(operation.created_at),
                    accepted: accepted_detail(&operation.event_type).to_string(),
                    executing: leased.map(|(_, detail)| detail),
                }
            })
            .collect();
        let leased = rows.iter().any(|row| row.owner.is_some());
        let batch = batch::param(&rows)?;
        log_in_steps::<B>(tx, log, &batch, |entry| entry != Rows::Leased || leased).await
    }
}

/// Runs the log statements of `steps` whose rows `present` says the batch has, in order.
async fn log_in_steps<B: Backend>(
    tx: &mut Transaction<'static, B::Db>,
    steps: &LogSteps,
    batch: &Param,
    present: impl Fn(Rows) -> bool,
) -> Result<(), StoreError> {
    for (rows, sql) in steps {
        if present(*rows) {
            execute::<B>(Exec::Tx(tx), sql, vec![batch.clone()]).await?;
        }
    }
    Ok(())
}

fn is_unique_violation(error: &(dyn std::error::Error + 'static)) -> bool {
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(error)) => error.is_unique_violation(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Fenced writes: the fence (I4), the guard of each step (I3), the log (I6).
// ---------------------------------------------------------------------------------------

/// Each follow-up with the attempt (operation id, attempt) whose end submits it.
fn follow_ups<'a>(
    ends: impl Iterator<Item = (&'a oncely::Fence, &'a oncely::FollowUps)>,
) -> Vec<((i64, i64), NewOperation)> {
    ends.flat_map(|(fence, follow_ups)| {
        let attempt = (fence.id.0, i64::from(fence.attempt));
        follow_ups.iter().map(move |new| (attempt, new.clone()))
    })
    .collect()
}

/// Per attempt (operation id, attempt) of `rows`, whether it is among `applied`. By
/// attempt, not by operation: one batch can hold a zombie's write and the current
/// attempt's for the same operation, and only the latter applies.
fn fenced(applied: Vec<(i64, i64)>, rows: impl Iterator<Item = (i64, i64)>) -> Vec<Fenced> {
    let applied: HashSet<(i64, i64)> = applied.into_iter().collect();
    rows.map(|attempt| {
        if applied.contains(&attempt) {
            Fenced::Applied
        } else {
            Fenced::Rejected
        }
    })
    .collect()
}

impl<B: Backend> SqlStore<B> {
    /// Runs one fenced write in its own transaction and returns, per attempt of `batch`
    /// (its fences, in the caller's order; `rows` are in id order), whether it was
    /// applied; inserts the follow-ups of the rows that were, in the same transaction.
    /// `crash` is tripped just before the commit.
    async fn fenced_write<'f>(
        &self,
        sql: &WriteSql,
        batch: impl Iterator<Item = &'f oncely::Fence>,
        mut rows: Vec<WriteRow<'_>>,
        follow_ups: Vec<((i64, i64), NewOperation)>,
        crash: Option<CrashPoint>,
    ) -> Result<Vec<Fenced>, StoreError> {
        let ids: Vec<(i64, i64)> = batch
            .map(|fence| (fence.id.0, i64::from(fence.attempt)))
            .collect();
        if let (WriteSql::Fused(write), true) = (sql, follow_ups.is_empty()) {
            // One statement: a transaction of its own.
            let params = vec![batch::param(&rows)?];
            let applied = ids_and_attempts(&self.autocommit(write, params, crash).await?)?;
            return Ok(fenced(applied, ids.into_iter()));
        }
        let mut tx = self.begin().await?;
        let applied = match sql {
            WriteSql::Fused(write) => {
                let params = vec![batch::param(&rows)?];
                ids_and_attempts(&fetch::<B>(Exec::Tx(&mut tx), write, params).await?)?
            }
            WriteSql::Steps(steps) => self.write_in_steps(&mut tx, steps, &mut rows).await?,
        };
        let changed: HashSet<(i64, i64)> = applied.iter().copied().collect();
        let submitted: Vec<NewOperation> = follow_ups
            .into_iter()
            .filter(|(parent, _)| changed.contains(parent))
            .map(|(_, new)| new)
            .collect();
        if !submitted.is_empty() {
            self.submit_follow_ups(&mut tx, &submitted).await?;
        }
        if let Some(point) = crash {
            self.crash_at(point)?;
        }
        self.commit(tx).await?;
        if !submitted.is_empty() {
            // The follow-ups' engines may be idle in this process: start them now rather
            // than at their next poll.
            self.signal.notify_waiters();
        }
        Ok(fenced(applied, ids.into_iter()))
    }

    /// A fenced write as several statements, in `tx`.
    async fn write_in_steps(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        steps: &WriteSteps,
        rows: &mut [WriteRow<'_>],
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let batch = batch::param(rows)?;
        let (applied, log) = match steps {
            WriteSteps::Returning { update, log } => {
                let changed = fetch::<B>(Exec::Tx(tx), update, vec![batch]).await?;
                (ids_and_attempts(&changed)?, log)
            }
            WriteSteps::Locking {
                select,
                update,
                log,
            } => {
                let locked = fetch::<B>(Exec::Tx(tx), select, vec![batch.clone()]).await?;
                let applied = ids_and_attempts(&locked)?;
                if !applied.is_empty() {
                    let changed = execute::<B>(Exec::Tx(tx), update, vec![batch]).await?;
                    debug_assert_eq!(changed as usize, applied.len(), "locked rows changed");
                }
                (applied, log)
            }
        };
        let changed: HashSet<(i64, i64)> = applied.iter().copied().collect();
        for row in rows.iter_mut() {
            row.applied = Some(i64::from(changed.contains(&(row.id, row.attempt))));
        }
        let rejected = changed.len() < rows.len();
        let batch = batch::param(rows)?;
        log_in_steps::<B>(tx, log, &batch, |entry| match entry {
            Rows::Applied => !changed.is_empty(),
            Rows::Rejected => rejected,
            Rows::All | Rows::Leased => true,
        })
        .await?;
        Ok(applied)
    }

    /// Accepts the follow-ups of applied ends, in `tx`: the outbox. A key that is taken
    /// already (this end was applied before) is left as it is.
    async fn submit_follow_ups(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        submitted: &[NewOperation],
    ) -> Result<(), StoreError> {
        let plan = AcceptPlan::new(submitted, None);
        let (inserted, _) = self.accept_in(tx, &plan).await?;
        if inserted.len() < plan.unique.len() {
            tracing::debug!(
                submitted = plan.unique.len(),
                inserted = inserted.len(),
                "follow-ups whose keys were taken already were left as they are"
            );
        }
        Ok(())
    }

    /// Inserts the plan's new scopes with their log entries, in `tx`.
    async fn accept_in(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        plan: &AcceptPlan<'_>,
    ) -> Result<(Vec<Operation>, HashMap<String, Operation>), StoreError> {
        match &self.statements.accept {
            AcceptSql::Fused(sql) => {
                let rows = fetch::<B>(Exec::Tx(tx), sql, vec![plan.rows(&plan.unique)?]).await?;
                Ok((operations(&rows)?, HashMap::new()))
            }
            AcceptSql::Steps(steps) => self.insert_new(tx, steps, plan).await,
        }
    }

    /// Appends log entries given in full, in their order, in `tx`.
    async fn append(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        entries: &[Entry<'_>],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows: Vec<EntryRow<'_>> = entries
            .iter()
            .enumerate()
            .map(|(n, entry)| EntryRow {
                n,
                operation_id: entry.operation.id.0,
                kind: entry.kind.as_str(),
                attempt: i64::from(entry.operation.attempt_count),
                lease_owner: entry
                    .operation
                    .lease
                    .as_ref()
                    .map(|lease| lease.owner.as_str()),
                state_after: entry.operation.state.as_str(),
                detail: entry.detail.to_string(),
                recorded_at: millis(entry.now),
            })
            .collect();
        execute::<B>(
            Exec::Tx(tx),
            &self.statements.append,
            vec![batch::param(&rows)?],
        )
        .await?;
        Ok(())
    }

    async fn get_with(
        &self,
        on: Exec<'_, B>,
        scope: &Scope,
    ) -> Result<Option<Operation>, StoreError> {
        let rows = fetch::<B>(
            on,
            &self.statements.get,
            vec![
                Param::Text(scope.tenant.to_string()),
                Param::Text(scope.domain.to_string()),
                Param::Text(scope.key.to_string()),
            ],
        )
        .await?;
        rows.first().map(rows::operation).transpose()
    }

    /// The operation with this scope, read in `tx` for an operator's action on it.
    async fn current(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        scope: &Scope,
    ) -> Result<Operation, StoreError> {
        self.get_with(Exec::Tx(tx), scope)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                scope: scope.clone(),
            })
    }

    /// Runs an operator action's guarded update of one row (`row`, a one-row batch) in
    /// `tx` and reads the operation back; `None` when the guard matched nothing because the
    /// operation moved since it was read.
    async fn act_on(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        statement: &str,
        row: Param,
        scope: &Scope,
    ) -> Result<Option<Operation>, StoreError> {
        let changed = execute::<B>(Exec::Tx(tx), statement, vec![row]).await?;
        let read = self.get_with(Exec::Tx(tx), scope).await?;
        Ok(read.filter(|_| changed == 1))
    }

    async fn ids(
        &self,
        tx: &mut Transaction<'static, B::Db>,
        sql: &str,
        domain: &DomainName,
        at: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = fetch::<B>(
            Exec::Tx(tx),
            sql,
            vec![
                Param::Text(domain.to_string()),
                Param::Int(millis(at)),
                Param::Int(i64::from(limit)),
            ],
        )
        .await?;
        rows.iter().map(|row| Ok((row.int("id")?, 0))).collect()
    }
}

/// A log entry whose columns come from the operation as it is after the change.
struct Entry<'a> {
    operation: &'a Operation,
    kind: WalKind,
    detail: Value,
    now: DateTime<Utc>,
}

impl<B: Backend> Store for SqlStore<B> {
    async fn accept(
        &self,
        batch: Vec<NewOperation>,
        lease: Option<AcceptLease>,
    ) -> Result<Vec<Accepted>, StoreError> {
        let plan = AcceptPlan::new(&batch, lease.as_ref());
        let (inserted, existing) = match &self.statements.accept {
            AcceptSql::Fused(sql) => {
                // One statement, a transaction of its own; then a read of the scopes that
                // were taken, if any: they are committed (the insert waited for any writer
                // of them).
                let rows = self
                    .autocommit(sql, vec![plan.rows(&plan.unique)?], None)
                    .await?;
                let inserted = by_scope(operations(&rows)?);
                let existing = self
                    .taken(Exec::Pool(&self.writer), &plan, &inserted, &HashMap::new())
                    .await?;
                (inserted, existing)
            }
            AcceptSql::Steps(_) => {
                let mut tx = self.begin().await?;
                let (inserted, mut existing) = self.accept_in(&mut tx, &plan).await?;
                let inserted = by_scope(inserted);
                let taken = self
                    .taken(Exec::Tx(&mut tx), &plan, &inserted, &existing)
                    .await?;
                existing.extend(taken);
                self.commit(tx).await?;
                (inserted, existing)
            }
        };
        plan.results(inserted, existing)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        let lease_until = millis(request.lease_until());
        let lease = LeaseRow {
            id: None,
            owner: request.owner.as_str(),
            lease_until,
            at: millis(request.now),
            detail: executing_detail(lease_until).to_string(),
        };
        let due = vec![
            Param::Text(request.domain.to_string()),
            Param::Int(millis(request.now)),
            Param::Int(i64::from(request.limit)),
        ];
        let rows = match &self.statements.claim {
            ClaimSql::Fused(claim) => {
                let mut params = due;
                params.push(batch::param(&[lease])?);
                self.autocommit(claim, params, None).await?
            }
            ClaimSql::Steps {
                due: select,
                lease: update,
                log,
            } => {
                let mut tx = self.begin().await?;
                let ids = fetch::<B>(Exec::Tx(&mut tx), select, due).await?;
                if ids.is_empty() {
                    self.commit(tx).await?;
                    return Ok(Vec::new());
                }
                let claimed = ids
                    .iter()
                    .map(|row| {
                        Ok(LeaseRow {
                            id: Some(row.int("id")?),
                            ..lease.clone()
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let claimed = batch::param(&claimed)?;
                execute::<B>(Exec::Tx(&mut tx), update, vec![claimed.clone()]).await?;
                let ids: Vec<(i64, i64)> = ids
                    .iter()
                    .map(|row| Ok((row.int("id")?, 0)))
                    .collect::<Result<_, StoreError>>()?;
                let rows = fetch::<B>(
                    Exec::Tx(&mut tx),
                    &self.statements.by_ids,
                    vec![id_batch(&ids)?],
                )
                .await?;
                execute::<B>(Exec::Tx(&mut tx), log, vec![claimed]).await?;
                self.commit(tx).await?;
                rows
            }
        };
        let mut claimed = operations(&rows)?;
        claimed.sort_by_key(|operation| (operation.next_retry_at, operation.id));
        Ok(claimed)
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let rows = WriteRow::records(&batch, false)?;
        // Only a record's finalize applies a decision: its follow-ups go with that.
        let fenced = self
            .fenced_write(
                &self.statements.record,
                batch.iter().map(|r| &r.fence),
                rows,
                Vec::new(),
                None,
            )
            .await?;
        // The outcome is committed: a crash here leaves it for the Finalizer (I3).
        self.crash_at(CrashPoint::AfterRecord)?;
        Ok(fenced)
    }

    async fn settle(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let rows = WriteRow::records(&batch, true)?;
        let follow_ups = follow_ups(batch.iter().map(|r| (&r.fence, &r.follow_ups)));
        self.fenced_write(
            &self.statements.settle,
            batch.iter().map(|r| &r.fence),
            rows,
            follow_ups,
            Some(CrashPoint::DuringFinalize),
        )
        .await
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        let rows = WriteRow::transitions(&batch)?;
        let follow_ups = follow_ups(batch.iter().map(|t| (&t.fence, &t.follow_ups)));
        self.fenced_write(
            &self.statements.finalize,
            batch.iter().map(|t| &t.fence),
            rows,
            follow_ups,
            Some(CrashPoint::DuringFinalize),
        )
        .await
    }

    async fn expired_leases(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Operation>, StoreError> {
        let rows = fetch::<B>(
            Exec::Pool(&self.reader),
            &self.statements.expired,
            vec![
                Param::Text(domain.to_string()),
                Param::Int(millis(now)),
                Param::Int(i64::from(limit)),
            ],
        )
        .await?;
        operations(&rows)
    }

    async fn backlog(
        &self,
        domain: &DomainName,
        now: DateTime<Utc>,
    ) -> Result<Backlog, StoreError> {
        let at = Param::Int(millis(now));
        let rows = fetch::<B>(
            Exec::Pool(&self.reader),
            &self.statements.backlog,
            vec![at.clone(), at.clone(), at, Param::Text(domain.to_string())],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(Backlog::default());
        };
        let count = |column: &str| row.int(column).map(|n| u64::try_from(n).unwrap_or(0));
        Ok(Backlog {
            due: count("due")?,
            waiting: count("waiting")?,
            processing: count("processing")?,
            oldest_due: row.int_opt("oldest_due")?.map(rows::time).transpose()?,
        })
    }

    async fn overview(
        &self,
        of: OverviewOf<'_>,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<DomainOverview>, StoreError> {
        let (overview, rescued, scope) = match of {
            OverviewOf::All => (&self.statements.overview, &self.statements.rescued, vec![]),
            OverviewOf::Tenant(tenant, domain) => (
                &self.statements.overview_of,
                &self.statements.rescued_of,
                vec![
                    Param::Text(tenant.to_string()),
                    Param::Text(domain.to_string()),
                ],
            ),
        };
        let mut params = vec![Param::Int(millis(now)), Param::Int(millis(now))];
        params.extend(scope.iter().cloned());
        params.push(Param::Int(millis(since)));
        params.extend(scope.iter().cloned());
        let rows = fetch::<B>(Exec::Pool(&self.reader), overview, params).await?;
        let mut domains: std::collections::BTreeMap<String, DomainOverview> =
            std::collections::BTreeMap::new();
        for row in &rows {
            let name = row.text("domain")?;
            let domain = domains
                .entry(name.clone())
                .or_insert_with(|| DomainOverview::empty(name));
            let count = |column: &str| row.int(column).map(|n| u64::try_from(n).unwrap_or(0));
            *domain.states.entry(row.text("state")?).or_default() += count("n")?;
            domain.retrying += count("retrying")?;
            domain.stuck += count("stuck")?;
            domain.ended_since += count("ended")?;
            if let Some(due) = row.int_opt("oldest_due")? {
                let due = rows::time(due)?;
                domain.oldest_due = Some(domain.oldest_due.map_or(due, |d| d.min(due)));
            }
        }
        let mut params = vec![Param::Int(millis(since))];
        params.extend(scope);
        let rescued = fetch::<B>(Exec::Pool(&self.reader), rescued, params).await?;
        for row in &rescued {
            if let Some(domain) = domains.get_mut(&row.text("domain")?) {
                domain.rescued_since = u64::try_from(row.int("n")?).unwrap_or(0);
            }
        }
        Ok(domains.into_values().collect())
    }

    async fn release_node(
        &self,
        domain: &DomainName,
        node: &NodeId,
        current: &LeaseOwner,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        let prefix = format!("{node}/");
        execute::<B>(
            Exec::Pool(&self.writer),
            &self.statements.release,
            vec![
                Param::Int(millis(now)),
                Param::Text(domain.to_string()),
                Param::Int(millis(now)),
                Param::Text(prefix.clone()),
                Param::Text(prefix),
                Param::Text(current.to_string()),
            ],
        )
        .await
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        let rows = WriteRow::transitions(&batch)?;
        let follow_ups = follow_ups(batch.iter().map(|t| (&t.fence, &t.follow_ups)));
        self.fenced_write(
            &self.statements.reap,
            batch.iter().map(|t| &t.fence),
            rows,
            follow_ups,
            None,
        )
        .await
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        let rows = fetch::<B>(
            Exec::Pool(&self.reader),
            &self.statements.pending,
            vec![
                Param::Text(domain.to_string()),
                Param::Int(millis(recorded_before)),
                Param::Int(i64::from(limit)),
            ],
        )
        .await?;
        rows.iter()
            .map(|row| rows::pending_outcome(rows::operation(row)?, &row.text("recorded_detail")?))
            .collect()
    }

    async fn retry(
        &self,
        scope: &Scope,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Operation, StoreError> {
        let mut tx = self.begin().await?;
        let current = self.current(&mut tx, scope).await?;
        check_retryable(&current)?;
        let action = ActionRow {
            id: current.id.0,
            state: current.state.as_str(),
            at: millis(now),
        };
        let retried = self
            .act_on(
                &mut tx,
                &self.statements.retry,
                batch::param(&[action])?,
                scope,
            )
            .await?;
        let Some(retried) = retried else {
            // Another operator's retry got there between the read and the update.
            return Err(StoreError::NotRetryable {
                scope: scope.clone(),
                state: OperationState::Accepted,
            });
        };
        let detail = retried_detail(&current, by);
        self.append(
            &mut tx,
            &[Entry {
                operation: &retried,
                kind: WalKind::OperatorRetried,
                detail,
                now,
            }],
        )
        .await?;
        self.commit(tx).await?;
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
        let mut tx = self.begin().await?;
        let current = self.current(&mut tx, scope).await?;
        let Some((state, kind)) = cancel_step(&current, at_once)? else {
            self.commit(tx).await?;
            return Ok(current);
        };
        let at = millis(now);
        let row = CancelRow {
            id: current.id.0,
            attempt: i64::from(current.attempt_count),
            at,
            next_retry_at: match state {
                OperationState::Cancelled => None,
                // Due at once: the next attempt turns into the cancel.
                OperationState::Accepted => Some(at),
                _ => current.next_retry_at.map(millis),
            },
            completed_at: state.is_terminal().then_some(at),
            state: current.state.as_str(),
            to_state: state.as_str(),
        };
        let cancelled = self
            .act_on(
                &mut tx,
                &self.statements.cancel,
                batch::param(&[row])?,
                scope,
            )
            .await?;
        let Some(cancelled) = cancelled else {
            // A claim, a finalize or another cancel got there between the read and the write.
            return Err(StoreError::Busy {
                scope: scope.clone(),
            });
        };
        self.append(
            &mut tx,
            &[Entry {
                operation: &cancelled,
                kind,
                detail: cancelled_detail(&current, by),
                now,
            }],
        )
        .await?;
        // The outbox: an end submits its follow-ups in its own transaction.
        let submits = state == OperationState::Cancelled && !follow_ups.is_empty();
        if submits {
            self.submit_follow_ups(&mut tx, &follow_ups).await?;
        }
        self.commit(tx).await?;
        if submits {
            self.signal.notify_waiters();
        }
        Ok(cancelled)
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let ended = self
            .ids(
                &mut tx,
                &self.statements.ended,
                domain,
                completed_before,
                limit,
            )
            .await?;
        if ended.is_empty() {
            self.commit(tx).await?;
            return Ok(0);
        }
        // The log goes with its operation.
        execute::<B>(
            Exec::Tx(&mut tx),
            &self.statements.delete_log,
            vec![id_batch(&ended)?],
        )
        .await?;
        let purged = execute::<B>(
            Exec::Tx(&mut tx),
            &self.statements.delete,
            vec![id_batch(&ended)?],
        )
        .await?;
        self.commit(tx).await?;
        Ok(purged)
    }

    fn work_signal(&self, _domain: &DomainName) -> impl std::future::Future<Output = ()> + Send {
        let signal = self.signal.clone();
        async move { signal.notified().await }
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        self.get_with(Exec::Pool(&self.reader), scope).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX);
        let mut sql = format!(
            "SELECT {} FROM oncely_operations o WHERE 1 = 1",
            operation_columns(&B::DIALECT, "o.")
        );
        let mut params = Vec::new();
        let mut condition = |clause: &str, param: Param| {
            sql.push_str(clause);
            params.push(param);
        };
        if let Some(tenant) = &filter.tenant {
            condition(" AND o.tenant = ?", Param::Text(tenant.to_string()));
        }
        if let Some(domain) = &filter.domain {
            condition(" AND o.domain = ?", Param::Text(domain.to_string()));
        }
        if let Some(state) = filter.state {
            condition(" AND o.state = ?", Param::Text(state.as_str().to_owned()));
        }
        if let Some(attempts) = filter.attempts_min {
            condition(" AND o.attempt_count >= ?", Param::Int(i64::from(attempts)));
        }
        if let Some(code) = &filter.error_code {
            condition(" AND o.error_code = ?", Param::Text(code.clone()));
        }
        if let Some(from) = filter.created_from {
            condition(" AND o.created_at >= ?", Param::Int(millis(from)));
        }
        if let Some(until) = filter.created_until {
            condition(" AND o.created_at < ?", Param::Int(millis(until)));
        }
        if let Some(before) = filter.before {
            condition(" AND o.id < ?", Param::Int(before.0));
        }
        condition(
            " ORDER BY o.id DESC LIMIT ?",
            Param::Int(i64::from(limit) + 1),
        );
        let sql = B::DIALECT.placeholders(&sql);
        let rows = fetch::<B>(Exec::Pool(&self.reader), &sql, params).await?;
        rows::page(operations(&rows)?, limit)
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        let operation = self.get(scope).await?.ok_or_else(|| StoreError::NotFound {
            scope: scope.clone(),
        })?;
        let rows = fetch::<B>(
            Exec::Pool(&self.reader),
            &self.statements.history,
            vec![Param::Int(operation.id.0)],
        )
        .await?;
        rows.iter().map(rows::wal_entry).collect()
    }
}
