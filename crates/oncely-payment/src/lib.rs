//! The payment domain of oncely: the seed's `PaymentCommand` and `PaymentOrchestrator`,
//! calling a payment gateway over HTTP.
//!
//! - [`command`]: the checked command and the request it is built from.
//! - [`gateway`]: the gateway client and how answers become outcomes.
//! - [`audit`]: reconciling operations with a gateway's ledger.
//!
//! `PaymentOrchestrator` serves the domain `PAYMENT` with the event type
//! `PAYMENT_REQUESTED`; its `execute` makes one gateway call with the operation's key.

#![forbid(unsafe_code)]

pub mod audit;
pub mod command;
pub mod gateway;

pub use command::{Currency, InvalidPayment, PaymentCommand, PaymentRequest};
pub use gateway::{ChargeRequest, ChargeResponse, GatewayClient, GatewayError, GatewayTimeouts};

use oncely::{Attempt, IdempotencyKey, InvalidName, Orchestrator, Outcome, RetryPolicy};

/// Charges payments through a gateway.
#[derive(Debug, Clone)]
pub struct PaymentOrchestrator {
    gateway: GatewayClient,
    policy: RetryPolicy,
}

impl PaymentOrchestrator {
    /// An orchestrator over `gateway`, with the seed's retry policy.
    pub fn new(gateway: GatewayClient) -> Self {
        Self {
            gateway,
            policy: RetryPolicy::default(),
        }
    }

    /// The same, with another retry policy.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }
}

impl Orchestrator for PaymentOrchestrator {
    type Command = PaymentCommand;
    const DOMAIN: &'static str = "PAYMENT";
    const EVENT_TYPE: &'static str = "PAYMENT_REQUESTED";

    fn business_key(&self, command: &PaymentCommand) -> Result<IdempotencyKey, InvalidName> {
        command.business_key()
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.policy.clone()
    }

    async fn execute(&self, command: PaymentCommand, attempt: Attempt) -> Outcome {
        tracing::debug!(key = %attempt.idempotency_key(), attempt = attempt.number, "charging");
        self.gateway
            .charge(attempt.idempotency_key(), &command)
            .await
    }
}
