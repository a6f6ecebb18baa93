//! oncely makes calls to external APIs (payment gateways, file stores, notification
//! providers) happen **effectively once**.
//!
//! A caller hands an operation over under an idempotency key; oncely records it
//! (*accept*), calls the external API outside any database transaction (*execute*), and
//! stores the result (*finalize*), with a write-ahead log in between, so that crashes,
//! retries, duplicate requests and zombie workers never lose an operation and never repeat a
//! side effect.
//!
//! # From nothing to a finished operation
//!
//! Implement [`Orchestrator`] for your domain, pick a [`Store`] (the `oncely-sqlx` crate
//! has SQLite, the embedded default), start an [`Engine`] and submit:
//!
//! ```ignore
//! use std::time::Duration;
//! use oncely::{Engine, IdempotencyKey};
//! use oncely_sqlx::SqliteStore;
//!
//! let store = SqliteStore::open("sqlite://oncely.db").await?;   // runs migrations
//! let engine = Engine::builder(store, Mailer).workers(16).start()?;
//! let key = IdempotencyKey::new("welcome-mail-42")?;
//! let submitted = engine.submit(key, SendEmail { to: "ada@example.com".into() }).await?;
//! let done = engine.wait(&submitted.operation.scope, Duration::from_secs(10)).await?;
//! assert!(done.state.is_terminal());
//! engine.shutdown(Duration::from_secs(5)).await;
//! ```
//!
//! The same program, compiled and run, is `crates/oncely-sqlx/examples/quickstart.rs`.
//!
//! # Guarantees
//!
//! - **I1** one key, one operation: a repeated submit returns the existing operation; the
//!   same key with another command is [`Error::Conflict`].
//! - **I2** nothing is lost: every accepted operation reaches a terminal state while an
//!   engine runs, whatever crashed before (the Reaper and the Finalizer see to it).
//! - **I3** a received outcome is never lost: it is in the write-ahead log before anything
//!   else, and a crash after that is finished from the log, never by calling again.
//! - **I4** fencing: every write about an attempt is conditional on (operation, attempt,
//!   lease owner); a zombie worker's late write matches nothing.
//! - **I5** no transaction across I/O: [`Orchestrator::execute`] gets no store or
//!   connection, so it cannot hold one.
//! - **I6** the log explains everything: every state change appends a [`WalEntry`].
//! - **I7** the external key is stable: [`Attempt::idempotency_key`] is the same on every
//!   attempt.
//!
//! # Layout
//!
//! - [`key`]: `IdempotencyKey`, `TenantId`, `DomainName`, `Scope`: names that only exist valid.
//! - [`state`]: the six states and the one table of legal transitions.
//! - [`outcome`]: `Outcome` — `Ok`, `Retry`, `Fail`.
//! - [`retry`]: the backoff policy.
//! - [`orchestrator`]: the trait a domain implements.
//! - [`operation`]: what a store keeps: operations, fences, the write-ahead log.
//! - [`store`]: the `Store` port, batch by batch.
//! - [`engine`]: the lifecycle, top to bottom, with the Finalizer and the Reaper.
//! - [`clock`]: system and manual time.
//! - [`memory`]: the store in memory, for tests and the simulator.
//! - [`failpoint`]: crash points for tests (`failpoints` feature).
//! - `faults`: a store wrapper that injects failures and unknown commits into store
//!   calls, for tests (`failpoints` feature).

#![forbid(unsafe_code)]

pub mod clock;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(feature = "failpoints")]
pub mod faults;
pub mod key;
pub mod keys;
pub mod memory;
pub mod operation;
pub mod orchestrator;
pub mod outcome;
pub mod retry;
pub mod state;
pub mod store;
mod telemetry;
pub mod trace;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineBuilder, EngineConfig, Submission};
pub use error::Error;
pub use failpoint::{CrashPoint, Failpoints};
pub use key::{DomainName, IdempotencyKey, InvalidName, NodeId, Scope, TenantId};
pub use keys::{ApiKey, KeySpec, KeyStore, NewKey, Role};
pub use memory::MemoryStore;
pub use operation::{
    Fence, Fingerprint, Lease, LeaseOwner, Operation, OperationId, WalEntry, WalKind,
};
pub use orchestrator::{Attempt, FollowUp, Orchestrator};
pub use outcome::Outcome;
pub use retry::RetryPolicy;
pub use state::OperationState;
pub use store::{
    AcceptLease, Accepted, Backlog, ClaimRequest, Decision, DomainOverview, Fenced, FollowUps,
    ListFilter, NewOperation, OverviewOf, Page, PendingOutcome, RecordOutcome, Store, StoreError,
    Transition,
};
pub use trace::{InvalidTraceParent, TraceParent};
