//! This router's copy of the routing state, following the store.
//!
//! `Route` reads [`Replica::current`], an atomically swapped `Arc` of an immutable
//! [`RoutingState`]: it never waits on the store or on a lock. A background task pulls changes
//! from the store in revision order, applies each to the local copy and publishes the result,
//! keeping the last `history` applied changes (with the states before and after) so that watchers
//! can replay what they missed. When the store's log no longer reaches this replica's revision,
//! the replica loads a fresh snapshot and records one change of [`Scope::Everything`].

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use greyrouter_store::{Change, Commit, Store, StoreError};
use routing_core::{Mutation, Revision, RoutingState, Scope};
use tokio::sync::watch;

use crate::audit::{self, Actor};
use crate::config::READ_YOUR_WRITES_TIMEOUT;

/// How long one pull from the store waits for a change.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// Most changes pulled at once.
const PULL_LIMIT: usize = 1024;
/// Commits retried after conflicts before giving up.
const MAX_COMMIT_ATTEMPTS: usize = 20;
/// Pause before retrying after a store error.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One change as this replica applied it.
#[derive(Debug)]
pub struct AppliedChange {
    /// The state before.
    pub before: Arc<RoutingState>,
    /// The state after; its revision is the change's.
    pub after: Arc<RoutingState>,
    /// The pairs it may have altered.
    pub scope: Scope,
    /// What it was and why (`kind by actor: reason`), empty for a resynchronisation.
    pub cause: String,
}

/// The changes after a revision, or why they cannot be replayed.
#[derive(Debug)]
pub enum Replay {
    /// The changes, contiguous from the requested revision.
    Changes(Vec<Arc<AppliedChange>>),
    /// The history no longer reaches back to the requested revision.
    Gone,
    /// The requested revision is ahead of this replica.
    Ahead,
}

/// The local routing state and its recent history.
pub struct Replica {
    store: Arc<dyn Store>,
    current: ArcSwap<RoutingState>,
    history: RwLock<VecDeque<Arc<AppliedChange>>>,
    history_len: usize,
    revision: watch::Sender<Revision>,
    /// The store's history id: revisions compare only within it.
    history_id: String,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("store", &self.store.describe())
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Loads the store's state; call [`Replica::follow`] to keep it current.
    pub async fn load(store: Arc<dyn Store>, history_len: usize) -> Result<Arc<Self>, StoreError> {
        let history_id = store.history().await?;
        let state = store.load().await?;
        let revision = state.revision();
        Ok(Arc::new(Replica {
            history_id,
            store,
            current: ArcSwap::from_pointee(state),
            history: RwLock::new(VecDeque::new()),
            history_len: history_len.max(1),
            revision: watch::Sender::new(revision),
        }))
    }

    /// Returns the store's history id (see [`Store::history`]).
    pub fn history_id(&self) -> &str {
        &self.history_id
    }

    /// Returns the current state, to keep.
    pub fn current(&self) -> Arc<RoutingState> {
        self.current.load_full()
    }

    /// Returns the current state for a short read (no reference-count traffic: the `Route`
    /// path).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<RoutingState>> {
        self.current.load()
    }

    /// Returns the store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Subscribes to the replica's revision.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    /// Commits a mutation to the store and waits until this replica has applied it, so that
    /// the caller's next read here sees its own write.
    ///
    /// When another router committed first, this replica catches up and validates again.
    pub async fn commit(&self, mutation: Mutation, actor: &Actor) -> Result<Commit, StoreError> {
        let mut attempts = 0;
        let commit = loop {
            let base = self.current();
            // Validating here first spares the store a refused change, and gives the audit
            // trail the records before and after.
            let (after, _) = base.apply(&mutation)?;
            let meta = audit::meta(actor, &base, &after, &mutation, audit::now_ms());
            match self.store.commit(&base, mutation.clone(), meta).await {
                Err(StoreError::Conflict { current }) if attempts < MAX_COMMIT_ATTEMPTS => {
                    attempts += 1;
                    self.wait_for_revision(current.max(base.revision() + 1))
                        .await?;
                }
                other => break other?,
            }
        };
        let mut revisions = self.subscribe();
        let caught_up = tokio::time::timeout(
            READ_YOUR_WRITES_TIMEOUT,
            revisions.wait_for(|&r| r >= commit.revision),
        )
        .await;
        if caught_up.is_err() {
            tracing::warn!(
                revision = commit.revision,
                "committed change not yet applied locally"
            );
        }
        Ok(commit)
    }

    /// Waits until this replica has applied `revision`.
    async fn wait_for_revision(&self, revision: Revision) -> Result<(), StoreError> {
        let mut revisions = self.subscribe();
        tokio::time::timeout(
            READ_YOUR_WRITES_TIMEOUT,
            revisions.wait_for(|&r| r >= revision),
        )
        .await
        .map(|_| ())
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "this router has not caught up with revision {revision} of the store"
            ))
        })
    }

    /// Returns the applied changes after `revision`, contiguous from it.
    pub fn changes_after(&self, revision: Revision) -> Replay {
        let current = self.current.load().revision();
        if revision > current {
            return Replay::Ahead;
        }
        let history = self
            .history
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = history.partition_point(|c| c.after.revision() <= revision);
        let changes: Vec<Arc<AppliedChange>> = history.iter().skip(start).cloned().collect();
        match changes.first() {
            None if revision == current => Replay::Changes(Vec::new()),
            Some(first) if first.before.revision() == revision => Replay::Changes(changes),
            _ => Replay::Gone,
        }
    }

    fn publish(&self, change: AppliedChange) {
        let revision = change.after.revision();
        self.current.store(Arc::clone(&change.after));
        {
            let mut history = self
                .history
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            history.push_back(Arc::new(change));
            while history.len() > self.history_len {
                history.pop_front();
            }
        }
        self.revision.send_replace(revision);
    }

    /// Follows the store until the task is dropped: applies changes as they are committed.
    pub async fn follow(self: Arc<Self>) {
        loop {
            let after = self.current.load().revision();
            match self.store.changes_after(after, PULL_LIMIT, PULL_WAIT).await {
                Ok(changes) => {
                    for change in changes {
                        if let Err(err) = self.apply(&change) {
                            tracing::error!(%err, revision = change.revision, "cannot apply change; reloading");
                            self.reload().await;
                            break;
                        }
                    }
                }
                Err(StoreError::Compacted { .. }) => self.reload().await,
                Err(err) => {
                    tracing::warn!(%err, "cannot read changes from the store; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    fn apply(&self, change: &Change) -> Result<(), String> {
        let before = self.current();
        if change.revision != before.revision() + 1 {
            return Err(format!(
                "gap: at revision {}, next change is {}",
                before.revision(),
                change.revision
            ));
        }
        let (after, _) = before.apply(&change.mutation).map_err(|e| e.to_string())?;
        let meta = &change.meta;
        let mut cause = format!("{} by {}", audit::kind(&change.mutation), meta.actor);
        if !meta.reason.is_empty() {
            cause.push_str(": ");
            cause.push_str(&meta.reason);
        }
        self.publish(AppliedChange {
            before,
            after: Arc::new(after),
            scope: change.mutation.scope(),
            cause,
        });
        Ok(())
    }

    /// Replaces the state with a fresh snapshot from the store.
    async fn reload(&self) {
        match self.store.load().await {
            Ok(state) if state.revision() == 0 && self.current().revision() > 0 => {
                // An emptied store (flushed by mistake) must not empty every router's routing
                // table: keep routing from this replica until the state is restored.
                tracing::error!(
                    revision = self.current().revision(),
                    "the store is empty; keeping the last routing state until it is restored"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(state) => {
                let before = self.current();
                tracing::info!(
                    from = before.revision(),
                    to = state.revision(),
                    "resynchronised from a snapshot"
                );
                self.publish(AppliedChange {
                    before,
                    after: Arc::new(state),
                    scope: Scope::Everything,
                    cause: String::new(),
                });
            }
            Err(err) => {
                tracing::warn!(%err, "cannot load a snapshot; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
