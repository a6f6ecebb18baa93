//! The HTTP client of a payment gateway, and how its answers become [`Outcome`]s.
//!
//! The operation's idempotency key goes out as `Idempotency-Key` on every attempt (I7), so
//! a gateway that honours keys charges at most once however often oncely asks. That is
//! what makes it safe to retry a timeout: the request may have been charged, and asking
//! again with the same key returns that charge instead of making a second one.

use oncely::{IdempotencyKey, Outcome, TraceParent};
use oncely_reqwest::{ApiClient, ClientError, Timeouts, traced};
use serde::{Deserialize, Serialize};

use crate::command::PaymentCommand;

/// Why a gateway client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The base URL is not an http(s) URL.
    #[error("invalid gateway URL {url:?}: expected http://HOST[:PORT] or https://…")]
    Url {
        /// The URL given.
        url: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Timeouts of the gateway client.
pub type GatewayTimeouts = Timeouts;

/// The charge request the gateway receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeRequest {
    /// The amount, as an exact decimal string.
    pub amount: rust_decimal::Decimal,
    /// ISO 4217.
    pub currency: String,
    /// The order.
    pub order_id: i64,
    /// The customer.
    pub customer_id: i64,
    /// The payment method.
    pub payment_method: String,
}

impl From<&PaymentCommand> for ChargeRequest {
    fn from(command: &PaymentCommand) -> Self {
        Self {
            amount: command.amount(),
            currency: command.currency().as_str().to_owned(),
            order_id: command.order_id(),
            customer_id: command.customer_id(),
            payment_method: command.payment_method().to_owned(),
        }
    }
}

/// A successful charge, as the gateway answers it. Every field is required: an answer
/// without one is not a charge oncely can stand behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResponse {
    /// The gateway's id of the charge.
    pub transaction_id: String,
    /// The issuer's approval code.
    pub approval_code: String,
    /// The key the gateway charged under: the one sent.
    pub idempotency_key: String,
    /// What it charged: the amount sent.
    pub amount: rust_decimal::Decimal,
    /// In the currency sent.
    pub currency: String,
}

impl ChargeResponse {
    /// What, if anything, in this answer is not the charge that was asked for under
    /// `key` (OWASP API10: a provider's answer is input, and is checked like input).
    pub fn mismatch(&self, key: &IdempotencyKey, command: &PaymentCommand) -> Option<String> {
        if self.transaction_id.trim().is_empty() {
            return Some("an empty transactionId".to_owned());
        }
        if self.idempotency_key != key.as_str() {
            return Some(format!(
                "idempotencyKey {:?}, not {:?}",
                self.idempotency_key,
                key.as_str()
            ));
        }
        if self.amount != command.amount() {
            return Some(format!("amount {}, not {}", self.amount, command.amount()));
        }
        if self.currency != command.currency().as_str() {
            return Some(format!(
                "currency {:?}, not {:?}",
                self.currency,
                command.currency().as_str()
            ));
        }
        None
    }
}

/// A client of one gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    api: ApiClient,
    charges_url: String,
    ledger_url: String,
}

/// What the gateway has under a key (`GET /v1/charges/{key}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A charge: the one asked for, or (see [`ChargeResponse::mismatch`]) another.
    Charged(ChargeResponse),
    /// No charge under the key (`404`).
    NotCharged,
}

impl GatewayClient {
    /// A client of the gateway at `base_url` (its `/v1/charges` is called).
    pub fn new(base_url: &str, timeouts: GatewayTimeouts) -> Result<Self, GatewayError> {
        let base = base_url.trim_end_matches('/');
        let valid = (base.starts_with("http://") || base.starts_with("https://"))
            && reqwest::Url::parse(base).is_ok();
        if !valid {
            return Err(GatewayError::Url {
                url: base_url.to_owned(),
            });
        }
        Ok(Self {
            api: ApiClient::new(timeouts)?,
            charges_url: format!("{base}/v1/charges"),
            ledger_url: format!("{base}/v1/ledger"),
        })
    }

    /// What the gateway has under `key` (`GET /v1/charges/{key}`): asked before charging
    /// again after an attempt whose answer was lost. A failed lookup comes back as the
    /// outcome that says so (a `Retry`).
    pub async fn lookup(&self, key: &IdempotencyKey) -> Result<Lookup, Outcome> {
        let mut url = reqwest::Url::parse(&self.charges_url)
            .map_err(|error| Outcome::retry(format!("the charges URL is invalid: {error}")))?;
        url.path_segments_mut()
            .map_err(|()| Outcome::retry("the charges URL cannot take a key"))?
            .push(key.as_str());
        let response = self.api.get(url.as_str()).send().await;
        let response = response.map_err(|error| {
            Outcome::retry(format!(
                "the gateway could not be asked about {key}: {error}"
            ))
        })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Lookup::NotCharged);
        }
        match oncely_reqwest::read::<ChargeResponse>(response).await {
            Ok(charge) => Ok(Lookup::Charged(charge)),
            Err(outcome) => Err(outcome.into_unknown()),
        }
    }

    /// Every charge in the gateway's ledger (`GET /v1/ledger`), for audits.
    pub async fn ledger(&self) -> Result<Vec<crate::audit::LedgerCharge>, reqwest::Error> {
        let document: crate::audit::LedgerDocument = self
            .api
            .get(&self.ledger_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(document.charges)
    }

    /// Charges once under `key` and says how it went: `Ok` with the transaction id,
    /// approval code, amount and currency; a declined card is `Fail` with the gateway's
    /// code (`card_declined`); anything transient is `Retry`, with the same key next time.
    pub async fn charge(&self, key: &IdempotencyKey, command: &PaymentCommand) -> Outcome {
        self.charge_traced(key, command, None).await
    }

    /// [`GatewayClient::charge`], carrying the trace onward as `traceparent`.
    pub async fn charge_traced(
        &self,
        key: &IdempotencyKey,
        command: &PaymentCommand,
        traceparent: Option<&TraceParent>,
    ) -> Outcome {
        let request = self
            .api
            .post(&self.charges_url)
            .json(&ChargeRequest::from(command));
        let request = traced(request, traceparent);
        match self.api.call_with_key::<ChargeResponse>(request, key).await {
            // A 2xx that describes another charge: the gateway may or may not have made
            // ours. Unknown, so asked again under the same key, which returns what it did;
            // a gateway that keeps answering so ends TIMEOUT, never COMPLETED.
            Ok(charge) if let Some(mismatch) = charge.mismatch(key, command) => Outcome::unknown(
                format!("the gateway answered 2xx with {mismatch}; the outcome is unknown"),
            ),
            Ok(charge) => charged(charge, command),
            Err(outcome) => outcome,
        }
    }

    /// What became of an earlier attempt under `key` whose answer was lost: `Some(Ok)`
    /// when the gateway has the charge, `None` when it has none (charging is then safe),
    /// `Some(Retry)` when it cannot tell now. A charge under the key that is not this
    /// command's is never taken for it: `Fail` (`idempotency_key_reused`).
    pub async fn reconcile(
        &self,
        key: &IdempotencyKey,
        command: &PaymentCommand,
    ) -> Option<Outcome> {
        match self.lookup(key).await {
            Ok(Lookup::NotCharged) => None,
            Ok(Lookup::Charged(charge)) if let Some(mismatch) = charge.mismatch(key, command) => {
                Some(
                    Outcome::fail(format!(
                        "the gateway holds a charge under this key with {mismatch}"
                    ))
                    .with_error_code("idempotency_key_reused"),
                )
            }
            Ok(Lookup::Charged(charge)) => Some(charged(charge, command)),
            Err(outcome) => Some(outcome),
        }
    }
}

/// The `Ok` outcome of a charge that matches its command.
fn charged(charge: ChargeResponse, command: &PaymentCommand) -> Outcome {
    Outcome::ok()
        .with_data("transactionId", charge.transaction_id)
        .with_data("approvalCode", charge.approval_code)
        .with_data("amount", command.amount().to_string())
        .with_data("currency", command.currency().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused() {
        for url in ["", "localhost:8080", "ftp://x", "http://"] {
            assert!(
                GatewayClient::new(url, GatewayTimeouts::default()).is_err(),
                "{url}"
            );
        }
        assert!(GatewayClient::new("http://127.0.0.1:9/", GatewayTimeouts::default()).is_ok());
    }
}
