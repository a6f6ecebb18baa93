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
    Accepted, ClaimRequest, CrashPoint, DomainName, Failpoints, Fenced, ListFilter, NewOperation,
    Operation, OperationState, Page, PendingOutcome, RecordOutcome, Scope, Store, StoreError,
    Transition, WalEntry, WalKind,
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
            // No ping per checkout: a dead connection fails its statement, and every
            // write is retried. The ping was a round trip per transaction.
            .test_before_acquire(false)
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

/// Appends `entries` to the log in one statement, in their order.
async fn append_many(
    transaction: &mut Transaction<'static, Postgres>,
    entries: &[rows::Append<'_>],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(entries.len());
    let mut kinds = Vec::with_capacity(entries.len());
    let mut attempts = Vec::with_capacity(entries.len());
    let mut owners = Vec::with_capacity(entries.len());
    let mut states = Vec::with_capacity(entries.len());
    let mut details = Vec::with_capacity(entries.len());
    let mut times = Vec::with_capacity(entries.len());
    for entry in entries {
        ids.push(entry.operation_id.0);
        kinds.push(entry.kind.as_str());
        attempts.push(i64::from(entry.attempt));
        owners.push(entry.owner);
        states.push(entry.state_after.as_str());
        details.push(entry.detail.as_str());
        times.push(millis(entry.now));
    }
    sqlx::query(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
         SELECT id, kind, attempt, owner, state, detail::jsonb, at \
         FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[]) \
             WITH ORDINALITY AS e(id, kind, attempt, owner, state, detail, at, n) \
         ORDER BY n",
    )
    .bind(ids)
    .bind(kinds)
    .bind(attempts)
    .bind(owners)
    .bind(states)
    .bind(details)
    .bind(times)
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

/// Inserts a batch in one statement (scope order, so two nodes' batches cannot
/// deadlock), then reads every scope that was already taken in one more.
async fn accept_many(
    transaction: &mut Transaction<'static, Postgres>,
    batch: &[NewOperation],
) -> Result<Vec<Accepted>, StoreError> {
    let order = rows::order_by(batch, |new| new.scope.to_string());
    let pick = |f: &dyn Fn(&NewOperation) -> String| -> Vec<String> {
        order.iter().map(|&i| f(&batch[i])).collect()
    };
    let tenants = pick(&|new| new.scope.tenant.as_str().to_owned());
    let domains = pick(&|new| new.scope.domain.as_str().to_owned());
    let keys = pick(&|new| new.scope.key.as_str().to_owned());
    // One statement: the new operations, and an ACCEPTED entry for each one inserted.
    let inserted = sqlx::query(&format!(
        "WITH inserted AS (INSERT INTO oncely_operations \
             (tenant, domain, idem_key, event_type, state, payload, fingerprint, next_retry_at, created_at, updated_at) \
             SELECT tenant, domain, idem_key, event_type, 'ACCEPTED', payload::jsonb, fingerprint, at, at, at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[]) \
                 WITH ORDINALITY AS n(tenant, domain, idem_key, event_type, payload, fingerprint, at, ord) \
             ORDER BY ord \
             ON CONFLICT (tenant, domain, idem_key) DO NOTHING RETURNING {}), \
         logged AS (INSERT INTO oncely_wal \
                 (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
             SELECT id, $8, 0, NULL, 'ACCEPTED', jsonb_build_object('eventType', event_type), created_at \
             FROM inserted ORDER BY id) \
         SELECT * FROM inserted",
        columns("")
    ))
    .bind(&tenants)
    .bind(&domains)
    .bind(&keys)
    .bind(pick(&|new| new.event_type.clone()))
    .bind(pick(&|new| new.payload.to_string()))
    .bind(pick(&|new| new.fingerprint.as_str().to_owned()))
    .bind(order.iter().map(|&i| millis(batch[i].now)).collect::<Vec<_>>())
    .bind(WalKind::Accepted.as_str())
    .fetch_all(&mut **transaction)
    .await
    .map_err(database)?;
    let mut created: std::collections::HashMap<String, Operation> = inserted
        .iter()
        .map(|row| operation(row).map(|op| (op.scope.to_string(), op)))
        .collect::<Result<_, _>>()?;
    let mut results: Vec<Option<Accepted>> = vec![None; batch.len()];
    let mut taken = Vec::new();
    for &index in &order {
        let new = &batch[index];
        match created.remove(&new.scope.to_string()) {
            Some(op) => results[index] = Some(Accepted::New(op)),
            None => taken.push(index),
        }
    }
    if !taken.is_empty() {
        // I1: these scopes are taken (committed: ON CONFLICT waited for any writer of
        // them), or were inserted by an earlier item of this very batch.
        let rows = sqlx::query(&format!(
            "SELECT {} FROM oncely_operations \
             WHERE (tenant, domain, idem_key) IN \
                 (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))",
            columns("")
        ))
        .bind(
            taken
                .iter()
                .map(|&i| batch[i].scope.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            taken
                .iter()
                .map(|&i| batch[i].scope.domain.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            taken
                .iter()
                .map(|&i| batch[i].scope.key.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut **transaction)
        .await
        .map_err(database)?;
        let existing: std::collections::HashMap<String, Operation> = rows
            .iter()
            .map(|row| operation(row).map(|op| (op.scope.to_string(), op)))
            .collect::<Result<_, _>>()?;
        for index in taken {
            let new = &batch[index];
            let found = existing
                .get(&new.scope.to_string())
                .cloned()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("{} conflicted but cannot be read", new.scope))
                })?;
            results[index] = Some(rows::replay_or_conflict(found, &new.fingerprint));
        }
    }
    results
        .into_iter()
        .map(|result| result.ok_or_else(|| StoreError::Corrupt("accept skipped an item".into())))
        .collect()
}

/// Applies a batch of fenced transitions in one statement and logs the applied ones in
/// one more. I4: fenced by attempt and owner, a zombie's write matches no row.
async fn transition_batch(
    store: &PgStore,
    batch: Vec<Transition>,
    kind: WalKind,
    guard: Guard,
    crash_point: Option<CrashPoint>,
) -> Result<Vec<Fenced>, StoreError> {
    let guard = match guard {
        Guard::Recorded => "AND o.recorded_attempt = o.attempt_count",
        Guard::Reapable => {
            "AND o.lease_until <= t.at AND (o.recorded_attempt IS NULL OR o.recorded_attempt <> o.attempt_count)"
        }
    };
    let mut ids = Vec::with_capacity(batch.len());
    let mut attempts = Vec::with_capacity(batch.len());
    let mut owners = Vec::with_capacity(batch.len());
    let mut states = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut codes = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    let mut next_retries = Vec::with_capacity(batch.len());
    let mut completions = Vec::with_capacity(batch.len());
    let mut times = Vec::with_capacity(batch.len());
    for index in rows::order_by(&batch, |transition| transition.fence.id) {
        let transition = &batch[index];
        let columns = decision_columns(&transition.decision, transition.now);
        debug_assert!(OperationState::Processing.can_move_to(columns.state));
        ids.push(transition.fence.id.0);
        attempts.push(i64::from(transition.fence.attempt));
        owners.push(transition.fence.owner.as_str().to_owned());
        states.push(columns.state.as_str());
        outcomes.push(columns.outcome_data);
        codes.push(columns.error_code);
        messages.push(columns.error_message);
        next_retries.push(columns.next_retry_at);
        completions.push(columns.completed_at);
        times.push(millis(transition.now));
    }
    let mut details = Vec::with_capacity(batch.len());
    for index in rows::order_by(&batch, |transition| transition.fence.id) {
        details.push(rows::Append::transition(&batch[index], kind)?.detail);
    }
    let mut transaction = store.begin().await?;
    // One statement: the fenced update, and the log entry of each row it changed.
    let sql = format!(
        "WITH t AS (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                        $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
                        $11::text[]) \
                    AS t(id, attempt, owner, state, outcome, code, message, next_retry, completed, at, detail)), \
         changed AS (UPDATE oncely_operations o SET state = t.state, outcome_data = t.outcome::jsonb, \
                 error_code = t.code, error_message = t.message, next_retry_at = t.next_retry, \
                 completed_at = t.completed, updated_at = t.at, lease_owner = NULL, lease_until = NULL \
             FROM t \
             WHERE o.id = t.id AND o.state = 'PROCESSING' AND o.attempt_count = t.attempt \
                 AND o.lease_owner = t.owner {guard} \
             RETURNING o.id), \
         logged AS (INSERT INTO oncely_wal \
                 (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
             SELECT t.id, $12, t.attempt, t.owner, t.state, t.detail::jsonb, t.at \
             FROM t JOIN changed ON changed.id = t.id ORDER BY t.id) \
         SELECT id FROM changed"
    );
    let applied: std::collections::HashSet<i64> = sqlx::query_scalar(&sql)
        .bind(ids)
        .bind(attempts)
        .bind(owners)
        .bind(states)
        .bind(outcomes)
        .bind(codes)
        .bind(messages)
        .bind(next_retries)
        .bind(completions)
        .bind(times)
        .bind(details)
        .bind(kind.as_str())
        .fetch_all(&mut *transaction)
        .await
        .map_err(database)?
        .into_iter()
        .collect();
    let results: Vec<Fenced> = batch
        .iter()
        .map(|transition| rows::fenced(u64::from(applied.contains(&transition.fence.id.0))))
        .collect();
    if let Some(point) = crash_point
        && store.failpoints.hit(point)
    {
        return Err(StoreError::Crashed);
    }
    store.commit(transaction).await?;
    Ok(results)
}

/// Marks the fenced attempts recorded in one statement, then logs every outcome (applied
/// or rejected) in one more.
async fn record_many(
    transaction: &mut Transaction<'static, Postgres>,
    batch: &[RecordOutcome],
) -> Result<Vec<Fenced>, StoreError> {
    let order = rows::order_by(batch, |record| record.fence.id);
    // One statement: the fenced mark, and a log entry for every outcome, applied or not.
    let recorded: std::collections::HashSet<i64> = sqlx::query_scalar(
        "WITH r AS (SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[]) \
                    WITH ORDINALITY AS r(id, attempt, owner, at, detail, n)), \
         marked AS (UPDATE oncely_operations o SET recorded_attempt = o.attempt_count, updated_at = r.at \
             FROM r \
             WHERE o.id = r.id AND o.state = 'PROCESSING' AND o.attempt_count = r.attempt \
                 AND o.lease_owner = r.owner \
             RETURNING o.id), \
         logged AS (INSERT INTO oncely_wal \
                 (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
             SELECT o.id, CASE WHEN EXISTS (SELECT 1 FROM marked WHERE marked.id = r.id) \
                               THEN $6 ELSE $7 END, \
                    r.attempt, r.owner, o.state, r.detail::jsonb, r.at \
             FROM r JOIN oncely_operations o ON o.id = r.id ORDER BY r.n) \
         SELECT id FROM marked",
    )
    .bind(order.iter().map(|&i| batch[i].fence.id.0).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| i64::from(batch[i].fence.attempt)).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| batch[i].fence.owner.as_str()).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| millis(batch[i].now)).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| rows::record_detail(&batch[i])).collect::<Vec<_>>())
    .bind(rows::record_kind(Fenced::Applied).as_str())
    .bind(rows::record_kind(Fenced::Rejected).as_str())
    .fetch_all(&mut **transaction)
    .await
    .map_err(database)?
    .into_iter()
    .collect();
    let fenced: Vec<Fenced> = batch
        .iter()
        .map(|record| rows::fenced(u64::from(recorded.contains(&record.fence.id.0))))
        .collect();
    Ok(fenced)
}

impl Store for PgStore {
    async fn accept(&self, batch: Vec<NewOperation>) -> Result<Vec<Accepted>, StoreError> {
        let mut transaction = self.begin().await?;
        let results = accept_many(&mut transaction, &batch).await?;
        // Delivered on commit: idle nodes start at once instead of at their next poll.
        let domains: std::collections::BTreeSet<&str> = batch
            .iter()
            .zip(&results)
            .filter(|(_, result)| matches!(result, Accepted::New(_)))
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
        Ok(results)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        let mut transaction = self.begin().await?;
        let now = millis(request.now);
        let lease_until = millis(request.lease_until());
        let detail = rows::Append::executing_detail(lease_until)?;
        // SKIP LOCKED: rows another node is claiming right now are passed over, not waited
        // for. One statement: the claim, and an EXECUTING entry for each row claimed.
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT id FROM oncely_operations \
                          WHERE domain = $1 AND state = 'ACCEPTED' AND next_retry_at <= $2 \
                          ORDER BY next_retry_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
             claimed AS (UPDATE oncely_operations o SET state = 'PROCESSING', \
                     attempt_count = o.attempt_count + 1, lease_owner = $4, lease_until = $5, \
                     last_attempt_at = $2, updated_at = $2 \
                 FROM due WHERE o.id = due.id RETURNING {}), \
             logged AS (INSERT INTO oncely_wal \
                     (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
                 SELECT id, $6, attempt_count, $4, 'PROCESSING', $7::jsonb, $2 \
                 FROM claimed ORDER BY next_retry_at, id) \
             SELECT * FROM claimed",
            columns("o.")
        ))
        .bind(request.domain.as_str())
        .bind(now)
        .bind(i64::from(request.limit))
        .bind(request.owner.as_str())
        .bind(lease_until)
        .bind(WalKind::Executing.as_str())
        .bind(detail)
        .fetch_all(&mut *transaction)
        .await
        .map_err(database)?;
        let mut claimed = rows.iter().map(operation).collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|operation| (operation.next_retry_at, operation.id));
        self.commit(transaction).await?;
        Ok(claimed)
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let mut transaction = self.begin().await?;
        let results = record_many(&mut transaction, &batch).await?;
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
        append_many(
            &mut transaction,
            &[rows::Append::operator_retried(&current, &retried, now)],
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
