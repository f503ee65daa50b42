//! Outcome reports, sent in batches by one task so that reporting never waits on the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use greyrouter_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::{Decision, Shared};

/// What the reporting task is sent.
#[derive(Debug)]
pub(crate) enum Message {
    /// One report.
    Outcome(Reported),
    /// Send what is queued now, then answer.
    Flush(oneshot::Sender<()>),
}

/// A report waiting to be sent: the decision it is about (shared, not copied) and the outcome.
#[derive(Debug)]
pub(crate) struct Reported {
    pub(crate) decision: Decision,
    pub(crate) success: bool,
    pub(crate) latency_ms: u32,
    pub(crate) status_code: u32,
}

/// The messages of a batch: reports of the same kind (instance, tenant, service, version,
/// success, status code) go as one message, their further latencies in `more_latencies_ms`.
pub(crate) fn messages(batch: &[Reported]) -> Vec<pb::Outcome> {
    let mut outcomes: Vec<pb::Outcome> = Vec::new();
    let mut kinds: HashMap<(&str, &str, &str, &str, bool, u32), usize> = HashMap::new();
    for reported in batch {
        let decision = &reported.decision;
        let kind = (
            decision.instance_id(),
            decision.tenant_id(),
            decision.service(),
            decision.version(),
            reported.success,
            reported.status_code,
        );
        match kinds.get(&kind) {
            Some(&index) => outcomes[index].more_latencies_ms.push(reported.latency_ms),
            None => {
                kinds.insert(kind, outcomes.len());
                outcomes.push(pb::Outcome {
                    instance_id: decision.instance_id().to_owned(),
                    address: String::new(),
                    tenant_id: decision.tenant_id().to_owned(),
                    service: decision.service().to_owned(),
                    version: decision.version().to_owned(),
                    success: reported.success,
                    latency_ms: reported.latency_ms,
                    status_code: reported.status_code,
                    more_latencies_ms: Vec::new(),
                });
            }
        }
    }
    outcomes
}

/// The outcome of a call, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Whether the call succeeded.
    pub success: bool,
    /// How long it took.
    pub latency: Duration,
    /// The backend's own status (HTTP or gRPC code), for the record; 0 when none.
    pub status_code: u32,
}

impl Report {
    /// A call that succeeded after `latency`.
    pub fn success(latency: Duration) -> Self {
        Report {
            success: true,
            latency,
            status_code: 0,
        }
    }

    /// A call that failed after `latency`.
    pub fn failure(latency: Duration) -> Self {
        Report {
            success: false,
            latency,
            status_code: 0,
        }
    }

    /// Records the backend's status code.
    pub fn with_status_code(mut self, status_code: u32) -> Self {
        self.status_code = status_code;
        self
    }
}

/// Sends queued reports in batches of at most `report_batch_size`, at least every
/// `report_interval`, until the queue closes; then sends what is left.
pub(crate) async fn send_reports(shared: Arc<Shared>, mut queue: mpsc::Receiver<Message>) {
    let size = shared.config.report_batch_size;
    let mut batch: Vec<Reported> = Vec::with_capacity(size);
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    let mut tick = tokio::time::interval(shared.config.report_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (open, ticked) = tokio::select! {
            message = queue.recv() => match message {
                Some(Message::Outcome(outcome)) => {
                    batch.push(outcome);
                    (true, false)
                }
                Some(Message::Flush(done)) => {
                    flushed.push(done);
                    (true, false)
                }
                None => (false, false),
            },
            _ = tick.tick() => (true, true),
        };
        loop {
            // Take whatever else is already queued, up to a batch.
            while batch.len() < size {
                match queue.try_recv() {
                    Ok(Message::Outcome(outcome)) => batch.push(outcome),
                    Ok(Message::Flush(done)) => flushed.push(done),
                    Err(_) => break,
                }
            }
            let full = batch.len() >= size;
            let urgent = ticked || !flushed.is_empty() || !open;
            if full || (urgent && !batch.is_empty()) {
                send(&shared, std::mem::take(&mut batch)).await;
            }
            if !full {
                break;
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if !open {
            return;
        }
    }
}

async fn send(shared: &Shared, batch: Vec<Reported>) {
    let count = batch.len() as u64;
    let outcomes = messages(&batch);
    drop(batch);
    let index = shared.counters.endpoint.load(Ordering::Relaxed) % shared.channels.len();
    let mut client = shared.router(shared.channels[index].clone());
    shared.counters.report_calls.fetch_add(1, Ordering::Relaxed);
    let call = client.report_outcomes(pb::ReportOutcomesRequest { outcomes });
    match tokio::time::timeout(shared.config.request_timeout, call).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            shared
                .counters
                .reports_accepted
                .fetch_add(response.accepted, Ordering::Relaxed);
            shared
                .counters
                .reports_rejected
                .fetch_add(response.rejected, Ordering::Relaxed);
            if response.rejected > 0 {
                tracing::debug!(rejected = response.rejected, first = %response.first_rejection, "outcome reports rejected");
            }
        }
        Ok(Err(status)) => {
            shared
                .counters
                .reports_failed
                .fetch_add(count, Ordering::Relaxed);
            tracing::debug!(code = ?status.code(), message = status.message(), "outcome reports not delivered");
        }
        Err(_) => {
            shared
                .counters
                .reports_failed
                .fetch_add(count, Ordering::Relaxed);
            tracing::debug!("outcome reports timed out");
        }
    }
    shared.status_changed();
}
