//! The server's logs, traces and metrics: the log format on stderr, OpenTelemetry spans
//! exported over OTLP/gRPC when an endpoint is configured, and the Prometheus recorder behind
//! `/metrics` when metrics are on and there is an HTTP listener.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::Config;

/// What stays alive while the server runs: flushes the spans not yet exported when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The Prometheus renderer, when metrics are on.
    pub exporter: Option<http_api::Exporter>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("greyrouter: spans not exported at exit: {err}");
        }
    }
}

/// Installs logging, trace export and the metrics recorder for `serve` (inside the runtime:
/// the OTLP exporter's connection lives on it). A failure to set up export is logged and the
/// server goes on without it.
pub fn init(config: &Config) -> Telemetry {
    let mut problems = Vec::new();
    let (otel, provider) = if config.tracing.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        match tracer_provider(config) {
            Ok(provider) => {
                let tracer = provider.tracer("greyrouter");
                opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
                (Some(layer), Some(provider))
            }
            Err(err) => {
                problems.push(format!("traces are not exported: {err}"));
                (None, None)
            }
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if config.log.format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        // Text lines escape whatever callers sent (no colours: escape codes are escaped too).
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(crate::log::SafeLines::new(std::io::stderr))
            .with_filter(filter)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    for problem in problems {
        tracing::warn!("{problem}");
    }
    if provider.is_some() {
        tracing::info!(
            endpoint = %config.tracing.otlp_endpoint,
            service = %config.tracing.service_name,
            sampling_ratio = config.tracing.sampling_ratio,
            route_spans = config.tracing.route_spans,
            "exporting traces over OTLP"
        );
    }
    // Without an HTTP listener nothing could read them: nothing is recorded.
    let exporter = if config.metrics.enabled && config.http_addr.is_some() {
        match http_api::Exporter::install() {
            Ok(exporter) => Some(exporter),
            Err(err) => {
                tracing::warn!("metrics are off: {err}");
                None
            }
        }
    } else {
        None
    };
    Telemetry { provider, exporter }
}

/// The span pipeline: a batch exporter over OTLP/gRPC, sampling by ratio unless the caller's
/// trace decided.
fn tracer_provider(config: &Config) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.tracing.otlp_endpoint.clone())
        .build()?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        config.tracing.sampling_ratio,
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.tracing.service_name.clone())
                .build(),
        )
        .build())
}
