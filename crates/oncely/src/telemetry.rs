//! The engine's metrics, through the `metrics` facade (a no-op until the application
//! installs a recorder, as `oncely serve` does for `GET /metrics`). Every name starts with
//! `oncely_` and every series carries its `domain`.
//!
//! The handles are registered once, when the engine starts, so the hot path only adds to
//! them: install the recorder before starting engines.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Counter, Gauge, Histogram};

use crate::key::DomainName;
use crate::outcome::Outcome;
use crate::state::OperationState;
use crate::store::{Accepted, Backlog};

/// The results an attempt's call is counted by.
const RESULTS: [&str; 4] = ["ok", "retry", "fail", "unknown"];
/// The store steps whose statements are timed and whose batches are sized: what the
/// engine hands the store, in lifecycle order.
pub(crate) const STEPS: [&str; 5] = ["accept", "claim", "settle", "finalize", "reap"];
/// The terminal states.
const TERMINAL: [OperationState; 4] = [
    OperationState::Completed,
    OperationState::Failed,
    OperationState::Timeout,
    OperationState::Cancelled,
];

/// One engine's metric handles.
pub(crate) struct Telemetry {
    accepted: Counter,
    replayed: Counter,
    conflicts: Counter,
    terminal: [Counter; 4],
    attempts: [Counter; 4],
    durations: [Histogram; 4],
    rescued: Counter,
    fenced: Counter,
    /// Due, waiting, processing.
    backlog: [Gauge; 3],
    oldest_due: Gauge,
    /// By step, as [`STEPS`].
    store_seconds: [Histogram; 5],
    batch_sizes: [Histogram; 5],
}

impl Telemetry {
    /// Registers the handles of `domain` with the installed recorder.
    pub(crate) fn new(domain: &DomainName) -> Self {
        let domain = domain.to_string();
        let counter = |name: &'static str| metrics::counter!(name, "domain" => domain.clone());
        Self {
            accepted: counter("oncely_operations_accepted_total"),
            replayed: counter("oncely_operations_replayed_total"),
            conflicts: counter("oncely_operations_conflicts_total"),
            terminal: TERMINAL.map(|state| {
                metrics::counter!("oncely_operations_terminal_total", "domain" => domain.clone(), "state" => state.as_str())
            }),
            attempts: RESULTS.map(|result| {
                metrics::counter!("oncely_attempts_total", "domain" => domain.clone(), "result" => result)
            }),
            durations: RESULTS.map(|result| {
                metrics::histogram!("oncely_call_duration_seconds", "domain" => domain.clone(), "result" => result)
            }),
            rescued: counter("oncely_reaper_rescues_total"),
            fenced: counter("oncely_fenced_writes_total"),
            backlog: ["due", "waiting", "processing"].map(|state| {
                metrics::gauge!("oncely_backlog", "domain" => domain.clone(), "state" => state)
            }),
            oldest_due: metrics::gauge!("oncely_oldest_due_seconds", "domain" => domain.clone()),
            store_seconds: STEPS.map(|step| {
                metrics::histogram!("oncely_store_seconds", "domain" => domain.clone(), "step" => step)
            }),
            batch_sizes: STEPS.map(|step| {
                metrics::histogram!("oncely_batch_size", "domain" => domain.clone(), "step" => step)
            }),
        }
    }

    /// One store call of `step` (one of [`STEPS`]) over a batch of `size`, which took
    /// `took` (failed tries included: they cost the same wait).
    pub(crate) fn store(&self, step: &str, size: usize, took: Duration) {
        if let Some(index) = STEPS.iter().position(|known| *known == step) {
            self.store_seconds[index].record(took.as_secs_f64());
            self.batch_sizes[index].record(size as f64);
        }
    }

    /// Counts what an accept came to: new operations, replays, conflicts.
    pub(crate) fn accepted(&self, accepted: &[Accepted]) {
        for accepted in accepted {
            match accepted {
                Accepted::New(_) => self.accepted.increment(1),
                Accepted::Existing(_) => self.replayed.increment(1),
                Accepted::Conflict(_) => self.conflicts.increment(1),
            }
        }
    }

    /// An operation this engine brought to a terminal state.
    pub(crate) fn terminal(&self, state: OperationState) {
        if let Some(index) = TERMINAL.iter().position(|terminal| *terminal == state) {
            self.terminal[index].increment(1);
        }
    }

    /// One attempt's external call: its result (`ok`, `retry`, `fail`, or `unknown` when no
    /// answer came) and how long it took.
    pub(crate) fn attempt(&self, outcome: &Outcome, unknown: bool, took: Duration) {
        let index = match outcome {
            _ if unknown => 3,
            Outcome::Ok { .. } => 0,
            Outcome::Retry { .. } => 1,
            Outcome::Fail { .. } => 2,
        };
        self.attempts[index].increment(1);
        self.durations[index].record(took.as_secs_f64());
    }

    /// Leases the Reaper took back.
    pub(crate) fn rescued(&self, count: u64) {
        self.rescued.increment(count);
    }

    /// The live operations as the store counted them at `now`.
    pub(crate) fn backlog(&self, backlog: &Backlog, now: DateTime<Utc>) {
        let [due, waiting, processing] = &self.backlog;
        due.set(backlog.due as f64);
        waiting.set(backlog.waiting as f64);
        processing.set(backlog.processing as f64);
        let waited = backlog.oldest_due.map_or(0.0, |at| {
            (now - at).num_milliseconds().max(0) as f64 / 1_000.0
        });
        self.oldest_due.set(waited);
    }

    /// Writes of a worker whose lease was taken over, refused by the fence (I4).
    pub(crate) fn fenced(&self, count: u64) {
        self.fenced.increment(count);
    }
}
