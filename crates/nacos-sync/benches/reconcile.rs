//! The cost of one sync's reconcile step at 5,000 instances: the first sync (everything new),
//! and a sync where nothing changed (which must make no change at all).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nacos_sync::reconcile::reconcile;
use nacos_sync::{DiscoveredInstance, RegistryView};
use routing_core::{Mutation, RoutingState, Service, Strategy};

const INSTANCES: usize = 5_000;

fn view() -> RegistryView {
    RegistryView {
        instances: (0..INSTANCES)
            .map(|i| DiscoveredInstance {
                service: "api".into(),
                id: format!(
                    "10.{}.{}.{}:8080@DEFAULT",
                    i / 65_536,
                    (i / 256) % 256,
                    i % 256
                ),
                address: format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256),
                version: Some(if i % 2 == 0 { "v1" } else { "v2" }.into()),
                weight: 100,
                healthy: true,
                region: "eu".into(),
                zone: String::new(),
                metadata: BTreeMap::from([("version".to_owned(), "v1".to_owned())]),
            })
            .collect(),
    }
}

fn empty_state() -> RoutingState {
    let service = Mutation::UpsertService {
        service: Service {
            name: "api".into(),
            default_version: "v1".into(),
            strategy: Strategy::RoundRobin,
            versions: ["v1".to_owned(), "v2".to_owned()].into(),
        },
        force: true,
    };
    RoutingState::default()
        .apply(&service)
        .map(|(state, _)| state)
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let services = vec!["api".to_owned()];
    let view = view();
    let empty = empty_state();
    let first = reconcile(&empty, &view, "nacos", &services, 0.5);
    let synced = first.mutations.iter().fold(empty.clone(), |state, m| {
        state.apply(m).map(|(s, _)| s).unwrap_or(state)
    });
    let again = reconcile(&synced, &view, "nacos", &services, 0.5);
    assert_eq!(first.mutations.len(), INSTANCES);
    assert!(
        again.mutations.is_empty(),
        "{} changes",
        again.mutations.len()
    );
    let mut group = c.benchmark_group("reconcile_5000");
    group.bench_function("first_sync", |b| {
        b.iter(|| {
            black_box(
                reconcile(&empty, &view, "nacos", &services, 0.5)
                    .mutations
                    .len(),
            )
        })
    });
    group.bench_function("nothing_changed", |b| {
        b.iter(|| {
            black_box(
                reconcile(&synced, &view, "nacos", &services, 0.5)
                    .mutations
                    .len(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
