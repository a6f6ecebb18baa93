//! The `oncely` command: wiring and commands only; the logic lives in the library crates.

mod audit;
mod bench;
mod chaos;
mod duration;
mod keys;
mod new;
mod serve;
mod sim;
mod sims;
mod status;
mod traces;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The process allocates many small, short-lived buffers (rows, JSON batches, HTTP
/// bodies) on every thread; mimalloc serves them with less CPU than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// oncely makes calls to external APIs happen effectively once: accepted under an
/// idempotency key, executed outside any database transaction, finalized from a
/// write-ahead log.
#[derive(Debug, Parser)]
#[command(name = "oncely", version)]
struct Cli {
    /// Log format: `text` for people, `json` for machines.
    #[arg(long, global = true, env = "ONCELY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service: payments, notifications and uploads over HTTP, their workers,
    /// Finalizer and Reaper. With no flags: SQLite in ./oncely.db, 127.0.0.1:8080, a
    /// simulated gateway and a simulated webhook receiver in-process, uploads to
    /// ./oncely-uploads/.
    Serve(Box<serve::ServeArgs>),
    /// Runs the simulated payment gateway, with faults by flag.
    GatewaySim(sims::GatewaySimArgs),
    /// Runs the simulated webhook receiver: checks signatures, records each webhook-id
    /// once, with faults by flag.
    WebhookSim(sims::WebhookSimArgs),
    /// Puts the simulators' faults in front of any HTTP provider (an S3-compatible store,
    /// a staging API): forwards every request to --upstream, except those answered 503,
    /// 429 or not at all first, and loses some answers after the upstream carried the
    /// request out. GET /_fault-proxy/stats counts requests by method.
    FaultProxy(sims::FaultProxyArgs),
    /// Several serve nodes on one database, faulty simulated providers, and faults
    /// thrown at them (SIGKILLs, pauses past the lease, cut database connections, lying
    /// answers); then checks every operation ended and the audit is clean. Exits 1
    /// otherwise.
    Chaos(chaos::ChaosArgs),
    /// Runs the engine of several nodes deterministically from seeds, in simulated time,
    /// over an in-memory store and provider, with crashes, pauses, clock jumps,
    /// commit-unknown store calls and lost answers; checks the invariants after every step.
    /// Exits 1 when a seed breaks one (it prints the seed to replay with --seed).
    Sim(sim::SimArgs),
    /// Reconciles payments with the gateway's ledger and notifications with the webhook
    /// receiver's record; exits 1 on any discrepancy, 2 when it cannot run, 3 when
    /// operations are still in flight (unless --allow-in-flight).
    Audit(audit::AuditArgs),
    /// Measures oncely side by side with its peers and the database's own limit; writes
    /// JSON, a markdown table and a PNG chart. Exits 1 if a workload errors or loses a
    /// payment.
    Bench(bench::BenchArgs),
    /// Writes a new domain: one .rs file with its request type, its orchestrator calling
    /// an HTTP API and a test against a stub of that API, in a new workspace crate or in
    /// a crate of yours (--into).
    New(new::NewArgs),
    /// How each domain stands: operations by state, retrying, stuck past their lease, the
    /// oldest due, what ended and what the Reaper rescued lately.
    Status(status::StatusArgs),
    /// Makes, lists and revokes API keys (the tenant and roles of every request).
    Keys(keys::KeysArgs),
    /// Creates the database if needed and brings its schema up to date.
    Migrate {
        /// The database: `sqlite://PATH`, `sqlite::memory:`, `postgres://USER@HOST/DB` or
        /// `mysql://USER@HOST/DB`; created if it does not exist (and the user may).
        #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
        db: String,
    },
}

/// The log on stderr, and with `otlp` the operations' spans exported there. The tracer
/// provider, when there is one, is to be shut down last: it sends what is left.
fn init_logging(
    format: LogFormat,
    default: &str,
    otlp: Option<&str>,
) -> anyhow::Result<Option<traces::Exporter>> {
    let filter = EnvFilter::try_from_env("ONCELY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log.json().boxed(),
    };
    let exporter = otlp.map(traces::Exporter::new).transpose()?;
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(exporter.as_ref().map(traces::Exporter::layer))
        .init();
    Ok(exporter)
}

async fn migrate(db: &str) -> anyhow::Result<()> {
    let store = oncely_sqlx::AnyStore::open(db)
        .await
        .with_context(|| format!("migrating the database at {db}"))?;
    store.close().await;
    tracing::info!(db, "schema is up to date");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator's engines log every fault they are thrown (thousands a second): only
    // its own findings by default.
    let default_log = match cli.command {
        Command::Sim(_) => "warn,oncely=off",
        _ => "info",
    };
    let otlp = match &cli.command {
        Command::Serve(args) => args.otlp_endpoint.as_deref(),
        _ => None,
    };
    // Before the runtime: the exporter sends from a thread of its own.
    let exporter = match init_logging(cli.log_format, default_log, otlp) {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(cli));
    drop(runtime);
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

async fn run(cli: Cli) -> ExitCode {
    let success = |ok: bool| {
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::GatewaySim(args) => sims::gateway(args).await.map(|()| ExitCode::SUCCESS),
        Command::WebhookSim(args) => sims::webhooks(args).await.map(|()| ExitCode::SUCCESS),
        Command::FaultProxy(args) => sims::fault_proxy(args).await.map(|()| ExitCode::SUCCESS),
        Command::Audit(args) => audit::run(args)
            .await
            .map(|verdict| ExitCode::from(verdict.exit_code())),
        Command::Chaos(args) => chaos::run(args).await.map(success),
        Command::Bench(args) => bench::run(args).await.map(success),
        // Each seed runs on a runtime of its own, on threads of its own.
        Command::Sim(args) => std::thread::spawn(move || sim::run(args))
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the simulator panicked")))
            .map(success),
        Command::New(args) => new::run(args).map(|()| ExitCode::SUCCESS),
        Command::Keys(args) => keys::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Status(args) => status::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate { db } => migrate(&db).await.map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // 2, not 1: `audit` uses 1 for "the books disagree", and a failure to run is not that.
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
