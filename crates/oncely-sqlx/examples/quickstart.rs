//! From nothing to finished operations with the library alone: no HTTP, no server.
//!
//! Run it with `cargo run -p oncely-sqlx --example quickstart`. It keeps its SQLite file in
//! `./oncely-quickstart.db`; run it twice and the second run finds every payment already
//! done (replays), because the keys are the same.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely::{Attempt, Engine, IdempotencyKey, Orchestrator, Outcome};
use oncely_sqlx::SqliteStore;
use serde::{Deserialize, Serialize};

/// The command a caller hands over.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pay {
    customer_id: u64,
    order_id: u64,
    amount_cents: u64,
}

/// A stand-in for a payment provider that honours idempotency keys: a key that was charged
/// before returns the same charge.
#[derive(Default)]
struct Provider {
    charges: Mutex<HashMap<String, String>>,
}

impl Provider {
    fn charge(&self, idempotency_key: &str, amount_cents: u64) -> String {
        let mut charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        let next = charges.len() + 1;
        charges
            .entry(idempotency_key.to_owned())
            .or_insert_with(|| format!("ch_{next:04}_{amount_cents}"))
            .clone()
    }
}

struct Payments {
    provider: Arc<Provider>,
}

impl Orchestrator for Payments {
    type Command = Pay;
    const DOMAIN: &'static str = "PAYMENT";
    const EVENT_TYPE: &'static str = "PAYMENT_REQUESTED";

    // No store, no connection, no transaction here: only the call (I5).
    async fn execute(&self, pay: Pay, attempt: Attempt) -> Outcome {
        let key = attempt.idempotency_key().as_str();
        let transaction_id = self.provider.charge(key, pay.amount_cents);
        Outcome::ok().with_data("transactionId", transaction_id)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::open("sqlite://oncely-quickstart.db").await?;
    let payments = Payments {
        provider: Arc::new(Provider::default()),
    };
    let engine = Engine::builder(store, payments).workers(8).start()?;

    let mut scopes = Vec::new();
    for order_id in 1..=3 {
        let pay = Pay {
            customer_id: 7,
            order_id,
            amount_cents: 1_000 * order_id,
        };
        let submitted = engine
            .submit(IdempotencyKey::new(format!("order-{order_id}"))?, pay)
            .await?;
        println!(
            "submitted {} ({}){}",
            submitted.operation.scope.key,
            submitted.operation.state,
            if submitted.replayed { ", a replay" } else { "" }
        );
        scopes.push(submitted.operation.scope);
    }
    // The same request again joins the same operation instead of paying twice.
    let again = Pay {
        customer_id: 7,
        order_id: 1,
        amount_cents: 1_000,
    };
    let replay = engine
        .submit(IdempotencyKey::new("order-1")?, again)
        .await?;
    println!("submitted order-1 again: replayed = {}", replay.replayed);

    for scope in &scopes {
        let done = engine.wait(scope, Duration::from_secs(10)).await?;
        let transaction = done
            .outcome_data
            .as_ref()
            .and_then(|data| data["transactionId"].as_str())
            .unwrap_or("none");
        println!(
            "{}: {} after {} attempt(s), transaction {}",
            scope.key, done.state, done.attempt_count, transaction
        );
    }
    let history = engine.history(&scopes[0]).await?;
    let kinds: Vec<_> = history.iter().map(|entry| entry.kind.as_str()).collect();
    println!(
        "write-ahead log of {}: {}",
        scopes[0].key,
        kinds.join(" -> ")
    );
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
