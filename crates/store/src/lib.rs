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
//! - every change names the [history](Store::history) it was committed under, its own id and
//!   its parent's (the change before it), so a router can tell a continuation from a store that
//!   went back in time (an asynchronous failover that lost acknowledged changes and reuses their
//!   revisions) or was replaced (emptied, then written to by someone else). A history id is
//!   `<origin>` or `<origin>.<epoch>`: a rewind moves the store to a new epoch of the same origin
//!   ([`Store::rotate_history`]); a different origin is another history altogether, which
//!   routers adopt only when an operator says so ([`Store::adopt_history`]).

use std::time::Duration;

use routing_core::{Mutation, Outcome, Revision, RoutingError, RoutingState};

pub mod journal;
mod memory;
#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

pub use journal::DurableOptions;
pub use memory::{DEFAULT_LOG_BYTES, DEFAULT_LOG_CAPACITY, MemoryStore, Opened};

/// One committed change: the mutation, the revision it produced, and who made it, when and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The revision after the change.
    pub revision: Revision,
    /// What changed.
    pub mutation: Mutation,
    /// Who, when, why, and the records before and after.
    pub meta: ChangeMeta,
    /// The history id the change was committed under (empty when the store did not say).
    pub history: String,
    /// This change's id, unique across histories (empty when the store did not say).
    pub id: String,
    /// The id of the change before it (empty for the first change, or when unknown).
    pub parent: String,
}

/// A consistent snapshot and where it stands in the store's history.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The state.
    pub state: RoutingState,
    /// The store's history id; `None` for a store that has none (new, or emptied).
    pub history: Option<String>,
    /// The id of the change that produced the state (empty: none, or unknown).
    pub head: String,
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

impl ChangeMeta {
    /// Bytes of its text: actor, reason, and the records before and after.
    pub fn text_bytes(&self) -> usize {
        self.actor.len() + self.reason.len() + self.before.len() + self.after.len()
    }
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

    /// Returns the revision of the store's last change (how far a replica may be behind).
    /// Stores that keep it apart answer without reading the state.
    async fn head_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.snapshot().await?.state.revision())
    }

    /// Names the store for logs and health ("memory", "redis://host:port/0").
    fn describe(&self) -> String;

    /// Identifies this store's sequence of revisions: every handle on the same data answers the
    /// same, a store whose revisions started over (a new embedded store, an emptied Redis)
    /// answers another. Watchers resume by revision only within one history. Starts a history
    /// (a new origin) when the store has none.
    async fn history(&self) -> Result<String, StoreError>;

    /// Returns a consistent snapshot with the store's history id (without starting one) and the
    /// id of the last change.
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            state: self.load().await?,
            history: Some(self.history().await?),
            head: String::new(),
        })
    }

    /// Like [`Store::commit`], but a store that keeps change ids also refuses with
    /// [`StoreError::Conflict`] when its last change is not `head` (the id of the change that
    /// produced `base`): `base` then belongs to another line of changes, even at the same
    /// revision.
    async fn commit_after(
        &self,
        base: &RoutingState,
        head: &str,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        let _ = head;
        self.commit(base, mutation, meta).await
    }

    /// Returns the store's history id without starting one (`None`: new or emptied store).
    async fn current_history(&self) -> Result<Option<String>, StoreError> {
        self.history().await.map(Some)
    }

    /// Replaces the store's history id `from` with `to`, a later epoch of the same origin
    /// (changes were lost and their revisions will be reused), unless it is no longer `from`;
    /// returns the history id now in force.
    async fn rotate_history(&self, from: &str, to: &str) -> Result<String, StoreError> {
        let _ = (from, to);
        self.history().await
    }

    /// Records that routers following a history of origin `retired_origin` may adopt
    /// `history`, the store's current one (an operator's decision after the store was emptied
    /// or replaced).
    async fn adopt_history(&self, retired_origin: &str, history: &str) -> Result<(), StoreError> {
        let _ = (retired_origin, history);
        Ok(())
    }

    /// Returns the history that routers following origin `retired_origin` may adopt, if an
    /// operator said so.
    async fn adopted_history(&self, retired_origin: &str) -> Result<Option<String>, StoreError> {
        let _ = retired_origin;
        Ok(None)
    }

    /// Returns the routing state at a past `revision` (time travel), as far as the store keeps
    /// what is needed to rebuild it. A store that keeps no past states answers only for its
    /// current revision.
    async fn state_at(&self, revision: Revision) -> Result<RoutingState, StoreError> {
        let state = self.load().await?;
        if state.revision() == revision {
            Ok(state)
        } else {
            Err(StoreError::Rejected(RoutingError::FailedPrecondition(
                format!(
                    "{} keeps no past states (it is at revision {}); the durable embedded store does",
                    self.describe(),
                    state.revision()
                ),
            )))
        }
    }

    /// Returns the oldest revision [`Store::state_at`] rebuilds from memory, without reading
    /// the disk or the network (`None`: none before the current one).
    fn rebuildable_from(&self) -> Option<Revision> {
        None
    }

    /// Returns how long one write may take at most before the store gives up on it (its
    /// command timeouts), when it has such a bound.
    fn write_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Returns the origin of a history id: `<origin>` of `<origin>` or `<origin>.<epoch>`.
pub fn history_origin(history: &str) -> &str {
    history
        .split_once('.')
        .map_or(history, |(origin, _)| origin)
}

/// Returns the epoch of a history id: 0 for `<origin>`, `n` for `<origin>.<n>`.
pub fn history_epoch(history: &str) -> u64 {
    history
        .split_once('.')
        .and_then(|(_, epoch)| epoch.parse().ok())
        .unwrap_or(0)
}

/// Returns the id of the epoch after `history` (and after `also`, when of the same origin):
/// `<origin>.<n + 1>`.
pub fn next_history_epoch(history: &str, also: &str) -> String {
    let origin = history_origin(history);
    let mut epoch = history_epoch(history);
    if history_origin(also) == origin {
        epoch = epoch.max(history_epoch(also));
    }
    format!("{origin}.{}", epoch.saturating_add(1))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ids_are_an_origin_and_an_epoch() {
        assert_eq!(history_origin("0123456789abcdef"), "0123456789abcdef");
        assert_eq!(history_epoch("0123456789abcdef"), 0);
        assert_eq!(
            next_history_epoch("0123456789abcdef", ""),
            "0123456789abcdef.1"
        );
        assert_eq!(history_origin("0123456789abcdef.7"), "0123456789abcdef");
        assert_eq!(history_epoch("0123456789abcdef.7"), 7);
        assert_eq!(
            next_history_epoch("0123456789abcdef.7", ""),
            "0123456789abcdef.8"
        );
        // After the later of two epochs of one origin; another origin does not count.
        assert_eq!(
            next_history_epoch("0123456789abcdef", "0123456789abcdef.3"),
            "0123456789abcdef.4"
        );
        assert_eq!(
            next_history_epoch("0123456789abcdef.1", "fedcba9876543210.9"),
            "0123456789abcdef.2"
        );
    }
}
