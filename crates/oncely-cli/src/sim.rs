//! `oncely sim`: the flags and the output; the simulator is `oncely_testkit::sim`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use oncely_testkit::sim::{self, Flaw, SimConfig, Summary};

/// Flags of `oncely sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// How many seeds to run, from --first-seed.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of a --seeds run.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replays one seed and prints its digest and counts: the same seed and settings
    /// give the same digest.
    #[arg(long)]
    seed: Option<u64>,
    /// Engines sharing the store.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Payments submitted per seed.
    #[arg(long, default_value_t = 30)]
    operations: usize,
    /// Fault-injecting steps per seed before the faults stop.
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Breaks one rule on purpose and runs until a seed finds it: no-owner-fence,
    /// reap-recorded, finalize-before-record, fresh-key-per-attempt or follow-ups-apart.
    /// Exits 0 when found, 1 when no seed found it.
    #[arg(long, value_parser = parse_flaw)]
    flaw: Option<Flaw>,
    /// With --seed: print the run's event log (simulated milliseconds, event), the lines
    /// its digest is made of.
    #[arg(long)]
    events: bool,
    /// Threads running seeds (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Also write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_flaw(name: &str) -> Result<Flaw, String> {
    Flaw::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Flaw::ALL.iter().map(|flaw| flaw.name()).collect();
        format!("unknown flaw {name:?}; one of: {}", names.join(", "))
    })
}

/// Runs the seeds; true when the run is a pass: no seed broke an invariant, or, with
/// `--flaw`, a seed found the flaw.
pub(crate) fn run(args: SimArgs) -> anyhow::Result<bool> {
    if args.events && args.seed.is_none() {
        anyhow::bail!("--events prints one run's log: give the run with --seed");
    }
    let config = SimConfig {
        nodes: args.nodes,
        operations: args.operations,
        steps: args.steps,
        flaw: args.flaw,
        keep_events: args.events,
    };
    config.validate()?;
    let mut out = std::io::stdout().lock();
    if let Some(seed) = args.seed {
        let report = sim::run_seed(seed, &config)?;
        for line in &report.event_log {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "seed {seed}: digest {}", report.digest)?;
        writeln!(
            out,
            "  {} events, {} simulated seconds",
            report.events, report.simulated_seconds
        )?;
        writeln!(out, "  states: {}", pairs(&report.states))?;
        writeln!(out, "  counts: {}", pairs(&report.counts))?;
        if let Some(path) = &args.json {
            write_json(path, &report)?;
        }
        return Ok(match (&report.violation, args.flaw) {
            (Some(violation), _) => {
                writeln!(
                    out,
                    "  BROKEN at step {}: {violation}",
                    report.step.unwrap_or_default()
                )?;
                args.flaw.is_some()
            }
            (None, flaw) => flaw.is_none(),
        });
    }
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let summary = sim::run_seeds(
        args.first_seed,
        args.seeds,
        &config,
        jobs,
        args.flaw.is_some(),
    )?;
    write_summary(&mut out, &summary, args.flaw)?;
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
    }
    Ok(match args.flaw {
        Some(_) => !summary.failures.is_empty(),
        None => summary.failures.is_empty(),
    })
}

fn pairs(map: &std::collections::BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_json(path: &PathBuf, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

fn write_summary(
    out: &mut impl Write,
    summary: &Summary,
    flaw: Option<Flaw>,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} seeds from {} in {:.1} s ({} simulated seconds)",
        summary.seeds, summary.first_seed, summary.wall_seconds, summary.simulated_seconds
    )?;
    writeln!(out, "  states: {}", pairs(&summary.states))?;
    writeln!(out, "  counts: {}", pairs(&summary.counts))?;
    const SHOWN: usize = 20;
    for failure in summary.failures.iter().take(SHOWN) {
        writeln!(
            out,
            "  seed {} BROKEN at step {} (digest {}): {}",
            failure.seed,
            failure.step.unwrap_or_default(),
            failure.digest,
            failure.violation.as_deref().unwrap_or_default()
        )?;
        writeln!(
            out,
            "    replay: oncely sim --seed {}{}",
            failure.seed,
            flaw.map(|f| format!(" --flaw {}", f.name()))
                .unwrap_or_default()
        )?;
    }
    if summary.failures.len() > SHOWN {
        writeln!(
            out,
            "  … and {} more (all in --json)",
            summary.failures.len() - SHOWN
        )?;
    }
    match (flaw, summary.failures.first()) {
        (Some(flaw), Some(found)) => writeln!(
            out,
            "flaw {} found by seed {}, the {} seed run",
            flaw.name(),
            found.seed,
            ordinal(found.seed - summary.first_seed + 1)
        )?,
        (Some(flaw), None) => writeln!(
            out,
            "flaw {} NOT found in {} seeds",
            flaw.name(),
            summary.seeds
        )?,
        (None, None) => writeln!(out, "every invariant held in every seed")?,
        (None, Some(_)) => writeln!(out, "{} seeds broke an invariant", summary.failures.len())?,
    }
    Ok(())
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
