//! The one trait a domain implements: what to call, under which names, with which retries.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::key::{IdempotencyKey, InvalidName, Scope};
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;

/// What `execute` knows about the attempt it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt number, from 1, over the operation's whole life.
    pub number: u32,
    /// The operation's tenant, domain and key.
    pub scope: Scope,
}

impl Attempt {
    /// The key to forward to the external API (as its `Idempotency-Key`). It is the same
    /// on every attempt of one operation (I7), so an API that honours keys performs the
    /// side effect at most once however often oncely has to ask.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.scope.key
    }
}

/// A domain: the command it takes and the external call it makes.
///
/// `execute` receives the command and the attempt, and nothing else: no store, no
/// connection, no transaction. So no database transaction can be open across the external
/// call (I5); the engine records what `execute` returns.
///
/// ```
/// use oncely::{Attempt, IdempotencyKey, InvalidName, Orchestrator, Outcome};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
///
/// struct Mailer;
///
/// impl Orchestrator for Mailer {
///     type Command = SendEmail;
///     const DOMAIN: &'static str = "EMAIL";
///     const EVENT_TYPE: &'static str = "EMAIL_REQUESTED";
///
///     fn business_key(&self, command: &SendEmail) -> Result<IdempotencyKey, InvalidName> {
///         IdempotencyKey::new(format!("MAIL-{}", command.to))
///     }
///
///     async fn execute(&self, command: SendEmail, attempt: Attempt) -> Outcome {
///         // call the provider with attempt.idempotency_key() here
///         Outcome::ok().with_data("to", command.to)
///     }
/// }
/// ```
pub trait Orchestrator: Send + Sync + 'static {
    /// The command a caller hands over; stored as JSON with the operation.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The domain name (`PAYMENT`): 1 to 64 of `A-Z a-z 0-9 _ - .`.
    const DOMAIN: &'static str;

    /// The event type recorded with each operation (`PAYMENT_REQUESTED`).
    const EVENT_TYPE: &'static str;

    /// The key to use when the caller gives none: built from the command's business fields,
    /// as the seed's `PAY-{customerId}-{orderId}-{paymentMethod}`.
    fn business_key(&self, command: &Self::Command) -> Result<IdempotencyKey, InvalidName>;

    /// How failed attempts are retried. The seed's policy by default.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Makes the external call once and says how it went. Forward
    /// [`Attempt::idempotency_key`] to the API.
    fn execute(
        &self,
        command: Self::Command,
        attempt: Attempt,
    ) -> impl Future<Output = Outcome> + Send;
}
