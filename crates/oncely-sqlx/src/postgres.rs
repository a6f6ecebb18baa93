//! A [`Store`] on PostgreSQL, for several nodes sharing the work.
//!
//! Claims take rows with `FOR UPDATE SKIP LOCKED`, so nodes never wait on each other's
//! claims and never claim the same operation twice. Every other write about an attempt is
//! one conditional `UPDATE` of one row (the fence, I4); PostgreSQL re-checks its `WHERE`
//! after waiting for a concurrent writer of that row, so a fence is exact under the default
//! `READ COMMITTED` isolation. Batches touch their rows in a fixed order (by scope, by id),
//! so two nodes' batches cannot deadlock on each other.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::{
    Accepted, ClaimRequest, CrashPoint, DomainName, Failpoints, Fence, Fenced, ListFilter,
    NewOperation, Operation, OperationState, Page, PendingOutcome, RecordOutcome, Scope, Store,
    StoreError, Transition, WalEntry, WalKind,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::rows::{self, Guard, OperationColumns, WalColumns, database, millis};
use crate::{LIST_LIMIT_MAX, OpenError, decision_columns};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel accepts notify on (payload: the domain).
const WORK_CHANNEL: &str = "oncely_work";

/// The PostgreSQL store. Cheap to clone: clones share the pool and the listener.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    failpoints: Failpoints,
    signal: Arc<WorkSignal>,
}

/// Wakes idle engines when any node accepts work: a `LISTEN` connection of its own,
/// re-established when it drops. Stopped with the last clone of the store.
#[derive(Debug)]
struct WorkSignal {
    notify: Notify,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for WorkSignal {
    fn drop(&mut self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(task) = listener.take()
        {
            task.abort();
        }
    }
}

async fn listen(pool: PgPool, signal: std::sync::Weak<WorkSignal>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection failed; idle nodes fall back to polling");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(WORK_CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; idle nodes fall back to polling");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while listener.recv().await.is_ok() {
            let Some(signal) = signal.upgrade() else {
                return;
            };
            signal.notify.notify_waiters();
        }
    }
}

/// The operation columns, with JSON as text and counters as BIGINT, prefixed by `table.`.
fn columns(table: &str) -> String {
    format!(
        "{t}id, {t}tenant, {t}domain, {t}idem_key, {t}event_type, {t}state, {t}payload::text AS payload, \
         {t}fingerprint, {t}attempt_count::bigint AS attempt_count, {t}attempt_floor::bigint AS attempt_floor, \
         {t}recorded_attempt::bigint AS recorded_attempt, {t}last_attempt_at, {t}next_retry_at, \
         {t}lease_owner, {t}lease_until, {t}outcome_data::text AS outcome_data, {t}error_code, \
         {t}error_message, {t}created_at, {t}updated_at, {t}completed_at",
        t = table
    )
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db`) with a pool of up to 16 connections
    /// and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| OpenError::Url {
            url: url.to_owned(),
            source,
        })?;
        let store = Self::connect_with(options, 16).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` without touching the schema (it must be migrated already).
    pub async fn open_without_migrating(url: &str) -> Result<Self, OpenError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| OpenError::Url {
            url: url.to_owned(),
            source,
        })?;
        Self::connect_with(options, 16).await
    }

    /// Connects with explicit options and pool size, without touching the schema.
    pub async fn connect_with(
        options: PgConnectOptions,
        connections_max: u32,
    ) -> Result<Self, OpenError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections_max.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|source| OpenError::Connect {
                url: "postgres".to_owned(),
                source,
            })?;
        let signal = Arc::new(WorkSignal {
            notify: Notify::new(),
            listener: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(listen(pool.clone(), Arc::downgrade(&signal)));
        if let Ok(mut listener) = signal.listener.lock() {
            *listener = Some(task);
        }
        Ok(Self {
            pool,
            failpoints: Failpoints::default(),
            signal,
        })
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<(), OpenError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Shares crash points with a test (see [`crate::SqliteStore::with_failpoints`]).
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        self.pool.begin().await.map_err(database)
    }

    async fn commit(&self, transaction: Transaction<'static, Postgres>) -> Result<(), StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        transaction.commit().await.map_err(database)
    }
}

fn operation(row: &PgRow) -> Result<Operation, StoreError> {
    rows::operation(OperationColumns {
        id: row.try_get("id").map_err(database)?,
        tenant: row.try_get("tenant").map_err(database)?,
        domain: row.try_get("domain").map_err(database)?,
        idem_key: row.try_get("idem_key").map_err(database)?,
        event_type: row.try_get("event_type").map_err(database)?,
        state: row.try_get("state").map_err(database)?,
        payload: row.try_get("payload").map_err(database)?,
        fingerprint: row.try_get("fingerprint").map_err(database)?,
        attempt_count: row.try_get("attempt_count").map_err(database)?,
        attempt_floor: row.try_get("attempt_floor").map_err(database)?,
        recorded_attempt: row.try_get("recorded_attempt").map_err(database)?,
        last_attempt_at: row.try_get("last_attempt_at").map_err(database)?,
        next_retry_at: row.try_get("next_retry_at").map_err(database)?,
        lease_owner: row.try_get("lease_owner").map_err(database)?,
        lease_until: row.try_get("lease_until").map_err(database)?,
        outcome_data: row.try_get("outcome_data").map_err(database)?,
        error_code: row.try_get("error_code").map_err(database)?,
        error_message: row.try_get("error_message").map_err(database)?,
        created_at: row.try_get("created_at").map_err(database)?,
        updated_at: row.try_get("updated_at").map_err(database)?,
        completed_at: row.try_get("completed_at").map_err(database)?,
    })
}

fn wal_entry(row: &PgRow) -> Result<WalEntry, StoreError> {
    rows::wal_entry(WalColumns {
        seq: row.try_get("seq").map_err(database)?,
        operation_id: row.try_get("operation_id").map_err(database)?,
        kind: row.try_get("kind").map_err(database)?,
        attempt: row.try_get("attempt").map_err(database)?,
        lease_owner: row.try_get("lease_owner").map_err(database)?,
        state_after: row.try_get("state_after").map_err(database)?,
        detail: row.try_get("detail").map_err(database)?,
        recorded_at: row.try_get("recorded_at").map_err(database)?,
    })
}

async fn append(
    transaction: &mut Transaction<'static, Postgres>,
    entry: rows::Append<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
         VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
    )
    .bind(entry.operation_id.0)
    .bind(entry.kind.as_str())
    .bind(i64::from(entry.attempt))
    .bind(entry.owner)
    .bind(entry.state_after.as_str())
    .bind(entry.detail)
    .bind(millis(entry.now))
    .execute(&mut **transaction)
    .await
    .map_err(database)?;
    Ok(())
}

async fn find(
    executor: impl sqlx::PgExecutor<'_>,
    scope: &Scope,
    lock: bool,
) -> Result<Option<Operation>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {} FROM oncely_operations WHERE tenant = $1 AND domain = $2 AND idem_key = $3{lock}",
        columns("")
    ))
    .bind(scope.tenant.as_str())
    .bind(scope.domain.as_str())
    .bind(scope.key.as_str())
    .fetch_optional(executor)
    .await
    .map_err(database)?;
    row.as_ref().map(operation).transpose()
}

async fn accept_one(
    transaction: &mut Transaction<'static, Postgres>,
    new: &NewOperation,
) -> Result<Accepted, StoreError> {
    let now = millis(new.now);
    let inserted = sqlx::query(&format!(
        "INSERT INTO oncely_operations \
         (tenant, domain, idem_key, event_type, state, payload, fingerprint, next_retry_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'ACCEPTED', $5::jsonb, $6, $7, $7, $7) \
         ON CONFLICT (tenant, domain, idem_key) DO NOTHING RETURNING {}",
        columns("")
    ))
    .bind(new.scope.tenant.as_str())
    .bind(new.scope.domain.as_str())
    .bind(new.scope.key.as_str())
    .bind(&new.event_type)
    .bind(new.payload.to_string())
    .bind(new.fingerprint.as_str())
    .bind(now)
    .fetch_optional(&mut **transaction)
    .await
    .map_err(database)?;
    if let Some(row) = inserted {
        let created = operation(&row)?;
        append(
            transaction,
            rows::Append::accepted(&created, &new.event_type, new.now),
        )
        .await?;
        return Ok(Accepted::New(created));
    }
    // I1: the scope is taken (committed: ON CONFLICT waited for any writer of it).
    let existing = find(&mut **transaction, &new.scope, false)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!("{} conflicted but cannot be read", new.scope))
        })?;
    Ok(rows::replay_or_conflict(existing, &new.fingerprint))
}

async fn transition_one(
    transaction: &mut Transaction<'static, Postgres>,
    transition: &Transition,
    guard: Guard,
) -> Result<bool, StoreError> {
    let columns = decision_columns(&transition.decision, transition.now);
    debug_assert!(OperationState::Processing.can_move_to(columns.state));
    let Fence { id, attempt, owner } = &transition.fence;
    let guard = match guard {
        Guard::Recorded => "AND recorded_attempt = attempt_count",
        Guard::Reapable => {
            "AND lease_until <= $7 AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count)"
        }
    };
    // I4: fenced by attempt and owner, a zombie's write matches no row.
    let sql = format!(
        "UPDATE oncely_operations SET state = $1, outcome_data = $2::jsonb, error_code = $3, error_message = $4, \
         next_retry_at = $5, completed_at = $6, updated_at = $7, lease_owner = NULL, lease_until = NULL \
         WHERE id = $8 AND state = 'PROCESSING' AND attempt_count = $9 AND lease_owner = $10 {guard}"
    );
    let result = sqlx::query(&sql)
        .bind(columns.state.as_str())
        .bind(columns.outcome_data)
        .bind(columns.error_code)
        .bind(columns.error_message)
        .bind(columns.next_retry_at)
        .bind(columns.completed_at)
        .bind(millis(transition.now))
        .bind(id.0)
        .bind(i64::from(*attempt))
        .bind(owner.as_str())
        .execute(&mut **transaction)
        .await
        .map_err(database)?;
    Ok(result.rows_affected() == 1)
}

async fn transition_batch(
    store: &PgStore,
    batch: Vec<Transition>,
    kind: WalKind,
    guard: Guard,
    crash_point: Option<CrashPoint>,
) -> Result<Vec<Fenced>, StoreError> {
    let mut transaction = store.begin().await?;
    let mut results = vec![Fenced::Rejected; batch.len()];
    for index in rows::order_by(&batch, |transition| transition.fence.id) {
        let transition = &batch[index];
        if transition_one(&mut transaction, transition, guard).await? {
            append(
                &mut transaction,
                rows::Append::transition(transition, kind)?,
            )
            .await?;
            results[index] = Fenced::Applied;
        }
    }
    if let Some(point) = crash_point
        && store.failpoints.hit(point)
    {
        return Err(StoreError::Crashed);
    }
    store.commit(transaction).await?;
    Ok(results)
}

async fn record_one(
    transaction: &mut Transaction<'static, Postgres>,
    record: &RecordOutcome,
) -> Result<Fenced, StoreError> {
    let Fence { id, attempt, owner } = &record.fence;
    let updated = sqlx::query(
        "UPDATE oncely_operations SET recorded_attempt = attempt_count, updated_at = $1 \
         WHERE id = $2 AND state = 'PROCESSING' AND attempt_count = $3 AND lease_owner = $4",
    )
    .bind(millis(record.now))
    .bind(id.0)
    .bind(i64::from(*attempt))
    .bind(owner.as_str())
    .execute(&mut **transaction)
    .await
    .map_err(database)?;
    let fenced = rows::fenced(updated.rows_affected());
    sqlx::query(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
         SELECT id, $1, $2, $3, state, $4::jsonb, $5 FROM oncely_operations WHERE id = $6",
    )
    .bind(rows::record_kind(fenced).as_str())
    .bind(i64::from(*attempt))
    .bind(owner.as_str())
    .bind(rows::record_detail(record))
    .bind(millis(record.now))
    .bind(id.0)
    .execute(&mut **transaction)
    .await
    .map_err(database)?;
    Ok(fenced)
}

impl Store for PgStore {
    async fn accept(&self, batch: Vec<NewOperation>) -> Result<Vec<Accepted>, StoreError> {
        let mut transaction = self.begin().await?;
        let mut results = vec![None; batch.len()];
        // Inserting in scope order keeps two nodes' batches from deadlocking.
        for index in rows::order_by(&batch, |new| new.scope.to_string()) {
            results[index] = Some(accept_one(&mut transaction, &batch[index]).await?);
        }
        // Delivered on commit: idle nodes start at once instead of at their next poll.
        let domains: std::collections::BTreeSet<&str> = batch
            .iter()
            .zip(&results)
            .filter(|(_, result)| matches!(result, Some(Accepted::New(_))))
            .map(|(new, _)| new.scope.domain.as_str())
            .collect();
        for domain in domains {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(WORK_CHANNEL)
                .bind(domain)
                .execute(&mut *transaction)
                .await
                .map_err(database)?;
        }
        self.commit(transaction).await?;
        results
            .into_iter()
            .map(|result| {
                result.ok_or_else(|| StoreError::Corrupt("accept skipped an item".into()))
            })
            .collect()
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        let mut transaction = self.begin().await?;
        let now = millis(request.now);
        let lease_until = millis(request.lease_until());
        // SKIP LOCKED: rows another node is claiming right now are passed over, not waited for.
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT id FROM oncely_operations \
                          WHERE domain = $1 AND state = 'ACCEPTED' AND next_retry_at <= $2 \
                          ORDER BY next_retry_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE oncely_operations o SET state = 'PROCESSING', attempt_count = o.attempt_count + 1, \
                 lease_owner = $4, lease_until = $5, last_attempt_at = $2, updated_at = $2 \
             FROM due WHERE o.id = due.id RETURNING {}",
            columns("o.")
        ))
        .bind(request.domain.as_str())
        .bind(now)
        .bind(i64::from(request.limit))
        .bind(request.owner.as_str())
        .bind(lease_until)
        .fetch_all(&mut *transaction)
        .await
        .map_err(database)?;
        let mut claimed = rows.iter().map(operation).collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|operation| (operation.next_retry_at, operation.id));
        for operation in &claimed {
            append(
                &mut transaction,
                rows::Append::executing(operation, &request.owner, lease_until)?,
            )
            .await?;
        }
        self.commit(transaction).await?;
        Ok(claimed)
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let mut transaction = self.begin().await?;
        let mut results = vec![Fenced::Rejected; batch.len()];
        for index in rows::order_by(&batch, |record| record.fence.id) {
            results[index] = record_one(&mut transaction, &batch[index]).await?;
        }
        self.commit(transaction).await?;
        Ok(results)
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        transition_batch(
            self,
            batch,
            WalKind::Finalized,
            Guard::Recorded,
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
        let rows = sqlx::query(&format!(
            "SELECT {} FROM oncely_operations WHERE domain = $1 AND state = 'PROCESSING' AND lease_until <= $2 \
             AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count) \
             ORDER BY lease_until, id LIMIT $3",
            columns("")
        ))
        .bind(domain.as_str())
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database)?;
        rows.iter().map(operation).collect()
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        transition_batch(self, batch, WalKind::Reaped, Guard::Reapable, None).await
    }

    async fn pending_outcomes(
        &self,
        domain: &DomainName,
        recorded_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingOutcome>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {}, w.detail::text AS recorded_detail FROM oncely_operations o \
             JOIN oncely_wal w ON w.operation_id = o.id AND w.kind = 'OUTCOME_RECORDED' \
                 AND w.attempt = o.attempt_count AND w.lease_owner = o.lease_owner \
             WHERE o.domain = $1 AND o.state = 'PROCESSING' AND o.recorded_attempt = o.attempt_count \
                 AND w.recorded_at <= $2 \
             ORDER BY o.id LIMIT $3",
            columns("o.")
        ))
        .bind(domain.as_str())
        .bind(millis(recorded_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database)?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("recorded_detail").map_err(database)?;
                rows::pending_outcome(operation(row)?, &detail)
            })
            .collect()
    }

    async fn retry(&self, scope: &Scope, now: DateTime<Utc>) -> Result<Operation, StoreError> {
        let mut transaction = self.begin().await?;
        let current =
            find(&mut *transaction, scope, true)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    scope: scope.clone(),
                })?;
        rows::check_retryable(&current)?;
        let row = sqlx::query(&format!(
            "UPDATE oncely_operations SET state = 'ACCEPTED', attempt_floor = attempt_count, \
             next_retry_at = $1, completed_at = NULL, outcome_data = NULL, error_code = NULL, \
             error_message = NULL, updated_at = $1 WHERE id = $2 AND state = $3 RETURNING {}",
            columns("")
        ))
        .bind(millis(now))
        .bind(current.id.0)
        .bind(current.state.as_str())
        .fetch_one(&mut *transaction)
        .await
        .map_err(database)?;
        let retried = operation(&row)?;
        append(
            &mut transaction,
            rows::Append::operator_retried(&current, &retried, now),
        )
        .await?;
        self.commit(transaction).await?;
        Ok(retried)
    }

    async fn purge(
        &self,
        domain: &DomainName,
        completed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut transaction = self.begin().await?;
        // The log goes with its operation (ON DELETE CASCADE).
        let purged = sqlx::query(
            "DELETE FROM oncely_operations WHERE id IN (SELECT id FROM oncely_operations \
             WHERE domain = $1 AND state IN ('COMPLETED', 'FAILED', 'TIMEOUT') AND completed_at < $2 \
             ORDER BY completed_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)",
        )
        .bind(domain.as_str())
        .bind(millis(completed_before))
        .bind(i64::from(limit))
        .execute(&mut *transaction)
        .await
        .map_err(database)?;
        self.commit(transaction).await?;
        Ok(purged.rows_affected())
    }

    fn work_signal(&self, _domain: &DomainName) -> impl Future<Output = ()> + Send {
        let signal = self.signal.clone();
        async move { signal.notify.notified().await }
    }

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        find(&self.pool, scope, false).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX);
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM oncely_operations WHERE 1 = 1",
            columns("")
        ));
        if let Some(tenant) = &filter.tenant {
            query.push(" AND tenant = ").push_bind(tenant.as_str());
        }
        if let Some(domain) = &filter.domain {
            query.push(" AND domain = ").push_bind(domain.as_str());
        }
        if let Some(state) = filter.state {
            query.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(before) = filter.before {
            query.push(" AND id < ").push_bind(before.0);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(database)?;
        rows::page(rows.iter().map(operation).collect::<Result<_, _>>()?, limit)
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        let operation =
            find(&self.pool, scope, false)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    scope: scope.clone(),
                })?;
        let rows = sqlx::query(
            "SELECT seq, operation_id, kind, attempt::bigint AS attempt, lease_owner, state_after, \
             detail::text AS detail, recorded_at FROM oncely_wal WHERE operation_id = $1 ORDER BY seq",
        )
        .bind(operation.id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(database)?;
        rows.iter().map(wal_entry).collect()
    }
}
