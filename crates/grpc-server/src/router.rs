//! The `Router` service: `Route` and `WatchAssignments`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::router_server::Router;
use routing_core::watch::{self, AssignmentFilter, EffectiveAssignment};
use routing_core::{RouteQuery, RoutingError, RoutingState, validate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audit::now_ms;
use crate::config::{Limits, WatchConfig};
use crate::convert;
use crate::outcomes::Outcomes;
use crate::replica::{Replay, Replica};
use crate::status;

/// Serves `greyrouter.v1.Router` from the replica's snapshot.
#[derive(Debug, Clone)]
pub struct RouterService {
    replica: Arc<Replica>,
    outcomes: Arc<Outcomes>,
    limits: Limits,
    watch: WatchConfig,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl RouterService {
    /// Returns the service over a replica. Watch streams end with `UNAVAILABLE` once
    /// `closing` turns true, so that a graceful shutdown does not wait for watchers.
    pub fn new(
        replica: Arc<Replica>,
        outcomes: Arc<Outcomes>,
        limits: Limits,
        watch: WatchConfig,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        RouterService {
            replica,
            outcomes,
            limits,
            watch,
            closing,
        }
    }
}

/// Most decisions in one `RouteBatch`.
const MAX_BATCH: usize = 1000;

impl RouterService {
    /// Checks a request and decides it on `state`.
    fn decide(
        &self,
        state: &RoutingState,
        request: &pb::RouteRequest,
        now_ms: u64,
    ) -> Result<pb::RouteResponse, Status> {
        let check = || {
            validate::name("tenant_id", &request.tenant_id)?;
            validate::name("service", &request.service)?;
            validate::optional_name("region", &request.region)?;
            validate::text("hash_key", &request.hash_key)?;
            convert::metadata(
                &request.metadata,
                self.limits.max_metadata_entries,
                self.limits.max_metadata_bytes,
            )?;
            convert::strategy("strategy", request.strategy)
        };
        let strategy = check().map_err(|e| status::routing(&e))?;
        let decision = state
            .route(&RouteQuery {
                tenant_id: &request.tenant_id,
                service: &request.service,
                region: &request.region,
                hash_key: &request.hash_key,
                strategy,
                entropy: entropy(),
                now_ms,
            })
            .map_err(|e| status::routing(&e))?;
        decision.member.load.start();
        let instance = &decision.member.instance;
        Ok(pb::RouteResponse {
            instance_id: instance.id.clone(),
            address: instance.address.clone(),
            version: decision.resolution.version,
            source: decision.resolution.source.to_string(),
            revision: decision.revision,
        })
    }
}

thread_local! {
    static ENTROPY: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64));
}

/// Returns a fresh random value (splitmix64 over a per-thread seed).
fn entropy() -> u64 {
    ENTROPY.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        routing_core::hash::fmix64(next)
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let state = self.replica.snapshot();
        self.decide(&state, &request.into_inner(), now_ms())
            .map(Response::new)
    }

    async fn route_batch(
        &self,
        request: Request<pb::RouteBatchRequest>,
    ) -> Result<Response<pb::RouteBatchResponse>, Status> {
        let requests = request.into_inner().requests;
        if requests.len() > MAX_BATCH {
            return Err(status::invalid_argument(
                "requests",
                &format!("at most {MAX_BATCH} requests per batch"),
            ));
        }
        // One snapshot and one clock reading for the whole batch.
        let state = self.replica.snapshot();
        let now = now_ms();
        let results = requests
            .iter()
            .map(|request| pb::RouteResult {
                result: Some(match self.decide(&state, request, now) {
                    Ok(route) => pb::route_result::Result::Route(route),
                    Err(status) => pb::route_result::Result::Error(pb::RouteError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::RouteBatchResponse {
            results,
            revision: state.revision(),
        }))
    }

    async fn report_outcome(
        &self,
        request: Request<tonic::Streaming<pb::Outcome>>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let mut reports = request.into_inner();
        let mut tally = Tally::default();
        while let Some(report) = reports.message().await? {
            tally.add(
                self.outcomes
                    .record(&self.replica.snapshot(), &report, now_ms()),
            );
        }
        Ok(Response::new(tally.into_response()))
    }

    async fn report_outcomes(
        &self,
        request: Request<pb::ReportOutcomesRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let state = self.replica.snapshot();
        let now = now_ms();
        let mut tally = Tally::default();
        for report in &request.get_ref().outcomes {
            tally.add(self.outcomes.record(&state, report, now));
        }
        Ok(Response::new(tally.into_response()))
    }

    type WatchAssignmentsStream = WatchStream;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let request = request.into_inner();
        let limit = self.limits.max_watch_filter;
        if request.tenant_ids.len() > limit || request.services.len() > limit {
            return Err(status::invalid_argument(
                "tenant_ids",
                &format!("at most {limit} tenants and {limit} services"),
            ));
        }
        let filter = AssignmentFilter {
            tenant_ids: convert::names("tenant_ids", request.tenant_ids)
                .map_err(|e| status::routing(&e))?,
            services: convert::names("services", request.services)
                .map_err(|e| status::routing(&e))?,
        };
        validate::optional_name("history", &request.history).map_err(|e| status::routing(&e))?;
        // Revisions of another history name other states: send a snapshot instead.
        let from_revision =
            if request.history.is_empty() || request.history == self.replica.history_id() {
                request.from_revision
            } else {
                0
            };
        // Check a resume before answering, so the client sees OUT_OF_RANGE as the call's status.
        if from_revision > 0 {
            match self.replica.changes_after(from_revision) {
                Replay::Changes(_) => {}
                Replay::Gone => {
                    return Err(Status::out_of_range(format!(
                        "revision {} is older than the kept history; watch from revision 0 for a snapshot",
                        request.from_revision
                    )));
                }
                Replay::Ahead => {
                    return Err(Status::out_of_range(format!(
                        "revision {} is ahead of this router (at {}); watch from revision 0 for a snapshot",
                        request.from_revision,
                        self.replica.current().revision()
                    )));
                }
            }
        }
        let (sender, receiver) = mpsc::channel(self.watch.buffer);
        let queue = Arc::new(Semaphore::new(self.watch.max_queued_bytes));
        let watcher = Watcher {
            replica: Arc::clone(&self.replica),
            filter,
            chunk: self.watch.max_assignments_per_message,
            sender,
            queue,
            max_queued_bytes: self.watch.max_queued_bytes,
            closing: self.closing.clone(),
        };
        tokio::spawn(watcher.run(from_revision));
        Ok(Response::new(Box::pin(UpdateStream::new(
            receiver,
            self.closing.clone(),
        ))))
    }
}

/// Counts accepted and rejected outcome reports.
#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    first_rejection: String,
}

impl Tally {
    fn add(&mut self, result: Result<(), RoutingError>) {
        match result {
            Ok(()) => self.accepted += 1,
            Err(err) => {
                if self.rejected == 0 {
                    self.first_rejection = err.to_string();
                }
                self.rejected += 1;
            }
        }
    }

    fn into_response(self) -> pb::ReportOutcomeResponse {
        pb::ReportOutcomeResponse {
            accepted: self.accepted,
            rejected: self.rejected,
            first_rejection: self.first_rejection,
        }
    }
}

/// Allocator overhead counted for each allocation of a queued message.
const ALLOCATION: usize = 16;

/// Estimates the memory a message takes while it waits in a watcher's queue: its structs and
/// every string and list they own (about three times its encoded size).
fn memory_bytes(message: &pb::AssignmentUpdate) -> usize {
    let text = |s: &String| {
        if s.capacity() == 0 {
            0
        } else {
            s.capacity() + ALLOCATION
        }
    };
    let list = |capacity: usize, size: usize| {
        if capacity == 0 {
            0
        } else {
            capacity * size + ALLOCATION
        }
    };
    let instance = |i: &pb::InstanceAddress| {
        text(&i.instance_id) + text(&i.address) + text(&i.region) + text(&i.zone)
    };
    let assignment = |a: &pb::Assignment| {
        text(&a.tenant_id)
            + text(&a.service)
            + text(&a.version)
            + text(&a.source)
            + text(&a.region)
            + list(
                a.instances.capacity(),
                std::mem::size_of::<pb::InstanceAddress>(),
            )
            + a.instances.iter().map(instance).sum::<usize>()
    };
    std::mem::size_of::<pb::AssignmentUpdate>()
        + text(&message.cause)
        + text(&message.history)
        + list(
            message.upserts.capacity(),
            std::mem::size_of::<pb::Assignment>(),
        )
        + message.upserts.iter().map(assignment).sum::<usize>()
        + list(
            message.removals.capacity(),
            std::mem::size_of::<pb::AssignmentKey>(),
        )
        + message
            .removals
            .iter()
            .map(|k| text(&k.tenant_id) + text(&k.service))
            .sum::<usize>()
}

/// How a watch stream ends when the server shuts down.
const SHUTTING_DOWN: &str = "server is shutting down; resume on another router";

/// Changes a watcher takes from the history at once.
const REPLAY_BATCH: usize = 16;

/// An update queued for a watcher, with the share of the watcher's byte budget it holds until
/// the stream hands it to the transport.
type Queued = (pb::AssignmentUpdate, OwnedSemaphorePermit);

/// The stream a watcher's client reads: the queued updates, then always an error status.
///
/// A watch never ends on its own: when its task stops (the server is shutting down, or the
/// router lost its state) the stream ends with `UNAVAILABLE`, never with `OK`, so a client never
/// takes a cut-off sequence for a complete one. When the server starts shutting down, the
/// status goes out at once, ahead of whatever is still queued.
struct UpdateStream {
    receiver: mpsc::Receiver<Queued>,
    closing: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Whether the server is shutting down, read when the watcher's task has ended (it may have
    /// ended for that reason before the `closing` future was polled).
    shutting_down: tokio::sync::watch::Receiver<bool>,
    done: bool,
}

impl UpdateStream {
    fn new(
        receiver: mpsc::Receiver<Queued>,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        UpdateStream {
            receiver,
            shutting_down: closing.clone(),
            closing: Box::pin(async move {
                // A dropped sender means the server is gone: treat it as closing too.
                let _ = closing.wait_for(|closing| *closing).await;
            }),
            done: false,
        }
    }
}

impl Stream for UpdateStream {
    type Item = Result<pb::AssignmentUpdate, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        if self.closing.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Status::unavailable(SHUTTING_DOWN))));
        }
        match self.receiver.poll_recv(cx) {
            // The permit is released here: the update now belongs to the transport.
            Poll::Ready(Some((update, _permit))) => Poll::Ready(Some(Ok(update))),
            Poll::Ready(None) => {
                self.done = true;
                let message = if *self.shutting_down.borrow() {
                    SHUTTING_DOWN
                } else {
                    "this router stopped following changes; resume on another router"
                };
                Poll::Ready(Some(Err(Status::unavailable(message))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One watch stream: sends a snapshot or a replay, then every change that alters what it follows.
struct Watcher {
    replica: Arc<Replica>,
    filter: AssignmentFilter,
    chunk: usize,
    sender: mpsc::Sender<Queued>,
    /// Bytes of encoded updates this watcher may have queued.
    queue: Arc<Semaphore>,
    max_queued_bytes: usize,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Watcher {
    async fn run(self, from_revision: u64) {
        let mut closing = self.closing.clone();
        // Dropping the sender on return ends the client's stream with UNAVAILABLE.
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
                    let mut changes = std::collections::VecDeque::from(changes);
                    while let Some(change) = changes.pop_front() {
                        let diff =
                            watch::diff(&change.before, &change.after, &change.scope, &self.filter);
                        if !diff.is_empty() {
                            let removals = diff
                                .removals
                                .into_iter()
                                .map(|(tenant_id, service)| pb::AssignmentKey {
                                    tenant_id,
                                    service,
                                })
                                .collect();
                            let sent = self
                                .send(
                                    change.after.revision(),
                                    false,
                                    &diff.upserts,
                                    removals,
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
                Replay::Gone | Replay::Ahead => match self.send_snapshot().await {
                    Some(revision) => at = revision,
                    None => return,
                },
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
        let mut pairs = watch::assignments(&state, &self.filter).peekable();
        loop {
            let upserts: Vec<pb::Assignment> = pairs
                .by_ref()
                .take(self.chunk)
                .map(|assignment| convert::assignment_message(&assignment))
                .collect();
            let partial = pairs.peek().is_some();
            let message = pb::AssignmentUpdate {
                revision,
                snapshot: true,
                upserts,
                removals: Vec::new(),
                partial,
                cause: String::new(),
                history: self.replica.history_id().to_owned(),
            };
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
        snapshot: bool,
        upserts: &[EffectiveAssignment],
        removals: Vec<pb::AssignmentKey>,
        cause: &str,
    ) -> bool {
        let upsert_chunks: Vec<&[EffectiveAssignment]> = upserts.chunks(self.chunk).collect();
        let removal_chunks: Vec<&[pb::AssignmentKey]> = removals.chunks(self.chunk).collect();
        let count = upsert_chunks.len() + removal_chunks.len();
        let message = |upserts, removals, index: usize| pb::AssignmentUpdate {
            revision,
            snapshot,
            upserts,
            removals,
            partial: index + 1 < count,
            cause: cause.to_owned(),
            history: self.replica.history_id().to_owned(),
        };
        if count == 0 {
            // An empty update still tells the client where it stands.
            return self.queue_message(message(Vec::new(), Vec::new(), 0)).await;
        }
        for (index, chunk) in upsert_chunks.iter().enumerate() {
            let upserts = chunk.iter().map(convert::assignment_message).collect();
            if !self
                .queue_message(message(upserts, Vec::new(), index))
                .await
            {
                return false;
            }
        }
        for (index, chunk) in removal_chunks.iter().enumerate() {
            let index = upsert_chunks.len() + index;
            if !self
                .queue_message(message(Vec::new(), chunk.to_vec(), index))
                .await
            {
                return false;
            }
        }
        true
    }

    /// Queues one message once the watcher's byte budget has room for it (a message larger
    /// than the whole budget waits for an empty queue); returns false when the client left.
    async fn queue_message(&self, message: pb::AssignmentUpdate) -> bool {
        let bytes = memory_bytes(&message).clamp(1, self.max_queued_bytes);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            permit = Arc::clone(&self.queue).acquire_many_owned(bytes) => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
            () = self.sender.closed() => return false,
        };
        self.sender.send((message, permit)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use greyrouter_store::{MemoryStore, Store, suite};

    use super::*;
    use crate::audit::Actor;

    /// Returns a followed replica over an embedded store holding service `api` with one
    /// instance of `v1`, and `tenants` tenants; and the revision before the tenants.
    async fn replica_with(tenants: usize, history: (usize, usize)) -> (Arc<Replica>, u64) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let replica = Replica::load(store, history.0, history.1)
            .await
            .expect("load");
        tokio::spawn(Arc::clone(&replica).follow());
        replica
            .commit(suite::service(), &system())
            .await
            .expect("service");
        let before_tenants = replica
            .commit(suite::instance("api-1", "v1"), &system())
            .await
            .expect("instance")
            .revision;
        for i in 0..tenants {
            replica
                .commit(suite::tenant(&format!("tenant-{i:03}")), &system())
                .await
                .expect("tenant");
        }
        (replica, before_tenants)
    }

    fn system() -> Actor {
        Actor::system("test", "")
    }

    /// Starts a watcher of everything from `from_revision`; returns its queue.
    fn watch_all(
        replica: &Arc<Replica>,
        from_revision: u64,
        chunk: usize,
        queue: &Arc<Semaphore>,
        max_queued_bytes: usize,
    ) -> mpsc::Receiver<Queued> {
        let (sender, receiver) = mpsc::channel(10_000);
        let (closing_sender, closing) = tokio::sync::watch::channel(false);
        let watcher = Watcher {
            replica: Arc::clone(replica),
            filter: AssignmentFilter::default(),
            chunk,
            sender,
            queue: Arc::clone(queue),
            max_queued_bytes,
            closing,
        };
        tokio::spawn(async move {
            watcher.run(from_revision).await;
            drop(closing_sender);
        });
        receiver
    }

    /// Waits, with a deadline, until `check` holds.
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_watcher_that_never_reads_queues_at_most_its_byte_budget() {
        let (replica, _) = replica_with(300, (4096, 64 << 20)).await;
        // A snapshot of 300 assignments in messages of 5 takes about 270 KB in memory, eight
        // times the budget; one message takes about 4.5 KB.
        let budget = 32 * 1024;
        let queue = Arc::new(Semaphore::new(budget));
        let mut receiver = watch_all(&replica, 0, 5, &queue, budget);
        // The watcher stops once the next message no longer fits.
        until("the queue to fill", || {
            queue.available_permits() < budget / 4
        })
        .await;
        let queued = receiver.len();
        let mut bytes = 0;
        let mut first_revision = None;
        let mut assignments = 0;
        for _ in 0..queued {
            let (update, _permit) = receiver.try_recv().expect("queued message");
            bytes += memory_bytes(&update);
            assignments += update.upserts.len();
            first_revision.get_or_insert(update.revision);
        }
        assert!(queued > 1, "some messages were queued");
        assert!(
            bytes <= budget,
            "{queued} messages of {bytes} bytes queued for a budget of {budget}"
        );
        assert!(assignments < 300, "the snapshot did not fit the budget");
        // Once the client reads, the rest of the snapshot arrives, complete.
        loop {
            let (update, _permit) = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
                .await
                .expect("in time")
                .expect("open");
            assert_eq!(Some(update.revision), first_revision);
            assignments += update.upserts.len();
            if !update.partial {
                break;
            }
        }
        assert_eq!(assignments, 300);
    }

    #[tokio::test]
    async fn the_watch_history_is_bounded_in_bytes_as_instances_pile_into_one_version() {
        let history_bytes = 2 << 20;
        let (replica, _) = replica_with(0, (100_000, history_bytes)).await;
        let registrations = 2_000;
        for i in 0..registrations {
            replica
                .commit(suite::instance(&format!("api-{i:05}"), "v1"), &system())
                .await
                .expect("instance");
        }
        let (kept, bytes) = replica.history_footprint();
        assert!(
            bytes <= history_bytes,
            "{kept} changes of {bytes} bytes kept"
        );
        // The bytes, not the count of 100,000, decide what is kept ...
        assert!(kept < registrations, "{kept} changes kept");
        // ... and one registration costs a path of the pool and of the instance index (a few
        // KiB), not a copy of 2,000 members (32 KiB) or of every map it touched.
        assert!(
            kept > history_bytes / (8 * 1024),
            "{kept} changes of {bytes} bytes kept: too little kept per byte"
        );
        // The newest changes are still there to replay.
        let current = replica.current().revision();
        assert!(matches!(
            replica.changes_after(current - 1),
            Replay::Changes(changes) if changes.len() == 1
        ));
    }

    #[tokio::test]
    async fn a_resume_replays_more_changes_than_one_batch_without_waiting_for_another() {
        let changes = REPLAY_BATCH * 3 + 1;
        let (replica, from) = replica_with(changes, (4096, 64 << 20)).await;
        let queue = Arc::new(Semaphore::new(1 << 20));
        let mut receiver = watch_all(&replica, from, 100, &queue, 1 << 20);
        // No change is made meanwhile: every missed one arrives all the same.
        for i in 0..changes {
            let (update, _permit) = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
                .await
                .expect("in time")
                .expect("open");
            assert!(!update.snapshot);
            assert_eq!(update.upserts[0].tenant_id, format!("tenant-{i:03}"));
        }
    }
}
