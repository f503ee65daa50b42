//! A client's local decision against the router's own, on the same assignments.
//!
//! One state of `tenants x 20` services (4 instances per version, round robin, tenants in two
//! regions) is built with `routing-core`; its watch snapshot (`routing_core::watch::snapshot`, what
//! `WatchAssignments` sends) fills a [`LocalCopy`]. Each group then measures, side by side and with
//! the same walk over (tenant, service) pairs:
//! - `sdk_local`: [`LocalCopy::route`] with the time read from an atomic, what
//!   `Client::route_local` does per request (it adds one `ArcSwap` load of the current copy;
//!   its clock is an atomic a task renews every 5 ms);
//! - `routing_core`: `RoutingState::route`, what the router does per `Route` call (its baseline),
//!
//! at 1,000, 100,000 and 1,000,000 pairs. One decision per iteration.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use greyrouter_client::{LocalCopy, RouteRequest};
use greyrouter_proto::v1 as pb;
use routing_core::watch::{AssignmentFilter, snapshot};
use routing_core::{Instance, Mutation, RouteQuery, RoutingState, Service, Strategy, Tenant};

const SERVICES: usize = 20;
const INSTANCES: usize = 4;
const REGIONS: [&str; 2] = ["eu-west", "us-east"];
/// Stride of the walk over pairs: a prime, coprime with every pair count used.
const PAIR_STRIDE: usize = 7_919;

fn state(tenants: usize) -> RoutingState {
    let mut mutations = Vec::new();
    for s in 0..SERVICES {
        mutations.push(Mutation::UpsertService {
            service: Service {
                name: format!("svc-{s:02}"),
                default_version: "v1".into(),
                strategy: Strategy::RoundRobin,
                versions: ["v1".to_owned()].into(),
            },
            force: false,
        });
        for i in 0..INSTANCES {
            mutations.push(Mutation::RegisterInstance {
                instance: Instance {
                    id: format!("svc-{s:02}-v1-{i}"),
                    address: format!("10.0.{s}.{i}:8080"),
                    service: format!("svc-{s:02}"),
                    version: "v1".into(),
                    weight: 1,
                    region: REGIONS[i % 2].into(),
                    zone: String::new(),
                    metadata: Default::default(),
                    healthy: true,
                    health_score: 100,
                },
            });
        }
    }
    for t in 0..tenants {
        mutations.push(Mutation::UpsertTenant {
            tenant: Tenant {
                id: format!("tenant-{t}"),
                name: String::new(),
                region: REGIONS[t % 2].into(),
                tier: "pro".into(),
                labels: Default::default(),
                active: true,
            },
        });
    }
    let mut state = RoutingState::default();
    for mutation in &mutations {
        match state.apply(mutation) {
            Ok((next, _)) => state = next,
            Err(err) => panic!("{mutation:?}: {err}"),
        }
    }
    state
}

/// The snapshot a watcher of everything is sent, as one message.
fn watch_snapshot(state: &RoutingState) -> pb::AssignmentUpdate {
    let upserts = snapshot(state, &AssignmentFilter::default())
        .into_iter()
        .map(|assignment| pb::Assignment {
            instances: assignment.pool.as_ref().map_or_else(Vec::new, |pool| {
                pool.members()
                    .iter()
                    .map(|m| pb::InstanceAddress {
                        instance_id: m.instance.id.clone(),
                        address: m.instance.address.clone(),
                        weight: m.instance.weight,
                        region: m.instance.region.clone(),
                        zone: m.instance.zone.clone(),
                        healthy: m.instance.healthy,
                        health_score: u32::from(m.instance.health_score),
                    })
                    .collect()
            }),
            tenant_id: assignment.tenant_id,
            service: assignment.service,
            version: assignment.resolution.version,
            source: assignment.resolution.source.to_string(),
            strategy: pb::Strategy::RoundRobin.into(),
            region: assignment.region,
        })
        .collect();
    pb::AssignmentUpdate {
        revision: state.revision(),
        snapshot: true,
        upserts,
        removals: Vec::new(),
        partial: false,
        cause: String::new(),
        history: "h1".into(),
        versions: Vec::new(),
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    for tenants in [50, 5_000, 50_000] {
        let pairs = tenants * SERVICES;
        let started = Instant::now();
        let state = state(tenants);
        let mut copy = LocalCopy::new();
        assert!(copy.apply(watch_snapshot(&state)));
        assert_eq!(copy.len(), pairs);
        eprintln!(
            "{pairs} pairs: state and local copy built in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let names: Vec<(String, String)> = (0..pairs)
            .map(|p| {
                (
                    format!("tenant-{}", p / SERVICES),
                    format!("svc-{:02}", p % SERVICES),
                )
            })
            .collect();
        let stride = PAIR_STRIDE % pairs;
        let clock = AtomicU64::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
        group.bench_function(BenchmarkId::new("sdk_local", pairs), |b| {
            let mut index = 0;
            b.iter(|| {
                index = next_pair(index, stride, pairs);
                let (tenant, service) = &names[index];
                let now_ms = clock.load(Ordering::Relaxed);
                let decision =
                    copy.route(&RouteRequest::new(tenant, service), index as u64, now_ms);
                black_box(decision.is_ok())
            });
        });
        group.bench_function(BenchmarkId::new("routing_core", pairs), |b| {
            let mut index = 0;
            b.iter(|| {
                index = next_pair(index, stride, pairs);
                let (tenant, service) = &names[index];
                let decision = state.route(&RouteQuery {
                    tenant_id: tenant,
                    service,
                    region: "",
                    hash_key: "",
                    strategy: None,
                    entropy: index as u64,
                    now_ms: 0,
                });
                black_box(decision.is_ok())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);

/// The pair `stride` after `index`, wrapping around `pairs`: far enough apart that
/// consecutive decisions do not share cache lines.
fn next_pair(index: usize, stride: usize, pairs: usize) -> usize {
    let next = index + stride;
    if next >= pairs { next - pairs } else { next }
}
