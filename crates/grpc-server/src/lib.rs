//! The gRPC front door of a greyrouter node: `greyrouter.v1.Router` and `greyrouter.v1.Admin`,
//! gRPC health and server reflection.
//!
//! Handlers are thin: they convert messages with `greyrouter_proto::domain`, call the
//! [`control::Node`], and map its errors through [`status`] (the one table is
//! [`control::ErrorKind`]). No rule lives here.
//!
//! - [`router`]: `Route`, `RouteBatch`, outcome reports, `WatchAssignments`;
//! - [`admin`]: every admin call;
//! - [`status`]: node errors as gRPC statuses;
//! - [`access`]: the rule of every method, the caller of a request, its tenant checks;
//! - [`tracing_context`]: a span per call, in the caller's trace;
//! - [`serve`]: the transport, health and reflection, until shutdown.

pub mod access;
pub mod admin;
pub mod frames;
pub mod router;
pub mod status;
pub mod tracing_context;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use control::Node;
use greyrouter_proto::shared::router_server::RouterServer;
use greyrouter_proto::v1::admin_server::AdminServer;
use greyrouter_store::Store;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::admin::AdminService;
use crate::router::RouterService;

/// The HTTP/2 connections and limits of the gRPC listener.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcSettings {
    /// HTTP/2 `SETTINGS_INITIAL_WINDOW_SIZE`, in bytes.
    pub initial_stream_window_bytes: u32,
    /// HTTP/2 connection-level flow-control window, in bytes.
    pub initial_connection_window_bytes: u32,
    /// Size windows from the measured bandwidth-delay product instead.
    pub adaptive_window: bool,
    /// Most calls open at once on one connection; 0: no limit.
    pub max_concurrent_streams: u32,
    /// Largest block of request headers, in bytes.
    pub max_header_list_bytes: u32,
    /// Keep-alive pings on idle connections; `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// How long a keep-alive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Largest encoded request message, in bytes.
    pub max_request_bytes: usize,
    /// On shutdown, how long open calls may take to finish.
    pub shutdown_grace: Duration,
    /// How often the store is checked for the health of the Admin service.
    pub health_interval: Duration,
    /// Spans for `Route` and `RouteBatch` calls too.
    pub route_spans: bool,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            initial_stream_window_bytes: 1024 * 1024,
            initial_connection_window_bytes: 1024 * 1024,
            adaptive_window: false,
            max_concurrent_streams: 1_000,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            max_request_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            health_interval: Duration::from_secs(1),
            route_spans: false,
        }
    }
}

/// Who may call, and over what: the auth layer's checks and TLS.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Checks credentials; `None`: auth off, every caller unrestricted.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// TLS (and client certificates); `None`: plaintext.
    pub tls: Option<auth::tls::ServerTls>,
    /// How often the TLS files are checked for a change.
    pub tls_reload_interval: Duration,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves gRPC for `node` on `listener` until `shutdown` completes, then drains open calls
/// (watch streams end at once with `UNAVAILABLE`; other calls get `shutdown_grace`).
pub async fn serve(
    node: Arc<Node>,
    settings: GrpcSettings,
    security: Security,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (closing, closing_watchers) = tokio::sync::watch::channel(false);
    let mut closed = closing.subscribe();
    let (health, health_service) = tonic_health::server::health_reporter();
    let draining = health.clone();
    let shutdown = async move {
        shutdown.await;
        // Tell load balancers to stop sending, and end watch streams.
        draining
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        draining
            .set_not_serving::<RouterServer<RouterService>>()
            .await;
        draining
            .set_not_serving::<AdminServer<AdminService>>()
            .await;
        closing.send_replace(true);
    };
    let router = RouterService::new(Arc::clone(&node), closing_watchers);
    let admin = AdminService::new(Arc::clone(&node));

    health.set_serving::<RouterServer<RouterService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let health_task = tokio::spawn(watch_store_health(
        Arc::clone(node.store()),
        health.clone(),
        settings.health_interval,
    ));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(greyrouter_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(greyrouter_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        store = %node.store().describe(),
        revision = node.state().revision(),
        tls = security.tls.is_some(),
        auth = security.auth.is_some(),
        "serving gRPC"
    );
    let layer = auth::AuthLayer::new(
        security.auth.clone(),
        Arc::clone(node.admission()),
        |_, path| access::classify(path),
        access::refuse,
    );
    let route_spans = settings.route_spans;
    let routes = transport(&settings)
        .trace_fn(move |request| tracing_context::request_span(request, route_spans))
        .layer(layer)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(frames::RouterFront::new(router, settings.max_request_bytes))
        .add_service(AdminServer::new(admin).max_decoding_message_size(settings.max_request_bytes));
    let mut reload = None;
    let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &security.tls {
            Some(tls) => {
                reload = Some(tokio::spawn(
                    tls.clone().watch(security.tls_reload_interval),
                ));
                Box::pin(routes.serve_with_incoming_shutdown(tls.incoming(listener), shutdown))
            }
            None => Box::pin(routes.serve_with_incoming_shutdown(
                // Small replies must not wait for delayed ACKs (Nagle): set TCP_NODELAY.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )),
        };
    // Calls still open (streams a client never closes) get `shutdown_grace` to finish.
    let grace = settings.shutdown_grace;
    let forced = async {
        let _ = closed.wait_for(|closing| *closing).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = serve => result.map_err(ServeError::from),
        () = forced => {
            tracing::warn!(?grace, "calls still open after the grace period; stopping anyway");
            Ok(())
        }
    };
    health_task.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    result
}

/// Returns the gRPC transport with the HTTP/2 settings.
fn transport(settings: &GrpcSettings) -> tonic::transport::Server {
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(
            (settings.max_concurrent_streams > 0).then_some(settings.max_concurrent_streams),
        )
        .http2_max_header_list_size(settings.max_header_list_bytes)
        .http2_keepalive_interval(settings.keepalive_interval)
        .http2_keepalive_timeout(Some(settings.keepalive_timeout));
    if settings.adaptive_window {
        // Adaptive windows start at the HTTP/2 minimum and grow; fixed sizes would be ignored.
        server.http2_adaptive_window(Some(true))
    } else {
        server
            .initial_stream_window_size(settings.initial_stream_window_bytes)
            .initial_connection_window_size(settings.initial_connection_window_bytes)
    }
}

/// Reports the Admin service (writes) as serving only while the store answers; routing keeps
/// serving from the replica whatever the store does.
async fn watch_store_health(
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    interval: Duration,
) {
    let mut serving = true;
    loop {
        let ok = match tokio::time::timeout(interval, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                if serving {
                    tracing::warn!(%err, "store unavailable: writes fail, routing continues from the replica");
                }
                false
            }
            Err(_) => {
                if serving {
                    tracing::warn!(
                        "store does not answer: writes fail, routing continues from the replica"
                    );
                }
                false
            }
        };
        if ok != serving {
            serving = ok;
            if ok {
                tracing::info!("store available again");
                health.set_serving::<AdminServer<AdminService>>().await;
            } else {
                health.set_not_serving::<AdminServer<AdminService>>().await;
            }
        }
        tokio::time::sleep(interval).await;
    }
}
