//! The `Router` service: `Route`, `RouteBatch`, outcome reports and `WatchAssignments`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;

use control::Node;
use control::access::{CallClass, Caller, TenantScope, WatchSlot};
use control::audit::now_ms;
use control::node::MAX_BATCH;
use control::outcomes::OutcomeReport;
use control::watch::{Frames, Queued, SharedMessages, Update};
use greyrouter_proto::domain;
use greyrouter_proto::shared::router_server::Router;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::{
    EncodedRouteBatch, EncodedUpdate, FrameTooLarge, GrpcFrame, RouteAnswer, RouteBatchWriter,
};
use routing_core::hash::entropy;
use routing_core::{RouteDecision, RouteQuery, RoutingError, RoutingState};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::access;
use crate::status;

/// Serves `greyrouter.v1.Router` from the node's snapshot.
#[derive(Debug, Clone)]
pub struct RouterService {
    node: Arc<Node>,
    closing: tokio::sync::watch::Receiver<bool>,
    frames: ProtoFrames,
    /// The same, a version's instances once per message (`instances_by_version`).
    frames_by_version: ProtoFrames,
}

impl RouterService {
    /// Returns the service over a node. Watch streams end with `UNAVAILABLE` once `closing`
    /// turns true, so that a graceful shutdown does not wait for watchers.
    pub fn new(node: Arc<Node>, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        let frames = ProtoFrames::new(node.settings().watch.max_shared_bytes);
        RouterService {
            node,
            closing,
            frames_by_version: frames.by_version(),
            frames,
        }
    }

    /// Checks an outcome report's caller (its role was checked by the auth layer).
    fn reporter<T>(&self, request: &Request<T>, method: &str) -> Result<Arc<Caller>, Status> {
        // Each report names its own tenant: checked one by one, not for the whole call.
        access::admit(&self.node, request, "Router", method, &[])
    }

    /// Decides one request of a batch for `caller`: a tenant outside its scope, or over its
    /// rate, is refused in the request's place.
    fn decide_for<'s>(
        &self,
        caller: &Caller,
        state: &'s RoutingState,
        request: &pb::RouteRequest,
        now_ms: u64,
    ) -> Result<RouteDecision<'s>, Status> {
        caller
            .check_tenant(state, &request.tenant_id)
            .and_then(|()| {
                self.node
                    .admission()
                    .admit_tenant(CallClass::Router, &request.tenant_id)
            })
            .map_err(|e| status::status(&e))?;
        self.decide(state, request, now_ms)
    }

    /// Converts a request and decides it on `state`.
    fn decide<'s>(
        &self,
        state: &'s RoutingState,
        request: &pb::RouteRequest,
        now_ms: u64,
    ) -> Result<RouteDecision<'s>, Status> {
        let strategy = domain::strategy("strategy", request.strategy).map_err(status::routing)?;
        let query = RouteQuery {
            tenant_id: &request.tenant_id,
            service: &request.service,
            region: &request.region,
            hash_key: &request.hash_key,
            strategy,
            entropy: entropy(),
            now_ms,
        };
        self.node
            .route(state, &query, &request.metadata)
            .map_err(status::routing)
    }
}

/// Returns a decision as `Route` answers it.
fn route_response(decision: RouteDecision<'_>) -> pb::RouteResponse {
    let instance = &decision.member.instance;
    pb::RouteResponse {
        instance_id: instance.id.clone(),
        address: instance.address.clone(),
        source: decision.resolution.source.to_string(),
        version: decision.resolution.version,
        revision: decision.revision,
    }
}

/// Refuses a report a scoped caller may not send: it must name one of the caller's tenants.
fn in_scope(
    caller: &Caller,
    state: &RoutingState,
    message: &pb::Outcome,
) -> Result<(), RoutingError> {
    if caller.scope.is_all()
        || (!message.tenant_id.is_empty() && caller.scope.holds_id(state, &message.tenant_id))
    {
        Ok(())
    } else {
        Err(RoutingError::invalid(
            "tenant_id",
            "a caller with a tenant scope reports only outcomes of its own tenants",
        ))
    }
}

/// Returns the domain report of an outcome message.
fn report(message: pb::Outcome) -> OutcomeReport {
    OutcomeReport {
        instance_id: message.instance_id,
        address: message.address,
        tenant_id: message.tenant_id,
        service: message.service,
        version: message.version,
        success: message.success,
        latency_ms: message.latency_ms,
        status_code: message.status_code,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<EncodedUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let started = std::time::Instant::now();
        access::admit(
            &self.node,
            &request,
            "Router",
            "Route",
            &[&request.get_ref().tenant_id],
        )?;
        let state = self.node.snapshot();
        let response = self
            .decide(&state, &request.into_inner(), now_ms())
            .map(|decision| Response::new(route_response(decision)));
        self.node.route_handled(started.elapsed());
        response
    }

    async fn route_batch(
        &self,
        request: Request<pb::RouteBatchRequest>,
    ) -> Result<Response<EncodedRouteBatch>, Status> {
        // Each decision is checked on its own: a tenant outside the caller's scope, or over
        // its rate, is answered in its place, never for the whole batch.
        let caller = access::admit(&self.node, &request, "Router", "RouteBatch", &[])?;
        let requests = request.into_inner().requests;
        if requests.len() > MAX_BATCH {
            return Err(status::invalid_argument(
                "requests",
                &format!("at most {MAX_BATCH} requests per batch"),
            ));
        }
        // One snapshot and one clock reading for the whole batch; each answer is written
        // from the decision's borrowed names.
        let state = self.node.snapshot();
        let now = now_ms();
        let mut batch = RouteBatchWriter::with_capacity(requests.len());
        let mut source = String::new();
        for request in &requests {
            match self.decide_for(&caller, &state, request, now) {
                Ok(decision) => {
                    source.clear();
                    // Writing to a String cannot fail.
                    let _ = write!(source, "{}", decision.resolution.source);
                    let instance = &decision.member.instance;
                    batch.route(&RouteAnswer {
                        instance_id: &instance.id,
                        address: &instance.address,
                        version: &decision.resolution.version,
                        source: &source,
                        revision: decision.revision,
                    });
                }
                Err(status) => batch.error(status.code() as i32, status.message()),
            }
        }
        Ok(Response::new(batch.finish(state.revision())))
    }

    async fn report_outcome(
        &self,
        request: Request<tonic::Streaming<pb::Outcome>>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let caller = self.reporter(&request, "ReportOutcome")?;
        let mut reports = request.into_inner();
        let mut tally = Tally::default();
        while let Some(message) = reports.message().await? {
            let state = self.node.snapshot();
            tally.record(&self.node, &caller, &state, message, now_ms());
        }
        Ok(Response::new(tally.into_response()))
    }

    async fn report_outcomes(
        &self,
        request: Request<pb::ReportOutcomesRequest>,
    ) -> Result<Response<pb::ReportOutcomeResponse>, Status> {
        let caller = self.reporter(&request, "ReportOutcomes")?;
        let state = self.node.snapshot();
        let now = now_ms();
        let mut tally = Tally::default();
        for message in request.into_inner().outcomes {
            tally.record(&self.node, &caller, &state, message, now);
        }
        Ok(Response::new(tally.into_response()))
    }

    type WatchAssignmentsStream = WatchStream;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        // Served through tonic's encoder only when this service is mounted without
        // `crate::frames::RouterFront` (which writes the frames themselves).
        let stream = self.open_watch(request)?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            stream,
            |frame| frame.map(|frame| frame.to_encoded()),
        ))))
    }
}

impl RouterService {
    /// Opens a watch: checks the caller and its cap, then starts the watcher.
    pub(crate) fn open_watch(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<UpdateStream, Status> {
        let caller = access::caller(&request)?;
        let mut tenant_ids = request.get_ref().tenant_ids.clone();
        // A caller scoped to listed tenants that names none watches those it may see.
        if let (true, TenantScope::Only(scope)) = (tenant_ids.is_empty(), &caller.scope)
            && scope.labels.is_empty()
        {
            tenant_ids = scope.tenants.iter().cloned().collect();
        }
        let named: Vec<&str> = tenant_ids.iter().map(String::as_str).collect();
        access::admit(&self.node, &request, "Router", "WatchAssignments", &named)?;
        let slot = self
            .node
            .admission()
            .open_watch(&caller)
            .map_err(|e| status::status(&e))?;
        let request = request.into_inner();
        let queue = self
            .node
            .watch(
                tenant_ids,
                request.services,
                request.from_revision,
                &request.history,
                self.closing.clone(),
                if request.instances_by_version {
                    self.frames_by_version.clone()
                } else {
                    self.frames.clone()
                },
            )
            .map_err(|e| status::status(&e))?;
        Ok(UpdateStream::new(queue, self.closing.clone(), slot))
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
    /// Records one message (the requests it stands for: one, and one per further latency).
    fn record(
        &mut self,
        node: &Node,
        caller: &Caller,
        state: &RoutingState,
        mut message: pb::Outcome,
        now: u64,
    ) {
        let more = std::mem::take(&mut message.more_latencies_ms);
        let requests = 1 + more.len() as u64;
        let result = in_scope(caller, state, &message)
            .and_then(|()| node.report_outcomes(state, &report(message), &more, now));
        match result {
            Ok(()) => self.accepted += requests,
            Err(err) => {
                if self.rejected == 0 {
                    self.first_rejection = err.to_string();
                }
                self.rejected += requests;
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

/// One watch message: an `AssignmentUpdate` as a gRPC frame.
pub type WatchFrame = GrpcFrame<pb::AssignmentUpdate>;

/// A watch message as built: a frame, or why it could not be one.
pub type WatchMessage = Result<WatchFrame, FrameTooLarge>;

/// Watch messages as gRPC frames of `AssignmentUpdate`s, shared by the watchers of one filter.
#[derive(Clone)]
pub struct ProtoFrames {
    shared: Arc<SharedMessages<WatchMessage>>,
    /// Whether each message lists a version's instances once (`AssignmentUpdate.versions`)
    /// instead of with every assignment.
    by_version: bool,
}

impl ProtoFrames {
    /// Frames sharing at most `max_shared_bytes` of encoded messages.
    pub fn new(max_shared_bytes: usize) -> Self {
        ProtoFrames {
            shared: Arc::new(SharedMessages::new(max_shared_bytes)),
            by_version: false,
        }
    }

    /// The same watch in the other layout: instances once per version of a message. The two
    /// share one budget of shared bytes.
    pub fn by_version(&self) -> Self {
        ProtoFrames {
            shared: Arc::new(self.shared.sharing_budget()),
            by_version: true,
        }
    }

    /// The upserts of a message and, by version, their instances.
    fn upserts(&self, update: &Update<'_>) -> (Vec<pb::Assignment>, Vec<pb::VersionInstances>) {
        if !self.by_version {
            let upserts = update.upserts.iter().map(pb::Assignment::from).collect();
            return (upserts, Vec::new());
        }
        let mut listed: HashSet<(&str, &str)> = HashSet::new();
        let mut versions = Vec::new();
        let upserts = update
            .upserts
            .iter()
            .map(|assignment| {
                let version = assignment.resolution.version.as_str();
                if let Some(pool) = assignment.pool.as_deref()
                    && !pool.members().is_empty()
                    && listed.insert((assignment.service.as_str(), version))
                {
                    versions.push(pb::VersionInstances {
                        service: assignment.service.clone(),
                        version: version.to_owned(),
                        instances: domain::instance_addresses(pool),
                    });
                }
                domain::assignment_without_instances(assignment)
            })
            .collect();
        (upserts, versions)
    }
}

impl std::fmt::Debug for ProtoFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoFrames")
            .field("shared_bytes", &self.shared.held_bytes())
            .field("by_version", &self.by_version)
            .finish()
    }
}

/// What a queued message holds besides its encoded bytes (its buffer and the queue's slot).
const MESSAGE_OVERHEAD: usize = 64;

impl Frames for ProtoFrames {
    /// A message over 4 GiB cannot be framed: the stream ends with `RESOURCE_EXHAUSTED`.
    type Frame = WatchMessage;

    fn frame(&self, update: &Update<'_>) -> Self::Frame {
        let (upserts, versions) = self.upserts(update);
        WatchFrame::new(&pb::AssignmentUpdate {
            revision: update.revision,
            snapshot: update.snapshot,
            upserts,
            versions,
            removals: update
                .removals
                .iter()
                .map(|(tenant_id, service)| pb::AssignmentKey {
                    tenant_id: tenant_id.clone(),
                    service: service.clone(),
                })
                .collect(),
            partial: update.partial,
            cause: update.cause.to_owned(),
            history: update.history.to_owned(),
        })
    }

    fn memory_bytes(&self, frame: &Self::Frame) -> usize {
        frame.as_ref().map_or(0, WatchFrame::len) + MESSAGE_OVERHEAD
    }

    fn shared(&self) -> Option<&SharedMessages<Self::Frame>> {
        Some(&self.shared)
    }
}

/// How a watch stream ends when the server shuts down.
const SHUTTING_DOWN: &str = "server is shutting down; resume on another router";

/// The stream a watcher's client reads: the queued updates, then always an error status.
///
/// A watch never ends on its own: when its task stops (the server is shutting down, or the
/// router lost its state) the stream ends with `UNAVAILABLE`, never with `OK`, so a client never
/// takes a cut-off sequence for a complete one. When the server starts shutting down, the
/// status goes out at once, ahead of whatever is still queued.
pub(crate) struct UpdateStream {
    /// Counts the stream against the caller's cap until it ends.
    _slot: WatchSlot,
    receiver: mpsc::Receiver<Queued<WatchMessage>>,
    closing: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Whether the server is shutting down, read when the watcher's task has ended (it may have
    /// ended for that reason before the `closing` future was polled).
    shutting_down: tokio::sync::watch::Receiver<bool>,
    done: bool,
}

impl UpdateStream {
    fn new(
        receiver: mpsc::Receiver<Queued<WatchMessage>>,
        mut closing: tokio::sync::watch::Receiver<bool>,
        slot: WatchSlot,
    ) -> Self {
        UpdateStream {
            _slot: slot,
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
    type Item = Result<WatchFrame, Status>;

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
            Poll::Ready(Some((Ok(frame), _permit))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some((Err(too_large), _permit))) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "{too_large}; lower watch.max_assignments_per_message"
                )))))
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use greyrouter_store::{MemoryStore, Store, suite};

    use control::Actor;
    use control::replica::{Replay, Replica};
    use control::watch::{REPLAY_BATCH, WatchLimits, Watcher};
    use routing_core::watch::AssignmentFilter;
    use tokio::sync::Semaphore;

    use super::*;

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

    /// Starts a watcher of everything from `from_revision`; returns its queue and the
    /// semaphore of its byte budget.
    fn watch_all(
        replica: &Arc<Replica>,
        from_revision: u64,
        chunk: usize,
        max_queued_bytes: usize,
    ) -> (mpsc::Receiver<Queued<WatchMessage>>, Arc<Semaphore>) {
        watch_with(
            replica,
            from_revision,
            chunk,
            max_queued_bytes,
            ProtoFrames::new(0),
        )
    }

    /// Starts a watcher of everything with these frames.
    fn watch_with(
        replica: &Arc<Replica>,
        from_revision: u64,
        chunk: usize,
        max_queued_bytes: usize,
        frames: ProtoFrames,
    ) -> (mpsc::Receiver<Queued<WatchMessage>>, Arc<Semaphore>) {
        let (closing_sender, closing) = tokio::sync::watch::channel(false);
        let limits = WatchLimits {
            max_queued_bytes,
            max_shared_bytes: 0,
            max_assignments_per_message: chunk,
            buffer: 10_000,
        };
        let (watcher, receiver) = Watcher::new(
            Arc::clone(replica),
            AssignmentFilter::default(),
            &limits,
            closing,
            frames,
        );
        let budget = watcher.budget();
        tokio::spawn(async move {
            watcher.run(from_revision).await;
            drop(closing_sender);
        });
        (receiver, budget)
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
        // A snapshot of 300 assignments in messages of 5 takes about 30 KB encoded, four times
        // the budget; one message takes about 500 bytes.
        let budget = 8 * 1024;
        let (mut receiver, queue) = watch_all(&replica, 0, 5, budget);
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
            let (message, _permit) = receiver.try_recv().expect("queued message");
            bytes += ProtoFrames::new(0).memory_bytes(&message);
            let update = message
                .expect("fits a frame")
                .to_message()
                .expect("decodes");
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
            let update = next(&mut receiver).await;
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
        let (mut receiver, _queue) = watch_all(&replica, from, 100, 1 << 20);
        // No change is made meanwhile: every missed one arrives all the same.
        for i in 0..changes {
            let update = next(&mut receiver).await;
            assert!(!update.snapshot);
            assert_eq!(update.upserts[0].tenant_id, format!("tenant-{i:03}"));
        }
    }

    /// Returns the next message of a watcher, decoded.
    async fn next(receiver: &mut mpsc::Receiver<Queued<WatchMessage>>) -> pb::AssignmentUpdate {
        next_encoded(receiver).await.to_message().expect("decodes")
    }

    /// Returns the next message of a watcher as it was queued.
    async fn next_encoded(receiver: &mut mpsc::Receiver<Queued<WatchMessage>>) -> WatchFrame {
        let (message, _permit) = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
            .await
            .expect("in time")
            .expect("open");
        message.expect("fits a frame")
    }

    #[tokio::test]
    async fn watchers_of_one_filter_share_each_encoded_message_within_the_budget() {
        let (replica, _) = replica_with(250, (4096, 64 << 20)).await;
        let frames = ProtoFrames::new(64 << 20);
        let (mut first, _) = watch_with(&replica, 0, 100, 1 << 20, frames.clone());
        let (mut second, _) = watch_with(&replica, 0, 100, 1 << 20, frames.clone());
        // A budget too small for the snapshot: that watcher encodes its own.
        let (mut alone, _) = watch_with(&replica, 0, 100, 1 << 20, ProtoFrames::new(1024));
        let mut snapshot = Vec::new();
        let mut first_message = None;
        loop {
            let (a, b, c) = (
                next_encoded(&mut first).await,
                next_encoded(&mut second).await,
                next_encoded(&mut alone).await,
            );
            // The same bytes, encoded once for the two watchers that share.
            assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
            assert_eq!(a, c);
            assert_ne!(a.as_bytes().as_ptr(), c.as_bytes().as_ptr());
            first_message.get_or_insert_with(|| a.clone());
            let update = a.to_message().expect("decodes");
            snapshot.extend(update.upserts.into_iter().map(|u| u.tenant_id));
            if !update.partial {
                break;
            }
        }
        assert_eq!(snapshot.len(), 250);
        // A watcher that comes once the others have their snapshot gets the same bytes: the
        // snapshot of the current revision is kept.
        let (mut late, _) = watch_with(&replica, 0, 100, 1 << 20, frames.clone());
        let kept = first_message.expect("a snapshot message");
        assert_eq!(
            next_encoded(&mut late).await.as_bytes().as_ptr(),
            kept.as_bytes().as_ptr()
        );
        // A change is encoded once too.
        replica
            .commit(suite::tenant("tenant-new"), &system())
            .await
            .expect("tenant");
        let (a, b) = (
            next_encoded(&mut first).await,
            next_encoded(&mut second).await,
        );
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        let update = a.to_message().expect("decodes");
        assert_eq!(update.upserts[0].tenant_id, "tenant-new");
        assert_eq!(next(&mut alone).await, update);
    }
}
