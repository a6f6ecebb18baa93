//! The JSON shapes the API answers with.

use chrono::{DateTime, Utc};
use oncely::{Operation, Page, WalEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An operation, as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationView {
    /// The idempotency key.
    pub key: String,
    /// The tenant.
    pub tenant: String,
    /// The domain (`PAYMENT`).
    pub domain: String,
    /// The event type (`PAYMENT_REQUESTED`).
    pub event_type: String,
    /// `ACCEPTED`, `PROCESSING`, `COMPLETED`, `FAILED`, `TIMEOUT` or `CANCELLED`.
    pub state: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// The command as accepted.
    pub request: Value,
    /// The external API's answer, once `COMPLETED` (`transactionId`, `approvalCode`, …).
    pub outcome: Option<Value>,
    /// The last error, if any.
    pub error: Option<ErrorView>,
    /// When an `ACCEPTED` operation is next due.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
    /// When an operator asked to cancel it, if one did.
    #[serde(default)]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The id of the trace every span of its life belongs to (the `traceparent` it was
    /// submitted under, or the one it began).
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// An operation's last error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorView {
    /// A stable code, when the API gave one.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

impl From<&Operation> for OperationView {
    fn from(operation: &Operation) -> Self {
        let error = operation.error_message.as_ref().map(|message| ErrorView {
            code: operation.error_code.clone(),
            message: message.clone(),
        });
        Self {
            key: operation.scope.key.to_string(),
            tenant: operation.scope.tenant.to_string(),
            domain: operation.scope.domain.to_string(),
            event_type: operation.event_type.clone(),
            state: operation.state.as_str().to_owned(),
            attempts: operation.attempt_count,
            request: operation.payload.clone(),
            outcome: operation.outcome_data.clone(),
            error,
            next_retry_at: operation.next_retry_at,
            created_at: operation.created_at,
            updated_at: operation.updated_at,
            completed_at: operation.completed_at,
            cancel_requested_at: operation.cancel_requested_at,
            trace_id: operation.traceparent.map(|parent| parent.trace_id()),
        }
    }
}

/// What one page of a bulk retry or cancel did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkView {
    /// Operations on this page that the selection matched.
    pub matched: usize,
    /// Of those, how many were retried or cancelled.
    pub done: usize,
    /// Those that were not, and why.
    pub failed: Vec<BulkFailure>,
    /// Pass as `cursor` to act on the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// An operation a bulk action could not act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkFailure {
    /// Its idempotency key.
    pub key: String,
    /// The problem type, as a single action would have answered it.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened.
    pub detail: String,
}

/// One page of operations, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageView {
    /// The operations.
    pub items: Vec<OperationView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

impl From<&Page> for PageView {
    fn from(page: &Page) -> Self {
        Self {
            items: page.items.iter().map(OperationView::from).collect(),
            next_cursor: page.next.map(|id| id.to_string()),
        }
    }
}

/// One write-ahead log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WalEntryView {
    /// Position in the log.
    pub sequence: i64,
    /// What happened (`ACCEPTED`, `EXECUTING`, `OUTCOME_RECORDED`, …).
    pub kind: String,
    /// The attempt it is about.
    pub attempt: u32,
    /// The worker that wrote it.
    pub owner: Option<String>,
    /// The state after it.
    pub state_after: String,
    /// The outcome, decision or reason.
    pub detail: Value,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// An operation's write-ahead log, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    /// The idempotency key.
    pub key: String,
    /// The entries.
    pub entries: Vec<WalEntryView>,
}

impl HistoryView {
    /// The view of `entries`.
    pub fn new(key: &str, entries: &[WalEntry]) -> Self {
        let entries = entries
            .iter()
            .map(|entry| WalEntryView {
                sequence: entry.sequence,
                kind: entry.kind.as_str().to_owned(),
                attempt: entry.attempt,
                owner: entry.owner.as_ref().map(ToString::to_string),
                state_after: entry.state_after.as_str().to_owned(),
                detail: entry.detail.clone(),
                recorded_at: entry.recorded_at,
            })
            .collect();
        Self {
            key: key.to_owned(),
            entries,
        }
    }
}

/// How one domain stands for the asking key's tenant (`GET /v1/overview`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainOverviewView {
    /// Where its routes are: `/v1/{resource}`.
    pub resource: String,
    /// The domain (`PAYMENT`).
    pub domain: String,
    /// Operations by state, every state named, zeros included.
    pub states: std::collections::BTreeMap<String, u64>,
    /// `ACCEPTED` operations that have had an attempt: waiting for a retry.
    pub retrying: u64,
    /// `PROCESSING` operations past their lease that the Reaper has not taken back yet.
    pub stuck: u64,
    /// When the oldest operation that is due now became due.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Operations that ended within the window.
    pub ended: u64,
    /// Leases the Reaper took back within the window.
    pub rescued: u64,
}

/// Every domain of the service, for the asking key's tenant (`GET /v1/overview`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverviewView {
    /// The tenant counted.
    pub tenant: String,
    /// When the counts were taken.
    pub now: DateTime<Utc>,
    /// The start of the window that `ended` and `rescued` count.
    pub since: DateTime<Utc>,
    /// One entry per domain, in the order the service mounts them.
    pub domains: Vec<DomainOverviewView>,
}

impl DomainOverviewView {
    /// The view of `overview`, served under `resource`.
    pub fn new(resource: &str, overview: oncely::DomainOverview) -> Self {
        Self {
            resource: resource.to_owned(),
            domain: overview.domain,
            states: overview.states,
            retrying: overview.retrying,
            stuck: overview.stuck,
            oldest_due: overview.oldest_due,
            ended: overview.ended_since,
            rescued: overview.rescued_since,
        }
    }
}
