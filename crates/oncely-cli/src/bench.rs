//! `oncely bench`: runs the benchmark plan and writes its report.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use oncely_bench::{Plan, Spec};

/// The default PostgreSQL and MySQL servers: the local ones of a development machine.
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

#[derive(Debug, Args)]
#[command(after_long_help = "\
Every workload runs in a process of its own (so each has its own peak memory), one after
another, against the same local servers and the same in-process simulated gateway (fixed
latency, no faults). Each PostgreSQL/MySQL workload creates a scratch database and drops it.

Compared in --rounds alternating rounds (every system once per round, in turn), reported as
the median with the smallest and largest: e2e-0ms and e2e-20ms (library, closed loop, gateway
latency 0 / 20 ms, on every backend, beside the naive lifecycle and, with --peers, underway,
apalis and DBOS on PostgreSQL), overhead-1 and overhead-8 (1 and 8 clients, beside a direct
call of the gateway at the same load), uploads-1k and uploads-1m (objects of 1 KiB and 1 MiB
written to S3 through the uploads domain by one client, beside the same conditional create
made directly; one moto_server, from ONCELY_MOTO_SERVER or the PATH, serves the whole run, and
without one they are left out with a note), metrics-overhead (`oncely serve` on PostgreSQL over
HTTP for a minute, without a metrics recorder and nobody watching, and with /metrics scraped
every 5 s and a console open, refreshing every 2 s), limit
(the same rows written straight with sqlx).

Run once: sweep-* (e2e on PostgreSQL against gateway latency 0/20/100 ms and 64/256 workers),
bigtable-* (accept latency and e2e with 0, 1M and 10M finished payments retained; SQLite and
MySQL up to 1M), http-accept (wrk against `oncely serve`), queued (peak memory with a
backlog), soak-closed and soak-open (`oncely serve` over HTTP for --soak-minutes, closed loop
and open loop at 70 % of the closed loop's rate, on every backend; on PostgreSQL also with
autovacuum off).

PostgreSQL's autovacuum is turned on for the run (ALTER SYSTEM) when the server has it off,
and reset after (--keep-autovacuum leaves it alone); every PostgreSQL result records it, and
the report records each server's durability settings.

Writes <out>/<date>.json, .md and .png (plus -sweep, -bigtable and -soak charts; a --quick
run: <date>-quick.*). Exits 1 when any workload errors or loses a payment; never on a timing.

Examples:
  oncely bench --quick                        # about a minute; what CI runs
  oncely bench --peers                        # the full run (about two hours)
  oncely bench --only e2e-0ms --backends postgres --n 5000 --rounds 5")]
pub(crate) struct BenchArgs {
    /// Small sizes, for CI: checks every workload runs and loses nothing.
    #[arg(long)]
    quick: bool,

    /// Payments per end-to-end workload (default 20,000; 300 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    n: Option<u64>,

    /// Operations queued for the memory workload (default 100,000; 1,000 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    queued: Option<u64>,

    /// Seconds of HTTP load (default 10; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    http_seconds: Option<u64>,

    /// Backends to run on, comma-separated: sqlite, postgres, mysql.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres,mysql")]
    backends: Vec<BackendName>,

    /// The PostgreSQL server (its user must be able to create databases).
    #[arg(long, env = "ONCELY_BENCH_POSTGRES_URL", default_value = POSTGRES_URL)]
    postgres_url: String,

    /// The MySQL/MariaDB server (its user must be able to create databases).
    #[arg(long, env = "ONCELY_BENCH_MYSQL_URL", default_value = MYSQL_URL)]
    mysql_url: String,

    /// Also run underway, apalis and DBOS on PostgreSQL (builds bench/peers on first use).
    #[arg(long)]
    peers: bool,

    /// The peers crate's manifest.
    #[arg(long, default_value = "bench/peers/Cargo.toml")]
    peers_manifest: PathBuf,

    /// Only workloads whose name starts with one of these, comma-separated (e2e-0ms,
    /// e2e-20ms, overhead-1, overhead-8, uploads, metrics-overhead, limit, sweep, bigtable,
    /// http-accept, queued, soak).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,

    /// Rounds of each comparison (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: Option<u32>,

    /// Minutes of each soak run (default 10; 6 seconds with --quick).
    #[arg(long, value_parser = parse_minutes)]
    soak_minutes: Option<f64>,

    /// Finished payments retained for bigtable-*, comma-separated (default 0,1000000,10000000;
    /// 0,1000 with --quick). SQLite and MySQL run the sizes up to 1,000,000.
    #[arg(long, value_delimiter = ',')]
    bigtable: Option<Vec<u64>>,

    /// Leave PostgreSQL's autovacuum as the server has it, instead of turning it on for
    /// the run.
    #[arg(long)]
    keep_autovacuum: bool,

    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,

    /// Runs one workload in this process and prints its result (used by the harness).
    #[arg(long = "child", hide = true, value_name = "SPEC")]
    child: Option<String>,
}

fn parse_minutes(text: &str) -> Result<f64, String> {
    let minutes: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of minutes"))?;
    if !(0.05..=1_440.0).contains(&minutes) {
        return Err(format!("soak minutes must be 0.05 to 1440, not {minutes}"));
    }
    Ok(minutes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendName {
    Sqlite,
    Postgres,
    Mysql,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    if let Some(spec) = args.child {
        return child(&spec).await;
    }
    let databases = args
        .backends
        .iter()
        .map(|backend| match backend {
            BackendName::Sqlite => "sqlite".to_owned(),
            BackendName::Postgres => args.postgres_url.clone(),
            BackendName::Mysql => args.mysql_url.clone(),
        })
        .collect();
    let plan = Plan {
        quick: args.quick,
        n: args.n.unwrap_or(if args.quick { 300 } else { 20_000 }),
        queued: args
            .queued
            .unwrap_or(if args.quick { 1_000 } else { 100_000 }),
        http_seconds: args.http_seconds.unwrap_or(if args.quick { 1 } else { 10 }),
        databases,
        peers: args.peers,
        peers_manifest: args.peers_manifest,
        only: args.only,
        exe: std::env::current_exe().context("finding the oncely binary")?,
        command: std::env::args()
            .enumerate()
            .map(|(i, arg)| if i == 0 { "oncely".to_owned() } else { arg })
            .collect::<Vec<_>>()
            .join(" "),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
        bigtable: args.bigtable.unwrap_or_else(|| {
            if args.quick {
                vec![0, 1_000]
            } else {
                vec![0, 1_000_000, 10_000_000]
            }
        }),
        bigtable_other_max: 1_000_000,
        soak_seconds: args
            .soak_minutes
            .map_or(if args.quick { 6 } else { 600 }, |minutes| {
                (minutes * 60.0).round() as u64
            }),
        soak_interval_seconds: if args.quick { 2 } else { 60 },
        autovacuum: !args.keep_autovacuum,
    };
    let report = oncely_bench::run_plan(&plan).await;
    let stem = format!(
        "{}{}",
        &report.started_at[..10],
        if plan.quick { "-quick" } else { "" }
    );
    let written = report.write(&args.out, &stem)?;
    let mut stdout = std::io::stdout().lock();
    use std::io::Write as _;
    writeln!(stdout, "{}", report.markdown())?;
    for path in written {
        writeln!(stdout, "wrote {}", path.display())?;
    }
    let failures = report.failures();
    for failure in &failures {
        tracing::error!("{failure}");
    }
    Ok(failures.is_empty())
}

/// One workload, in this process; its result goes to stdout as one JSON line.
async fn child(spec: &str) -> anyhow::Result<bool> {
    let spec: Spec = serde_json::from_str(spec).context("reading the workload")?;
    let result = spec.run().await?;
    let line = serde_json::to_string(&result)?;
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(true)
}
