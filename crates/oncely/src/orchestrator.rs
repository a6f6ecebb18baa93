//! The one trait a domain implements: what to call, under which names, with which retries.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::key::{DomainName, IdempotencyKey, InvalidName, Scope};
use crate::operation::Operation;
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::store::Decision;
use crate::trace::TraceParent;

/// What `execute` knows about the attempt it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt number, from 1, over the operation's whole life.
    pub number: u32,
    /// The operation's tenant, domain and key.
    pub scope: Scope,
    /// The trace context to send with the call (as its `traceparent` header): the call's
    /// own span when spans are exported, else the one the operation was submitted under.
    pub traceparent: Option<TraceParent>,
}

impl Attempt {
    /// The key to forward to the external API (as its `Idempotency-Key`). It is the same
    /// on every attempt of one operation (I7), so an API that honours keys performs the
    /// side effect at most once however often oncely has to ask.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.scope.key
    }
}

/// An operation that the end of another submits: see [`Orchestrator::follow_ups`]. It
/// belongs to the same tenant as the operation it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    /// Its domain.
    pub domain: DomainName,
    /// Its key, derived from the operation's (`{key}:completed`).
    pub key: IdempotencyKey,
    /// Its domain's event type.
    pub event_type: String,
    /// Its command, as JSON, in the form its domain stores it.
    pub payload: serde_json::Value,
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
///     fn business_key(&self, command: &SendEmail) -> Option<Result<IdempotencyKey, InvalidName>> {
///         Some(IdempotencyKey::new(format!("MAIL-{}", command.to)))
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
    /// as the seed's `PAY-{customerId}-{orderId}-{paymentMethod}`. `None` (the default)
    /// when callers always give a key: a submit without one is then refused.
    fn business_key(&self, command: &Self::Command) -> Option<Result<IdempotencyKey, InvalidName>> {
        let _ = command;
        None
    }

    /// How failed attempts are retried. The seed's policy by default.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Operations that `decision` submits, in the same transaction that applies it (a
    /// transactional outbox): a payment's completion and the webhook that announces it.
    /// Give each a key derived from the operation's, so that applying the same decision
    /// twice (a Finalizer's retry) submits it once. None by default.
    fn follow_ups(&self, operation: &Operation, decision: &Decision) -> Vec<FollowUp> {
        let _ = (operation, decision);
        Vec::new()
    }

    /// Makes the external call once and says how it went. Forward
    /// [`Attempt::idempotency_key`] to the API.
    fn execute(
        &self,
        command: Self::Command,
        attempt: Attempt,
    ) -> impl Future<Output = Outcome> + Send;

    /// Asks the provider what became of an earlier attempt whose outcome is unknown, before
    /// the engine calls [`Orchestrator::execute`] again: the worker died during the call,
    /// the call timed out, or `execute` returned [`Outcome::unknown`].
    ///
    /// `Some(outcome)` settles the attempt without calling again: it is recorded in the
    /// write-ahead log (an `OUTCOME_RECORDED` entry whose detail says `"reconciled": true`)
    /// and finalized like any outcome. `Ok` when the provider has the side effect, `Fail`
    /// when it has a conflicting one, `Retry` when it could not tell (then the outcome stays
    /// unknown and the next attempt asks again). `None` means the provider has nothing:
    /// the engine executes. The default answers `None`, which suits APIs that honour
    /// idempotency keys, where executing again is itself the question.
    fn reconcile(
        &self,
        command: &Self::Command,
        attempt: &Attempt,
    ) -> impl Future<Output = Option<Outcome>> + Send {
        let _ = (command, attempt);
        std::future::ready(None)
    }
}
