//! This router's copy of the routing state, following the store.
//!
//! `Route` reads [`Replica::current`], an atomically swapped `Arc` of an immutable
//! [`RoutingState`]: it never waits on the store or on a lock. A background task pulls changes
//! from the store in revision order, applies each to the local copy and publishes the result,
//! keeping the last `history` applied changes (with the states before and after) so that watchers
//! can replay what they missed. When the store's log no longer reaches this replica's revision,
//! the replica loads a fresh snapshot and records one change of [`Scope::Everything`], marked
//! as a resynchronisation: watchers never replay across it, they get a snapshot.
//!
//! # Lineage
//! The replica follows one *history* of the store ([`Store::history`]: `<origin>` or
//! `<origin>.<epoch>`) and remembers the id of the last change it applied. Each change names
//! its history and its parent, so the replica tells a continuation from:
//! - a store that went **back in time** (a Redis failover that lost acknowledged changes, whose
//!   revisions are then reused by other changes): the store is behind the replica, or a change's
//!   parent is not the replica's last change, or the store refuses a commit on the replica's
//!   base. The replica resynchronises from a snapshot and moves the store to a new epoch of its
//!   history ([`Store::rotate_history`]), so that clients resuming with the old history and a
//!   revision get a snapshot, not a replay of different changes; replicas that never saw the
//!   lost changes adopt the new epoch when they see it (on the next change, or within a pull);
//! - a store of **another history** (emptied, then written to by someone else): the replica does
//!   not adopt it. It keeps routing from its last state, refuses changes, fails its store health
//!   check (Admin `NOT_SERVING`), until the data is restored or an operator adopts the store's
//!   history ([`Replica::adopt_store_history`], `greyrouter store adopt`), which every replica
//!   following the retired history learns from the store.
//!
//! A commit is bounded as a whole (every attempt and catch-up) by twice the store's write
//! timeout; a store found behind the replica fails the commit at once and starts the
//! resynchronisation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use greyrouter_store::{
    Change, ChangeMeta, Commit, Snapshot, Store, StoreError, history_epoch, history_origin,
    next_history_epoch,
};
use routing_core::{Mutation, Revision, RoutingError, RoutingState, Scope};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::{self, Actor};

/// How long an admin call waits for its own change to reach this router's snapshot.
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Whether this is a resynchronisation from a snapshot rather than a change of the store's
    /// log: `before` and `after` may belong to two different lines of changes (after a rewind
    /// or an adopted history, even at the same revision), so nobody replays across it.
    pub resync: bool,
}

/// What a change was and why: `kind by actor: reason`.
fn cause(change: &Change) -> String {
    let meta = &change.meta;
    let mut cause = format!("{} by {}", audit::kind(&change.mutation), meta.actor);
    if !meta.reason.is_empty() {
        cause.push_str(": ");
        cause.push_str(&meta.reason);
    }
    cause
}

/// The applied changes kept for watchers, oldest first, with the memory each holds alone.
#[derive(Debug, Default)]
struct History {
    changes: VecDeque<Arc<AppliedChange>>,
    /// The estimated bytes of each change, in the same order.
    bytes: VecDeque<usize>,
    total_bytes: usize,
}

/// Where this replica stands in the store's history.
#[derive(Debug, Clone)]
struct Lineage {
    /// The history id its revisions belong to.
    history: String,
    /// The id of the last change applied (empty: unknown).
    head: String,
    /// Counts resynchronisations: changes pulled before one are stale.
    generation: u64,
}

/// Why this replica does not follow the store: the store holds another history.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Divergence {
    /// The history this replica follows.
    ours: String,
    /// The store's history (`None`: it has none, it was emptied).
    store: Option<String>,
    /// This replica's revision, kept meanwhile.
    revision: Revision,
}

impl Divergence {
    /// The refusal of a change while diverged: names both histories and what to do.
    fn refusal(&self) -> StoreError {
        let store = match &self.store {
            Some(history) => format!("history {history}"),
            None => "no history (it was emptied)".to_owned(),
        };
        StoreError::Unavailable(format!(
            "the store holds {store}, not history {} that this router follows (at revision \
             {}): it keeps routing from its last state and refuses changes until the \
             data is restored, or an operator adopts the store's history with `greyrouter store \
             adopt`",
            self.ours, self.revision
        ))
    }
}

/// Why a resynchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resync {
    /// The log does not continue from this replica (trimmed, a change that does not apply, a
    /// history id that moved): load a snapshot and see.
    Gap,
    /// The store lost changes this replica applied (it is behind, or on another line of
    /// changes): its revisions will be reused, so its history moves to a new epoch.
    Rewound,
}

/// What applying one pulled change came to.
enum Applying {
    /// Applied and published.
    Applied,
    /// A resynchronisation happened since the pull: the rest of it is stale.
    Stale,
    /// The change does not continue this replica's line: resynchronise.
    Resync(Resync, String),
}

/// What an operator's adoption of the store's history did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// The history given up.
    pub retired: String,
    /// The store's history, now followed.
    pub history: String,
    /// This replica's revision after adopting.
    pub revision: Revision,
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
    /// The store itself: following, committing.
    backend: Arc<dyn Store>,
    current: ArcSwap<RoutingState>,
    history: RwLock<History>,
    history_len: usize,
    history_bytes: usize,
    revision: watch::Sender<Revision>,
    /// The store's history followed and the last change applied: revisions compare only within
    /// one history.
    lineage: Mutex<Lineage>,
    /// Set while the store holds another history than the one followed.
    divergence: Arc<Mutex<Option<Divergence>>>,
    /// What [`Replica::store`] hands out: the store, refusing writes and failing its health
    /// check while diverged.
    guarded: Arc<dyn Store>,
    /// Serialises applying pulled changes and resynchronising.
    sync: tokio::sync::Mutex<()>,
    /// This replica, to start a resynchronisation in the background.
    me: Weak<Replica>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("store", &self.backend.describe())
            .field("revision", &*self.revision.borrow())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Loads the store's state; call [`Replica::follow`] to keep it current.
    ///
    /// The history keeps at most `history_len` changes and about `history_bytes` of memory that
    /// only old revisions hold (see [`RoutingState::superseded_bytes`]); the newest change is
    /// always kept.
    pub async fn load(
        store: Arc<dyn Store>,
        history_len: usize,
        history_bytes: usize,
    ) -> Result<Arc<Self>, StoreError> {
        // Starts a history on a new store.
        let started = store.history().await?;
        let Snapshot {
            state,
            history,
            head,
        } = store.snapshot().await?;
        let revision = state.revision();
        let divergence = Arc::new(Mutex::new(None));
        let guarded: Arc<dyn Store> = Arc::new(Guarded {
            inner: Arc::clone(&store),
            divergence: Arc::clone(&divergence),
        });
        let replica = Arc::new_cyclic(|me| Replica {
            lineage: Mutex::new(Lineage {
                history: history.unwrap_or(started),
                head,
                generation: 0,
            }),
            divergence,
            guarded,
            sync: tokio::sync::Mutex::new(()),
            me: me.clone(),
            backend: store,
            current: ArcSwap::from_pointee(state),
            history: RwLock::new(History::default()),
            history_len: history_len.max(1),
            history_bytes,
            revision: watch::Sender::new(revision),
        });
        replica.warm_history().await;
        Ok(replica)
    }

    /// Returns the id of the store's history this replica's revisions belong to (see
    /// [`Store::history`]); it changes when the replica resynchronises onto a new epoch or an
    /// adopted history.
    pub fn history_id(&self) -> String {
        self.lineage().history.clone()
    }

    fn lineage(&self) -> std::sync::MutexGuard<'_, Lineage> {
        self.lineage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn diverged(&self) -> Option<Divergence> {
        self.divergence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_divergence(&self, divergence: Option<Divergence>) {
        let mut current = self
            .divergence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != divergence {
            match &divergence {
                Some(d) => tracing::error!(
                    ours = %d.ours,
                    store = d.store.as_deref().unwrap_or("none"),
                    revision = d.revision,
                    "the store holds another history: routing continues from the last state, \
                     changes are refused until the data is restored or `greyrouter store adopt`"
                ),
                None if current.is_some() => {
                    tracing::info!("the store's history is followed again");
                }
                None => {}
            }
            *current = divergence;
        }
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

    /// Returns the store (refusing writes and failing [`Store::ping`] while this replica does
    /// not follow the store's history).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.guarded
    }

    /// Subscribes to the replica's revision.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    /// Commits a mutation to the store and waits until this replica has applied it, so that
    /// the caller's next read here sees its own write.
    ///
    /// When another router committed first, this replica catches up and validates again. The
    /// attempts and catching up are bounded by twice the store's write timeout. A store behind
    /// this replica (or on another line of changes) fails the commit at once and starts a
    /// resynchronisation; so does a replica that does not follow the store's history.
    ///
    /// Every commit, whoever asks (an admin call, the rollout driver, instance expiry, a seed),
    /// is counted in `grey_router_changes_total`.
    pub async fn commit(&self, mutation: Mutation, actor: &Actor) -> Result<Commit, StoreError> {
        let kind = audit::kind(&mutation);
        let result = self.commit_uncounted(mutation, actor).await;
        crate::telemetry::change(
            kind,
            result
                .as_ref()
                .map(|_| ())
                .map_err(crate::error::store_kind),
        );
        result
    }

    async fn commit_uncounted(
        &self,
        mutation: Mutation,
        actor: &Actor,
    ) -> Result<Commit, StoreError> {
        let budget = self
            .backend
            .write_timeout()
            .map_or(READ_YOUR_WRITES_TIMEOUT, |timeout| timeout * 2);
        let deadline = Instant::now() + budget;
        let mut attempts = 0;
        let commit = loop {
            if let Some(divergence) = self.diverged() {
                return Err(divergence.refusal());
            }
            let (base, head, generation) = {
                let lineage = self.lineage();
                (self.current(), lineage.head.clone(), lineage.generation)
            };
            // Validating here first spares the store a refused change, and gives the audit
            // trail the records before and after.
            let (after, _) = base.apply(&mutation)?;
            let meta = audit::meta(actor, &base, &after, &mutation, audit::now_ms());
            let attempt = self.commit_within(deadline, budget, &base, &head, &mutation, meta);
            match attempt.await {
                Err(StoreError::Conflict { current }) if current <= base.revision() => {
                    self.start_resync(Resync::Rewound, generation);
                    let why = if current < base.revision() {
                        format!(
                            "the store is at revision {current}, behind this router (at {})",
                            base.revision()
                        )
                    } else {
                        format!(
                            "the store's revision {current} is another change than this \
                             router's"
                        )
                    };
                    return Err(StoreError::Unavailable(format!(
                        "{why}: changes were lost (a failover of the store?); this router is \
                         resynchronising from the store: retry the change, with \
                         compare-and-set (expected_version), once it has"
                    )));
                }
                Err(StoreError::Conflict { current }) if attempts < MAX_COMMIT_ATTEMPTS => {
                    attempts += 1;
                    self.wait_for_revision(current, deadline, budget).await?;
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

    /// Runs one commit attempt, giving up at `deadline`.
    async fn commit_within(
        &self,
        deadline: Instant,
        budget: Duration,
        base: &RoutingState,
        head: &str,
        mutation: &Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        let attempt = self
            .backend
            .commit_after(base, head, mutation.clone(), meta);
        tokio::time::timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "the store did not answer within {budget:?}; the change may have been \
                     applied: read back before retrying (compare-and-set)"
                )))
            })
    }

    /// Waits until this replica has applied `revision`, at most until `deadline`.
    async fn wait_for_revision(
        &self,
        revision: Revision,
        deadline: Instant,
        budget: Duration,
    ) -> Result<(), StoreError> {
        let mut revisions = self.subscribe();
        tokio::time::timeout_at(deadline, revisions.wait_for(|&r| r >= revision))
            .await
            .map(|_| ())
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "this router has not caught up with revision {revision} of the store \
                     within {budget:?}"
                ))
            })
    }

    /// Returns how many changes the history keeps and their estimated bytes.
    pub fn history_footprint(&self) -> (usize, usize) {
        let history = self
            .history
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (history.changes.len(), history.total_bytes)
    }

    /// Returns the applied changes after `revision`, contiguous from it.
    pub fn changes_after(&self, revision: Revision) -> Replay {
        self.next_changes(revision, usize::MAX)
    }

    /// Returns at most `limit` applied changes after `revision`, contiguous from it.
    pub fn next_changes(&self, revision: Revision, limit: usize) -> Replay {
        let current = self.current.load().revision();
        if revision > current {
            return Replay::Ahead;
        }
        let history = self
            .history
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = &history.changes;
        // Only the changes since the last resynchronisation are one line of revisions. A
        // revision that an earlier line reached, or that lies between two lines, may name a
        // state of that earlier line: the caller needs a snapshot.
        let mut line = 0;
        if let Some(last) = changes.iter().rposition(|c| c.resync) {
            let reached = changes
                .iter()
                .take(last + 1)
                .filter(|c| c.resync)
                .map(|c| c.before.revision())
                .max()
                .unwrap_or(0);
            if revision <= reached || revision < changes[last].after.revision() {
                return Replay::Gone;
            }
            line = last + 1;
        }
        let mut start = changes.len();
        while start > line && changes[start - 1].after.revision() > revision {
            start -= 1;
        }
        let changes: Vec<Arc<AppliedChange>> =
            changes.range(start..).take(limit).cloned().collect();
        match changes.first() {
            None if revision == current => Replay::Changes(Vec::new()),
            Some(first) if first.before.revision() == revision => Replay::Changes(changes),
            _ => Replay::Gone,
        }
    }

    fn publish(&self, change: AppliedChange) {
        let revision = change.after.revision();
        self.current.store(Arc::clone(&change.after));
        self.remember(change);
        self.revision.send_replace(revision);
    }

    /// Keeps `change` in the bounded history.
    fn remember(&self, change: AppliedChange) {
        let mut history = self
            .history
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = std::mem::size_of::<AppliedChange>()
            + change.cause.len()
            + RoutingState::superseded_bytes(&change.before, &change.after, &change.scope);
        history.changes.push_back(Arc::new(change));
        history.bytes.push_back(bytes);
        history.total_bytes += bytes;
        while history.changes.len() > self.history_len
            || (history.total_bytes > self.history_bytes && history.changes.len() > 1)
        {
            history.changes.pop_front();
            if let Some(oldest) = history.bytes.pop_front() {
                history.total_bytes -= oldest;
            }
        }
    }

    /// Fills the history with the changes that led to the loaded state, as far as the store can
    /// rebuild the state before them from memory ([`Store::rebuildable_from`]): watchers
    /// resuming from a revision before this process started get those changes, not a snapshot.
    /// A store that keeps no past states leaves the history empty; nothing is read from disk,
    /// so a start is not slowed by it.
    async fn warm_history(&self) {
        let revision = self.current.load().revision();
        if revision == 0 {
            return;
        }
        let store = &self.backend;
        let Some(start) = store.rebuildable_from() else {
            return;
        };
        let mut from = revision.saturating_sub(self.history_len as u64).max(start);
        match store.changes_after(from, 1, Duration::ZERO).await {
            Ok(_) => {}
            Err(StoreError::Compacted { oldest, .. }) => from = from.max(oldest),
            Err(_) => return,
        }
        if from >= revision {
            return;
        }
        let Ok(base) = store.state_at(from).await else {
            return;
        };
        let mut changes = Vec::new();
        let mut at = from;
        while at < revision {
            match store.changes_after(at, 1_000, Duration::ZERO).await {
                Ok(batch) if !batch.is_empty() => {
                    at = batch.last().map_or(at, |c| c.revision);
                    changes.extend(batch.into_iter().filter(|c| c.revision <= revision));
                }
                _ => return,
            }
        }
        let mut before = Arc::new(base);
        let mut applied = Vec::with_capacity(changes.len());
        for change in &changes {
            let Ok((after, _)) = before.apply(&change.mutation) else {
                return;
            };
            if after.revision() != change.revision {
                return;
            }
            let after = Arc::new(after);
            applied.push(AppliedChange {
                before,
                after: Arc::clone(&after),
                scope: change.mutation.scope(),
                cause: cause(change),
                resync: false,
            });
            before = after;
        }
        // Only a history that ends where the loaded state is.
        if before.revision() != revision {
            return;
        }
        let count = applied.len();
        for change in applied {
            self.remember(change);
        }
        tracing::debug!(
            changes = count,
            from,
            "watch history rebuilt from the store's log"
        );
    }

    /// Follows the store until the task is dropped: applies changes as they are committed.
    pub async fn follow(self: Arc<Self>) {
        loop {
            if self.diverged().is_some() {
                self.recheck_divergence().await;
                continue;
            }
            let generation = self.lineage().generation;
            let after = self.current.load().revision();
            match self
                .backend
                .changes_after(after, PULL_LIMIT, PULL_WAIT)
                .await
            {
                Ok(changes) if changes.is_empty() => self.check_history(generation).await,
                Ok(changes) => self.apply_pulled(&changes, generation).await,
                Err(StoreError::Compacted { .. }) => {
                    let _sync = self.sync.lock().await;
                    self.resync_locked(Resync::Gap, generation).await;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot read changes from the store; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Applies pulled changes in order, resynchronising when one does not continue this
    /// replica's line.
    async fn apply_pulled(&self, changes: &[Change], generation: u64) {
        let _sync = self.sync.lock().await;
        for change in changes {
            match self.apply(change, generation) {
                Applying::Applied => {}
                Applying::Stale => return,
                Applying::Resync(why, reason) => {
                    tracing::warn!(revision = change.revision, %reason, "resynchronising");
                    self.resync_locked(why, generation).await;
                    return;
                }
            }
        }
    }

    /// With nothing new in the log: checks that the store's history id has not moved (a new
    /// epoch after another replica found changes lost, an emptied or replaced store).
    async fn check_history(&self, generation: u64) {
        let ours = self.history_id();
        match self.backend.current_history().await {
            Ok(Some(history)) if history == ours => {}
            Ok(_) => {
                let _sync = self.sync.lock().await;
                self.resync_locked(Resync::Gap, generation).await;
            }
            Err(err) => tracing::debug!(%err, "cannot read the store's history"),
        }
    }

    /// While diverged: waits, then resynchronises if the store's history is ours again
    /// (restored) or an operator adopted it.
    async fn recheck_divergence(&self) {
        tokio::time::sleep(RETRY_PAUSE).await;
        let Some(divergence) = self.diverged() else {
            return;
        };
        let generation = self.lineage().generation;
        let settled = match self.backend.current_history().await {
            Ok(Some(history)) if history_origin(&history) == history_origin(&divergence.ours) => {
                false
            }
            Ok(Some(history)) => match self
                .backend
                .adopted_history(history_origin(&divergence.ours))
                .await
            {
                Ok(Some(adopted)) if history_origin(&adopted) == history_origin(&history) => false,
                Ok(_) => {
                    self.set_divergence(Some(Divergence {
                        store: Some(history),
                        ..divergence
                    }));
                    true
                }
                Err(err) => {
                    tracing::debug!(%err, "cannot read the adopted histories");
                    true
                }
            },
            Ok(None) => {
                self.set_divergence(Some(Divergence {
                    store: None,
                    ..divergence
                }));
                true
            }
            Err(err) => {
                tracing::debug!(%err, "cannot read the store's history");
                true
            }
        };
        if !settled {
            let _sync = self.sync.lock().await;
            self.resync_locked(Resync::Gap, generation).await;
        }
    }

    /// Starts a resynchronisation in the background (unless one happened since `generation`).
    fn start_resync(&self, why: Resync, generation: u64) {
        if let Some(replica) = self.me.upgrade() {
            tokio::spawn(async move {
                let _sync = replica.sync.lock().await;
                replica.resync_locked(why, generation).await;
            });
        }
    }

    /// Applies one pulled change if it continues this replica's line (holding `sync`).
    fn apply(&self, change: &Change, generation: u64) -> Applying {
        let mut lineage = self.lineage();
        if lineage.generation != generation {
            return Applying::Stale;
        }
        let before = self.current();
        if change.revision != before.revision() + 1 {
            let gap = format!(
                "gap: at revision {}, next change is {}",
                before.revision(),
                change.revision
            );
            return Applying::Resync(Resync::Gap, gap);
        }
        if !change.history.is_empty() && change.history != lineage.history {
            let older = history_origin(&change.history) == history_origin(&lineage.history)
                && history_epoch(&change.history) < history_epoch(&lineage.history);
            // A change committed under an older epoch just before the store moved on continues
            // this line if its parent is the last change: anything else is another line.
            if !older || change.parent != lineage.head {
                let moved = format!(
                    "change {} belongs to history {}, this router follows {}",
                    change.revision, change.history, lineage.history
                );
                return Applying::Resync(Resync::Gap, moved);
            }
        }
        if !change.parent.is_empty() && !lineage.head.is_empty() && change.parent != lineage.head {
            let other = format!(
                "change {} follows change {}, not {} that this router applied: the store lost \
                 changes",
                change.revision, change.parent, lineage.head
            );
            return Applying::Resync(Resync::Rewound, other);
        }
        let after = match before.apply(&change.mutation) {
            Ok((after, _)) => after,
            Err(err) => return Applying::Resync(Resync::Gap, format!("cannot apply: {err}")),
        };
        lineage.head.clone_from(&change.id);
        let delay_ms = audit::now_ms().saturating_sub(change.meta.at_ms);
        metrics::histogram!(crate::telemetry::names::REPLICATION_DELAY)
            .record(delay_ms as f64 / 1000.0);
        self.publish(AppliedChange {
            before,
            after: Arc::new(after),
            scope: change.mutation.scope(),
            cause: cause(change),
            resync: false,
        });
        Applying::Applied
    }

    /// Replaces the state with a fresh snapshot from the store, unless a resynchronisation
    /// happened since `generation` (holding `sync`, so nothing is applied meanwhile).
    ///
    /// A snapshot of another history (or of an emptied store) is not adopted while this replica
    /// holds state, unless an operator adopted it: the replica then diverges. A store behind this
    /// replica, or found on another line of changes, moves to a new epoch of its history.
    async fn resync_locked(&self, why: Resync, generation: u64) {
        if self.lineage().generation != generation {
            return;
        }
        let snapshot = match self.backend.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(%err, "cannot load a snapshot; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                return;
            }
        };
        let before = self.current();
        let ours = self.history_id();
        let foreign = snapshot
            .history
            .as_deref()
            .is_none_or(|theirs| history_origin(theirs) != history_origin(&ours));
        let history = if foreign {
            match self.adoptable(&ours, snapshot.history.as_deref()).await {
                Some(history) => history,
                None if before.revision() == 0 => snapshot.history.clone().unwrap_or(ours),
                None => {
                    // An emptied or replaced store must not empty every router's routing
                    // table: keep routing from this replica until restored or adopted.
                    self.set_divergence(Some(Divergence {
                        ours,
                        store: snapshot.history,
                        revision: before.revision(),
                    }));
                    return;
                }
            }
        } else {
            let theirs = snapshot.history.clone().unwrap_or_default();
            let rewound = why == Resync::Rewound
                || snapshot.state.revision() < before.revision()
                || history_epoch(&theirs) < history_epoch(&ours);
            if rewound && history_epoch(&theirs) <= history_epoch(&ours) {
                let next = next_history_epoch(&theirs, &ours);
                match self.backend.rotate_history(&theirs, &next).await {
                    Ok(history) => history,
                    Err(err) => {
                        tracing::warn!(%err, "cannot move the store to a new history epoch");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        return;
                    }
                }
            } else {
                theirs
            }
        };
        let mut lineage = self.lineage();
        if lineage.generation != generation {
            return;
        }
        tracing::info!(
            from = before.revision(),
            to = snapshot.state.revision(),
            history = %history,
            previous = %lineage.history,
            "resynchronised from a snapshot"
        );
        lineage.history = history;
        lineage.head = snapshot.head;
        lineage.generation += 1;
        self.set_divergence(None);
        self.publish(AppliedChange {
            before,
            after: Arc::new(snapshot.state),
            scope: Scope::Everything,
            cause: String::new(),
            resync: true,
        });
    }

    /// Returns the store's history if an operator adopted it for routers following `ours`.
    async fn adoptable(&self, ours: &str, theirs: Option<&str>) -> Option<String> {
        let theirs = theirs?;
        match self.backend.adopted_history(history_origin(ours)).await {
            Ok(Some(adopted)) if history_origin(&adopted) == history_origin(theirs) => {
                Some(theirs.to_owned())
            }
            Ok(_) => None,
            Err(err) => {
                tracing::debug!(%err, "cannot read the adopted histories");
                None
            }
        }
    }

    /// Lets the replicas following the history `retired` (this replica's, when empty and it is
    /// diverged) adopt the store's current history: records the decision in the store, where
    /// every such replica finds it, and adopts it here at once.
    pub async fn adopt_store_history(&self, retired: &str) -> Result<Adoption, StoreError> {
        let retired = match (retired, self.diverged()) {
            ("", Some(divergence)) => divergence.ours,
            ("", None) => {
                return Err(RoutingError::FailedPrecondition(format!(
                    "this router follows the store's history {}: name the retired history to \
                     adopt the store's for",
                    self.history_id()
                ))
                .into());
            }
            (retired, _) => retired.to_owned(),
        };
        // An emptied store gets a history now.
        let history = self.backend.history().await?;
        if history_origin(&history) == history_origin(&retired) {
            return Err(RoutingError::FailedPrecondition(format!(
                "the store holds history {history}, of the same origin as {retired}: nothing to \
                 adopt"
            ))
            .into());
        }
        self.backend
            .adopt_history(history_origin(&retired), &history)
            .await?;
        tracing::warn!(%retired, %history, "adopted the store's history");
        if self
            .diverged()
            .is_some_and(|d| history_origin(&d.ours) == history_origin(&retired))
        {
            let _sync = self.sync.lock().await;
            let generation = self.lineage().generation;
            self.resync_locked(Resync::Gap, generation).await;
        }
        Ok(Adoption {
            retired,
            history: self.history_id(),
            revision: self.current().revision(),
        })
    }
}

/// The store as handed out by [`Replica::store`]: refuses writes and fails its health check
/// while the replica does not follow the store's history.
struct Guarded {
    inner: Arc<dyn Store>,
    divergence: Arc<Mutex<Option<Divergence>>>,
}

impl Guarded {
    fn check(&self) -> Result<(), StoreError> {
        let divergence = self
            .divergence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match divergence {
            Some(divergence) => Err(divergence.refusal()),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Store for Guarded {
    async fn load(&self) -> Result<RoutingState, StoreError> {
        self.inner.load().await
    }

    async fn commit(
        &self,
        base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.check()?;
        self.inner.commit(base, mutation, meta).await
    }

    async fn commit_after(
        &self,
        base: &RoutingState,
        head: &str,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.check()?;
        self.inner.commit_after(base, head, mutation, meta).await
    }

    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        self.inner.changes_after(after, limit, wait).await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.lease(name, holder, ttl).await
    }

    /// Fails while diverged: the Admin service (writes) is then `NOT_SERVING`.
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        self.inner.head_revision().await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn history(&self) -> Result<String, StoreError> {
        self.inner.history().await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.inner.snapshot().await
    }

    async fn current_history(&self) -> Result<Option<String>, StoreError> {
        self.inner.current_history().await
    }

    async fn rotate_history(&self, from: &str, to: &str) -> Result<String, StoreError> {
        self.inner.rotate_history(from, to).await
    }

    async fn adopt_history(&self, retired_origin: &str, history: &str) -> Result<(), StoreError> {
        self.inner.adopt_history(retired_origin, history).await
    }

    async fn adopted_history(&self, retired_origin: &str) -> Result<Option<String>, StoreError> {
        self.inner.adopted_history(retired_origin).await
    }

    async fn state_at(&self, revision: Revision) -> Result<RoutingState, StoreError> {
        self.inner.state_at(revision).await
    }

    fn rebuildable_from(&self) -> Option<Revision> {
        self.inner.rebuildable_from()
    }

    fn write_timeout(&self) -> Option<Duration> {
        self.inner.write_timeout()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use greyrouter_store::MemoryStore;
    use routing_core::Tenant;

    use super::*;

    fn tenant(id: &str) -> Mutation {
        Mutation::UpsertTenant {
            tenant: Tenant {
                id: id.to_owned(),
                name: format!("Tenant {id}"),
                region: "eu".to_owned(),
                tier: "pro".to_owned(),
                labels: BTreeMap::new(),
                active: true,
            },
        }
    }

    const WRITE_TIMEOUT: Duration = Duration::from_millis(200);

    /// An embedded store whose commits meet a scripted conflict, and whose next snapshot can
    /// be another state (the store after a failover that lost changes).
    struct Scripted {
        inner: MemoryStore,
        /// Answers every commit with a conflict at this revision...
        conflict_at: Mutex<Option<Revision>>,
        /// ... or at the base's revision + 1 (another router always first).
        always_behind: bool,
        next_snapshot: Mutex<Option<Snapshot>>,
    }

    impl Scripted {
        fn new(inner: MemoryStore) -> Scripted {
            Scripted {
                inner,
                conflict_at: Mutex::new(None),
                always_behind: false,
                next_snapshot: Mutex::new(None),
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for Scripted {
        async fn load(&self) -> Result<RoutingState, StoreError> {
            self.inner.load().await
        }

        async fn commit(
            &self,
            base: &RoutingState,
            mutation: Mutation,
            meta: ChangeMeta,
        ) -> Result<Commit, StoreError> {
            if let Some(current) = *self.conflict_at.lock().expect("lock") {
                return Err(StoreError::Conflict { current });
            }
            if self.always_behind {
                return Err(StoreError::Conflict {
                    current: base.revision() + 1,
                });
            }
            self.inner.commit(base, mutation, meta).await
        }

        async fn changes_after(
            &self,
            after: Revision,
            limit: usize,
            wait: Duration,
        ) -> Result<Vec<Change>, StoreError> {
            self.inner.changes_after(after, limit, wait).await
        }

        async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
            self.inner.lease(name, holder, ttl).await
        }

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }

        fn describe(&self) -> String {
            "scripted".to_owned()
        }

        async fn history(&self) -> Result<String, StoreError> {
            self.inner.history().await
        }

        async fn snapshot(&self) -> Result<Snapshot, StoreError> {
            let next = self.next_snapshot.lock().expect("lock").take();
            match next {
                Some(snapshot) => Ok(snapshot),
                None => self.inner.snapshot().await,
            }
        }

        async fn rotate_history(&self, _from: &str, to: &str) -> Result<String, StoreError> {
            Ok(to.to_owned())
        }

        fn write_timeout(&self) -> Option<Duration> {
            Some(WRITE_TIMEOUT)
        }
    }

    async fn populated(tenants: usize) -> MemoryStore {
        let store = MemoryStore::default();
        for i in 0..tenants {
            let base = store.load().await.expect("load");
            store
                .commit(&base, tenant(&format!("t{i}")), ChangeMeta::default())
                .await
                .expect("commit");
        }
        store
    }

    /// Regression: a commit that met a store behind this router waited
    /// for the router to "catch up" with a revision it already had (up to 5 s per attempt),
    /// then failed saying it had not caught up.
    #[tokio::test]
    async fn a_store_behind_this_router_fails_the_commit_at_once_and_resynchronises() {
        let scripted = Arc::new(Scripted::new(populated(3).await));
        let history = scripted.inner.history().await.expect("history");
        let replica = Replica::load(Arc::clone(&scripted) as Arc<dyn Store>, 100, 1 << 20)
            .await
            .expect("load");
        assert_eq!(replica.current().revision(), 3);
        // The store fails over to a copy that lost revisions 2 and 3.
        let lost = populated(1).await.snapshot().await.expect("snapshot");
        *scripted.next_snapshot.lock().expect("lock") = Some(Snapshot {
            history: Some(history.clone()),
            ..lost
        });
        *scripted.conflict_at.lock().expect("lock") = Some(1);
        let mut revisions = replica.subscribe();

        let started = std::time::Instant::now();
        let err = replica
            .commit(tenant("t9"), &Actor::system("test", ""))
            .await
            .expect_err("the store is behind");
        let took = started.elapsed();
        assert!(took < WRITE_TIMEOUT, "failing took {took:?}");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            text.contains("the store is at revision 1, behind this router (at 3)")
                && text.contains("resynchronising"),
            "{text}"
        );

        // The resynchronisation started by the refusal: the store's state, a new epoch.
        tokio::time::timeout(Duration::from_secs(5), revisions.wait_for(|&r| r == 1))
            .await
            .expect("resynchronised")
            .expect("revision");
        assert_eq!(replica.history_id(), format!("{history}.1"));
        assert!(matches!(replica.changes_after(3), Replay::Ahead));
        assert!(matches!(replica.changes_after(1), Replay::Gone));
    }

    /// Regression: a commit retried after conflicts could wait 5 s per
    /// attempt for this replica to catch up, far past the store's command timeout.
    #[tokio::test]
    async fn a_commit_gives_up_within_twice_the_store_write_timeout() {
        let mut scripted = Scripted::new(populated(2).await);
        scripted.always_behind = true;
        let replica = Replica::load(Arc::new(scripted), 100, 1 << 20)
            .await
            .expect("load");
        let started = std::time::Instant::now();
        let err = replica
            .commit(tenant("t9"), &Actor::system("test", ""))
            .await
            .expect_err("never catches up");
        let took = started.elapsed();
        assert!(
            took < WRITE_TIMEOUT * 2 + Duration::from_millis(150),
            "gave up after {took:?}"
        );
        assert!(
            err.to_string()
                .contains("has not caught up with revision 3 of the store within 400ms"),
            "{err}"
        );
    }

    /// The next change in the log follows a change this replica never applied: the store lost
    /// the replica's last changes and another router's change reused their revisions.
    #[tokio::test]
    async fn a_change_on_another_line_resynchronises_onto_a_new_epoch() {
        let scripted = Arc::new(Scripted::new(populated(3).await));
        let history = scripted.inner.history().await.expect("history");
        let replica = Replica::load(Arc::clone(&scripted) as Arc<dyn Store>, 100, 1 << 20)
            .await
            .expect("load");
        let mut change = scripted
            .inner
            .changes_after(2, 1, Duration::ZERO)
            .await
            .expect("changes")
            .remove(0);
        change.revision = 4;
        change.mutation = tenant("t9");
        change.parent = "a-change-never-applied-here".to_owned();
        change.id = "another-line".to_owned();
        let mut revisions = replica.subscribe();
        revisions.borrow_and_update();
        let generation = replica.lineage().generation;
        replica.apply_pulled(&[change], generation).await;
        revisions.changed().await.expect("published");
        assert_eq!(replica.current().revision(), 3, "the store's snapshot");
        assert!(replica.current().tenant("t9").is_none());
        assert_eq!(replica.history_id(), format!("{history}.1"));
        assert!(matches!(replica.changes_after(3), Replay::Gone));
    }

    fn applied(before: &Arc<RoutingState>, id: &str) -> AppliedChange {
        let (after, _) = before.apply(&tenant(id)).expect("apply");
        AppliedChange {
            before: Arc::clone(before),
            after: Arc::new(after),
            scope: tenant(id).scope(),
            cause: String::new(),
            resync: false,
        }
    }

    /// A watcher at a revision that the line before a resynchronisation reached cannot be
    /// replayed to: the same revision may name another state now.
    #[tokio::test]
    async fn changes_are_never_replayed_across_a_resynchronisation() {
        let replica = Replica::load(Arc::new(MemoryStore::default()), 100, 1 << 20)
            .await
            .expect("load");
        for id in ["a", "b", "c"] {
            replica.publish(applied(&replica.current(), id));
        }
        assert!(matches!(replica.changes_after(1), Replay::Changes(c) if c.len() == 2));
        // The store lost revisions 2 and 3; another line reaches 2, then 3 and 4.
        let mut other = Arc::new(RoutingState::default());
        for id in ["x", "y"] {
            other = Arc::clone(&applied(&other, id).after);
        }
        replica.publish(AppliedChange {
            before: replica.current(),
            after: Arc::clone(&other),
            scope: Scope::Everything,
            cause: String::new(),
            resync: true,
        });
        for id in ["z", "w"] {
            replica.publish(applied(&replica.current(), id));
        }
        assert_eq!(replica.current().revision(), 4);
        for revision in [0, 1, 2, 3] {
            assert!(
                matches!(replica.changes_after(revision), Replay::Gone),
                "revision {revision}"
            );
        }
        assert!(matches!(replica.changes_after(4), Replay::Changes(c) if c.is_empty()));
        replica.publish(applied(&replica.current(), "v"));
        match replica.changes_after(4) {
            Replay::Changes(changes) => {
                assert_eq!(changes.len(), 1);
                assert!(!changes[0].resync);
                assert_eq!(changes[0].after.revision(), 5);
            }
            other => panic!("expected a replay, got {other:?}"),
        }
    }
}
