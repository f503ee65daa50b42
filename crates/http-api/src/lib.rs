//! The HTTP front door of a greyrouter node, on its own listener (`--http-addr`):
//!
//! - `GET /healthz`: the process is alive and answers (200);
//! - `GET /readyz`: 200 when the node routes from a loaded snapshot and the store takes
//!   writes; 503 when the store does not answer (routing goes on from the last snapshot, so the
//!   body says which part is down: `routing` and `store` apart).
//!
//! - `GET /metrics`: the Prometheus text format (when metrics are on; 404 otherwise);
//! - `/api/v1/...`: the HTTP/JSON API ([`api`]), behind the same auth layer as gRPC;
//! - `/`: the web console, static files built into the binary that call the API.
//!
//! Health answers a small JSON document. Like the gRPC front door, no rule lives here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use control::Node;
use serde_json::json;
use tokio::net::TcpListener;

pub mod api;
mod console;
pub mod metrics;

pub use metrics::Exporter;

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    node: Arc<Node>,
    exporter: Option<Exporter>,
}

/// Longest wait for the store's answer in `/readyz`.
const STORE_DEADLINE: Duration = Duration::from_secs(1);

/// Returns the routes over `node`; `/metrics` renders `exporter`'s series when given; the API
/// checks callers with `auth` (`None`: auth off).
pub fn routes(
    node: Arc<Node>,
    exporter: Option<Exporter>,
    auth: Option<Arc<auth::Authenticator>>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let layer = auth::AuthLayer::new(auth, Arc::clone(node.admission()), classify, refuse);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/style.css", get(console::style))
        .with_state(Shared {
            node: Arc::clone(&node),
            exporter,
        })
        .merge(api::routes(node, closing).layer(layer))
}

/// What a request is to the auth layer: the API's endpoints are governed by their gRPC twin's
/// rule; health and metrics are open.
fn classify(method: &axum::http::Method, path: &str) -> auth::Operation {
    if !path.starts_with("/api/") || path == api::OPENAPI_PATH {
        return auth::Operation::Open;
    }
    // A path or method of no endpoint reaches nothing but the 404 or 405 answer.
    match api::endpoint_of(method, path) {
        Some((_, rule)) => auth::Operation::Governed(rule),
        None => auth::Operation::Open,
    }
}

fn refuse(err: &control::Error) -> axum::response::Response {
    api::problem(err)
}

/// Serves HTTP for `node` on `listener` until `shutdown` completes.
pub async fn serve(
    node: Arc<Node>,
    exporter: Option<Exporter>,
    auth: Option<Arc<auth::Authenticator>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        metrics = exporter.is_some(),
        auth = auth.is_some(),
        "serving HTTP (/healthz, /readyz, /metrics, /api)"
    );
    // Live streams end when the server shuts down, before the graceful wait for connections.
    let (closing, closed) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    // The peer's address, for the rate budgets of callers without credentials.
    let app = routes(node, exporter, auth, closed).layer(axum::middleware::map_request(
        |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
         mut request: axum::extract::Request| async move {
            request.extensions_mut().insert(peer);
            request
        },
    ));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The Prometheus text format, after the node's readings.
async fn metrics_text(State(shared): State<Shared>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(exporter) = shared.exporter else {
        return (StatusCode::NOT_FOUND, "metrics are off on this router\n").into_response();
    };
    shared.node.collect_metrics().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exporter.render(),
    )
        .into_response()
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, Json<serde_json::Value>) {
    let node = shared.node;
    let revision = node.state().revision();
    let routing = json!({"serving": true, "revision": revision});
    let store = match tokio::time::timeout(STORE_DEADLINE, node.store().ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            STORE_DEADLINE.as_millis()
        )),
    };
    let describe = node.store().describe();
    match store {
        Ok(()) => (
            StatusCode::OK,
            Json(
                json!({"ready": true, "routing": routing, "store": {"up": true, "store": describe}}),
            ),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "routing": routing,
                "store": {"up": false, "store": describe, "error": error},
                "down": ["store"],
            })),
        ),
    }
}
