//! The migrator: reads, plans and applies tenants' schema migrations on PostgreSQL, one tenant
//! under one advisory lock at a time.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing_core::Tenant;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::Instrument;

use crate::history::HISTORY_TABLE;
use crate::plan::{self, Direction, Plan};
use crate::tenant_database::scrub;
use crate::{
    AppliedMigration, Catalog, Migration, SchemaError, ServiceCatalog, TenantDatabase,
    TenantDatabases, TenantSchema,
};

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after the migration timeout a step still running is cancelled from the client: the
/// server's `statement_timeout` normally stops a slow statement first, and cleanly; the client
/// deadline catches the rest (many statements, each under the timeout, a stuck server).
const CANCEL_MARGIN: Duration = Duration::from_secs(1);

/// How long a step may take to stop after a timed-out migration was cancelled.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How long recording a failure row may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause between two attempts at a busy tenant's lock.
const LOCK_RETRY_MAX: Duration = Duration::from_millis(250);

/// The `application_name` of the migrator's sessions when the URL does not set one.
const APPLICATION_NAME: &str = "greyrouter-schema-manager";

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
}

impl Default for MigratorOptions {
    fn default() -> Self {
        MigratorOptions {
            max_concurrent: 5,
            migration_timeout: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(30),
            applied_by: "greyrouter".to_owned(),
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
        Migrator {
            catalog,
            databases,
            options,
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
        let client = connect(&db).await?;
        read_schema(&client, &db, service).await
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
        let lock = TenantLock::acquire(&db, &tenant.id, self.options.lock_timeout).await?;
        let result = self
            .migrate_locked(&tenant.id, catalog, &db, target, progress)
            .await;
        lock.release().await;
        result
    }

    async fn migrate_locked(
        &self,
        tenant_id: &str,
        catalog: &ServiceCatalog,
        db: &TenantDatabase,
        target: u32,
        progress: &(dyn Fn(StepProgress) + Send + Sync),
    ) -> Result<TenantSchema, SchemaError> {
        let mut client = connect(db).await?;
        ensure_history_table(&client, db).await?;
        let schema = read_schema(&client, db, &catalog.service).await?;
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
            let started = Instant::now();
            let span = tracing::info_span!(
                "schema.migration",
                tenant = %tenant_id,
                service = %catalog.service,
                version = migration.version,
                name = %migration.name,
                direction = ?step.direction,
                error = tracing::field::Empty,
            );
            let outcome = self
                .run_step(&mut client, db, &catalog.service, migration, step.direction)
                .instrument(span.clone())
                .await;
            if let Err(error) = &outcome {
                span.record("error", error.as_str());
            }
            if let Err(error) = outcome {
                let error = scrub(&error, &db.url);
                let failure = HistoryRow {
                    service: &catalog.service,
                    migration,
                    direction: step.direction,
                    duration: started.elapsed(),
                    applied_by: &self.options.applied_by,
                    error: Some(&error),
                };
                // Best effort: the failure is returned whether or not it could be recorded.
                let _ = tokio::time::timeout(RECORD_TIMEOUT, failure.record(&client, db)).await;
                progress(report(true, Some(error.clone())));
                return Err(SchemaError::MigrationFailed {
                    version: migration.version,
                    name: migration.name.clone(),
                    error,
                });
            }
            progress(report(true, None));
        }
        read_schema(&client, db, &catalog.service).await
    }

    /// Runs one step in its own transaction with its history row, within the migration timeout.
    async fn run_step(
        &self,
        client: &mut Client,
        db: &TenantDatabase,
        service: &str,
        migration: &Migration,
        direction: Direction,
    ) -> Result<(), String> {
        let timeout = self.options.migration_timeout;
        let cancel = client.cancel_token();
        let step = apply(
            client,
            db,
            HistoryRow {
                service,
                migration,
                direction,
                duration: Duration::ZERO,
                applied_by: &self.options.applied_by,
                error: None,
            },
            timeout,
        );
        if timeout.is_zero() {
            return step.await;
        }
        tokio::pin!(step);
        tokio::select! {
            outcome = &mut step => outcome,
            () = tokio::time::sleep(timeout + CANCEL_MARGIN) => {
                // Ask the server to cancel the running statement; the transaction then fails
                // and is rolled back by `apply`.
                let _ = cancel.cancel_query(NoTls).await;
                let timed_out = format!("timed out after {timeout:?} and was cancelled");
                match tokio::time::timeout(CANCEL_GRACE, &mut step).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(format!("{timed_out}: {error}")),
                    Err(_) => Err(timed_out),
                }
            }
        }
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

    /// Sets the checksum of every applied migration of the service to the catalog's and
    /// returns how many history rows changed: the explicit acknowledgement that an applied
    /// migration was edited on purpose (a comment, a typo) and need not run again.
    pub async fn repair(&self, tenant: &Tenant, service: &str) -> Result<u32, SchemaError> {
        let catalog = self.service_catalog(service)?;
        let db = self.databases.database(tenant)?;
        let lock = TenantLock::acquire(&db, &tenant.id, self.options.lock_timeout).await?;
        let result = repair_locked(catalog, &db).await;
        lock.release().await;
        result
    }
}

async fn repair_locked(catalog: &ServiceCatalog, db: &TenantDatabase) -> Result<u32, SchemaError> {
    let mut client = connect(db).await?;
    if !history_table_exists(&client, db).await? {
        return Ok(0);
    }
    let failed = |err| query_error(db, "cannot repair checksums", &err);
    let tx = client.transaction().await.map_err(failed)?;
    let update = format!(
        "UPDATE {} SET checksum = $1 \
         WHERE service = $2 AND version = $3 AND direction = 'up' AND success \
         AND checksum <> $1",
        history_table(db)
    );
    let mut changed = 0;
    for migration in &catalog.migrations {
        changed += tx
            .execute(
                &update,
                &[
                    &migration.checksum,
                    &catalog.service,
                    &version_param(migration),
                ],
            )
            .await
            .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    Ok(u32::try_from(changed).unwrap_or(u32::MAX))
}

/// A row of the history table to write.
struct HistoryRow<'a> {
    service: &'a str,
    migration: &'a Migration,
    direction: Direction,
    duration: Duration,
    applied_by: &'a str,
    error: Option<&'a str>,
}

impl HistoryRow<'_> {
    async fn insert<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        db: &TenantDatabase,
    ) -> Result<u64, tokio_postgres::Error> {
        let insert = format!(
            "INSERT INTO {} (service, version, name, checksum, direction, duration_ms, success, \
             applied_by, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            history_table(db)
        );
        let duration_ms = i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX);
        client
            .execute(
                &insert,
                &[
                    &self.service,
                    &version_param(self.migration),
                    &self.migration.name,
                    &self.migration.checksum,
                    &self.direction.as_str(),
                    &duration_ms,
                    &self.error.is_none(),
                    &self.applied_by,
                    &self.error,
                ],
            )
            .await
    }
}

impl HistoryRow<'_> {
    /// Inserts a failure row on its own (autocommit). Tried twice when cancelled: a cancel
    /// request sent at the deadline may reach the server only once this insert runs.
    async fn record(&self, client: &Client, db: &TenantDatabase) {
        for _ in 0..2 {
            match self.insert(client, db).await {
                Err(err) if err.code() == Some(&SqlState::QUERY_CANCELED) => continue,
                _ => return,
            }
        }
    }
}

/// Applies one step in a transaction together with its history row; rolls back on failure.
async fn apply(
    client: &mut Client,
    db: &TenantDatabase,
    mut row: HistoryRow<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let sql = match row.direction {
        Direction::Up => row.migration.up.as_str(),
        Direction::Down => row
            .migration
            .down
            .as_deref()
            .ok_or_else(|| "the migration has no down SQL".to_owned())?,
    };
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(|err| describe(&err, None))?;
    let statement_timeout_ms = timeout.as_millis().min(i32::MAX as u128);
    let outcome = async {
        tx.batch_execute(&format!(
            "SET LOCAL search_path TO {}; SET LOCAL statement_timeout = {statement_timeout_ms}",
            quote_ident(&db.schema)
        ))
        .await
        .map_err(|err| describe(&err, None))?;
        tx.batch_execute(sql)
            .await
            .map_err(|err| describe(&err, Some(sql)))?;
        row.duration = started.elapsed();
        row.insert(&tx, db)
            .await
            .map_err(|err| format!("cannot record the migration: {}", describe(&err, None)))?;
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => tx.commit().await.map_err(|err| describe(&err, None)),
        Err(error) => {
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// A session-level advisory lock on one tenant's schema, held on its own connection.
struct TenantLock {
    client: Client,
    key: i64,
}

impl TenantLock {
    /// Takes the lock of the tenant's (database, schema), retrying until `wait` has passed.
    async fn acquire(
        db: &TenantDatabase,
        tenant_id: &str,
        wait: Duration,
    ) -> Result<TenantLock, SchemaError> {
        let client = connect(db).await?;
        let failed = |err| query_error(db, "cannot take the migration lock", &err);
        let database: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(failed)?
            .get(0);
        let key = lock_key(&database, &db.schema);
        let started = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(failed)?
                .get(0);
            if locked {
                return Ok(TenantLock { client, key });
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

    /// Releases the lock and closes its session (which would release it too).
    async fn release(self) {
        let _ = tokio::time::timeout(
            RECORD_TIMEOUT,
            self.client
                .execute("SELECT pg_advisory_unlock($1)", &[&self.key]),
        )
        .await;
    }
}

/// Returns the advisory lock key of a (database, schema): the first 8 bytes of a SHA-256, the
/// same in every process and release.
pub(crate) fn lock_key(database: &str, schema: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"greyrouter-schema-manager\0")
        .chain_update(database.as_bytes())
        .chain_update(b"\0")
        .chain_update(schema.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Opens a session to the tenant's database; errors never hold the password.
async fn connect(db: &TenantDatabase) -> Result<Client, SchemaError> {
    let unavailable = |what: &str, message: String| {
        SchemaError::Unavailable(format!(
            "{what} {}: {}",
            db.redacted_url(),
            scrub(&message, &db.url)
        ))
    };
    let mut config: Config = db.url.parse().map_err(|err: tokio_postgres::Error| {
        unavailable("invalid database url", err.to_string())
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|err| unavailable("cannot connect to", describe(&err, None)))?;
    // The connection's own errors show on the client's next request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Returns a query failure outside a migration as [`SchemaError::Unavailable`].
fn query_error(db: &TenantDatabase, what: &str, err: &tokio_postgres::Error) -> SchemaError {
    SchemaError::Unavailable(format!(
        "{what} in schema {} of {}: {}",
        db.schema,
        db.redacted_url(),
        scrub(&describe(err, None), &db.url)
    ))
}

/// Returns what the server said (message, SQLSTATE, detail, hint and the line of the migration
/// SQL at fault), or the client error.
fn describe(err: &tokio_postgres::Error, sql: Option<&str>) -> String {
    let Some(db) = err.as_db_error() else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        return text;
    };
    let mut text = format!("{} (sqlstate {})", db.message(), db.code().code());
    if let (Some(sql), Some(ErrorPosition::Original(position))) = (sql, db.position()) {
        let before = usize::try_from(*position)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        let line = sql.chars().take(before).filter(|c| *c == '\n').count() + 1;
        text.push_str(&format!(" at line {line}"));
    }
    if let Some(detail) = db.detail() {
        text.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    text
}

/// Returns the identifier quoted for SQL.
pub(crate) fn quote_ident(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn history_table(db: &TenantDatabase) -> String {
    format!("{}.{HISTORY_TABLE}", quote_ident(&db.schema))
}

fn version_param(migration: &Migration) -> i32 {
    // The catalog refuses numbers above i32::MAX.
    i32::try_from(migration.version).unwrap_or(i32::MAX)
}

async fn history_table_exists(client: &Client, db: &TenantDatabase) -> Result<bool, SchemaError> {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&history_table(db)])
        .await
        .map(|row| row.get(0))
        .map_err(|err| query_error(db, "cannot read the history", &err))
}

/// Creates the tenant's schema and history table when missing (under the tenant's lock).
async fn ensure_history_table(client: &Client, db: &TenantDatabase) -> Result<(), SchemaError> {
    let failed = |err| query_error(db, "cannot create the history table", &err);
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
             to_regclass($2) IS NOT NULL",
            &[&db.schema, &history_table(db)],
        )
        .await
        .map_err(failed)?;
    let (schema_exists, table_exists): (bool, bool) = (row.get(0), row.get(1));
    if table_exists {
        return Ok(());
    }
    let mut ddl = String::new();
    if !schema_exists {
        ddl.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS {};\n",
            quote_ident(&db.schema)
        ));
    }
    ddl.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
            id bigserial PRIMARY KEY,
            service text NOT NULL,
            version integer NOT NULL,
            name text NOT NULL,
            checksum text NOT NULL,
            direction text NOT NULL CHECK (direction IN ('up', 'down')),
            applied_at timestamptz NOT NULL DEFAULT now(),
            duration_ms bigint NOT NULL,
            success boolean NOT NULL,
            applied_by text NOT NULL,
            error text
        )",
        history_table(db)
    ));
    client.batch_execute(&ddl).await.map_err(failed)
}

/// Reads the service's history rows in the tenant's schema; none when the table is missing.
async fn read_schema(
    client: &Client,
    db: &TenantDatabase,
    service: &str,
) -> Result<TenantSchema, SchemaError> {
    if !history_table_exists(client, db).await? {
        return Ok(TenantSchema::from_history(service, Vec::new()));
    }
    let query = format!(
        "SELECT version, name, checksum, direction, \
         (extract(epoch FROM applied_at) * 1000)::bigint, duration_ms, success, applied_by, error \
         FROM {} WHERE service = $1 ORDER BY id",
        history_table(db)
    );
    let rows = client
        .query(&query, &[&service])
        .await
        .map_err(|err| query_error(db, "cannot read the history", &err))?;
    let history = rows
        .iter()
        .map(|row| AppliedMigration {
            version: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
            name: row.get(1),
            checksum: row.get(2),
            direction: row.get(3),
            applied_at_ms: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            duration_ms: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
            success: row.get(6),
            applied_by: row.get(7),
            error: row.get(8),
        })
        .collect();
    Ok(TenantSchema::from_history(service, history))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        // Pinned: routers of different releases must agree on the key.
        assert_eq!(lock_key("saas", "tenant_acme"), 4_693_275_456_498_060_686);
        assert_ne!(
            lock_key("saas", "tenant_acme"),
            lock_key("saas", "tenant_acm")
        );
        assert_ne!(
            lock_key("saas", "tenant_acme"),
            lock_key("other", "tenant_acme")
        );
        assert_ne!(lock_key("ab", "c"), lock_key("a", "bc"));
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("tenant_a"), "\"tenant_a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn default_options() {
        let options = MigratorOptions::default();
        assert_eq!(options.max_concurrent, 5);
        assert_eq!(options.migration_timeout, Duration::from_secs(60));
    }
}
