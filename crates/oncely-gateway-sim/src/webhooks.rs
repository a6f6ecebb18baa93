//! The simulated webhook receiver: checks each delivery's Standard Webhooks signature,
//! records it once per `webhook-id`, and misbehaves as the gateway does.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Json, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::sim::{self, Faults, RunningSim, SimConfig, SimError, ledger_failed, now_ms, problem};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/webhooks");

/// One event as the receiver recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its `webhook-id`: the sender's idempotency key.
    pub webhook_id: String,
    /// The body's `type`.
    pub event_type: String,
    /// The body's `data`.
    pub data: Value,
    /// How many times it arrived with a valid signature (more than once when an answer
    /// was lost and the sender tried again; the receiver acted on it once).
    pub received: i64,
    /// When it first arrived, in UTC milliseconds since the epoch.
    pub first_at_ms: i64,
}

/// A request the receiver refused after it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// Its `webhook-id`, when it had one.
    pub webhook_id: Option<String>,
    /// Why: `invalid signature: …`, `not an event: …`, `id reused for another event`.
    pub reason: String,
    /// When, in UTC milliseconds since the epoch.
    pub at_ms: i64,
}

/// `GET /v1/deliveries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliveries {
    /// Every event received, oldest first, one per `webhook-id`.
    pub deliveries: Vec<Delivery>,
    /// Every request refused, oldest first.
    pub rejections: Vec<Rejection>,
}

/// The body Standard Webhooks senders post.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    data: Value,
}

/// The receiver: a verifier, a ledger and a fault generator.
pub struct WebhookSim {
    ledger: SqlitePool,
    faults: Faults,
    verifier: standardwebhooks::Webhook,
}

impl std::fmt::Debug for WebhookSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSim")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl WebhookSim {
    /// Opens (creating) the ledger at `ledger_url` (`sqlite://PATH` or `sqlite::memory:`);
    /// deliveries are checked against `secret` (`whsec_…`).
    pub async fn open(
        ledger_url: &str,
        secret: &str,
        config: SimConfig,
    ) -> Result<Arc<Self>, SimError> {
        if !secret.starts_with("whsec_") {
            return Err(SimError::Config(
                "the webhook secret must be whsec_ followed by base64".into(),
            ));
        }
        let verifier = standardwebhooks::Webhook::new(secret).map_err(|_| {
            SimError::Config("the webhook secret must be whsec_ followed by base64".into())
        })?;
        let faults = Faults::new(config)?;
        let ledger = sim::open_ledger(ledger_url, &MIGRATOR).await?;
        Ok(Arc::new(Self {
            ledger,
            faults,
            verifier,
        }))
    }

    /// The routes: `POST /v1/webhooks` (and any path under it), `GET /v1/deliveries`,
    /// `GET /healthz`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/webhooks", post(receive))
            .route("/v1/webhooks/{*endpoint}", post(receive))
            .route("/v1/deliveries", get(deliveries))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Serves on `addr` (`127.0.0.1:0` picks a free port) in a background task.
    pub async fn spawn(self: Arc<Self>, addr: &str) -> Result<RunningSim, SimError> {
        sim::spawn(self.router(), addr, "webhooks").await
    }

    /// Everything received and refused, oldest first.
    pub async fn deliveries(&self) -> Result<Deliveries, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT webhook_id, event_type, data, received, first_at FROM deliveries ORDER BY first_at, rowid",
        )
        .fetch_all(&self.ledger)
        .await?;
        let deliveries = rows
            .iter()
            .map(|row| {
                let data: String = row.try_get("data")?;
                Ok(Delivery {
                    webhook_id: row.try_get("webhook_id")?,
                    event_type: row.try_get("event_type")?,
                    data: serde_json::from_str(&data)
                        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
                    received: row.try_get("received")?,
                    first_at_ms: row.try_get("first_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let rows = sqlx::query("SELECT webhook_id, reason, at FROM rejections ORDER BY id")
            .fetch_all(&self.ledger)
            .await?;
        let rejections = rows
            .iter()
            .map(|row| {
                Ok(Rejection {
                    webhook_id: row.try_get("webhook_id")?,
                    reason: row.try_get("reason")?,
                    at_ms: row.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Deliveries {
            deliveries,
            rejections,
        })
    }

    async fn reject(&self, id: Option<&str>, reason: &str) -> Result<(), sqlx::Error> {
        tracing::warn!(webhook_id = ?id, reason, "webhook refused");
        sqlx::query("INSERT INTO rejections (webhook_id, reason, at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(reason)
            .bind(now_ms())
            .execute(&self.ledger)
            .await
            .map(drop)
    }

    /// Records one arrival of `event` under `id`: the first inserts it, a repeat with the
    /// same body counts it, a repeat with another body is refused.
    async fn record(&self, id: &str, body: &[u8], event: &Event) -> Result<Recorded, sqlx::Error> {
        let fingerprint = sim::fingerprint(body);
        let now = now_ms();
        let mut transaction = self.ledger.begin().await?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT fingerprint FROM deliveries WHERE webhook_id = ?")
                .bind(id)
                .fetch_optional(&mut *transaction)
                .await?;
        let recorded = match stored {
            Some(stored) if stored != fingerprint => return Ok(Recorded::Conflict),
            Some(_) => {
                sqlx::query("UPDATE deliveries SET received = received + 1, last_at = ? WHERE webhook_id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *transaction)
                    .await?;
                Recorded::Repeat
            }
            None => {
                sqlx::query(
                    "INSERT INTO deliveries (webhook_id, fingerprint, event_type, data, received, first_at, last_at) \
                     VALUES (?, ?, ?, ?, 1, ?, ?)",
                )
                .bind(id)
                .bind(&fingerprint)
                .bind(&event.event_type)
                .bind(event.data.to_string())
                .bind(now)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
                Recorded::First
            }
        };
        transaction.commit().await?;
        Ok(recorded)
    }
}

enum Recorded {
    First,
    Repeat,
    Conflict,
}

async fn receive(State(sim): State<Arc<WebhookSim>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(fault) = sim.faults.before_serving().await {
        return fault;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|value| value.to_str().ok());
    if let Err(error) = sim.verifier.verify(&body, &headers) {
        let reason = format!("invalid signature: {error}");
        return refuse(
            &sim,
            id,
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            reason,
        )
        .await;
    }
    // A valid signature covers the id, so it is there.
    let id = id.unwrap_or_default();
    let event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            let reason = format!("not an event: {error}");
            return refuse(
                &sim,
                Some(id),
                StatusCode::BAD_REQUEST,
                "not_an_event",
                reason,
            )
            .await;
        }
    };
    if sim.faults.declines(id) {
        return problem(
            StatusCode::BAD_REQUEST,
            "event_refused",
            "this endpoint does not take this event",
        );
    }
    let lose_answer = sim.faults.loses_answer();
    match sim.record(id, &body, &event).await {
        Ok(Recorded::Conflict) => {
            let reason = "id reused for another event".to_owned();
            refuse(
                &sim,
                Some(id),
                StatusCode::CONFLICT,
                "webhook_id_reused",
                reason,
            )
            .await
        }
        Ok(recorded) => {
            if lose_answer {
                tracing::info!(webhook_id = %id, "simulating a lost answer after the delivery");
                return sim::lost_answer();
            }
            let duplicate = matches!(recorded, Recorded::Repeat);
            Json(serde_json::json!({ "webhookId": id, "duplicate": duplicate })).into_response()
        }
        Err(error) => ledger_failed(&error),
    }
}

/// Records why a request was refused, and answers it so.
async fn refuse(
    sim: &WebhookSim,
    id: Option<&str>,
    status: StatusCode,
    code: &str,
    reason: String,
) -> Response {
    match sim.reject(id, &reason).await {
        Ok(()) => problem(status, code, reason),
        Err(error) => ledger_failed(&error),
    }
}

async fn deliveries(State(sim): State<Arc<WebhookSim>>) -> Response {
    match sim.deliveries().await {
        Ok(deliveries) => Json(deliveries).into_response(),
        Err(error) => ledger_failed(&error),
    }
}
