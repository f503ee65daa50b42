//! Wiring: opens the store, loads the replica, seeds, and serves gRPC until shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use greyrouter_proto::v1::admin_server::AdminServer;
use greyrouter_proto::v1::router_server::RouterServer;
use greyrouter_store::{MemoryStore, Store};
use redis_store::RedisStore;
use routing_core::StateDump;
use routing_core::outcome::WindowConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::admin::AdminService;
use crate::audit::Actor;
use crate::config::{Config, ServerSettings};
use crate::outcomes::Outcomes;
use crate::replica::Replica;
use crate::rollouts;
use crate::router::RouterService;
use crate::schema::Schemas;
use schema_manager::{Catalog, Migrator, MigratorOptions, Templates};

/// A router ready to serve: its replica loaded and following the store.
#[derive(Debug)]
pub struct App {
    config: Config,
    replica: Arc<Replica>,
    follower: JoinHandle<()>,
    schemas: Option<Arc<Schemas>>,
}

impl App {
    /// Opens the configured store, loads the state and applies the seed file to an empty store.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        let store = open_store(&config).await?;
        let replica = Replica::load(store, config.watch.history, config.watch.history_bytes)
            .await
            .context("cannot load routing state from the store")?;
        let follower = tokio::spawn(Arc::clone(&replica).follow());
        let schemas = open_schemas(&config)?;
        let app = App {
            config,
            replica,
            follower,
            schemas,
        };
        if let Some(seed) = app.config.seed.clone() {
            app.seed(&seed).await?;
        }
        Ok(app)
    }

    /// Returns the replica.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Returns this replica's name for leases: configured, or process id and a random suffix.
    fn replica_id(&self) -> String {
        if !self.config.outcomes.replica_id.is_empty() {
            return self.config.outcomes.replica_id.clone();
        }
        use std::hash::BuildHasher;
        let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        format!("greyrouter-{}-{:08x}", std::process::id(), random as u32)
    }

    async fn seed(&self, path: &Path) -> anyhow::Result<()> {
        let dump = read_seed(path)?;
        if self.replica.current().revision() > 0 {
            tracing::info!(seed = %path.display(), "store already holds routing state; seed not applied");
            return Ok(());
        }
        let mutations = dump.mutations();
        let count = mutations.len();
        for mutation in mutations {
            self.replica
                .commit(
                    mutation.clone(),
                    &Actor::system("seed", path.display().to_string()),
                )
                .await
                .with_context(|| format!("{}: cannot apply {mutation:?}", path.display()))?;
        }
        tracing::info!(seed = %path.display(), changes = count, "seed applied");
        Ok(())
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let limits = self.config.limits.clone();
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
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let outcomes = Arc::new(Outcomes::new(
            self.config.outcomes.ejection.clone(),
            WindowConfig {
                span_ms: self.config.outcomes.window_seconds.saturating_mul(1000),
                slots: self.config.outcomes.window_slots,
            },
        ));
        let driver = tokio::spawn(rollouts::drive(
            Arc::clone(&self.replica),
            Arc::clone(&outcomes),
            self.schemas.clone(),
            self.replica_id(),
            Duration::from_millis(self.config.outcomes.rollout_tick_ms),
            Duration::from_millis(self.config.outcomes.rollout_lease_ms),
        ));
        let router = RouterService::new(
            Arc::clone(&self.replica),
            outcomes,
            limits.clone(),
            self.config.watch.clone(),
            closing_watchers,
        );
        let admin = AdminService::new(Arc::clone(&self.replica), self.schemas.clone());

        health.set_serving::<RouterServer<RouterService>>().await;
        health.set_serving::<AdminServer<AdminService>>().await;
        let health_task = tokio::spawn(watch_store_health(
            Arc::clone(self.replica.store()),
            health.clone(),
            Duration::from_millis(self.config.health_interval_ms),
        ));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(greyrouter_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(greyrouter_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the reflection service")?;

        let addr = listener.local_addr().ok();
        tracing::info!(?addr, store = %self.replica.store().describe(), revision = self.replica.current().revision(), "serving gRPC");
        let serve = transport(&self.config.server)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                RouterServer::new(router).max_decoding_message_size(limits.max_request_bytes),
            )
            .add_service(
                AdminServer::new(admin).max_decoding_message_size(limits.max_request_bytes),
            )
            .serve_with_incoming_shutdown(
                // Small replies must not wait for delayed ACKs (Nagle): set TCP_NODELAY.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            );
        // Calls still open (streams a client never closes) get `shutdown_grace_ms` to finish.
        let forced = async {
            let _ = closed.wait_for(|closing| *closing).await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = serve => result.context("gRPC server failed"),
            () = forced => {
                tracing::warn!(?grace, "calls still open after the grace period; stopping anyway");
                Ok(())
            }
        };
        self.follower.abort();
        health_task.abort();
        driver.abort();
        tracing::info!("stopped");
        result
    }
}

/// Returns the gRPC transport with the HTTP/2 settings of `[server]`.
fn transport(settings: &ServerSettings) -> tonic::transport::Server {
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(
            (settings.max_concurrent_streams > 0).then_some(settings.max_concurrent_streams),
        )
        .http2_max_header_list_size(settings.http2_max_header_list_bytes)
        .http2_keepalive_interval(
            (settings.http2_keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(settings.http2_keepalive_interval_ms)),
        )
        .http2_keepalive_timeout(Some(Duration::from_millis(
            settings.http2_keepalive_timeout_ms,
        )));
    if settings.http2_adaptive_window {
        // Adaptive windows start at the HTTP/2 minimum and grow; fixed sizes would be ignored.
        server.http2_adaptive_window(Some(true))
    } else {
        server
            .initial_stream_window_size(settings.http2_initial_stream_window_bytes)
            .initial_connection_window_size(settings.http2_initial_connection_window_bytes)
    }
}

/// Opens the store a configuration names.
async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.uses_redis() {
        let store = RedisStore::connect(config.redis_config())
            .await
            .context("cannot open the Redis store")?;
        return Ok(Arc::new(store));
    }
    let store = MemoryStore::default();
    Ok(Arc::new(match &config.audit_file {
        Some(path) => store.with_audit_file(path),
        None => store,
    }))
}

/// Loads the migration catalog and prepares the migrator, when schema migrations are on.
fn open_schemas(config: &Config) -> anyhow::Result<Option<Arc<Schemas>>> {
    let settings = &config.schema;
    if settings.database_url.is_empty() {
        return Ok(None);
    }
    let catalog = Catalog::load(&settings.migrations).with_context(|| {
        format!(
            "cannot load the migration catalog {}",
            settings.migrations.display()
        )
    })?;
    let databases = Templates {
        url: settings.database_url.clone(),
        schema: settings.schema.clone(),
    };
    let options = MigratorOptions {
        max_concurrent: settings.max_concurrent_upgrades,
        migration_timeout: Duration::from_millis(settings.migration_timeout_ms),
        lock_timeout: Duration::from_millis(settings.lock_timeout_ms),
        applied_by: format!("greyrouter/{}", std::process::id()),
    };
    let migrator = Migrator::new(Arc::new(catalog), Arc::new(databases), options);
    Ok(Some(Arc::new(Schemas::new(migrator))))
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

/// Reads a seed file: JSON when it ends in `.json`, TOML otherwise.
pub fn read_seed(path: &Path) -> anyhow::Result<StateDump> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read seed file {}", path.display()))?;
    let dump = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
    } else {
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?
    };
    Ok(dump)
}
