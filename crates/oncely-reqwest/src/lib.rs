//! Calling an HTTP API from an [`Orchestrator`](oncely::Orchestrator), with none of the
//! boilerplate every such domain would otherwise copy:
//!
//! - [`ApiClient::call`] forwards the operation's key as `Idempotency-Key` (I7) and turns
//!   the answer into an [`Outcome`](oncely::Outcome): 2xx is the parsed body; 408, 429,
//!   5xx, timeouts and connection errors are `Retry`, honouring `Retry-After`; any other
//!   status is `Fail` with the provider's error code; redirects are not followed.
//! - [`webhook`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,…`) and their `whsec_` secrets.
//! - [`destination`]: destinations a user may choose, checked against SSRF: loopback,
//!   private, link-local and unspecified addresses are refused unless allowed
//!   explicitly, and the *resolved* address is what is checked, on every connection.
//!
//! ```no_run
//! use oncely::{Attempt, Outcome};
//! use oncely_reqwest::{ApiClient, Timeouts};
//!
//! #[derive(serde::Deserialize)]
//! struct Sent { id: String }
//!
//! async fn execute(client: &ApiClient, attempt: Attempt) -> Outcome {
//!     let request = client.post("https://api.example.com/v1/messages").json(&"hello");
//!     match client.call::<Sent>(request, &attempt).await {
//!         Ok(sent) => Outcome::ok().with_data("messageId", sent.id),
//!         Err(outcome) => outcome, // a Retry or a Fail, already classified
//!     }
//! }
//! ```

#![forbid(unsafe_code)]

mod call;
pub mod destination;
pub mod webhook;

pub use call::{ApiClient, ClientError, Timeouts, classify, read, retry_after, traced};
pub use destination::{Destinations, Refused};
pub use webhook::{WebhookClient, WebhookSecret, webhook_id};
