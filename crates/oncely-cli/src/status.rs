//! `oncely status`: how each domain stands, in the terminal, for operators without a
//! browser.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use oncely::{DomainOverview, Store};
use oncely_http::OverviewView;
use oncely_sqlx::AnyStore;

use crate::duration;

/// Flags of `oncely status`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
With --db (the default) the overview counts every tenant's operations, read straight from
the database. With --url it asks a running node (GET /v1/overview) and counts the API key's
tenant only, as the console does; the key needs the read role.

Examples:
  oncely status --db postgres://oncely@db/oncely
  oncely status --url https://oncely.internal:8080 --api-key \"$ONCELY_API_KEY\" --window 1h")]
pub(crate) struct StatusArgs {
    /// The service's database (read only: the schema is not touched).
    #[arg(long, env = "ONCELY_DB", default_value = "sqlite://oncely.db")]
    db: String,
    /// A running node to ask instead of the database (its base URL); --db is then unused.
    #[arg(long, env = "ONCELY_URL")]
    url: Option<String>,
    /// The API key to ask --url with (not needed in protected mode, on the same machine).
    #[arg(long, env = "ONCELY_API_KEY", hide_env_values = true, requires = "url")]
    api_key: Option<String>,
    /// How far back the terminal states (completed, failed, timeout, cancelled), "ended"
    /// and "rescued" count; accepted and processing are counted as they are now (a minute
    /// to a day with --url).
    #[arg(long, default_value = "15m", value_parser = duration::parse)]
    window: Duration,
    /// Print the overview as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let overview = match &args.url {
        Some(url) => from_node(url, args.api_key.as_deref(), args.window).await?,
        None => {
            let store = AnyStore::open_without_migrating(&args.db)
                .await
                .with_context(|| format!("opening the database at {}", args.db))?;
            let since =
                now - chrono::Duration::from_std(args.window).context("--window is too long")?;
            let overview = store
                .overview(oncely::OverviewOf::All, since, now)
                .await
                .context("reading the overview (is the schema there? `oncely migrate` makes it)");
            store.close().await;
            overview?
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &overview)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &overview, args.window, now)?;
    }
    Ok(())
}

/// The overview of the key's tenant, from `GET {url}/v1/overview`.
async fn from_node(
    url: &str,
    api_key: Option<&str>,
    window: Duration,
) -> anyhow::Result<Vec<DomainOverview>> {
    let minutes = window.as_secs() / 60;
    anyhow::ensure!(
        window.as_secs() % 60 == 0 && (1..=1440).contains(&minutes),
        "--window must be whole minutes from 1m to 24h with --url"
    );
    let endpoint = format!(
        "{}/v1/overview?windowMinutes={minutes}",
        url.trim_end_matches('/')
    );
    let mut request = reqwest::Client::new().get(&endpoint);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("asking {endpoint}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("reading the answer of {endpoint}"))?;
    if !status.is_success() {
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or(body);
        anyhow::bail!("{endpoint} answered {status}: {detail}");
    }
    let view: OverviewView = serde_json::from_str(&body)
        .with_context(|| format!("{endpoint} did not answer an overview"))?;
    Ok(view
        .domains
        .into_iter()
        .map(|domain| DomainOverview {
            domain: domain.domain,
            states: domain.states,
            retrying: domain.retrying,
            stuck: domain.stuck,
            oldest_due: domain.oldest_due,
            ended_since: domain.ended,
            rescued_since: domain.rescued,
        })
        .collect())
}

fn write_table(
    out: &mut impl Write,
    overview: &[DomainOverview],
    window: Duration,
    now: chrono::DateTime<Utc>,
) -> std::io::Result<()> {
    if overview.is_empty() {
        return writeln!(
            out,
            "nothing live, nothing ended in the last {}",
            humantime(window)
        );
    }
    let window = humantime(window);
    writeln!(
        out,
        "{:<14} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9} {:>8} {:>6} {:>11} {:>10} {:>10}",
        "domain",
        "accepted",
        "processing",
        "completed",
        "failed",
        "timeout",
        "cancelled",
        "retrying",
        "stuck",
        "oldest due",
        format!("ended/{window}"),
        format!("rescued/{window}"),
    )?;
    for domain in overview {
        let state = |name: &str| domain.states.get(name).copied().unwrap_or(0);
        let oldest = domain.oldest_due.map_or_else(
            || "-".to_owned(),
            |due| humantime((now - due).to_std().unwrap_or_default()),
        );
        writeln!(
            out,
            "{:<14} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9} {:>8} {:>6} {:>11} {:>10} {:>10}",
            domain.domain,
            state("ACCEPTED"),
            state("PROCESSING"),
            state("COMPLETED"),
            state("FAILED"),
            state("TIMEOUT"),
            state("CANCELLED"),
            domain.retrying,
            domain.stuck,
            oldest,
            domain.ended_since,
            domain.rescued_since,
        )?;
    }
    writeln!(
        out,
        "accepted and processing: now; completed, failed, timeout and cancelled: ended in the last {window}"
    )
}

/// `90s` as `1m30s`, `15m` as `15m`: short, for a column.
fn humantime(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short_for_a_column() {
        assert_eq!(humantime(Duration::from_secs(0)), "0s");
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(Duration::from_secs(900)), "15m");
        assert_eq!(humantime(Duration::from_secs(3 * 3600 + 120)), "3h2m");
    }
}
