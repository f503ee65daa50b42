//! Per-tenant schema migrations in the server: the gate on version switches, and upgrades that
//! run in the background with their progress kept for `GetSchemaUpgrade` and
//! `WatchSchemaUpgrade`.
//!
//! Upgrade progress is kept by the replica that runs the upgrade (ask that replica); the
//! migrations themselves are recorded in each tenant database's `grey_schema_history`, and a
//! PostgreSQL advisory lock per tenant database keeps two replicas from migrating it at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use routing_core::{RoutingState, Tenant};
use schema_manager::{Direction, Migrator, SchemaError, StepProgress};
use tokio::sync::watch;

/// Why a tenant cannot be routed to a version yet.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The version needs migrations the tenant's database lacks.
    #[error(
        "tenant '{tenant_id}' needs schema migration {missing} of service '{service}' for version '{version}' (its schema is at {current}); upgrade its schema first, or ask to migrate"
    )]
    Unapplied {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
        /// The version asked for.
        version: String,
        /// The first missing migration.
        missing: String,
        /// The tenant's schema version.
        current: u32,
    },
    /// A contract (destructive) migration newer than what the version needs is applied.
    #[error(
        "cannot route tenant '{tenant_id}' to version '{version}' of service '{service}': it needs schema {required}, but contract migration {migration} is applied and cannot be undone"
    )]
    Contract {
        /// The tenant.
        tenant_id: String,
        /// The service.
        service: String,
        /// The version asked for.
        version: String,
        /// The schema that version needs.
        required: u32,
        /// The contract migration in the way.
        migration: String,
    },
    /// Reading or migrating the schema failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Schema migrations as the server uses them.
pub struct Schemas {
    migrator: Migrator,
    upgrades: Mutex<HashMap<String, Arc<Upgrade>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").finish_non_exhaustive()
    }
}

/// The progress of one tenant in a schema upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantUpgrade {
    /// The tenant.
    pub tenant_id: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// The schema the tenant started from.
    pub from: u32,
    /// The schema the tenant is at.
    pub current: u32,
    /// The step being applied, or the one that failed.
    pub step: String,
    /// Why it failed.
    pub error: String,
}

/// The progress of a schema upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchemaUpgrade {
    /// Its id, to ask for it again.
    pub upgrade_id: String,
    /// The service whose schema is upgraded.
    pub service: String,
    /// The schema every tenant is taken to.
    pub target_schema: u32,
    /// `running` or `finished`.
    pub state: String,
    /// Tenants done.
    pub done: u32,
    /// Tenants failed.
    pub failed: u32,
    /// Tenants in the upgrade.
    pub total: u32,
    /// Each tenant's progress.
    pub tenants: Vec<TenantUpgrade>,
}

impl SchemaUpgrade {
    /// Whether every tenant has finished (done or failed).
    pub fn finished(&self) -> bool {
        self.state == "finished"
    }
}

/// One upgrade's progress.
#[derive(Debug)]
pub struct Upgrade {
    state: Mutex<SchemaUpgrade>,
    changed: watch::Sender<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Names a migration like its files: `0002_add_preferences`.
pub fn step_name(version: u32, name: &str) -> String {
    format!("{version:04}_{name}")
}

/// Returns `up` or `down`.
pub fn direction(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}

impl Upgrade {
    /// Returns the current progress.
    pub fn snapshot(&self) -> SchemaUpgrade {
        lock(&self.state).clone()
    }

    /// Subscribes to progress changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut SchemaUpgrade)) {
        change(&mut lock(&self.state));
        self.changed.send_modify(|n| *n += 1);
    }

    fn step(&self, progress: &StepProgress) {
        self.update(|upgrade| {
            if let Some(tenant) = upgrade
                .tenants
                .iter_mut()
                .find(|t| t.tenant_id == progress.tenant_id)
            {
                tenant.state = "running".to_owned();
                tenant.step = format!(
                    "{} {}",
                    direction(progress.direction),
                    step_name(progress.version, &progress.name)
                );
                // After an up step the schema is at that migration; after a down step it is at
                // the previous one in the catalog, which the final result reports.
                if progress.done && progress.error.is_none() && progress.direction == Direction::Up
                {
                    tenant.current = progress.version;
                }
                if let Some(error) = &progress.error {
                    tenant.error = error.clone();
                }
            }
        });
    }
}

impl Schemas {
    /// Returns the server's schema migrations over a migrator.
    pub fn new(migrator: Migrator) -> Self {
        Schemas {
            migrator,
            upgrades: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Returns the migrator.
    pub fn migrator(&self) -> &Migrator {
        &self.migrator
    }

    /// Checks that `tenant` may be routed to `version` of `service`: the schema that version
    /// requires is applied (or, with `migrate`, applies it first), and no contract migration
    /// applied since forbids going back to it.
    pub async fn gate(
        &self,
        tenant: &Tenant,
        service: &str,
        version: &str,
        migrate: bool,
    ) -> Result<(), GateError> {
        let Some(catalog) = self.migrator.catalog().service(service) else {
            return Ok(());
        };
        let Some(required) = catalog.required_for(version) else {
            return Ok(());
        };
        let status = self.migrator.status(tenant, service).await?;
        if let Some(contract) = catalog.contract_floor(status.current)
            && required < contract.version
        {
            return Err(GateError::Contract {
                tenant_id: tenant.id.clone(),
                service: service.to_owned(),
                version: version.to_owned(),
                required,
                migration: step_name(contract.version, &contract.name),
            });
        }
        if status.current >= required {
            return Ok(());
        }
        if !migrate {
            let missing = catalog
                .migrations
                .iter()
                .find(|m| m.version > status.current && m.version <= required)
                .map_or_else(|| required.to_string(), |m| step_name(m.version, &m.name));
            return Err(GateError::Unapplied {
                tenant_id: tenant.id.clone(),
                service: service.to_owned(),
                version: version.to_owned(),
                missing,
                current: status.current,
            });
        }
        self.migrator
            .migrate(tenant, service, required, &|_| {})
            .await?;
        Ok(())
    }

    /// Brings every tenant a change moves within `service` to the schema its new version needs
    /// (never down), `max_concurrent_upgrades` tenants at a time. Returns one line per tenant that
    /// cannot move, empty when all can.
    pub async fn prepare_moves(
        self: &Arc<Self>,
        before: &RoutingState,
        after: &RoutingState,
        service: &str,
    ) -> Vec<String> {
        let (Some(old), Some(new)) = (before.service(service), after.service(service)) else {
            return Vec::new();
        };
        if self.migrator.catalog().service(service).is_none() {
            return Vec::new();
        }
        let moving: Vec<(Tenant, String)> = after
            .tenants_after(None)
            .filter(|t| t.tenant.active)
            .filter_map(|t| {
                let to = new.resolve(t).version;
                let from = before.tenant(&t.tenant.id).map(|b| old.resolve(b).version);
                (from.as_deref() != Some(to.as_str())).then(|| (t.tenant.clone(), to))
            })
            .collect();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.migrator.options().max_concurrent.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for (tenant, version) in moving {
            let schemas = Arc::clone(self);
            let permits = Arc::clone(&permits);
            let service = service.to_owned();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                schemas
                    .gate(&tenant, &service, &version, true)
                    .await
                    .map_err(|err| format!("{}: {err}", tenant.id))
            });
        }
        let mut refused = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => refused.push(reason),
                Err(err) => refused.push(format!("a schema upgrade stopped: {err}")),
            }
        }
        refused.sort();
        refused
    }

    /// Starts upgrading `tenants` to schema `target` in the background; returns the upgrade id.
    pub fn start(&self, tenants: Vec<Tenant>, service: &str, target: u32) -> String {
        let id = format!(
            "su-{}-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed),
            crate::audit::now_ms()
        );
        let upgrade = Arc::new(Upgrade {
            state: Mutex::new(SchemaUpgrade {
                upgrade_id: id.clone(),
                service: service.to_owned(),
                target_schema: target,
                state: "running".to_owned(),
                done: 0,
                failed: 0,
                total: tenants.len() as u32,
                tenants: tenants
                    .iter()
                    .map(|t| TenantUpgrade {
                        tenant_id: t.id.clone(),
                        state: "pending".to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            changed: watch::Sender::new(0),
        });
        lock(&self.upgrades).insert(id.clone(), Arc::clone(&upgrade));
        let migrator = self.migrator.clone();
        let service = service.to_owned();
        // The upgrade outlives the call that started it; its span stays in the caller's trace.
        let span = tracing::info_span!(
            "schema.upgrade",
            upgrade = %id,
            service = %service,
            target_schema = target,
            tenants = upgrade.snapshot().total,
        );
        let task = async move {
            let reporter = Arc::clone(&upgrade);
            let progress: Arc<dyn Fn(StepProgress) + Send + Sync> =
                Arc::new(move |step: StepProgress| reporter.step(&step));
            let results = migrator
                .migrate_many(tenants, &service, target, progress)
                .await;
            upgrade.update(|state| {
                for (tenant_id, result) in &results {
                    let Some(tenant) = state.tenants.iter_mut().find(|t| &t.tenant_id == tenant_id)
                    else {
                        continue;
                    };
                    match result {
                        Ok(schema) => {
                            crate::telemetry::schema_tenant_upgraded(&service, true);
                            tenant.state = "done".to_owned();
                            tenant.current = schema.current;
                            tenant.step.clear();
                        }
                        Err(err) => {
                            crate::telemetry::schema_tenant_upgraded(&service, false);
                            tenant.state = "failed".to_owned();
                            tenant.error = err.to_string();
                        }
                    }
                }
                state.done = state.tenants.iter().filter(|t| t.state == "done").count() as u32;
                state.failed = state.tenants.iter().filter(|t| t.state == "failed").count() as u32;
                state.state = "finished".to_owned();
            });
            tracing::info!(%service, target, "schema upgrade finished");
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        id
    }

    /// Returns an upgrade.
    pub fn upgrade(&self, id: &str) -> Option<Arc<Upgrade>> {
        lock(&self.upgrades).get(id).cloned()
    }

    /// Returns the upgrades running, and the tenants failed in the upgrades kept.
    pub fn counts(&self) -> (usize, usize) {
        let upgrades = lock(&self.upgrades);
        let mut running = 0;
        let mut failed = 0;
        for upgrade in upgrades.values() {
            let state = lock(&upgrade.state);
            if !state.finished() {
                running += 1;
            }
            failed += state.failed as usize;
        }
        (running, failed)
    }
}
