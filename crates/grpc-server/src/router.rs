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
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
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
        let watcher = Watcher {
            replica: Arc::clone(&self.replica),
            filter,
            chunk: self.watch.max_assignments_per_message,
            sender,
            closing: self.closing.clone(),
        };
        tokio::spawn(watcher.run(from_revision));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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

/// One watch stream: sends a snapshot or a replay, then every change that alters what it follows.
struct Watcher {
    replica: Arc<Replica>,
    filter: AssignmentFilter,
    chunk: usize,
    sender: mpsc::Sender<Result<pb::AssignmentUpdate, Status>>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Watcher {
    async fn run(self, from_revision: u64) {
        let mut closing = self.closing.clone();
        tokio::select! {
            () = self.follow(from_revision) => {}
            _ = closing.wait_for(|closing| *closing) => {
                let status = Status::unavailable("server is shutting down; resume on another router");
                let _ = self.sender.try_send(Err(status));
            }
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
            match self.replica.changes_after(at) {
                Replay::Changes(changes) => {
                    for change in changes {
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
                }
                // Too slow to keep up with the kept history: start over from a snapshot.
                Replay::Gone | Replay::Ahead => match self.send_snapshot().await {
                    Some(revision) => at = revision,
                    None => return,
                },
            }
            tokio::select! {
                changed = revisions.wait_for(|&r| r > at) => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.sender.closed() => return,
            }
        }
    }

    /// Sends the current snapshot; returns its revision, or `None` when the client left.
    async fn send_snapshot(&self) -> Option<u64> {
        let state = self.replica.current();
        let assignments = watch::snapshot(&state, &self.filter);
        self.send(state.revision(), true, &assignments, Vec::new(), "")
            .await
            .then_some(state.revision())
    }

    /// Sends one revision's update, split into messages of at most `chunk` assignments.
    async fn send(
        &self,
        revision: u64,
        snapshot: bool,
        upserts: &[EffectiveAssignment],
        removals: Vec<pb::AssignmentKey>,
        cause: &str,
    ) -> bool {
        let mut messages: Vec<pb::AssignmentUpdate> = upserts
            .chunks(self.chunk)
            .map(|chunk| pb::AssignmentUpdate {
                revision,
                snapshot,
                upserts: chunk.iter().map(convert::assignment_message).collect(),
                removals: Vec::new(),
                partial: true,
                cause: cause.to_owned(),
                history: self.replica.history_id().to_owned(),
            })
            .collect();
        for chunk in removals.chunks(self.chunk) {
            messages.push(pb::AssignmentUpdate {
                revision,
                snapshot,
                upserts: Vec::new(),
                removals: chunk.to_vec(),
                partial: true,
                cause: cause.to_owned(),
                history: self.replica.history_id().to_owned(),
            });
        }
        if messages.is_empty() {
            // An empty snapshot still tells the client where it stands.
            messages.push(pb::AssignmentUpdate {
                revision,
                snapshot,
                history: self.replica.history_id().to_owned(),
                ..pb::AssignmentUpdate::default()
            });
        }
        if let Some(last) = messages.last_mut() {
            last.partial = false;
        }
        for message in messages {
            if self.sender.send(Ok(message)).await.is_err() {
                return false;
            }
        }
        true
    }
}
