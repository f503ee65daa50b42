//! A span per call, joined to the caller's trace when the call carries a W3C `traceparent`
//! (read with the process's propagator: the binary installs the W3C trace-context one; with
//! none installed, calls start their own traces).
//!
//! `Route` and `RouteBatch` get no span unless asked (`route_spans`): they are the hot path,
//! and a span per decision costs more than the decision. Health checks get none either.

use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Returns the span of one call (disabled for calls that get none).
pub fn request_span(request: &http::Request<()>, route_spans: bool) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = split(path);
    let hot = service == "greyrouter.v1.Router" && (method == "Route" || method == "RouteBatch");
    if (hot && !route_spans) || service == "grpc.health.v1.Health" {
        return tracing::Span::none();
    }
    let short = service.rsplit('.').next().unwrap_or(service);
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %format_args!("{short}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(request.headers()))
    });
    // Without an OpenTelemetry layer there is nothing to join: the span stays a log span.
    let _ = span.set_parent(parent);
    span
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The call's headers (gRPC metadata) as a carrier of trace context.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split("/greyrouter.v1.Admin/SetTenantVersion"),
            ("greyrouter.v1.Admin", "SetTenantVersion")
        );
        assert_eq!(split("/nonsense"), ("nonsense", ""));
    }
}
