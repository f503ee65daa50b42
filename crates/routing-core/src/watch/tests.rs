//! Tests of effective assignments and the differences watchers are sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::{AssignmentDiff, AssignmentFilter, EffectiveAssignment, diff, snapshot};
use crate::Pool;
use crate::state::tests::fixtures::{
    self, SERVICES, TENANT_IDS, build, instance, pin, rollback, rollout, service, step, tenant,
    world,
};
use crate::state::{Mutation, RoutingState, Scope};
use crate::{Cohort, Instance, Source, Tenant};

/// A (tenant, service) pair.
type Key = (String, String);
/// What a watcher sees of a pair: version, source, and which pool (by identity).
type Seen = (String, String, Option<*const Pool>);

fn key(tenant_id: &str, service: &str) -> Key {
    (tenant_id.to_owned(), service.to_owned())
}

fn seen(assignment: &EffectiveAssignment) -> Seen {
    (
        assignment.resolution.version.clone(),
        assignment.resolution.source.to_string(),
        assignment.pool.as_ref().map(Arc::as_ptr),
    )
}

/// Everything a watcher sees of a pair: [`Seen`], the strategy and the region.
fn seen_all(assignment: &EffectiveAssignment) -> (Seen, String, String) {
    (
        seen(assignment),
        assignment.strategy.to_string(),
        assignment.region.clone(),
    )
}

/// Returns everything seen by pair.
fn all_by_pair(assignments: &[EffectiveAssignment]) -> BTreeMap<Key, (Seen, String, String)> {
    by_pair(assignments);
    assignments
        .iter()
        .map(|a| (key(&a.tenant_id, &a.service), seen_all(a)))
        .collect()
}

/// Returns assignments by pair, checking no pair appears twice.
fn by_pair(assignments: &[EffectiveAssignment]) -> BTreeMap<Key, Seen> {
    let mut view = BTreeMap::new();
    for assignment in assignments {
        let pair = key(&assignment.tenant_id, &assignment.service);
        let previous = view.insert(pair.clone(), seen(assignment));
        assert!(previous.is_none(), "{pair:?} appears twice");
    }
    view
}

fn upserted(diff: &AssignmentDiff) -> BTreeSet<Key> {
    by_pair(&diff.upserts).into_keys().collect()
}

fn removed(diff: &AssignmentDiff) -> BTreeSet<Key> {
    let removals: BTreeSet<Key> = diff.removals.iter().cloned().collect();
    assert_eq!(
        removals.len(),
        diff.removals.len(),
        "a removal appears twice"
    );
    removals
}

fn keys(pairs: &[(&str, &str)]) -> BTreeSet<Key> {
    pairs.iter().map(|(t, s)| key(t, s)).collect()
}

fn filter(tenant_ids: &[&str], services: &[&str]) -> AssignmentFilter {
    AssignmentFilter {
        tenant_ids: tenant_ids.iter().map(|t| (*t).to_owned()).collect(),
        services: services.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn everything() -> AssignmentFilter {
    AssignmentFilter::default()
}

/// Applies a mutation and returns the new state and the diff within the mutation's scope,
/// checking it equals the diff over everything.
fn change(
    before: &RoutingState,
    mutation: &Mutation,
    filter: &AssignmentFilter,
) -> (RoutingState, AssignmentDiff) {
    let (after, _) = step(before, mutation);
    let scoped = diff(before, &after, &mutation.scope(), filter);
    let whole = diff(before, &after, &Scope::Everything, filter);
    assert_eq!(
        by_pair(&scoped.upserts),
        by_pair(&whole.upserts),
        "{mutation:?}"
    );
    assert_eq!(removed(&scoped), removed(&whole), "{mutation:?}");
    (after, scoped)
}

fn pool_ptr(state: &RoutingState, service: &str, version: &str) -> Option<*const Pool> {
    state
        .service(service)
        .and_then(|s| s.pool(version))
        .map(Arc::as_ptr)
}

fn register(instance: Instance) -> Mutation {
    Mutation::RegisterInstance { instance }
}

// ---------------------------------------------------------------------------------------------
// Snapshots

#[test]
fn snapshot_is_active_tenants_times_services() {
    let state = world();
    let all = snapshot(&state, &everything());
    let pairs: Vec<Key> = all.iter().map(|a| key(&a.tenant_id, &a.service)).collect();
    // Tenant by tenant, services in name order; the inactive umbrella is left out.
    let expected: Vec<Key> = ["acme", "globex", "initech"]
        .iter()
        .flat_map(|t| [key(t, "api"), key(t, "billing")])
        .collect();
    assert_eq!(pairs, expected);
    let view = by_pair(&all);
    assert_eq!(
        view[&key("acme", "api")],
        ("v1".into(), "default".into(), pool_ptr(&state, "api", "v1"))
    );
    assert_eq!(
        view[&key("acme", "billing")].2,
        pool_ptr(&state, "billing", "v1")
    );
    assert!(view.values().all(|seen| seen.2.is_some()));
}

#[test]
fn snapshot_follows_the_filter() {
    let state = world();
    let billing = by_pair(&snapshot(&state, &filter(&[], &["billing"])));
    assert_eq!(
        billing.into_keys().collect::<BTreeSet<_>>(),
        keys(&[
            ("acme", "billing"),
            ("globex", "billing"),
            ("initech", "billing")
        ])
    );
    // Unknown and inactive tenants are skipped, unknown services too.
    let some = by_pair(&snapshot(
        &state,
        &filter(&["globex", "umbrella", "ghost"], &["api", "ghost"]),
    ));
    assert_eq!(
        some.into_keys().collect::<BTreeSet<_>>(),
        keys(&[("globex", "api")])
    );
    let globex = by_pair(&snapshot(&state, &filter(&["globex"], &[])));
    assert_eq!(
        globex.into_keys().collect::<BTreeSet<_>>(),
        keys(&[("globex", "api"), ("globex", "billing")])
    );
}

#[test]
fn snapshot_of_a_version_without_instances_has_no_pool() {
    let state = build(
        &world(),
        [Mutation::SetTenantVersion {
            tenant_id: "globex".into(),
            service: "billing".into(),
            version: "v2".into(),
            expected_version: None,
            force: true,
        }],
    );
    let view = by_pair(&snapshot(&state, &filter(&["globex"], &["billing"])));
    assert_eq!(
        view[&key("globex", "billing")],
        ("v2".into(), "pin".into(), None)
    );
}

// ---------------------------------------------------------------------------------------------
// Diffs of single changes

#[test]
fn a_pin_change_yields_exactly_one_upsert() {
    let before = world();
    let mutation = pin("acme", "api", "v2");
    assert_eq!(
        mutation.scope(),
        Scope::Assignment {
            tenant_id: "acme".into(),
            service: "api".into(),
        }
    );
    let (after, changes) = change(&before, &mutation, &everything());
    assert!(changes.removals.is_empty());
    assert_eq!(changes.upserts.len(), 1);
    assert_eq!(
        by_pair(&changes.upserts)[&key("acme", "api")],
        ("v2".into(), "pin".into(), pool_ptr(&after, "api", "v2"))
    );
    // Pinning it again to the same version changes nothing a watcher sees.
    let (_, changes) = change(&after, &mutation, &everything());
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_new_default_moves_only_the_tenants_on_the_default() {
    let before = build(&world(), [pin("globex", "api", "v1")]);
    let mutation = Mutation::SetDefaultVersion {
        service: "api".into(),
        version: "v2".into(),
        force: false,
    };
    let (after, changes) = change(&before, &mutation, &everything());
    // globex is pinned (to the old default), umbrella inactive, billing untouched.
    assert_eq!(
        upserted(&changes),
        keys(&[("acme", "api"), ("initech", "api")])
    );
    assert!(changes.removals.is_empty());
    let v2 = ("v2".into(), "default".into(), pool_ptr(&after, "api", "v2"));
    assert!(by_pair(&changes.upserts).values().all(|seen| *seen == v2));
}

#[test]
fn a_tenant_moving_region_is_sent_again_with_its_new_region() {
    let before = world();
    let mutation = Mutation::UpsertTenant {
        tenant: Tenant {
            region: "ap".into(),
            ..tenant("acme")
        },
    };
    let (_, changes) = change(&before, &mutation, &everything());
    assert_eq!(
        upserted(&changes),
        keys(&[("acme", "api"), ("acme", "billing")])
    );
    assert!(changes.upserts.iter().all(|a| a.region == "ap"));
}

#[test]
fn a_new_strategy_is_sent_to_every_tenant_of_the_service() {
    let before = world();
    let mutation = Mutation::UpsertService {
        service: crate::Service {
            strategy: crate::Strategy::ConsistentHash,
            ..fixtures::service("api", "v1", &["v1", "v2", "v3"])
        },
        force: false,
    };
    let (_, changes) = change(&before, &mutation, &everything());
    assert_eq!(
        upserted(&changes),
        keys(&[("acme", "api"), ("globex", "api"), ("initech", "api")])
    );
    assert!(
        changes
            .upserts
            .iter()
            .all(|a| a.strategy == crate::Strategy::ConsistentHash)
    );
}

#[test]
fn registering_an_instance_updates_only_tenants_on_its_version() {
    let before = build(&world(), [pin("globex", "api", "v2")]);
    let old_pool = pool_ptr(&before, "api", "v2");
    let mutation = register(instance("api-2b", "api", "v2"));
    let (after, changes) = change(&before, &mutation, &everything());
    assert_eq!(upserted(&changes), keys(&[("globex", "api")]));
    let update = &changes.upserts[0];
    let pool = update.pool.as_ref().expect("a pool");
    assert_ne!(
        Some(Arc::as_ptr(pool)),
        old_pool,
        "the pool must be a new one"
    );
    assert_eq!(pool.members().len(), 2);
    assert_eq!(update.resolution.source, Source::Pin);
    // The same within the narrowest scope that covers it.
    let narrow = diff(
        &before,
        &after,
        &Scope::ServiceVersion {
            service: "api".into(),
            version: "v2".into(),
        },
        &everything(),
    );
    assert_eq!(by_pair(&narrow.upserts), by_pair(&changes.upserts));

    // An instance of v1 updates acme and initech, not globex.
    let (after, changes) = change(
        &after,
        &register(instance("api-1b", "api", "v1")),
        &everything(),
    );
    assert_eq!(
        upserted(&changes),
        keys(&[("acme", "api"), ("initech", "api")])
    );
    // The last instance of a version leaving: its tenants lose their pool.
    let (_, changes) = change(
        &after,
        &Mutation::DeregisterInstance {
            service: "billing".into(),
            instance_id: "bill-1".into(),
        },
        &everything(),
    );
    let view = by_pair(&changes.upserts);
    assert_eq!(
        view.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[
            ("acme", "billing"),
            ("globex", "billing"),
            ("initech", "billing")
        ])
    );
    assert!(view.values().all(|seen| seen.2.is_none()));
}

#[test]
fn deactivating_a_tenant_removes_its_pairs_and_reactivating_restores_them() {
    let before = build(&world(), [pin("acme", "api", "v2")]);
    let original = by_pair(&snapshot(&before, &filter(&["acme"], &[])));
    let off = Mutation::UpsertTenant {
        tenant: Tenant {
            active: false,
            ..tenant("acme")
        },
    };
    assert_eq!(off.scope(), Scope::Tenant("acme".into()));
    let (inactive, changes) = change(&before, &off, &everything());
    assert!(changes.upserts.is_empty(), "{changes:?}");
    assert_eq!(
        removed(&changes),
        keys(&[("acme", "api"), ("acme", "billing")])
    );
    let on = Mutation::UpsertTenant {
        tenant: tenant("acme"),
    };
    let (_, changes) = change(&inactive, &on, &everything());
    assert!(changes.removals.is_empty());
    // Back with its pin and the very same pools.
    assert_eq!(by_pair(&changes.upserts), original);
}

#[test]
fn a_tenant_change_is_compared_on_every_service() {
    // Free tenants get v2 of api; billing rules do not care about tiers.
    let before = build(
        &world(),
        [Mutation::UpsertRollout {
            rollout: crate::Rollout {
                cohort: Cohort {
                    tiers: ["free".to_owned()].into(),
                    ..Cohort::default()
                },
                ..rollout("r1", "api", "v2", 10_000)
            },
        }],
    );
    let mutation = Mutation::UpsertTenant {
        tenant: Tenant {
            tier: "free".into(),
            ..tenant("initech")
        },
    };
    let (after, changes) = change(&before, &mutation, &everything());
    assert_eq!(upserted(&changes), keys(&[("initech", "api")]));
    assert_eq!(
        by_pair(&changes.upserts)[&key("initech", "api")],
        (
            "v2".into(),
            "rollout:r1".into(),
            pool_ptr(&after, "api", "v2")
        )
    );
}

#[test]
fn a_rollback_updates_the_tenants_it_moves() {
    let before = build(&world(), [pin("acme", "api", "v2")]);
    let (after, changes) = change(&before, &rollback("api", "v2", "v3", &[]), &everything());
    assert_eq!(upserted(&changes), keys(&[("acme", "api")]));
    let source = format!("override:rb-{}", after.revision());
    assert_eq!(
        by_pair(&changes.upserts)[&key("acme", "api")],
        ("v3".into(), source, pool_ptr(&after, "api", "v3"))
    );
}

#[test]
fn a_new_service_is_upserted_for_every_active_tenant() {
    let mutation = Mutation::UpsertService {
        service: service("search", "v1", &[]),
        force: false,
    };
    let (_, changes) = change(&world(), &mutation, &everything());
    assert_eq!(
        upserted(&changes),
        keys(&[
            ("acme", "search"),
            ("globex", "search"),
            ("initech", "search")
        ])
    );
    assert!(changes.upserts.iter().all(|a| a.pool.is_none()));
}

#[test]
fn changes_no_watcher_sees_give_an_empty_diff() {
    let state = world();
    for mutation in [
        Mutation::ClearTenantVersion {
            tenant_id: "acme".into(),
            service: "api".into(),
        },
        // Nobody is on v3.
        register(instance("api-3b", "api", "v3")),
        // A rollout of nobody.
        Mutation::UpsertRollout {
            rollout: rollout("r1", "api", "v2", 0),
        },
        // Changes of an inactive tenant.
        pin("umbrella", "api", "v2"),
    ] {
        let (_, changes) = change(&state, &mutation, &everything());
        assert!(changes.is_empty(), "{mutation:?}: {changes:?}");
    }
}

#[test]
fn filters_restrict_the_diff() {
    let before = world();
    let mutation = Mutation::SetDefaultVersion {
        service: "api".into(),
        version: "v2".into(),
        force: false,
    };
    let (_, changes) = change(&before, &mutation, &filter(&["acme"], &[]));
    assert_eq!(upserted(&changes), keys(&[("acme", "api")]));
    let (_, changes) = change(&before, &mutation, &filter(&["acme", "globex"], &["api"]));
    assert_eq!(
        upserted(&changes),
        keys(&[("acme", "api"), ("globex", "api")])
    );
    for uninterested in [
        filter(&[], &["billing"]),
        filter(&["umbrella"], &[]),
        filter(&["ghost"], &["api"]),
    ] {
        let (_, changes) = change(&before, &mutation, &uninterested);
        assert!(changes.is_empty(), "{uninterested:?}: {changes:?}");
    }
    // Removals are filtered too.
    let off = Mutation::UpsertTenant {
        tenant: Tenant {
            active: false,
            ..tenant("acme")
        },
    };
    let (_, changes) = change(&before, &off, &filter(&[], &["billing"]));
    assert_eq!(removed(&changes), keys(&[("acme", "billing")]));
    let (_, changes) = change(&before, &off, &filter(&["globex"], &[]));
    assert!(changes.is_empty());
}

#[test]
fn diff_looks_only_within_the_scope() {
    let before = world();
    let (after, _) = step(
        &before,
        &Mutation::SetDefaultVersion {
            service: "api".into(),
            version: "v2".into(),
            force: false,
        },
    );
    let one_pair = Scope::Assignment {
        tenant_id: "acme".into(),
        service: "api".into(),
    };
    let changes = diff(&before, &after, &one_pair, &everything());
    assert_eq!(upserted(&changes), keys(&[("acme", "api")]));
    let changes = diff(
        &before,
        &after,
        &Scope::Tenant("globex".into()),
        &everything(),
    );
    assert_eq!(upserted(&changes), keys(&[("globex", "api")]));
    let changes = diff(
        &before,
        &after,
        &Scope::Service("billing".into()),
        &everything(),
    );
    assert!(changes.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Laws over random mutation sequences

fn filters() -> impl Strategy<Value = AssignmentFilter> {
    let names = |all: &'static [&'static str]| {
        prop::collection::btree_set(prop::sample::select(all).prop_map(str::to_owned), 0..=2)
    };
    (names(TENANT_IDS), names(SERVICES)).prop_map(|(tenant_ids, services)| AssignmentFilter {
        tenant_ids,
        services,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A mutation's scope holds every pair it changed, and applying the diff to the old
    /// snapshot gives the new one.
    #[test]
    fn diffs_are_exact_within_the_mutations_scope(
        mutations in prop::collection::vec(fixtures::mutation(), 1..30),
        filter in filters(),
    ) {
        let mut state = world();
        for mutation in &mutations {
            let Ok((next, _)) = state.apply(mutation) else {
                continue;
            };
            let scoped = diff(&state, &next, &mutation.scope(), &filter);
            let whole = diff(&state, &next, &Scope::Everything, &filter);
            prop_assert_eq!(by_pair(&scoped.upserts), by_pair(&whole.upserts), "{:?}", mutation);
            prop_assert_eq!(removed(&scoped), removed(&whole), "{:?}", mutation);

            let mut view = all_by_pair(&snapshot(&state, &filter));
            for pair in &scoped.removals {
                prop_assert!(view.remove(pair).is_some(), "{:?} removed but not followed", pair);
            }
            for (pair, seen) in all_by_pair(&scoped.upserts) {
                let previous = view.insert(pair.clone(), seen.clone());
                prop_assert_ne!(previous, Some(seen), "{:?} upserted unchanged", pair);
            }
            prop_assert_eq!(view, all_by_pair(&snapshot(&next, &filter)), "{:?}", mutation);
            state = next;
        }
    }
}
