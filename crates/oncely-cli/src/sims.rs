//! `oncely gateway-sim` and `oncely webhook-sim`: the simulated providers as processes of
//! their own, with the same faults by flag.

use std::time::Duration;

use anyhow::Context;
use oncely_gateway_sim::{FaultProxy, GatewaySim, RunningSim, SimConfig, WebhookSim};

use crate::duration;

/// The faults both simulators inject.
#[derive(Debug, clap::Args)]
pub(crate) struct FaultFlags {
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
    /// Share of keys refused for good, the same way every time (0 to 1): declined cards
    /// (402) at the gateway, events the endpoint will not take (400) at the receiver.
    #[arg(long, default_value_t = 0.0)]
    decline_rate: f64,
    /// Share of requests that hang past the client's timeout (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    /// How long a hanging request hangs.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    hang: Duration,
    /// Share of requests recorded whose answer is then lost (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    lost_answer_rate: f64,
}

impl FaultFlags {
    fn config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            latency_min: self.latency_min,
            latency_max: self.latency_max,
            error_rate: self.error_rate,
            rate_limit_rate: self.rate_limit_rate,
            decline_rate: self.decline_rate,
            timeout_rate: self.timeout_rate,
            hang: self.hang,
            lost_answer_rate: self.lost_answer_rate,
            ..SimConfig::default()
        }
    }
}

/// Flags of `oncely gateway-sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewaySimArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// The ledger: a SQLite URL; it survives restarts.
    #[arg(long, default_value = "sqlite://oncely-gateway.db")]
    ledger: String,
    #[command(flatten)]
    faults: FaultFlags,
    /// Share of successful charges answered 200 with a lie (0 to 1): another amount,
    /// currency or key, a missing field, or a body that is not JSON. The ledger keeps the
    /// truth.
    #[arg(long, default_value_t = 0.0)]
    lie_rate: f64,
}

/// Flags of `oncely webhook-sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct WebhookSimArgs {
    /// Where to listen; webhooks are posted to /v1/webhooks (or any path under it).
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: String,
    /// The ledger: a SQLite URL; it survives restarts.
    #[arg(long, default_value = "sqlite://oncely-webhooks.db")]
    ledger: String,
    /// The whsec_ secret signatures are checked against: the one `oncely serve
    /// --webhook-secret` signs with.
    #[arg(long, env = "ONCELY_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    #[command(flatten)]
    faults: FaultFlags,
}

/// Flags of `oncely fault-proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct FaultProxyArgs {
    /// The provider to forward to: `http://HOST:PORT` (an S3-compatible store, say).
    #[arg(long)]
    upstream: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: String,
    #[command(flatten)]
    faults: FaultFlags,
}

pub(crate) async fn fault_proxy(args: FaultProxyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.faults.decline_rate == 0.0,
        "--decline-rate means nothing to a proxy: it cannot decline for a provider it does not know"
    );
    let config = args.faults.config();
    let proxy = FaultProxy::new(&args.upstream, config.clone())?;
    let running = proxy.spawn(&args.listen).await?;
    tracing::warn!(url = %running.url(), upstream = %args.upstream, ?config, "SIMULATION: fault proxy");
    until_interrupted(running).await
}

pub(crate) async fn gateway(args: GatewaySimArgs) -> anyhow::Result<()> {
    let config = SimConfig {
        lie_rate: args.lie_rate,
        ..args.faults.config()
    };
    let sim = GatewaySim::open(&args.ledger, config.clone()).await?;
    let running = sim.spawn(&args.listen).await?;
    tracing::warn!(url = %running.url(), ledger = %args.ledger, ?config, "SIMULATION: simulated payment gateway; no real money moves");
    until_interrupted(running).await
}

pub(crate) async fn webhooks(args: WebhookSimArgs) -> anyhow::Result<()> {
    let config = args.faults.config();
    let sim = WebhookSim::open(&args.ledger, &args.secret, config.clone()).await?;
    let running = sim.spawn(&args.listen).await?;
    tracing::warn!(url = %format!("{}/v1/webhooks", running.url()), ledger = %args.ledger, ?config, "SIMULATION: simulated webhook receiver");
    until_interrupted(running).await
}

async fn until_interrupted(running: RunningSim) -> anyhow::Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    running.stop();
    Ok(())
}
