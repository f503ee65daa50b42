//! The PostgreSQL engine: each step runs in one transaction together with its history row, so
//! a failed step leaves nothing behind; the lock is a session-level advisory lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls};

use crate::engine::{Engine, IdlePool, Lease, Pooled, Session, StepRun, lock_key};
use crate::history::HISTORY_TABLE;
use crate::tenant_database::scrub;
use crate::{AppliedMigration, Migration, SchemaError, ServiceCatalog, TenantDatabase};

/// How long connecting may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after the migration timeout a step still running is cancelled from the client: the
/// server's `statement_timeout` normally stops a slow statement first, and cleanly; the client
/// deadline catches the rest (many statements, each under the timeout, a stuck server).
const CANCEL_MARGIN: Duration = Duration::from_secs(1);

/// How long a step may take to stop after a timed-out migration was cancelled.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How long recording a failure row, or releasing a lock, may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// The `application_name` of the migrator's sessions when the URL does not set one.
const APPLICATION_NAME: &str = "greyrouter-schema-manager";

/// PostgreSQL, with idle sessions kept for the next tenant of the same database.
pub(crate) struct PostgresEngine {
    idle: Arc<IdlePool<Connection>>,
}

impl PostgresEngine {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        PostgresEngine {
            idle: Arc::new(IdlePool::new(max_idle, idle_timeout)),
        }
    }
}

/// A connection and what is known of it.
struct Connection {
    client: Client,
    /// `current_database()`, asked once: part of the lock key.
    database: Option<String>,
}

#[async_trait]
impl Engine for PostgresEngine {
    async fn session(&self, db: &TenantDatabase) -> Result<Box<dyn Session>, SchemaError> {
        // An idle connection may have been ended by the server (a restart, an administrator)
        // after the pool last saw it: an empty query tells, and a dead one is dropped for the
        // next or a new one.
        let connection = loop {
            match self.idle.take(&db.url) {
                Some(idle) if idle.client.is_closed() => continue,
                Some(idle) => {
                    if tokio::time::timeout(RECORD_TIMEOUT, idle.client.batch_execute(""))
                        .await
                        .is_ok_and(|answered| answered.is_ok())
                    {
                        break idle;
                    }
                }
                None => {
                    break Connection {
                        client: connect(db).await?,
                        database: None,
                    };
                }
            }
        };
        Ok(Box::new(PostgresSession {
            connection: Lease::new(self.idle.clone(), &db.url, connection),
            db: db.clone(),
            lock: None,
            has_history: false,
        }))
    }
}

impl Pooled for Connection {
    fn is_open(&self) -> bool {
        !self.client.is_closed()
    }
}

struct PostgresSession {
    connection: Lease<Connection>,
    db: TenantDatabase,
    /// The advisory lock key held.
    lock: Option<i64>,
    /// Whether the history table is known to exist (it is never dropped by the migrator).
    has_history: bool,
}

impl PostgresSession {
    fn connection(&mut self) -> Result<&mut Connection, SchemaError> {
        self.connection.get()
    }

    fn history_table(&self) -> String {
        format!("{}.{HISTORY_TABLE}", quote_ident(&self.db.schema))
    }

    async fn history_table_exists(&mut self) -> Result<bool, SchemaError> {
        if self.has_history {
            return Ok(true);
        }
        let table = self.history_table();
        let db = self.db.clone();
        let client = &self.connection()?.client;
        let exists = client
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&table, Type::TEXT)],
            )
            .await
            .map(|row| row.get(0))
            .map_err(|err| query_error(&db, "cannot read the history", &err))?;
        self.has_history = exists;
        Ok(exists)
    }
}

#[async_trait]
impl Session for PostgresSession {
    async fn try_lock(&mut self) -> Result<bool, SchemaError> {
        let db = self.db.clone();
        let failed = |err| query_error(&db, "cannot take the migration lock", &err);
        let connection = self.connection()?;
        let database = match &connection.database {
            Some(database) => database.clone(),
            None => {
                let database: String = connection
                    .client
                    .query_typed_one("SELECT current_database()", &[])
                    .await
                    .map_err(failed)?
                    .get(0);
                connection.database = Some(database.clone());
                database
            }
        };
        let key = lock_key(&database, &db.schema);
        let locked: bool = connection
            .client
            .query_typed_one("SELECT pg_try_advisory_lock($1)", &[(&key, Type::INT8)])
            .await
            .map_err(failed)?
            .get(0);
        if locked {
            self.lock = Some(key);
            self.connection.set_held(true);
        }
        Ok(locked)
    }

    async fn unlock(&mut self) {
        let Some(key) = self.lock else { return };
        let Ok(connection) = self.connection.get() else {
            return;
        };
        let released = tokio::time::timeout(
            RECORD_TIMEOUT,
            connection
                .client
                .query_typed_one("SELECT pg_advisory_unlock($1)", &[(&key, Type::INT8)]),
        )
        .await;
        match released {
            Ok(Ok(row)) if row.get::<_, bool>(0) => {
                self.lock = None;
                self.connection.set_held(false);
            }
            // Unknown: closing the session releases it.
            _ => self.connection.discard(),
        }
    }

    async fn history(&mut self, service: &str) -> Result<Vec<AppliedMigration>, SchemaError> {
        if !self.history_table_exists().await? {
            return Ok(Vec::new());
        }
        let query = format!(
            "SELECT version, name, checksum, direction, \
             (extract(epoch FROM applied_at) * 1000)::bigint, duration_ms, success, applied_by, \
             error FROM {} WHERE service = $1 ORDER BY id",
            self.history_table()
        );
        let db = self.db.clone();
        let rows = self
            .connection()?
            .client
            .query_typed(&query, &[(&service, Type::TEXT)])
            .await
            .map_err(|err| query_error(&db, "cannot read the history", &err))?;
        Ok(rows
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
                statements_done: None,
                repaired: false,
            })
            .collect())
    }

    async fn prepare(&mut self) -> Result<(), SchemaError> {
        if self.has_history {
            return Ok(());
        }
        let db = self.db.clone();
        let table = self.history_table();
        let failed = |err| query_error(&db, "cannot create the history table", &err);
        let client = &self.connection()?.client;
        let row = client
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                 to_regclass($2) IS NOT NULL",
                &[(&db.schema, Type::TEXT), (&table, Type::TEXT)],
            )
            .await
            .map_err(failed)?;
        let (schema_exists, table_exists): (bool, bool) = (row.get(0), row.get(1));
        if table_exists {
            self.has_history = true;
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
            "CREATE TABLE IF NOT EXISTS {table} (
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
            )"
        ));
        client.batch_execute(&ddl).await.map_err(failed)?;
        self.has_history = true;
        Ok(())
    }

    async fn run(&mut self, step: StepRun<'_>) -> Result<(), String> {
        let started = Instant::now();
        let db = self.db.clone();
        let timeout = step.timeout;
        let table = self.history_table();
        let connection = self.connection().map_err(|err| err.to_string())?;
        let cancel = connection.client.cancel_token();
        let outcome = {
            let run = apply(&mut connection.client, &db, &table, step, timeout);
            if timeout.is_zero() {
                run.await
            } else {
                tokio::pin!(run);
                tokio::select! {
                    outcome = &mut run => outcome,
                    () = tokio::time::sleep(timeout + CANCEL_MARGIN) => {
                        // Ask the server to cancel the running statement; the transaction then
                        // fails and is rolled back by `apply`.
                        let _ = cancel.cancel_query(NoTls).await;
                        let timed_out = format!("timed out after {timeout:?} and was cancelled");
                        match tokio::time::timeout(CANCEL_GRACE, &mut run).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(format!("{timed_out}: {error}")),
                            Err(_) => Err(timed_out),
                        }
                    }
                }
            }
        };
        let Err(error) = outcome else {
            return Ok(());
        };
        let error = format!("{}; rolled back", scrub(&error, &db.url));
        if error.starts_with("timed out") {
            // A cancel request may still reach the server: do not reuse the session.
            self.connection.discard();
        }
        let row = HistoryRow {
            step,
            duration: started.elapsed(),
            error: Some(&error),
        };
        // Best effort: the failure is returned whether or not it could be recorded.
        let client = &self.connection().map_err(|err| err.to_string())?.client;
        let _ = tokio::time::timeout(RECORD_TIMEOUT, row.record(client, &table)).await;
        Err(error)
    }

    async fn repair(&mut self, catalog: &ServiceCatalog) -> Result<u32, SchemaError> {
        if !self.history_table_exists().await? {
            return Ok(0);
        }
        let db = self.db.clone();
        let failed = |err| query_error(&db, "cannot repair checksums", &err);
        let update = format!(
            "UPDATE {} SET checksum = $1 \
             WHERE service = $2 AND version = $3 AND direction = 'up' AND success \
             AND checksum <> $1",
            self.history_table()
        );
        let client = &mut self.connection()?.client;
        let tx = client.transaction().await.map_err(failed)?;
        let mut changed = 0;
        for migration in &catalog.migrations {
            changed += tx
                .execute_typed(
                    &update,
                    &[
                        (&migration.checksum, Type::TEXT),
                        (&catalog.service, Type::TEXT),
                        (&version_param(migration), Type::INT4),
                    ],
                )
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(u32::try_from(changed).unwrap_or(u32::MAX))
    }
}

/// A row of the history table to write.
struct HistoryRow<'a> {
    step: StepRun<'a>,
    duration: Duration,
    error: Option<&'a str>,
}

impl HistoryRow<'_> {
    async fn insert<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        table: &str,
    ) -> Result<u64, tokio_postgres::Error> {
        let insert = format!(
            "INSERT INTO {table} (service, version, name, checksum, direction, duration_ms, \
             success, applied_by, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let duration_ms = i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX);
        client
            .execute_typed(
                &insert,
                &[
                    (&self.step.service, Type::TEXT),
                    (&version_param(self.step.migration), Type::INT4),
                    (&self.step.migration.name, Type::TEXT),
                    (&self.step.migration.checksum, Type::TEXT),
                    (&self.step.direction.as_str(), Type::TEXT),
                    (&duration_ms, Type::INT8),
                    (&self.error.is_none(), Type::BOOL),
                    (&self.step.applied_by, Type::TEXT),
                    (&self.error, Type::TEXT),
                ],
            )
            .await
    }

    /// Inserts a failure row on its own (autocommit). Tried twice when cancelled: a cancel
    /// request sent at the deadline may reach the server only once this insert runs.
    async fn record(&self, client: &Client, table: &str) {
        for _ in 0..2 {
            match self.insert(client, table).await {
                Err(err) if err.code() == Some(&SqlState::QUERY_CANCELED) => continue,
                _ => return,
            }
        }
    }
}

/// Applies one step in a transaction together with its history row, in one round trip (the
/// row's values are literals, its duration measured by the server); rolls back on failure.
async fn apply(
    client: &mut Client,
    db: &TenantDatabase,
    table: &str,
    step: StepRun<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let sql = step.sql()?;
    let statement_timeout_ms = timeout.as_millis().min(i32::MAX as u128);
    // The prefix holds no newline, so the server's error positions give the migration's lines.
    let batch = format!(
        "BEGIN; SET LOCAL search_path TO {}; SET LOCAL statement_timeout = {statement_timeout_ms}; \
         {sql}\n;INSERT INTO {table} (service, version, name, checksum, direction, duration_ms, \
         success, applied_by, error) VALUES ({}, {}, {}, {}, {}, \
         (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint, true, {}, NULL); COMMIT",
        quote_ident(&db.schema),
        quote_literal(step.service),
        version_param(step.migration),
        quote_literal(&step.migration.name),
        quote_literal(&step.migration.checksum),
        quote_literal(step.direction.as_str()),
        quote_literal(step.applied_by),
    );
    match client.batch_execute(&batch).await {
        Ok(()) => Ok(()),
        Err(err) => {
            let error = describe(&err, Some(&batch));
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

/// Returns a string literal for SQL, whatever `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
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

fn version_param(migration: &Migration) -> i32 {
    // The catalog refuses numbers above i32::MAX.
    i32::try_from(migration.version).unwrap_or(i32::MAX)
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
    fn quotes_literals_whatever_the_server_does_with_backslashes() {
        assert_eq!(quote_literal("plain"), "E'plain'");
        assert_eq!(quote_literal("it's"), "E'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("tenant_a"), "\"tenant_a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
