//! The simulated payment gateway: its HTTP surface and its ledger.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::sim::{self, Faults, RunningSim, SimConfig, SimError, ledger_failed, now_ms, problem};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/gateway");

/// The body of `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChargeBody {
    /// Exact decimal amount.
    pub amount: Decimal,
    /// ISO 4217.
    pub currency: String,
    /// The merchant's order.
    pub order_id: i64,
    /// The merchant's customer.
    pub customer_id: i64,
    /// How the customer pays.
    pub payment_method: String,
}

/// One charge in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    /// The idempotency key it was made under.
    pub idempotency_key: String,
    /// The gateway's id.
    pub transaction_id: String,
    /// The approval code.
    pub approval_code: String,
    /// The amount.
    pub amount: Decimal,
    /// The currency.
    pub currency: String,
    /// The order.
    pub order_id: i64,
    /// The customer.
    pub customer_id: i64,
    /// When, in UTC milliseconds since the epoch.
    pub created_at_ms: i64,
}

/// `GET /v1/ledger`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Every charge, oldest first.
    pub charges: Vec<Charge>,
}

/// Where charges are kept.
#[derive(Debug)]
enum LedgerStore {
    /// A SQLite database: durable, survives restarts.
    Sqlite(SqlitePool),
    /// The process's memory, for benchmarks: the cheapest provider to call.
    Memory(Mutex<MemoryLedger>),
}

/// Charges in memory, in the order they were made.
#[derive(Debug, Default)]
struct MemoryLedger {
    by_key: std::collections::HashMap<String, (String, Charge)>,
    order: Vec<String>,
}

/// The simulator: a ledger and a fault generator.
#[derive(Debug)]
pub struct GatewaySim {
    ledger: LedgerStore,
    faults: Faults,
    /// The number of the last charge: charges are numbered from it, not by counting the
    /// ledger (a count costs a scan of the whole ledger per charge).
    numbered: std::sync::atomic::AtomicI64,
    /// Requests to charge and lookups served, for tests that count calls.
    served: [AtomicU64; 2],
}

/// How many requests a simulator served, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Served {
    /// `POST /v1/charges`, whatever came of them.
    pub charge_requests: u64,
    /// `GET /v1/charges/{key}`.
    pub lookups: u64,
}

impl GatewaySim {
    /// Opens (creating) the ledger at `ledger_url` (`sqlite://PATH` or `sqlite::memory:`).
    pub async fn open(ledger_url: &str, config: SimConfig) -> Result<Arc<Self>, SimError> {
        let faults = Faults::new(config)?;
        let ledger = sim::open_ledger(ledger_url, &MIGRATOR).await?;
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(CAST(SUBSTR(transaction_id, 5) AS INTEGER)), 0) FROM charges",
        )
        .fetch_one(&ledger)
        .await
        .map_err(|source| SimError::Ledger {
            url: ledger_url.to_owned(),
            source,
        })?;
        Ok(Self::with_ledger(LedgerStore::Sqlite(ledger), faults, last))
    }

    /// A simulator whose ledger lives in memory only, for benchmarks: every request costs
    /// what a provider's HTTP answer costs, and no database write.
    pub fn in_memory(config: SimConfig) -> Result<Arc<Self>, SimError> {
        let ledger = LedgerStore::Memory(Mutex::new(MemoryLedger::default()));
        Ok(Self::with_ledger(ledger, Faults::new(config)?, 0))
    }

    fn with_ledger(ledger: LedgerStore, faults: Faults, last: i64) -> Arc<Self> {
        Arc::new(Self {
            ledger,
            faults,
            numbered: std::sync::atomic::AtomicI64::new(last),
            served: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The routes, to serve or to nest in another router.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/charges", post(charge))
            .route("/v1/charges/{key}", get(lookup))
            .route("/v1/ledger", get(ledger))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Serves on `addr` (`127.0.0.1:0` picks a free port) in a background task.
    pub async fn spawn(self: Arc<Self>, addr: &str) -> Result<RunningSim, SimError> {
        sim::spawn(self.router(), addr, "gateway").await
    }

    /// The requests served so far.
    pub fn served(&self) -> Served {
        Served {
            charge_requests: self.served[0].load(Ordering::Relaxed),
            lookups: self.served[1].load(Ordering::Relaxed),
        }
    }

    /// The charge made under `key`, if any.
    pub async fn charge_by_key(&self, key: &str) -> Result<Option<Charge>, sqlx::Error> {
        let pool = match &self.ledger {
            LedgerStore::Sqlite(pool) => pool,
            LedgerStore::Memory(memory) => {
                let memory = memory.lock().unwrap_or_else(PoisonError::into_inner);
                return Ok(memory.by_key.get(key).map(|(_, charge)| charge.clone()));
            }
        };
        let row = sqlx::query("SELECT * FROM charges WHERE idem_key = ?")
            .bind(key)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(charge_row).transpose()
    }

    /// Every charge, oldest first.
    pub async fn charges(&self) -> Result<Vec<Charge>, sqlx::Error> {
        let pool = match &self.ledger {
            LedgerStore::Sqlite(pool) => pool,
            LedgerStore::Memory(memory) => {
                let memory = memory.lock().unwrap_or_else(PoisonError::into_inner);
                return Ok(memory
                    .order
                    .iter()
                    .filter_map(|key| memory.by_key.get(key).map(|(_, charge)| charge.clone()))
                    .collect());
            }
        };
        let rows = sqlx::query("SELECT * FROM charges ORDER BY created_at, rowid")
            .fetch_all(pool)
            .await?;
        rows.iter().map(charge_row).collect()
    }
}

fn charge_row(row: &sqlx::sqlite::SqliteRow) -> Result<Charge, sqlx::Error> {
    let amount: String = row.try_get("amount")?;
    Ok(Charge {
        idempotency_key: row.try_get("idem_key")?,
        transaction_id: row.try_get("transaction_id")?,
        approval_code: row.try_get("approval_code")?,
        amount: Decimal::from_str(&amount).map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
        currency: row.try_get("currency")?,
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

/// `GET /v1/charges/{key}`: the charge made under the key, as `POST` answered it, or
/// `404`. The same faults as a charge apply (latency, 503, 429, hangs); nothing is lost.
async fn lookup(State(sim): State<Arc<GatewaySim>>, Path(key): Path<String>) -> Response {
    sim.served[1].fetch_add(1, Ordering::Relaxed);
    if let Some(fault) = sim.faults.before_serving().await {
        return fault;
    }
    match sim.charge_by_key(&key).await {
        Ok(Some(charge)) => Json(serde_json::json!({
            "transactionId": charge.transaction_id,
            "approvalCode": charge.approval_code,
            "idempotencyKey": charge.idempotency_key,
            "amount": charge.amount.to_string(),
            "currency": charge.currency,
        }))
        .into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "no_such_charge",
            format!("no charge was made under {key}"),
        ),
        Err(error) => ledger_failed(&error),
    }
}

async fn charge(
    State(sim): State<Arc<GatewaySim>>,
    headers: HeaderMap,
    body: Result<Json<ChargeBody>, JsonRejection>,
) -> Response {
    sim.served[0].fetch_add(1, Ordering::Relaxed);
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty() && key.len() <= 255)
        .map(str::to_owned)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "send an Idempotency-Key header of 1 to 255 characters",
        );
    };
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    tracing::debug!(%key, traceparent, "charge requested");
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            return problem(rejection.status(), "invalid_request", rejection.body_text());
        }
    };
    if body.amount <= Decimal::ZERO {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            "amount must be positive",
        );
    }
    if let Some(fault) = sim.faults.before_serving().await {
        return fault;
    }
    if sim.faults.declines(&key) {
        return problem(
            StatusCode::PAYMENT_REQUIRED,
            "card_declined",
            "the issuer declined the card",
        );
    }
    let lose_answer = sim.faults.loses_answer();
    match record(&sim, &key, &body).await {
        Ok(Recorded::Conflict) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!("idempotency key {key} was used with a different request"),
        ),
        Ok(Recorded::Charge { charge, replayed }) => {
            if lose_answer {
                tracing::info!(%key, transaction = %charge.transaction_id, "simulating a lost answer after the charge");
                return sim::lost_answer();
            }
            let mut answer = serde_json::json!({
                "transactionId": charge.transaction_id,
                "approvalCode": charge.approval_code,
                "idempotencyKey": key,
                "amount": body.amount.to_string(),
                "currency": body.currency,
            });
            if let Some(lie) = sim.faults.lie(LIES.len()) {
                tracing::info!(%key, lie = LIES[lie], "simulating a lying answer after the charge");
                match LIES[lie] {
                    "amount" => answer["amount"] = (body.amount + Decimal::ONE).to_string().into(),
                    "currency" => answer["currency"] = "XXX".into(),
                    "key" => answer["idempotencyKey"] = format!("{key}-other").into(),
                    "missing" => {
                        answer = serde_json::json!({ "approvalCode": charge.approval_code })
                    }
                    _ => return (StatusCode::OK, "{\"transactionId\": ").into_response(),
                }
            }
            let mut response = Json(answer).into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(error) => ledger_failed(&error),
    }
}

/// The lies a gateway with `lie_rate` tells, one at random per lie.
const LIES: [&str; 5] = ["amount", "currency", "key", "missing", "malformed"];

enum Recorded {
    Charge { charge: Charge, replayed: bool },
    Conflict,
}

impl GatewaySim {
    /// The next charge's transaction id and approval code. A charge that fails to commit
    /// leaves a gap, as real gateways' numbering does.
    fn next_number(&self) -> (String, String) {
        let number = self
            .numbered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let approval_code = format!("A{:06}", ((number - 1) * 7_919 + 104_729) % 1_000_000);
        (format!("txn_{number:08}"), approval_code)
    }
}

async fn record(sim: &GatewaySim, key: &str, body: &ChargeBody) -> Result<Recorded, sqlx::Error> {
    let canonical = serde_json::to_string(body).unwrap_or_default();
    let fingerprint = sim::fingerprint(canonical.as_bytes());
    let pool = match &sim.ledger {
        LedgerStore::Sqlite(pool) => pool,
        LedgerStore::Memory(memory) => {
            let mut memory = memory.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((stored, charge)) = memory.by_key.get(key) {
                if *stored != fingerprint {
                    return Ok(Recorded::Conflict);
                }
                return Ok(Recorded::Charge {
                    charge: charge.clone(),
                    replayed: true,
                });
            }
            let (transaction_id, approval_code) = sim.next_number();
            let charge = charge_from(key, body, transaction_id, approval_code, now_ms());
            memory
                .by_key
                .insert(key.to_owned(), (fingerprint, charge.clone()));
            memory.order.push(key.to_owned());
            return Ok(Recorded::Charge {
                charge,
                replayed: false,
            });
        }
    };
    let mut transaction = pool.begin().await?;
    let existing = sqlx::query("SELECT fingerprint, transaction_id, approval_code, created_at FROM charges WHERE idem_key = ?")
        .bind(key)
        .fetch_optional(&mut *transaction)
        .await?;
    if let Some(row) = existing {
        let stored: String = row.try_get("fingerprint")?;
        if stored != fingerprint {
            return Ok(Recorded::Conflict);
        }
        let charge = charge_from(
            key,
            body,
            row.try_get("transaction_id")?,
            row.try_get("approval_code")?,
            row.try_get("created_at")?,
        );
        return Ok(Recorded::Charge {
            charge,
            replayed: true,
        });
    }
    let (transaction_id, approval_code) = sim.next_number();
    let created_at = now_ms();
    sqlx::query(
        "INSERT INTO charges (idem_key, fingerprint, transaction_id, approval_code, amount, currency, order_id, customer_id, payment_method, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(key)
    .bind(&fingerprint)
    .bind(&transaction_id)
    .bind(&approval_code)
    .bind(body.amount.to_string())
    .bind(&body.currency)
    .bind(body.order_id)
    .bind(body.customer_id)
    .bind(&body.payment_method)
    .bind(created_at)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    let charge = charge_from(key, body, transaction_id, approval_code, created_at);
    Ok(Recorded::Charge {
        charge,
        replayed: false,
    })
}

fn charge_from(
    key: &str,
    body: &ChargeBody,
    transaction_id: String,
    approval_code: String,
    created_at_ms: i64,
) -> Charge {
    Charge {
        idempotency_key: key.to_owned(),
        transaction_id,
        approval_code,
        amount: body.amount,
        currency: body.currency.clone(),
        order_id: body.order_id,
        customer_id: body.customer_id,
        created_at_ms,
    }
}

async fn ledger(State(sim): State<Arc<GatewaySim>>) -> Response {
    match sim.charges().await {
        Ok(charges) => Json(Ledger { charges }).into_response(),
        Err(error) => ledger_failed(&error),
    }
}
