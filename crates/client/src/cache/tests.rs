//! The local copy: snapshots, changes in parts, shared pools and live load across revisions.

use super::*;

fn address(id: &str, region: &str) -> pb::InstanceAddress {
    pb::InstanceAddress {
        instance_id: id.into(),
        address: format!("{id}.internal:8080"),
        weight: 1,
        region: region.into(),
        zone: String::new(),
        healthy: true,
        health_score: 100,
    }
}

fn assignment(tenant: &str, service: &str, version: &str, instances: &[&str]) -> pb::Assignment {
    pb::Assignment {
        tenant_id: tenant.into(),
        service: service.into(),
        version: version.into(),
        source: "default".into(),
        instances: instances.iter().map(|id| address(id, "")).collect(),
        strategy: pb::Strategy::RoundRobin.into(),
        region: String::new(),
    }
}

fn update(revision: u64, snapshot: bool, upserts: Vec<pb::Assignment>) -> pb::AssignmentUpdate {
    pb::AssignmentUpdate {
        revision,
        snapshot,
        upserts,
        removals: Vec::new(),
        partial: false,
        cause: String::new(),
        history: "h1".into(),
        versions: Vec::new(),
    }
}

fn route(cache: &Cache, tenant: &str, service: &str) -> Result<Decision, ClientError> {
    cache.route(&RouteRequest::new(tenant, service), 7, 1_000, &[])
}

/// The instance each tenant's decision picks, one decision after another.
fn picks(cache: &Cache, tenants: &[&str]) -> Vec<String> {
    tenants
        .iter()
        .map(|tenant| {
            route(cache, tenant, "api")
                .expect("held")
                .instance_id()
                .to_owned()
        })
        .collect()
}

fn snapshot_of_two_tenants() -> CacheBuilder {
    let mut builder = CacheBuilder::default();
    let applied = builder.accept(update(
        5,
        true,
        vec![
            assignment("acme", "api", "v1", &["a1", "a2"]),
            assignment("globex", "api", "v1", &["a1", "a2"]),
            assignment("acme", "billing", "v3", &["c1"]),
        ],
    ));
    assert_eq!(applied.map(|a| (a.revision, a.upserts)), Some((5, 3)));
    builder
}

#[test]
fn a_snapshot_fills_the_cache_and_decisions_come_from_it() {
    let builder = snapshot_of_two_tenants();
    let cache = builder.current();
    assert!(cache.synced);
    assert_eq!((cache.revision, cache.pairs), (5, 3));
    let decision = route(cache, "acme", "billing").expect("held");
    assert_eq!(
        (
            decision.version(),
            decision.instance_id(),
            decision.origin()
        ),
        ("v3", "c1", Origin::Local)
    );
    assert_eq!(decision.revision(), 5);
    assert!(matches!(
        route(cache, "initech", "api"),
        Err(ClientError::NotCached { .. })
    ));
    assert!(matches!(
        route(cache, "globex", "billing"),
        Err(ClientError::NotCached { .. })
    ));
}

#[test]
fn tenants_on_the_same_version_share_one_pool_and_its_round_robin() {
    let builder = snapshot_of_two_tenants();
    let cache = builder.current();
    // One cursor for both tenants: a1 a2 a1 a2 whoever asks.
    assert_eq!(
        picks(cache, &["acme", "globex", "acme", "globex"]),
        ["a1", "a2", "a1", "a2"]
    );
}

#[test]
fn a_revision_in_parts_applies_only_when_complete() {
    let mut builder = snapshot_of_two_tenants();
    let mut first = update(6, false, vec![assignment("acme", "api", "v2", &["b1"])]);
    first.partial = true;
    assert_eq!(builder.accept(first), None);
    assert_eq!(
        route(builder.current(), "acme", "api")
            .expect("held")
            .version(),
        "v1"
    );
    let mut last = update(6, false, Vec::new());
    last.removals.push(pb::AssignmentKey {
        tenant_id: "acme".into(),
        service: "billing".into(),
    });
    let applied = builder.accept(last).expect("complete");
    assert_eq!((applied.upserts, applied.removals), (1, 1));
    let cache = builder.current();
    assert_eq!((cache.revision, cache.pairs), (6, 2));
    assert_eq!(route(cache, "acme", "api").expect("held").version(), "v2");
    assert!(matches!(
        route(cache, "acme", "billing"),
        Err(ClientError::NotCached { .. })
    ));
}

#[test]
fn an_incomplete_revision_cut_off_by_a_broken_stream_is_dropped() {
    let mut builder = snapshot_of_two_tenants();
    let mut cut = update(6, false, vec![assignment("acme", "api", "v2", &["b1"])]);
    cut.partial = true;
    assert_eq!(builder.accept(cut), None);
    builder.drop_pending();
    let applied = builder.accept(update(
        6,
        false,
        vec![assignment("globex", "api", "v2", &["b1"])],
    ));
    assert_eq!(applied.map(|a| a.upserts), Some(1));
    assert_eq!(
        route(builder.current(), "acme", "api")
            .expect("held")
            .version(),
        "v1"
    );
    assert_eq!(
        route(builder.current(), "globex", "api")
            .expect("held")
            .version(),
        "v2"
    );
}

#[test]
fn a_new_snapshot_replaces_everything_and_keeps_live_load() {
    let mut builder = snapshot_of_two_tenants();
    let held = route(builder.current(), "acme", "billing").expect("held");
    let load = Arc::clone(held.load().expect("local"));
    load.eject_until(u64::MAX);
    let applied = builder.accept(update(
        9,
        true,
        vec![assignment("acme", "billing", "v3", &["c1", "c2"])],
    ));
    assert_eq!(applied.map(|a| a.snapshot), Some(true));
    let cache = builder.current();
    assert_eq!((cache.revision, cache.pairs), (9, 1));
    assert!(matches!(
        route(cache, "acme", "api"),
        Err(ClientError::NotCached { .. })
    ));
    // c1 is still ejected in the new pool: c2 takes every request.
    for _ in 0..3 {
        assert_eq!(
            route(cache, "acme", "billing").expect("held").instance_id(),
            "c2"
        );
    }
}

#[test]
fn instances_listed_once_per_version_serve_every_tenant_of_that_version() {
    let mut builder = CacheBuilder::default();
    let mut snapshot = update(
        5,
        true,
        vec![
            assignment("acme", "api", "v1", &[]),
            assignment("globex", "api", "v1", &[]),
            assignment("acme", "billing", "v3", &[]),
        ],
    );
    snapshot.versions = vec![pb::VersionInstances {
        service: "api".into(),
        version: "v1".into(),
        instances: vec![address("a1", ""), address("a2", "")],
    }];
    builder.accept(snapshot);
    let cache = builder.current();
    assert_eq!(cache.pairs, 3);
    // Both tenants of v1 pick from v1's one pool: a1 a2 a1 a2 whoever asks.
    assert_eq!(
        picks(cache, &["acme", "globex", "acme", "globex"]),
        ["a1", "a2", "a1", "a2"]
    );
    // A version the message does not list has no instances: unavailable, not missing.
    assert!(matches!(
        route(cache, "acme", "billing"),
        Err(ClientError::NoHealthyInstance { .. })
    ));
    // A change listing v1 as it was keeps v1's pool (and its live load) for the new tenant.
    let before = Arc::as_ptr(&builder.pools[&("api".to_owned(), "v1".to_owned())]);
    let mut change = update(6, false, vec![assignment("initech", "api", "v1", &[])]);
    change.versions = vec![pb::VersionInstances {
        service: "api".into(),
        version: "v1".into(),
        instances: vec![address("a2", ""), address("a1", "")],
    }];
    builder.accept(change);
    let after = Arc::as_ptr(&builder.pools[&("api".to_owned(), "v1".to_owned())]);
    assert_eq!(before, after);
    let later = picks(builder.current(), &["initech", "acme"]);
    // The same cursor: it goes on from where the snapshot's tenants left it.
    assert_eq!(later, ["a1", "a2"]);
}

#[test]
fn an_unchanged_instance_list_keeps_the_same_pool() {
    let mut builder = snapshot_of_two_tenants();
    let before = Arc::as_ptr(&builder.pools[&("api".to_owned(), "v1".to_owned())]);
    builder.accept(update(
        6,
        false,
        vec![assignment("acme", "api", "v1", &["a2", "a1"])],
    ));
    let after = Arc::as_ptr(&builder.pools[&("api".to_owned(), "v1".to_owned())]);
    assert_eq!(before, after);
    builder.accept(update(
        7,
        false,
        vec![assignment("acme", "api", "v1", &["a1", "a2", "a3"])],
    ));
    let changed = Arc::as_ptr(&builder.pools[&("api".to_owned(), "v1".to_owned())]);
    assert_ne!(before, changed);
}

#[test]
fn an_avoided_instance_is_passed_over_while_another_is_eligible() {
    let builder = snapshot_of_two_tenants();
    let cache = builder.current();
    let request = RouteRequest::new("acme", "api").strategy(Strategy::ConsistentHash);
    let first = cache.route(&request, 1, 1_000, &[]).expect("held");
    let again = cache
        .route(&request, 1, 1_000, &[first.instance_id().to_owned()])
        .expect("held");
    assert_ne!(first.instance_id(), again.instance_id());
    // Both avoided: the strategy's own pick.
    let both = ["a1".to_owned(), "a2".to_owned()];
    let last = cache.route(&request, 1, 1_000, &both).expect("held");
    assert_eq!(last.instance_id(), first.instance_id());
}

#[test]
fn a_version_without_eligible_instances_is_unavailable_not_missing() {
    let mut builder = CacheBuilder::default();
    let mut drained = assignment("acme", "api", "v1", &["a1"]);
    drained.instances[0].weight = 0;
    builder.accept(update(
        1,
        true,
        vec![drained, assignment("acme", "web", "v1", &[])],
    ));
    for service in ["api", "web"] {
        let err = route(builder.current(), "acme", service).expect_err("no instance");
        assert!(
            matches!(err, ClientError::NoHealthyInstance { .. }),
            "{err}"
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}

#[test]
fn the_tenants_region_is_preferred_and_a_request_may_name_another() {
    let mut builder = CacheBuilder::default();
    let mut message = assignment("acme", "api", "v1", &[]);
    message.instances = vec![address("eu-1", "eu"), address("us-1", "us")];
    message.region = "us".into();
    builder.accept(update(1, true, vec![message]));
    let cache = builder.current();
    for _ in 0..3 {
        assert_eq!(
            route(cache, "acme", "api").expect("held").instance_id(),
            "us-1"
        );
    }
    let eu = cache
        .route(
            &RouteRequest::new("acme", "api").region("eu"),
            1,
            1_000,
            &[],
        )
        .expect("held");
    assert_eq!(eu.instance_id(), "eu-1");
}

#[test]
fn unknown_strategies_fall_back_to_round_robin() {
    assert_eq!(strategy(99), Strategy::RoundRobin);
    for known in Strategy::ALL {
        assert_eq!(strategy(pb::Strategy::from(known).into()), known);
    }
}

#[test]
fn tenants_with_the_same_assignment_share_one_copy_of_it() {
    let mut builder = snapshot_of_two_tenants();
    let acme = route(builder.current(), "acme", "api").expect("held");
    let globex = route(builder.current(), "globex", "api").expect("held");
    assert!(Arc::ptr_eq(&acme.assignment, &globex.assignment));
    assert_eq!((acme.tenant_id(), globex.tenant_id()), ("acme", "globex"));
    // A pin makes acme's differ; globex keeps the shared one.
    let mut pinned = assignment("acme", "api", "v1", &["a1", "a2"]);
    pinned.source = "pin".into();
    builder.accept(update(6, false, vec![pinned]));
    let acme = route(builder.current(), "acme", "api").expect("held");
    let globex_after = route(builder.current(), "globex", "api").expect("held");
    assert!(!Arc::ptr_eq(&acme.assignment, &globex_after.assignment));
    assert!(Arc::ptr_eq(&globex.assignment, &globex_after.assignment));
    assert_eq!(acme.source(), "pin");
}

#[test]
fn only_least_connections_counts_requests_in_flight() {
    let builder = snapshot_of_two_tenants();
    let cache = builder.current();
    let plain = route(cache, "acme", "billing").expect("held");
    assert!(!plain.started());
    assert_eq!(plain.load().map(|l| l.in_flight(1_000)), Some(0));
    let request = RouteRequest::new("acme", "billing").strategy(Strategy::LeastConnections);
    let counted = cache.route(&request, 3, 1_000, &[]).expect("held");
    assert!(counted.started());
    assert_eq!(counted.load().map(|l| l.in_flight(1_000)), Some(1));
}

#[test]
fn a_least_connections_decision_never_reported_stops_counting() {
    use routing_core::balance::IN_FLIGHT_TIMEOUT_MS;
    let builder = snapshot_of_two_tenants();
    let request = RouteRequest::new("acme", "billing").strategy(Strategy::LeastConnections);
    let counted = builder
        .current()
        .route(&request, 3, 1_000, &[])
        .expect("held");
    let load = counted.load().expect("a local decision");
    assert_eq!(load.in_flight(1_000 + IN_FLIGHT_TIMEOUT_MS - 1), 1);
    assert_eq!(load.in_flight(1_000 + 2 * IN_FLIGHT_TIMEOUT_MS), 0);
}

#[test]
fn a_local_copy_without_a_connection_decides_from_the_updates_it_is_fed() {
    // Only the public API, as a service's own test would use it.
    let mut copy = LocalCopy::new();
    assert!(copy.is_empty());
    assert_eq!(copy.revision(), 0);
    let nothing = copy
        .route(&RouteRequest::new("acme", "api"), 1, 1_000)
        .expect_err("nothing held yet");
    assert!(
        matches!(nothing, ClientError::NotCached { .. }),
        "{nothing}"
    );

    let mut first = update(3, true, vec![assignment("acme", "api", "v1", &["a1"])]);
    first.partial = true;
    assert!(
        !copy.apply(first),
        "a part of a revision waits for the rest"
    );
    assert!(copy.is_empty());
    let last = update(
        3,
        true,
        vec![assignment("globex", "api", "v2", &["b1", "b2"])],
    );
    assert!(copy.apply(last));
    assert_eq!((copy.revision(), copy.len()), (3, 2));

    let acme = copy
        .route(&RouteRequest::new("acme", "api"), 1, 1_000)
        .expect("held");
    assert_eq!(
        (
            acme.version(),
            acme.source(),
            acme.instance_id(),
            acme.origin()
        ),
        ("v1", "default", "a1", Origin::Local)
    );
    assert_eq!(acme.address(), "a1.internal:8080");
    assert_eq!(acme.revision(), 3);
    // Fixed assignments, fixed entropy: the same decision every time.
    let keyed = RouteRequest::new("globex", "api")
        .strategy(Strategy::ConsistentHash)
        .hash_key("user-7");
    let once = copy.route(&keyed, 5, 1_000).expect("held");
    for entropy in 0..10 {
        let again = copy.route(&keyed, entropy, 1_000).expect("held");
        assert_eq!(again.instance_id(), once.instance_id());
    }
    for (tenant, service) in [("initech", "api"), ("acme", "billing")] {
        let err = copy
            .route(&RouteRequest::new(tenant, service), 1, 1_000)
            .expect_err("not held");
        assert!(
            matches!(&err, ClientError::NotCached { tenant_id, service: s }
                if tenant_id == tenant && s == service),
            "{err}"
        );
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    // A change moves acme; a removal drops globex.
    let mut change = update(4, false, vec![assignment("acme", "api", "v2", &["b1"])]);
    change.removals.push(pb::AssignmentKey {
        tenant_id: "globex".into(),
        service: "api".into(),
    });
    assert!(copy.apply(change));
    assert_eq!((copy.revision(), copy.len()), (4, 1));
    let moved = copy
        .route(&RouteRequest::new("acme", "api"), 1, 1_000)
        .expect("held");
    assert_eq!((moved.version(), moved.instance_id()), ("v2", "b1"));
    assert!(matches!(
        copy.route(&RouteRequest::new("globex", "api"), 1, 1_000),
        Err(ClientError::NotCached { .. })
    ));
}

#[test]
fn a_snapshot_cut_off_changes_nothing_and_gives_its_pools_back() {
    let mut builder = snapshot_of_two_tenants();
    // One instance is ejected: its pool's live load must survive a snapshot that never
    // completes.
    let held = route(builder.current(), "acme", "api").expect("held");
    let ejected = held.instance_id().to_owned();
    held.load().expect("local").eject_until(u64::MAX);
    let other = if ejected == "a1" { "a2" } else { "a1" };
    // The first part of a snapshot: folded in as it arrives, published only when complete.
    let mut first = update(
        9,
        true,
        vec![assignment("acme", "api", "v1", &["a1", "a2", "a3"])],
    );
    first.partial = true;
    assert_eq!(builder.accept(first), None);
    assert_eq!(builder.current().revision, 5);
    builder.drop_pending();
    // A change of the last complete revision still finds the old pool and its ejection.
    let applied = builder.accept(update(
        6,
        false,
        vec![assignment("initech", "api", "v1", &["a1", "a2"])],
    ));
    assert_eq!(applied.map(|a| a.upserts), Some(1));
    let cache = builder.current();
    assert_eq!((cache.revision, cache.pairs), (6, 4));
    for _ in 0..3 {
        assert_eq!(
            route(cache, "initech", "api").expect("held").instance_id(),
            other
        );
    }
}
