//! What an external call came to: [`Outcome`], a closed set of three.
//!
//! An orchestrator's `execute` must return one of them, so "the call ended without saying
//! how" cannot be written. The outcome is recorded in the write-ahead log before anything
//! else happens (I3) and is then turned into the operation's next state.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The result of one attempt at the external call.
///
/// ```
/// use std::time::Duration;
/// use oncely::Outcome;
///
/// let ok = Outcome::ok().with_data("transactionId", "tx_1").with_data("approvalCode", "A1");
/// let retry = Outcome::retry("gateway answered 503").with_backoff(Duration::from_secs(5));
/// let fail = Outcome::fail("card declined").with_error_code("card_declined");
/// assert!(ok.is_ok() && retry.is_retry() && fail.is_fail());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The side effect happened; `data` is what the API answered (transaction id, …).
    Ok {
        /// Named values to keep with the operation.
        data: Map<String, Value>,
    },
    /// A transient failure, or an answer that never came: try again later with the same key.
    Retry {
        /// Why, for people.
        reason: String,
        /// How long to wait, when the API said (`Retry-After`); else the retry policy decides.
        #[serde(
            rename = "backoffMs",
            default,
            skip_serializing_if = "Option::is_none",
            with = "duration_ms"
        )]
        backoff: Option<Duration>,
        /// Whether the side effect may have happened: the request may have reached the
        /// API and its answer was lost (a timeout, a broken connection, an unreadable 2xx).
        /// Before the next attempt the engine asks the domain to reconcile
        /// ([`crate::Orchestrator::reconcile`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unknown: bool,
    },
    /// A permanent failure: trying again would not help.
    Fail {
        /// Why, for people.
        reason: String,
        /// A stable code, for machines (`card_declined`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
}

impl Outcome {
    /// A success with no data yet; add some with [`Outcome::with_data`].
    pub fn ok() -> Self {
        Self::Ok { data: Map::new() }
    }

    /// A transient failure; the retry policy picks the backoff unless
    /// [`Outcome::with_backoff`] sets one.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            backoff: None,
            unknown: false,
        }
    }

    /// A `Retry` whose side effect may have happened: the answer never came. The next
    /// attempt is preceded by the domain's [`crate::Orchestrator::reconcile`].
    pub fn unknown(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            backoff: None,
            unknown: true,
        }
    }

    /// A permanent failure; add a code with [`Outcome::with_error_code`].
    pub fn fail(reason: impl Into<String>) -> Self {
        Self::Fail {
            reason: reason.into(),
            code: None,
        }
    }

    /// Adds a named value to an `Ok` outcome. Other outcomes carry no data and are
    /// returned unchanged.
    pub fn with_data(self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        match self {
            Self::Ok { mut data } => {
                data.insert(name.into(), value.into());
                Self::Ok { data }
            }
            other @ (Self::Retry { .. } | Self::Fail { .. }) => other,
        }
    }

    /// Sets the backoff of a `Retry` outcome; other outcomes are returned unchanged.
    pub fn with_backoff(self, backoff: Duration) -> Self {
        match self {
            Self::Retry {
                reason, unknown, ..
            } => Self::Retry {
                reason,
                backoff: Some(backoff),
                unknown,
            },
            other @ (Self::Ok { .. } | Self::Fail { .. }) => other,
        }
    }

    /// Sets the error code of a `Fail` outcome; other outcomes are returned unchanged.
    pub fn with_error_code(self, code: impl Into<String>) -> Self {
        match self {
            Self::Fail { reason, .. } => Self::Fail {
                reason,
                code: Some(code.into()),
            },
            other @ (Self::Ok { .. } | Self::Retry { .. }) => other,
        }
    }

    /// Whether this is `Ok`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }

    /// Whether this is `Retry`.
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Retry { .. })
    }

    /// Whether this is a `Retry` whose side effect may have happened.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Retry { unknown: true, .. })
    }

    /// The same outcome, a `Retry` marked unknown; others unchanged.
    pub fn into_unknown(self) -> Self {
        match self {
            Self::Retry {
                reason, backoff, ..
            } => Self::Retry {
                reason,
                backoff,
                unknown: true,
            },
            other @ (Self::Ok { .. } | Self::Fail { .. }) => other,
        }
    }

    /// Whether this is `Fail`.
    pub fn is_fail(&self) -> bool {
        matches!(self, Self::Fail { .. })
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_only_touch_their_own_variant() {
        assert_eq!(Outcome::fail("x").with_data("a", 1), Outcome::fail("x"));
        assert_eq!(
            Outcome::ok().with_backoff(Duration::from_secs(1)),
            Outcome::ok()
        );
        assert_eq!(
            Outcome::retry("x").with_error_code("c"),
            Outcome::retry("x")
        );
    }

    #[test]
    fn outcomes_round_trip_through_json() {
        let outcomes = [
            Outcome::ok().with_data("transactionId", "tx_1"),
            Outcome::retry("503").with_backoff(Duration::from_millis(1500)),
            Outcome::retry("no answer"),
            Outcome::unknown("lost").with_backoff(Duration::from_secs(1)),
            Outcome::fail("declined").with_error_code("card_declined"),
        ];
        for outcome in outcomes {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
        }
        let json =
            serde_json::to_value(Outcome::retry("r").with_backoff(Duration::from_secs(2))).unwrap();
        assert_eq!(json["backoffMs"], 2000);
        assert_eq!(json["type"], "RETRY");
        assert!(
            json.get("unknown").is_none(),
            "a definite retry says nothing more"
        );
        let json = serde_json::to_value(Outcome::unknown("lost")).unwrap();
        assert_eq!(json["unknown"], true);
        assert!(Outcome::retry("r").into_unknown().is_unknown());
    }
}
