//! The rows of each batch, as the statements of `sql` read them: one struct per column
//! table there, serialized as the JSON array bound to the statement's batch parameter.
//! A test checks that each struct has exactly its table's columns.
//!
//! Fields are in the order they are serialized, short ones first: a database that finds a
//! column by scanning its row object (MySQL's `JSON_TABLE`) then skips no long text to
//! reach the short ones.

use chrono::{DateTime, Utc};
use oncely::{Decision, Fence, OperationState, RecordOutcome, StoreError, Transition};
use serde::Serialize;

use crate::backend::Param;
use crate::rows::{self, millis};

/// `rows` as a batch parameter.
pub(crate) fn param<T: Serialize>(rows: &[T]) -> Result<Param, StoreError> {
    serde_json::to_string(rows)
        .map(Param::Text)
        .map_err(|error| StoreError::Corrupt(format!("a batch cannot be written: {error}")))
}

/// `sql::ACCEPT`.
#[derive(Debug, Serialize)]
pub(crate) struct AcceptRow<'a> {
    pub(crate) ord: usize,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    pub(crate) lease_until: Option<i64>,
    pub(crate) last_attempt_at: Option<i64>,
    pub(crate) state: &'static str,
    pub(crate) tenant: &'a str,
    pub(crate) domain: &'a str,
    pub(crate) idem_key: &'a str,
    pub(crate) owner: Option<&'a str>,
    pub(crate) fingerprint: &'a str,
    pub(crate) traceparent: Option<String>,
    pub(crate) event_type: &'a str,
    pub(crate) accepted: String,
    pub(crate) executing: Option<String>,
    pub(crate) payload: String,
}

/// `sql::INSERTED`.
#[derive(Debug, Serialize)]
pub(crate) struct InsertedRow<'a> {
    pub(crate) id: i64,
    pub(crate) owner: Option<&'a str>,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    pub(crate) accepted: String,
    pub(crate) executing: Option<String>,
}

/// `sql::SCOPE`.
#[derive(Debug, Serialize)]
pub(crate) struct ScopeRow<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) domain: &'a str,
    pub(crate) idem_key: &'a str,
}

/// `sql::ID`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct IdRow {
    pub(crate) id: i64,
    pub(crate) attempt: i64,
}

/// `sql::LEASE`, and with `id` `sql::CLAIM`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LeaseRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<i64>,
    pub(crate) owner: &'a str,
    pub(crate) lease_until: i64,
    pub(crate) at: i64,
    pub(crate) detail: String,
}

/// `sql::ACTION`.
#[derive(Debug, Serialize)]
pub(crate) struct ActionRow<'a> {
    pub(crate) id: i64,
    pub(crate) state: &'a str,
    pub(crate) at: i64,
}

/// `sql::CANCEL`.
#[derive(Debug, Serialize)]
pub(crate) struct CancelRow<'a> {
    pub(crate) id: i64,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    pub(crate) next_retry_at: Option<i64>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) state: &'a str,
    pub(crate) to_state: &'a str,
}

/// `sql::ENTRY`.
#[derive(Debug, Serialize)]
pub(crate) struct EntryRow<'a> {
    pub(crate) n: usize,
    pub(crate) operation_id: i64,
    pub(crate) kind: &'static str,
    pub(crate) attempt: i64,
    pub(crate) lease_owner: Option<&'a str>,
    pub(crate) state_after: &'static str,
    pub(crate) detail: String,
    pub(crate) recorded_at: i64,
}

/// `sql::WRITE`: the fence, the time, the decision's columns, the entries' details; with
/// `applied`, `sql::WRITTEN`.
#[derive(Debug, Serialize)]
pub(crate) struct WriteRow<'a> {
    pub(crate) id: i64,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) applied: Option<i64>,
    pub(crate) next_retry_at: Option<i64>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) state: Option<&'static str>,
    pub(crate) owner: &'a str,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) finalized: Option<String>,
    pub(crate) recorded: Option<String>,
    pub(crate) outcome_data: Option<String>,
}

impl<'a> WriteRow<'a> {
    fn new(
        fence: &'a Fence,
        now: DateTime<Utc>,
        decision: Option<&Decision>,
        recorded: Option<String>,
    ) -> Result<Self, StoreError> {
        let mut row = Self {
            id: fence.id.0,
            attempt: i64::from(fence.attempt),
            at: millis(now),
            applied: None,
            next_retry_at: None,
            completed_at: None,
            state: None,
            owner: fence.owner.as_str(),
            error_code: None,
            error_message: None,
            finalized: None,
            recorded,
            outcome_data: None,
        };
        if let Some(decision) = decision {
            let columns = rows::decision_columns(decision, now);
            debug_assert!(OperationState::Processing.can_move_to(columns.state));
            row.state = Some(columns.state.as_str());
            row.outcome_data = columns.outcome_data;
            row.error_code = columns.error_code;
            row.error_message = columns.error_message;
            row.next_retry_at = columns.next_retry_at;
            row.completed_at = columns.completed_at;
            row.finalized = Some(
                serde_json::to_string(decision)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))?,
            );
        }
        Ok(row)
    }

    /// A finalize's or a reap's rows, in id order: two writers lock shared rows in one
    /// order.
    pub(crate) fn transitions(batch: &'a [Transition]) -> Result<Vec<Self>, StoreError> {
        rows::order_by(batch, |transition| transition.fence.id)
            .into_iter()
            .map(|index| &batch[index])
            .map(|t| Self::new(&t.fence, t.now, Some(&t.decision), None))
            .collect()
    }

    /// A record's rows (with the decision for a settle), in id order.
    pub(crate) fn records(
        batch: &'a [RecordOutcome],
        with_decision: bool,
    ) -> Result<Vec<Self>, StoreError> {
        rows::order_by(batch, |record| record.fence.id)
            .into_iter()
            .map(|index| &batch[index])
            .map(|record| {
                Self::new(
                    &record.fence,
                    record.now,
                    with_decision.then_some(&record.decision),
                    Some(oncely::store::recorded_detail(record).to_string()),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;

    use super::*;
    use crate::dialect::Column;
    use crate::sql;

    fn keys<T: Serialize>(row: &T) -> Vec<String> {
        match serde_json::to_value(row).unwrap() {
            Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("{other:?}"),
        }
    }

    fn names(columns: &[Column]) -> Vec<String> {
        let mut names: Vec<String> = columns.iter().map(|c| c.name.to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn every_row_has_exactly_the_columns_its_statements_read() {
        let accept = AcceptRow {
            ord: 0,
            tenant: "",
            domain: "",
            idem_key: "",
            event_type: "",
            state: "",
            payload: String::new(),
            fingerprint: "",
            traceparent: None,
            attempt: 0,
            owner: None,
            lease_until: None,
            last_attempt_at: None,
            at: 0,
            accepted: String::new(),
            executing: None,
        };
        assert_eq!(keys(&accept), names(sql::ACCEPT));
        let inserted = InsertedRow {
            id: 0,
            owner: None,
            attempt: 0,
            at: 0,
            accepted: String::new(),
            executing: None,
        };
        assert_eq!(keys(&inserted), names(sql::INSERTED));
        let scope = ScopeRow {
            tenant: "",
            domain: "",
            idem_key: "",
        };
        assert_eq!(keys(&scope), names(sql::SCOPE));
        assert_eq!(keys(&IdRow { id: 0, attempt: 0 }), names(sql::ID));
        let lease = LeaseRow {
            id: None,
            owner: "",
            lease_until: 0,
            at: 0,
            detail: String::new(),
        };
        assert_eq!(keys(&lease), names(sql::LEASE));
        let claim = LeaseRow {
            id: Some(1),
            ..lease
        };
        assert_eq!(keys(&claim), names(sql::CLAIM));
        let action = ActionRow {
            id: 0,
            state: "",
            at: 0,
        };
        assert_eq!(keys(&action), names(sql::ACTION));
        let cancel = CancelRow {
            id: 0,
            attempt: 0,
            at: 0,
            next_retry_at: None,
            completed_at: None,
            state: "",
            to_state: "",
        };
        assert_eq!(keys(&cancel), names(sql::CANCEL));
        let entry = EntryRow {
            n: 0,
            operation_id: 0,
            kind: "",
            attempt: 0,
            lease_owner: None,
            state_after: "",
            detail: String::new(),
            recorded_at: 0,
        };
        assert_eq!(keys(&entry), names(sql::ENTRY));
        let fence = Fence {
            id: oncely::OperationId(1),
            attempt: 1,
            owner: oncely::LeaseOwner::from_stored("w"),
        };
        let mut write = WriteRow::new(&fence, Utc::now(), None, None).unwrap();
        assert_eq!(keys(&write), names(sql::WRITE));
        write.applied = Some(1);
        let written = keys(&write);
        for column in names(sql::WRITTEN) {
            assert!(
                written.contains(&column),
                "{column} missing from {written:?}"
            );
        }
    }
}
