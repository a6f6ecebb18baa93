//! `oncely serve`: the payment service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use oncely::{Engine, EngineConfig, RetryPolicy};
use oncely_gateway_sim::{GatewaySim, SimConfig};
use oncely_http::ApiConfig;
use oncely_payment::{
    GatewayClient, GatewayTimeouts, PaymentCommand, PaymentOrchestrator, PaymentRequest,
};
use oncely_sqlx::AnyStore;
use tokio::net::TcpListener;

use crate::duration;

/// Flags of `oncely serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The database: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
    db: String,
    /// Where to listen.
    #[arg(long, env = "ONCELY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The payment gateway's base URL. Without it, a simulated gateway runs in-process
    /// on --sim-listen, with its ledger in ./oncely-gateway.db.
    #[arg(long, env = "ONCELY_GATEWAY_URL")]
    gateway_url: Option<String>,
    /// Where the in-process simulated gateway listens (only without --gateway-url); its
    /// GET /v1/ledger is what `oncely audit --gateway` reads.
    #[arg(long, env = "ONCELY_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    sim_listen: String,
    /// Gateway calls running at once.
    #[arg(long, env = "ONCELY_WORKERS", default_value_t = 64)]
    workers: usize,
    /// Refuse payments without an Idempotency-Key header (400) instead of using the
    /// business key PAY-{customerId}-{orderId}-{paymentMethod}.
    #[arg(long, env = "ONCELY_REQUIRE_IDEMPOTENCY_KEY")]
    require_idempotency_key: bool,
    /// How long a worker's claim on a payment lasts before another may take it over.
    #[arg(long, env = "ONCELY_LEASE_TTL", default_value = "60s", value_parser = duration::parse)]
    lease_ttl: Duration,
    /// Gateway request timeout (must be below the lease).
    #[arg(long, env = "ONCELY_GATEWAY_TIMEOUT", default_value = "10s", value_parser = duration::parse)]
    gateway_timeout: Duration,
    /// Base of the retry backoff: min(backoff-max, 2^attempt × this).
    #[arg(long, env = "ONCELY_BACKOFF_BASE", default_value = "10s", value_parser = duration::parse)]
    backoff_base: Duration,
    /// Longest retry backoff.
    #[arg(long, env = "ONCELY_BACKOFF_MAX", default_value = "300s", value_parser = duration::parse)]
    backoff_max: Duration,
    /// Attempts before a payment is given up as TIMEOUT.
    #[arg(long, env = "ONCELY_ATTEMPTS_MAX", default_value_t = 5)]
    attempts_max: u32,
    /// How often idle workers look for due retries.
    #[arg(long, env = "ONCELY_POLL_INTERVAL", default_value = "500ms", value_parser = duration::parse)]
    poll_interval: Duration,
    /// How long finished payments are kept; older ones are purged with their log and their
    /// keys can be used again. `off` keeps them for ever.
    #[arg(long, env = "ONCELY_RETENTION", default_value = "7d", value_parser = duration::parse_optional)]
    retention: std::option::Option<Duration>, // spelled out: clap would parse the inner type
    /// Do not migrate the database at start (run `oncely migrate` as a deploy step
    /// instead); /readyz answers 503 until the schema is there.
    #[arg(long, env = "ONCELY_NO_MIGRATE")]
    no_migrate: bool,
    /// How long running calls may finish after SIGTERM or SIGINT.
    #[arg(long, env = "ONCELY_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration::parse)]
    shutdown_grace: Duration,
}

impl ServeArgs {
    fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let config = EngineConfig {
            workers: self.workers,
            lease_ttl: self.lease_ttl,
            call_timeout: self.lease_ttl.mul_f64(0.8),
            poll_interval: self.poll_interval,
            maintenance_interval: self.poll_interval.max(Duration::from_millis(100)) * 4,
            finalize_grace: self.lease_ttl / 10,
            retention: self.retention,
            ..EngineConfig::default()
        };
        config.validate()?;
        anyhow::ensure!(
            self.gateway_timeout < config.call_timeout,
            "--gateway-timeout ({:?}) must be below four fifths of --lease-ttl ({:?})",
            self.gateway_timeout,
            self.lease_ttl
        );
        anyhow::ensure!(self.attempts_max >= 1, "--attempts-max must be at least 1");
        Ok(config)
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: self.attempts_max,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            ..RetryPolicy::default()
        }
    }
}

async fn gateway_url(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.gateway_url {
        return Ok(url.clone());
    }
    let ledger = "sqlite://oncely-gateway.db";
    let sim = GatewaySim::open(ledger, SimConfig::default())
        .await
        .context("starting the in-process simulated gateway")?;
    let running = sim.spawn(&args.sim_listen).await?;
    let url = running.url();
    tracing::warn!(%url, ledger, "SIMULATION: no --gateway-url given, payments go to the built-in simulated gateway; no real money moves");
    Ok(url)
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.engine_config()?;
    let store = if args.no_migrate {
        AnyStore::open_without_migrating(&args.db).await
    } else {
        AnyStore::open(&args.db).await
    }
    .with_context(|| format!("opening the database at {}", args.db))?;
    let gateway = gateway_url(&args).await?;
    let timeouts = GatewayTimeouts {
        connect: Duration::from_secs(3).min(args.gateway_timeout),
        request: args.gateway_timeout,
    };
    let client = GatewayClient::new(&gateway, timeouts)?;
    let orchestrator = PaymentOrchestrator::new(client).with_retry_policy(args.retry_policy());
    let engine = Arc::new(
        Engine::builder(store, orchestrator)
            .config(config)
            .start()?,
    );
    let mut api = ApiConfig::new("payments");
    api.require_idempotency_key = args.require_idempotency_key;
    api.request_schema = payment_request_schema();
    let router = oncely_http::routes(engine.clone(), api, |request: PaymentRequest| {
        PaymentCommand::try_from(request)
    });
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, db = %args.db, %gateway, "oncely is serving payments");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    match Arc::into_inner(engine) {
        Some(engine) => engine.shutdown(args.shutdown_grace).await,
        None => {
            tracing::warn!("requests still hold the engine; stopping without waiting for calls")
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: no new requests, finishing running calls");
}

fn payment_request_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["orderId", "amount", "paymentMethod", "customerId"],
        "properties": {
            "orderId": { "type": "integer", "minimum": 1 },
            "customerId": { "type": "integer", "minimum": 1 },
            "amount": { "type": ["string", "number"], "description": "exact decimal > 0, at most 2 decimal places", "examples": ["25.00"] },
            "paymentMethod": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,50}$" },
            "currency": { "type": "string", "pattern": "^[A-Z]{3}$", "default": "USD" }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> ServeArgs {
        Wrapper::try_parse_from([&["serve"], args].concat())
            .unwrap()
            .serve
    }

    #[test]
    fn retention_defaults_to_seven_days_and_can_be_turned_off() {
        assert_eq!(parse(&[]).retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse(&["--retention", "off"]).retention, None);
        assert_eq!(
            parse(&["--retention", "12h"]).retention,
            Some(Duration::from_secs(43_200))
        );
        assert!(Wrapper::try_parse_from(["serve", "--retention", "soon"]).is_err());
    }

    #[test]
    fn a_gateway_timeout_beyond_the_lease_is_refused() {
        let args = parse(&["--lease-ttl", "5s", "--gateway-timeout", "10s"]);
        assert!(args.engine_config().is_err());
        assert!(parse(&[]).engine_config().is_ok());
    }
}
