//! The MySQL / MariaDB engine. DDL commits on its own there (no transaction can undo it), so a
//! step runs statement by statement and its history row records how many are applied after
//! each one: a failure or a crash half-way leaves a row that says where, and nothing else runs
//! on that schema until it is repaired ([`crate::TenantSchema::half_applied`]). The lock is a
//! named lock (`GET_LOCK`), released by the server when the session ends.
//!
//! A tenant's schema is a MySQL database (`CREATE DATABASE` is `CREATE SCHEMA` there): the
//! schema template names it, the URL's own database (if any) only has to exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Row};

use crate::engine::{Engine, IdlePool, Lease, Pooled, Session, StepRun, lock_key};
use crate::history::HISTORY_TABLE;
use crate::statements;
use crate::tenant_database::scrub;
use crate::{AppliedMigration, SchemaError, ServiceCatalog, TenantDatabase};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a step may take to stop after its running statement was killed at the deadline.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How long recording a failure, or releasing a lock, may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// MySQL and MariaDB, with idle sessions kept for the next tenant of the same server.
pub(crate) struct MySqlEngine {
    idle: Arc<IdlePool<Conn>>,
    /// The online schema change command template, if configured.
    online_tool: Option<Arc<str>>,
}

impl MySqlEngine {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration, online_tool: &str) -> Self {
        MySqlEngine {
            idle: Arc::new(IdlePool::new(max_idle, idle_timeout)),
            online_tool: (!online_tool.trim().is_empty()).then(|| Arc::from(online_tool)),
        }
    }
}

#[async_trait]
impl Engine for MySqlEngine {
    async fn session(&self, db: &TenantDatabase) -> Result<Box<dyn Session>, SchemaError> {
        let opts = options(db)?;
        // An idle connection may have been closed by the server (a restart, `wait_timeout`):
        // a ping tells, and a dead one is dropped for the next or a new one.
        let conn = loop {
            match self.idle.take(&db.url) {
                Some(mut idle) => {
                    if tokio::time::timeout(RECORD_TIMEOUT, idle.ping())
                        .await
                        .is_ok_and(|pinged| pinged.is_ok())
                    {
                        break idle;
                    }
                }
                None => break connect(db, &opts).await?,
            }
        };
        Ok(Box::new(MySqlSession {
            conn: Lease::new(self.idle.clone(), &db.url, conn),
            db: db.clone(),
            opts,
            online_tool: self.online_tool.clone(),
            lock: None,
            has_history: false,
        }))
    }
}

impl Pooled for Conn {}

struct MySqlSession {
    conn: Lease<Conn>,
    db: TenantDatabase,
    opts: Opts,
    online_tool: Option<Arc<str>>,
    /// The name of the lock held.
    lock: Option<String>,
    /// Whether the history table is known to exist (it is never dropped by the migrator).
    has_history: bool,
}

impl MySqlSession {
    fn conn(&mut self) -> Result<&mut Conn, SchemaError> {
        self.conn.get()
    }

    fn history_table(&self) -> String {
        format!("{}.{HISTORY_TABLE}", quote_ident(&self.db.schema))
    }

    fn query_error(&self, what: &str, err: &mysql_async::Error) -> SchemaError {
        SchemaError::Unavailable(format!(
            "{what} in schema {} of {}: {}",
            self.db.schema,
            self.db.redacted_url(),
            scrub(&describe(err), &self.db.url)
        ))
    }

    async fn history_table_exists(&mut self) -> Result<bool, SchemaError> {
        if self.has_history {
            return Ok(true);
        }
        let schema = self.db.schema.clone();
        let found: Result<Option<i64>, _> = self
            .conn()?
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = ? AND table_name = ?",
                (schema, HISTORY_TABLE),
            )
            .await;
        match found {
            Ok(count) => {
                self.has_history = count.unwrap_or(0) > 0;
                Ok(self.has_history)
            }
            Err(err) => Err(self.query_error("cannot read the history", &err)),
        }
    }

    /// Runs the step's statements after its history row is written, updating the row after
    /// each one.
    ///
    /// A statement that returns after `killed` was set does not count as applied (MariaDB ends
    /// some killed statements without an error).
    async fn apply(
        &mut self,
        step: StepRun<'_>,
        row_id: &mut Option<u64>,
        killed: &AtomicBool,
    ) -> Result<(), String> {
        let sql = step.sql()?;
        let started = Instant::now();
        let table = self.history_table();
        let use_schema = format!("USE {}", quote_ident(&self.db.schema));
        let online = crate::catalog::marked_online(sql);
        let (opts, schema, tool) = (
            self.opts.clone(),
            self.db.schema.clone(),
            self.online_tool.clone(),
        );
        let conn = self.conn().map_err(|err| err.to_string())?;
        conn.query_drop(use_schema)
            .await
            .map_err(|err| describe(&err))?;
        conn.exec_drop(
            format!(
                "INSERT INTO {table} (service, version, name, checksum, direction, duration_ms, \
                 success, applied_by, statements_done) VALUES (?, ?, ?, ?, ?, 0, FALSE, ?, ?)"
            ),
            (
                step.service,
                step.migration.version,
                &step.migration.name,
                &step.migration.checksum,
                step.direction.as_str(),
                step.applied_by,
                step.skip_statements,
            ),
        )
        .await
        .map_err(|err| format!("cannot record the migration: {}", describe(&err)))?;
        let id = conn
            .last_insert_id()
            .ok_or_else(|| "cannot record the migration: no row id".to_owned())?;
        *row_id = Some(id);
        let statements = statements::split(sql);
        let skip = usize::try_from(step.skip_statements).unwrap_or(usize::MAX);
        if skip > statements.len() {
            return Err(format!(
                "the history says {skip} statements are applied but the migration has {}",
                statements.len()
            ));
        }
        let last = statements.len();
        for (index, statement) in statements.iter().enumerate().skip(skip) {
            let at = |error: String| {
                let applied = if index == 0 {
                    String::new()
                } else {
                    format!("; statements 1-{index} stay applied")
                };
                format!(
                    "{error} in statement {} (line {}){applied}",
                    index + 1,
                    statement.line
                )
            };
            match statements::alter_table(&statement.sql).filter(|_| online) {
                Some(alter) => {
                    let tool = tool.as_deref().ok_or_else(|| {
                        at("the migration is marked for an online schema change but \
                            [schema] online_schema_change names no tool"
                            .to_owned())
                    })?;
                    run_online_tool(tool, &opts, &schema, &alter)
                        .await
                        .map_err(at)?;
                }
                None => conn
                    .query_drop(statement.sql.as_str())
                    .await
                    .map_err(|err| at(describe(&err)))?,
            }
            if killed.load(Ordering::SeqCst) {
                return Err(format!(
                    "statement {} (line {}) was killed",
                    index + 1,
                    statement.line
                ));
            }
            let done = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let progress = if index + 1 == last {
                conn.exec_drop(
                    format!(
                        "UPDATE {table} SET statements_done = ?, success = TRUE, duration_ms = ? \
                         WHERE id = ?"
                    ),
                    (done, millis(started.elapsed()), id),
                )
                .await
            } else {
                conn.exec_drop(
                    format!("UPDATE {table} SET statements_done = ? WHERE id = ?"),
                    (done, id),
                )
                .await
            };
            progress.map_err(|err| {
                format!(
                    "statement {} was applied but cannot be recorded: {}",
                    index + 1,
                    describe(&err)
                )
            })?;
        }
        if skip == last {
            conn.exec_drop(
                format!("UPDATE {table} SET success = TRUE, duration_ms = ? WHERE id = ?"),
                (millis(started.elapsed()), id),
            )
            .await
            .map_err(|err| format!("cannot record the migration: {}", describe(&err)))?;
        }
        Ok(())
    }
}

/// The most of a tool's output an error keeps (its end).
const TOOL_OUTPUT_BYTES: usize = 2000;

/// Runs an `ALTER TABLE` through the online schema change tool: the template split at
/// whitespace, `{alter}`, `{table}`, `{database}`, `{host}`, `{port}`, `{user}` and `{password}`
/// replaced in each word (no shell: `{alter}` stays one argument); the password is also in
/// `MYSQL_PWD`, which keeps it out of the process list. The tool is killed if the step is
/// dropped (at its timeout).
async fn run_online_tool(
    template: &str,
    opts: &Opts,
    schema: &str,
    alter: &statements::AlterTable,
) -> Result<(), String> {
    let database = alter.database.as_deref().unwrap_or(schema);
    let port = opts.tcp_port().to_string();
    let words: Vec<String> = template
        .split_whitespace()
        .map(|word| {
            word.replace("{alter}", &alter.alteration)
                .replace("{table}", &alter.table)
                .replace("{database}", database)
                .replace("{host}", opts.ip_or_hostname())
                .replace("{port}", &port)
                .replace("{user}", opts.user().unwrap_or(""))
                .replace("{password}", opts.pass().unwrap_or(""))
        })
        .collect();
    let (program, args) = words
        .split_first()
        .ok_or_else(|| "the online schema change command is empty".to_owned())?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(password) = opts.pass() {
        command.env("MYSQL_PWD", password);
    }
    let output = command
        .output()
        .await
        .map_err(|err| format!("cannot run {program}: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if said.is_empty() {
        said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    if said.len() > TOOL_OUTPUT_BYTES {
        let mut start = said.len() - TOOL_OUTPUT_BYTES;
        while !said.is_char_boundary(start) {
            start += 1;
        }
        said = format!("...{}", &said[start..]);
    }
    Err(format!("{program} failed ({}): {said}", output.status))
}

/// Kills the statement a session is running, from a connection of its own.
async fn kill_running(opts: &Opts, connection_id: u32) {
    let kill = async {
        let mut conn = Conn::new(opts.clone()).await?;
        conn.query_drop(format!("KILL QUERY {connection_id}"))
            .await?;
        conn.disconnect().await
    };
    let _ = tokio::time::timeout(RECORD_TIMEOUT, kill).await;
}

#[async_trait]
impl Session for MySqlSession {
    async fn try_lock(&mut self) -> Result<bool, SchemaError> {
        // Named locks are server-wide and at most 64 characters: the schema (a database) is
        // unique on its server.
        let name = format!(
            "greyrouter:{:016x}",
            lock_key("mysql", &self.db.schema).cast_unsigned()
        );
        let taken: Result<Option<Option<i64>>, _> = self
            .conn()?
            .exec_first("SELECT GET_LOCK(?, 0)", (name.as_str(),))
            .await;
        match taken {
            Ok(Some(Some(1))) => {
                self.lock = Some(name);
                self.conn.set_held(true);
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(err) => Err(self.query_error("cannot take the migration lock", &err)),
        }
    }

    async fn unlock(&mut self) {
        let Some(name) = self.lock.clone() else {
            return;
        };
        let Ok(conn) = self.conn.get() else {
            return;
        };
        let released: Result<Result<Option<Option<i64>>, _>, _> = tokio::time::timeout(
            RECORD_TIMEOUT,
            conn.exec_first("SELECT RELEASE_LOCK(?)", (name.as_str(),)),
        )
        .await;
        match released {
            Ok(Ok(Some(Some(1)))) => {
                self.lock = None;
                self.conn.set_held(false);
            }
            // Unknown: closing the session releases it.
            _ => self.conn.discard(),
        }
    }

    async fn history(&mut self, service: &str) -> Result<Vec<AppliedMigration>, SchemaError> {
        if !self.history_table_exists().await? {
            return Ok(Vec::new());
        }
        let query = format!(
            "SELECT version, name, checksum, direction, \
             CAST(UNIX_TIMESTAMP(applied_at) * 1000 AS SIGNED), duration_ms, success, \
             applied_by, error, statements_done, repaired FROM {} WHERE service = ? ORDER BY id",
            self.history_table()
        );
        let rows: Result<Vec<Row>, _> = self.conn()?.exec(query, (service,)).await;
        let rows = rows.map_err(|err| self.query_error("cannot read the history", &err))?;
        rows.iter()
            .map(|row| {
                Ok(AppliedMigration {
                    version: column(row, 0)?,
                    name: column(row, 1)?,
                    checksum: column(row, 2)?,
                    direction: column(row, 3)?,
                    applied_at_ms: u64::try_from(column::<i64>(row, 4)?).unwrap_or(0),
                    duration_ms: u64::try_from(column::<i64>(row, 5)?).unwrap_or(0),
                    success: column::<i64>(row, 6)? != 0,
                    applied_by: column(row, 7)?,
                    error: column(row, 8)?,
                    statements_done: Some(column(row, 9)?),
                    repaired: column::<i64>(row, 10)? != 0,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|why| {
                SchemaError::Unavailable(format!(
                    "cannot read the history in schema {} of {}: {why}",
                    self.db.schema,
                    self.db.redacted_url()
                ))
            })
    }

    async fn prepare(&mut self) -> Result<(), SchemaError> {
        if self.history_table_exists().await? {
            return Ok(());
        }
        let ddl = [
            format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                quote_ident(&self.db.schema)
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                    service VARCHAR(255) NOT NULL,
                    version INT NOT NULL,
                    name TEXT NOT NULL,
                    checksum VARCHAR(64) NOT NULL,
                    direction VARCHAR(4) NOT NULL,
                    applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
                    duration_ms BIGINT NOT NULL,
                    success BOOLEAN NOT NULL,
                    applied_by TEXT NOT NULL,
                    error TEXT NULL,
                    statements_done INT NOT NULL DEFAULT 0,
                    repaired BOOLEAN NOT NULL DEFAULT FALSE,
                    KEY service_id (service, id),
                    CHECK (direction IN ('up', 'down'))
                ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
                self.history_table()
            ),
        ];
        for statement in ddl {
            let created = self.conn()?.query_drop(statement).await;
            if let Err(err) = created {
                return Err(self.query_error("cannot create the history table", &err));
            }
        }
        self.has_history = true;
        Ok(())
    }

    async fn run(&mut self, step: StepRun<'_>) -> Result<(), String> {
        let started = Instant::now();
        let timeout = step.timeout;
        let connection_id = self.conn().map_err(|err| err.to_string())?.id();
        let mut row_id = None;
        let opts = self.opts.clone();
        let killed = AtomicBool::new(false);
        let outcome = if timeout.is_zero() {
            self.apply(step, &mut row_id, &killed).await
        } else {
            let (outcome, timed_out) = {
                let run = self.apply(step, &mut row_id, &killed);
                tokio::pin!(run);
                tokio::select! {
                    outcome = &mut run => (outcome, false),
                    () = tokio::time::sleep(timeout) => {
                        // Kill the running statement; the step then fails with what the server
                        // says of it, and stops.
                        killed.store(true, Ordering::SeqCst);
                        kill_running(&opts, connection_id).await;
                        let timed_out = format!("timed out after {timeout:?} and was killed");
                        let outcome = match tokio::time::timeout(CANCEL_GRACE, &mut run).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(format!("{timed_out}: {error}")),
                            Err(_) => Err(timed_out),
                        };
                        (outcome, true)
                    }
                }
            };
            if timed_out {
                // A kill sent at the deadline may meet a later statement: start afresh.
                self.conn.discard();
            }
            outcome
        };
        let Err(error) = outcome else {
            return Ok(());
        };
        let error = scrub(&error, &self.db.url);
        if !self.conn.is_reusable() {
            // The session may still be busy with the killed statement: record on a fresh one.
            match connect(&self.db, &self.opts).await {
                Ok(conn) => self.conn.replace(conn),
                Err(_) => return Err(error),
            }
        }
        let table = self.history_table();
        let duration_ms = millis(started.elapsed());
        let conn = self.conn().map_err(|err| err.to_string())?;
        let record = async {
            match row_id {
                Some(id) => {
                    conn.exec_drop(
                        format!("UPDATE {table} SET error = ?, duration_ms = ? WHERE id = ?"),
                        (error.as_str(), duration_ms, id),
                    )
                    .await
                }
                // The row itself could not be written: try once more, as a failure.
                None => {
                    conn.exec_drop(
                        format!(
                            "INSERT INTO {table} (service, version, name, checksum, direction, \
                             duration_ms, success, applied_by, error, statements_done) \
                             VALUES (?, ?, ?, ?, ?, ?, FALSE, ?, ?, ?)"
                        ),
                        (
                            step.service,
                            step.migration.version,
                            &step.migration.name,
                            &step.migration.checksum,
                            step.direction.as_str(),
                            duration_ms,
                            step.applied_by,
                            error.as_str(),
                            step.skip_statements,
                        ),
                    )
                    .await
                }
            }
        };
        // Best effort: the failure is returned whether or not it could be recorded.
        let _ = tokio::time::timeout(RECORD_TIMEOUT, record).await;
        Err(error)
    }

    async fn repair(&mut self, catalog: &ServiceCatalog) -> Result<u32, SchemaError> {
        if !self.history_table_exists().await? {
            return Ok(0);
        }
        let table = self.history_table();
        let mut changed = 0u64;
        for migration in &catalog.migrations {
            let updated = self
                .conn()?
                .exec_drop(
                    format!(
                        "UPDATE {table} SET checksum = ? WHERE service = ? AND version = ? \
                         AND direction = 'up' AND success AND checksum <> ?"
                    ),
                    (
                        &migration.checksum,
                        &catalog.service,
                        migration.version,
                        &migration.checksum,
                    ),
                )
                .await;
            match updated {
                Ok(()) => changed += self.conn()?.affected_rows(),
                Err(err) => return Err(self.query_error("cannot repair checksums", &err)),
            }
        }
        // The last attempt, when it left its migration half-applied: acknowledged.
        let last: Result<Option<(u64, u32)>, _> = self
            .conn()?
            .exec_first(
                format!(
                    "SELECT id, version FROM {table} WHERE service = ? AND NOT success \
                     AND NOT repaired AND (statements_done > 0 OR error IS NULL) \
                     AND id = (SELECT MAX(id) FROM {table} WHERE service = ?)"
                ),
                (&catalog.service, &catalog.service),
            )
            .await;
        let last = last.map_err(|err| self.query_error("cannot repair", &err))?;
        if let Some((id, version)) = last {
            let checksum = catalog
                .migration(version)
                .map(|migration| migration.checksum.clone())
                .ok_or_else(|| SchemaError::UnknownSchemaVersion {
                    service: catalog.service.clone(),
                    version,
                })?;
            let updated = self
                .conn()?
                .exec_drop(
                    format!("UPDATE {table} SET repaired = TRUE, checksum = ? WHERE id = ?"),
                    (checksum, id),
                )
                .await;
            match updated {
                Ok(()) => changed += self.conn()?.affected_rows(),
                Err(err) => return Err(self.query_error("cannot repair", &err)),
            }
        }
        Ok(u32::try_from(changed).unwrap_or(u32::MAX))
    }
}

/// Returns the connection options of the tenant's database (`mariadb://` read as `mysql://`).
fn options(db: &TenantDatabase) -> Result<Opts, SchemaError> {
    let url = match db.url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
        _ => db.url.clone(),
    };
    let opts = Opts::from_url(&url).map_err(|err| {
        SchemaError::Unavailable(format!(
            "invalid database url {}: {}",
            db.redacted_url(),
            scrub(&err.to_string(), &db.url)
        ))
    })?;
    Ok(OptsBuilder::from_opts(opts).into())
}

/// Opens a session; errors never hold the password.
async fn connect(db: &TenantDatabase, opts: &Opts) -> Result<Conn, SchemaError> {
    let unavailable = |message: String| {
        SchemaError::Unavailable(format!(
            "cannot connect to {}: {}",
            db.redacted_url(),
            scrub(&message, &db.url)
        ))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(unavailable(describe(&err))),
        Err(_) => Err(unavailable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}

/// Returns what the server said (message, error code, SQLSTATE), or the client error.
fn describe(err: &mysql_async::Error) -> String {
    match err {
        mysql_async::Error::Server(server) => format!(
            "{} (error {}, sqlstate {})",
            server.message, server.code, server.state
        ),
        other => other.to_string(),
    }
}

/// Reads one column, as an error (not a panic) when it has another type.
fn column<T: FromValue>(row: &Row, index: usize) -> Result<T, String> {
    match row.get_opt::<T, usize>(index) {
        Some(Ok(value)) => Ok(value),
        Some(Err(err)) => Err(format!("column {index}: {err}")),
        None => Err(format!("column {index} is missing")),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Returns the identifier quoted for MySQL.
pub(crate) fn quote_ident(identifier: &str) -> String {
    format!("`{}`", identifier.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_with_backticks() {
        assert_eq!(quote_ident("tenant_a"), "`tenant_a`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn a_mariadb_url_reads_as_mysql_and_a_bad_one_hides_its_password() {
        let db = |url: &str| TenantDatabase {
            url: url.to_owned(),
            schema: "tenant_a".to_owned(),
        };
        let opts = options(&db("mariadb://root:pw@127.0.0.1:3306/app")).expect("valid");
        assert_eq!(opts.db_name(), Some("app"));
        assert_eq!(opts.user(), Some("root"));
        let err = options(&db("mysql://root:hunter2@127.0.0.1:3306/app?bogus=1"))
            .expect_err("an unknown parameter");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
