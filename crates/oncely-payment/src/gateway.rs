//! The HTTP client of a payment gateway, and how its answers become [`Outcome`]s.
//!
//! The operation's idempotency key goes out as `Idempotency-Key` on every attempt (I7), so
//! a gateway that honours keys charges at most once however often oncely asks. That is
//! what makes it safe to retry a timeout: the request may have been charged, and asking
//! again with the same key returns that charge instead of making a second one.

use std::time::Duration;

use oncely::{IdempotencyKey, Outcome};
use reqwest::StatusCode;
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
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Timeouts of the gateway client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayTimeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// The whole request, answer included.
    pub request: Duration,
}

impl Default for GatewayTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
        }
    }
}

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

/// A successful charge, as the gateway answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResponse {
    /// The gateway's id of the charge.
    pub transaction_id: String,
    /// The issuer's approval code.
    pub approval_code: String,
}

/// A refusal, as the gateway answers it.
#[derive(Debug, Clone, Default, Deserialize)]
struct GatewayProblem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A client of one gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    charges_url: String,
    ledger_url: String,
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
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(GatewayError::Client)?;
        Ok(Self {
            http,
            charges_url: format!("{base}/v1/charges"),
            ledger_url: format!("{base}/v1/ledger"),
        })
    }

    /// Every charge in the gateway's ledger (`GET /v1/ledger`), for audits.
    pub async fn ledger(&self) -> Result<Vec<crate::audit::LedgerCharge>, reqwest::Error> {
        let document: crate::audit::LedgerDocument = self
            .http
            .get(&self.ledger_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(document.charges)
    }

    /// Charges once under `key` and says how it went.
    pub async fn charge(&self, key: &IdempotencyKey, command: &PaymentCommand) -> Outcome {
        let sent = self
            .http
            .post(&self.charges_url)
            .header("Idempotency-Key", key.as_str())
            .json(&ChargeRequest::from(command))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return transport_failure(&error),
        };
        let status = response.status();
        let retry_after = retry_after(&response);
        if status.is_success() {
            return match response.json::<ChargeResponse>().await {
                Ok(charge) => Outcome::ok()
                    .with_data("transactionId", charge.transaction_id)
                    .with_data("approvalCode", charge.approval_code)
                    .with_data("amount", command.amount().to_string())
                    .with_data("currency", command.currency().as_str()),
                // The gateway said yes but the answer was lost: the charge may exist. The
                // same key next time returns it.
                Err(error) => Outcome::retry(format!(
                    "the gateway answered {status} but the body could not be read ({error}); the outcome is unknown"
                )),
            };
        }
        let problem = response.json::<GatewayProblem>().await.unwrap_or_default();
        classify(status, problem, retry_after)
    }
}

fn transport_failure(error: &reqwest::Error) -> Outcome {
    let what = if error.is_timeout() {
        "the gateway did not answer in time"
    } else if error.is_connect() {
        "the gateway could not be reached"
    } else {
        "the request to the gateway failed"
    };
    // A timeout after the request was sent leaves the outcome unknown: retrying with the
    // same key is safe because the gateway honours keys.
    Outcome::retry(format!("{what}: {error}"))
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3_600)))
}

fn classify(status: StatusCode, problem: GatewayProblem, retry_after: Option<Duration>) -> Outcome {
    let message = problem
        .message
        .unwrap_or_else(|| format!("the gateway answered {status}"));
    let transient = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if transient {
        let outcome = Outcome::retry(message);
        return match retry_after {
            Some(backoff) => outcome.with_backoff(backoff),
            None => outcome,
        };
    }
    let code = match (status, problem.code) {
        (_, Some(code)) => code,
        (StatusCode::PAYMENT_REQUIRED, None) => "payment_declined".to_owned(),
        (status, None) => format!("gateway_{}", status.as_u16()),
    };
    Outcome::fail(message).with_error_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let none = GatewayProblem::default;
        assert!(classify(StatusCode::SERVICE_UNAVAILABLE, none(), None).is_retry());
        assert!(classify(StatusCode::REQUEST_TIMEOUT, none(), None).is_retry());
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                none(),
                Some(Duration::from_secs(3))
            ),
            Outcome::retry("the gateway answered 429 Too Many Requests")
                .with_backoff(Duration::from_secs(3))
        );
        let declined = GatewayProblem {
            code: Some("card_declined".into()),
            message: Some("insufficient funds".into()),
        };
        assert_eq!(
            classify(StatusCode::PAYMENT_REQUIRED, declined, None),
            Outcome::fail("insufficient funds").with_error_code("card_declined")
        );
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, none(), None),
            Outcome::fail("the gateway answered 422 Unprocessable Entity")
                .with_error_code("gateway_422")
        );
    }

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
