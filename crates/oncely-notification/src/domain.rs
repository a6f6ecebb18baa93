//! Notifications: signed webhooks (Standard Webhooks), once per key. `POST /v1/notifications`.

use std::time::Duration;

use oncely::{Attempt, Orchestrator, Outcome, RetryPolicy};
use oncely_http::HttpDomain;
use oncely_reqwest::{WebhookClient, destination, webhook};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationRequest {
    /// Where to: an http(s) URL whose host is public, or allowed by `--webhook-allow`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// What happened, as `payment.completed`: 1 to 64 of `a-z 0-9 . _ -`.
    #[schemars(regex(pattern = r"^[a-z0-9._-]{1,64}$"))]
    pub event_type: String,
    /// The event's data.
    pub payload: Map<String, Value>,
}

/// A checked notification: stored as its request, read back through the same checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NotificationRequest", into = "NotificationRequest")]
pub struct Notification(NotificationRequest);

impl TryFrom<NotificationRequest> for Notification {
    type Error = String;

    fn try_from(request: NotificationRequest) -> Result<Self, String> {
        destination::check_form(&request.url).map_err(|refused| refused.to_string())?;
        webhook::check_event_type(&request.event_type)?;
        Ok(Self(request))
    }
}

impl From<Notification> for NotificationRequest {
    fn from(notification: Notification) -> Self {
        notification.0
    }
}

/// Delivers notifications through a [`WebhookClient`]: signed, to allowed destinations.
#[derive(Debug, Clone)]
pub struct Notifier(pub WebhookClient);

impl Orchestrator for Notifier {
    type Command = Notification;
    const DOMAIN: &'static str = "NOTIFICATION";
    const EVENT_TYPE: &'static str = "NOTIFICATION_REQUESTED";

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(300)).attempts(10)
    }

    async fn execute(&self, notification: Notification, attempt: Attempt) -> Outcome {
        let n = notification.0;
        let delivered = self.0.deliver(&n.url, &n.event_type, &n.payload, &attempt);
        delivered.await
    }
}

impl HttpDomain for Notifier {
    const RESOURCE: &'static str = "notifications";
    type Request = NotificationRequest;

    fn refine_schema(&self, schema: &mut Value) {
        schema["properties"]["url"]["pattern"] = self.0.destinations().url_pattern().into();
    }

    async fn admit(&self, notification: &Notification) -> Result<(), String> {
        let checked = self.0.check(&notification.0.url).await;
        checked.map_err(|refused| refused.to_string())
    }
}
