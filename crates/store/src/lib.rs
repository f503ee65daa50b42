//! The `Store` port: where routing state is kept and how every change reaches every router.
//!
//! In ports-and-adapters terms this crate is the port: the [`Store`] trait, the embedded
//! [`MemoryStore`] adapter (the default: one process, nothing to install), and the behaviour
//! suite (module `suite`, feature `test-suite`) that every adapter runs so that they cannot
//! drift. Other adapters (Redis) live in their own crates and depend on this one; routers depend
//! on the trait, never on an adapter.
//!
//! The model:
//! - the store holds the authoritative state and a log of [`Change`]s, each a
//!   [`Mutation`] with the revision it produced, one revision per change, without gaps;
//! - [`Store::commit`] validates and applies a mutation atomically (compare-and-set included),
//!   so two routers racing on the same tenant cannot both win; a store that validates against
//!   the caller's copy refuses a stale copy with [`StoreError::Conflict`];
//! - a router loads a consistent snapshot with [`Store::load`], then follows
//!   [`Store::changes_after`] from that revision, applying each change to its own copy with
//!   [`RoutingState::apply`]; being deterministic, the copies stay identical. When the log no
//!   longer reaches back far enough the store answers [`StoreError::Compacted`] and the router
//!   loads a fresh snapshot.

use std::time::Duration;

use routing_core::{Mutation, Outcome, Revision, RoutingError, RoutingState};

mod memory;
#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

pub use memory::{DEFAULT_LOG_CAPACITY, MemoryStore};

/// One committed change: the mutation, the revision it produced, and who made it, when and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The revision after the change.
    pub revision: Revision,
    /// What changed.
    pub mutation: Mutation,
    /// Who, when, why, and the records before and after.
    pub meta: ChangeMeta,
}

/// The audit record of a change: who made it, when, why, and what it changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeMeta {
    /// Who made it (a user, a service, `rollout-driver`).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The changed records before the change (JSON).
    pub before: String,
    /// The changed records after the change (JSON).
    pub after: String,
}

/// What a commit reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The revision the change produced.
    pub revision: Revision,
    /// What applying it reported.
    pub outcome: Outcome,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The mutation was refused by the routing rules; nothing changed.
    #[error(transparent)]
    Rejected(#[from] RoutingError),
    /// The store cannot be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The change log no longer holds the changes after `requested`.
    #[error("changes after revision {requested} are no longer kept (oldest kept follows {oldest})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// Changes are kept only after this revision.
        oldest: Revision,
    },
    /// The state the caller validated against is no longer the latest: another router
    /// committed first. Catch up to `current` and try again.
    #[error("another change was committed first (store at revision {current})")]
    Conflict {
        /// The store's revision.
        current: Revision,
    },
    /// The store holds data this router cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Where routing state is kept. Every method is safe to call concurrently.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Returns a consistent snapshot of the whole state.
    async fn load(&self) -> Result<RoutingState, StoreError>;

    /// Validates and applies a mutation atomically, appending it to the change log.
    ///
    /// `base` is the caller's copy of the state. A store may validate against it and refuse
    /// with [`StoreError::Conflict`] when it is not the latest (optimistic concurrency), or
    /// validate against its own latest state and ignore it.
    async fn commit(
        &self,
        base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError>;

    /// Returns up to `limit` changes after revision `after`, in revision order, waiting up to
    /// `wait` for the first one (an empty list when none came).
    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError>;

    /// Takes or renews the lease `name` for `holder` for `ttl`; returns whether `holder` holds
    /// it. Only one holder holds a lease at a time (the replica that drives rollouts).
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Names the store for logs and health ("memory", "redis://host:port/0").
    fn describe(&self) -> String;

    /// Identifies this store's sequence of revisions: every handle on the same data answers the
    /// same, a store whose revisions started over (a new embedded store, an emptied Redis)
    /// answers another. Watchers resume by revision only within one history.
    async fn history(&self) -> Result<String, StoreError>;
}

/// Returns a new random history id (16 hex digits).
pub fn new_history_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = RandomState::new().hash_one((std::process::id(), nanos));
    format!("{random:016x}")
}
