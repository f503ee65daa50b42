//! Watchers of effective assignments: a snapshot or a replay from a revision, then every change
//! that alters what a watcher follows, queued within a memory budget.
//!
//! The machinery knows nothing of the wire: a front door supplies [`Frames`], which turn one
//! [`Update`] into its message (a protobuf `AssignmentUpdate`, a JSON event) and say how much
//! memory a queued message takes. [`crate::Node::watch`] checks a request and starts a
//! [`Watcher`]; the front door reads the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use routing_core::RoutingState;
use routing_core::watch::{self, AssignmentFilter, EffectiveAssignment};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::replica::{AppliedChange, Replay, Replica};
use crate::telemetry;

/// Changes a watcher takes from the history at once.
pub const REPLAY_BATCH: usize = 16;

/// One message of a watch stream, before a front door encodes it.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    /// The revision the message brings the watcher to.
    pub revision: u64,
    /// Whether it is (part of) a snapshot that replaces everything the watcher holds.
    pub snapshot: bool,
    /// Assignments added or changed.
    pub upserts: &'a [EffectiveAssignment],
    /// (tenant, service) pairs that no longer have an assignment.
    pub removals: &'a [(String, String)],
    /// Whether more messages of the same revision follow.
    pub partial: bool,
    /// What caused the change (a mutation kind), empty for snapshots.
    pub cause: &'a str,
    /// The store history the revision belongs to.
    pub history: &'a str,
}

/// How a front door encodes watch messages.
pub trait Frames: Send + Sync + 'static {
    /// The encoded message; a clone should share it (bytes behind a reference count).
    type Frame: Clone + Send + Sync + 'static;

    /// Encodes one update.
    fn frame(&self, update: &Update<'_>) -> Self::Frame;

    /// Estimates the memory a message takes while it waits in a watcher's queue.
    fn memory_bytes(&self, frame: &Self::Frame) -> usize;

    /// Where messages built for one watcher are kept for the other watchers of the same
    /// filter; `None`: every watcher builds its own.
    fn shared(&self) -> Option<&SharedMessages<Self::Frame>> {
        None
    }
}

/// Messages built once for every watcher of the same filter: a snapshot at a revision, or the
/// messages of one change. The first watcher that needs them builds them while the others
/// wait; all then queue clones of the same encoded messages. The latest entries are kept for
/// watchers that come a little later (a snapshot while its revision is current), all within a
/// byte budget: kept entries give way, oldest first, to new ones, and past the budget watchers
/// build their own, one message at a time, as without sharing.
pub struct SharedMessages<F> {
    entries: Mutex<Entries<F>>,
    /// Bytes of the messages alive in entries.
    held: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// Entries of shared messages.
struct Entries<F> {
    /// Every entry still held by someone, by (filter, revision, snapshot).
    live: HashMap<(AssignmentFilter, u64, bool), Weak<SharedEntry<F>>>,
    /// The latest entries, kept whether or not a watcher holds them, oldest first.
    kept: VecDeque<Arc<SharedEntry<F>>>,
}

/// Most entries kept for watchers that come later.
const KEPT_ENTRIES: usize = 64;

/// The messages of one snapshot or change, once built.
struct SharedEntry<F> {
    /// The state they were built from (a resynchronisation may bring another state at the same
    /// revision).
    state: Arc<RoutingState>,
    snapshot: bool,
    messages: tokio::sync::OnceCell<Option<Built<F>>>,
}

/// Built messages and the bytes they hold of the budget.
struct Built<F> {
    messages: Vec<F>,
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl<F> Drop for Built<F> {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl<F> SharedMessages<F> {
    /// Shares messages within `max_bytes` of encoded messages alive at once.
    pub fn new(max_bytes: usize) -> Self {
        SharedMessages {
            entries: Mutex::new(Entries {
                live: HashMap::new(),
                kept: VecDeque::new(),
            }),
            held: Arc::new(AtomicUsize::new(0)),
            max_bytes,
        }
    }

    /// Another set of shared messages (of another encoding) within the same budget: the bytes
    /// alive in both count against it.
    pub fn sharing_budget(&self) -> Self {
        SharedMessages {
            entries: Mutex::new(Entries {
                live: HashMap::new(),
                kept: VecDeque::new(),
            }),
            held: Arc::clone(&self.held),
            max_bytes: self.max_bytes,
        }
    }

    /// Bytes of the shared messages alive now (in every set sharing the budget).
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<F>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns the entry of (filter, revision, snapshot) built from `state`, making it if none
    /// is alive; `None` when nothing is shared, or another state holds the key (a
    /// resynchronisation in between).
    fn entry(
        &self,
        filter: &AssignmentFilter,
        state: &Arc<RoutingState>,
        snapshot: bool,
    ) -> Option<Arc<SharedEntry<F>>> {
        if self.max_bytes == 0 {
            return None;
        }
        let mut entries = self.lock();
        if snapshot {
            // Snapshots are of the current state: older ones are of no use to anyone coming.
            let revision = state.revision();
            entries
                .kept
                .retain(|entry| !entry.snapshot || entry.state.revision() >= revision);
        }
        let key = (filter.clone(), state.revision(), snapshot);
        if let Some(entry) = entries.live.get(&key).and_then(Weak::upgrade) {
            return Arc::ptr_eq(&entry.state, state).then_some(entry);
        }
        // Entries nobody holds any more go as new ones come.
        entries.live.retain(|_, entry| entry.strong_count() > 0);
        let entry = Arc::new(SharedEntry {
            state: Arc::clone(state),
            snapshot,
            messages: tokio::sync::OnceCell::new(),
        });
        entries.live.insert(key, Arc::downgrade(&entry));
        entries.kept.push_back(Arc::clone(&entry));
        if entries.kept.len() > KEPT_ENTRIES {
            entries.kept.pop_front();
        }
        Some(entry)
    }

    /// Lets kept entries go, oldest first, until the messages alive fit the budget; returns
    /// whether they do.
    fn make_room(&self) -> bool {
        loop {
            if self.held_bytes() <= self.max_bytes {
                return true;
            }
            // Dropped outside the lock.
            let Some(oldest) = self.lock().kept.pop_front() else {
                return false;
            };
            drop(oldest);
        }
    }
}

/// A message queued for a watcher, with the share of the watcher's byte budget it holds until
/// the front door hands it to its transport (drop the permit then).
pub type Queued<F> = (F, OwnedSemaphorePermit);

/// Settings of watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLimits {
    /// Memory the messages queued for one watcher may take, in bytes.
    pub max_queued_bytes: usize,
    /// Memory of the encoded messages shared by watchers of the same filter, in bytes (0:
    /// nothing shared).
    pub max_shared_bytes: usize,
    /// Most assignments in one message; larger updates are split.
    pub max_assignments_per_message: usize,
    /// Messages buffered per watcher.
    pub buffer: usize,
}

/// Assignments and removals of one message.
type Part<'a> = (&'a [EffectiveAssignment], &'a [(String, String)]);

/// One watch: sends a snapshot or a replay, then every change that alters what it follows.
pub struct Watcher<F: Frames> {
    replica: Arc<Replica>,
    filter: AssignmentFilter,
    chunk: usize,
    sender: mpsc::Sender<Queued<F::Frame>>,
    /// Bytes of queued messages this watcher may hold.
    queue: Arc<Semaphore>,
    max_queued_bytes: usize,
    closing: tokio::sync::watch::Receiver<bool>,
    frames: F,
}

impl<F: Frames> Watcher<F> {
    /// Returns a watcher of `filter` over `replica`, and the queue its messages arrive on.
    /// It stops when `closing` turns true or the queue's receiver is dropped; dropping its
    /// sender then ends the queue.
    pub fn new(
        replica: Arc<Replica>,
        filter: AssignmentFilter,
        limits: &WatchLimits,
        closing: tokio::sync::watch::Receiver<bool>,
        frames: F,
    ) -> (Self, mpsc::Receiver<Queued<F::Frame>>) {
        let (sender, receiver) = mpsc::channel(limits.buffer.max(1));
        let watcher = Watcher {
            replica,
            filter,
            chunk: limits.max_assignments_per_message.max(1),
            sender,
            queue: Arc::new(Semaphore::new(limits.max_queued_bytes)),
            max_queued_bytes: limits.max_queued_bytes.max(1),
            closing,
            frames,
        };
        (watcher, receiver)
    }

    /// The semaphore of the byte budget (for tests that watch it fill).
    pub fn budget(&self) -> Arc<Semaphore> {
        Arc::clone(&self.queue)
    }

    /// Follows changes from `from_revision` (0: a snapshot first) until closed or abandoned.
    pub async fn run(self, from_revision: u64) {
        let mut closing = self.closing.clone();
        let _open = OpenStream::new();
        // Dropping the sender on return ends the queue.
        tokio::select! {
            () = self.follow(from_revision) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }

    async fn follow(&self, from_revision: u64) {
        let mut revisions = self.replica.subscribe();
        let mut at = if from_revision == 0 {
            match self.send_snapshot().await {
                Some(revision) => revision,
                None => return,
            }
        } else {
            from_revision
        };
        loop {
            // A few changes at a time: a watcher waiting for room must not keep alive many
            // revisions that the history has let go.
            match self.replica.next_changes(at, REPLAY_BATCH) {
                Replay::Changes(changes) => {
                    let more = changes.len() == REPLAY_BATCH;
                    let mut changes = VecDeque::from(changes);
                    while let Some(change) = changes.pop_front() {
                        if !self.send_change(&change).await {
                            return;
                        }
                        at = change.after.revision();
                    }
                    if more {
                        // The history may hold more: take them before waiting.
                        continue;
                    }
                }
                // Too slow to keep up with the kept history: start over from a snapshot.
                Replay::Gone | Replay::Ahead => {
                    metrics::counter!(telemetry::names::WATCH_SNAPSHOTS).increment(1);
                    match self.send_snapshot().await {
                        Some(revision) => at = revision,
                        None => return,
                    }
                }
            }
            // Wake on every publication, not only a higher revision: a resynchronisation may
            // land on this revision or below it, and changes_after then answers Gone or Ahead.
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.sender.closed() => return,
            }
        }
    }

    /// Sends the current snapshot; returns its revision, or `None` when the client left.
    ///
    /// Shared, the snapshot's messages are built once for every watcher of the same filter.
    /// Otherwise they are built one at a time as the queue makes room, so a watcher that does
    /// not read holds its queue and one message, never the whole snapshot.
    async fn send_snapshot(&self) -> Option<u64> {
        let state = self.replica.current();
        let revision = state.revision();
        let history = self.replica.history_id();
        let sent = match self.shared_entry(&state, true) {
            Some(entry) => {
                let built = entry
                    .messages
                    .get_or_init(|| async { self.build(self.snapshot_messages(&state, &history)) })
                    .await;
                match built {
                    Some(built) => Some(self.queue_all(built).await),
                    None => None,
                }
            }
            None => None,
        };
        let sent = match sent {
            Some(sent) => sent,
            None => {
                self.queue_each(self.snapshot_messages(&state, &history))
                    .await
            }
        };
        sent.then_some(revision)
    }

    /// Sends what a change altered of what this watcher follows; returns false when the client
    /// left.
    async fn send_change(&self, change: &AppliedChange) -> bool {
        let history = self.replica.history_id();
        let revision = change.after.revision();
        let diff = || watch::diff(&change.before, &change.after, &change.scope, &self.filter);
        if let Some(entry) = self.shared_entry(&change.after, false) {
            let built = entry
                .messages
                .get_or_init(|| async {
                    let diff = diff();
                    if diff.is_empty() {
                        return self.build(std::iter::empty());
                    }
                    let messages = self.change_messages(
                        revision,
                        &diff.upserts,
                        &diff.removals,
                        &change.cause,
                        &history,
                    );
                    self.build(messages)
                })
                .await;
            if let Some(built) = built {
                return self.queue_all(built).await;
            }
        }
        let diff = diff();
        if diff.is_empty() {
            return true;
        }
        let messages = self.change_messages(
            revision,
            &diff.upserts,
            &diff.removals,
            &change.cause,
            &history,
        );
        self.queue_each(messages).await
    }

    /// The entry of shared messages for this watcher's filter at `state`, if messages are
    /// shared.
    fn shared_entry(
        &self,
        state: &Arc<RoutingState>,
        snapshot: bool,
    ) -> Option<Arc<SharedEntry<F::Frame>>> {
        self.frames
            .shared()
            .and_then(|shared| shared.entry(&self.filter, state, snapshot))
    }

    /// Builds messages to share, or `None` when they would not fit the shared budget.
    fn build(&self, messages: impl Iterator<Item = F::Frame>) -> Option<Built<F::Frame>> {
        let shared = self.frames.shared()?;
        let mut built = Built {
            messages: Vec::new(),
            bytes: 0,
            held: Arc::clone(&shared.held),
        };
        for message in messages {
            let bytes = self.frames.memory_bytes(&message);
            built.bytes += bytes;
            // Dropping `built` gives back what it took.
            if shared.held.fetch_add(bytes, Ordering::Relaxed) + bytes > shared.max_bytes
                && !shared.make_room()
            {
                return None;
            }
            built.messages.push(message);
        }
        metrics::counter!(telemetry::names::WATCH_SHARED_BUILDS).increment(1);
        Some(built)
    }

    /// Queues clones of shared messages; returns false when the client left.
    async fn queue_all(&self, built: &Built<F::Frame>) -> bool {
        self.queue_each(built.messages.iter().cloned()).await
    }

    /// Queues messages built one at a time, each once the previous one is queued; returns
    /// false when the client left.
    async fn queue_each(&self, messages: impl Iterator<Item = F::Frame> + Send) -> bool {
        for message in messages {
            if !self.queue_message(message).await {
                return false;
            }
        }
        true
    }

    /// The messages of a snapshot of `state`, built as they are taken.
    fn snapshot_messages<'s>(
        &'s self,
        state: &'s RoutingState,
        history: &'s str,
    ) -> impl Iterator<Item = F::Frame> + Send + 's {
        let revision = state.revision();
        let mut pairs = watch::assignments(state, &self.filter).peekable();
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let upserts: Vec<EffectiveAssignment> = pairs.by_ref().take(self.chunk).collect();
            let partial = pairs.peek().is_some();
            done = !partial;
            Some(self.frames.frame(&Update {
                revision,
                snapshot: true,
                upserts: &upserts,
                removals: &[],
                partial,
                cause: "",
                history,
            }))
        })
    }

    /// The messages of one revision's update, at most `chunk` assignments each (one empty
    /// message when there is nothing: it still tells the client where it stands), built as
    /// they are taken.
    fn change_messages<'s>(
        &'s self,
        revision: u64,
        upserts: &'s [EffectiveAssignment],
        removals: &'s [(String, String)],
        cause: &'s str,
        history: &'s str,
    ) -> impl Iterator<Item = F::Frame> + Send + 's {
        let upsert_chunks = upserts.chunks(self.chunk).map(|chunk| (chunk, &[][..]));
        let removal_chunks = removals.chunks(self.chunk).map(|chunk| (&[][..], chunk));
        let count = upserts.len().div_ceil(self.chunk) + removals.len().div_ceil(self.chunk);
        let nothing: Option<Part<'_>> = (count == 0).then_some((&[], &[]));
        let parts = upsert_chunks.chain(removal_chunks).chain(nothing);
        parts.enumerate().map(move |(index, (upserts, removals))| {
            self.frames.frame(&Update {
                revision,
                snapshot: false,
                upserts,
                removals,
                partial: index + 1 < count,
                cause,
                history,
            })
        })
    }

    /// Queues one message once the watcher's byte budget has room for it (a message larger
    /// than the whole budget waits for an empty queue); returns false when the client left.
    async fn queue_message(&self, message: F::Frame) -> bool {
        let bytes = self
            .frames
            .memory_bytes(&message)
            .clamp(1, self.max_queued_bytes);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            permit = Arc::clone(&self.queue).acquire_many_owned(bytes) => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            () = self.sender.closed() => return false,
        };
        let sent = self.sender.send((message, permit)).await.is_ok();
        if sent {
            metrics::counter!(telemetry::names::WATCH_MESSAGES).increment(1);
        }
        sent
    }
}

/// Watch streams open in this process, read when metrics are scraped (a gauge moved up and
/// down in the recorder would start over from 0 if the recorder dropped it while idle).
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Returns the watch streams open in this process.
pub fn open_streams() -> usize {
    OPEN_STREAMS.load(Ordering::Relaxed)
}

/// Counts one open watch stream while alive.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}
