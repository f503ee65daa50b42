//! Watchers of effective assignments: a snapshot or a replay from a revision, then every change
//! that alters what a watcher follows, queued within a memory budget.
//!
//! The machinery knows nothing of the wire: a front door supplies [`Frames`], which turn one
//! [`Update`] into its message (a protobuf `AssignmentUpdate`, a JSON event) and say how much
//! memory a queued message takes. [`crate::Node::watch`] checks a request and starts a
//! [`Watcher`]; the front door reads the queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use routing_core::watch::{self, AssignmentFilter, EffectiveAssignment};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::replica::{Replay, Replica};
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
    /// The encoded message.
    type Frame: Send + 'static;

    /// Encodes one update.
    fn frame(&self, update: &Update<'_>) -> Self::Frame;

    /// Estimates the memory a message takes while it waits in a watcher's queue.
    fn memory_bytes(&self, frame: &Self::Frame) -> usize;
}

/// A message queued for a watcher, with the share of the watcher's byte budget it holds until
/// the front door hands it to its transport (drop the permit then).
pub type Queued<F> = (F, OwnedSemaphorePermit);

/// Settings of watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLimits {
    /// Memory the messages queued for one watcher may take, in bytes.
    pub max_queued_bytes: usize,
    /// Most assignments in one message; larger updates are split.
    pub max_assignments_per_message: usize,
    /// Messages buffered per watcher.
    pub buffer: usize,
}

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
                        let diff =
                            watch::diff(&change.before, &change.after, &change.scope, &self.filter);
                        if !diff.is_empty() {
                            let sent = self
                                .send(
                                    change.after.revision(),
                                    &diff.upserts,
                                    &diff.removals,
                                    &change.cause,
                                )
                                .await;
                            if !sent {
                                return;
                            }
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
    /// The snapshot is built one message at a time as the queue makes room, so a watcher that
    /// does not read holds its queue and one message, never the whole snapshot.
    async fn send_snapshot(&self) -> Option<u64> {
        let state = self.replica.current();
        let revision = state.revision();
        let history = self.replica.history_id();
        let mut pairs = watch::assignments(&state, &self.filter).peekable();
        loop {
            let upserts: Vec<EffectiveAssignment> = pairs.by_ref().take(self.chunk).collect();
            let partial = pairs.peek().is_some();
            let message = self.frames.frame(&Update {
                revision,
                snapshot: true,
                upserts: &upserts,
                removals: &[],
                partial,
                cause: "",
                history: &history,
            });
            if !self.queue_message(message).await {
                return None;
            }
            if !partial {
                return Some(revision);
            }
        }
    }

    /// Sends one revision's update, split into messages of at most `chunk` assignments, each
    /// built only when the previous one is queued.
    async fn send(
        &self,
        revision: u64,
        upserts: &[EffectiveAssignment],
        removals: &[(String, String)],
        cause: &str,
    ) -> bool {
        let history = self.replica.history_id();
        let upsert_chunks: Vec<&[EffectiveAssignment]> = upserts.chunks(self.chunk).collect();
        let removal_chunks: Vec<&[(String, String)]> = removals.chunks(self.chunk).collect();
        let count = upsert_chunks.len() + removal_chunks.len();
        let message = |upserts, removals, index: usize| {
            self.frames.frame(&Update {
                revision,
                snapshot: false,
                upserts,
                removals,
                partial: index + 1 < count,
                cause,
                history: &history,
            })
        };
        if count == 0 {
            // An empty update still tells the client where it stands.
            return self.queue_message(message(&[], &[], 0)).await;
        }
        for (index, chunk) in upsert_chunks.iter().enumerate() {
            if !self.queue_message(message(chunk, &[], index)).await {
                return false;
            }
        }
        for (index, chunk) in removal_chunks.iter().enumerate() {
            let index = upsert_chunks.len() + index;
            if !self.queue_message(message(&[], chunk, index)).await {
                return false;
            }
        }
        true
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
