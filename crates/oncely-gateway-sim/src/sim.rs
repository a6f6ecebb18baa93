//! What both simulators share: their faults, their SQLite ledgers, and serving.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a simulator misbehaves. Rates are probabilities per request, 0 to 1.
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
    /// Share of keys refused for good, the same way every time: a declined card (`402`)
    /// at the gateway, an event the endpoint will not take (`400`) at the webhook receiver.
    pub decline_rate: f64,
    /// Share of requests that hang for `hang` before a `504`: past a client's timeout.
    pub timeout_rate: f64,
    /// How long a hanging request hangs.
    pub hang: Duration,
    /// Share of requests recorded in the ledger whose answer is then lost.
    pub lost_answer_rate: f64,
    /// Share of successful charges answered `200` with a lie (the gateway only): another
    /// amount, currency or idempotency key, a field missing, or a body that is not JSON.
    /// The ledger keeps the truth; a client must never take a lie for a charge.
    pub lie_rate: f64,
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
            lie_rate: 0.0,
        }
    }
}

impl SimConfig {
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        let rates = [
            ("error rate", self.error_rate),
            ("rate-limit rate", self.rate_limit_rate),
            ("decline rate", self.decline_rate),
            ("timeout rate", self.timeout_rate),
            ("lost-answer rate", self.lost_answer_rate),
            ("lie rate", self.lie_rate),
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

/// What went wrong starting a simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A fault rate or latency is out of range, or a secret is malformed.
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

/// Opens (creating) a SQLite ledger at `url` and brings its schema up to date. Every write
/// is synced before it is answered: the ledger is what an audit trusts.
pub(crate) async fn open_ledger(url: &str, migrator: &Migrator) -> Result<SqlitePool, SimError> {
    let ledger_error = |source| SimError::Ledger {
        url: url.to_owned(),
        source,
    };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(ledger_error)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(ledger_error)?;
    migrator.run(&pool).await?;
    Ok(pool)
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

/// Serves `router` on `addr` (`127.0.0.1:0` picks a free port) in a background task.
pub(crate) async fn spawn(
    router: Router,
    addr: &str,
    name: &'static str,
) -> Result<RunningSim, SimError> {
    let bind_error = |source| SimError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, simulator = name, "simulator stopped");
        }
    });
    Ok(RunningSim { addr: local, task })
}

/// The random draws of one simulator, from one seeded generator.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) config: SimConfig,
    rng: Mutex<fastrand::Rng>,
}

impl Faults {
    pub(crate) fn new(config: SimConfig) -> Result<Self, SimError> {
        config.validate()?;
        let rng = Mutex::new(fastrand::Rng::with_seed(config.seed));
        Ok(Self { config, rng })
    }

    pub(crate) fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }

    /// Sleeps the drawn latency, then perhaps answers with a fault instead of serving:
    /// `429` with `Retry-After`, `503`, or a hang past the client's timeout then `504`.
    pub(crate) async fn before_serving(&self) -> Option<Response> {
        let span = self.config.latency_max - self.config.latency_min;
        tokio::time::sleep(self.config.latency_min + span.mul_f64(self.draw())).await;
        let draw = self.draw();
        let config = &self.config;
        if draw < config.rate_limit_rate {
            let mut response = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Some(response)
        } else if draw < config.rate_limit_rate + config.error_rate {
            Some(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            ))
        } else if draw < config.rate_limit_rate + config.error_rate + config.timeout_rate {
            tokio::time::sleep(config.hang).await;
            Some(problem(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the upstream did not answer",
            ))
        } else {
            None
        }
    }

    /// Whether `key` is refused for good: a property of the key (the card, the event), not
    /// of the request, so stable per key and seed.
    pub(crate) fn declines(&self, key: &str) -> bool {
        let digest = Sha256::digest(format!("{}:{key}", self.config.seed).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let unit = u64::from_be_bytes(first) as f64 / u64::MAX as f64;
        unit < self.config.decline_rate
    }

    /// Whether the answer to a request just recorded is to be lost.
    /// Whether to lie about this answer, and how (one of `kinds`).
    pub(crate) fn lie(&self, kinds: usize) -> Option<usize> {
        if self.draw() >= self.config.lie_rate {
            return None;
        }
        let kind = self.draw() * kinds as f64;
        Some((kind as usize).min(kinds.saturating_sub(1)))
    }

    pub(crate) fn loses_answer(&self) -> bool {
        self.draw() < self.config.lost_answer_rate
    }
}

/// `{"code", "message"}`, as providers answer errors.
pub(crate) fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": code, "message": message.into() });
    (status, Json(body)).into_response()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// SHA-256 of `bytes`, in hex: how a ledger spots a key reused with another body.
pub(crate) fn fingerprint(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Headers go out; the body fails: the client sees the connection break mid-answer.
pub(crate) fn lost_answer() -> Response {
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

/// The answer when a ledger read or write fails.
pub(crate) fn ledger_failed(error: &sqlx::Error) -> Response {
    tracing::error!(%error, "ledger access failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ledger_error",
        "the ledger failed",
    )
}
