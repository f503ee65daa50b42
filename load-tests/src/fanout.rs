//! How one router serves many watchers of the same assignments: `WATCHERS` `WatchAssignments`
//! streams following every tenant of one service, spread over `CONNECTIONS` connections.
//!
//! 1. Opens every stream at once and times how long until all have their whole snapshot
//!    (`partial = false`): the snapshot time for all of them.
//! 2. Reads the server's resident memory (`--pid`) before the streams, once they are idle after
//!    their snapshot, and after the changes: memory per stream.
//! 3. Makes `CHANGES` changes one after another, each pinning one tenant of the service to the
//!    version it is not on (`v1` or `v2`, seeded with `--versions v1,v2`; so every stream gets
//!    exactly one update per change), reading the clock
//!    just before the Admin call; every stream's reader stamps the update of that revision as
//!    it arrives. Per change: the time until it reached every stream (the slowest), and every
//!    single arrival; reported as p50/p99 over the changes and over all arrivals.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use greyrouter_proto::v1::router_client::RouterClient;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::connection::connect;
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;
use crate::memory::{Rss, read_rss, settle};
use crate::summary::Latency;
use crate::tally::{new_histogram, record};

/// Settings of a fan-out measurement.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// The router.
    pub target: String,
    /// The server's process id, for its resident memory (0: not read).
    pub pid: u32,
    /// Tenants and services seeded on the target (`greyrouter-load seed`).
    pub keyspace: KeyspaceSpec,
    /// The service every stream follows (its number in the keyspace).
    pub service: usize,
    /// Streams.
    pub watchers: usize,
    /// Connections they are spread over.
    pub connections: usize,
    /// Changes made once every stream has its snapshot.
    pub changes: usize,
    /// Longest wait for the snapshots, or for one change to reach every stream.
    pub timeout: Duration,
}

/// What a fan-out measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Streams.
    pub watchers: usize,
    /// Connections.
    pub connections: usize,
    /// Assignments in each snapshot.
    pub snapshot_assignments: usize,
    /// Messages in each snapshot.
    pub snapshot_messages: usize,
    /// Encoded bytes of one snapshot.
    pub snapshot_bytes: usize,
    /// From opening the first stream until every stream had its whole snapshot, in ms.
    pub snapshot_all_ms: f64,
    /// Resident memory before the streams, idle after their snapshots, and after the changes.
    pub rss: Option<[Rss; 3]>,
    /// Changes made.
    pub changes: usize,
    /// Changes that did not reach every stream within the timeout.
    pub lost: usize,
    /// Per change, until it reached every stream.
    pub all_reached: Latency,
    /// Every arrival of every change.
    pub arrivals: Latency,
}

impl FanoutReport {
    /// Memory per stream once idle, in KiB (from the server's resident memory).
    pub fn kib_per_stream(&self) -> Option<f64> {
        self.rss.as_ref().map(|[before, idle, _]| {
            (idle.rss_kib as f64 - before.rss_kib as f64) / self.watchers.max(1) as f64
        })
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let (Some(object), Some(kib)) = (value.as_object_mut(), self.kib_per_stream()) {
            object.insert("kib_per_stream".to_owned(), serde_json::json!(kib));
        }
        value.to_string()
    }
}

/// Arrival times of revisions, shared by the readers.
type Arrivals = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

/// What a reader keeps of an `AssignmentUpdate`: its place in the stream and how much it
/// carried, not the assignments (decoding 1,000 copies of a 100,000-assignment snapshot would
/// measure this client, not the router).
#[derive(Debug, Clone, Default, PartialEq)]
struct UpdateProbe {
    revision: u64,
    snapshot: bool,
    partial: bool,
    /// Assignments upserted.
    upserts: usize,
    /// Encoded bytes of the message.
    bytes: usize,
}

impl prost::Message for UpdateProbe {
    fn encode_raw(&self, _buf: &mut impl bytes::BufMut) {
        // Only ever received.
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let before = buf.remaining();
        match tag {
            1 => prost::encoding::uint64::merge(wire_type, &mut self.revision, buf, ctx)?,
            2 => prost::encoding::bool::merge(wire_type, &mut self.snapshot, buf, ctx)?,
            5 => prost::encoding::bool::merge(wire_type, &mut self.partial, buf, ctx)?,
            3 => {
                self.upserts += 1;
                prost::encoding::skip_field(wire_type, tag, buf, ctx)?;
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx)?,
        }
        // The field's value and its key (one byte for these tags).
        self.bytes += before - buf.remaining() + 1;
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = UpdateProbe::default();
    }
}

/// Opens `WatchAssignments`, reading its messages as [`UpdateProbe`]s.
async fn watch_probes(
    channel: tonic::transport::Channel,
    request: pb::WatchAssignmentsRequest,
) -> Result<tonic::Streaming<UpdateProbe>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/greyrouter.v1.Router/WatchAssignments",
    );
    let codec = tonic_prost::ProstCodec::<pb::WatchAssignmentsRequest, UpdateProbe>::default();
    Ok(grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// Measures; see the module documentation.
pub async fn fanout(config: &FanoutConfig) -> Result<FanoutReport, Error> {
    let service = config.keyspace.service_name(config.service);
    let channels = connect(&config.target, config.connections.max(1), config.timeout).await?;
    let mut admin = AdminClient::new(channels[0].clone());
    let mut router = RouterClient::new(channels[0].clone());
    let before = (config.pid != 0)
        .then(|| read_rss(config.pid))
        .transpose()?;
    let arrivals: Arrivals = Arc::default();
    let (snapshots, mut snapshot_done) = mpsc::channel(config.watchers.max(1));
    let started = Instant::now();
    let mut readers = Vec::with_capacity(config.watchers);
    for i in 0..config.watchers {
        let channel = channels[i % channels.len()].clone();
        let request = pb::WatchAssignmentsRequest {
            tenant_ids: Vec::new(),
            services: vec![service.clone()],
            from_revision: 0,
            history: String::new(),
            instances_by_version: false,
        };
        let (arrivals, snapshots) = (Arc::clone(&arrivals), snapshots.clone());
        readers.push(tokio::spawn(async move {
            let mut stream = watch_probes(channel, request).await?;
            let (mut assignments, mut messages, mut bytes) = (0, 0, 0);
            while let Some(update) = stream.message().await? {
                if update.snapshot {
                    assignments += update.upserts;
                    messages += 1;
                    bytes += update.bytes;
                    if !update.partial {
                        let _ = snapshots
                            .send((started.elapsed(), assignments, messages, bytes))
                            .await;
                    }
                    continue;
                }
                let now = Instant::now();
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(update.revision)
                    .or_default()
                    .push(now);
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    drop(snapshots);
    let mut snapshot = (Duration::ZERO, 0, 0, 0);
    for _ in 0..config.watchers {
        match tokio::time::timeout(config.timeout, snapshot_done.recv()).await {
            Ok(Some(done)) => snapshot = done,
            _ => {
                return Err(Error::Fanout(format!(
                    "not every stream had its snapshot within {:?}",
                    config.timeout
                )));
            }
        }
    }
    let idle = match config.pid {
        0 => None,
        pid => Some(settle(pid, Duration::from_secs(20)).await?.0),
    };

    let mut all_reached = new_histogram();
    let mut every = new_histogram();
    let mut lost = 0;
    for k in 0..config.changes {
        // The other version than the tenant has now, so that every stream gets an update.
        let tenant_id = config
            .keyspace
            .tenant_id(k % config.keyspace.tenants.max(1));
        let current = router
            .route(pb::RouteRequest {
                tenant_id: tenant_id.clone(),
                service: service.clone(),
                ..pb::RouteRequest::default()
            })
            .await
            .map_err(|status| Error::Fanout(format!("routing {tenant_id} failed: {status}")))?
            .into_inner()
            .version;
        let version = if current == "v2" { "v1" } else { "v2" };
        let sent = Instant::now();
        let revision = admin
            .set_tenant_version(pb::SetTenantVersionRequest {
                tenant_id,
                service: service.clone(),
                version: version.to_owned(),
                expected_version: None,
                force: true,
                migrate: false,
            })
            .await
            .map_err(|status| Error::Fanout(format!("a change failed: {status}")))?
            .into_inner()
            .revision;
        let deadline = Instant::now() + config.timeout;
        loop {
            let done = {
                let arrivals = arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                arrivals
                    .get(&revision)
                    .filter(|times| times.len() >= config.watchers)
                    .cloned()
            };
            if let Some(times) = done {
                let mut slowest = Duration::ZERO;
                for time in times {
                    let took = time.saturating_duration_since(sent);
                    slowest = slowest.max(took);
                    record(&mut every, took);
                }
                record(&mut all_reached, slowest);
                break;
            }
            if Instant::now() > deadline {
                lost += 1;
                break;
            }
            // Arrivals are stamped by the readers; this only looks at them.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let after = match config.pid {
        0 => None,
        pid => Some(read_rss(pid)?),
    };
    for reader in readers {
        reader.abort();
    }
    Ok(FanoutReport {
        watchers: config.watchers,
        connections: channels.len(),
        snapshot_assignments: snapshot.1,
        snapshot_messages: snapshot.2,
        snapshot_bytes: snapshot.3,
        snapshot_all_ms: snapshot.0.as_secs_f64() * 1000.0,
        rss: match (before, idle, after) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        },
        changes: config.changes,
        lost,
        all_reached: Latency::from_histogram(&all_reached),
        arrivals: Latency::from_histogram(&every),
    })
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} streams over {} connections, each a snapshot of {} assignments ({} messages, {} bytes)",
            self.watchers,
            self.connections,
            self.snapshot_assignments,
            self.snapshot_messages,
            self.snapshot_bytes
        )?;
        writeln!(
            f,
            "every snapshot delivered in {:.0} ms",
            self.snapshot_all_ms
        )?;
        if let (Some([before, idle, after]), Some(kib)) = (&self.rss, self.kib_per_stream()) {
            writeln!(
                f,
                "server RSS: {:.1} MiB before, {:.1} MiB idle after the snapshots ({kib:.1} KiB per stream), {:.1} MiB after the changes (peak {:.1})",
                Rss::mib(before.rss_kib),
                Rss::mib(idle.rss_kib),
                Rss::mib(after.rss_kib),
                Rss::mib(after.peak_kib)
            )?;
        }
        writeln!(
            f,
            "{} changes ({} lost): to every stream p50 {} µs, p99 {} µs, max {} µs; each arrival p50 {} µs, p99 {} µs",
            self.changes,
            self.lost,
            self.all_reached.p50,
            self.all_reached.p99,
            self.all_reached.max,
            self.arrivals.p50,
            self.arrivals.p99
        )
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_probe_reads_the_place_and_size_of_an_update_without_its_assignments() {
        let update = pb::AssignmentUpdate {
            revision: 300,
            snapshot: true,
            upserts: vec![
                pb::Assignment {
                    tenant_id: "acme".into(),
                    version: "v2".into(),
                    ..pb::Assignment::default()
                };
                3
            ],
            removals: vec![pb::AssignmentKey::default()],
            partial: true,
            cause: "pin".into(),
            history: "h".into(),
            versions: Vec::new(),
        };
        let probe = UpdateProbe::decode(&update.encode_to_vec()[..]).expect("decodes");
        assert_eq!(
            (probe.revision, probe.snapshot, probe.partial, probe.upserts),
            (300, true, true, 3)
        );
        assert_eq!(probe.bytes, update.encoded_len());
    }
}
