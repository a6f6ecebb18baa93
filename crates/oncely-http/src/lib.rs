//! oncely's HTTP API: a [`Service`] assembled from domains, each served under
//! `/v1/{resource}` with Idempotency-Key endpoints, and the service's own routes once.
//!
//! ```ignore
//! let service = Service::builder()
//!     .domain(payments_engine)          // an Engine<_, PaymentOrchestrator>: /v1/payments
//!     .domain(notifications_engine)     // /v1/notifications
//!     .build()?;
//! service.serve(listener, shutdown_signal(), Duration::from_secs(10)).await?;
//! ```
//!
//! gives, for each domain's resource (`payments`, …):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/{resource}` | accept a command under `Idempotency-Key` (or the business key); `Prefer: wait=N` |
//! | `GET /v1/{resource}` | list, `?state=&limit=&cursor=`, newest first |
//! | `GET /v1/{resource}/{key}` | one operation |
//! | `GET /v1/{resource}/{key}/history` | its write-ahead log |
//! | `POST /v1/{resource}/{key}/retry` | an operator's retry of a `FAILED` or `TIMEOUT` operation |
//! | `POST /v1/{resource}/{key}/cancel` | an operator's cancel: `CANCELLED` now, or when the running attempt does not succeed |
//!
//! and once: `GET /healthz`, `GET /readyz` (every domain's store answers), `GET
//! /openapi.json` (OpenAPI 3.1, each request's schema derived from its type), `GET
//! /v1/overview` (every domain's counts, for the key's tenant) and, with
//! [`ServiceBuilder::console`], the operators' web console at `/console`.
//!
//! A domain is an [`Orchestrator`](oncely::Orchestrator) that also implements
//! [`HttpDomain`]: a resource name and a request type. Every error is
//! `application/problem+json` (RFC 9457, [`Problem`]); a refused request stores nothing.
//!
//! # Layout
//!
//! - `domain`: [`HttpDomain`].
//! - `service`: [`Service`] and its builder.
//! - `routes`: a domain's handlers, generic over its engine.
//! - [`openapi`]: the route tables and the document built from them.
//! - `problem`, `view`: what errors and operations look like to clients.

#![forbid(unsafe_code)]

pub mod auth;
pub mod console;
pub mod domain;
pub mod openapi;
mod problem;
mod routes;
mod server;
mod service;
mod view;

pub use auth::{Keys, Principal, RateLimit};
pub use console::{Console, ConsoleError};
pub use domain::HttpDomain;
pub use openapi::{DOMAIN_ROUTES, RouteDoc, RouteId, SERVICE_ROUTES, openapi_document};
pub use problem::{PROBLEM_JSON, Problem};
pub use routes::{LIST_LIMIT_DEFAULT, WAIT_SECONDS_MAX};
pub use server::{ServeOptions, TlsError, tls_config};
pub use service::{Service, ServiceBuilder, ServiceError};
pub use view::{
    BulkFailure, BulkView, DomainOverviewView, HistoryView, OperationView, OverviewView, PageView,
    WalEntryView,
};
