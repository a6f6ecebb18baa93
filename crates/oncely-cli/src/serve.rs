//! `oncely serve`: payments, notifications and uploads, one service, one database.

use std::time::Duration;

use anyhow::Context;
use oncely::{Engine, EngineConfig, NodeId, RetryPolicy};
use oncely_gateway_sim::{GatewaySim, SimConfig, WebhookSim};
use std::num::NonZeroU32;

use oncely_http::{Console, Keys, RateLimit, ServeOptions, Service, tls_config};
use oncely_notification::Notifier;
use oncely_payment::{GatewayClient, PaymentOrchestrator};
use oncely_reqwest::{Destinations, Timeouts, WebhookClient, WebhookSecret};
use oncely_sqlx::AnyStore;
use oncely_upload::{Storage, Uploader};
use tokio::net::TcpListener;

use crate::duration;

/// Flags of `oncely serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The database: `sqlite://PATH`, `postgres://USER@HOST/DB` or `mysql://USER@HOST/DB`;
    /// created if it does not exist (and the user may).
    #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
    db: String,
    /// Where to listen.
    #[arg(long, env = "ONCELY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Refuse creates without an Idempotency-Key header (400) instead of using the
    /// domain's business key (payments: PAY-{customerId}-{orderId}-{paymentMethod}).
    #[arg(long, env = "ONCELY_REQUIRE_IDEMPOTENCY_KEY")]
    require_idempotency_key: bool,
    /// Serve Prometheus metrics at GET /metrics on this address (a separate listener, for
    /// an internal interface: the figures are every tenant's). Off by default.
    #[arg(long, env = "ONCELY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// `http://127.0.0.1:4318` (`/v1/traces` is added unless the URL ends with it): the
    /// spans of each operation's life (accept, claim, attempt, call, record, finalize,
    /// reap) in the trace its `traceparent` named. Batched; `OTEL_BSP_*` tune the batches.
    /// Off by default.
    #[arg(long, env = "ONCELY_OTLP_ENDPOINT", value_parser = crate::traces::endpoint)]
    pub(crate) otlp_endpoint: Option<String>,
    /// This process's name, stable across its restarts and unique among the live nodes
    /// (a pod or host name). At start the node takes back at once what it was running
    /// when it last died, instead of waiting for the lease. Default: the host name and
    /// the --listen port, as `web-1-8080`.
    #[arg(long, env = "ONCELY_NODE_ID", value_parser = parse_node_id)]
    node_id: Option<NodeId>,
    /// How long a worker's claim on an operation lasts before another may take it over.
    #[arg(long, env = "ONCELY_LEASE_TTL", default_value = "60s", value_parser = duration::parse)]
    lease_ttl: Duration,
    /// How often idle workers look for due retries.
    #[arg(long, env = "ONCELY_POLL_INTERVAL", default_value = "500ms", value_parser = duration::parse)]
    poll_interval: Duration,
    /// How long finished operations are kept; older ones are purged with their log and
    /// their keys can be used again. `off` keeps them for ever.
    #[arg(long, env = "ONCELY_RETENTION", default_value = "7d", value_parser = duration::parse_optional)]
    retention: std::option::Option<Duration>, // spelled out: clap would parse the inner type
    /// Do not migrate the database at start (run `oncely migrate` as a deploy step
    /// instead); /readyz answers 503 until the schema is there.
    #[arg(long, env = "ONCELY_NO_MIGRATE")]
    no_migrate: bool,
    /// How long running calls may finish after SIGTERM or SIGINT.
    #[arg(long, env = "ONCELY_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration::parse)]
    shutdown_grace: Duration,

    /// Requests a second each API key may make (a token bucket; `0` turns the limit off).
    /// Over it: 429 with Retry-After and RateLimit headers.
    #[arg(
        long,
        env = "ONCELY_RATE_LIMIT",
        default_value_t = 100,
        help_heading = "Limits"
    )]
    rate_limit: u32,
    /// Requests a key may make at once before the rate applies.
    #[arg(
        long,
        env = "ONCELY_RATE_BURST",
        default_value_t = 200,
        help_heading = "Limits"
    )]
    rate_burst: u32,
    /// From a request's first byte to the end of its headers; slower clients are cut off.
    #[arg(long, env = "ONCELY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration::parse, help_heading = "Limits")]
    header_timeout: Duration,
    /// Reading a request's body; slower bodies get 408.
    #[arg(long, env = "ONCELY_BODY_TIMEOUT", default_value = "30s", value_parser = duration::parse, help_heading = "Limits")]
    body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    #[arg(long, env = "ONCELY_IDLE_TIMEOUT", default_value = "60s", value_parser = duration::parse, help_heading = "Limits")]
    idle_timeout: Duration,
    /// Connections open at once; more are closed as they arrive.
    #[arg(
        long,
        env = "ONCELY_MAX_CONNECTIONS",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    max_connections: usize,
    /// How often each node reloads API keys: a key revoked on one node is refused by all
    /// within this.
    #[arg(long, env = "ONCELY_KEYS_RELOAD", default_value = "2s", value_parser = duration::parse, help_heading = "Limits")]
    keys_reload: Duration,

    /// Do not serve the web console at /console.
    #[arg(long, env = "ONCELY_NO_CONSOLE", help_heading = "Console")]
    no_console: bool,
    /// The secret console sessions are signed with (32 bytes or more), the same on every
    /// node behind one address so a login on one is good on all. Without it each process
    /// draws its own, and its sessions end when it stops.
    #[arg(
        long,
        env = "ONCELY_CONSOLE_SECRET",
        hide_env_values = true,
        help_heading = "Console"
    )]
    console_secret: Option<String>,
    /// Mark the console's cookie Secure (browsers send it over HTTPS only): set it when a
    /// proxy terminates TLS in front of oncely. With --tls-cert it is always set.
    #[arg(long, env = "ONCELY_CONSOLE_SECURE_COOKIE", help_heading = "Console")]
    console_secure_cookie: bool,

    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(
        long,
        env = "ONCELY_TLS_CERT",
        requires = "tls_key",
        help_heading = "TLS"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "ONCELY_TLS_KEY",
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    tls_key: Option<std::path::PathBuf>,

    /// The payment gateway's base URL. Without it, a simulated gateway runs in-process
    /// on --sim-listen, with its ledger in ./oncely-gateway.db.
    #[arg(long, env = "ONCELY_GATEWAY_URL", help_heading = "Payments")]
    gateway_url: Option<String>,
    /// Where the in-process simulated gateway listens (only without --gateway-url); its
    /// GET /v1/ledger is what `oncely audit --gateway` reads.
    #[arg(
        long,
        env = "ONCELY_SIM_LISTEN",
        default_value = "127.0.0.1:8081",
        help_heading = "Payments"
    )]
    sim_listen: String,
    /// Gateway calls running at once.
    #[arg(
        long,
        env = "ONCELY_WORKERS",
        default_value_t = 64,
        help_heading = "Payments"
    )]
    workers: usize,
    /// Gateway request timeout (must be below four fifths of the lease).
    #[arg(long, env = "ONCELY_GATEWAY_TIMEOUT", default_value = "10s", value_parser = duration::parse, help_heading = "Payments")]
    gateway_timeout: Duration,
    /// Base of the retry backoff: min(backoff-max, 2^attempt × this).
    #[arg(long, env = "ONCELY_BACKOFF_BASE", default_value = "10s", value_parser = duration::parse, help_heading = "Payments")]
    backoff_base: Duration,
    /// Longest retry backoff.
    #[arg(long, env = "ONCELY_BACKOFF_MAX", default_value = "300s", value_parser = duration::parse, help_heading = "Payments")]
    backoff_max: Duration,
    /// Attempts before a payment is given up as TIMEOUT.
    #[arg(
        long,
        env = "ONCELY_ATTEMPTS_MAX",
        default_value_t = 5,
        help_heading = "Payments"
    )]
    attempts_max: u32,
    /// Where payment.completed / payment.failed events go, as notifications sent in the
    /// same transaction as the payment's end. Default: the built-in webhook receiver when
    /// it runs (no --webhook-secret), otherwise off. `off` turns them off.
    #[arg(long, env = "ONCELY_PAYMENT_WEBHOOK_URL", help_heading = "Payments")]
    payment_webhook_url: Option<String>,

    /// The whsec_ secret notifications are signed with (Standard Webhooks). Required to
    /// send to real endpoints; without it, a webhook receiver runs in-process on
    /// --webhook-sim-listen with a secret generated for this run, and notifications may go
    /// there only.
    #[arg(
        long,
        env = "ONCELY_WEBHOOK_SECRET",
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    webhook_secret: Option<String>,
    /// Hosts notifications may go to, comma-separated: `hooks.example.com`,
    /// `*.example.com`, an IP, each with an optional `:port`. Listed hosts may be internal;
    /// without a list, any host whose addresses are all public is allowed. Loopback,
    /// private, link-local and unspecified addresses are refused unless listed.
    #[arg(
        long,
        env = "ONCELY_WEBHOOK_ALLOW",
        value_delimiter = ',',
        help_heading = "Notifications"
    )]
    webhook_allow: Vec<String>,
    /// Where the in-process webhook receiver listens (only without --webhook-secret); its
    /// GET /v1/deliveries is what `oncely audit --webhooks` reads. Ledger:
    /// ./oncely-webhooks.db.
    #[arg(
        long,
        env = "ONCELY_WEBHOOK_SIM_LISTEN",
        default_value = "127.0.0.1:8082",
        help_heading = "Notifications"
    )]
    webhook_sim_listen: String,
    /// Webhook deliveries running at once.
    #[arg(
        long,
        env = "ONCELY_WEBHOOK_WORKERS",
        default_value_t = 16,
        help_heading = "Notifications"
    )]
    webhook_workers: usize,
    /// Webhook request timeout (must be below four fifths of the lease).
    #[arg(long, env = "ONCELY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = duration::parse, help_heading = "Notifications")]
    webhook_timeout: Duration,
    /// Base of the delivery retry backoff.
    #[arg(long, env = "ONCELY_WEBHOOK_BACKOFF_BASE", default_value = "1s", value_parser = duration::parse, help_heading = "Notifications")]
    webhook_backoff_base: Duration,
    /// Longest delivery retry backoff.
    #[arg(long, env = "ONCELY_WEBHOOK_BACKOFF_MAX", default_value = "300s", value_parser = duration::parse, help_heading = "Notifications")]
    webhook_backoff_max: Duration,
    /// Attempts before a notification is given up as TIMEOUT.
    #[arg(
        long,
        env = "ONCELY_WEBHOOK_ATTEMPTS_MAX",
        default_value_t = 10,
        help_heading = "Notifications"
    )]
    webhook_attempts_max: u32,

    /// The S3-compatible endpoint uploads go to (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`), path-style, signed with AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN). Without it, uploads go to --uploads-dir.
    #[arg(long, env = "ONCELY_S3_ENDPOINT", help_heading = "Uploads")]
    s3_endpoint: Option<String>,
    /// The region requests to --s3-endpoint are signed for.
    #[arg(
        long,
        env = "ONCELY_S3_REGION",
        default_value = "us-east-1",
        requires = "s3_endpoint",
        help_heading = "Uploads"
    )]
    s3_region: String,
    /// Where uploads go without --s3-endpoint: a directory per bucket.
    #[arg(
        long,
        env = "ONCELY_UPLOADS_DIR",
        default_value = "oncely-uploads",
        conflicts_with = "s3_endpoint",
        help_heading = "Uploads"
    )]
    uploads_dir: std::path::PathBuf,
    /// Object writes running at once.
    #[arg(
        long,
        env = "ONCELY_UPLOAD_WORKERS",
        default_value_t = 16,
        help_heading = "Uploads"
    )]
    upload_workers: usize,
    /// Object store request timeout (must be below four fifths of the lease).
    #[arg(long, env = "ONCELY_UPLOAD_TIMEOUT", default_value = "30s", value_parser = duration::parse, help_heading = "Uploads")]
    upload_timeout: Duration,
    /// Base of the upload retry backoff.
    #[arg(long, env = "ONCELY_UPLOAD_BACKOFF_BASE", default_value = "1s", value_parser = duration::parse, help_heading = "Uploads")]
    upload_backoff_base: Duration,
    /// Longest upload retry backoff.
    #[arg(long, env = "ONCELY_UPLOAD_BACKOFF_MAX", default_value = "60s", value_parser = duration::parse, help_heading = "Uploads")]
    upload_backoff_max: Duration,
    /// Attempts before an upload is given up as TIMEOUT.
    #[arg(
        long,
        env = "ONCELY_UPLOAD_ATTEMPTS_MAX",
        default_value_t = 8,
        help_heading = "Uploads"
    )]
    upload_attempts_max: u32,
}

/// One domain's engine settings, as flags give them.
struct DomainFlags<'a> {
    name: &'a str,
    workers: usize,
    timeout: Duration,
    attempts_max: u32,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl DomainFlags<'_> {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(self.backoff_base, self.backoff_max).attempts(self.attempts_max)
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(3).min(self.timeout),
            request: self.timeout,
        }
    }
}

impl ServeArgs {
    fn payments(&self) -> DomainFlags<'_> {
        DomainFlags {
            name: "--gateway-timeout",
            workers: self.workers,
            timeout: self.gateway_timeout,
            attempts_max: self.attempts_max,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
        }
    }

    fn notifications(&self) -> DomainFlags<'_> {
        DomainFlags {
            name: "--webhook-timeout",
            workers: self.webhook_workers,
            timeout: self.webhook_timeout,
            attempts_max: self.webhook_attempts_max,
            backoff_base: self.webhook_backoff_base,
            backoff_max: self.webhook_backoff_max,
        }
    }

    fn uploads(&self) -> DomainFlags<'_> {
        DomainFlags {
            name: "--upload-timeout",
            workers: self.upload_workers,
            timeout: self.upload_timeout,
            attempts_max: self.upload_attempts_max,
            backoff_base: self.upload_backoff_base,
            backoff_max: self.upload_backoff_max,
        }
    }

    /// Where uploads go: the S3 endpoint, or the local directory (logged as such).
    fn storage(&self) -> anyhow::Result<Storage> {
        let storage = match &self.s3_endpoint {
            Some(endpoint) => Storage::s3(endpoint, &self.s3_region, self.upload_timeout)
                .context("--s3-endpoint")?,
            None => {
                let storage = Storage::local(&self.uploads_dir).context("--uploads-dir")?;
                tracing::warn!(dir = %self.uploads_dir.display(), "no --s3-endpoint given: uploads go to a local directory, a directory per bucket");
                storage
            }
        };
        Ok(storage)
    }

    /// The engine settings of one domain: its own workers and call timeout, the lease,
    /// polling and retention of the service.
    fn engine_config(&self, domain: &DomainFlags<'_>) -> anyhow::Result<EngineConfig> {
        let config = EngineConfig {
            workers: domain.workers,
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
            domain.timeout < config.call_timeout,
            "{} ({:?}) must be below four fifths of --lease-ttl ({:?})",
            domain.name,
            domain.timeout,
            self.lease_ttl
        );
        anyhow::ensure!(domain.attempts_max >= 1, "attempts must be at least 1");
        Ok(config)
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

/// Where notifications may go and how they are signed, and where payment events go.
struct Webhooks {
    client: WebhookClient,
    payment_events: Option<String>,
}

async fn webhooks(args: &ServeArgs) -> anyhow::Result<Webhooks> {
    let timeouts = args.notifications().timeouts();
    let (secret, destinations, receiver) = match &args.webhook_secret {
        Some(secret) => {
            let secret = WebhookSecret::new(secret).context("--webhook-secret")?;
            (secret, Destinations::allowing(&args.webhook_allow), None)
        }
        None => {
            anyhow::ensure!(
                args.webhook_allow.is_empty(),
                "--webhook-allow needs --webhook-secret: without one, notifications go only to the built-in receiver"
            );
            let secret = WebhookSecret::generate()?;
            let ledger = "sqlite://oncely-webhooks.db";
            let sim = WebhookSim::open(ledger, secret.expose(), SimConfig::default())
                .await
                .context("starting the in-process webhook receiver")?;
            let running = sim.spawn(&args.webhook_sim_listen).await?;
            let url = format!("{}/v1/webhooks", running.url());
            tracing::warn!(%url, ledger, "SIMULATION: no --webhook-secret given, notifications go only to the built-in webhook receiver, signed with a secret made for this run");
            let only_it = Destinations::allowing([running.addr.to_string()]);
            (secret, only_it, Some(url))
        }
    };
    let client = WebhookClient::new(secret, destinations, timeouts)?;
    let payment_events = match args.payment_webhook_url.as_deref() {
        Some("off") => None,
        Some(url) => {
            client
                .check(url)
                .await
                .with_context(|| format!("--payment-webhook-url {url}"))?;
            Some(url.to_owned())
        }
        None => receiver,
    };
    Ok(Webhooks {
        client,
        payment_events,
    })
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let payments = args.payments();
    let notifications = args.notifications();
    let payment_config = args.engine_config(&payments)?;
    let notification_config = args.engine_config(&notifications)?;
    let uploads = args.uploads();
    let upload_config = EngineConfig {
        // A batch's rows travel as one statement parameter: two 5 MiB objects (base64)
        // stay below MySQL's default max_allowed_packet of 16 MiB.
        batch_size_max: 2,
        ..args.engine_config(&uploads)?
    };
    let storage = args.storage()?;
    let described = storage.describe();
    let store = if args.no_migrate {
        AnyStore::open_without_migrating(&args.db).await
    } else {
        AnyStore::open(&args.db).await
    }
    .with_context(|| format!("opening the database at {}", args.db))?;
    let gateway = gateway_url(&args).await?;
    let webhooks = webhooks(&args).await?;
    let mut orchestrator =
        PaymentOrchestrator::new(GatewayClient::new(&gateway, payments.timeouts())?);
    if let Some(url) = &webhooks.payment_events {
        orchestrator = orchestrator.with_events(url.clone());
    }
    if let Some(listen) = &args.metrics_listen {
        serve_metrics(listen).await?;
    }
    let node = match &args.node_id {
        Some(node) => node.clone(),
        None => default_node_id(&args.listen)?,
    };
    tracing::info!(%node, "node id");
    let payment_engine = Engine::builder(store.clone(), orchestrator)
        .node(&node)
        .config(payment_config)
        .retry_policy(payments.retry_policy())
        .start()?;
    let notification_engine = Engine::builder(store.clone(), Notifier(webhooks.client))
        .node(&node)
        .config(notification_config)
        .retry_policy(notifications.retry_policy())
        .start()?;
    let upload_engine = Engine::builder(store.clone(), Uploader(storage))
        .node(&node)
        .config(upload_config)
        .retry_policy(uploads.retry_policy())
        .start()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let keys = Keys::load(store.clone(), args.keys_reload).await;
    if keys.loaded() && keys.protected() {
        anyhow::ensure!(
            local.ip().is_loopback(),
            "no API key exists, so oncely serves only this machine: listen on 127.0.0.1, or make a key first with `oncely keys create --db {} --tenant NAME --role submit,read,operate`",
            args.db
        );
        tracing::warn!(
            "UNAUTHENTICATED: no API key exists; serving clients on this machine only, as tenant `default` with every role, until `oncely keys create` makes one"
        );
    }
    let mut builder = Service::builder()
        .require_idempotency_key(args.require_idempotency_key)
        .keys(keys);
    if let (Some(rate), Some(burst)) = (
        NonZeroU32::new(args.rate_limit),
        NonZeroU32::new(args.rate_burst),
    ) {
        builder = builder.rate_limit(RateLimit::per_second(rate, burst));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key).context("--tls-cert / --tls-key")?),
        _ => None,
    };
    if !args.no_console {
        let console = match &args.console_secret {
            Some(secret) => Console::with_secret(secret.as_bytes()).context("--console-secret")?,
            None => Console::new()?,
        };
        builder =
            builder.console(console.secure_cookie(tls.is_some() || args.console_secure_cookie));
    }
    let service = builder
        .domain(payment_engine)
        .domain(notification_engine)
        .domain(upload_engine)
        .build()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = ServeOptions {
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections.max(1),
        tls,
        grace: args.shutdown_grace,
    };
    let events = webhooks.payment_events.as_deref().unwrap_or("off");
    tracing::info!(listen = %format!("{scheme}://{local}"), db = %args.db, %gateway, payment_events = events, uploads = %described, "oncely is serving payments, notifications and uploads");
    if !args.no_console {
        tracing::info!(url = %format!("{scheme}://{local}/console"), "the web console is at /console");
    }
    service
        .serve_with(listener, shutdown_signal(), options)
        .await
        .context("serving HTTP")
}

/// Installs the Prometheus recorder and serves `GET /metrics` on `listen`.
async fn serve_metrics(listen: &str) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("oncely_call_duration_seconds".to_owned()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )
        .context("configuring the metrics")?
        .set_buckets_for_metric(
            Matcher::Full("oncely_store_seconds".to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )
        .context("configuring the metrics")?
        .set_buckets_for_metric(
            Matcher::Full("oncely_batch_size".to_owned()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )
        .context("configuring the metrics")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--metrics-listen {listen}"))?;
    let local = listener.local_addr()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    tracing::info!(listen = %format!("http://{local}/metrics"), "serving Prometheus metrics");
    Ok(())
}

fn parse_node_id(value: &str) -> Result<NodeId, String> {
    NodeId::new(value).map_err(|error| error.to_string())
}

/// The host name and the port of `listen`, with any character a node id cannot hold
/// turned into `-`.
fn default_node_id(listen: &str) -> anyhow::Result<NodeId> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let port = listen.rsplit_once(':').map_or("", |(_, port)| port);
    let name: String = format!("{}-{port}", host.trim())
        .trim_matches('-')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let start = name.len().saturating_sub(NodeId::MAX_LENGTH);
    NodeId::new(&name[start..]).context("making a node id from the host name; give --node-id")
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
    fn a_call_timeout_beyond_the_lease_is_refused_per_domain() {
        let args = parse(&["--lease-ttl", "5s", "--gateway-timeout", "10s"]);
        let error = args.engine_config(&args.payments()).unwrap_err();
        assert!(error.to_string().contains("--gateway-timeout"), "{error}");
        let args = parse(&[
            "--lease-ttl",
            "5s",
            "--webhook-timeout",
            "4s",
            "--gateway-timeout",
            "1s",
        ]);
        assert!(args.engine_config(&args.payments()).is_ok());
        let error = args.engine_config(&args.notifications()).unwrap_err();
        assert!(error.to_string().contains("--webhook-timeout"), "{error}");
    }

    #[test]
    fn the_default_node_id_is_the_host_and_port_in_the_characters_a_node_id_allows() {
        let node = default_node_id("127.0.0.1:8080").unwrap();
        assert!(node.as_str().ends_with("-8080"), "{node}");
        assert!(NodeId::new(node.as_str()).is_ok());
        let refused = Wrapper::try_parse_from(["serve", "--node-id", "web 1"]).unwrap_err();
        assert!(refused.to_string().contains("node id"), "{refused}");
        assert_eq!(
            parse(&["--node-id", "web-1"]).node_id.unwrap().as_str(),
            "web-1"
        );
    }

    #[test]
    fn each_domain_has_its_own_workers_and_retries() {
        let args = parse(&[
            "--workers",
            "8",
            "--webhook-workers",
            "3",
            "--webhook-attempts-max",
            "4",
        ]);
        assert_eq!(args.engine_config(&args.payments()).unwrap().workers, 8);
        assert_eq!(
            args.engine_config(&args.notifications()).unwrap().workers,
            3
        );
        assert_eq!(args.notifications().retry_policy().attempts_max, 4);
        assert_eq!(args.payments().retry_policy().attempts_max, 5);
        assert_eq!(args.webhook_allow, Vec::<String>::new());
        let allow = parse(&["--webhook-allow", "a.example.com,127.0.0.1:9"]).webhook_allow;
        assert_eq!(allow, ["a.example.com", "127.0.0.1:9"]);
    }

    #[tokio::test]
    async fn an_allowlist_without_a_secret_or_a_refused_event_url_stops_the_start() {
        let args = parse(&["--webhook-allow", "hooks.example.com"]);
        let error = webhooks(&args).await.err().unwrap();
        assert!(error.to_string().contains("--webhook-secret"), "{error}");
        let secret = WebhookSecret::generate().unwrap();
        let args = parse(&[
            "--webhook-secret",
            secret.expose(),
            "--payment-webhook-url",
            "http://169.254.169.254/latest",
        ]);
        let error = webhooks(&args).await.err().unwrap();
        assert!(
            format!("{error:#}").contains("not a public address"),
            "{error:#}"
        );
        let args = parse(&["--webhook-secret", "whsec_short"]);
        assert!(webhooks(&args).await.is_err());
    }
}
