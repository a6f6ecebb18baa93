//! Reconciliation of payment operations against a gateway's ledger.
//!
//! The questions an operator asks after an incident: was every completed payment charged
//! exactly once, with the amount and transaction id we recorded? Was anyone charged without
//! a payment of ours saying so? Is anything still in flight?

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use oncely::{Operation, OperationState};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One charge in a gateway ledger (the simulated gateway's `GET /v1/ledger` format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerCharge {
    /// The idempotency key it was made under.
    pub idempotency_key: String,
    /// The gateway's transaction id.
    pub transaction_id: String,
    /// The amount charged.
    pub amount: Decimal,
    /// The currency.
    pub currency: String,
}

/// A ledger document: `{"charges": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerDocument {
    /// Every charge.
    pub charges: Vec<LedgerCharge>,
}

/// What kind of mismatch was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscrepancyKind {
    /// A `COMPLETED` payment with no charge under its key.
    CompletedWithoutCharge,
    /// A key charged more than once.
    ChargedTwice,
    /// The charge's transaction id is not the one the operation recorded.
    TransactionMismatch,
    /// The charge's amount or currency differs from the operation's.
    AmountMismatch,
    /// A charge under a key no operation has.
    ChargeWithoutOperation,
    /// A charge whose operation ended `FAILED` or `TIMEOUT`: the customer paid, we think not.
    ChargedButNotCompleted,
    /// A payment that ended `COMPLETED` or `FAILED` with no `payment.completed` /
    /// `payment.failed` notification, though payment events are on.
    EventMissing,
}

/// One mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    /// What kind.
    pub kind: DiscrepancyKind,
    /// The idempotency key concerned.
    pub key: String,
    /// The particulars.
    pub detail: String,
}

/// The result of an audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// Operations by state.
    pub operations: BTreeMap<String, usize>,
    /// Charges in the ledger.
    pub charges: usize,
    /// Every mismatch found; empty when the books agree.
    pub discrepancies: Vec<Discrepancy>,
    /// Keys of operations that are not terminal yet (not discrepancies: still in flight).
    pub non_terminal: Vec<String>,
}

impl AuditReport {
    /// Whether the books agree.
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

/// Compares payment operations with the ledger's charges.
pub fn reconcile(operations: &[Operation], charges: &[LedgerCharge]) -> AuditReport {
    let mut by_key: HashMap<&str, Vec<&LedgerCharge>> = HashMap::new();
    for charge in charges {
        by_key
            .entry(charge.idempotency_key.as_str())
            .or_default()
            .push(charge);
    }
    let mut report = AuditReport {
        operations: BTreeMap::new(),
        charges: charges.len(),
        discrepancies: Vec::new(),
        non_terminal: Vec::new(),
    };
    let mut known = HashMap::new();
    for operation in operations {
        let key = operation.scope.key.as_str();
        known.insert(key, ());
        *report
            .operations
            .entry(operation.state.as_str().to_owned())
            .or_default() += 1;
        let found = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        if found.len() > 1 {
            report.discrepancies.push(Discrepancy {
                kind: DiscrepancyKind::ChargedTwice,
                key: key.to_owned(),
                detail: format!("{} charges", found.len()),
            });
        }
        match operation.state {
            OperationState::Completed => check_completed(operation, found, &mut report),
            OperationState::Failed | OperationState::Timeout | OperationState::Cancelled => {
                if let Some(charge) = found.first() {
                    report.discrepancies.push(Discrepancy {
                        kind: DiscrepancyKind::ChargedButNotCompleted,
                        key: key.to_owned(),
                        detail: format!(
                            "{} but charged {} {} as {}",
                            operation.state, charge.amount, charge.currency, charge.transaction_id
                        ),
                    });
                }
            }
            OperationState::Accepted | OperationState::Processing => {
                report.non_terminal.push(key.to_owned());
            }
        }
    }
    for charge in charges {
        if !known.contains_key(charge.idempotency_key.as_str()) {
            report.discrepancies.push(Discrepancy {
                kind: DiscrepancyKind::ChargeWithoutOperation,
                key: charge.idempotency_key.clone(),
                detail: format!(
                    "{} {} as {}",
                    charge.amount, charge.currency, charge.transaction_id
                ),
            });
        }
    }
    report
        .discrepancies
        .sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    report.non_terminal.sort();
    report
}

/// The payments among `payments` that ended `COMPLETED` or `FAILED` without the
/// notification announcing it among `notifications` (for services that send payment
/// events: [`PaymentOrchestrator::with_events`](crate::PaymentOrchestrator::with_events)).
pub fn missing_events(payments: &[Operation], notifications: &[Operation]) -> Vec<Discrepancy> {
    let sent: HashMap<&str, &Operation> = notifications
        .iter()
        .map(|n| (n.scope.key.as_str(), n))
        .collect();
    let mut missing: Vec<Discrepancy> = payments
        .iter()
        .filter_map(|payment| {
            let suffix = crate::event_suffix(payment.state)?;
            let key = crate::event_key(payment.scope.key.as_str(), suffix);
            let announced = sent
                .get(key.as_str())
                .is_some_and(|n| n.scope.tenant == payment.scope.tenant);
            (!announced).then(|| Discrepancy {
                kind: DiscrepancyKind::EventMissing,
                key: payment.scope.key.to_string(),
                detail: format!("{}, but no notification {key}", payment.state),
            })
        })
        .collect();
    missing.sort_by(|a, b| a.key.cmp(&b.key));
    missing
}

fn check_completed(operation: &Operation, found: &[&LedgerCharge], report: &mut AuditReport) {
    let key = operation.scope.key.as_str();
    let Some(charge) = found.first() else {
        report.discrepancies.push(Discrepancy {
            kind: DiscrepancyKind::CompletedWithoutCharge,
            key: key.to_owned(),
            detail: "COMPLETED, but the ledger has no charge under this key".into(),
        });
        return;
    };
    let recorded = operation
        .outcome_data
        .as_ref()
        .and_then(|data| data["transactionId"].as_str())
        .unwrap_or_default();
    if recorded != charge.transaction_id {
        report.discrepancies.push(Discrepancy {
            kind: DiscrepancyKind::TransactionMismatch,
            key: key.to_owned(),
            detail: format!("recorded {recorded:?}, ledger {:?}", charge.transaction_id),
        });
    }
    let amount = operation.payload["amount"]
        .as_str()
        .and_then(|amount| Decimal::from_str(amount).ok());
    let currency = operation.payload["currency"].as_str().unwrap_or_default();
    if amount != Some(charge.amount) || currency != charge.currency {
        report.discrepancies.push(Discrepancy {
            kind: DiscrepancyKind::AmountMismatch,
            key: key.to_owned(),
            detail: format!(
                "requested {} {currency}, charged {} {}",
                operation.payload["amount"], charge.amount, charge.currency
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use oncely::{DomainName, Fingerprint, IdempotencyKey, OperationId, Scope, TenantId};
    use serde_json::json;

    use super::*;

    fn operation(key: &str, state: OperationState, transaction: Option<&str>) -> Operation {
        let now = Utc::now();
        let payload = json!({ "amount": "10.00", "currency": "USD" });
        Operation {
            id: OperationId(1),
            scope: Scope::new(
                TenantId::default(),
                DomainName::new("PAYMENT").unwrap(),
                IdempotencyKey::new(key).unwrap(),
            ),
            event_type: "PAYMENT_REQUESTED".into(),
            state,
            fingerprint: Fingerprint::of_json(&payload),
            payload,
            attempt_count: 1,
            attempt_floor: 0,
            recorded_attempt: Some(1),
            last_attempt_at: Some(now),
            next_retry_at: None,
            lease: None,
            outcome_data: transaction.map(|t| json!({ "transactionId": t })),
            error_code: None,
            error_message: None,
            created_at: now,
            updated_at: now,
            completed_at: Some(now),
            cancel_requested_at: None,
            traceparent: None,
        }
    }

    fn charge(key: &str, transaction: &str, amount: &str) -> LedgerCharge {
        LedgerCharge {
            idempotency_key: key.into(),
            transaction_id: transaction.into(),
            amount: Decimal::from_str(amount).unwrap(),
            currency: "USD".into(),
        }
    }

    fn kinds(report: &AuditReport) -> Vec<DiscrepancyKind> {
        report.discrepancies.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn agreeing_books_are_clean() {
        let operations = [
            operation("a", OperationState::Completed, Some("t1")),
            operation("b", OperationState::Failed, None),
            operation("c", OperationState::Accepted, None),
        ];
        let report = reconcile(&operations, &[charge("a", "t1", "10")]);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.non_terminal, ["c"]);
        assert_eq!(report.operations["COMPLETED"], 1);
    }

    #[test]
    fn every_kind_of_mismatch_is_found() {
        use DiscrepancyKind::*;
        let operations = [
            operation("no-charge", OperationState::Completed, Some("t0")),
            operation("twice", OperationState::Completed, Some("t1")),
            operation("other-tx", OperationState::Completed, Some("t2")),
            operation("other-amount", OperationState::Completed, Some("t3")),
            operation("timed-out", OperationState::Timeout, None),
        ];
        let charges = [
            charge("twice", "t1", "10"),
            charge("twice", "t1b", "10"),
            charge("other-tx", "tX", "10"),
            charge("other-amount", "t3", "10.01"),
            charge("timed-out", "t4", "10"),
            charge("stranger", "t5", "10"),
        ];
        let report = reconcile(&operations, &charges);
        assert_eq!(
            kinds(&report),
            [
                CompletedWithoutCharge,
                ChargedTwice,
                TransactionMismatch,
                AmountMismatch,
                ChargeWithoutOperation,
                ChargedButNotCompleted
            ]
        );
        assert!(!report.is_clean());
    }

    #[test]
    fn a_payment_that_ended_without_its_event_is_found() {
        let payments = [
            operation("p1", OperationState::Completed, Some("t1")),
            operation("p2", OperationState::Failed, None),
            operation("p3", OperationState::Completed, Some("t3")),
            // Neither ended for good nor announced.
            operation("p4", OperationState::Timeout, None),
        ];
        let notifications = [
            operation("p1:completed", OperationState::Completed, None),
            operation("p2:failed", OperationState::Accepted, None),
            // Announced the wrong way.
            operation("p3:failed", OperationState::Completed, None),
        ];
        let missing = missing_events(&payments, &notifications);
        let keys: Vec<&str> = missing.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["p3"]);
        assert_eq!(missing[0].kind, DiscrepancyKind::EventMissing);
    }
}
