//! A simulated payment gateway, for trying oncely without a real one and for tests that
//! try hard to break it.
//!
//! It behaves as a payment provider that honours idempotency keys does:
//!
//! - `POST /v1/charges` with an `Idempotency-Key` header charges once per key. The same
//!   key with the same body returns the same charge (`Idempotent-Replayed: true`); the same
//!   key with another body is `422`.
//! - `GET /v1/ledger` lists every charge, for audits.
//! - Every charge is in a SQLite ledger before it is answered, so the ledger survives
//!   restarts ([`GatewaySim::open`]); benchmarks keep it in memory instead
//!   ([`GatewaySim::in_memory`]).
//!
//! Faults are drawn from one random generator seeded with [`SimConfig::seed`], so a run
//! is reproducible: latency, `503`s, `429`s (with `Retry-After`), declines (stable per
//! key, as an issuer's would be), requests that hang past the client's timeout, and
//! "charge committed but answer lost": the ledger write commits, then the connection
//! breaks before the body is sent.

#![forbid(unsafe_code)]

mod server;

pub use server::{Charge, ChargeBody, GatewaySim, Ledger, RunningSim, SimConfig, SimError};
