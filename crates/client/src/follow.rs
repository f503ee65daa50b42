//! The watch: keeps the local copy current, reconnecting and resuming by revision.
//!
//! The first subscription asks for a snapshot (revision 0). After a failure it asks for the
//! changes after the last revision applied, from the same router or the next one: a router of
//! the same fleet replays them; one whose history no longer reaches that far (or that started
//! afresh) answers `OUT_OF_RANGE`, and the watch asks for a snapshot again. Meanwhile decisions
//! go on from the copy held (last known state), and [`Status`](crate::Status) says it is
//! disconnected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use greyrouter_proto::v1 as pb;

use crate::Shared;
use crate::cache::CacheBuilder;

/// Follows the routers until the client closes.
pub(crate) async fn follow(shared: Arc<Shared>, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut builder = CacheBuilder::default();
    let mut delay = shared.config.reconnect_min_delay;
    loop {
        if *closing.borrow() {
            return;
        }
        let index = shared.counters.endpoint.load(Ordering::Relaxed) % shared.channels.len();
        let endpoint = &shared.config.endpoints[index];
        let from_revision = if builder.current().synced {
            builder.current().revision
        } else {
            0
        };
        let request = pb::WatchAssignmentsRequest {
            tenant_ids: shared.config.tenant_ids.clone(),
            services: shared.config.services.clone(),
            from_revision,
            history: builder.history().to_owned(),
            // A version's instances once per message, not with each of its tenants.
            instances_by_version: true,
        };
        let mut client = shared.router(shared.channels[index].clone());
        let opened = tokio::select! {
            opened = client.watch_assignments(request) => opened,
            _ = closing.changed() => return,
        };
        match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                shared.counters.connected.store(true, Ordering::Relaxed);
                if from_revision > 0 {
                    shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
                }
                shared.status_changed();
                tracing::debug!(%endpoint, from_revision, "watching assignments");
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        _ = closing.changed() => return,
                    };
                    match message {
                        Ok(Some(update)) => {
                            if let Some(applied) = builder.accept(update) {
                                if applied.snapshot {
                                    shared.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                                }
                                shared.publish(builder.current().clone());
                                delay = shared.config.reconnect_min_delay;
                            }
                        }
                        Ok(None) => {
                            tracing::info!(%endpoint, "router ended the watch");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%endpoint, code = ?status.code(), message = status.message(), "watch broke");
                            break;
                        }
                    }
                }
                builder.drop_pending();
                shared.counters.connected.store(false, Ordering::Relaxed);
            }
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                // This router cannot replay from our revision: take a snapshot from it now.
                tracing::info!(%endpoint, from_revision, reason = status.message(), "resume refused; taking a snapshot");
                builder = CacheBuilder::resync(builder);
                continue;
            }
            Err(status) => {
                tracing::warn!(%endpoint, code = ?status.code(), message = status.message(), "cannot watch");
            }
        }
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.status_changed();
        if shared.channels.len() > 1 {
            shared.counters.endpoint.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(jitter(delay)) => {}
            _ = closing.changed() => return,
        }
        delay = (delay * 2).min(shared.config.reconnect_max_delay);
    }
}

/// Between 50% and 100% of `delay`, so that clients of a restarted router do not come back all
/// at once.
fn jitter(delay: Duration) -> Duration {
    let fraction = 0.5 + (crate::entropy() % 1_000) as f64 / 2_000.0;
    delay.mul_f64(fraction)
}
