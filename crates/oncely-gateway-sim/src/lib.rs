//! Simulated providers, for trying oncely without real ones and for tests that try hard to
//! break it: a payment gateway and a webhook receiver.
//!
//! The gateway ([`GatewaySim`]) behaves as a payment provider that honours idempotency
//! keys does:
//!
//! - `POST /v1/charges` with an `Idempotency-Key` header charges once per key. The same
//!   key with the same body returns the same charge (`Idempotent-Replayed: true`); the same
//!   key with another body is `422`.
//! - `GET /v1/charges/{key}` answers the charge made under a key, or `404`: what a
//!   client asks before charging again after a lost answer.
//! - `GET /v1/ledger` lists every charge, for audits.
//! - Every charge is in a SQLite ledger before it is answered, so the ledger survives
//!   restarts ([`GatewaySim::open`]); benchmarks keep it in memory instead
//!   ([`GatewaySim::in_memory`]).
//!
//! The webhook receiver ([`WebhookSim`]) behaves as a careful Standard Webhooks consumer:
//!
//! - `POST /v1/webhooks` (or any path under it) checks `webhook-signature` against the
//!   shared `whsec_` secret and the `webhook-timestamp` against the clock (5 minutes),
//!   and records the event once per `webhook-id`: a repeat with the same body is counted
//!   and answered `200` again, a repeat with another body is refused (`409`).
//! - `GET /v1/deliveries` lists every event received and every request refused.
//! - Its ledger is SQLite too, and survives restarts.
//!
//! Both draw their faults from one random generator seeded with [`SimConfig::seed`], so a
//! run is reproducible: latency, `503`s, `429`s (with `Retry-After`), keys refused for
//! good (stable per key, as a declined card is), requests that hang past the client's
//! timeout, and "recorded but answer lost": the ledger write commits, then the connection
//! breaks before the body is sent.
//!
//! The fault proxy ([`FaultProxy`]) puts the same faults in front of any real provider
//! (an S3-compatible store, say): it forwards every request to its upstream, except those
//! its faults answer first, and loses the answer to some that the upstream carried out.
//! `GET /_fault-proxy/stats` counts what it received and forwarded, by method.

#![forbid(unsafe_code)]

mod gateway;
mod proxy;
mod sim;
mod webhooks;

pub use gateway::{Charge, ChargeBody, GatewaySim, Ledger, Served};
pub use proxy::{FaultProxy, ProxyStats, STATS_PATH};
pub use sim::{RunningSim, SimConfig, SimError};
pub use webhooks::{Deliveries, Delivery, Rejection, WebhookSim};
