//! The migrator: reads, plans and applies tenants' schema migrations, one tenant under its
//! lock at a time, on the engine its database URL names.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing_core::Tenant;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::engine::{Engine, EngineKind, Session, StepRun};
use crate::mysql::MySqlEngine;
use crate::plan::{self, Direction, Plan};
use crate::postgres::PostgresEngine;
use crate::tenant_database::scrub;
use crate::{Catalog, SchemaError, ServiceCatalog, TenantDatabase, TenantDatabases, TenantSchema};

/// The longest pause between two attempts at a busy tenant's lock.
const LOCK_RETRY_MAX: Duration = Duration::from_millis(250);

/// How the migrator runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratorOptions {
    /// Most tenants [`Migrator::migrate_many`] migrates at once (at least 1).
    pub max_concurrent: usize,
    /// Longest a migration may run: its `statement_timeout`, and a deadline on the whole step
    /// (a second later), after which it is cancelled; zero disables both.
    pub migration_timeout: Duration,
    /// How long to wait for another migrator's lock on the tenant before answering
    /// [`SchemaError::Busy`]; zero tries once.
    pub lock_timeout: Duration,
    /// Recorded in the history table's `applied_by` column.
    pub applied_by: String,
    /// Most idle database sessions kept for the next tenant, over all databases (0 closes
    /// each session after its tenant).
    pub max_idle_sessions: usize,
    /// How long an idle session is kept.
    pub idle_timeout: Duration,
    /// The command that runs the `ALTER TABLE` statements of a migration marked
    /// [`ONLINE_MARKER`](crate::catalog::ONLINE_MARKER) on MySQL, e.g.
    /// `pt-online-schema-change --alter {alter} h={host},P={port},u={user},D={database},t={table}
    /// --execute`; empty: such a migration fails at its first `ALTER TABLE`.
    pub online_schema_change: String,
}

impl Default for MigratorOptions {
    fn default() -> Self {
        MigratorOptions {
            max_concurrent: 5,
            migration_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(30),
            applied_by: "greyrouter".to_owned(),
            max_idle_sessions: 16,
            idle_timeout: Duration::from_secs(60),
            online_schema_change: String::new(),
        }
    }
}

/// Progress of one step of one tenant, reported before (`done == false`) and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepProgress {
    /// The tenant.
    pub tenant_id: String,
    /// The migration's number.
    pub version: u32,
    /// The migration's name.
    pub name: String,
    /// Up or down.
    pub direction: Direction,
    /// Whether the step finished (committed, or failed and rolled back).
    pub done: bool,
    /// Why it failed, once done.
    pub error: Option<String>,
}

/// Reads, plans and applies migrations of tenants' schemas.
///
/// Cheap to clone: the catalog and the tenant databases are shared.
#[derive(Clone)]
pub struct Migrator {
    catalog: Arc<Catalog>,
    databases: Arc<dyn TenantDatabases>,
    options: MigratorOptions,
    postgres: Arc<PostgresEngine>,
    mysql: Arc<MySqlEngine>,
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field(
                "services",
                &self
                    .catalog
                    .services()
                    .map(|s| &s.service)
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Migrator {
    /// Returns a migrator of the catalog's services over these tenant databases.
    pub fn new(
        catalog: Arc<Catalog>,
        databases: Arc<dyn TenantDatabases>,
        options: MigratorOptions,
    ) -> Self {
        let postgres = Arc::new(PostgresEngine::new(
            options.max_idle_sessions,
            options.idle_timeout,
        ));
        let mysql = Arc::new(MySqlEngine::new(
            options.max_idle_sessions,
            options.idle_timeout,
            &options.online_schema_change,
        ));
        Migrator {
            catalog,
            databases,
            options,
            postgres,
            mysql,
        }
    }

    /// Returns the engine of the tenant's database.
    fn engine(&self, db: &TenantDatabase) -> &dyn Engine {
        match EngineKind::from_url(&db.url) {
            EngineKind::Postgres => &*self.postgres,
            EngineKind::MySql => &*self.mysql,
        }
    }

    /// Opens a session on the tenant's database and takes the tenant's lock, retrying until
    /// [`MigratorOptions::lock_timeout`] has passed.
    async fn locked_session(
        &self,
        db: &TenantDatabase,
        tenant_id: &str,
    ) -> Result<Box<dyn Session>, SchemaError> {
        let mut session = self.engine(db).session(db).await?;
        let wait = self.options.lock_timeout;
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if session.try_lock().await? {
                return Ok(session);
            }
            let waited = started.elapsed();
            if waited >= wait {
                return Err(SchemaError::Busy {
                    tenant_id: tenant_id.to_owned(),
                });
            }
            tokio::time::sleep(pause.min(wait - waited)).await;
            pause = (pause * 2).min(LOCK_RETRY_MAX);
        }
    }

    /// Returns the catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Returns the options.
    pub fn options(&self) -> &MigratorOptions {
        &self.options
    }

    fn service_catalog(&self, service: &str) -> Result<&ServiceCatalog, SchemaError> {
        self.catalog
            .service(service)
            .ok_or_else(|| SchemaError::NoCatalog {
                service: service.to_owned(),
            })
    }

    /// Returns the service's catalog and the target, checked before any connection.
    fn check_target(&self, service: &str, target: u32) -> Result<&ServiceCatalog, SchemaError> {
        let catalog = self.service_catalog(service)?;
        if target != 0 && catalog.migration(target).is_none() {
            return Err(SchemaError::UnknownSchemaVersion {
                service: service.to_owned(),
                version: target,
            });
        }
        Ok(catalog)
    }

    /// Returns the service's schema state for the tenant: current version and every attempt.
    ///
    /// Reads only: a tenant whose schema or history table does not exist yet is at version 0
    /// with no history.
    pub async fn status(
        &self,
        tenant: &Tenant,
        service: &str,
    ) -> Result<TenantSchema, SchemaError> {
        self.service_catalog(service)?;
        let db = self.databases.database(tenant)?;
        let mut session = self.engine(&db).session(&db).await?;
        let history = session.history(service).await?;
        Ok(TenantSchema::from_history(service, history))
    }

    /// Returns what migrating the tenant to `target` would do, without changing anything (a
    /// dry run), or why it is refused.
    pub async fn plan(
        &self,
        tenant: &Tenant,
        service: &str,
        target: u32,
    ) -> Result<Plan, SchemaError> {
        let catalog = self.check_target(service, target)?;
        let schema = self.status(tenant, service).await?;
        let steps = plan::steps(catalog, &schema, target)?;
        Ok(Plan {
            tenant_id: tenant.id.clone(),
            service: service.to_owned(),
            from: schema.current,
            to: target,
            steps,
        })
    }

    /// Migrates one tenant's schema of the service to `target`, up or down, and returns its new
    /// state.
    ///
    /// Holds the tenant's advisory lock throughout (see the crate docs); plans under it, so a
    /// migrator that waited for another finds nothing left to do. Each step runs in its own
    /// transaction with its history row; the first failure is rolled back, recorded and
    /// returned as [`SchemaError::MigrationFailed`], and later steps do not run.
    #[tracing::instrument(
        name = "schema.tenant",
        skip_all,
        fields(tenant = %tenant.id, service = %service, target_schema = target),
        err(Display)
    )]
    pub async fn migrate(
        &self,
        tenant: &Tenant,
        service: &str,
        target: u32,
        progress: &(dyn Fn(StepProgress) + Send + Sync),
    ) -> Result<TenantSchema, SchemaError> {
        let catalog = self.check_target(service, target)?;
        let db = self.databases.database(tenant)?;
        let mut session = self.locked_session(&db, &tenant.id).await?;
        let result = self
            .migrate_locked(&mut *session, &tenant.id, catalog, &db, target, progress)
            .await;
        session.unlock().await;
        result
    }

    async fn migrate_locked(
        &self,
        session: &mut dyn Session,
        tenant_id: &str,
        catalog: &ServiceCatalog,
        db: &TenantDatabase,
        target: u32,
        progress: &(dyn Fn(StepProgress) + Send + Sync),
    ) -> Result<TenantSchema, SchemaError> {
        session.prepare().await?;
        let schema =
            TenantSchema::from_history(&catalog.service, session.history(&catalog.service).await?);
        for step in plan::steps(catalog, &schema, target)? {
            let migration = catalog.migration(step.version).ok_or_else(|| {
                SchemaError::UnknownSchemaVersion {
                    service: catalog.service.clone(),
                    version: step.version,
                }
            })?;
            let report = |done, error| StepProgress {
                tenant_id: tenant_id.to_owned(),
                version: migration.version,
                name: migration.name.clone(),
                direction: step.direction,
                done,
                error,
            };
            progress(report(false, None));
            let span = tracing::info_span!(
                "schema.migration",
                tenant = %tenant_id,
                service = %catalog.service,
                version = migration.version,
                name = %migration.name,
                direction = ?step.direction,
                error = tracing::field::Empty,
            );
            let run = StepRun {
                service: &catalog.service,
                migration,
                direction: step.direction,
                skip_statements: step.skip_statements,
                applied_by: &self.options.applied_by,
                timeout: self.options.migration_timeout,
            };
            let outcome = session.run(run).instrument(span.clone()).await;
            if let Err(error) = outcome {
                let error = scrub(&error, &db.url);
                span.record("error", error.as_str());
                progress(report(true, Some(error.clone())));
                return Err(SchemaError::MigrationFailed {
                    version: migration.version,
                    name: migration.name.clone(),
                    error,
                });
            }
            progress(report(true, None));
        }
        let history = session.history(&catalog.service).await?;
        Ok(TenantSchema::from_history(&catalog.service, history))
    }

    /// Migrates many tenants' schemas of the service to `target`, at most
    /// [`MigratorOptions::max_concurrent`] at once, and returns each tenant's outcome in the
    /// order given. One tenant's failure never stops the others.
    pub async fn migrate_many(
        &self,
        tenants: Vec<Tenant>,
        service: &str,
        target: u32,
        progress: Arc<dyn Fn(StepProgress) + Send + Sync>,
    ) -> Vec<(String, Result<TenantSchema, SchemaError>)> {
        let semaphore = Arc::new(Semaphore::new(self.options.max_concurrent.max(1)));
        let mut outcomes: Vec<Option<(String, Result<TenantSchema, SchemaError>)>> =
            tenants.iter().map(|_| None).collect();
        let mut tasks = JoinSet::new();
        let mut task_tenants = HashMap::new();
        for (index, tenant) in tenants.into_iter().enumerate() {
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                unreachable!("the semaphore is never closed");
            };
            let migrator = self.clone();
            let service = service.to_owned();
            let progress = progress.clone();
            let tenant_id = tenant.id.clone();
            // Each tenant's span stays under the caller's (the upgrade's).
            let handle = tasks.spawn(
                async move {
                    let outcome = migrator
                        .migrate(&tenant, &service, target, &*progress)
                        .await;
                    drop(permit);
                    (index, tenant.id, outcome)
                }
                .instrument(tracing::Span::current()),
            );
            task_tenants.insert(handle.id(), (index, tenant_id));
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            match joined {
                Ok((_, (index, tenant_id, outcome))) => {
                    outcomes[index] = Some((tenant_id, outcome))
                }
                Err(err) => {
                    if let Some((index, tenant_id)) = task_tenants.remove(&err.id()) {
                        let error = SchemaError::Unavailable(format!(
                            "the migration of tenant {tenant_id} stopped: {err}"
                        ));
                        outcomes[index] = Some((tenant_id, Err(error)));
                    }
                }
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// Sets the checksum of every applied migration of the service to the catalog's, marks a
    /// half-applied last attempt (MySQL) repaired, and returns how many history rows changed:
    /// the explicit acknowledgement that an applied migration was edited on purpose (a
    /// comment, a typo) and need not run again, or that the database was fixed after a
    /// migration stopped half-way and the next run may resume it.
    pub async fn repair(&self, tenant: &Tenant, service: &str) -> Result<u32, SchemaError> {
        let catalog = self.service_catalog(service)?;
        let db = self.databases.database(tenant)?;
        let mut session = self.locked_session(&db, &tenant.id).await?;
        let result = session.repair(catalog).await;
        session.unlock().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options() {
        let options = MigratorOptions::default();
        assert_eq!(options.max_concurrent, 5);
        assert_eq!(options.migration_timeout, Duration::from_secs(60));
    }
}
