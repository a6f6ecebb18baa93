//! Reconciliation of notifications with a receiver's record of what arrived (the simulated
//! receiver's `GET /v1/deliveries` format).
//!
//! The questions after an incident: did every notification we call delivered arrive, once,
//! signed, with what we sent? Did anything arrive that we never sent? Did the receiver turn
//! anything away?

use std::collections::{BTreeMap, HashMap};

use oncely::{Operation, OperationState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event as the receiver recorded it: once per `webhook-id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedEvent {
    /// Its `webhook-id`: the notification's key.
    pub webhook_id: String,
    /// The body's `type`.
    pub event_type: String,
    /// The body's `data`.
    pub data: Value,
    /// How many times it arrived (a repeat follows an answer that was lost).
    pub received: i64,
}

/// A request the receiver turned away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedRequest {
    /// Its `webhook-id`, if it had one.
    pub webhook_id: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a receiver recorded: `{"deliveries": [...], "rejections": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverRecord {
    /// Every event received.
    pub deliveries: Vec<ReceivedEvent>,
    /// Every request refused.
    pub rejections: Vec<RefusedRequest>,
}

/// What kind of mismatch was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscrepancyKind {
    /// A `COMPLETED` notification the receiver has no record of.
    CompletedNotDelivered,
    /// The receiver's event differs from the notification's type or payload.
    ContentMismatch,
    /// An event under an id no notification to this receiver has.
    DeliveredWithoutOperation,
    /// An event whose notification ended `FAILED` or `TIMEOUT`: it arrived, we think not.
    DeliveredButNotCompleted,
    /// The receiver turned a request away: a bad signature, an id reused for another event.
    RefusedByReceiver,
}

/// One mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    /// What kind.
    pub kind: DiscrepancyKind,
    /// The key (`webhook-id`) concerned.
    pub key: String,
    /// The particulars.
    pub detail: String,
}

/// The result of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationReport {
    /// Notifications to this receiver, by state.
    pub operations: BTreeMap<String, usize>,
    /// Events the receiver recorded (one per `webhook-id`).
    pub deliveries: usize,
    /// Events that arrived more than once and were acted on once (answers lost on the
    /// way back): not a discrepancy, the reason `webhook-id` exists.
    pub redelivered: usize,
    /// Every mismatch found; empty when the records agree.
    pub discrepancies: Vec<Discrepancy>,
    /// Keys of notifications still in flight.
    pub non_terminal: Vec<String>,
}

impl NotificationReport {
    /// Whether the records agree.
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

/// Whether `url` points at the receiver whose base URL is `receiver`.
fn addressed_to(url: &str, receiver: &str) -> bool {
    let receiver = receiver.trim_end_matches('/');
    url.strip_prefix(receiver)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Compares the notifications addressed to `receiver` (a base URL: those whose `url`
/// starts with it) with what that receiver recorded.
pub fn reconcile(
    operations: &[Operation],
    record: &ReceiverRecord,
    receiver: &str,
) -> NotificationReport {
    let received: HashMap<&str, &ReceivedEvent> = record
        .deliveries
        .iter()
        .map(|event| (event.webhook_id.as_str(), event))
        .collect();
    let mut report = NotificationReport {
        operations: BTreeMap::new(),
        deliveries: record.deliveries.len(),
        redelivered: record.deliveries.iter().filter(|e| e.received > 1).count(),
        discrepancies: Vec::new(),
        non_terminal: Vec::new(),
    };
    let mut known = HashMap::new();
    let ours = operations
        .iter()
        .filter(|op| addressed_to(op.payload["url"].as_str().unwrap_or_default(), receiver));
    let ids: Vec<(String, &Operation)> = ours
        .map(|op| (oncely_reqwest::webhook_id(&op.scope), op))
        .collect();
    for (key, operation) in &ids {
        let key = key.as_str();
        known.insert(key, ());
        *report
            .operations
            .entry(operation.state.as_str().to_owned())
            .or_default() += 1;
        let mut found = |kind, detail: String| {
            report.discrepancies.push(Discrepancy {
                kind,
                key: key.to_owned(),
                detail,
            });
        };
        let event = received.get(key);
        match (operation.state, event) {
            (OperationState::Completed, None) => found(
                DiscrepancyKind::CompletedNotDelivered,
                "COMPLETED, but the receiver has nothing under this webhook-id".into(),
            ),
            (OperationState::Completed, Some(event)) => {
                let sent_type = operation.payload["eventType"].as_str().unwrap_or_default();
                let sent_data = &operation.payload["payload"];
                if event.event_type != sent_type || event.data != *sent_data {
                    found(
                        DiscrepancyKind::ContentMismatch,
                        format!(
                            "sent {sent_type} {sent_data}, received {} {}",
                            event.event_type, event.data
                        ),
                    );
                }
            }
            (
                OperationState::Failed | OperationState::Timeout | OperationState::Cancelled,
                Some(_),
            ) => found(
                DiscrepancyKind::DeliveredButNotCompleted,
                format!("{}, but the receiver has it", operation.state),
            ),
            (
                OperationState::Failed | OperationState::Timeout | OperationState::Cancelled,
                None,
            ) => {}
            (OperationState::Accepted | OperationState::Processing, _) => {
                report.non_terminal.push(key.to_owned());
            }
        }
    }
    for event in &record.deliveries {
        if !known.contains_key(event.webhook_id.as_str()) {
            report.discrepancies.push(Discrepancy {
                kind: DiscrepancyKind::DeliveredWithoutOperation,
                key: event.webhook_id.clone(),
                detail: format!(
                    "{} arrived, no notification of ours sent it",
                    event.event_type
                ),
            });
        }
    }
    for refused in &record.rejections {
        report.discrepancies.push(Discrepancy {
            kind: DiscrepancyKind::RefusedByReceiver,
            key: refused.webhook_id.clone().unwrap_or_default(),
            detail: refused.reason.clone(),
        });
    }
    report
        .discrepancies
        .sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    report.non_terminal.sort();
    report
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use oncely::{DomainName, Fingerprint, IdempotencyKey, OperationId, Scope, TenantId};
    use serde_json::json;

    use super::*;

    const RECEIVER: &str = "http://127.0.0.1:9";

    fn notification(key: &str, state: OperationState, url: &str) -> Operation {
        let now = Utc::now();
        let payload =
            json!({ "url": url, "eventType": "order.shipped", "payload": { "order": 1 } });
        Operation {
            id: OperationId(1),
            scope: Scope::new(
                TenantId::default(),
                DomainName::new("NOTIFICATION").unwrap(),
                IdempotencyKey::new(key).unwrap(),
            ),
            event_type: "NOTIFICATION_REQUESTED".into(),
            state,
            fingerprint: Fingerprint::of_json(&payload),
            payload,
            attempt_count: 1,
            attempt_floor: 0,
            recorded_attempt: Some(1),
            last_attempt_at: Some(now),
            next_retry_at: None,
            lease: None,
            outcome_data: None,
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
            completed_at: Some(now),
            cancel_requested_at: None,
            traceparent: None,
        }
    }

    fn event(key: &str, data: Value, received: i64) -> ReceivedEvent {
        ReceivedEvent {
            webhook_id: key.into(),
            event_type: "order.shipped".into(),
            data,
            received,
        }
    }

    #[test]
    fn agreeing_records_are_clean_and_repeats_are_counted_not_blamed() {
        let hook = format!("{RECEIVER}/v1/webhooks");
        let operations = [
            notification("a", OperationState::Completed, &hook),
            notification("b", OperationState::Failed, &hook),
            notification("c", OperationState::Processing, &hook),
            // Elsewhere: not this receiver's business.
            notification(
                "d",
                OperationState::Completed,
                "http://127.0.0.1:99/v1/webhooks",
            ),
        ];
        let record = ReceiverRecord {
            deliveries: vec![event("a", json!({ "order": 1 }), 2)],
            rejections: Vec::new(),
        };
        let report = reconcile(&operations, &record, RECEIVER);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.deliveries, report.redelivered), (1, 1));
        assert_eq!(report.non_terminal, ["c"]);
        assert_eq!(report.operations.values().sum::<usize>(), 3);
    }

    #[test]
    fn every_kind_of_mismatch_is_found() {
        use DiscrepancyKind::*;
        let hook = format!("{RECEIVER}/v1/webhooks");
        let operations = [
            notification("lost", OperationState::Completed, &hook),
            notification("changed", OperationState::Completed, &hook),
            notification("timed-out", OperationState::Timeout, &hook),
        ];
        let record = ReceiverRecord {
            deliveries: vec![
                event("changed", json!({ "order": 2 }), 1),
                event("timed-out", json!({ "order": 1 }), 1),
                event("stranger", json!({}), 1),
            ],
            rejections: vec![RefusedRequest {
                webhook_id: Some("forged".into()),
                reason: "invalid signature: signature invalid".into(),
            }],
        };
        let report = reconcile(&operations, &record, RECEIVER);
        let kinds: Vec<DiscrepancyKind> = report.discrepancies.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                CompletedNotDelivered,
                ContentMismatch,
                DeliveredWithoutOperation,
                DeliveredButNotCompleted,
                RefusedByReceiver
            ]
        );
    }

    #[test]
    fn a_receiver_is_matched_by_its_whole_host_and_port() {
        assert!(addressed_to("http://h:80/v1/webhooks", "http://h:80"));
        assert!(addressed_to("http://h:80", "http://h:80/"));
        assert!(!addressed_to("http://h:8080/v1/webhooks", "http://h:80"));
    }
}
