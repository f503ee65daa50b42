//! The database engines the migrator runs on: a port ([`Engine`], [`Session`]) with a
//! PostgreSQL and a MySQL/MariaDB adapter, and the pool of idle sessions they share.
//!
//! The migrator holds every rule (planning, the gate, locking with retries, what a failure
//! means); an engine only knows how to talk to its database: take and release the tenant's
//! lock, read and create the history table, run one step with its history row, repair
//! checksums.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::plan::Direction;
use crate::{AppliedMigration, Migration, SchemaError, ServiceCatalog, TenantDatabase};

/// Which engine a tenant database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// PostgreSQL: each step in one transaction with its history row.
    Postgres,
    /// MySQL 8 or MariaDB 10.11+: DDL commits on its own, so progress is kept per statement.
    MySql,
}

impl EngineKind {
    /// Returns the engine a connection URL names: `mysql://` and `mariadb://` are MySQL;
    /// `postgres://`, `postgresql://` and `key=value` strings are PostgreSQL.
    pub fn from_url(url: &str) -> EngineKind {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        if scheme.eq_ignore_ascii_case("mysql") || scheme.eq_ignore_ascii_case("mariadb") {
            EngineKind::MySql
        } else {
            EngineKind::Postgres
        }
    }

    /// Returns the engine's name, as configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Postgres => "postgres",
            EngineKind::MySql => "mysql",
        }
    }
}

/// One step to run, with what its history row records.
#[derive(Debug, Clone, Copy)]
pub struct StepRun<'a> {
    /// The service whose schema it migrates.
    pub service: &'a str,
    /// The migration.
    pub migration: &'a Migration,
    /// Up or down.
    pub direction: Direction,
    /// Statements already applied by a repaired attempt, skipped (per-statement engines).
    pub skip_statements: u32,
    /// Recorded as `applied_by`.
    pub applied_by: &'a str,
    /// Longest the step may run; zero for no limit.
    pub timeout: Duration,
}

impl StepRun<'_> {
    /// Returns the SQL of the step's direction.
    pub fn sql(&self) -> Result<&str, String> {
        match self.direction {
            Direction::Up => Ok(self.migration.up.as_str()),
            Direction::Down => self
                .migration
                .down
                .as_deref()
                .ok_or_else(|| "the migration has no down SQL".to_owned()),
        }
    }
}

/// A database engine: opens sessions on tenant databases.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Returns a session on the tenant's database: an idle one of the same database when the
    /// pool holds one, a new connection otherwise. Errors never hold a password.
    async fn session(&self, db: &TenantDatabase) -> Result<Box<dyn Session>, SchemaError>;
}

/// A session on one tenant database. Dropped, it goes back to its engine's pool when it is
/// healthy and holds no lock, and is closed otherwise.
#[async_trait]
pub trait Session: Send {
    /// Tries once to take the migration lock of the tenant's schema; `true` when taken. The
    /// database releases it if the session ends.
    async fn try_lock(&mut self) -> Result<bool, SchemaError>;

    /// Releases the lock taken by [`Session::try_lock`]; when that fails the session is not
    /// reused.
    async fn unlock(&mut self);

    /// Returns the service's history rows, oldest first; none when the schema or its
    /// history table does not exist (reading never creates anything).
    async fn history(&mut self, service: &str) -> Result<Vec<AppliedMigration>, SchemaError>;

    /// Creates the tenant's schema and history table when missing (under the lock).
    async fn prepare(&mut self) -> Result<(), SchemaError>;

    /// Runs one step with its history row, within its timeout; on failure, returns what the
    /// database said (and where) after recording the failure as well as it can.
    async fn run(&mut self, step: StepRun<'_>) -> Result<(), String>;

    /// Sets the checksum of every applied migration of the service to the catalog's, and
    /// marks a half-applied last attempt repaired; returns how many history rows changed.
    async fn repair(&mut self, catalog: &ServiceCatalog) -> Result<u32, SchemaError>;
}

/// A connection a pool can keep: whether it is still open, as far as it knows without asking.
pub(crate) trait Pooled: Send + 'static {
    /// Returns false once the connection is known to be closed.
    fn is_open(&self) -> bool {
        true
    }
}

/// A connection a session holds: back to its pool when dropped, unless it holds a lock, its
/// state is unknown (a cancelled statement, a failed unlock), or it is closed.
pub(crate) struct Lease<C: Pooled> {
    pool: Arc<IdlePool<C>>,
    url: String,
    connection: Option<C>,
    /// A lock is held on it (the server would keep it for the next user).
    held: bool,
    /// False once its state is unknown.
    reusable: bool,
}

impl<C: Pooled> Lease<C> {
    /// Returns a lease of `connection` to `url`, kept by `pool` when it ends.
    pub(crate) fn new(pool: Arc<IdlePool<C>>, url: &str, connection: C) -> Self {
        Lease {
            pool,
            url: url.to_owned(),
            connection: Some(connection),
            held: false,
            reusable: true,
        }
    }

    /// Returns the connection.
    pub(crate) fn get(&mut self) -> Result<&mut C, SchemaError> {
        self.connection
            .as_mut()
            .ok_or_else(|| SchemaError::Unavailable("the session is closed".to_owned()))
    }

    /// Marks a lock taken (`true`) or released (`false`) on the connection.
    pub(crate) fn set_held(&mut self, held: bool) {
        self.held = held;
    }

    /// Never gives the connection back to the pool.
    pub(crate) fn discard(&mut self) {
        self.reusable = false;
    }

    /// Returns whether the connection may go back to the pool (as far as the session knows).
    pub(crate) fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// Replaces the connection by a fresh one, which is not reused either.
    pub(crate) fn replace(&mut self, connection: C) {
        self.connection = Some(connection);
        self.reusable = false;
    }
}

impl<C: Pooled> Drop for Lease<C> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.reusable
            && !self.held
            && connection.is_open()
        {
            self.pool.put(&self.url, connection);
        }
    }
}

/// Idle connections kept for reuse, newest last, across every database an engine talks to:
/// at most `capacity`, none older than `idle_timeout`. A database per tenant therefore never
/// holds a connection per tenant.
pub(crate) struct IdlePool<C> {
    entries: Mutex<VecDeque<Idle<C>>>,
    capacity: usize,
    idle_timeout: Duration,
}

struct Idle<C> {
    url: String,
    connection: C,
    since: Instant,
}

impl<C> IdlePool<C> {
    /// Returns an empty pool.
    pub(crate) fn new(capacity: usize, idle_timeout: Duration) -> Self {
        IdlePool {
            entries: Mutex::new(VecDeque::new()),
            capacity,
            idle_timeout,
        }
    }

    /// Takes the most recently returned connection to `url`; drops the expired ones.
    pub(crate) fn take(&self, url: &str) -> Option<C> {
        self.take_at(url, Instant::now())
    }

    fn take_at(&self, url: &str, now: Instant) -> Option<C> {
        let mut expired = Vec::new();
        let taken = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            while entries
                .front()
                .is_some_and(|idle| now.saturating_duration_since(idle.since) > self.idle_timeout)
            {
                expired.extend(entries.pop_front());
            }
            let found = entries.iter().rposition(|idle| idle.url == url);
            found.and_then(|index| entries.remove(index))
        };
        // Closed outside the lock.
        drop(expired);
        taken.map(|idle| idle.connection)
    }

    /// Keeps a healthy connection for the next session on `url`, closing the oldest one past
    /// the capacity.
    pub(crate) fn put(&self, url: &str, connection: C) {
        if self.capacity == 0 {
            return;
        }
        let evicted = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.push_back(Idle {
                url: url.to_owned(),
                connection,
                since: Instant::now(),
            });
            (entries.len() > self.capacity).then(|| entries.pop_front())
        };
        drop(evicted);
    }

    /// Returns how many connections are idle.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Returns the lock key of a (database, schema): the first 8 bytes of a SHA-256, the
/// same in every process and release.
pub(crate) fn lock_key(database: &str, schema: &str) -> i64 {
    use sha2::{Digest, Sha256};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_names_the_engine() {
        assert_eq!(EngineKind::from_url("mysql://root@h/db"), EngineKind::MySql);
        assert_eq!(EngineKind::from_url("MariaDB://root@h/"), EngineKind::MySql);
        assert_eq!(
            EngineKind::from_url("postgres://u@h/db"),
            EngineKind::Postgres
        );
        assert_eq!(
            EngineKind::from_url("postgresql://u@h/db"),
            EngineKind::Postgres
        );
        assert_eq!(
            EngineKind::from_url("host=h dbname=d"),
            EngineKind::Postgres
        );
    }

    #[test]
    fn the_pool_gives_back_the_newest_of_the_same_database_within_its_capacity() {
        let pool = IdlePool::new(3, Duration::from_secs(60));
        pool.put("a", 1);
        pool.put("b", 2);
        pool.put("a", 3);
        assert_eq!(pool.take("a"), Some(3));
        assert_eq!(pool.take("c"), None);
        pool.put("c", 4);
        pool.put("c", 5);
        // Over capacity: the oldest (a, 1) is closed.
        assert_eq!(pool.len(), 3);
        assert_eq!(pool.take("a"), None);
        assert_eq!(pool.take("b"), Some(2));
        let none = IdlePool::new(0, Duration::from_secs(60));
        none.put("a", 1);
        assert_eq!(none.take("a"), None);
    }

    /// A connection that says whether it is open.
    struct Fake(u32, bool);

    impl Pooled for Fake {
        fn is_open(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn a_lease_goes_back_to_the_pool_only_when_free_known_and_open() {
        let pool = Arc::new(IdlePool::new(8, Duration::from_secs(60)));
        drop(Lease::new(pool.clone(), "a", Fake(1, true)));
        let mut held = Lease::new(pool.clone(), "a", Fake(2, true));
        held.set_held(true);
        drop(held);
        let mut released = Lease::new(pool.clone(), "a", Fake(3, true));
        released.set_held(true);
        released.set_held(false);
        drop(released);
        let mut discarded = Lease::new(pool.clone(), "a", Fake(4, true));
        discarded.discard();
        drop(discarded);
        let mut replaced = Lease::new(pool.clone(), "a", Fake(5, true));
        replaced.replace(Fake(6, true));
        assert_eq!(replaced.get().map(|c| c.0).ok(), Some(6));
        drop(replaced);
        drop(Lease::new(pool.clone(), "a", Fake(7, false)));
        let kept: Vec<u32> = std::iter::from_fn(|| pool.take("a").map(|c| c.0)).collect();
        assert_eq!(kept, vec![3, 1]);
    }

    #[test]
    fn expired_connections_are_closed_not_reused() {
        let pool = IdlePool::new(3, Duration::from_secs(60));
        pool.put("a", 1);
        pool.put("a", 2);
        assert_eq!(pool.take_at("a", Instant::now()), Some(2));
        assert_eq!(
            pool.take_at("a", Instant::now() + Duration::from_secs(61)),
            None
        );
        assert_eq!(pool.len(), 0);
    }
}
