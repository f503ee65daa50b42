//! The one error type of the crate.

/// Why a catalog could not be loaded, or a schema could not be read, planned or migrated.
///
/// Migrations are named `NNNN_name` in messages, as their files are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The migration catalog on disk is invalid; the message names the file.
    #[error("invalid migration catalog: {0}")]
    Catalog(String),
    /// The catalog has no migrations for this service.
    #[error("no migration catalog for service {service}")]
    NoCatalog {
        /// The service asked for.
        service: String,
    },
    /// The service's catalog has no migration with this number (a target, or a version found
    /// applied in the database that this catalog does not know).
    #[error("service {service} has no schema version {version} in its migration catalog")]
    UnknownSchemaVersion {
        /// The service.
        service: String,
        /// The unknown schema version.
        version: u32,
    },
    /// Another migrator holds the tenant's lock and did not release it in time.
    #[error("tenant {tenant_id} is being migrated by another migrator; try again later")]
    Busy {
        /// The tenant.
        tenant_id: String,
    },
    /// An applied migration's checksum differs from the catalog's.
    #[error("migration {version:04}_{name} was edited after it was applied; repair it explicitly")]
    Edited {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
    },
    /// Going down would revert a migration that has no `.down.sql`.
    #[error("cannot go below {version:04}_{name}: it has no down migration")]
    Irreversible {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
    },
    /// Going down would revert a contract (destructive) migration.
    #[error("cannot go below {version:04}_{name}: it is a contract (destructive) migration")]
    Contract {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
    },
    /// A migration failed and a failure row was recorded. On PostgreSQL its transaction was
    /// rolled back (the error says so); on MySQL the statements before the failing one stay
    /// applied (the error says which failed).
    #[error("migration {version:04}_{name} failed: {error}")]
    MigrationFailed {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
        /// What the database said.
        error: String,
    },
    /// A migration's earlier attempt committed some of its statements and then failed or was
    /// interrupted (engines without transactional DDL): nothing runs until an operator repairs
    /// it, and then only that migration, resuming at the statement that did not complete.
    #[error(
        "migration {version:04}_{name} is half-applied going {direction}: it stopped at statement \
         {statement}; {}",
        if *repaired {
            "it was repaired and resumes only by migrating through it"
        } else {
            "fix the database, then repair the tenant's schema to resume it"
        }
    )]
    HalfApplied {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: String,
        /// `up` or `down`.
        direction: String,
        /// The statement that failed or was interrupted (1-based).
        statement: u32,
        /// Whether an operator repaired it already.
        repaired: bool,
    },
    /// The tenant's database could not be reached or answered with an error outside a migration.
    /// Never includes a password.
    #[error("tenant database unavailable: {0}")]
    Unavailable(String),
    /// The tenant cannot be mapped to a database and schema.
    #[error("invalid tenant: {0}")]
    InvalidTenant(String),
}
