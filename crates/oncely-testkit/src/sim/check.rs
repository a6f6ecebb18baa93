//! The invariants, checked against the store's operations and log and the provider's
//! books between two steps of a run, and once more at its end.
//!
//! I5 (no transaction across the call) is a property of the types, not of a run:
//! `Orchestrator::execute` is given no store. Every other invariant is checked here.

use std::collections::BTreeMap;

use oncely::{Decision, Operation, OperationId, OperationState, WalEntry, WalKind};

use oncely::Orchestrator;

use super::world::{Books, Notices, declined, notice_key};

/// A broken invariant: which, and what shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `I1` … `I7`, or `once` for the provider's books.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

fn broken(invariant: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { invariant, detail })
}

/// What the clients know: each operation's command amount, and whether each was acked.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    /// The amount each key was first submitted with.
    pub(crate) amounts: BTreeMap<String, i64>,
    /// Keys whose submission a node acknowledged.
    pub(crate) acked: BTreeMap<String, AckCount>,
    /// What clients saw that no correct service would answer.
    pub(crate) complaints: Vec<Violation>,
}

/// How a key's submissions were answered.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AckCount {
    /// Answered as new.
    pub(crate) new: u32,
    /// Answered as a replay of an existing operation.
    pub(crate) replayed: u32,
}

/// Checks every invariant; `end` adds those that hold only once everything settled (I2).
pub(crate) fn check(
    operations: &[Operation],
    wal: &[WalEntry],
    books: &Books,
    clients: &Clients,
    end: bool,
) -> Result<(), Violation> {
    if let Some(complaint) = clients.complaints.first() {
        return Err(complaint.clone());
    }
    let mut log: BTreeMap<OperationId, Vec<&WalEntry>> = BTreeMap::new();
    for entry in wal {
        log.entry(entry.operation_id).or_default().push(entry);
    }
    let mut keys = BTreeMap::new();
    for operation in operations {
        let key = operation.scope.key.as_str();
        if keys
            .insert(operation.scope.to_string(), operation.id)
            .is_some()
        {
            return broken(
                "I1",
                format!("two operations hold scope {}", operation.scope),
            );
        }
        let answered_new = clients.acked.get(key).map_or(0, |ack| ack.new);
        if answered_new > 1 {
            return broken(
                "I1",
                format!("{key} was answered as new {answered_new} times"),
            );
        }
        let entries = log.get(&operation.id).map(Vec::as_slice).unwrap_or(&[]);
        check_log(operation, entries)?;
        if operation.scope.domain.as_str() == <Notices as Orchestrator>::DOMAIN {
            check_notice(operation, books)?;
        } else {
            check_books(operation, books, clients)?;
            check_outbox(operation, entries, operations)?;
        }
    }
    check_keys_sent(books)?;
    for (key, notice) in &books.notices {
        if !operations
            .iter()
            .any(|operation| operation.scope.key.as_str() == notice.operation)
        {
            return broken(
                "I2",
                format!("the receiver acted on {key}, which the store does not hold"),
            );
        }
    }
    for (key, charge) in &books.charges {
        if !operations
            .iter()
            .any(|operation| operation.scope.key.as_str() == charge.operation)
        {
            return broken(
                "I2",
                format!("the provider charged {key} for an operation the store does not hold"),
            );
        }
    }
    if end {
        if let Some(operation) = operations.iter().find(|o| !o.state.is_terminal()) {
            return broken(
                "I2",
                format!(
                    "{} is still {} after the faults stopped",
                    operation.scope, operation.state
                ),
            );
        }
        for key in clients.acked.keys() {
            let operation = operations.iter().find(|o| o.scope.key.as_str() == key);
            match operation {
                None => return broken("I2", format!("{key} was acknowledged, then lost")),
                Some(operation) if !operation.state.is_terminal() => {
                    return broken(
                        "I2",
                        format!(
                            "{key} is still {} after the faults stopped",
                            operation.state
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// I3, I4, I6 on one operation's log.
fn check_log(operation: &Operation, entries: &[&WalEntry]) -> Result<(), Violation> {
    let id = &operation.scope.key;
    let Some(first) = entries.first() else {
        return broken("I6", format!("{id} has no log"));
    };
    if first.kind != WalKind::Accepted {
        return broken("I6", format!("{id}'s log starts with {}", first.kind));
    }
    let mut state = OperationState::Accepted;
    let mut executing = 0;
    // Per attempt: its owner, whether its outcome was recorded (and the decision), how
    // it ended.
    let mut owners: BTreeMap<u32, &str> = BTreeMap::new();
    let mut recorded: BTreeMap<u32, Option<Decision>> = BTreeMap::new();
    let mut ended: BTreeMap<u32, WalKind> = BTreeMap::new();
    for entry in &entries[1..] {
        let owner = entry.owner.as_ref().map_or("", |owner| owner.as_str());
        let same_owner = || owners.get(&entry.attempt) == Some(&owner);
        match entry.kind {
            WalKind::Accepted => return broken("I6", format!("{id} was accepted twice")),
            WalKind::Executing => {
                executing += 1;
                if entry.attempt != executing {
                    return broken(
                        "I6",
                        format!(
                            "{id}: attempt {} started after {}",
                            entry.attempt,
                            executing - 1
                        ),
                    );
                }
                owners.insert(entry.attempt, owner);
            }
            WalKind::OutcomeRecorded => {
                if !same_owner() {
                    return broken(
                        "I4",
                        format!(
                            "{id}: attempt {}'s outcome recorded by {owner}",
                            entry.attempt
                        ),
                    );
                }
                if entry.attempt != executing || ended.contains_key(&entry.attempt) {
                    return broken(
                        "I4",
                        format!(
                            "{id}: an outcome of attempt {} recorded after that attempt ended",
                            entry.attempt
                        ),
                    );
                }
                let decision = entry
                    .detail
                    .get("decision")
                    .and_then(|d| serde_json::from_value(d.clone()).ok());
                // A record retried after an unknown commit logs the same outcome again;
                // another outcome for the same attempt would be a second answer.
                if let Some(earlier) = recorded.get(&entry.attempt)
                    && earlier != &decision
                {
                    return broken(
                        "I4",
                        format!(
                            "{id}: attempt {} recorded with two decisions",
                            entry.attempt
                        ),
                    );
                }
                recorded.insert(entry.attempt, decision);
            }
            WalKind::OutcomeRejected => {
                if entry.state_after != state {
                    return broken(
                        "I4",
                        format!("{id}: a rejected outcome moved it to {}", entry.state_after),
                    );
                }
                continue;
            }
            WalKind::Finalized | WalKind::Reaped => {
                if !same_owner() {
                    return broken(
                        "I4",
                        format!(
                            "{id}: attempt {} of {:?} ended by {owner}",
                            entry.attempt,
                            owners.get(&entry.attempt)
                        ),
                    );
                }
                if ended.insert(entry.attempt, entry.kind).is_some() {
                    return broken("I4", format!("{id}: attempt {} ended twice", entry.attempt));
                }
                check_end(id.as_str(), entry, recorded.get(&entry.attempt))?;
            }
            WalKind::OperatorRetried | WalKind::OperatorCancelled | WalKind::CancelRequested => {}
        }
        if !(entry.state_after == state || state.can_move_to(entry.state_after)) {
            return broken(
                "I6",
                format!(
                    "{id}: {} moved it from {state} to {}",
                    entry.kind, entry.state_after
                ),
            );
        }
        state = entry.state_after;
    }
    if state != operation.state {
        return broken(
            "I6",
            format!("{id} is {} but its log ends at {state}", operation.state),
        );
    }
    if operation.attempt_count != executing {
        return broken(
            "I6",
            format!(
                "{id} counts {} attempts, its log {executing}",
                operation.attempt_count
            ),
        );
    }
    if (operation.state == OperationState::Processing) != operation.lease.is_some() {
        return broken(
            "I4",
            format!(
                "{id} is {} with lease {:?}",
                operation.state, operation.lease
            ),
        );
    }
    if operation.state == OperationState::Completed {
        let last_end = ended.values().next_back();
        if last_end != Some(&WalKind::Finalized) {
            return broken("I3", format!("{id} completed without a finalized outcome"));
        }
    }
    Ok(())
}

/// I3 for one end of an attempt: a finalize applies the outcome recorded before it, and
/// exactly its decision; the Reaper never takes an attempt whose outcome was recorded.
fn check_end(
    id: &str,
    entry: &WalEntry,
    recorded: Option<&Option<Decision>>,
) -> Result<(), Violation> {
    match (entry.kind, recorded) {
        (WalKind::Finalized, None) => broken(
            "I3",
            format!(
                "{id}: attempt {} finalized before its outcome was in the log",
                entry.attempt
            ),
        ),
        (WalKind::Finalized, Some(decision)) => {
            let applied: Option<Decision> = serde_json::from_value(entry.detail.clone()).ok();
            if applied.is_none() || &applied != decision {
                return broken(
                    "I3",
                    format!(
                        "{id}: attempt {} applied another decision than it recorded",
                        entry.attempt
                    ),
                );
            }
            Ok(())
        }
        (WalKind::Reaped, Some(_)) => broken(
            "I3",
            format!(
                "{id}: attempt {}'s recorded outcome was reaped instead of finalized: lost",
                entry.attempt
            ),
        ),
        _ => Ok(()),
    }
}

/// Effectively once, against the provider's books: a completed payment was charged once
/// with its amount, a declined one never, nothing twice.
fn check_books(operation: &Operation, books: &Books, clients: &Clients) -> Result<(), Violation> {
    let key = operation.scope.key.as_str();
    let charges: Vec<_> = books
        .charges
        .values()
        .filter(|charge| charge.operation == key)
        .collect();
    if charges.len() > 1 {
        return broken("once", format!("{key} was charged {} times", charges.len()));
    }
    let amount = clients.amounts.get(key).copied();
    match operation.state {
        OperationState::Completed => match charges.first() {
            None => broken("once", format!("{key} is COMPLETED but was never charged")),
            Some(charge) if Some(charge.amount) != amount => broken(
                "once",
                format!("{key} was charged {} for {amount:?}", charge.amount),
            ),
            Some(_) => Ok(()),
        },
        OperationState::Failed if !charges.is_empty() => {
            broken("once", format!("{key} is FAILED but was charged"))
        }
        OperationState::Failed if amount.is_some_and(|amount| !declined(amount)) => {
            broken("once", format!("{key} FAILED though its card is good"))
        }
        _ => Ok(()),
    }
}

/// The outbox: a payment that ended has the notice of its end, inserted with the end (so
/// at every step, not eventually), and a notice exists only for a payment that ended.
fn check_outbox(
    payment: &Operation,
    entries: &[&WalEntry],
    operations: &[Operation],
) -> Result<(), Violation> {
    let key = payment.scope.key.as_str();
    let ended = entries.iter().any(|entry| {
        matches!(
            entry.kind,
            WalKind::Finalized | WalKind::Reaped | WalKind::OperatorCancelled
        ) && entry.state_after.is_terminal()
    });
    let notice = notice_key(key);
    let announced = operations.iter().find(|o| {
        o.scope.key.as_str() == notice
            && o.scope.domain.as_str() == <Notices as Orchestrator>::DOMAIN
    });
    match (ended, announced) {
        (true, None) => broken("outbox", format!("{key} ended without its notice")),
        (false, Some(_)) => broken("outbox", format!("{key} has a notice but never ended")),
        (_, Some(notice))
            if notice.payload.get("payment").and_then(|p| p.as_str()) != Some(key) =>
        {
            broken(
                "outbox",
                format!("{notice:?} announces another payment than {key}"),
            )
        }
        _ => Ok(()),
    }
}

/// A delivered notice reached the receiver (which acts on a key once, however often it
/// arrives).
fn check_notice(notice: &Operation, books: &Books) -> Result<(), Violation> {
    let key = notice.scope.key.as_str();
    if notice.state == OperationState::Completed && !books.notices.contains_key(key) {
        return broken("once", format!("{key} is COMPLETED but never arrived"));
    }
    if matches!(notice.state, OperationState::Failed) {
        return broken(
            "once",
            format!("{key} FAILED though the receiver never refuses"),
        );
    }
    Ok(())
}

/// I7: every attempt of an operation sent the provider the operation's own key.
fn check_keys_sent(books: &Books) -> Result<(), Violation> {
    for (operation, keys) in &books.keys_sent {
        if keys.iter().any(|key| key != operation) {
            return broken(
                "I7",
                format!("the attempts of {operation} sent the keys {keys:?}"),
            );
        }
    }
    Ok(())
}
