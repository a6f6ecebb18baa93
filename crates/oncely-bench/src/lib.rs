//! oncely's benchmark harness, behind `oncely bench`.
//!
//! Every workload runs in a process of its own, so each reports its own peak memory, and
//! all of them run in one invocation, on one machine, against the same databases and the
//! same simulated gateway (in-process, with a fixed latency and no faults), so their
//! figures can be compared side by side:
//!
//! - **e2e**: payments submitted through the library and awaited until finalized, by a
//!   fixed number of concurrent clients (closed loop), with a gateway latency of 0 ms
//!   (engine-bound) and 20 ms (concurrency-bound), on SQLite, PostgreSQL and MySQL;
//! - **overhead-1 / overhead-8**: the same with 1 and 8 clients, beside the same client calling the same
//!   gateway directly: what oncely adds per payment, and beside the two durable commits
//!   around that call written by hand (PostgreSQL, SQLite): the floor under that cost;
//! - **http-accept**: `POST /v1/payments` on `oncely serve`, driven by `wrk`;
//! - **peers**: the same job on underway, apalis and DBOS (a separate crate,
//!   `bench/peers`) and on a naive hand-written lifecycle;
//! - **limit**: the same rows written straight with sqlx, one commit per operation and
//!   batched: the database's own limit;
//! - **queued**: peak memory with a large backlog of accepted operations;
//! - **sweep**: e2e throughput against the gateway's latency and the workers;
//! - **bigtable**: accept latency and e2e throughput with millions of finished payments
//!   retained;
//! - **soak**: `oncely serve` over HTTP for minutes, closed and open loop, interval by
//!   interval;
//! - **uploads-1k / uploads-1m**: objects written to moto (S3) through the uploads domain,
//!   beside the same conditional create made directly: what oncely adds to an upload;
//! - **metrics-overhead**: `oncely serve` over HTTP with no metrics recorder and nobody
//!   watching, beside the same with `/metrics` scraped every 5 s and a console open (its
//!   overview and list asked every 2 s).
//!
//! Comparisons run in alternating rounds and are reported as medians with their spread. A
//! run fails when any workload errors or loses a payment, never on a timing.

#![forbid(unsafe_code)]

pub mod bigtable;
pub mod drive;
pub mod floor;
pub mod gateway;
pub mod harness;
pub mod http;
pub mod limit;
pub mod naive;
pub mod report;
pub mod result;
pub mod scratch;
pub mod server;
pub mod soak;
pub mod stats;
pub mod uploads;
pub mod workload;

pub use harness::{Plan, run_plan};
pub use report::Report;
pub use result::WorkloadResult;
pub use workload::Spec;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Something it needs could not be set up: a database, the gateway, a tool.
    #[error("{0}")]
    Setup(String),
    /// A child process failed or answered something unreadable.
    #[error("{0}")]
    Child(String),
    /// Writing the results failed.
    #[error("writing {path}: {message}")]
    Output {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// Re-exported for the peers crate, which calls the gateway the same way.
pub use oncely::Outcome;
/// Re-exported for the peers crate, which calls the gateway the same way.
pub use oncely_payment::GatewayClient;
