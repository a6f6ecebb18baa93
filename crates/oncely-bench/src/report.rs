//! A run's results as JSON, a markdown table and a PNG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::harness::METRICS_OVERHEAD;
use crate::result::WorkloadResult;
use crate::soak::OBSERVED;

/// Everything one `oncely bench` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// The command that produced it.
    pub command: String,
    /// A `--quick` run (small, for CI: its timings mean little).
    pub quick: bool,
    /// Where it ran.
    pub machine: Machine,
    /// The database servers' settings (durability, autovacuum), by backend, at the start.
    #[serde(default)]
    pub servers: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// What the run had to say about itself (a setting it changed, one it could not).
    #[serde(default)]
    pub notes: Vec<String>,
    /// One per workload, system and round.
    pub results: Vec<WorkloadResult>,
    /// One per workload and system: the median of its rounds, with the spread.
    #[serde(default)]
    pub summary: Vec<Summary>,
    /// Figures derived from the summary, each beside its target.
    pub findings: Vec<Finding>,
}

/// A median with the smallest and largest value it is the median of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; zero when there are none.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        };
        Self {
            median,
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    /// `median (min–max)`, with `decimals` places.
    pub fn show(&self, decimals: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            return format!("{:.decimals$}", self.median);
        }
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

/// One workload on one system and backend, over its rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The workload.
    pub workload: String,
    /// The system.
    pub system: String,
    /// The backend.
    pub backend: String,
    /// How many runs (rounds) it summarizes.
    pub runs: usize,
    /// Operations per second.
    pub ops_per_sec: Spread,
    /// Median latency.
    pub p50_ms: Spread,
    /// 99th percentile latency.
    pub p99_ms: Spread,
    /// The largest peak memory of its runs.
    pub peak_rss_mib: Option<f64>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// `uname -sr`-like.
    pub os: String,
    /// oncely's version.
    pub oncely: String,
}

impl Machine {
    /// This machine.
    pub fn here() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {kernel}", std::env::consts::OS),
            oncely: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The target of a finding that is reported, not judged.
pub const NO_TARGET: &str = "none (reported)";

/// A figure derived from several results, beside its target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What it is.
    pub name: String,
    /// Its value, formatted with its unit.
    pub value: String,
    /// The target, formatted.
    pub target: String,
    /// Whether the target is met.
    pub met: bool,
}

impl Report {
    /// Results that fail the run: errors, lost or unfinished operations.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| {
                r.failure()
                    .map(|why| format!("{} / {} / {}: {why}", r.workload, r.system, r.backend))
            })
            .collect()
    }

    fn find(&self, workload: &str, system: &str, backend: &str) -> Option<&Summary> {
        self.summary
            .iter()
            .find(|s| s.workload == workload && s.system == system && s.backend == backend)
    }

    /// The results of each round of one workload, system and backend, in round order.
    fn rounds(&self, workload: &str, system: &str, backend: &str) -> Vec<&WorkloadResult> {
        let mut rounds: Vec<&WorkloadResult> = self
            .results
            .iter()
            .filter(|r| r.workload == workload && r.system == system && r.backend == backend)
            .filter(|r| r.failure().is_none())
            .collect();
        rounds.sort_by_key(|r| r.round);
        rounds
    }

    /// Summarizes the results that did not fail, by workload, system and backend.
    pub fn summarize(&mut self) {
        let mut keys: Vec<(String, String, String)> = Vec::new();
        for r in &self.results {
            let key = (r.workload.clone(), r.system.clone(), r.backend.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        self.summary = keys
            .into_iter()
            .filter_map(|(workload, system, backend)| {
                let runs = self.rounds(&workload, &system, &backend);
                if runs.is_empty() {
                    return None;
                }
                let spread = |f: &dyn Fn(&WorkloadResult) -> f64| {
                    Spread::of(runs.iter().map(|r| f(r)).collect())
                };
                Some(Summary {
                    runs: runs.len(),
                    ops_per_sec: spread(&|r| r.ops_per_sec),
                    p50_ms: spread(&|r| r.latency.p50_ms),
                    p99_ms: spread(&|r| r.latency.p99_ms),
                    peak_rss_mib: runs
                        .iter()
                        .filter_map(|r| r.peak_rss_mib)
                        .fold(None, |max: Option<f64>, v| {
                            Some(max.map_or(v, |m| m.max(v)))
                        }),
                    workload,
                    system,
                    backend,
                })
            })
            .collect();
    }

    /// Works out the summary and the findings from the results.
    pub fn derive_findings(&mut self) {
        self.summarize();
        let mut findings = Vec::new();
        self.peer_findings(&mut findings);
        if let (Some(oncely), Some(limit)) = (
            self.find("e2e-0ms", "oncely", "postgres"),
            self.find("limit", "raw sqlx, batched", "postgres"),
        ) {
            let share = oncely.ops_per_sec.median / limit.ops_per_sec.median.max(1e-9);
            findings.push(Finding {
                name: "e2e-0ms on PostgreSQL ÷ raw batched-write limit (medians)".to_owned(),
                value: format!("{:.1} %", share * 100.0),
                target: "≥ 30 %".to_owned(),
                met: share >= 0.30,
            });
        }
        if let (Some(mysql), Some(pg)) = (
            self.find("e2e-0ms", "oncely", "mysql"),
            self.find("e2e-0ms", "oncely", "postgres"),
        ) {
            let share = mysql.ops_per_sec.median / pg.ops_per_sec.median.max(1e-9);
            findings.push(Finding {
                name: "e2e-0ms: MySQL ÷ PostgreSQL (medians)".to_owned(),
                value: format!("{:.0} %", share * 100.0),
                target: "≥ 70 %".to_owned(),
                met: share >= 0.70,
            });
        }
        // What oncely adds to the same call made directly: payments have a target; uploads
        // (whose content goes through the database) are reported.
        let added = [
            ("overhead-1", "payment", Some(2.0)),
            ("overhead-8", "payment", Some(2.0)),
            ("uploads-1k", "upload", None),
            ("uploads-1m", "upload", None),
        ];
        for (workload, what, target) in added {
            let Some(direct) = self.find(workload, "direct call", "-") else {
                continue;
            };
            for backend in ["sqlite", "postgres", "mysql"] {
                let Some(oncely) = self.find(workload, "oncely", backend) else {
                    continue;
                };
                let p50 = oncely.p50_ms.median - direct.p50_ms.median;
                let p99 = oncely.p99_ms.median - direct.p99_ms.median;
                findings.push(Finding {
                    name: format!("{workload}: added per {what} on {backend} (p50 / p99, medians)"),
                    value: format!("{p50:.2} ms / {p99:.2} ms"),
                    target: target.map_or(NO_TARGET.to_owned(), |t| format!("p99 ≤ {t} ms")),
                    met: target.is_none_or(|t| p99 <= t),
                });
                // The same call between two durable commits written by hand: what the
                // disk alone adds, under whatever the engine adds.
                if let Some(floor) = self.find(workload, crate::floor::SYSTEM, backend) {
                    let p50 = floor.p50_ms.median - direct.p50_ms.median;
                    let p99 = floor.p99_ms.median - direct.p99_ms.median;
                    findings.push(Finding {
                        name: format!(
                            "{workload}: added by two commits by hand on {backend}, the floor \
                             (p50 / p99, medians)"
                        ),
                        value: format!("{p50:.2} ms / {p99:.2} ms"),
                        target: NO_TARGET.to_owned(),
                        met: true,
                    });
                }
            }
        }
        if let (Some(plain), Some(scraped)) = (
            self.find(METRICS_OVERHEAD, "oncely serve", "postgres"),
            self.find(METRICS_OVERHEAD, OBSERVED, "postgres"),
        ) {
            let share = scraped.ops_per_sec.median / plain.ops_per_sec.median.max(1e-9);
            findings.push(Finding {
                name: format!(
                    "{METRICS_OVERHEAD} on PostgreSQL: throughput with /metrics scraped every 5 s \
                     and a console open ÷ without (medians of {} rounds)",
                    plain.runs.min(scraped.runs)
                ),
                value: format!("{:.1} %", share * 100.0),
                target: "≥ 95 %".to_owned(),
                met: share >= 0.95,
            });
        }
        self.bigtable_findings(&mut findings);
        for queued in self.results.iter().filter(|r| r.workload == "queued") {
            if let Some(rss) = queued.peak_rss_mib {
                findings.push(Finding {
                    name: format!(
                        "peak RSS with {} operations queued ({})",
                        queued.operations, queued.backend
                    ),
                    value: format!("{rss:.1} MiB"),
                    target: "≤ 64 MiB".to_owned(),
                    met: rss <= 64.0,
                });
            }
        }
        self.soak_findings(&mut findings);
        self.findings = findings;
    }

    /// oncely against the best peer, per e2e workload: the ratio of medians, and the
    /// spread of the rounds' ratios (round i of oncely against round i of that peer).
    fn peer_findings(&self, findings: &mut Vec<Finding>) {
        for workload in ["e2e-0ms", "e2e-20ms"] {
            let Some(oncely) = self.find(workload, "oncely", "postgres") else {
                continue;
            };
            let best = ["naive", "underway", "apalis", "dbos"]
                .iter()
                .filter_map(|peer| self.find(workload, peer, "postgres"))
                .max_by(|a, b| a.ops_per_sec.median.total_cmp(&b.ops_per_sec.median));
            let Some(peer) = best else { continue };
            let ratio = oncely.ops_per_sec.median / peer.ops_per_sec.median.max(1e-9);
            let ours = self.rounds(workload, "oncely", "postgres");
            let theirs = self.rounds(workload, &peer.system, "postgres");
            let per_round = Spread::of(
                ours.iter()
                    .zip(&theirs)
                    .map(|(a, b)| a.ops_per_sec / b.ops_per_sec.max(1e-9))
                    .collect(),
            );
            findings.push(Finding {
                name: format!(
                    "{workload} on PostgreSQL: oncely ÷ best other ({}), median of {} rounds \
                     (rounds' range)",
                    peer.system, oncely.runs
                ),
                value: format!("{ratio:.2}× ({:.2}–{:.2}×)", per_round.min, per_round.max),
                target: "≥ 3×".to_owned(),
                met: ratio >= 3.0,
            });
        }
    }

    /// Accept p99 with the most retained payments against the empty tables', per backend.
    fn bigtable_findings(&self, findings: &mut Vec<Finding>) {
        for backend in ["postgres", "sqlite", "mysql"] {
            let mut sized: Vec<(u64, &WorkloadResult)> = self
                .results
                .iter()
                .filter(|r| r.workload.starts_with("bigtable-") && r.backend == backend)
                .filter(|r| r.failure().is_none())
                .filter_map(|r| Some((r.settings.get("retained")?.parse().ok()?, r)))
                .collect();
            sized.sort_by_key(|(retained, _)| *retained);
            let (Some((0, empty)), Some((largest, full))) = (sized.first(), sized.last()) else {
                continue;
            };
            if *largest == 0 {
                continue;
            }
            let p99 = |r: &WorkloadResult| r.accept_latency.map_or(0.0, |l| l.p99_ms);
            let ratio = p99(full) / p99(empty).max(1e-9);
            findings.push(Finding {
                name: format!(
                    "accept p99 with {} retained ÷ empty ({backend})",
                    crate::bigtable::size_label(*largest)
                ),
                value: format!("{ratio:.2}× ({:.2} / {:.2} ms)", p99(full), p99(empty)),
                target: "≤ 1.5×".to_owned(),
                met: ratio <= 1.5,
            });
        }
    }

    /// A soak's last interval against its first, in throughput and p99.
    fn soak_findings(&self, findings: &mut Vec<Finding>) {
        for r in self
            .results
            .iter()
            .filter(|r| r.workload.starts_with("soak"))
        {
            let (Some(first), Some(last)) = (r.timeline.first(), r.timeline.last()) else {
                continue;
            };
            if r.timeline.len() < 2 {
                continue;
            }
            let throughput = last.ops_per_sec / first.ops_per_sec.max(1e-9);
            let p99 = last.latency.p99_ms / first.latency.p99_ms.max(1e-9);
            findings.push(Finding {
                name: format!(
                    "{} on {}: last interval ÷ first (throughput / p99)",
                    r.workload, r.backend
                ),
                value: format!("{:.0} % / {:.0} %", throughput * 100.0, p99 * 100.0),
                target: "within 10 %".to_owned(),
                met: (throughput - 1.0).abs() <= 0.10 && p99 <= 1.10,
            });
        }
    }

    /// The summary, the findings, then every run and every soak's timeline, as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} on {} CPUs ({}), oncely {}{}.\n\n`{}`\n",
            self.started_at,
            self.machine.cpus,
            self.machine.os,
            self.machine.oncely,
            if self.quick {
                " — quick run: sizes too small for the timings to mean much"
            } else {
                ""
            },
            self.command
        );
        for (backend, settings) in &self.servers {
            let settings: Vec<String> = settings
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            let _ = writeln!(out, "- {backend}: {}", settings.join(", "));
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out.push_str(
            "\nMedians of the rounds, with the smallest and largest in brackets.\n\n\
             | workload | system | backend | runs | ops/s | p50 ms | p99 ms | peak RSS MiB |\n\
             |---|---|---|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.workload,
                s.system,
                s.backend,
                s.runs,
                s.ops_per_sec.show(0),
                s.p50_ms.show(2),
                s.p99_ms.show(2),
                s.peak_rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}")),
            );
        }
        if !self.findings.is_empty() {
            out.push_str("\n| finding | value | target | met |\n|---|---:|---|---|\n");
            for f in &self.findings {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    f.name,
                    f.value,
                    f.target,
                    match (f.target == NO_TARGET, f.met) {
                        (true, _) => "-",
                        (false, true) => "yes",
                        (false, false) => "**no**",
                    }
                );
            }
        }
        let failures = self.failures();
        if !failures.is_empty() {
            out.push_str("\nFailed:\n");
            for failure in failures {
                let _ = writeln!(out, "- {failure}");
            }
        }
        self.runs_markdown(&mut out);
        self.timelines_markdown(&mut out);
        out
    }

    fn runs_markdown(&self, out: &mut String) {
        out.push_str(
            "\nEvery run:\n\n\
             | workload | system | backend | round | ops/s | p50 ms | p95 ms | p99 ms | accept p99 ms | peak RSS MiB | done / lost / errors | settings |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
        );
        for r in &self.results {
            let settings: Vec<String> = r
                .settings
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} / {} / {} | {} |",
                r.workload,
                r.system,
                r.backend,
                r.round.map_or("-".to_owned(), |round| round.to_string()),
                r.ops_per_sec,
                r.latency.p50_ms,
                r.latency.p95_ms,
                r.latency.p99_ms,
                r.accept_latency
                    .map_or("-".to_owned(), |l| format!("{:.2}", l.p99_ms)),
                r.peak_rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}")),
                r.completed,
                r.lost,
                r.errors,
                settings.join(", ")
            );
        }
    }

    fn timelines_markdown(&self, out: &mut String) {
        for r in self.results.iter().filter(|r| !r.timeline.is_empty()) {
            let _ = writeln!(
                out,
                "\n{} on {}, interval by interval:\n\n\
                 | at s | ops/s | p50 ms | p99 ms | errors | RSS MiB |\n|---:|---:|---:|---:|---:|---:|",
                r.workload, r.backend
            );
            for i in &r.timeline {
                let _ = writeln!(
                    out,
                    "| {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |",
                    i.at_seconds,
                    i.ops_per_sec,
                    i.latency.p50_ms,
                    i.latency.p99_ms,
                    i.errors,
                    i.rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}"))
                );
            }
        }
    }

    /// Writes `<dir>/<stem>.json`, `.md`, `.png` (medians) and, where the run has them,
    /// `-sweep.png`, `-bigtable.png` and `-soak.png`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, BenchError> {
        let output = |path: &Path, message: String| BenchError::Output {
            path: path.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| output(dir, e.to_string()))?;
        let json = dir.join(format!("{stem}.json"));
        let body = serde_json::to_string_pretty(self).map_err(|e| output(&json, e.to_string()))?;
        std::fs::write(&json, body + "\n").map_err(|e| output(&json, e.to_string()))?;
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&md, self.markdown()).map_err(|e| output(&md, e.to_string()))?;
        let png = dir.join(format!("{stem}.png"));
        self.chart(&png).map_err(|e| output(&png, e))?;
        let mut written = vec![json, md, png];
        for (suffix, chart) in [
            ("sweep", self.sweep_chart()),
            ("bigtable", self.bigtable_chart()),
            ("soak", self.soak_chart()),
        ] {
            if let Some(chart) = chart {
                let path = dir.join(format!("{stem}-{suffix}.png"));
                chart.draw(&path).map_err(|e| output(&path, e))?;
                written.push(path);
            }
        }
        Ok(written)
    }

    /// Throughput against the gateway's latency, a line per worker count.
    fn sweep_chart(&self) -> Option<LineChart> {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for s in self
            .summary
            .iter()
            .filter(|s| s.workload.starts_with("sweep-"))
        {
            let rest = s.workload.trim_start_matches("sweep-");
            let (latency, workers) = rest.split_once("ms-w")?;
            let latency: f64 = latency.parse().ok()?;
            let name = format!("{workers} workers");
            let point = (latency, s.ops_per_sec.median);
            match series.iter_mut().find(|(n, _)| *n == name) {
                Some((_, points)) => points.push(point),
                None => series.push((name, vec![point])),
            }
        }
        (!series.is_empty()).then(|| LineChart {
            title: "e2e on PostgreSQL: payments/s against the gateway's latency".to_owned(),
            x: "gateway latency, ms".to_owned(),
            y: "payments/s".to_owned(),
            series,
        })
    }

    /// Accept p99 against the payments retained, a line per backend.
    fn bigtable_chart(&self) -> Option<LineChart> {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in self
            .results
            .iter()
            .filter(|r| r.workload.starts_with("bigtable-"))
        {
            let (Some(retained), Some(accept)) = (r.settings.get("retained"), r.accept_latency)
            else {
                continue;
            };
            let Ok(retained) = retained.parse::<f64>() else {
                continue;
            };
            let name = format!("accept p99, {}", r.backend);
            let point = (retained / 1e6, accept.p99_ms);
            match series.iter_mut().find(|(n, _)| *n == name) {
                Some((_, points)) => points.push(point),
                None => series.push((name, vec![point])),
            }
        }
        (!series.is_empty()).then(|| LineChart {
            title: "accept p99 against finished payments retained".to_owned(),
            x: "retained, millions".to_owned(),
            y: "accept p99, ms".to_owned(),
            series,
        })
    }

    /// Each soak's throughput, interval by interval.
    fn soak_chart(&self) -> Option<LineChart> {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .results
            .iter()
            .filter(|r| !r.timeline.is_empty())
            .map(|r| {
                (
                    format!("{} · {}", r.workload, r.backend),
                    r.timeline
                        .iter()
                        .map(|i| (i.at_seconds / 60.0, i.ops_per_sec))
                        .collect(),
                )
            })
            .collect();
        (!series.is_empty()).then(|| LineChart {
            title: "oncely serve under sustained load: payments/s per interval".to_owned(),
            x: "minutes".to_owned(),
            y: "payments/s".to_owned(),
            series,
        })
    }

    /// A PNG chart: median throughput per system, one group of bars per workload, each
    /// group scaled to its own fastest.
    pub fn chart(&self, path: &Path) -> Result<(), String> {
        register_font();
        let mut groups: Vec<(&str, Vec<&Summary>)> = Vec::new();
        let compared = |s: &&Summary| {
            s.ops_per_sec.median > 0.0
                && !s.workload.starts_with("soak")
                && !s.workload.starts_with("sweep")
                && !s.workload.starts_with("bigtable")
        };
        for s in self.summary.iter().filter(compared) {
            match groups.iter_mut().find(|(w, _)| *w == s.workload) {
                Some((_, rows)) => rows.push(s),
                None => groups.push((&s.workload, vec![s])),
            }
        }
        const ROW: i32 = 26;
        const HEADER: i32 = 34;
        let rows: usize = groups.iter().map(|(_, rows)| rows.len()).sum();
        let height = 70 + groups.len() as i32 * HEADER + rows as i32 * ROW;
        let (width, label_width, bar_max) = (1100_i32, 300_i32, 520_i32);
        let root =
            BitMapBackend::new(path, (width as u32, height.max(120) as u32)).into_drawing_area();
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let title = ("sans-serif", 22).into_font().color(&BLACK);
        let text = ("sans-serif", 15).into_font().color(&BLACK);
        let heading = ("sans-serif", 17)
            .into_font()
            .style(FontStyle::Bold)
            .color(&BLACK);
        root.draw_text(
            &format!(
                "oncely bench — operations per second, median of rounds ({})",
                self.started_at
            ),
            &title,
            (16, 14),
        )
        .map_err(|e| fail(&e))?;
        let mut y = 56;
        for (workload, summaries) in &groups {
            root.draw_text(workload, &heading, (16, y + 8))
                .map_err(|e| fail(&e))?;
            y += HEADER;
            let max = summaries
                .iter()
                .map(|s| s.ops_per_sec.max)
                .fold(1e-9_f64, f64::max);
            for s in summaries {
                let color = match s.system.as_str() {
                    "oncely" => RGBColor(38, 110, 200),
                    "underway" | "apalis" | "naive" | "dbos" => RGBColor(230, 140, 40),
                    _ => RGBColor(140, 140, 140),
                };
                let label = if s.backend == "-" {
                    s.system.clone()
                } else {
                    format!("{} · {}", s.system, s.backend)
                };
                root.draw_text(&label, &text, (32, y + 4))
                    .map_err(|e| fail(&e))?;
                let scale = |v: f64| ((v / max) * f64::from(bar_max)).round() as i32;
                let length = scale(s.ops_per_sec.median).max(1);
                root.draw(&Rectangle::new(
                    [(label_width, y), (label_width + length, y + ROW - 6)],
                    color.filled(),
                ))
                .map_err(|e| fail(&e))?;
                // The spread of the rounds, as a whisker.
                let (low, high) = (scale(s.ops_per_sec.min), scale(s.ops_per_sec.max));
                root.draw(&PathElement::new(
                    vec![
                        (label_width + low, y + ROW / 2 - 3),
                        (label_width + high, y + ROW / 2 - 3),
                    ],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?;
                root.draw_text(
                    &format!(
                        "{:.0}/s  p99 {:.1} ms",
                        s.ops_per_sec.median, s.p99_ms.median
                    ),
                    &text,
                    (label_width + high.max(length) + 8, y + 4),
                )
                .map_err(|e| fail(&e))?;
                y += ROW;
            }
        }
        root.present().map_err(|e| fail(&e))
    }
}

/// A chart of lines, one per series of (x, y) points.
struct LineChart {
    title: String,
    x: String,
    y: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl LineChart {
    fn draw(&self, path: &Path) -> Result<(), String> {
        register_font();
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        let root = BitMapBackend::new(path, (1000, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let points = self.series.iter().flat_map(|(_, points)| points.iter());
        let (x_max, y_max) = points.fold((0.0_f64, 0.0_f64), |(x, y), (px, py)| {
            (x.max(*px), y.max(*py))
        });
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..(x_max * 1.05).max(1.0), 0.0..(y_max * 1.15).max(1.0))
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(&self.x)
            .y_desc(&self.y)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        let palette = [
            RGBColor(38, 110, 200),
            RGBColor(230, 140, 40),
            RGBColor(60, 160, 90),
            RGBColor(190, 60, 60),
            RGBColor(130, 80, 170),
            RGBColor(120, 120, 120),
            RGBColor(20, 170, 170),
        ];
        for (index, (name, points)) in self.series.iter().enumerate() {
            let color = palette[index % palette.len()];
            let mut points = points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| fail(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))
    }
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            let bytes = match style {
                FontStyle::Bold => dejavu::sans::bold(),
                _ => dejavu::sans::regular(),
            };
            if plotters::style::register_font("sans-serif", style, bytes).is_err() {
                tracing::warn!("could not load the chart's font");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::stats::LatencySummary;

    fn result(workload: &str, system: &str, backend: &str, ops: f64, p99: f64) -> WorkloadResult {
        WorkloadResult {
            workload: workload.into(),
            system: system.into(),
            backend: backend.into(),
            operations: 10,
            completed: 10,
            lost: 0,
            errors: 0,
            first_error: None,
            seconds: 1.0,
            ops_per_sec: ops,
            latency: LatencySummary {
                p50_ms: p99 / 2.0,
                p95_ms: p99,
                p99_ms: p99,
                max_ms: p99,
            },
            peak_rss_mib: Some(30.0),
            settings: Default::default(),
            round: None,
            accept_latency: None,
            timeline: Vec::new(),
        }
    }

    fn report(results: Vec<WorkloadResult>) -> Report {
        let mut report = Report {
            started_at: "2026-11-25T00:00:00Z".into(),
            command: "oncely bench".into(),
            quick: false,
            machine: Machine::here(),
            servers: Default::default(),
            notes: vec![],
            results,
            summary: vec![],
            findings: vec![],
        };
        report.derive_findings();
        report
    }

    fn round(mut result: WorkloadResult, round: u32) -> WorkloadResult {
        result.round = Some(round);
        result
    }

    #[test]
    fn rounds_are_summarized_as_median_and_spread() {
        let report = report(vec![
            round(result("e2e-0ms", "oncely", "postgres", 3000.0, 10.0), 1),
            round(result("e2e-0ms", "oncely", "postgres", 9000.0, 30.0), 2),
            round(result("e2e-0ms", "oncely", "postgres", 4000.0, 20.0), 3),
            round(result("e2e-0ms", "apalis", "postgres", 1000.0, 40.0), 1),
            round(result("e2e-0ms", "apalis", "postgres", 2000.0, 40.0), 2),
            round(result("e2e-0ms", "apalis", "postgres", 1000.0, 40.0), 3),
        ]);
        let oncely = report.find("e2e-0ms", "oncely", "postgres").unwrap();
        assert_eq!(oncely.runs, 3);
        assert_eq!(
            oncely.ops_per_sec,
            Spread {
                median: 4000.0,
                min: 3000.0,
                max: 9000.0
            }
        );
        assert_eq!(oncely.p99_ms.median, 20.0);
        let finding = &report.findings[0];
        // Medians 4000 / 1000; the rounds' ratios are 3, 4.5 and 4.
        assert_eq!(finding.value, "4.00× (3.00–4.50×)");
        assert!(finding.met);
        assert!(
            report
                .markdown()
                .contains("| e2e-0ms | oncely | postgres | 3 | 4000 (3000–9000) |")
        );
    }

    #[test]
    fn findings_compare_oncely_with_the_best_peer_the_limit_and_the_direct_call() {
        let report = report(vec![
            result("e2e-0ms", "oncely", "postgres", 3000.0, 10.0),
            result("e2e-0ms", "oncely", "mysql", 2000.0, 10.0),
            result("e2e-0ms", "underway", "postgres", 500.0, 50.0),
            result("e2e-0ms", "apalis", "postgres", 1000.0, 40.0),
            result("limit", "raw sqlx, batched", "postgres", 20000.0, 5.0),
            result("overhead-8", "direct call", "-", 2000.0, 1.0),
            result("overhead-8", "oncely", "postgres", 500.0, 4.0),
            result("uploads-1m", "direct call", "-", 50.0, 20.0),
            result("uploads-1m", "oncely", "sqlite", 20.0, 50.0),
            result(METRICS_OVERHEAD, "oncely serve", "postgres", 600.0, 50.0),
            result(METRICS_OVERHEAD, OBSERVED, "postgres", 582.0, 50.0),
            result("queued", "oncely", "postgres", 1000.0, 1.0),
        ]);
        let value = |prefix: &str| {
            let f = report
                .findings
                .iter()
                .find(|f| f.name.starts_with(prefix))
                .unwrap();
            (f.value.clone(), f.met)
        };
        assert_eq!(
            value("e2e-0ms on PostgreSQL: oncely"),
            ("3.00× (3.00–3.00×)".into(), true)
        );
        assert_eq!(
            value("e2e-0ms on PostgreSQL ÷ raw"),
            ("15.0 %".into(), false)
        );
        assert_eq!(value("e2e-0ms: MySQL"), ("67 %".into(), false));
        assert_eq!(
            value("overhead-8: added per payment on postgres"),
            ("1.50 ms / 3.00 ms".into(), false)
        );
        assert_eq!(
            value("uploads-1m: added per upload on sqlite"),
            ("15.00 ms / 30.00 ms".into(), true)
        );
        assert!(report.markdown().contains(&format!(
            "| uploads-1m: added per upload on sqlite (p50 / p99, medians) | 15.00 ms / 30.00 ms | {NO_TARGET} | - |"
        )));
        assert_eq!(
            value("metrics-overhead on PostgreSQL"),
            ("97.0 %".into(), true)
        );
        assert_eq!(value("peak RSS"), ("30.0 MiB".into(), true));
        assert!(report.findings.iter().all(|f| !f.name.contains("e2e-20ms")));
    }

    #[test]
    fn a_lost_operation_or_an_error_fails_the_run() {
        let mut lost = result("e2e-0ms", "oncely", "sqlite", 1.0, 1.0);
        lost.lost = 1;
        let mut unfinished = result("e2e-0ms", "oncely", "mysql", 1.0, 1.0);
        unfinished.completed = 9;
        let failed = WorkloadResult::failed("limit", "raw", "postgres", "no server".into());
        let report = report(vec![
            lost,
            unfinished,
            failed,
            result("e2e-0ms", "oncely", "postgres", 1.0, 1.0),
        ]);
        let failures = report.failures();
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].contains("1 of 10 operations lost"));
        assert!(failures[1].contains("only 9 of 10"));
        assert!(failures[2].contains("no server"));
        assert!(report.markdown().contains("Failed:"));
    }

    #[test]
    fn json_markdown_and_chart_are_written_and_read_back() {
        let report = report(vec![
            result("e2e-0ms", "oncely", "postgres", 3000.0, 10.0),
            result("e2e-0ms", "naive", "postgres", 300.0, 90.0),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let paths = report.write(dir.path(), "run").unwrap();
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&paths[0]).unwrap()).unwrap();
        assert_eq!(back, report);
        let md = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(
            md.contains("| e2e-0ms | oncely | postgres | 1 | 3000 |"),
            "{md}"
        );
        let png = std::fs::read(&paths[2]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 2_000, "a chart with text, not an empty image");
    }
}
