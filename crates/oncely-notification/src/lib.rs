//! The notification domain of oncely: an event sent to a URL as a signed webhook
//! (Standard Webhooks), once per key however often it must be tried, served at
//! `POST /v1/notifications {url, eventType, payload}`.
//!
//! - [`domain`]: the request, the checked command and the orchestrator, in one file: what
//!   any HTTP-calling domain looks like (`oncely new` writes one like it).
//! - [`audit`]: reconciling notifications with a receiver's record of deliveries.

#![forbid(unsafe_code)]

pub mod audit;
pub mod domain;

pub use domain::{Notification, NotificationRequest, Notifier};

#[cfg(doctest)]
#[doc = include_str!("../../../docs/domains.md")]
pub struct DomainsDoctests;
