//! Tools that check a running oncely from the outside, for its tests and for its users:
//!
//! - [`audit`]: the store against what the providers recorded (the gateway's ledger, the
//!   webhook receiver's deliveries): every completed payment charged once, every
//!   notification delivered once, nothing the store cannot explain.
//! - [`chaos`]: several `oncely serve` processes on one database, faulty simulated
//!   providers, and faults thrown at them (SIGKILL, SIGSTOP past the lease, cut database
//!   connections, lying answers); then the audit must be clean.
//!
//! The `oncely` binary wires them as `oncely audit` and `oncely chaos`.

pub mod audit;
pub mod chaos;
mod error;

pub use error::Error;
