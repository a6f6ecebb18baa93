//! Turning stored columns into oncely's types, the same for every backend.
//!
//! Each backend reads its columns into plain Rust values ([`OperationColumns`],
//! [`WalColumns`]); this module checks and converts them, so that a row edited by hand
//! comes back as [`StoreError::Corrupt`] rather than as a panic or a wrong operation.

use chrono::{DateTime, Utc};
use oncely::store::LIST_LIMIT_MAX;
use oncely::{
    Accepted, Decision, DomainName, Fenced, Fingerprint, IdempotencyKey, Lease, LeaseOwner,
    Operation, OperationId, OperationState, Outcome, Page, PendingOutcome, RecordOutcome, Scope,
    StoreError, TenantId, Transition, WalEntry, WalKind,
};
use serde_json::Value;

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

/// An operation row, as plain values.
pub(crate) struct OperationColumns {
    pub(crate) id: i64,
    pub(crate) tenant: String,
    pub(crate) domain: String,
    pub(crate) idem_key: String,
    pub(crate) event_type: String,
    pub(crate) state: String,
    pub(crate) payload: String,
    pub(crate) fingerprint: String,
    pub(crate) attempt_count: i64,
    pub(crate) attempt_floor: i64,
    pub(crate) recorded_attempt: Option<i64>,
    pub(crate) last_attempt_at: Option<i64>,
    pub(crate) next_retry_at: Option<i64>,
    pub(crate) lease_owner: Option<String>,
    pub(crate) lease_until: Option<i64>,
    pub(crate) outcome_data: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) completed_at: Option<i64>,
}

pub(crate) fn operation(columns: OperationColumns) -> Result<Operation, StoreError> {
    let scope = Scope::new(
        TenantId::new(columns.tenant).map_err(corrupt)?,
        DomainName::new(columns.domain).map_err(corrupt)?,
        IdempotencyKey::new(columns.idem_key).map_err(corrupt)?,
    );
    let lease = match (columns.lease_owner, columns.lease_until) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: LeaseOwner::from_stored(owner),
            until: time(until)?,
        }),
        (None, None) => None,
        (owner, until) => {
            return Err(corrupt(format!(
                "operation {} has lease owner {owner:?} and lease end {until:?}",
                columns.id
            )));
        }
    };
    Ok(Operation {
        id: OperationId(columns.id),
        scope,
        event_type: columns.event_type,
        state: columns.state.parse().map_err(corrupt)?,
        payload: json(&columns.payload, "payload")?,
        fingerprint: Fingerprint::from_stored(columns.fingerprint),
        attempt_count: count(columns.attempt_count, "attempt_count")?,
        attempt_floor: count(columns.attempt_floor, "attempt_floor")?,
        recorded_attempt: columns
            .recorded_attempt
            .map(|attempt| count(attempt, "recorded_attempt"))
            .transpose()?,
        last_attempt_at: optional_time(columns.last_attempt_at)?,
        next_retry_at: optional_time(columns.next_retry_at)?,
        lease,
        outcome_data: columns
            .outcome_data
            .as_deref()
            .map(|text| json(text, "outcome_data"))
            .transpose()?,
        error_code: columns.error_code,
        error_message: columns.error_message,
        created_at: time(columns.created_at)?,
        updated_at: time(columns.updated_at)?,
        completed_at: optional_time(columns.completed_at)?,
    })
}

/// A write-ahead log row, as plain values.
pub(crate) struct WalColumns {
    pub(crate) seq: i64,
    pub(crate) operation_id: i64,
    pub(crate) kind: String,
    pub(crate) attempt: i64,
    pub(crate) lease_owner: Option<String>,
    pub(crate) state_after: String,
    pub(crate) detail: String,
    pub(crate) recorded_at: i64,
}

pub(crate) fn wal_entry(columns: WalColumns) -> Result<WalEntry, StoreError> {
    Ok(WalEntry {
        sequence: columns.seq,
        operation_id: OperationId(columns.operation_id),
        kind: WalKind::from_name(&columns.kind)
            .ok_or_else(|| corrupt(format!("log entry kind {:?}", columns.kind)))?,
        attempt: count(columns.attempt, "attempt")?,
        owner: columns.lease_owner.map(LeaseOwner::from_stored),
        state_after: columns.state_after.parse().map_err(corrupt)?,
        detail: json(&columns.detail, "detail")?,
        recorded_at: time(columns.recorded_at)?,
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

/// The longest error message kept on the operation (the log keeps the whole reason).
pub(crate) const ERROR_MESSAGE_MAX: usize = 1_000;

fn message(reason: &str) -> String {
    match reason.char_indices().nth(ERROR_MESSAGE_MAX) {
        Some((end, _)) => reason[..end].to_owned(),
        None => reason.to_owned(),
    }
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
            error_message: Some(message(reason)),
            next_retry_at: None,
            completed_at,
        },
        Decision::RetryAt { reason, at } => DecisionColumns {
            state,
            outcome_data: None,
            error_code: None,
            error_message: Some(message(reason)),
            next_retry_at: Some(millis(*at)),
            completed_at,
        },
        Decision::GiveUp { reason } => DecisionColumns {
            state,
            outcome_data: None,
            error_code: None,
            error_message: Some(message(reason)),
            next_retry_at: None,
            completed_at,
        },
    }
}

/// One log entry to append; the caller's transaction makes it atomic with the change it
/// explains (I6).
pub(crate) struct Append<'a> {
    pub(crate) operation_id: OperationId,
    pub(crate) kind: WalKind,
    pub(crate) attempt: u32,
    pub(crate) owner: Option<&'a str>,
    pub(crate) state_after: OperationState,
    pub(crate) detail: String,
    pub(crate) now: DateTime<Utc>,
}

impl<'a> Append<'a> {
    pub(crate) fn accepted(created: &Operation, event_type: &str, now: DateTime<Utc>) -> Self {
        Self {
            operation_id: created.id,
            kind: WalKind::Accepted,
            attempt: 0,
            owner: None,
            state_after: OperationState::Accepted,
            detail: serde_json::json!({ "eventType": event_type }).to_string(),
            now,
        }
    }

    /// The detail of an `EXECUTING` entry: when its lease ends.
    pub(crate) fn executing_detail(lease_until: i64) -> Result<String, StoreError> {
        Ok(serde_json::json!({ "leaseUntil": time(lease_until)?.to_rfc3339() }).to_string())
    }

    pub(crate) fn executing(
        claimed: &Operation,
        owner: &'a LeaseOwner,
        lease_until: i64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            operation_id: claimed.id,
            kind: WalKind::Executing,
            attempt: claimed.attempt_count,
            owner: Some(owner.as_str()),
            state_after: OperationState::Processing,
            detail: Self::executing_detail(lease_until)?,
            now: claimed.updated_at,
        })
    }

    pub(crate) fn transition(
        transition: &'a Transition,
        kind: WalKind,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            operation_id: transition.fence.id,
            kind,
            attempt: transition.fence.attempt,
            owner: Some(transition.fence.owner.as_str()),
            state_after: transition.decision.target_state(),
            detail: serde_json::to_string(&transition.decision).map_err(corrupt)?,
            now: transition.now,
        })
    }

    pub(crate) fn operator_retried(
        before: &Operation,
        after: &Operation,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            operation_id: after.id,
            kind: WalKind::OperatorRetried,
            attempt: after.attempt_count,
            owner: None,
            state_after: OperationState::Accepted,
            detail: serde_json::json!({
                "previousState": before.state,
                "previousError": before.error_message,
            })
            .to_string(),
            now,
        }
    }
}

/// I1: the scope is taken; the same request is a replay, another one a conflict.
pub(crate) fn replay_or_conflict(existing: Operation, fingerprint: &Fingerprint) -> Accepted {
    if &existing.fingerprint == fingerprint {
        Accepted::Existing(existing)
    } else {
        Accepted::Conflict(existing)
    }
}

/// Only `FAILED` and `TIMEOUT` operations take an operator's retry.
pub(crate) fn check_retryable(operation: &Operation) -> Result<(), StoreError> {
    match operation.state {
        OperationState::Failed | OperationState::Timeout => {
            debug_assert!(operation.state.can_move_to(OperationState::Accepted));
            Ok(())
        }
        state @ (OperationState::Accepted
        | OperationState::Processing
        | OperationState::Completed) => Err(StoreError::NotRetryable {
            scope: operation.scope.clone(),
            state,
        }),
    }
}

/// The indexes of `items` sorted by `key`: batches touch rows in one order everywhere, so
/// two writers' batches cannot deadlock on each other.
pub(crate) fn order_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<usize> {
    let mut indexes: Vec<usize> = (0..items.len()).collect();
    indexes.sort_by_key(|&index| key(&items[index]));
    indexes
}

pub(crate) fn fenced(rows_affected: u64) -> Fenced {
    if rows_affected == 1 {
        Fenced::Applied
    } else {
        Fenced::Rejected
    }
}

/// A matched record is the outcome (I3); an unmatched one is kept for the record only (I4).
pub(crate) fn record_kind(fenced: Fenced) -> WalKind {
    match fenced {
        Fenced::Applied => WalKind::OutcomeRecorded,
        Fenced::Rejected => WalKind::OutcomeRejected,
    }
}

pub(crate) fn record_detail(record: &RecordOutcome) -> String {
    serde_json::json!({ "outcome": record.outcome, "decision": record.decision }).to_string()
}

/// What else a fenced move out of `PROCESSING` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Finalize: the attempt's outcome is in the log (WAL first, I3).
    Recorded,
    /// Reap: the lease has ended and no outcome of the attempt is in the log (I3).
    Reapable,
}
