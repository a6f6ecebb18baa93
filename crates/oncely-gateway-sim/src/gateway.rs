//! The gateway's HTTP surface, its ledger, and its faults.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the simulated gateway misbehaves. Rates are probabilities per request, 0 to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seeds every random draw: the same seed and requests give the same faults.
    pub seed: u64,
    /// Shortest added latency.
    pub latency_min: Duration,
    /// Longest added latency (uniform between the two).
    pub latency_max: Duration,
    /// Share of requests answered `503`.
    pub error_rate: f64,
    /// Share of requests answered `429` with `Retry-After: 1`.
    pub rate_limit_rate: f64,
    /// Share of keys that are declined (`402`), the same way every time.
    pub decline_rate: f64,
    /// Share of requests that hang for `hang` before a `504`: past a client's timeout.
    pub timeout_rate: f64,
    /// How long a hanging request hangs.
    pub hang: Duration,
    /// Share of charges committed to the ledger whose answer is then lost.
    pub lost_answer_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            decline_rate: 0.0,
            timeout_rate: 0.0,
            hang: Duration::from_secs(30),
            lost_answer_rate: 0.0,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), SimError> {
        let rates = [
            ("error rate", self.error_rate),
            ("rate-limit rate", self.rate_limit_rate),
            ("decline rate", self.decline_rate),
            ("timeout rate", self.timeout_rate),
            ("lost-answer rate", self.lost_answer_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimError::Config(format!(
                    "{name} must be 0 to 1, not {rate}"
                )));
            }
        }
        if self.error_rate + self.rate_limit_rate + self.timeout_rate > 1.0 {
            return Err(SimError::Config(
                "error, rate-limit and timeout rates together must not exceed 1".into(),
            ));
        }
        if self.latency_min > self.latency_max {
            return Err(SimError::Config(
                "latency min must not exceed latency max".into(),
            ));
        }
        Ok(())
    }
}

/// What went wrong starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A fault rate or latency is out of range.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// The ledger could not be opened.
    #[error("cannot open the ledger at {url:?}: {source}")]
    Ledger {
        /// The ledger URL.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The ledger schema could not be created.
    #[error("cannot create the ledger schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

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
    config: SimConfig,
    rng: Mutex<fastrand::Rng>,
    /// The number of the last charge: charges are numbered from it, not by counting the
    /// ledger (a count costs a scan of the whole ledger per charge).
    numbered: std::sync::atomic::AtomicI64,
}

/// A simulator serving in the background; dropping it does not stop it, [`RunningSim::stop`] does.
#[derive(Debug)]
pub struct RunningSim {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningSim {
    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl GatewaySim {
    /// Opens (creating) the ledger at `ledger_url` (`sqlite://PATH` or `sqlite::memory:`).
    pub async fn open(ledger_url: &str, config: SimConfig) -> Result<Arc<Self>, SimError> {
        config.validate()?;
        let ledger_error = |source| SimError::Ledger {
            url: ledger_url.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::from_str(ledger_url)
            .map_err(ledger_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let ledger = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(ledger_error)?;
        MIGRATOR.run(&ledger).await?;
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(CAST(SUBSTR(transaction_id, 5) AS INTEGER)), 0) FROM charges",
        )
        .fetch_one(&ledger)
        .await
        .map_err(ledger_error)?;
        Ok(Self::with_ledger(LedgerStore::Sqlite(ledger), config, last))
    }

    /// A simulator whose ledger lives in memory only, for benchmarks: every request costs
    /// what a provider's HTTP answer costs, and no database write.
    pub fn in_memory(config: SimConfig) -> Result<Arc<Self>, SimError> {
        config.validate()?;
        let ledger = LedgerStore::Memory(Mutex::new(MemoryLedger::default()));
        Ok(Self::with_ledger(ledger, config, 0))
    }

    fn with_ledger(ledger: LedgerStore, config: SimConfig, last: i64) -> Arc<Self> {
        let rng = Mutex::new(fastrand::Rng::with_seed(config.seed));
        Arc::new(Self {
            ledger,
            config,
            rng,
            numbered: std::sync::atomic::AtomicI64::new(last),
        })
    }

    /// The routes, to serve or to nest in another router.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/charges", post(charge))
            .route("/v1/ledger", get(ledger))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Serves on `addr` (`127.0.0.1:0` picks a free port) in a background task.
    pub async fn spawn(self: Arc<Self>, addr: &str) -> Result<RunningSim, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SimError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        let router = self.router();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "gateway simulator stopped");
            }
        });
        Ok(RunningSim { addr: local, task })
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
        rows.iter()
            .map(|row| {
                let amount: String = row.try_get("amount")?;
                Ok(Charge {
                    idempotency_key: row.try_get("idem_key")?,
                    transaction_id: row.try_get("transaction_id")?,
                    approval_code: row.try_get("approval_code")?,
                    amount: Decimal::from_str(&amount)
                        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
                    currency: row.try_get("currency")?,
                    order_id: row.try_get("order_id")?,
                    customer_id: row.try_get("customer_id")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }

    fn latency(&self) -> Duration {
        let span = self.config.latency_max - self.config.latency_min;
        self.config.latency_min + span.mul_f64(self.draw())
    }

    /// Declines are a property of the card, not of the request: stable per key and seed.
    fn declines(&self, key: &str) -> bool {
        let digest = Sha256::digest(format!("{}:{key}", self.config.seed).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let unit = u64::from_be_bytes(first) as f64 / u64::MAX as f64;
        unit < self.config.decline_rate
    }
}

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": code, "message": message.into() });
    (status, Json(body)).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

enum Fault {
    RateLimited,
    Unavailable,
    Hang,
}

fn fault(sim: &GatewaySim) -> Option<Fault> {
    let draw = sim.draw();
    let config = &sim.config;
    if draw < config.rate_limit_rate {
        Some(Fault::RateLimited)
    } else if draw < config.rate_limit_rate + config.error_rate {
        Some(Fault::Unavailable)
    } else if draw < config.rate_limit_rate + config.error_rate + config.timeout_rate {
        Some(Fault::Hang)
    } else {
        None
    }
}

async fn charge(
    State(sim): State<Arc<GatewaySim>>,
    headers: HeaderMap,
    body: Result<Json<ChargeBody>, JsonRejection>,
) -> Response {
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
    tokio::time::sleep(sim.latency()).await;
    match fault(&sim) {
        Some(Fault::RateLimited) => {
            let mut response = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Some(Fault::Unavailable) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            );
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(sim.config.hang).await;
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the issuer did not answer",
            );
        }
        None => {}
    }
    if sim.declines(&key) {
        return problem(
            StatusCode::PAYMENT_REQUIRED,
            "card_declined",
            "the issuer declined the card",
        );
    }
    let lose_answer = sim.draw() < sim.config.lost_answer_rate;
    match record(&sim, &key, &body).await {
        Ok(Recorded::Conflict) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!("idempotency key {key} was used with a different request"),
        ),
        Ok(Recorded::Charge { charge, replayed }) => {
            if lose_answer {
                tracing::info!(%key, transaction = %charge.transaction_id, "simulating a lost answer after the charge");
                return lost_answer();
            }
            let mut response = Json(serde_json::json!({
                "transactionId": charge.transaction_id,
                "approvalCode": charge.approval_code,
            }))
            .into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(error) => {
            tracing::error!(%error, "ledger write failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger_error",
                "the ledger failed",
            )
        }
    }
}

/// Headers go out; the body fails: the client sees the connection break mid-answer.
fn lost_answer() -> Response {
    let broken = futures_util::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated lost answer",
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(broken))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

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
    let fingerprint = format!("{:x}", Sha256::digest(canonical.as_bytes()));
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
        Err(error) => {
            tracing::error!(%error, "ledger read failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger_error",
                "the ledger failed",
            )
        }
    }
}
