//! `oncely audit`: the flags, the output and the exit code; the audit itself is
//! `oncely_testkit::audit`.

use std::io::Write;

use std::time::Duration;

use anyhow::Context;
use oncely_sqlx::AnyStore;
use oncely_testkit::audit::{Books, Verdict, audit, write_table};
use oncely_upload::Storage;

/// Flags of `oncely audit`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("books").required(true).multiple(true).args(["gateway", "webhooks", "s3_endpoint", "uploads_dir"])))]
pub(crate) struct AuditArgs {
    /// The service's database.
    #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
    db: String,
    /// The gateway whose `GET /v1/ledger` lists every charge: audits payments.
    #[arg(long, env = "ONCELY_GATEWAY_URL")]
    gateway: Option<String>,
    /// The webhook receiver whose `GET /v1/deliveries` lists what arrived: audits the
    /// notifications addressed to it.
    #[arg(long)]
    webhooks: Option<String>,
    /// The URL prefix the audited notifications were sent to, when it is not --webhooks
    /// (a receiver behind another address, or restarted elsewhere).
    #[arg(long, requires = "webhooks")]
    webhook_endpoint: Option<String>,
    /// Also check that every payment that ended COMPLETED or FAILED was announced by its
    /// payment.completed / payment.failed notification (when serve sends payment events).
    #[arg(long)]
    payment_events: bool,
    /// Exit 0 even when operations are still in flight (by default an audit that finds
    /// PENDING, PROCESSING or RETRY_WAIT operations exits 3: their books are not closed yet).
    #[arg(long)]
    allow_in_flight: bool,
    /// The S3-compatible endpoint uploads went to (`serve --s3-endpoint`): audits uploads
    /// (every COMPLETED upload's object there with its checksum, no FAILED one's).
    /// Signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "ONCELY_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// The region requests to --s3-endpoint are signed for.
    #[arg(
        long,
        env = "ONCELY_S3_REGION",
        default_value = "us-east-1",
        requires = "s3_endpoint"
    )]
    s3_region: String,
    /// The directory uploads went to without an S3 endpoint (`serve --uploads-dir`):
    /// audits uploads.
    #[arg(long, conflicts_with = "s3_endpoint")]
    uploads_dir: Option<std::path::PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Returns the verdict: whether the books agree and are closed.
pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<Verdict> {
    let store = AnyStore::open(&args.db)
        .await
        .with_context(|| format!("opening the database at {}", args.db))?;
    let webhooks = args.webhooks.as_deref().map(|receiver| {
        let endpoint = args.webhook_endpoint.as_deref().unwrap_or(receiver);
        (receiver, endpoint)
    });
    let books = Books {
        gateway: args.gateway.as_deref(),
        webhooks,
        payment_events: args.payment_events,
        uploads: match (&args.s3_endpoint, &args.uploads_dir) {
            (Some(endpoint), _) => Some(
                Storage::s3(endpoint, &args.s3_region, Duration::from_secs(30))
                    .context("--s3-endpoint")?,
            ),
            (None, Some(dir)) => Some(Storage::local(dir).context("--uploads-dir")?),
            (None, None) => None,
        },
    };
    let audit = audit(&store, books).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &audit)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &audit)?;
    }
    let verdict = audit.verdict(args.allow_in_flight);
    if verdict == Verdict::InFlight {
        writeln!(
            out,
            "{} operations are still in flight: the audit is not final (exit 3; \
             --allow-in-flight accepts it)",
            audit.in_flight()
        )?;
    }
    Ok(verdict)
}
