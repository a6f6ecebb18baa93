//! The engine's metrics, through the `metrics` facade (a no-op until the application
//! installs a recorder, as `oncely serve` does for `GET /metrics`). Every name starts with
//! `oncely_` and every series carries its `domain`.

use std::time::Duration;

use crate::key::DomainName;
use crate::outcome::Outcome;
use crate::state::OperationState;
use crate::store::Accepted;

/// Counts what an accept came to: new operations, replays, conflicts.
pub(crate) fn accepted(domain: &DomainName, accepted: &[Accepted]) {
    let (mut new, mut replayed, mut conflicts) = (0, 0, 0);
    for accepted in accepted {
        match accepted {
            Accepted::New(_) => new += 1,
            Accepted::Existing(_) => replayed += 1,
            Accepted::Conflict(_) => conflicts += 1,
        }
    }
    let domain = domain.to_string();
    metrics::counter!("oncely_operations_accepted_total", "domain" => domain.clone())
        .increment(new);
    metrics::counter!("oncely_operations_replayed_total", "domain" => domain.clone())
        .increment(replayed);
    metrics::counter!("oncely_operations_conflicts_total", "domain" => domain).increment(conflicts);
}

/// An operation this engine brought to a terminal state.
pub(crate) fn terminal(domain: &DomainName, state: OperationState) {
    metrics::counter!(
        "oncely_operations_terminal_total",
        "domain" => domain.to_string(),
        "state" => state.as_str(),
    )
    .increment(1);
}

/// One attempt's external call: its result (`ok`, `retry`, `fail`, or `unknown` when no
/// answer came) and how long it took.
pub(crate) fn attempt(domain: &DomainName, outcome: &Outcome, unknown: bool, took: Duration) {
    let result = match outcome {
        _ if unknown => "unknown",
        Outcome::Ok { .. } => "ok",
        Outcome::Retry { .. } => "retry",
        Outcome::Fail { .. } => "fail",
    };
    let domain = domain.to_string();
    metrics::counter!("oncely_attempts_total", "domain" => domain.clone(), "result" => result)
        .increment(1);
    metrics::histogram!("oncely_call_duration_seconds", "domain" => domain, "result" => result)
        .record(took.as_secs_f64());
}

/// Leases the Reaper took back.
pub(crate) fn rescued(domain: &DomainName, count: u64) {
    metrics::counter!("oncely_reaper_rescues_total", "domain" => domain.to_string())
        .increment(count);
}

/// Writes of a worker whose lease was taken over, refused by the fence (I4).
pub(crate) fn fenced(domain: &DomainName, count: u64) {
    metrics::counter!("oncely_fenced_writes_total", "domain" => domain.to_string())
        .increment(count);
}
