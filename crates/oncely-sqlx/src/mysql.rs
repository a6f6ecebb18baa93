//! A [`Store`] on MySQL or MariaDB (≥ 10.6), for several nodes sharing the work.
//!
//! As on PostgreSQL: claims take rows with `FOR UPDATE SKIP LOCKED`, every write about an
//! attempt is one fenced `UPDATE` of one row (InnoDB's `UPDATE` reads the latest committed
//! row version and locks it, whatever the isolation level), and batches touch rows in a
//! fixed order. MySQL has no `UPDATE … RETURNING`, so a claim selects and locks its rows,
//! updates them, and reads them back, in one transaction.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::{
    Accepted, ClaimRequest, CrashPoint, DomainName, Failpoints, Fence, Fenced, ListFilter,
    NewOperation, Operation, OperationState, Page, PendingOutcome, RecordOutcome, Scope, Store,
    StoreError, Transition, WalEntry, WalKind,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row, Transaction};

use crate::rows::{self, Guard, OperationColumns, WalColumns, database, millis};
use crate::{LIST_LIMIT_MAX, OpenError, decision_columns};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// The MySQL / MariaDB store. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    failpoints: Failpoints,
}

impl MySqlStore {
    /// Connects to `url` (`mysql://user@host/db`) with a pool of up to 16 connections and
    /// brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let options = MySqlConnectOptions::from_str(url).map_err(|source| OpenError::Url {
            url: url.to_owned(),
            source,
        })?;
        let store = Self::connect_with(options, 16).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` without touching the schema (it must be migrated already).
    pub async fn open_without_migrating(url: &str) -> Result<Self, OpenError> {
        let options = MySqlConnectOptions::from_str(url).map_err(|source| OpenError::Url {
            url: url.to_owned(),
            source,
        })?;
        Self::connect_with(options, 16).await
    }

    /// Connects with explicit options and pool size, without touching the schema.
    pub async fn connect_with(
        options: MySqlConnectOptions,
        connections_max: u32,
    ) -> Result<Self, OpenError> {
        let pool = MySqlPoolOptions::new()
            // No ping per checkout: a dead connection fails its statement, and every
            // write is retried. The ping was a round trip per transaction.
            .test_before_acquire(false)
            .max_connections(connections_max.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|source| OpenError::Connect {
                url: "mysql".to_owned(),
                source,
            })?;
        Ok(Self {
            pool,
            failpoints: Failpoints::default(),
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

    async fn begin(&self) -> Result<Transaction<'static, MySql>, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        self.pool.begin().await.map_err(database)
    }

    async fn commit(&self, transaction: Transaction<'static, MySql>) -> Result<(), StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        transaction.commit().await.map_err(database)
    }
}

/// A text column. `ascii_bin` columns (names, keys) arrive flagged as binary, which sqlx
/// will not decode as `String`; their bytes are ASCII, so they are read as bytes.
fn text(row: &MySqlRow, column: &str) -> Result<String, StoreError> {
    match row.try_get::<String, _>(column) {
        Ok(text) => Ok(text),
        Err(_) => {
            let bytes: Vec<u8> = row.try_get(column).map_err(database)?;
            String::from_utf8(bytes)
                .map_err(|error| StoreError::Corrupt(format!("{column}: {error}")))
        }
    }
}

fn optional_text(row: &MySqlRow, column: &str) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(text) => Ok(text),
        Err(_) => {
            let bytes: Option<Vec<u8>> = row.try_get(column).map_err(database)?;
            bytes
                .map(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|error| StoreError::Corrupt(format!("{column}: {error}")))
                })
                .transpose()
        }
    }
}

fn operation(row: &MySqlRow) -> Result<Operation, StoreError> {
    rows::operation(OperationColumns {
        id: row.try_get("id").map_err(database)?,
        tenant: text(row, "tenant")?,
        domain: text(row, "domain")?,
        idem_key: text(row, "idem_key")?,
        event_type: text(row, "event_type")?,
        state: text(row, "state")?,
        payload: text(row, "payload")?,
        fingerprint: text(row, "fingerprint")?,
        attempt_count: row.try_get("attempt_count").map_err(database)?,
        attempt_floor: row.try_get("attempt_floor").map_err(database)?,
        recorded_attempt: row.try_get("recorded_attempt").map_err(database)?,
        last_attempt_at: row.try_get("last_attempt_at").map_err(database)?,
        next_retry_at: row.try_get("next_retry_at").map_err(database)?,
        lease_owner: optional_text(row, "lease_owner")?,
        lease_until: row.try_get("lease_until").map_err(database)?,
        outcome_data: optional_text(row, "outcome_data")?,
        error_code: optional_text(row, "error_code")?,
        error_message: optional_text(row, "error_message")?,
        created_at: row.try_get("created_at").map_err(database)?,
        updated_at: row.try_get("updated_at").map_err(database)?,
        completed_at: row.try_get("completed_at").map_err(database)?,
    })
}

fn wal_entry(row: &MySqlRow) -> Result<WalEntry, StoreError> {
    rows::wal_entry(WalColumns {
        seq: row.try_get("seq").map_err(database)?,
        operation_id: row.try_get("operation_id").map_err(database)?,
        kind: text(row, "kind")?,
        attempt: row.try_get("attempt").map_err(database)?,
        lease_owner: optional_text(row, "lease_owner")?,
        state_after: text(row, "state_after")?,
        detail: text(row, "detail")?,
        recorded_at: row.try_get("recorded_at").map_err(database)?,
    })
}

async fn append(
    transaction: &mut Transaction<'static, MySql>,
    entry: rows::Append<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO oncely_wal (operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    executor: impl sqlx::MySqlExecutor<'_>,
    scope: &Scope,
    lock: bool,
) -> Result<Option<Operation>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT * FROM oncely_operations WHERE tenant = ? AND domain = ? AND idem_key = ?{lock}"
    ))
    .bind(scope.tenant.as_str())
    .bind(scope.domain.as_str())
    .bind(scope.key.as_str())
    .fetch_optional(executor)
    .await
    .map_err(database)?;
    row.as_ref().map(operation).transpose()
}

async fn by_ids(
    transaction: &mut Transaction<'static, MySql>,
    ids: &[i64],
) -> Result<Vec<Operation>, StoreError> {
    let mut query = QueryBuilder::<MySql>::new("SELECT * FROM oncely_operations WHERE id IN (");
    let mut separated = query.separated(", ");
    for id in ids {
        separated.push_bind(*id);
    }
    query.push(") ORDER BY next_retry_at, id");
    let rows = query
        .build()
        .fetch_all(&mut **transaction)
        .await
        .map_err(database)?;
    rows.iter().map(operation).collect()
}

async fn accept_one(
    transaction: &mut Transaction<'static, MySql>,
    new: &NewOperation,
) -> Result<Accepted, StoreError> {
    let now = millis(new.now);
    let inserted = sqlx::query(
        "INSERT INTO oncely_operations \
         (tenant, domain, idem_key, event_type, state, payload, fingerprint, next_retry_at, created_at, updated_at) \
         VALUES (?, ?, ?, ?, 'ACCEPTED', ?, ?, ?, ?, ?)",
    )
    .bind(new.scope.tenant.as_str())
    .bind(new.scope.domain.as_str())
    .bind(new.scope.key.as_str())
    .bind(&new.event_type)
    .bind(new.payload.to_string())
    .bind(new.fingerprint.as_str())
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut **transaction)
    .await;
    match inserted {
        Ok(_) => {
            let created = find(&mut **transaction, &new.scope, false)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("{} vanished after insert", new.scope))
                })?;
            append(
                transaction,
                rows::Append::accepted(&created, &new.event_type, new.now),
            )
            .await?;
            Ok(Accepted::New(created))
        }
        // I1: the scope is taken. In MySQL a failed statement leaves the transaction usable.
        // A locking read: under REPEATABLE READ a plain one would read this transaction's
        // snapshot, which may predate another node's commit of the key.
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            let existing = find(&mut **transaction, &new.scope, true)
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("{} conflicted but cannot be read", new.scope))
                })?;
            Ok(rows::replay_or_conflict(existing, &new.fingerprint))
        }
        Err(error) => Err(database(error)),
    }
}

async fn transition_one(
    transaction: &mut Transaction<'static, MySql>,
    transition: &Transition,
    guard: Guard,
) -> Result<bool, StoreError> {
    let columns = decision_columns(&transition.decision, transition.now);
    debug_assert!(OperationState::Processing.can_move_to(columns.state));
    let Fence { id, attempt, owner } = &transition.fence;
    let guard_sql = match guard {
        Guard::Recorded => "AND recorded_attempt = attempt_count",
        Guard::Reapable => {
            "AND lease_until <= ? AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count)"
        }
    };
    // I4: fenced by attempt and owner, a zombie's write matches no row.
    let sql = format!(
        "UPDATE oncely_operations SET state = ?, outcome_data = ?, error_code = ?, error_message = ?, \
         next_retry_at = ?, completed_at = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL \
         WHERE id = ? AND state = 'PROCESSING' AND attempt_count = ? AND lease_owner = ? {guard_sql}"
    );
    let mut query = sqlx::query(&sql)
        .bind(columns.state.as_str())
        .bind(columns.outcome_data)
        .bind(columns.error_code)
        .bind(columns.error_message)
        .bind(columns.next_retry_at)
        .bind(columns.completed_at)
        .bind(millis(transition.now))
        .bind(id.0)
        .bind(i64::from(*attempt))
        .bind(owner.as_str());
    if guard == Guard::Reapable {
        query = query.bind(millis(transition.now));
    }
    let result = query.execute(&mut **transaction).await.map_err(database)?;
    Ok(result.rows_affected() == 1)
}

async fn transition_batch(
    store: &MySqlStore,
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
    transaction: &mut Transaction<'static, MySql>,
    record: &RecordOutcome,
) -> Result<Fenced, StoreError> {
    let Fence { id, attempt, owner } = &record.fence;
    let updated = sqlx::query(
        "UPDATE oncely_operations SET recorded_attempt = attempt_count, updated_at = ? \
         WHERE id = ? AND state = 'PROCESSING' AND attempt_count = ? AND lease_owner = ?",
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
         SELECT id, ?, ?, ?, state, ?, ? FROM oncely_operations WHERE id = ?",
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

impl Store for MySqlStore {
    async fn accept(&self, batch: Vec<NewOperation>) -> Result<Vec<Accepted>, StoreError> {
        let mut transaction = self.begin().await?;
        let mut results = vec![None; batch.len()];
        // Inserting in scope order keeps two nodes' batches from deadlocking.
        for index in rows::order_by(&batch, |new| new.scope.to_string()) {
            results[index] = Some(accept_one(&mut transaction, &batch[index]).await?);
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
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM oncely_operations WHERE domain = ? AND state = 'ACCEPTED' AND next_retry_at <= ? \
             ORDER BY next_retry_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(request.domain.as_str())
        .bind(now)
        .bind(i64::from(request.limit))
        .fetch_all(&mut *transaction)
        .await
        .map_err(database)?;
        if ids.is_empty() {
            self.commit(transaction).await?;
            return Ok(Vec::new());
        }
        let mut update = QueryBuilder::<MySql>::new(
            "UPDATE oncely_operations SET state = 'PROCESSING', attempt_count = attempt_count + 1, lease_owner = ",
        );
        update
            .push_bind(request.owner.as_str())
            .push(", lease_until = ")
            .push_bind(lease_until)
            .push(", last_attempt_at = ")
            .push_bind(now)
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE state = 'ACCEPTED' AND id IN (");
        let mut separated = update.separated(", ");
        for id in &ids {
            separated.push_bind(*id);
        }
        update.push(")");
        update
            .build()
            .execute(&mut *transaction)
            .await
            .map_err(database)?;
        let claimed = by_ids(&mut transaction, &ids).await?;
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
        let rows = sqlx::query(
            "SELECT * FROM oncely_operations WHERE domain = ? AND state = 'PROCESSING' AND lease_until <= ? \
             AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count) \
             ORDER BY lease_until, id LIMIT ?",
        )
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
        let rows = sqlx::query(
            "SELECT o.*, w.detail AS recorded_detail FROM oncely_operations o \
             JOIN oncely_wal w ON w.operation_id = o.id AND w.kind = 'OUTCOME_RECORDED' \
                 AND w.attempt = o.attempt_count AND w.lease_owner = o.lease_owner \
             WHERE o.domain = ? AND o.state = 'PROCESSING' AND o.recorded_attempt = o.attempt_count \
                 AND w.recorded_at <= ? \
             ORDER BY o.id LIMIT ?",
        )
        .bind(domain.as_str())
        .bind(millis(recorded_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database)?;
        rows.iter()
            .map(|row| {
                let detail = text(row, "recorded_detail")?;
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
        sqlx::query(
            "UPDATE oncely_operations SET state = 'ACCEPTED', attempt_floor = attempt_count, \
             next_retry_at = ?, completed_at = NULL, outcome_data = NULL, error_code = NULL, \
             error_message = NULL, updated_at = ? WHERE id = ? AND state = ?",
        )
        .bind(millis(now))
        .bind(millis(now))
        .bind(current.id.0)
        .bind(current.state.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(database)?;
        let retried = by_ids(&mut transaction, &[current.id.0])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt(format!("{scope} vanished during a retry")))?;
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
            "DELETE FROM oncely_operations \
             WHERE domain = ? AND state IN ('COMPLETED', 'FAILED', 'TIMEOUT') AND completed_at < ? \
             ORDER BY completed_at, id LIMIT ?",
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

    async fn get(&self, scope: &Scope) -> Result<Option<Operation>, StoreError> {
        find(&self.pool, scope, false).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX);
        let mut query = QueryBuilder::<MySql>::new("SELECT * FROM oncely_operations WHERE 1 = 1");
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
        let rows = sqlx::query("SELECT * FROM oncely_wal WHERE operation_id = ? ORDER BY seq")
            .bind(operation.id.0)
            .fetch_all(&self.pool)
            .await
            .map_err(database)?;
        rows.iter().map(wal_entry).collect()
    }
}
