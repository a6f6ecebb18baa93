//! The records a store keeps: an [`Operation`] per scope and its write-ahead log of
//! [`WalEntry`]s.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::key::{NodeId, Scope};
use crate::state::OperationState;
use crate::trace::TraceParent;

/// The store's number for an operation; unique within one store, rising with creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub i64);

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A digest of a command, to tell a replayed request from a different one under the same
/// key (I1). SHA-256 of the command's JSON, whose object keys serde_json keeps sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a JSON value.
    pub fn of_json(value: &Value) -> Self {
        let digest = Sha256::digest(value.to_string().as_bytes());
        let mut hex = String::with_capacity(digest.len() * 2);
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// A fingerprint read back from a store.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Who holds a lease: one name per engine instance, fresh at every start, so a restarted
/// process never mistakes its predecessor's lease for its own (I4). The name of a node's
/// incarnation is `node/incarnation`; a random one (`worker-…`) belongs to no node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseOwner(String);

impl LeaseOwner {
    /// A new, unique owner name.
    pub fn random() -> Self {
        Self(format!("worker-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A new incarnation of `node`: `node/` followed by the start time (milliseconds since
    /// the epoch, in hex, so that names sort by start) and a random suffix.
    pub fn incarnation(node: &NodeId) -> Self {
        let started = Utc::now().timestamp_millis();
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{node}/{started:x}-{}", &random[..8]))
    }

    /// An owner name read back from a store, or chosen by a test.
    pub fn from_stored(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The node this owner is an incarnation of, if any.
    pub fn node(&self) -> Option<&str> {
        self.0.split_once('/').map(|(node, _)| node)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's claim on an operation's current attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker.
    pub owner: LeaseOwner,
    /// When the claim lapses and the reaper may take the operation back.
    pub until: DateTime<Utc>,
}

/// The condition every write about an attempt carries (I4): the operation, the attempt
/// number and the lease owner. A worker whose lease was taken over matches no row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The operation.
    pub id: OperationId,
    /// The attempt number the worker was given at claim.
    pub attempt: u32,
    /// The worker.
    pub owner: LeaseOwner,
}

/// One operation, as the store has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// The store's number for it.
    pub id: OperationId,
    /// Tenant, domain and idempotency key.
    pub scope: Scope,
    /// What happened, in the domain's words (`PAYMENT_REQUESTED`).
    pub event_type: String,
    /// Where it is in its lifecycle.
    pub state: OperationState,
    /// The command, as JSON.
    pub payload: Value,
    /// The digest of the payload.
    pub fingerprint: Fingerprint,
    /// Attempts started so far, over the operation's whole life.
    pub attempt_count: u32,
    /// Attempts that an operator's retry wrote off: only `attempt_count - attempt_floor`
    /// count against the retry policy's limit.
    pub attempt_floor: u32,
    /// The attempt whose outcome is in the write-ahead log, if any. Equal to
    /// `attempt_count` while an outcome waits to be finalized.
    pub recorded_attempt: Option<u32>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When an `ACCEPTED` operation becomes due.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The current lease, while `PROCESSING`.
    pub lease: Option<Lease>,
    /// The `Ok` outcome's data, once `COMPLETED`.
    pub outcome_data: Option<Value>,
    /// The last error's code, if it had one.
    pub error_code: Option<String>,
    /// The last error, for people.
    pub error_message: Option<String>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
    /// When an operator asked to cancel it, if one did: no attempt starts after this one
    /// without first being turned into the cancel (see [`OperationState::Cancelled`]).
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The W3C trace context it was submitted under (or began, when none was given and
    /// spans are exported): every span of its life belongs to that trace.
    pub traceparent: Option<TraceParent>,
}

impl Operation {
    /// The fence of the current attempt, when a worker holds it.
    pub fn fence(&self) -> Option<Fence> {
        match (&self.state, &self.lease) {
            (OperationState::Processing, Some(lease)) => Some(Fence {
                id: self.id,
                attempt: self.attempt_count,
                owner: lease.owner.clone(),
            }),
            _ => None,
        }
    }

    /// Attempts that count against the retry policy.
    pub fn attempts_used(&self) -> u32 {
        self.attempt_count.saturating_sub(self.attempt_floor)
    }
}

/// What a write-ahead log entry records (I6: every state change has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WalKind {
    /// The operation was accepted.
    Accepted,
    /// A worker claimed it and is executing attempt `attempt`.
    Executing,
    /// The external API's outcome of attempt `attempt` (detail: the outcome). Written
    /// before anything else happens with it (I3).
    OutcomeRecorded,
    /// An outcome that arrived from a worker whose lease had been taken over: kept for the
    /// record, never applied (I4).
    OutcomeRejected,
    /// The recorded outcome was applied: the state changed (detail: the decision).
    Finalized,
    /// The reaper took back an expired lease (detail: the decision).
    Reaped,
    /// An operator sent a `FAILED` or `TIMEOUT` operation back to `ACCEPTED`.
    OperatorRetried,
    /// An operator cancelled an operation that no attempt was running: `CANCELLED`.
    OperatorCancelled,
    /// An operator asked to cancel an operation whose attempt is running (or whose last
    /// attempt's outcome is unknown): it ends `CANCELLED` unless that attempt succeeds.
    CancelRequested,
}

impl WalKind {
    /// Every kind.
    pub const ALL: [WalKind; 9] = [
        Self::Accepted,
        Self::Executing,
        Self::OutcomeRecorded,
        Self::OutcomeRejected,
        Self::Finalized,
        Self::Reaped,
        Self::OperatorRetried,
        Self::OperatorCancelled,
        Self::CancelRequested,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Executing => "EXECUTING",
            Self::OutcomeRecorded => "OUTCOME_RECORDED",
            Self::OutcomeRejected => "OUTCOME_REJECTED",
            Self::Finalized => "FINALIZED",
            Self::Reaped => "REAPED",
            Self::OperatorRetried => "OPERATOR_RETRIED",
            Self::OperatorCancelled => "OPERATOR_CANCELLED",
            Self::CancelRequested => "CANCEL_REQUESTED",
        }
    }

    /// The kind with this stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for WalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an operation's write-ahead log. Entries are only ever appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalEntry {
    /// Position in the log; rises with time.
    pub sequence: i64,
    /// The operation it is about.
    pub operation_id: OperationId,
    /// What happened.
    pub kind: WalKind,
    /// The attempt it is about (0 before the first claim).
    pub attempt: u32,
    /// The worker that wrote it, when a worker did.
    pub owner: Option<LeaseOwner>,
    /// The operation's state after the entry.
    pub state_after: OperationState,
    /// Kind-specific detail: the outcome, the decision, the reason.
    pub detail: Value,
    /// When it was written.
    pub recorded_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_object_key_order_and_sees_value_changes() {
        let a: Value = serde_json::from_str(r#"{"amount":"10.00","orderId":1}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"orderId":1,"amount":"10.00"}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"orderId":1,"amount":"10.01"}"#).unwrap();
        assert_eq!(Fingerprint::of_json(&a), Fingerprint::of_json(&b));
        assert_ne!(Fingerprint::of_json(&a), Fingerprint::of_json(&c));
        assert_eq!(Fingerprint::of_json(&a).as_str().len(), 64);
    }

    #[test]
    fn wal_kind_names_round_trip() {
        for kind in WalKind::ALL {
            assert_eq!(WalKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(WalKind::from_name("nope"), None);
    }

    #[test]
    fn lease_owners_are_unique() {
        assert_ne!(LeaseOwner::random(), LeaseOwner::random());
    }
}
