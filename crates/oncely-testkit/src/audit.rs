//! The audit: payments against the gateway's ledger, notifications against the webhook
//! receiver's record, payment events against the payments that ended, and uploads against
//! the object store.

use std::io::Write;

use oncely::{DomainName, ListFilter, Operation, Orchestrator, Store};
use oncely_notification::Notifier;
use oncely_notification::audit::{NotificationReport, ReceiverRecord};
use oncely_payment::audit::{AuditReport, Discrepancy};
use oncely_payment::{GatewayClient, GatewayTimeouts, PaymentOrchestrator};
use oncely_sqlx::AnyStore;
use oncely_upload::audit::UploadReport;
use oncely_upload::{Storage, Uploader};
use serde::Serialize;

use crate::error::{Context, Error};

/// What an audit comes to; `oncely audit` exits with its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every book agrees and nothing is in flight (or in-flight work is allowed): 0.
    Clean,
    /// A discrepancy: 1.
    Discrepancies,
    /// The books agree so far, but operations are still in flight: 3.
    InFlight,
}

impl Verdict {
    /// The process exit code of the verdict (2 is "the audit could not run").
    pub fn exit_code(self) -> u8 {
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
pub struct Audit {
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Payments against the gateway's ledger, when it was given.
    pub payments: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Notifications against the receiver's record, when it was given.
    pub notifications: Option<NotificationReport>,
    /// Payments that ended without their event, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_events: Option<Vec<Discrepancy>>,
    /// Uploads against the store they went to, when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadReport>,
}

impl Audit {
    /// Whether every book agrees.
    pub fn is_clean(&self) -> bool {
        self.payments.as_ref().is_none_or(AuditReport::is_clean)
            && self
                .notifications
                .as_ref()
                .is_none_or(NotificationReport::is_clean)
            && self.payment_events.as_ref().is_none_or(Vec::is_empty)
            && self.uploads.as_ref().is_none_or(UploadReport::is_clean)
    }

    /// The verdict: discrepancies first, then work still in flight (unless allowed).
    pub fn verdict(&self, allow_in_flight: bool) -> Verdict {
        if !self.is_clean() {
            Verdict::Discrepancies
        } else if self.in_flight() > 0 && !allow_in_flight {
            Verdict::InFlight
        } else {
            Verdict::Clean
        }
    }

    /// How many operations are still in flight.
    pub fn in_flight(&self) -> usize {
        self.payments.as_ref().map_or(0, |r| r.non_terminal.len())
            + self
                .notifications
                .as_ref()
                .map_or(0, |r| r.non_terminal.len())
            + self.uploads.as_ref().map_or(0, |r| r.non_terminal.len())
    }
}

/// The books to compare the store with.
pub struct Books<'a> {
    /// The gateway's base URL.
    pub gateway: Option<&'a str>,
    /// The webhook receiver's base URL, and the prefix of the URLs notifications to it
    /// were sent to.
    pub webhooks: Option<(&'a str, &'a str)>,
    /// Whether payments announce their ends.
    pub payment_events: bool,
    /// Where uploads went.
    pub uploads: Option<Storage>,
}

/// Reads the books named and compares them with the store.
pub async fn audit(store: &AnyStore, books: Books<'_>) -> Result<Audit, Error> {
    let Books {
        gateway,
        webhooks,
        payment_events,
        uploads,
    } = books;
    let payments = all_of::<PaymentOrchestrator>(store).await?;
    let notifications = all_of::<Notifier>(store).await?;
    let mut audit = Audit {
        payments: None,
        notifications: None,
        payment_events: None,
        uploads: None,
    };
    if let Some(storage) = uploads {
        let operations = all_of::<Uploader>(store).await?;
        audit.uploads = Some(oncely_upload::audit::reconcile(&operations, &storage).await);
    }
    if let Some(gateway) = gateway {
        let charges = GatewayClient::new(gateway, GatewayTimeouts::default())
            .during("building the gateway client")?
            .ledger()
            .await
            .during_with(|| format!("reading the ledger of {gateway}"))?;
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
        .during_with(|| format!("reading the deliveries of {receiver}"))?;
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

/// Every operation of `O`'s domain, newest first.
async fn all_of<O: Orchestrator>(store: &AnyStore) -> Result<Vec<Operation>, Error> {
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

/// How many operations are still in flight, and the first twenty of them.
fn in_flight(out: &mut impl Write, keys: &[String]) -> std::io::Result<()> {
    writeln!(out, "non-terminal   {}", keys.len())?;
    for key in keys.iter().take(20) {
        writeln!(out, "  in flight    {key}")?;
    }
    Ok(())
}

/// Writes the audit as a table for people.
pub fn write_table(out: &mut impl Write, audit: &Audit) -> std::io::Result<()> {
    if let Some(report) = &audit.payments {
        writeln!(out, "payments")?;
        writeln!(out, "operations     {}", states(&report.operations))?;
        writeln!(out, "charges        {}", report.charges)?;
        in_flight(out, &report.non_terminal)?;
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
        in_flight(out, &report.non_terminal)?;
        let found = report.discrepancies.iter();
        discrepancies(
            out,
            found.map(|d| (d.kind, d.key.clone(), d.detail.clone())),
        )?;
    }
    if let Some(report) = &audit.uploads {
        writeln!(out, "uploads")?;
        writeln!(out, "operations     {}", states(&report.operations))?;
        writeln!(out, "objects        {} looked at", report.objects_checked)?;
        in_flight(out, &report.non_terminal)?;
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
