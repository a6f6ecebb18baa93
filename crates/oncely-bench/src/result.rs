//! What one workload measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::drive::Driven;
use crate::stats::LatencySummary;

/// One workload on one system, as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadResult {
    /// What was measured: `e2e-0ms`, `e2e-20ms`, `overhead-1`, `overhead-8`, `http-accept`, `limit`,
    /// `queued`.
    pub workload: String,
    /// Who did it: `oncely`, `underway`, `apalis`, `naive`, `raw sqlx (commit each)`, …
    pub system: String,
    /// The database: `sqlite`, `postgres`, `mysql`, or `-`.
    pub backend: String,
    /// Operations asked for.
    pub operations: u64,
    /// Operations that finished as expected (charged once and completed).
    pub completed: u64,
    /// Operations asked for that are missing at the end: not stored, or not charged.
    pub lost: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// The first error, to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Per-operation latency.
    pub latency: LatencySummary,
    /// Peak resident memory of the process that did the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// The settings it ran with (workers, clients, batch size, …).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Which round of an alternating comparison this is (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// The latency of the accept alone (bigtable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_latency: Option<LatencySummary>,
    /// Interval by interval (soak).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Interval>,
}

/// One interval of a long run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interval {
    /// Seconds since the start, at the interval's end.
    pub at_seconds: f64,
    /// Operations completed in it, per second.
    pub ops_per_sec: f64,
    /// Their latency.
    pub latency: LatencySummary,
    /// Errors in it.
    pub errors: u64,
    /// The service's resident memory at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<f64>,
}

impl WorkloadResult {
    /// A result from a closed-loop run.
    pub fn from_driven(
        workload: &str,
        system: &str,
        backend: &str,
        operations: u64,
        driven: &Driven,
    ) -> Self {
        Self {
            workload: workload.to_owned(),
            system: system.to_owned(),
            backend: backend.to_owned(),
            operations,
            completed: driven.latencies.len(),
            lost: 0,
            errors: driven.errors,
            first_error: driven.first_error.clone(),
            seconds: driven.elapsed.as_secs_f64(),
            ops_per_sec: driven.ops_per_sec(),
            latency: driven.latencies.summary(),
            peak_rss_mib: crate::stats::peak_rss_mib("self"),
            settings: BTreeMap::new(),
            round: None,
            accept_latency: None,
            timeline: Vec::new(),
        }
    }

    /// Adds a setting.
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.settings.insert(name.to_owned(), value.to_string());
        self
    }

    /// Why this result fails the run: an error, or an operation lost or unfinished.
    pub fn failure(&self) -> Option<String> {
        if self.errors > 0 {
            return Some(format!(
                "{} errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.lost > 0 {
            return Some(format!(
                "{} of {} operations lost",
                self.lost, self.operations
            ));
        }
        if self.completed < self.operations {
            return Some(format!(
                "only {} of {} operations finished",
                self.completed, self.operations
            ));
        }
        None
    }

    /// A result for a workload that could not run at all.
    pub fn failed(workload: &str, system: &str, backend: &str, error: String) -> Self {
        Self {
            workload: workload.to_owned(),
            system: system.to_owned(),
            backend: backend.to_owned(),
            operations: 0,
            completed: 0,
            lost: 0,
            errors: 1,
            first_error: Some(error),
            seconds: 0.0,
            ops_per_sec: 0.0,
            latency: LatencySummary::default(),
            peak_rss_mib: None,
            settings: BTreeMap::new(),
            round: None,
            accept_latency: None,
            timeline: Vec::new(),
        }
    }
}
