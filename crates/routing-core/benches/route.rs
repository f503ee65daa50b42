//! Benchmarks of the pure routing core: version resolution, instance picking, whole routing
//! decisions and applying a change, without any server.
//!
//! Every benchmark measures one decision per iteration (`Throughput::Elements(1)`). Inputs vary
//! per iteration: (tenant, service) pairs are walked with a large prime stride, so consecutive
//! decisions touch unrelated tenants, and random strategies get fresh entropy from a `SplitMix64`
//! generator (about a nanosecond per draw).
//!
//! The states are built once per benchmark, lazily, so a filtered run builds only what it
//! measures; each build reports its time on stderr. The state shape:
//! - [`SERVICES`] services `svc-00`..; default version `v2`, versions `v1`, `v2`, `v3`;
//!   strategies cycle through [`Strategy::ALL`] (service `i` uses `ALL[i % 6]`);
//! - 4 instances per version: weights 1, 2, 3, 1; health 100, 90, 80, 70; two in `eu-west`,
//!   two in `us-east`;
//! - a rollout to `v3` at 30% (3,000 basis points) on every fourth service (`i % 4 == 1`);
//! - every tenth tenant pinned to `v1` on every fifth service (`i % 5 == 0`);
//! - tenants' regions cycle through `eu-west`, `us-east` and none.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use routing_core::{
    Cohort, Instance, Mutation, PickRequest, Pin, Pool, Rollout, RouteQuery, RoutingState, Service,
    Source, StateDump, Strategy, Tenant,
};

/// Services per state, in every benchmark.
const SERVICES: usize = 20;
/// Versions of every service.
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
/// Instances per version in the routing states.
const INSTANCES_PER_VERSION: usize = 4;
/// Regions instances run in; tenants cycle through these and no region.
const REGIONS: [&str; 2] = ["eu-west", "us-east"];
/// Stride of the walk over (tenant, service) pairs: a prime, so coprime with every pair count
/// used here (all are 2^a * 5^b) and the walk visits every pair once per cycle.
const PAIR_STRIDE: usize = 7_919;
/// Request keys cycled by the pick benchmarks (a power of two).
const HASH_KEYS: usize = 1_024;
/// Prepared `SetTenantVersion` mutations cycled by the apply benchmark (a power of two).
const MUTATIONS: usize = 4_096;

/// A cheap generator of per-iteration entropy (`SplitMix64`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..n` (multiply-shift).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// A walk over every (tenant, service) pair index with a fixed stride, without divisions.
struct PairWalk {
    index: usize,
    stride: usize,
    pairs: usize,
}

impl PairWalk {
    fn new(pairs: usize) -> Self {
        PairWalk {
            index: 0,
            stride: PAIR_STRIDE % pairs,
            pairs,
        }
    }

    fn next(&mut self) -> usize {
        self.index += self.stride;
        if self.index >= self.pairs {
            self.index -= self.pairs;
        }
        self.index
    }
}

/// A routing state of [`SERVICES`] services and the names to query it with.
struct Fixture {
    state: RoutingState,
    tenant_ids: Vec<String>,
    services: Vec<String>,
}

impl Fixture {
    fn pairs(&self) -> usize {
        self.tenant_ids.len() * SERVICES
    }

    /// Returns the (tenant, service) of a pair index (divisions by a constant: multiplies).
    fn pair(&self, index: usize) -> (&str, &str) {
        (
            &self.tenant_ids[index / SERVICES],
            &self.services[index % SERVICES],
        )
    }
}

fn tenant_id(index: usize) -> String {
    format!("tenant-{index:06}")
}

fn service_name(index: usize) -> String {
    format!("svc-{index:02}")
}

/// Builds a state of `tenants` tenants and [`SERVICES`] services (shape in the module docs)
/// through `RoutingState::from_dump`, reporting the time it took.
fn fixture(tenants: usize) -> Fixture {
    let services = SERVICES;
    let started = Instant::now();
    let tenant_ids: Vec<String> = (0..tenants).map(tenant_id).collect();
    let service_names: Vec<String> = (0..services).map(service_name).collect();
    let mut dump = StateDump::default();
    for (i, id) in tenant_ids.iter().enumerate() {
        dump.tenants.push(Tenant {
            id: id.clone(),
            name: String::new(),
            region: REGIONS.get(i % 3).copied().unwrap_or_default().to_owned(),
            tier: "pro".to_owned(),
            labels: BTreeMap::new(),
            active: true,
        });
    }
    for (s, name) in service_names.iter().enumerate() {
        dump.services.push(Service {
            name: name.clone(),
            default_version: "v2".to_owned(),
            strategy: Strategy::ALL[s % Strategy::ALL.len()],
            versions: VERSIONS
                .iter()
                .map(|v| (*v).to_owned())
                .collect::<BTreeSet<_>>(),
        });
        for (v, version) in VERSIONS.iter().enumerate() {
            for k in 0..INSTANCES_PER_VERSION {
                dump.instances.push(Instance {
                    id: format!("{name}-{version}-{k}"),
                    address: format!("10.{s}.{v}.{k}:8080"),
                    service: name.clone(),
                    version: (*version).to_owned(),
                    weight: 1 + (k % 3) as u32,
                    region: REGIONS[k % REGIONS.len()].to_owned(),
                    zone: "a".to_owned(),
                    metadata: BTreeMap::new(),
                    healthy: true,
                    health_score: 100 - 10 * k as u8,
                });
            }
        }
        if s % 4 == 1 {
            dump.rollouts.push(Rollout {
                id: format!("rollout-{name}"),
                service: name.clone(),
                to_version: "v3".to_owned(),
                basis_points: 3_000,
                salt: format!("rollout-{name}"),
                cohort: Cohort::default(),
                plan: None,
            });
        }
    }
    for id in tenant_ids.iter().step_by(10) {
        for name in service_names.iter().step_by(5) {
            dump.pins.push(Pin {
                tenant_id: id.clone(),
                service: name.clone(),
                version: "v1".to_owned(),
            });
        }
    }
    let state = RoutingState::from_dump(&dump).expect("the benchmark state is valid");
    let built = started.elapsed();
    let fixture = Fixture {
        state,
        tenant_ids,
        services: service_names,
    };
    // The share of pairs per source, over (at most) the first 20,000 pairs.
    let (mut pinned, mut rolled_out, mut sampled) = (0, 0, 0);
    for index in 0..fixture.pairs().min(20_000) {
        let (tenant, service) = fixture.pair(index);
        match fixture.state.resolve(tenant, service).map(|r| r.source) {
            Ok(Source::Pin) => pinned += 1,
            Ok(Source::Rollout { .. }) => rolled_out += 1,
            _ => {}
        }
        sampled += 1;
    }
    eprintln!(
        "set-up: {tenants} tenants x {services} services ({} pairs) built in {built:.1?}; \
         {:.1}% pinned, {:.1}% on the rollout",
        tenants * services,
        100.0 * f64::from(pinned) / f64::from(sampled),
        100.0 * f64::from(rolled_out) / f64::from(sampled),
    );
    fixture
}

/// The 10,000 tenants x 20 services state shared by `resolve`, `route` and `apply`.
static TEN_THOUSAND: LazyLock<Fixture> = LazyLock::new(|| fixture(10_000));

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(1));
    group.bench_function("10k_tenants_x_20_services", |b| {
        let fixture = &*TEN_THOUSAND;
        let mut walk = PairWalk::new(fixture.pairs());
        b.iter(|| {
            let (tenant, service) = fixture.pair(walk.next());
            fixture
                .state
                .resolve(black_box(tenant), black_box(service))
                .expect("every pair resolves")
        });
    });
    group.finish();
}

/// Builds a pool of `n` instances: weights 1-8, health 40-100, alternating regions, and a few
/// requests in flight on most instances (for `least_connections`).
fn pool(n: usize) -> Pool {
    let instances = (0..n).map(|k| {
        Arc::new(Instance {
            id: format!("instance-{k:05}"),
            address: format!("10.0.{}.{}:8080", k / 256, k % 256),
            service: "svc".to_owned(),
            version: "v1".to_owned(),
            weight: 1 + (k % 8) as u32,
            region: REGIONS[k % REGIONS.len()].to_owned(),
            zone: "a".to_owned(),
            metadata: BTreeMap::new(),
            healthy: true,
            health_score: 40 + (k * 37 % 61) as u8,
        })
    });
    let pool = Pool::new(instances, None);
    for (k, member) in pool.members().iter().enumerate() {
        for _ in 0..k % 5 {
            member.load.start(0);
        }
    }
    pool
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    let keys: Vec<String> = (0..HASH_KEYS).map(tenant_id).collect();
    for n in [4, 64, 1_024] {
        let pool = pool(n);
        for strategy in Strategy::ALL {
            group.bench_function(BenchmarkId::new(strategy.as_str(), n), |b| {
                let mut entropy = SplitMix64(n as u64);
                let mut key = 0;
                b.iter(|| {
                    key = (key + 1) % HASH_KEYS;
                    let request = PickRequest {
                        strategy,
                        region: "eu-west",
                        hash_key: &keys[key],
                        entropy: entropy.next(),
                        now_ms: 0,
                    };
                    pool.pick(black_box(&request))
                        .expect("the pool has instances")
                });
            });
        }
    }
    group.finish();
}

/// Measures whole routing decisions over a fixture, cycling through its pairs.
fn bench_route(c: &mut Criterion, id: &str, fixture: &dyn Fn() -> &'static Fixture) {
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.bench_function(id, |b| {
        let fixture = fixture();
        let mut walk = PairWalk::new(fixture.pairs());
        let mut entropy = SplitMix64(fixture.pairs() as u64);
        b.iter(|| {
            let (tenant_id, service) = fixture.pair(walk.next());
            let query = RouteQuery {
                tenant_id,
                service,
                region: "",
                hash_key: "",
                strategy: None,
                entropy: entropy.next(),
                now_ms: 0,
            };
            let decision = fixture
                .state
                .route(black_box(&query))
                .expect("every pair routes");
            // The decision borrows the state; return what a caller would read from it.
            (decision.resolution, Arc::clone(&decision.member.instance))
        });
    });
    group.finish();
}

fn route(c: &mut Criterion) {
    for (id, tenants) in [
        ("1k_pairs", 50),
        ("100k_pairs", 5_000),
        ("1M_pairs", 50_000),
    ] {
        // Built on first use and leaked, so a filtered run builds only the states it measures;
        // three states of at most 50,000 tenants.
        let cell: OnceCell<&'static Fixture> = OnceCell::new();
        bench_route(c, id, &|| {
            *cell.get_or_init(|| Box::leak(Box::new(fixture(tenants))))
        });
    }
    bench_route(c, "10k_tenants_x_20_services", &|| &*TEN_THOUSAND);
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    group.bench_function("set_tenant_version", |b| {
        let fixture = &*TEN_THOUSAND;
        let mut rng = SplitMix64(7);
        let mutations: Vec<Mutation> = (0..MUTATIONS)
            .map(|_| Mutation::SetTenantVersion {
                tenant_id: fixture.tenant_ids[rng.below(fixture.tenant_ids.len())].clone(),
                service: fixture.services[rng.below(SERVICES)].clone(),
                version: VERSIONS[rng.below(VERSIONS.len())].to_owned(),
                expected_version: None,
                force: false,
            })
            .collect();
        let mut index = 0;
        // Each iteration applies one change to the same base revision; the new revision is
        // dropped inside the timed loop, as a replaced revision eventually is.
        b.iter(|| {
            index = (index + 1) % MUTATIONS;
            fixture
                .state
                .apply(black_box(&mutations[index]))
                .expect("every pin applies")
        });
    });
    group.finish();
}

criterion_group!(benches, resolve, pick, route, apply);
criterion_main!(benches);
