//! `oncely keys`: make, list and revoke API keys. A token is printed once, alone on
//! standard output; only its hash is stored.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{DateTime, Utc};
use oncely::TenantId;
use oncely::keys::{KeySpec, KeyStore, Role};
use oncely_sqlx::AnyStore;

use crate::duration;

/// `oncely keys …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Makes a key and prints its token alone on standard output: keep it, it is shown once.
    Create {
        /// The tenant every request with this key acts for.
        #[arg(long)]
        tenant: String,
        /// What it may do: submit (create), read (get, list, history), operate (retry).
        /// Repeat or comma-separate for several.
        #[arg(long = "role", value_delimiter = ',', required = true)]
        roles: Vec<Role>,
        /// A name for people (`checkout service`).
        #[arg(long)]
        name: Option<String>,
        /// When it stops working, from now (`90d`); never by default.
        #[arg(long, value_parser = duration::parse)]
        expires: Option<Duration>,
    },
    /// Lists every key: id, tenant, roles, name, when made, last used, expiry, revocation.
    /// Never a secret.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revokes a key: every node refuses it within seconds.
    Revoke {
        /// The key's id (the part after `oncely_` in its token, or from `keys list`).
        id: String,
    },
}

/// Flags of `oncely keys`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    /// The service's database.
    #[arg(
        long,
        env = "ONCELY_DB",
        default_value = "sqlite://oncely.db",
        global = true
    )]
    db: String,
    #[command(subcommand)]
    command: KeysCommand,
}

pub(crate) async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let store = AnyStore::open(&args.db)
        .await
        .with_context(|| format!("opening the database at {}", args.db))?;
    let mut out = std::io::stdout().lock();
    match args.command {
        KeysCommand::Create {
            tenant,
            roles,
            name,
            expires,
        } => {
            let now = Utc::now();
            let expires_at = expires
                .map(|after| chrono::Duration::from_std(after).map(|after| now + after))
                .transpose()
                .context("--expires is too far away")?;
            let spec = KeySpec {
                tenant: TenantId::new(tenant).context("--tenant")?,
                roles,
                name,
                expires_at,
            };
            let made = spec.issue(now)?;
            store.create_key(&made.key).await?;
            tracing::info!(id = %made.key.id, tenant = %made.key.tenant, roles = %made.key.roles_text(), "API key made");
            writeln!(out, "{}", made.token)?;
        }
        KeysCommand::List { json } => {
            let keys = store.keys().await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &keys)?;
                writeln!(out)?;
            } else {
                let time = |at: Option<DateTime<Utc>>| {
                    at.map_or_else(
                        || "-".to_owned(),
                        |at| at.format("%Y-%m-%d %H:%M").to_string(),
                    )
                };
                writeln!(
                    out,
                    "{:<16}  {:<16}  {:<20}  {:<16}  {:<16}  {:<16}  {:<16}  name",
                    "id", "tenant", "roles", "created", "last used", "expires", "revoked"
                )?;
                for key in keys {
                    writeln!(
                        out,
                        "{:<16}  {:<16}  {:<20}  {:<16}  {:<16}  {:<16}  {:<16}  {}",
                        key.id,
                        key.tenant,
                        key.roles_text(),
                        time(Some(key.created_at)),
                        time(key.last_used_at),
                        time(key.expires_at),
                        time(key.revoked_at),
                        key.name.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        KeysCommand::Revoke { id } => {
            let revoked = store.revoke_key(&id, Utc::now()).await?;
            ensure!(revoked, "no key {id:?} that is not revoked already");
            writeln!(out, "revoked {id}")?;
        }
    }
    store.close().await;
    Ok(())
}
