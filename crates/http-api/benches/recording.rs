//! What metrics cost a routing decision: `Node::route` with no recorder (metrics off) and with
//! the Prometheus recorder `/metrics` renders (metrics on), side by side in one run.

use std::collections::HashMap;
use std::sync::Arc;

use control::{Actor, Node, NodeSettings};
use criterion::{Criterion, criterion_group, criterion_main};
use greyrouter_store::{MemoryStore, Store, suite};
use metrics_exporter_prometheus::PrometheusBuilder;
use routing_core::RouteQuery;

const TENANTS: usize = 1_000;

fn node(runtime: &tokio::runtime::Runtime) -> Arc<Node> {
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let node = Node::start(store, None, NodeSettings::default())
            .await
            .expect("a node");
        let actor = Actor::system("bench", "");
        let mut mutations = vec![suite::service()];
        for id in ["a1", "a2", "a3", "a4"] {
            mutations.push(suite::instance(id, "v1"));
        }
        for i in 0..TENANTS {
            mutations.push(suite::tenant(&format!("t{i}")));
        }
        for mutation in mutations {
            node.commit(mutation, &actor).await.expect("commit");
        }
        node
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("t{i}")).collect();
    let metadata = HashMap::new();
    let mut next = 0;
    // A node takes its metric handles from the recorder installed when it starts.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let without = node(&runtime);
    let with = metrics::with_local_recorder(&recorder, || node(&runtime));
    let mut decide = |node: &Node| {
        next = (next + 1) % TENANTS;
        let state = node.snapshot();
        let query = RouteQuery {
            tenant_id: &tenants[next],
            service: "api",
            region: "",
            hash_key: "",
            strategy: None,
            entropy: next as u64,
            now_ms: 1,
        };
        let decision = node.route(&state, &query, &metadata).expect("routed");
        std::hint::black_box(decision.member.instance.id.len())
    };
    let mut group = c.benchmark_group("route_decision");
    group.bench_function("metrics_off", |b| b.iter(|| decide(&without)));
    group.bench_function("metrics_on", |b| {
        b.iter(|| {
            let picked = decide(&with);
            with.route_handled(std::time::Duration::from_nanos(picked as u64));
            picked
        })
    });
    group.finish();
    // What a scrape costs the router: the readings, then the rendering.
    let mut group = c.benchmark_group("scrape");
    metrics::with_local_recorder(&recorder, || {
        group.bench_function("collect_metrics", |b| {
            b.iter(|| runtime.block_on(with.collect_metrics()))
        });
    });
    group.bench_function("render", |b| b.iter(|| handle.render().len()));
    group.finish();
    // The decisions were recorded: the figure is not of a recorder that dropped them.
    let text = handle.render();
    assert!(
        text.contains("grey_router_requests_total{"),
        "nothing recorded:\n{text}"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
