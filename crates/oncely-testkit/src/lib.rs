//! Tools that check a running oncely from the outside, for its tests and for its users:
//!
//! - [`audit`]: the store against what the providers recorded (the gateway's ledger, the
//!   webhook receiver's deliveries): every completed payment charged once, every
//!   notification delivered once, nothing the store cannot explain.
//! - [`chaos`]: several `oncely serve` processes on one database, faulty simulated
//!   providers, and faults thrown at them (SIGKILL, SIGSTOP past the lease, cut database
//!   connections, lying answers); then the audit must be clean.
//! - [`sim`]: the engine of several nodes run deterministically from a seed, in simulated
//!   time, over an in-memory store and provider, with the invariants checked at every
//!   step.
//!
//! - [`moto`]: an S3-compatible server (moto) for tests that need one.
//!
//! The `oncely` binary wires them as `oncely audit`, `oncely chaos` and `oncely sim`.

pub mod audit;
pub mod chaos;
mod error;
pub mod metrics;
pub mod moto;
pub mod sim;

pub use error::Error;
