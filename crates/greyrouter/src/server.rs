//! Start-up: opens the store, starts the node, seeds, and serves gRPC until shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use control::Node;
use control::schema::Schemas;
use greyrouter_store::{DurableOptions, MemoryStore, Store};
use redis_store::RedisStore;
use routing_core::StateDump;
use schema_manager::{Catalog, Migrator, MigratorOptions, Templates};
use tokio::net::TcpListener;

use crate::config::Config;

/// A router ready to serve: its node loaded and following the store.
#[derive(Debug)]
pub struct App {
    config: Config,
    node: Arc<Node>,
    /// TLS read and auth ready before the port is bound: a bad certificate or an unreadable
    /// key set stops the start, not the first call.
    security: grpc_server::Security,
    /// The Prometheus renderer behind `/metrics`, when metrics are on.
    metrics: Option<http_api::Exporter>,
}

impl App {
    /// Opens the configured store, starts the node and applies the seed file to an empty store.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        let security =
            crate::security::security(config.tls.as_ref(), config.auth.as_ref(), &config.secrets)
                .await?;
        let store = open_store(&config).await?;
        let schemas = open_schemas(&config)?;
        let node = Node::start(store, schemas, config.node_settings())
            .await
            .context("cannot load routing state from the store")?;
        let app = App {
            config,
            node,
            security,
            metrics: None,
        };
        if let Some(seed) = app.config.seed.clone() {
            app.seed(&seed).await?;
        }
        Ok(app)
    }

    /// Serves `/metrics` from `exporter` on the HTTP listener.
    pub fn with_metrics(mut self, exporter: Option<http_api::Exporter>) -> Self {
        self.metrics = exporter;
        self
    }

    /// Returns the node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Returns the replica.
    pub fn replica(&self) -> &Arc<control::replica::Replica> {
        self.node.replica()
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
        let count = self
            .node
            .seed(&dump, &path.display().to_string())
            .await
            .with_context(|| format!("{}: cannot apply the seed", path.display()))?;
        if count == 0 {
            tracing::info!(seed = %path.display(), "store already holds routing state; seed not applied");
        } else {
            tracing::info!(seed = %path.display(), changes = count, "seed applied");
        }
        Ok(())
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.serve_with_http(listener, None, shutdown).await
    }

    /// Serves gRPC on `listener`, and HTTP (health) on `http` when given, until `shutdown`
    /// completes.
    pub async fn serve_with_http(
        self,
        listener: TcpListener,
        http: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stop.send_replace(true);
        });
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            // A dropped sender means the process is going: stop too.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let http_task = http.map(|http| {
            tokio::spawn(http_api::serve(
                Arc::clone(&self.node),
                self.metrics.clone(),
                self.security.auth.clone(),
                http,
                until_stopped(stopped.clone()),
            ))
        });
        let shutdown = until_stopped(stopped);
        let holder = self.replica_id();
        self.node.drive_rollouts(holder.clone());
        self.node.expire_instances(holder.clone());
        let sources = self
            .config
            .discovery
            .build(&self.config.secrets.0, &holder)
            .map_err(anyhow::Error::msg)?;
        for (sync, plan) in sources {
            tracing::info!(source = %plan.source, registry = %sync.describe(), services = ?plan.services, "discovery source");
            self.node.spawn(nacos_sync::syncer::run_sync(
                Arc::clone(&self.node),
                sync,
                plan,
            ));
        }
        let result = grpc_server::serve(
            Arc::clone(&self.node),
            self.config.grpc_settings(),
            self.security,
            listener,
            shutdown,
        )
        .await;
        if let Some(http_task) = http_task {
            http_task.abort();
        }
        self.node.stop();
        tracing::info!("stopped");
        Ok(result?)
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
    let store = if config.store == "durable" {
        let dir = config.data_dir.clone();
        let options = DurableOptions {
            snapshot_every: config.snapshot_every,
            keep_snapshots: config.keep_snapshots,
        };
        let opened =
            tokio::task::spawn_blocking(move || MemoryStore::open_durable_with(&dir, options))
                .await
                .context("the store did not open")?;
        let (store, opened) = opened.with_context(|| {
            format!(
                "cannot open the durable store in {}",
                config.data_dir.display()
            )
        })?;
        if opened.truncated_bytes > 0 {
            tracing::error!(
                data_dir = %config.data_dir.display(),
                bytes = opened.truncated_bytes,
                "the log ended in a torn record (a crash while writing it); cut off: that change was never acknowledged"
            );
        }
        for warning in &opened.warnings {
            tracing::error!(data_dir = %config.data_dir.display(), "{warning}");
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            revision = store.load().await.map(|s| s.revision()).unwrap_or_default(),
            snapshot = opened.snapshot.unwrap_or_default(),
            replayed = opened.replayed,
            "durable embedded store: every change is on disk before it is acknowledged"
        );
        store
    } else {
        tracing::warn!(
            "embedded store in memory: routing state is lost when the process stops (the default, --store durable, keeps it)"
        );
        MemoryStore::default()
    };
    Ok(Arc::new(match &config.audit_file {
        Some(path) => store.with_audit_file(path),
        None => store,
    }))
}

/// Loads the migration catalog and prepares the migrator, when schema migrations are on.
fn open_schemas(config: &Config) -> anyhow::Result<Option<Schemas>> {
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
        max_idle_sessions: settings.max_idle_connections,
        online_schema_change: settings.online_schema_change.clone(),
        ..MigratorOptions::default()
    };
    let migrator = Migrator::new(Arc::new(catalog), Arc::new(databases), options);
    Ok(Some(Schemas::new(migrator)))
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
