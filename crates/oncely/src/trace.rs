//! Traces. An operation carries the W3C trace context it was submitted under (its
//! `traceparent`), stored with it, so that every span of its life belongs to that trace:
//! accept, claim, each attempt with its external call and record, the Finalizer's and the
//! Reaper's work, also on another node after a crash. The external call carries the trace
//! onward (its `traceparent` names the call's span).
//!
//! The spans are `tracing` spans at `DEBUG` under the `oncely` target, named
//! `oncely.accept`, `oncely.claim`, `oncely.attempt`, `oncely.call`, `oncely.record`,
//! `oncely.finalize` and `oncely.reap`. An application that installs a
//! `tracing-opentelemetry` layer exports them (as `oncely serve --otlp-endpoint` does);
//! without one they cost a disabled callsite each.

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C `traceparent` (version `00`): `00-{trace id}-{parent id}-{flags}`, lowercase hex,
/// neither id all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid traceparent {value:?}: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lowercase, ids not all zeros"
)]
pub struct InvalidTraceParent {
    /// The value given (at most its first 64 characters).
    pub value: String,
}

impl TraceParent {
    /// Parses a `traceparent` header. A later version than `00` is read as `00` when it
    /// starts like one, as the W3C recommendation asks; version `ff` is refused.
    pub fn parse(value: &str) -> Result<Self, InvalidTraceParent> {
        let invalid = || InvalidTraceParent {
            value: value.chars().take(64).collect(),
        };
        let value = value.trim();
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace_id, parent_id, flags, rest @ ..] = parts.as_slice() else {
            return Err(invalid());
        };
        let version = hex::<1>(version).ok_or_else(invalid)?[0];
        if version == 0xff || (version == 0 && !rest.is_empty()) {
            return Err(invalid());
        }
        let parent = Self {
            trace_id: hex::<16>(trace_id).ok_or_else(invalid)?,
            parent_id: hex::<8>(parent_id).ok_or_else(invalid)?,
            flags: hex::<1>(flags).ok_or_else(invalid)?[0],
        };
        if parent.trace_id == [0; 16] || parent.parent_id == [0; 8] {
            return Err(invalid());
        }
        Ok(parent)
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        lower_hex(&self.trace_id)
    }

    /// The parent span's id, 16 lowercase hex digits.
    pub fn parent_id(&self) -> String {
        lower_hex(&self.parent_id)
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }

    fn from_span_context(context: &SpanContext) -> Option<Self> {
        context.is_valid().then(|| Self {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            flags: context.trace_flags().to_u8(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.parent_id(),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl std::str::FromStr for TraceParent {
    type Err = InvalidTraceParent;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let digit = |d: u8| match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        };
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

fn lower_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// Makes `span` a child of `parent`'s span, in its trace. Without an OpenTelemetry layer
/// installed, nothing happens.
pub(crate) fn follow(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent
        && !span.is_disabled()
    {
        let context = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        let _ = span.set_parent(context);
    }
}

/// The trace context to hand on from `span`: its own when it is exported (a child of
/// `stored`, in the same trace), else `stored` as it is: the trace goes on under the
/// caller's span.
pub(crate) fn onward(span: &tracing::Span, stored: Option<&TraceParent>) -> Option<TraceParent> {
    if !span.is_disabled() {
        let context = span.context();
        if let Some(own) = TraceParent::from_span_context(context.span().span_context()) {
            return Some(own);
        }
    }
    stored.copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_w3c_example() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        let json = serde_json::to_string(&parent).unwrap();
        assert_eq!(serde_json::from_str::<TraceParent>(&json).unwrap(), parent);
    }

    #[test]
    fn refuses_what_the_recommendation_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?} was accepted");
        }
        // A later version is read as 00 when it starts like one.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert_eq!(
            TraceParent::parse(later).unwrap().to_string(),
            EXAMPLE,
            "a later version"
        );
    }

    #[test]
    fn without_an_exporter_the_stored_context_goes_on_unchanged() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let span = tracing::debug_span!("oncely.attempt");
        follow(&span, Some(&parent));
        assert_eq!(onward(&span, Some(&parent)), Some(parent));
        assert_eq!(onward(&span, None), None);
    }
}
