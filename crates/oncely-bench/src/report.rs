//! A run's results as JSON, a markdown table and a PNG chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::result::WorkloadResult;

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
    /// One per workload and system.
    pub results: Vec<WorkloadResult>,
    /// Figures derived from the results, each beside its target.
    pub findings: Vec<Finding>,
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

    fn find(&self, workload: &str, system: &str, backend: &str) -> Option<&WorkloadResult> {
        self.results.iter().find(|r| {
            r.workload == workload && r.system == system && r.backend == backend && r.errors == 0
        })
    }

    /// Works out the findings from the results.
    pub fn derive_findings(&mut self) {
        let mut findings = Vec::new();
        for workload in ["e2e-0ms", "e2e-20ms"] {
            let Some(oncely) = self.find(workload, "oncely", "postgres") else {
                continue;
            };
            let best_peer = ["underway", "apalis", "naive"]
                .iter()
                .filter_map(|peer| self.find(workload, peer, "postgres"))
                .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            if let Some(peer) = best_peer {
                let ratio = oncely.ops_per_sec / peer.ops_per_sec.max(1e-9);
                findings.push(Finding {
                    name: format!(
                        "{workload} on PostgreSQL: oncely ÷ best other ({})",
                        peer.system
                    ),
                    value: format!("{ratio:.2}×"),
                    target: "≥ 2×".to_owned(),
                    met: ratio >= 2.0,
                });
            }
        }
        if let (Some(oncely), Some(limit)) = (
            self.find("e2e-0ms", "oncely", "postgres"),
            self.find("limit", "raw sqlx, batched", "postgres"),
        ) {
            let share = oncely.ops_per_sec / limit.ops_per_sec.max(1e-9);
            findings.push(Finding {
                name: "e2e-0ms on PostgreSQL ÷ raw batched-write limit".to_owned(),
                value: format!("{:.1} %", share * 100.0),
                target: "≥ 25 %".to_owned(),
                met: share >= 0.25,
            });
        }
        for workload in ["overhead-1", "overhead-8"] {
            let Some(direct) = self.find(workload, "direct call", "-") else {
                continue;
            };
            for backend in ["sqlite", "postgres", "mysql"] {
                let Some(oncely) = self.find(workload, "oncely", backend) else {
                    continue;
                };
                let p50 = oncely.latency.p50_ms - direct.latency.p50_ms;
                let p99 = oncely.latency.p99_ms - direct.latency.p99_ms;
                findings.push(Finding {
                    name: format!("{workload}: added per payment on {backend} (p50 / p99)"),
                    value: format!("{p50:.2} ms / {p99:.2} ms"),
                    target: "p99 ≤ 2 ms".to_owned(),
                    met: p99 <= 2.0,
                });
            }
        }
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
        self.findings = findings;
    }

    /// The results as a markdown table, then the findings.
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
        out.push_str(
            "| workload | system | backend | ops/s | p50 ms | p95 ms | p99 ms | peak RSS MiB | done / lost / errors | settings |\n\
             |---|---|---|---:|---:|---:|---:|---:|---|---|\n",
        );
        for r in &self.results {
            let settings: Vec<String> = r
                .settings
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} / {} / {} | {} |",
                r.workload,
                r.system,
                r.backend,
                r.ops_per_sec,
                r.latency.p50_ms,
                r.latency.p95_ms,
                r.latency.p99_ms,
                r.peak_rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}")),
                r.completed,
                r.lost,
                r.errors,
                settings.join(", ")
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
                    if f.met { "yes" } else { "**no**" }
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
        out
    }

    /// Writes `<dir>/<stem>.json`, `.md` and `.png`; returns their paths.
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
        Ok(vec![json, md, png])
    }

    /// A PNG chart: throughput per system, one group of bars per workload, each group
    /// scaled to its own fastest.
    pub fn chart(&self, path: &Path) -> Result<(), String> {
        register_font();
        let mut groups: Vec<(&str, Vec<&WorkloadResult>)> = Vec::new();
        for r in self.results.iter().filter(|r| r.ops_per_sec > 0.0) {
            match groups.iter_mut().find(|(w, _)| *w == r.workload) {
                Some((_, rows)) => rows.push(r),
                None => groups.push((&r.workload, vec![r])),
            }
        }
        const ROW: i32 = 26;
        const HEADER: i32 = 34;
        let rows: usize = groups.iter().map(|(_, rows)| rows.len()).sum();
        let height = 70 + groups.len() as i32 * HEADER + rows as i32 * ROW;
        let (width, label_width, bar_max) = (1100_i32, 300_i32, 560_i32);
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
            &format!("oncely bench — operations per second ({})", self.started_at),
            &title,
            (16, 14),
        )
        .map_err(|e| fail(&e))?;
        let mut y = 56;
        for (workload, results) in &groups {
            root.draw_text(workload, &heading, (16, y + 8))
                .map_err(|e| fail(&e))?;
            y += HEADER;
            let max = results
                .iter()
                .map(|r| r.ops_per_sec)
                .fold(1e-9_f64, f64::max);
            for r in results {
                let color = match r.system.as_str() {
                    "oncely" => RGBColor(38, 110, 200),
                    "underway" | "apalis" | "naive" => RGBColor(230, 140, 40),
                    _ => RGBColor(140, 140, 140),
                };
                let label = if r.backend == "-" {
                    r.system.clone()
                } else {
                    format!("{} · {}", r.system, r.backend)
                };
                root.draw_text(&label, &text, (32, y + 4))
                    .map_err(|e| fail(&e))?;
                let length = ((r.ops_per_sec / max) * f64::from(bar_max)).round() as i32;
                root.draw(&Rectangle::new(
                    [(label_width, y), (label_width + length.max(1), y + ROW - 6)],
                    color.filled(),
                ))
                .map_err(|e| fail(&e))?;
                root.draw_text(
                    &format!("{:.0}/s  p99 {:.1} ms", r.ops_per_sec, r.latency.p99_ms),
                    &text,
                    (label_width + length.max(1) + 8, y + 4),
                )
                .map_err(|e| fail(&e))?;
                y += ROW;
            }
        }
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
        }
    }

    fn report(results: Vec<WorkloadResult>) -> Report {
        let mut report = Report {
            started_at: "2026-11-25T00:00:00Z".into(),
            command: "oncely bench".into(),
            quick: false,
            machine: Machine::here(),
            results,
            findings: vec![],
        };
        report.derive_findings();
        report
    }

    #[test]
    fn findings_compare_oncely_with_the_best_peer_the_limit_and_the_direct_call() {
        let report = report(vec![
            result("e2e-0ms", "oncely", "postgres", 3000.0, 10.0),
            result("e2e-0ms", "underway", "postgres", 500.0, 50.0),
            result("e2e-0ms", "apalis", "postgres", 1000.0, 40.0),
            result("limit", "raw sqlx, batched", "postgres", 20000.0, 5.0),
            result("overhead-8", "direct call", "-", 2000.0, 1.0),
            result("overhead-8", "oncely", "postgres", 500.0, 4.0),
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
            ("3.00×".into(), true)
        );
        assert_eq!(
            value("e2e-0ms on PostgreSQL ÷ raw"),
            ("15.0 %".into(), false)
        );
        assert_eq!(
            value("overhead-8: added per payment on postgres"),
            ("1.50 ms / 3.00 ms".into(), false)
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
            md.contains("| e2e-0ms | oncely | postgres | 3000 |"),
            "{md}"
        );
        let png = std::fs::read(&paths[2]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 2_000, "a chart with text, not an empty image");
    }
}
