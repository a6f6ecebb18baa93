//! `oncely chaos`: the flags and the output; the harness is `oncely_testkit::chaos`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use oncely_testkit::chaos::{self, ChaosConfig};

use crate::duration;

/// Flags of `oncely chaos`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// The database the nodes share. Use an empty one: every payment in it is audited.
    /// SQLite allows one node only.
    #[arg(long, env = "ONCELY_DB")]
    db: String,
    /// How many `oncely serve` nodes run at once.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Distinct payments to send (plus 25 % duplicate requests and a few conflicting ones).
    #[arg(long, default_value_t = 300)]
    payments: usize,
    /// Distinct notifications to send, mixed with the payments (duplicates and conflicts
    /// likewise). Each payment that ends sends one more, its event.
    #[arg(long, default_value_t = 100)]
    notifications: usize,
    /// How many times a random node is SIGKILLed and restarted (under its node id, so it
    /// takes back at once what it was running).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// How many times a random node is paused (SIGSTOP) past its lease, then resumed
    /// (SIGCONT): a real zombie, whose late writes must be fenced.
    #[arg(long, default_value_t = 0)]
    pauses: usize,
    /// How many times every node's database connections are cut (PostgreSQL's
    /// `pg_terminate_backend`, MySQL's `KILL CONNECTION`); not on SQLite.
    #[arg(long, default_value_t = 0)]
    db_faults: usize,
    /// Share of the gateway's successful charges answered with a lie (another amount,
    /// currency or key, a missing field, broken JSON): none may end COMPLETED as if fine.
    #[arg(long, default_value_t = 0.02)]
    lie_rate: f64,
    /// The least share of distinct payments that must end COMPLETED: a run in which
    /// everything failed is not a pass.
    #[arg(long, default_value_t = 0.5)]
    min_completion_rate: f64,
    /// Seed of the simulators' faults and of the choice of nodes.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Give up waiting for every payment to end after this long.
    #[arg(long, default_value = "300s", value_parser = duration::parse)]
    timeout: Duration,
    /// Keep logs and the gateway ledger here instead of a temporary directory.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// A shell command that restarts the database server, run once halfway through the
    /// faults (as `pg_ctlcluster 15 main restart`); the nodes must ride through it.
    #[arg(long)]
    db_restart: Option<String>,
    /// Distinct uploads to send, mixed with the rest; one in 25 goes to a name another
    /// writer took first and must end FAILED (object-exists) with that object untouched.
    #[arg(long, default_value_t = 0)]
    uploads: usize,
    /// The S3-compatible endpoint uploads go to, through a fault-proxy with the run's
    /// faults (bucket oncely-chaos, created if missing; signed with AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY, or any key for a test server). Without it, uploads go to
    /// a directory in the work directory.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    let config = ChaosConfig {
        exe: std::env::current_exe()?,
        db: args.db,
        nodes: args.nodes,
        payments: args.payments,
        notifications: args.notifications,
        kills: args.kills,
        pauses: args.pauses,
        db_faults: args.db_faults,
        lie_rate: args.lie_rate,
        min_completion_rate: args.min_completion_rate,
        seed: args.seed,
        clients: args.clients,
        timeout: args.timeout,
        workdir: args.workdir,
        uploads: args.uploads,
        s3: args.s3_endpoint,
        db_restart: args.db_restart,
    };
    let min_completion_rate = config.min_completion_rate;
    let report = chaos::run(config).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        chaos::write_report(&mut out, &report)?;
    }
    Ok(report.passed(min_completion_rate))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        chaos: ChaosArgs,
    }

    #[test]
    fn the_flags_defaults_are_the_harness_defaults() {
        let args = Wrapper::try_parse_from(["chaos", "--db", "sqlite::memory:"])
            .unwrap()
            .chaos;
        let harness = ChaosConfig::new(PathBuf::new(), "sqlite::memory:".into());
        assert_eq!(
            (args.nodes, args.payments, args.notifications, args.kills),
            (
                harness.nodes,
                harness.payments,
                harness.notifications,
                harness.kills
            )
        );
        assert_eq!(
            (args.pauses, args.db_faults, args.seed, args.clients),
            (
                harness.pauses,
                harness.db_faults,
                harness.seed,
                harness.clients
            )
        );
        assert_eq!(
            (args.lie_rate, args.min_completion_rate, args.timeout),
            (
                harness.lie_rate,
                harness.min_completion_rate,
                harness.timeout
            )
        );
    }
}
