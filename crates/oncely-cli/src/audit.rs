//! `oncely audit`: payments against the gateway's ledger.

use std::io::Write;

use anyhow::Context;
use oncely::{DomainName, ListFilter, Store};
use oncely_payment::audit::{AuditReport, reconcile};
use oncely_payment::{GatewayClient, GatewayTimeouts};
use oncely_sqlx::AnyStore;

/// Flags of `oncely audit`.
#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// The service's database.
    #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
    db: String,
    /// The gateway whose `GET /v1/ledger` lists every charge.
    #[arg(long, env = "ONCELY_GATEWAY_URL")]
    gateway: String,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Returns whether the books agree.
pub(crate) async fn run(args: AuditArgs) -> anyhow::Result<bool> {
    let store = AnyStore::open(&args.db)
        .await
        .with_context(|| format!("opening the database at {}", args.db))?;
    let operations = all_payments(&store).await?;
    let client = GatewayClient::new(&args.gateway, GatewayTimeouts::default())?;
    let charges = client
        .ledger()
        .await
        .with_context(|| format!("reading the ledger of {}", args.gateway))?;
    let report = reconcile(&operations, &charges);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report)?;
    }
    Ok(report.is_clean())
}

pub(crate) async fn all_payments(store: &AnyStore) -> anyhow::Result<Vec<oncely::Operation>> {
    let domain = DomainName::new("PAYMENT")?;
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

fn write_table(out: &mut impl Write, report: &AuditReport) -> std::io::Result<()> {
    let states: Vec<String> = report
        .operations
        .iter()
        .map(|(state, count)| format!("{state} {count}"))
        .collect();
    let total: usize = report.operations.values().sum();
    writeln!(out, "operations     {total} ({})", states.join(", "))?;
    writeln!(out, "charges        {}", report.charges)?;
    writeln!(out, "non-terminal   {}", report.non_terminal.len())?;
    for key in &report.non_terminal {
        writeln!(out, "  in flight    {key}")?;
    }
    writeln!(out, "discrepancies  {}", report.discrepancies.len())?;
    for discrepancy in &report.discrepancies {
        writeln!(
            out,
            "  {:<26} {:<40} {}",
            format!("{:?}", discrepancy.kind),
            discrepancy.key,
            discrepancy.detail
        )?;
    }
    Ok(())
}
