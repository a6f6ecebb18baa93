//! The payment domain of oncely: the seed's `PaymentCommand` and `PaymentOrchestrator`,
//! calling a payment gateway over HTTP, served at `/v1/payments`.
//!
//! - [`command`]: the checked command and the request it is built from.
//! - [`gateway`]: the gateway client (on `oncely-reqwest`: answers become outcomes there).
//! - [`audit`]: reconciling operations with a gateway's ledger.
//!
//! `PaymentOrchestrator` serves the domain `PAYMENT` with the event type
//! `PAYMENT_REQUESTED`; its `execute` makes one gateway call with the operation's key.
//! With [`PaymentOrchestrator::with_events`], a payment that ends `COMPLETED` or `FAILED`
//! submits a `payment.completed` / `payment.failed` notification in the same transaction
//! as its end (a transactional outbox), under the key `{paymentKey}:completed` /
//! `{paymentKey}:failed`: a crash can neither lose the event nor send it twice.

#![forbid(unsafe_code)]

pub mod audit;
pub mod command;
pub mod gateway;

pub use command::{Currency, InvalidPayment, PaymentCommand, PaymentRequest};
pub use gateway::{
    ChargeRequest, ChargeResponse, GatewayClient, GatewayError, GatewayTimeouts, Lookup,
};

use oncely::{
    Attempt, Decision, DomainName, FollowUp, IdempotencyKey, InvalidName, Operation,
    OperationState, Orchestrator, Outcome, RetryPolicy,
};
use oncely_http::HttpDomain;
use oncely_notification::{NotificationRequest, Notifier};
use serde_json::{Map, Value, json};

/// Charges payments through a gateway.
#[derive(Debug, Clone)]
pub struct PaymentOrchestrator {
    gateway: GatewayClient,
    policy: RetryPolicy,
    events_url: Option<String>,
}

impl PaymentOrchestrator {
    /// An orchestrator over `gateway`, with the seed's retry policy.
    pub fn new(gateway: GatewayClient) -> Self {
        Self {
            gateway,
            policy: RetryPolicy::default(),
            events_url: None,
        }
    }

    /// The same, with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same, announcing every payment that ends `COMPLETED` or `FAILED` to `url` as a
    /// notification (`payment.completed`, `payment.failed`), effectively once.
    pub fn with_events(mut self, url: impl Into<String>) -> Self {
        self.events_url = Some(url.into());
        self
    }

    /// The notification announcing how `operation` ended, if it is announced.
    fn event(&self, operation: &Operation, decision: &Decision) -> Option<FollowUp> {
        let url = self.events_url.as_ref()?;
        let outcome = match decision {
            Decision::Complete { data } => Value::Object(data.clone()),
            Decision::Fail { reason, code } => json!({ "reason": reason, "code": code }),
            Decision::RetryAt { .. } | Decision::GiveUp { .. } | Decision::Cancel { .. } => {
                return None;
            }
        };
        let suffix = event_suffix(decision.target_state())?;
        let mut payload = Map::new();
        payload.insert("paymentKey".into(), json!(operation.scope.key.as_str()));
        payload.insert("request".into(), operation.payload.clone());
        payload.insert("outcome".into(), outcome);
        let request = NotificationRequest {
            url: url.clone(),
            event_type: format!("payment.{suffix}"),
            payload,
        };
        let key = IdempotencyKey::new(event_key(operation.scope.key.as_str(), suffix));
        let key = key
            .inspect_err(|error| tracing::warn!(%error, "no event: the derived key is too long"))
            .ok()?;
        Some(FollowUp {
            domain: DomainName::new(<Notifier as Orchestrator>::DOMAIN).ok()?,
            key,
            event_type: <Notifier as Orchestrator>::EVENT_TYPE.to_owned(),
            payload: serde_json::to_value(request).ok()?,
        })
    }
}

/// How a payment that ended in `state` is announced: `completed`, `failed`, or not at all.
pub fn event_suffix(state: OperationState) -> Option<&'static str> {
    match state {
        OperationState::Completed => Some("completed"),
        OperationState::Failed => Some("failed"),
        _ => None,
    }
}

/// The key of the notification announcing the payment `key`: `{key}:{suffix}`.
pub fn event_key(key: &str, suffix: &str) -> String {
    format!("{key}:{suffix}")
}

impl Orchestrator for PaymentOrchestrator {
    type Command = PaymentCommand;
    const DOMAIN: &'static str = "PAYMENT";
    const EVENT_TYPE: &'static str = "PAYMENT_REQUESTED";

    fn business_key(
        &self,
        command: &PaymentCommand,
    ) -> Option<Result<IdempotencyKey, InvalidName>> {
        Some(command.business_key())
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.policy.clone()
    }

    fn follow_ups(&self, operation: &Operation, decision: &Decision) -> Vec<FollowUp> {
        self.event(operation, decision).into_iter().collect()
    }

    async fn execute(&self, command: PaymentCommand, attempt: Attempt) -> Outcome {
        tracing::debug!(key = %attempt.idempotency_key(), attempt = attempt.number, "charging");
        self.gateway
            .charge_traced(
                attempt.idempotency_key(),
                &command,
                attempt.traceparent.as_ref(),
            )
            .await
    }

    /// After an attempt whose answer was lost, the gateway is asked (`GET
    /// /v1/charges/{key}`) before charging again: a charge it has completes the payment
    /// with no second request to charge.
    async fn reconcile(&self, command: &PaymentCommand, attempt: &Attempt) -> Option<Outcome> {
        tracing::debug!(key = %attempt.idempotency_key(), attempt = attempt.number, "asking the gateway before charging again");
        self.gateway
            .reconcile(attempt.idempotency_key(), command)
            .await
    }
}

impl HttpDomain for PaymentOrchestrator {
    const RESOURCE: &'static str = "payments";
    const BUSINESS_KEY: bool = true;
    type Request = PaymentRequest;

    fn check_body(body: &[u8]) -> Result<(), String> {
        command::check_amount_text(body)
    }
}
