//! Turning stored columns into oncely's types, the same for every backend.
//!
//! Every backend's rows are read here, through [`Columns`], and checked, so that a row
//! edited by hand comes back as [`StoreError::Corrupt`] rather than as a panic or a wrong
//! operation.

use chrono::{DateTime, Utc};
use oncely::store::LIST_LIMIT_MAX;
use oncely::{
    Decision, DomainName, Fingerprint, IdempotencyKey, Lease, LeaseOwner, Operation, OperationId,
    OperationState, Outcome, Page, PendingOutcome, Scope, StoreError, TenantId, WalEntry, WalKind,
};
use serde_json::Value;

use crate::backend::Columns;

pub(crate) fn database(error: sqlx::Error) -> StoreError {
    StoreError::Database(Box::new(error))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// UTC milliseconds since the epoch: how every backend stores time.
pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn time(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| corrupt(format!("time {millis} ms")))
}

fn optional_time(millis: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(time).transpose()
}

fn count(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(format!("{what} = {value}")))
}

fn json(text: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|error| corrupt(format!("{what}: {error}")))
}

/// Text that the database returned as bytes (MySQL's binary-collated names).
pub(crate) fn utf8(column: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|error| corrupt(format!("{column}: {error}")))
}

/// An operation, read from the columns `sql::operation_columns` selects.
pub(crate) fn operation(row: &impl Columns) -> Result<Operation, StoreError> {
    let id = row.int("id")?;
    let scope = Scope::new(
        TenantId::new(row.text("tenant")?).map_err(corrupt)?,
        DomainName::new(row.text("domain")?).map_err(corrupt)?,
        IdempotencyKey::new(row.text("idem_key")?).map_err(corrupt)?,
    );
    let lease = match (row.text_opt("lease_owner")?, row.int_opt("lease_until")?) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: LeaseOwner::from_stored(owner),
            until: time(until)?,
        }),
        (None, None) => None,
        (owner, until) => {
            return Err(corrupt(format!(
                "operation {id} has lease owner {owner:?} and lease end {until:?}"
            )));
        }
    };
    Ok(Operation {
        id: OperationId(id),
        scope,
        event_type: row.text("event_type")?,
        state: row.text("state")?.parse().map_err(corrupt)?,
        payload: json(&row.text("payload")?, "payload")?,
        fingerprint: Fingerprint::from_stored(row.text("fingerprint")?),
        attempt_count: count(row.int("attempt_count")?, "attempt_count")?,
        attempt_floor: count(row.int("attempt_floor")?, "attempt_floor")?,
        recorded_attempt: row
            .int_opt("recorded_attempt")?
            .map(|attempt| count(attempt, "recorded_attempt"))
            .transpose()?,
        last_attempt_at: optional_time(row.int_opt("last_attempt_at")?)?,
        next_retry_at: optional_time(row.int_opt("next_retry_at")?)?,
        lease,
        outcome_data: row
            .text_opt("outcome_data")?
            .as_deref()
            .map(|text| json(text, "outcome_data"))
            .transpose()?,
        error_code: row.text_opt("error_code")?,
        error_message: row.text_opt("error_message")?,
        created_at: time(row.int("created_at")?)?,
        updated_at: time(row.int("updated_at")?)?,
        completed_at: optional_time(row.int_opt("completed_at")?)?,
        cancel_requested_at: optional_time(row.int_opt("cancel_requested_at")?)?,
        // A trace context that no longer parses is dropped: it only groups spans.
        traceparent: row
            .text_opt("traceparent")?
            .and_then(|text| text.parse().ok()),
    })
}

/// A write-ahead log entry, read from the columns of `sql::Statements::history`.
pub(crate) fn wal_entry(row: &impl Columns) -> Result<WalEntry, StoreError> {
    let kind = row.text("kind")?;
    Ok(WalEntry {
        sequence: row.int("seq")?,
        operation_id: OperationId(row.int("operation_id")?),
        kind: WalKind::from_name(&kind)
            .ok_or_else(|| corrupt(format!("log entry kind {kind:?}")))?,
        attempt: count(row.int("attempt")?, "attempt")?,
        owner: row.text_opt("lease_owner")?.map(LeaseOwner::from_stored),
        state_after: row.text("state_after")?.parse().map_err(corrupt)?,
        detail: json(&row.text("detail")?, "detail")?,
        recorded_at: time(row.int("recorded_at")?)?,
    })
}

/// An `OUTCOME_RECORDED` entry's detail: `{"outcome": …, "decision": …}`.
pub(crate) fn pending_outcome(
    operation: Operation,
    detail: &str,
) -> Result<PendingOutcome, StoreError> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        outcome: Outcome,
        decision: Decision,
    }
    let recorded: Recorded = serde_json::from_str(detail)
        .map_err(|error| corrupt(format!("recorded outcome of {}: {error}", operation.id)))?;
    Ok(PendingOutcome {
        operation,
        outcome: recorded.outcome,
        decision: recorded.decision,
    })
}

/// A page from `limit + 1` rows: the extra row only says there is more.
pub(crate) fn page(mut items: Vec<Operation>, limit: u32) -> Result<Page, StoreError> {
    let limit = usize::try_from(limit.min(LIST_LIMIT_MAX)).map_err(corrupt)?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|operation| operation.id)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The columns a decision writes.
pub(crate) struct DecisionColumns {
    pub(crate) state: OperationState,
    pub(crate) outcome_data: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) next_retry_at: Option<i64>,
    pub(crate) completed_at: Option<i64>,
}

pub(crate) fn decision_columns(decision: &Decision, now: DateTime<Utc>) -> DecisionColumns {
    let state = decision.target_state();
    let completed_at = state.is_terminal().then(|| millis(now));
    match decision {
        Decision::Complete { data } => DecisionColumns {
            state,
            outcome_data: Some(Value::Object(data.clone()).to_string()),
            error_code: None,
            error_message: None,
            next_retry_at: None,
            completed_at,
        },
        Decision::Fail { reason, code } => DecisionColumns {
            state,
            outcome_data: None,
            error_code: code.clone(),
            error_message: Some(oncely::store::error_message(reason)),
            next_retry_at: None,
            completed_at,
        },
        Decision::RetryAt { reason, at } => DecisionColumns {
            state,
            outcome_data: None,
            error_code: None,
            error_message: Some(oncely::store::error_message(reason)),
            next_retry_at: Some(millis(*at)),
            completed_at,
        },
        Decision::GiveUp { reason } | Decision::Cancel { reason } => DecisionColumns {
            state,
            outcome_data: None,
            error_code: None,
            error_message: Some(oncely::store::error_message(reason)),
            next_retry_at: None,
            completed_at,
        },
    }
}

/// The indexes of `items` sorted by `key`: batches touch rows in one order everywhere, so
/// two writers' batches cannot deadlock on each other.
pub(crate) fn order_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..items.len()).collect();
    indexes.sort_by_key(|&index| key(&items[index]));
    indexes
}
