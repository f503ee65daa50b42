use std::collections::BTreeMap;

use routing_core::{Service, Strategy};

use super::*;

const SOURCE: &str = "nacos";

fn services() -> Vec<String> {
    vec!["api".to_owned()]
}

fn state(mutations: &[Mutation]) -> RoutingState {
    let service = Mutation::UpsertService {
        service: Service {
            name: "api".into(),
            default_version: "v1".into(),
            strategy: Strategy::RoundRobin,
            versions: ["v1".to_owned(), "v2".to_owned()].into(),
        },
        force: true,
    };
    std::iter::once(&service)
        .chain(mutations)
        .fold(RoutingState::default(), |state, mutation| {
            match state.apply(mutation) {
                Ok((next, _)) => next,
                Err(err) => panic!("{mutation:?}: {err}"),
            }
        })
}

fn found(id: &str, version: Option<&str>) -> DiscoveredInstance {
    DiscoveredInstance {
        service: "api".into(),
        id: id.into(),
        address: format!("10.0.0.{}:8080", id.len()),
        version: version.map(str::to_owned),
        weight: 100,
        healthy: true,
        region: "eu".into(),
        zone: String::new(),
        metadata: BTreeMap::from([("version".to_owned(), version.unwrap_or("").to_owned())]),
    }
}

fn view(instances: Vec<DiscoveredInstance>) -> RegistryView {
    RegistryView { instances }
}

/// Applies a reconciliation's changes.
fn applied(state: &RoutingState, plan: &Reconciliation) -> RoutingState {
    plan.mutations
        .iter()
        .fold(state.clone(), |state, mutation| {
            match state.apply(mutation) {
                Ok((next, _)) => next,
                Err(err) => panic!("{mutation:?}: {err}"),
            }
        })
}

fn ids(state: &RoutingState) -> Vec<String> {
    let mut ids: Vec<String> = state
        .service("api")
        .map(|s| {
            s.pools()
                .flat_map(|(_, pool)| pool.members().iter().map(|m| m.instance.id.clone()))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn new_instances_are_registered_marked_with_their_source() {
    let before = state(&[]);
    let plan = reconcile(
        &before,
        &view(vec![found("a", Some("v1")), found("b", Some("v2"))]),
        SOURCE,
        &services(),
        0.5,
    );
    assert_eq!(plan.mutations.len(), 2, "{plan:?}");
    let after = applied(&before, &plan);
    assert_eq!(ids(&after), ["a", "b"]);
    let pool = after.service("api").and_then(|s| s.pool("v2")).expect("v2");
    let b = pool.member("b").expect("b");
    assert_eq!(
        b.instance.metadata.get(SOURCE_KEY).map(String::as_str),
        Some(SOURCE)
    );
    assert_eq!(b.instance.weight, 100);
}

#[test]
fn a_second_sync_of_the_same_view_changes_nothing() {
    let registry = view(vec![found("a", Some("v1")), found("b", Some("v1"))]);
    let first = reconcile(&state(&[]), &registry, SOURCE, &services(), 0.5);
    let after = applied(&state(&[]), &first);
    let second = reconcile(&after, &registry, SOURCE, &services(), 0.5);
    assert_eq!(second, Reconciliation::default());
}

#[test]
fn changed_fields_update_and_a_missing_instance_is_removed() {
    let registry = view(vec![
        found("a", Some("v1")),
        found("b", Some("v1")),
        found("c", Some("v1")),
    ]);
    let before = applied(
        &state(&[]),
        &reconcile(&state(&[]), &registry, SOURCE, &services(), 0.5),
    );
    let mut heavier = found("a", Some("v2"));
    heavier.weight = 300;
    heavier.healthy = false;
    let plan = reconcile(
        &before,
        &view(vec![heavier, found("b", Some("v1"))]),
        SOURCE,
        &services(),
        0.5,
    );
    let after = applied(&before, &plan);
    assert_eq!(ids(&after), ["a", "b"]);
    let a = after
        .service("api")
        .and_then(|s| s.pool("v2"))
        .and_then(|p| p.member("a"))
        .expect("a moved to v2");
    assert_eq!((a.instance.weight, a.instance.healthy), (300, false));
}

#[test]
fn instances_registered_by_hand_are_never_touched() {
    let by_hand = Mutation::RegisterInstance {
        instance: Instance::new("manual", "10.9.9.9:80", "api", "v1"),
    };
    let before = state(&[by_hand]);
    // The registry knows nothing of it: it stays. The registry lists the same id: left as is.
    let plan = reconcile(
        &before,
        &view(vec![found("manual", Some("v2"))]),
        SOURCE,
        &services(),
        0.5,
    );
    assert!(plan.mutations.is_empty(), "{plan:?}");
    assert_eq!(plan.skipped.len(), 1, "{plan:?}");
    let plan = reconcile(&before, &view(vec![]), SOURCE, &services(), 0.5);
    assert!(plan.mutations.is_empty(), "{plan:?}");
}

#[test]
fn an_instance_without_a_version_is_reported_not_guessed() {
    let plan = reconcile(
        &state(&[]),
        &view(vec![found("a", None)]),
        SOURCE,
        &services(),
        0.5,
    );
    assert!(plan.mutations.is_empty());
    assert!(plan.skipped[0].contains("no version"), "{plan:?}");
}

#[test]
fn services_not_configured_or_not_defined_are_left_alone() {
    let mut other = found("x", Some("v1"));
    other.service = "billing".into();
    let plan = reconcile(
        &state(&[]),
        &view(vec![other.clone()]),
        SOURCE,
        &services(),
        0.5,
    );
    assert_eq!(
        plan,
        Reconciliation::default(),
        "not configured: not even read"
    );
    let plan = reconcile(
        &state(&[]),
        &view(vec![other]),
        SOURCE,
        &["billing".to_owned()],
        0.5,
    );
    assert!(plan.mutations.is_empty());
    assert!(plan.skipped[0].contains("create it first"), "{plan:?}");
}

#[test]
fn removing_most_instances_at_once_is_held_and_removing_one_proceeds() {
    let five: Vec<DiscoveredInstance> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| found(id, Some("v1")))
        .collect();
    let before = applied(
        &state(&[]),
        &reconcile(&state(&[]), &view(five.clone()), SOURCE, &services(), 0.5),
    );
    // Four of five gone (80%): held.
    let plan = reconcile(&before, &view(five[..1].to_vec()), SOURCE, &services(), 0.5);
    assert!(plan.mutations.is_empty(), "{plan:?}");
    assert!(plan.held[0].contains("4 of 5"), "{plan:?}");
    // An empty answer is the same.
    let plan = reconcile(&before, &view(vec![]), SOURCE, &services(), 0.5);
    assert!(
        plan.mutations.is_empty() && plan.held.len() == 1,
        "{plan:?}"
    );
    // One gone: removed.
    let plan = reconcile(&before, &view(five[..4].to_vec()), SOURCE, &services(), 0.5);
    assert!(plan.held.is_empty(), "{plan:?}");
    assert_eq!(ids(&applied(&before, &plan)), ["a", "b", "c", "d"]);
    // The last instance of a service can go.
    let one = applied(
        &state(&[]),
        &reconcile(
            &state(&[]),
            &view(five[..1].to_vec()),
            SOURCE,
            &services(),
            0.5,
        ),
    );
    let plan = reconcile(&one, &view(vec![]), SOURCE, &services(), 0.5);
    assert_eq!(ids(&applied(&one, &plan)), Vec::<String>::new());
}

#[test]
fn a_bad_field_skips_that_instance_only() {
    let mut bad = found("b", Some("v1"));
    bad.address = "not an address".into();
    let plan = reconcile(
        &state(&[]),
        &view(vec![found("a", Some("v1")), bad]),
        SOURCE,
        &services(),
        0.5,
    );
    assert_eq!(plan.mutations.len(), 1);
    assert!(plan.skipped[0].contains("b:"), "{plan:?}");
}
