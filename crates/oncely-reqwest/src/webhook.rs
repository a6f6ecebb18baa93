//! Webhooks as the Standard Webhooks specification (standardwebhooks.com) has them: each
//! delivery carries `webhook-id` (the operation's key, the same on every attempt, so the
//! receiver can drop repeats), `webhook-timestamp` (seconds since the epoch, at sending)
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with a
//! `whsec_` secret. The body is `{"type": event type, "data": payload}`.

use std::fmt;

use base64::Engine as _;
use oncely::{Attempt, Outcome};
use serde::Serialize;

use crate::call::{ApiClient, ClientError, Timeouts, read, traced, transport_failure};
use crate::destination::{Destinations, Refused};

/// A signing secret: `whsec_` and at least 24 random bytes in base64. Never printed: its
/// `Debug` and `Display` show only that it is there.
#[derive(Clone)]
pub struct WebhookSecret {
    text: String,
    signer: std::sync::Arc<standardwebhooks::Webhook>,
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not `whsec_` followed by base64.
    #[error("a webhook secret is whsec_ followed by base64 (as `oncely` generates it)")]
    Format,
    /// Too few bytes to be hard to guess.
    #[error("a webhook secret needs at least 24 bytes of key; this one has {0}")]
    TooShort(usize),
    /// The system's random source failed.
    #[error("no random bytes for a secret: {0}")]
    Random(String),
}

/// The fewest key bytes a secret may have (the specification asks for 24 to 64).
const SECRET_BYTES_MIN: usize = 24;

impl WebhookSecret {
    /// Checks and wraps `whsec_…`.
    pub fn new(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix("whsec_").ok_or(SecretError::Format)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Format)?;
        if key.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort(key.len()));
        }
        let signer = standardwebhooks::Webhook::new(text).map_err(|_| SecretError::Format)?;
        Ok(Self {
            text: text.to_owned(),
            signer: std::sync::Arc::new(signer),
        })
    }

    /// A new secret of 32 random bytes from the operating system.
    pub fn generate() -> Result<Self, SecretError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| SecretError::Random(e.to_string()))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        Self::new(&format!("whsec_{encoded}"))
    }

    /// The secret itself, to hand to a receiver. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `v1,<signature>` of a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, Outcome> {
        self.signer.sign(id, timestamp, body).map_err(|error| {
            Outcome::fail(format!("the webhook cannot be signed: {error}"))
                .with_error_code("unsignable")
        })
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_… (hidden)")
    }
}

/// The `webhook-id` of the operation `scope`: its key, prefixed with its tenant
/// (`acme/order-1`) unless that is the default tenant and the key has no `/`. Tenants
/// cannot contain `/`, so different operations never share an id, and a receiver that
/// serves several tenants drops only true repeats.
pub fn webhook_id(scope: &oncely::Scope) -> String {
    let key = scope.key.as_str();
    if scope.tenant == oncely::TenantId::default() && !key.contains('/') {
        key.to_owned()
    } else {
        format!("{}/{key}", scope.tenant)
    }
}

/// Checks an event type: 1 to 64 of `a-z 0-9 . _ -` (`payment.completed`).
pub fn check_event_type(event_type: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    if (1..=64).contains(&event_type.len()) && event_type.bytes().all(allowed) {
        Ok(())
    } else {
        Err(format!(
            "eventType must be 1 to 64 of a-z 0-9 . _ -, not {event_type:?}"
        ))
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a T,
}

/// Delivers signed webhooks to destinations that [`Destinations`] allow.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    api: ApiClient,
    destinations: Destinations,
    secret: WebhookSecret,
}

impl WebhookClient {
    /// A client that signs with `secret` and connects only where `destinations` allow.
    pub fn new(
        secret: WebhookSecret,
        destinations: Destinations,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::guarded(timeouts, destinations.clone())?,
            destinations,
            secret,
        })
    }

    /// Where it may deliver.
    pub fn destinations(&self) -> &Destinations {
        &self.destinations
    }

    /// Checks a destination before anything is accepted for it (resolving its host).
    pub async fn check(&self, url: &str) -> Result<(), Refused> {
        self.destinations.check(url).await.map(drop)
    }

    /// Delivers one event under the attempt's key, and says how it went: any 2xx is
    /// delivered; 408, 429, 5xx and no answer are retried (the same `webhook-id`, so the
    /// receiver can drop a repeat); a refused destination or any other status fails.
    pub async fn deliver<T: Serialize>(
        &self,
        url: &str,
        event_type: &str,
        data: &T,
        attempt: &Attempt,
    ) -> Outcome {
        if let Err(refused) = self.destinations.check_url(url) {
            return Outcome::fail(refused.to_string()).with_error_code("destination-refused");
        }
        let body = match serde_json::to_vec(&Envelope { event_type, data }) {
            Ok(body) => body,
            Err(error) => {
                return Outcome::fail(format!("the event cannot be written: {error}"))
                    .with_error_code("unwritable");
            }
        };
        let id = webhook_id(&attempt.scope);
        let id = id.as_str();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = match self.secret.sign(id, timestamp, &body) {
            Ok(signature) => signature,
            Err(outcome) => return outcome,
        };
        let request = traced(self.api.post(url), attempt.traceparent.as_ref());
        let sent = request
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return refused_or_transport(&error),
        };
        let status = response.status();
        match read::<serde_json::Value>(response).await {
            Ok(_) => Outcome::ok()
                .with_data("status", status.as_u16())
                .with_data("webhookId", id),
            // A 2xx with a body that is not JSON is delivered all the same.
            Err(_) if status.is_success() => Outcome::ok()
                .with_data("status", status.as_u16())
                .with_data("webhookId", id),
            Err(outcome) => outcome,
        }
    }
}

/// A connection the destination check refused fails for good; any other transport
/// error is retried.
fn refused_or_transport(error: &reqwest::Error) -> Outcome {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Outcome::fail(refused.to_string()).with_error_code("destination-refused");
        }
        source = cause.source();
    }
    transport_failure(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let secret = WebhookSecret::generate().unwrap();
        assert!(secret.expose().starts_with("whsec_"));
        assert!(!format!("{secret:?} {secret}").contains(&secret.expose()[6..]));
        assert_eq!(WebhookSecret::new("nope").unwrap_err(), SecretError::Format);
        assert_eq!(
            WebhookSecret::new("whsec_AAAA").unwrap_err(),
            SecretError::TooShort(3)
        );
        assert_ne!(
            WebhookSecret::generate().unwrap().expose(),
            secret.expose(),
            "random"
        );
    }

    #[test]
    fn webhook_ids_carry_the_tenant_and_never_collide() {
        use oncely::{DomainName, IdempotencyKey, Scope, TenantId};
        let scope = |tenant: &str, key: &str| {
            Scope::new(
                TenantId::new(tenant).unwrap(),
                DomainName::new("NOTIFICATION").unwrap(),
                IdempotencyKey::new(key).unwrap(),
            )
        };
        assert_eq!(webhook_id(&scope("default", "order-1")), "order-1");
        assert_eq!(webhook_id(&scope("acme", "order-1")), "acme/order-1");
        // A default-tenant key that looks like another tenant's id is qualified too.
        assert_eq!(
            webhook_id(&scope("default", "acme/order-1")),
            "default/acme/order-1"
        );
    }

    #[test]
    fn a_signature_verifies_with_the_reference_implementation() {
        let secret = WebhookSecret::generate().unwrap();
        let body = br#"{"type":"payment.completed","data":{}}"#;
        let now = chrono::Utc::now().timestamp();
        let signature = secret.sign("pay-1:completed", now, body).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("webhook-id", "pay-1:completed".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let verifier = standardwebhooks::Webhook::new(secret.expose()).unwrap();
        assert!(verifier.verify(body, &headers).is_ok());
        assert!(verifier.verify(b"tampered", &headers).is_err());
    }
}
