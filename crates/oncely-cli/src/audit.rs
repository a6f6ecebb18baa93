//! `oncely audit`: payments against the gateway's ledger, notifications against the
//! webhook receiver's record, and payment events against the payments that ended.

use std::io::Write;

use anyhow::Context;
use oncely::{DomainName, ListFilter, Operation, Orchestrator, Store};
use oncely_notification::Notifier;
use oncely_notification::audit::{NotificationReport, ReceiverRecord};
use oncely_payment::audit::{AuditReport, Discrepancy};
use oncely_payment::{GatewayClient, GatewayTimeouts, PaymentOrchestrator};
use oncely_sqlx::AnyStore;
use serde::Serialize;

/// Flags of `oncely audit`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("books").required(true).multiple(true).args(["gateway", "webhooks"])))]
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
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `oncely audit` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every book agrees and nothing is in flight (or in-flight work is allowed): 0.
    Clean,
    /// A discrepancy: 1.
    Discrepancies,
    /// The books agree so far, but operations are still in flight: 3.
    InFlight,
}

impl Verdict {
    /// The process exit code of the verdict (2 is "the audit could not run").
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Discrepancies => 1,
            Self::InFlight => 3,
        }
    }
}

/// What an audit found, per book.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Audit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payments: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notifications: Option<NotificationReport>,
    /// Payments that ended without their event, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payment_events: Option<Vec<Discrepancy>>,
}

impl Audit {
    /// Whether every book agrees.
    pub(crate) fn is_clean(&self) -> bool {
        self.payments.as_ref().is_none_or(AuditReport::is_clean)
            && self
                .notifications
                .as_ref()
                .is_none_or(NotificationReport::is_clean)
            && self.payment_events.as_ref().is_none_or(Vec::is_empty)
    }

    /// The verdict: discrepancies first, then work still in flight (unless allowed).
    pub(crate) fn verdict(&self, allow_in_flight: bool) -> Verdict {
        if !self.is_clean() {
            Verdict::Discrepancies
        } else if self.in_flight() > 0 && !allow_in_flight {
            Verdict::InFlight
        } else {
            Verdict::Clean
        }
    }

    /// How many operations are still in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.payments.as_ref().map_or(0, |r| r.non_terminal.len())
            + self
                .notifications
                .as_ref()
                .map_or(0, |r| r.non_terminal.len())
    }
}

/// Reads the books named and compares them with the store.
/// The books to compare the store with.
pub(crate) struct Books<'a> {
    /// The gateway's base URL.
    pub(crate) gateway: Option<&'a str>,
    /// The webhook receiver's base URL, and the prefix of the URLs notifications to it
    /// were sent to.
    pub(crate) webhooks: Option<(&'a str, &'a str)>,
    /// Whether payments announce their ends.
    pub(crate) payment_events: bool,
}

pub(crate) async fn audit(store: &AnyStore, books: Books<'_>) -> anyhow::Result<Audit> {
    let Books {
        gateway,
        webhooks,
        payment_events,
    } = books;
    let payments = all_of::<PaymentOrchestrator>(store).await?;
    let notifications = all_of::<Notifier>(store).await?;
    let mut audit = Audit {
        payments: None,
        notifications: None,
        payment_events: None,
    };
    if let Some(gateway) = gateway {
        let charges = GatewayClient::new(gateway, GatewayTimeouts::default())?
            .ledger()
            .await
            .with_context(|| format!("reading the ledger of {gateway}"))?;
        audit.payments = Some(oncely_payment::audit::reconcile(&payments, &charges));
    }
    if let Some((receiver, endpoint)) = webhooks {
        let url = format!("{}/v1/deliveries", receiver.trim_end_matches('/'));
        let record: ReceiverRecord = async {
            reqwest::get(&url)
                .await?
                .error_for_status()?
                .json::<ReceiverRecord>()
                .await
        }
        .await
        .with_context(|| format!("reading the deliveries of {receiver}"))?;
        audit.notifications = Some(oncely_notification::audit::reconcile(
            &notifications,
            &record,
            endpoint,
        ));
    }
    if payment_events {
        audit.payment_events = Some(oncely_payment::audit::missing_events(
            &payments,
            &notifications,
        ));
    }
    Ok(audit)
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

/// Every operation of `O`'s domain, newest first.
async fn all_of<O: Orchestrator>(store: &AnyStore) -> anyhow::Result<Vec<Operation>> {
    let domain = DomainName::new(O::DOMAIN)?;
    let mut operations = Vec::new();
    let mut before = None;
    loop {
        let filter = ListFilter {
            domain: Some(domain.clone()),
            before,
            limit: oncely::store::LIST_LIMIT_MAX,
            ..ListFilter::default()
        };
        let page = store.list(filter).await?;
        operations.extend(page.items);
        match page.next {
            Some(next) => before = Some(next),
            None => return Ok(operations),
        }
    }
}

fn states(counts: &std::collections::BTreeMap<String, usize>) -> String {
    let total: usize = counts.values().sum();
    let each: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{total} ({})", each.join(", "))
}

fn discrepancies<K: std::fmt::Debug>(
    out: &mut impl Write,
    found: impl ExactSizeIterator<Item = (K, String, String)>,
) -> std::io::Result<()> {
    writeln!(out, "discrepancies  {}", found.len())?;
    for (kind, key, detail) in found {
        writeln!(out, "  {:<26} {:<40} {detail}", format!("{kind:?}"), key)?;
    }
    Ok(())
}

pub(crate) fn write_table(out: &mut impl Write, audit: &Audit) -> std::io::Result<()> {
    if let Some(report) = &audit.payments {
        writeln!(out, "payments")?;
        writeln!(out, "operations     {}", states(&report.operations))?;
        writeln!(out, "charges        {}", report.charges)?;
        writeln!(out, "non-terminal   {}", report.non_terminal.len())?;
        for key in report.non_terminal.iter().take(20) {
            writeln!(out, "  in flight    {key}")?;
        }
        let found = report.discrepancies.iter();
        discrepancies(
            out,
            found.map(|d| (d.kind, d.key.clone(), d.detail.clone())),
        )?;
    }
    if let Some(report) = &audit.notifications {
        writeln!(out, "notifications")?;
        writeln!(out, "operations     {}", states(&report.operations))?;
        writeln!(
            out,
            "deliveries     {} ({} arrived more than once, acted on once)",
            report.deliveries, report.redelivered
        )?;
        writeln!(out, "non-terminal   {}", report.non_terminal.len())?;
        for key in report.non_terminal.iter().take(20) {
            writeln!(out, "  in flight    {key}")?;
        }
        let found = report.discrepancies.iter();
        discrepancies(
            out,
            found.map(|d| (d.kind, d.key.clone(), d.detail.clone())),
        )?;
    }
    if let Some(missing) = &audit.payment_events {
        writeln!(out, "payment events")?;
        let found = missing.iter();
        discrepancies(
            out,
            found.map(|d| (d.kind, d.key.clone(), d.detail.clone())),
        )?;
    }
    Ok(())
}
