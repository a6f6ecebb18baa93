//! The embedded default: a [`Store`] on one SQLite file.
//!
//! The file runs in WAL journal mode with `synchronous = FULL`, so a committed transaction
//! survives a crash of the process and of the machine. Writes go through one connection
//! (SQLite allows one writer at a time; queueing them in the pool instead of in SQLite's
//! busy loop keeps latency flat) and reads through a small pool of their own, which WAL
//! mode lets run beside the writer. One `oncely` process per file: for several nodes, use
//! PostgreSQL or MySQL.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oncely::{
    Accepted, ClaimRequest, CrashPoint, DomainName, Failpoints, Fence, Fenced, ListFilter,
    NewOperation, Operation, OperationState, Page, PendingOutcome, RecordOutcome, Scope, Store,
    StoreError, Transition, WalEntry, WalKind,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use crate::rows::{self, Guard, OperationColumns, WalColumns, database, millis};
use crate::{LIST_LIMIT_MAX, OpenError, decision_columns};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Cheap to clone: clones share the pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    failpoints: Failpoints,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://oncely.db`,
    /// `sqlite:///var/lib/oncely.db`, `sqlite::memory:`) and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let store = Self::open_without_migrating(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database without touching its schema.
    pub async fn open_without_migrating(url: &str) -> Result<Self, OpenError> {
        if !url.starts_with("sqlite:") {
            return Err(OpenError::Scheme {
                url: url.to_owned(),
                expected: "sqlite://PATH or sqlite::memory:",
            });
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|source| OpenError::Url {
                url: url.to_owned(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let writer = SqlitePoolOptions::new()
            // No ping per checkout: a dead connection fails its statement, and every
            // write is retried. The ping was a round trip per transaction.
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|source| OpenError::Connect {
                url: url.to_owned(),
                source,
            })?;
        // An in-memory database lives in its one connection: readers must share it.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                // No ping per checkout: a dead connection fails its statement, and every
                // write is retried. The ping was a round trip per transaction.
                .test_before_acquire(false)
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.read_only(true))
                .await
                .map_err(|source| OpenError::Connect {
                    url: url.to_owned(),
                    source,
                })?
        };
        Ok(Self {
            writer,
            reader,
            failpoints: Failpoints::default(),
        })
    }

    /// Applies the embedded migrations that the database does not have yet.
    pub async fn migrate(&self) -> Result<(), OpenError> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    /// Shares crash points with a test: every write fails once the switch trips, and
    /// `finalize` trips [`CrashPoint::DuringFinalize`] just before its commit.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    /// Closes both pools, waiting for their connections to finish.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed);
        }
        self.writer.begin().await.map_err(database)
    }

    async fn commit(&self, transaction: Transaction<'static, Sqlite>) -> Result<(), StoreError> {
        if self.failpoints.is_crashed() {
            return Err(StoreError::Crashed); // dropped: rolled back
        }
        transaction.commit().await.map_err(database)
    }
}

const SELECT_OPERATION: &str = "SELECT * FROM oncely_operations";

fn operation(row: &SqliteRow) -> Result<Operation, StoreError> {
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

fn wal_entry(row: &SqliteRow) -> Result<WalEntry, StoreError> {
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
    transaction: &mut Transaction<'static, Sqlite>,
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
    executor: impl sqlx::SqliteExecutor<'_>,
    scope: &Scope,
) -> Result<Option<Operation>, StoreError> {
    let row = sqlx::query(&format!(
        "{SELECT_OPERATION} WHERE tenant = ? AND domain = ? AND idem_key = ?"
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
    transaction: &mut Transaction<'static, Sqlite>,
    new: &NewOperation,
) -> Result<Accepted, StoreError> {
    let now = millis(new.now);
    let inserted = sqlx::query(
        "INSERT INTO oncely_operations \
         (tenant, domain, idem_key, event_type, state, payload, fingerprint, next_retry_at, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, 'ACCEPTED', ?5, ?6, ?7, ?7, ?7) \
         ON CONFLICT (tenant, domain, idem_key) DO NOTHING RETURNING *",
    )
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
    // I1: the scope is taken; the same request is a replay, another one a conflict.
    let existing = find(&mut **transaction, &new.scope).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("{} conflicted but cannot be read", new.scope))
    })?;
    Ok(rows::replay_or_conflict(existing, &new.fingerprint))
}

/// The fenced update that ends an attempt, with the guard of a finalize or a reap.
async fn transition_one(
    transaction: &mut Transaction<'static, Sqlite>,
    transition: &Transition,
    guard: Guard,
) -> Result<bool, StoreError> {
    let columns = decision_columns(&transition.decision, transition.now);
    debug_assert!(OperationState::Processing.can_move_to(columns.state));
    let Fence { id, attempt, owner } = &transition.fence;
    let guard = match guard {
        Guard::Recorded => "AND recorded_attempt = attempt_count",
        Guard::Reapable => {
            "AND lease_until <= ?7 AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count)"
        }
    };
    // I4: fenced by attempt and owner, a zombie's write matches no row.
    let sql = format!(
        "UPDATE oncely_operations SET state = ?1, outcome_data = ?2, error_code = ?3, error_message = ?4, \
         next_retry_at = ?5, completed_at = ?6, updated_at = ?7, lease_owner = NULL, lease_until = NULL \
         WHERE id = ?8 AND state = 'PROCESSING' AND attempt_count = ?9 AND lease_owner = ?10 {guard}"
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
    store: &SqliteStore,
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
        return Err(StoreError::Crashed); // the transaction is dropped: rolled back
    }
    store.commit(transaction).await?;
    Ok(results)
}

async fn record_one(
    transaction: &mut Transaction<'static, Sqlite>,
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
    // state_after is read from the row itself: PROCESSING when applied, whatever the
    // operation moved on to when rejected. No row (purged): nothing to log against.
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

impl Store for SqliteStore {
    async fn accept(&self, batch: Vec<NewOperation>) -> Result<Vec<Accepted>, StoreError> {
        let mut transaction = self.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for new in &batch {
            results.push(accept_one(&mut transaction, new).await?);
        }
        self.commit(transaction).await?;
        Ok(results)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Operation>, StoreError> {
        let mut transaction = self.begin().await?;
        let now = millis(request.now);
        let lease_until = millis(request.lease_until());
        // One writer at a time: the subquery's rows cannot be claimed by anyone else
        // before this UPDATE commits.
        let rows = sqlx::query(
            "UPDATE oncely_operations SET state = 'PROCESSING', attempt_count = attempt_count + 1, \
             lease_owner = ?1, lease_until = ?2, last_attempt_at = ?3, updated_at = ?3 \
             WHERE id IN (SELECT id FROM oncely_operations \
                          WHERE domain = ?4 AND state = 'ACCEPTED' AND next_retry_at <= ?3 \
                          ORDER BY next_retry_at, id LIMIT ?5) \
             RETURNING *",
        )
        .bind(request.owner.as_str())
        .bind(lease_until)
        .bind(now)
        .bind(request.domain.as_str())
        .bind(i64::from(request.limit))
        .fetch_all(&mut *transaction)
        .await
        .map_err(database)?;
        let mut claimed = rows.iter().map(operation).collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|operation| (operation.next_retry_at, operation.id));
        for operation in &claimed {
            let entry = rows::Append::executing(operation, &request.owner, lease_until)?;
            append(&mut transaction, entry).await?;
        }
        self.commit(transaction).await?;
        Ok(claimed)
    }

    async fn record_outcomes(&self, batch: Vec<RecordOutcome>) -> Result<Vec<Fenced>, StoreError> {
        let mut transaction = self.begin().await?;
        let mut results = Vec::with_capacity(batch.len());
        for record in &batch {
            results.push(record_one(&mut transaction, record).await?);
        }
        self.commit(transaction).await?;
        Ok(results)
    }

    async fn finalize(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        // I3: only an attempt whose outcome is in the log can be finalized.
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
            "{SELECT_OPERATION} WHERE domain = ? AND state = 'PROCESSING' AND lease_until <= ? \
             AND (recorded_attempt IS NULL OR recorded_attempt <> attempt_count) \
             ORDER BY lease_until, id LIMIT ?"
        ))
        .bind(domain.as_str())
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(database)?;
        rows.iter().map(operation).collect()
    }

    async fn reap(&self, batch: Vec<Transition>) -> Result<Vec<Fenced>, StoreError> {
        // I3: an attempt with a recorded outcome is the Finalizer's, never re-run.
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
        .fetch_all(&self.reader)
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
            find(&mut *transaction, scope)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    scope: scope.clone(),
                })?;
        rows::check_retryable(&current)?;
        let row = sqlx::query(
            "UPDATE oncely_operations SET state = 'ACCEPTED', attempt_floor = attempt_count, \
             next_retry_at = ?1, completed_at = NULL, outcome_data = NULL, error_code = NULL, \
             error_message = NULL, updated_at = ?1 WHERE id = ?2 AND state = ?3 RETURNING *",
        )
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
             WHERE domain = ? AND state IN ('COMPLETED', 'FAILED', 'TIMEOUT') AND completed_at < ? \
             ORDER BY completed_at, id LIMIT ?)",
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
        find(&self.reader, scope).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX);
        let mut query = QueryBuilder::<Sqlite>::new(SELECT_OPERATION);
        query.push(" WHERE 1 = 1");
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
            .fetch_all(&self.reader)
            .await
            .map_err(database)?;
        rows::page(rows.iter().map(operation).collect::<Result<_, _>>()?, limit)
    }

    async fn history(&self, scope: &Scope) -> Result<Vec<WalEntry>, StoreError> {
        let operation = find(&self.reader, scope)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                scope: scope.clone(),
            })?;
        let rows = sqlx::query("SELECT * FROM oncely_wal WHERE operation_id = ? ORDER BY seq")
            .bind(operation.id.0)
            .fetch_all(&self.reader)
            .await
            .map_err(database)?;
        rows.iter().map(wal_entry).collect()
    }
}
