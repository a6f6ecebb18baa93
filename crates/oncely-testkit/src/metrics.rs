//! What a chaos round's `/metrics` said, against what its store holds: terminal operations
//! by domain and state, the Reaper's rescues, and the fenced writes the nodes logged.
//!
//! Counters live in a node's memory: a node killed with SIGKILL takes with it what it
//! counted since it was last scraped. So each node is scraped just before it is killed and
//! once more at the end, and its incarnations' last scrapes are summed. When no node was
//! killed and no database fault made a committed write look failed, the sums must equal
//! the store's counts; otherwise they may fall short of them, never exceed them.

use std::collections::BTreeMap;

use oncely::DomainOverview;
use serde::Serialize;

/// The counters a check reads, by series (`name{labels}`).
pub type Counters = BTreeMap<String, f64>;

/// The counters of a Prometheus text exposition that the check reads: terminal
/// operations, rescues and fenced writes.
pub fn parse(text: &str) -> Counters {
    text.lines()
        .filter(|line| {
            line.starts_with("oncely_operations_terminal_total{")
                || line.starts_with("oncely_reaper_rescues_total{")
                || line.starts_with("oncely_fenced_writes_total{")
        })
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Adds `scrape` into `total`.
pub fn add(total: &mut Counters, scrape: &Counters) {
    for (series, value) in scrape {
        *total.entry(series.clone()).or_default() += value;
    }
}

/// One figure, from `/metrics` and from the store (or, for fenced writes, the logs).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compared {
    /// What it counts.
    pub what: String,
    /// Summed over the nodes' scrapes.
    pub metrics: u64,
    /// What the store (or the logs) hold.
    pub expected: u64,
}

/// `/metrics` against the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsCheck {
    /// Whether the figures must be equal: no node was killed and no database fault struck.
    pub exact: bool,
    /// Every figure compared.
    pub figures: Vec<Compared>,
    /// The figures that break the rule (unequal when exact; more than expected otherwise).
    pub mismatches: Vec<String>,
}

impl MetricsCheck {
    /// Compares `counted` with the store's `overview` (since the run began) and the logs'
    /// count of fenced writes.
    pub fn new(
        counted: &Counters,
        overview: &[DomainOverview],
        fenced_in_logs: u64,
        exact: bool,
    ) -> Self {
        let sum = |name: &str, labels: &[(&str, &str)]| -> u64 {
            let total: f64 = counted
                .iter()
                .filter(|(series, _)| {
                    series.starts_with(&format!("{name}{{"))
                        && labels
                            .iter()
                            .all(|(label, value)| series.contains(&format!("{label}=\"{value}\"")))
                })
                .map(|(_, value)| value)
                .sum();
            total.round() as u64
        };
        let mut figures = Vec::new();
        let mut rescued = 0;
        for domain in overview {
            for state in ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"] {
                figures.push(Compared {
                    what: format!("{} {state}", domain.domain),
                    metrics: sum(
                        "oncely_operations_terminal_total",
                        &[("domain", &domain.domain), ("state", state)],
                    ),
                    expected: domain.states.get(state).copied().unwrap_or(0),
                });
            }
            rescued += domain.rescued_since;
        }
        figures.push(Compared {
            what: "rescues".into(),
            metrics: sum("oncely_reaper_rescues_total", &[]),
            expected: rescued,
        });
        figures.push(Compared {
            what: "fenced writes".into(),
            metrics: sum("oncely_fenced_writes_total", &[]),
            expected: fenced_in_logs,
        });
        let mismatches = figures
            .iter()
            .filter(|figure| {
                figure.metrics > figure.expected || (exact && figure.metrics != figure.expected)
            })
            .map(|figure| {
                format!(
                    "{}: /metrics {}, expected {}",
                    figure.what, figure.metrics, figure.expected
                )
            })
            .collect();
        Self {
            exact,
            figures,
            mismatches,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SCRAPE: &str = "# TYPE oncely_operations_terminal_total counter\n\
        oncely_operations_terminal_total{domain=\"PAYMENT\",state=\"COMPLETED\"} 7\n\
        oncely_operations_terminal_total{domain=\"PAYMENT\",state=\"FAILED\"} 1\n\
        oncely_reaper_rescues_total{domain=\"PAYMENT\"} 2\n\
        oncely_fenced_writes_total{domain=\"PAYMENT\"} 1\n\
        oncely_attempts_total{domain=\"PAYMENT\",result=\"ok\"} 9\n";

    fn overview(completed: u64, failed: u64, rescued: u64) -> Vec<DomainOverview> {
        let mut payment = DomainOverview::empty("PAYMENT");
        payment.states.insert("COMPLETED".into(), completed);
        payment.states.insert("FAILED".into(), failed);
        payment.rescued_since = rescued;
        vec![payment]
    }

    #[test]
    fn incarnations_add_up_and_must_equal_the_store_when_exact() {
        let scrape = parse(SCRAPE);
        assert_eq!(scrape.len(), 4, "only the counters the check reads");
        let mut total = Counters::new();
        add(&mut total, &scrape);
        add(&mut total, &scrape);
        let equal = MetricsCheck::new(&total, &overview(14, 2, 4), 2, true);
        assert_eq!(equal.mismatches, Vec::<String>::new(), "{equal:?}");
        let short = MetricsCheck::new(&total, &overview(15, 2, 4), 2, true);
        assert_eq!(
            short.mismatches,
            ["PAYMENT COMPLETED: /metrics 14, expected 15"]
        );
        // After a kill, falling short is what a lost scrape does; counting more never is.
        let inexact = MetricsCheck::new(&total, &overview(15, 2, 4), 2, false);
        assert!(inexact.mismatches.is_empty());
        let invented = MetricsCheck::new(&total, &overview(14, 2, 3), 2, false);
        assert_eq!(invented.mismatches, ["rescues: /metrics 4, expected 3"]);
    }
}
