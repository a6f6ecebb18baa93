//! `serve --otlp-endpoint`: the operations' spans (target `oncely`, see `oncely::trace`)
//! exported over OTLP/HTTP in batches. The log on stderr is not affected.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// Where traces go: an `http(s)://` URL; `/v1/traces` is added unless it ends with it.
pub(crate) fn endpoint(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|error| {
        format!("{value:?} is not a URL ({error}); expected e.g. http://127.0.0.1:4318")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "{value:?}: expected an http:// or https:// URL of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318"
        ));
    }
    let base = value.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// The tracer provider behind the exporting layer.
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Batches spans for `endpoint` (a full `/v1/traces` URL).
    pub(crate) fn new(endpoint: &str) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .with_context(|| format!("setting up the OTLP exporter to {endpoint}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name("oncely")
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// The layer that turns oncely's spans into OpenTelemetry spans; only spans, only
    /// oncely's (the log's events stay in the log).
    pub(crate) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("oncely"))
            .with_filter(filter_fn(|metadata| {
                metadata.is_span() && metadata.target().starts_with("oncely")
            }))
    }

    /// Sends what is batched and stops.
    pub(crate) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: traces not all sent: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::endpoint;

    #[test]
    fn the_endpoint_gets_its_path_and_bad_ones_a_reason() {
        assert_eq!(
            endpoint("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint("https://otel.example/v1/traces/").unwrap(),
            "https://otel.example/v1/traces"
        );
        assert!(endpoint("127.0.0.1:4318").unwrap_err().contains("http://"));
        assert!(endpoint("grpc://x:4317").unwrap_err().contains("OTLP/HTTP"));
    }
}
