//! Per-tenant database schema migrations on PostgreSQL and MySQL/MariaDB, tied to service
//! versions.
//!
//! Each tenant of the SaaS has its own schema (in a shared database or in its own database).
//! A service version needs its tenants' schemas at some migration; before greyrouter routes a
//! tenant to that version, its schema is migrated there, and a tenant whose schema went
//! through a destructive change is never routed back to a version that predates it.
//!
//! # Layout
//!
//! - [`catalog`]: [`Catalog`] loads every service's migrations from a directory;
//!   [`ServiceCatalog`] answers which schema version a service version requires and where the
//!   contract floor is. Pure.
//! - [`plan`]: [`Plan`] and the rules that pick the steps between two schema versions and
//!   refuse unsafe moves. Pure.
//! - [`history`]: [`TenantSchema`] and [`AppliedMigration`], the history table's rows and
//!   what is applied according to them.
//! - [`tenant_database`]: the [`TenantDatabases`] port (which database and schema a tenant
//!   lives in) and its [`Templates`] adapter.
//! - [`migrator`]: [`Migrator`] reads, plans and applies migrations: every rule (planning, the
//!   lock and its retries, what a failure means), on the engine a tenant's URL names.
//! - [`engine`]: the port to a database engine ([`engine::Engine`], [`engine::Session`]) and
//!   the pool of idle sessions; `postgres` and `mysql` are its adapters, and
//!   `tests/engines.rs` is the behaviour suite both run.
//! - [`statements`]: splits a migration into statements for MySQL. Pure.
//!
//! # The catalog
//!
//! ```text
//! migrations/
//!   user-service/                     one directory per service, named after it
//!     versions.toml                   [versions] "v1.0" = 1, "v2.0" = 2, "v3.0" = 3
//!     0001_create_users.up.sql
//!     0001_create_users.down.sql      optional: without it the migration is irreversible
//!     0002_add_preferences.up.sql
//!     0002_add_preferences.down.sql
//!     0003_drop_legacy_name.up.sql    first line `-- greyrouter: contract`
//! ```
//!
//! Migration numbers are unique and greater than 0 within a service; gaps are allowed (numbers
//! need not be consecutive) but a new migration must be numbered above every applied one.
//! `versions.toml` maps each service version to the schema version it requires (0 for none),
//! and every schema version it names must have a migration. The checksum of a migration is the
//! hex SHA-256 of its up text, line endings normalised to LF, followed (after a NUL separator)
//! by its down text if any: a checkout with CRLF line endings has the same checksums.
//! [`Catalog::load`] reports the first problem and names its file.
//!
//! # The history table
//!
//! Every tenant schema holds `grey_schema_history` (created with the schema when missing, on
//! the first migration; reading a tenant never creates anything):
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `id` | `bigserial` | order of the attempts |
//! | `service` | `text` | several services may share a schema |
//! | `version`, `name` | `integer`, `text` | the migration |
//! | `checksum` | `text` | the catalog's checksum when it ran (or after a repair) |
//! | `direction` | `text` | `up` or `down` |
//! | `applied_at` | `timestamptz` | `now()` of its transaction |
//! | `duration_ms` | `bigint` | how long it ran |
//! | `success` | `bool` | committed, or rolled back |
//! | `applied_by` | `text` | [`MigratorOptions::applied_by`] |
//! | `error` | `text`, null | what the server said, for a failure |
//!
//! The current schema version ([`TenantSchema::current`]) is the highest migration whose last
//! successful row is an `up`. Before anything runs, every applied migration's checksum is
//! compared with the catalog's: an edited migration is refused ([`SchemaError::Edited`])
//! until [`Migrator::repair`] acknowledges it.
//!
//! On MySQL the table has two more columns: `statements_done` (how many of the migration's
//! statements are applied, updated after each) and `repaired` (see *MySQL* below).
//!
//! # Sessions
//!
//! A tenant's migration runs on one session: it takes the lock, reads the history and runs the
//! steps. Sessions go back to a pool when their tenant is done (healthy, unlocked): at most
//! [`MigratorOptions::max_idle_sessions`] over every database, none kept longer than
//! [`MigratorOptions::idle_timeout`], so a database per tenant never holds a connection per
//! tenant, and 200 tenants of one database reuse a handful of connections.
//!
//! # Locking
//!
//! [`Migrator::migrate`] takes a lock keyed by a stable 64-bit hash of (database, schema) on its
//! session: on PostgreSQL a session-level advisory lock (`pg_try_advisory_lock`), on MySQL a
//! named lock (`GET_LOCK`, server-wide, so keyed by the schema alone), retried until
//! [`MigratorOptions::lock_timeout`], then [`SchemaError::Busy`]. Two routers, or
//! a router and an operator, therefore never migrate the same tenant at once, and the second
//! one plans only after the first is done, so it finds nothing left to do. The lock is released
//! when the migration ends, whatever the outcome; if the process dies, the server releases it
//! with the session. [`Migrator::repair`] takes the same lock.
//!
//! # Failure handling (PostgreSQL)
//!
//! Each step runs in its own transaction together with its history row, with
//! `SET LOCAL search_path` to the tenant schema (only it: qualify objects of other schemas,
//! such as extension functions in `public`) and `SET LOCAL statement_timeout` to
//! [`MigratorOptions::migration_timeout`], which also bounds the whole step (cancelled from the
//! client a second past it). A step goes to the server as one batch (`BEGIN`, the settings, the
//! migration, its history row, `COMMIT`): a migration must not hold its own `BEGIN`/`COMMIT`
//! nor statements that cannot run in a transaction (`CREATE INDEX CONCURRENTLY`). When a statement fails, the transaction is rolled back (the schema is as it
//! was before the step, DDL included, as PostgreSQL's DDL is transactional), a failure row is
//! recorded in a separate transaction, that tenant stops, and
//! [`SchemaError::MigrationFailed`] says what the server said and at which line. Steps already
//! committed stay committed. [`Migrator::migrate_many`] runs tenants concurrently (at most
//! [`MigratorOptions::max_concurrent`]); one tenant's failure never stops the others. Progress
//! is reported before and after every step ([`StepProgress`]).
//!
//! # MySQL and MariaDB
//!
//! MySQL commits every DDL statement on its own: a migration cannot be rolled back. A step
//! therefore runs its statements one at a time ([`statements::split`]: `;` outside quotes and
//! comments, `DELIMITER` lines for triggers and procedures) after `USE` of the tenant's
//! database, with its history row written first (`success` false) and `statements_done` updated
//! after each statement; `success` is set with the last one. When a statement fails, the row
//! keeps the error, which statement and at which line of the file. A failure at the first
//! statement changed nothing and the next run simply tries again; a failure (or the router
//! dying) after some statements committed leaves the tenant **half-applied**
//! ([`TenantSchema::half_applied`]): every plan is refused ([`SchemaError::HalfApplied`]) and
//! [`TenantSchema::advice`] says what to do. The operator fixes the database (the cause, or that
//! one statement by hand) and runs [`Migrator::repair`], which marks the attempt repaired; the
//! next run of that migration in that direction skips the statements already applied and
//! resumes at the one that did not complete. A migration past its timeout has its statement
//! killed (`KILL QUERY` from a second connection). Every other rule (catalog, checksums, plans,
//! contract floor, gate) is the same on both engines.
//!
//! # Expand and contract
//!
//! Change a schema in two phases so that tenants can move between service versions both ways:
//! *expand* migrations only add (a nullable column, a table, an index) so the old and the new
//! service version both work on the new schema, and routing back is safe; once no tenant needs
//! the old version, a *contract* migration removes what only the old version used. A contract
//! migration starts with the line `-- greyrouter: contract`; the migrator refuses to go below
//! it ([`SchemaError::Contract`]), and [`ServiceCatalog::contract_floor`] tells the router which
//! service versions a tenant can no longer be routed to. Going down otherwise runs the
//! `.down.sql` of each applied migration in reverse, and is refused at a migration without one
//! ([`SchemaError::Irreversible`]). A dry run is [`Migrator::plan`].
//!
//! # Tenants and databases
//!
//! [`Templates`] replaces `{tenant}` in a URL and a schema template (tenant ids are limited to
//! `[A-Za-z0-9._:+@-]`; other characters of an identifier become `_` and the schema is
//! lowercased). A tenant's `schema` label overrides the schema; URLs, which may hold secrets,
//! come from configuration only, never from routing state. Passwords never appear in `Debug`
//! output or errors.
//!
//! # Why tokio-postgres and mysql_async
//!
//! `tokio-postgres` and `mysql_async` are async on tokio like the server, need no database at
//! compile time, and give explicit control of transactions, session settings and locks; one
//! driver per engine keeps each adapter plain. `sqlx` would bring its macros and a larger build
//! for none of that. Connections use no TLS for now: a database that requires TLS is refused
//! when connecting.

pub mod catalog;
pub mod engine;
mod error;
pub mod history;
pub mod migrator;
mod mysql;
pub mod plan;
mod postgres;
pub mod statements;
pub mod tenant_database;

pub use catalog::{Catalog, Migration, ServiceCatalog};
pub use engine::EngineKind;
pub use error::SchemaError;
pub use history::{AppliedMigration, TenantSchema};
pub use migrator::{Migrator, MigratorOptions, StepProgress};
pub use plan::{Direction, Plan, PlannedStep};
pub use tenant_database::{Templates, TenantDatabase, TenantDatabases};
