//! `oncely gateway-sim`: the simulated payment gateway as a process of its own.

use std::time::Duration;

use anyhow::Context;
use oncely_gateway_sim::{GatewaySim, SimConfig};

use crate::duration;

/// Flags of `oncely gateway-sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewaySimArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// The ledger: a SQLite URL; it survives restarts.
    #[arg(long, default_value = "sqlite://oncely-gateway.db")]
    ledger: String,
    /// Seed of every random draw: the same seed and requests give the same faults.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Shortest added latency.
    #[arg(long, default_value = "0ms", value_parser = duration::parse)]
    latency_min: Duration,
    /// Longest added latency (uniform between the two).
    #[arg(long, default_value = "0ms", value_parser = duration::parse)]
    latency_max: Duration,
    /// Share of requests answered 503 (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests answered 429 with Retry-After (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Share of keys declined with 402, the same way every time (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    decline_rate: f64,
    /// Share of requests that hang past the client's timeout (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a hanging request hangs.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    hang: Duration,
    /// Share of charges committed whose answer is then lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    lost_answer_rate: f64,
}

pub(crate) async fn run(args: GatewaySimArgs) -> anyhow::Result<()> {
    let config = SimConfig {
        seed: args.seed,
        latency_min: args.latency_min,
        latency_max: args.latency_max,
        error_rate: args.error_rate,
        rate_limit_rate: args.rate_limit_rate,
        decline_rate: args.decline_rate,
        timeout_rate: args.timeout_rate,
        hang: args.hang,
        lost_answer_rate: args.lost_answer_rate,
    };
    let sim = GatewaySim::open(&args.ledger, config.clone()).await?;
    let running = sim.spawn(&args.listen).await?;
    tracing::warn!(url = %running.url(), ledger = %args.ledger, ?config, "SIMULATION: simulated payment gateway; no real money moves");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    running.stop();
    Ok(())
}
