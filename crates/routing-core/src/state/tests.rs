//! Tests of the routing state: resolution order, every mutation, routing and dumps.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use self::fixtures::{
    build, experiment, instance, pin, resolved, rollback, rollout, service, step, tenant, world,
};
use super::{Mutation, Outcome, Pin, RouteQuery, RoutingState, StateDump, StateLoader};
use crate::{Cohort, Entity, Instance, RoutingError, Source, Tenant};

/// Builders shared by the state and watch tests.
pub(crate) mod fixtures {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use crate::state::{Mutation, Outcome, RoutingState};
    use crate::{Cohort, Experiment, Instance, Rollout, Service, Tenant, Variant};

    /// Tenant ids the generated mutations use: some exist in [`world`], one is invalid.
    pub(crate) const TENANT_IDS: &[&str] =
        &["acme", "globex", "initech", "umbrella", "hooli", "bad id"];
    /// Service names the generated mutations use: two exist in [`world`], one is invalid.
    pub(crate) const SERVICES: &[&str] = &["api", "billing", "search", ""];
    /// Versions the generated mutations use: one is invalid.
    pub(crate) const VERSIONS: &[&str] = &["v1", "v2", "v3", "v4", "bad version"];
    const INSTANCE_IDS: &[&str] = &["api-1", "api-2", "api-3", "i-4", "i-5"];
    const REGIONS: &[&str] = &["", "eu", "us"];
    const TIERS: &[&str] = &["free", "pro"];

    /// Returns an active `pro` tenant without region or labels.
    pub(crate) fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: format!("Tenant {id}"),
            region: String::new(),
            tier: "pro".into(),
            labels: BTreeMap::new(),
            active: true,
        }
    }

    /// Returns a round-robin service.
    pub(crate) fn service(name: &str, default_version: &str, versions: &[&str]) -> Service {
        Service {
            name: name.into(),
            default_version: default_version.into(),
            strategy: crate::Strategy::RoundRobin,
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    /// Returns a healthy instance of weight 1 without region.
    pub(crate) fn instance(id: &str, service: &str, version: &str) -> Instance {
        Instance {
            id: id.into(),
            address: format!("{id}.internal:8080"),
            service: service.into(),
            version: version.into(),
            weight: 1,
            region: String::new(),
            zone: String::new(),
            metadata: BTreeMap::new(),
            healthy: true,
            health_score: 100,
        }
    }

    /// Returns a rollout of every tenant, salted with its id.
    pub(crate) fn rollout(id: &str, service: &str, to_version: &str, basis_points: u32) -> Rollout {
        Rollout {
            id: id.into(),
            service: service.into(),
            to_version: to_version.into(),
            basis_points,
            salt: id.into(),
            cohort: Cohort::default(),
            plan: None,
        }
    }

    /// Returns an experiment on every tenant, salted with its id; variants are
    /// (name, version, weight).
    pub(crate) fn experiment(
        id: &str,
        service: &str,
        variants: &[(&str, &str, u32)],
    ) -> Experiment {
        Experiment {
            id: id.into(),
            service: service.into(),
            salt: id.into(),
            variants: variants
                .iter()
                .map(|(name, version, weight)| Variant {
                    name: (*name).into(),
                    version: (*version).into(),
                    weight: *weight,
                })
                .collect(),
            cohort: Cohort::default(),
            sticky: Default::default(),
        }
    }

    /// Returns a cohort of exactly these tenants.
    pub(crate) fn only(tenant_ids: &[&str]) -> Cohort {
        Cohort {
            tenant_ids: tenant_ids.iter().map(|t| (*t).to_owned()).collect(),
            ..Cohort::default()
        }
    }

    /// Returns a pin without compare-and-set or force.
    pub(crate) fn pin(tenant_id: &str, service: &str, version: &str) -> Mutation {
        Mutation::SetTenantVersion {
            tenant_id: tenant_id.into(),
            service: service.into(),
            version: version.into(),
            expected_version: None,
            force: false,
        }
    }

    /// Returns an emergency rollback without force.
    pub(crate) fn rollback(service: &str, from: &str, to: &str, tenant_ids: &[&str]) -> Mutation {
        Mutation::EmergencyRollback {
            service: service.into(),
            from_version: from.into(),
            to_version: to.into(),
            tenant_ids: tenant_ids.iter().map(|t| (*t).to_owned()).collect(),
            force: false,
        }
    }

    /// Applies a mutation that must succeed, checking the revision moves by exactly one.
    pub(crate) fn step(state: &RoutingState, mutation: &Mutation) -> (RoutingState, Outcome) {
        match state.apply(mutation) {
            Ok((next, outcome)) => {
                assert_eq!(next.revision(), state.revision() + 1, "{mutation:?}");
                (next, outcome)
            }
            Err(error) => panic!("{mutation:?} failed: {error}"),
        }
    }

    /// Applies mutations that must succeed, in order.
    pub(crate) fn build(
        state: &RoutingState,
        mutations: impl IntoIterator<Item = Mutation>,
    ) -> RoutingState {
        mutations
            .into_iter()
            .fold(state.clone(), |state, mutation| step(&state, &mutation).0)
    }

    /// Returns a small world: tenants acme (eu), globex (us, free), initech and the inactive
    /// umbrella; service `api` (default v1, versions v1-v3, one instance each) and `billing`
    /// (default v1, v2 without instances).
    pub(crate) fn world() -> RoutingState {
        let upsert = |tenant: Tenant| Mutation::UpsertTenant { tenant };
        let register = |instance: Instance| Mutation::RegisterInstance { instance };
        build(
            &RoutingState::default(),
            [
                upsert(Tenant {
                    region: "eu".into(),
                    ..tenant("acme")
                }),
                upsert(Tenant {
                    region: "us".into(),
                    tier: "free".into(),
                    ..tenant("globex")
                }),
                upsert(tenant("initech")),
                upsert(Tenant {
                    active: false,
                    ..tenant("umbrella")
                }),
                Mutation::UpsertService {
                    service: service("api", "v1", &["v1", "v2", "v3"]),
                    force: false,
                },
                Mutation::UpsertService {
                    service: service("billing", "v1", &["v2"]),
                    force: false,
                },
                register(Instance {
                    region: "eu".into(),
                    ..instance("api-1", "api", "v1")
                }),
                register(instance("api-2", "api", "v2")),
                register(instance("api-3", "api", "v3")),
                register(instance("bill-1", "billing", "v1")),
            ],
        )
    }

    /// Returns a tenant's resolved version of a service and its source, as printed.
    pub(crate) fn resolved(
        state: &RoutingState,
        tenant_id: &str,
        service: &str,
    ) -> (String, String) {
        let resolution = state
            .resolve(tenant_id, service)
            .unwrap_or_else(|e| panic!("resolving {tenant_id}/{service}: {e}"));
        (resolution.version, resolution.source.to_string())
    }

    fn one_of(names: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
        prop::sample::select(names).prop_map(str::to_owned)
    }

    fn some_of(
        names: &'static [&'static str],
        most: usize,
    ) -> impl Strategy<Value = BTreeSet<String>> + Clone {
        prop::collection::btree_set(one_of(names), 0..=most)
    }

    /// Returns random mutations over a few names, valid and invalid alike, that mostly touch
    /// what [`world`] holds.
    pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            3 => (one_of(TENANT_IDS), one_of(REGIONS), one_of(TIERS), prop::bool::weighted(0.8))
                .prop_map(|(id, region, tier, active)| Mutation::UpsertTenant {
                    tenant: Tenant { region, tier, active, ..tenant(&id) },
                }),
            1 => (
                one_of(SERVICES),
                one_of(VERSIONS),
                some_of(VERSIONS, 2),
                prop::sample::select(crate::Strategy::ALL.to_vec()),
                any::<bool>(),
            )
                .prop_map(|(name, default_version, versions, strategy, force)| {
                    Mutation::UpsertService {
                        service: Service { name, default_version, strategy, versions },
                        force,
                    }
                }),
            3 => (
                one_of(INSTANCE_IDS),
                one_of(SERVICES),
                one_of(VERSIONS),
                0u32..3,
                prop::bool::weighted(0.8),
                one_of(REGIONS),
            )
                .prop_map(|(id, service, version, weight, healthy, region)| {
                    Mutation::RegisterInstance {
                        instance: Instance {
                            weight,
                            healthy,
                            region,
                            ..instance(&id, &service, &version)
                        },
                    }
                }),
            1 => (one_of(SERVICES), one_of(INSTANCE_IDS)).prop_map(|(service, instance_id)| {
                Mutation::DeregisterInstance { service, instance_id }
            }),
            2 => (one_of(SERVICES), one_of(VERSIONS), any::<bool>()).prop_map(
                |(service, version, force)| Mutation::SetDefaultVersion { service, version, force }
            ),
            3 => (
                one_of(TENANT_IDS),
                one_of(SERVICES),
                one_of(VERSIONS),
                prop::option::of(one_of(VERSIONS)),
                any::<bool>(),
            )
                .prop_map(|(tenant_id, service, version, expected_version, force)| {
                    Mutation::SetTenantVersion {
                        tenant_id,
                        service,
                        version,
                        expected_version,
                        force,
                    }
                }),
            1 => (one_of(TENANT_IDS), one_of(SERVICES)).prop_map(|(tenant_id, service)| {
                Mutation::ClearTenantVersion { tenant_id, service }
            }),
            2 => (
                one_of(SERVICES),
                one_of(VERSIONS),
                one_of(VERSIONS),
                some_of(TENANT_IDS, 2),
                any::<bool>(),
            )
                .prop_map(|(service, from_version, to_version, tenant_ids, force)| {
                    Mutation::EmergencyRollback {
                        service,
                        from_version,
                        to_version,
                        tenant_ids,
                        force,
                    }
                }),
            1 => (one_of(SERVICES), 0u64..40).prop_map(|(service, n)| Mutation::ClearOverride {
                service,
                override_id: format!("rb-{n}"),
            }),
            2 => (
                one_of(&["r1", "r2"]),
                one_of(SERVICES),
                one_of(VERSIONS),
                0u32..=10_001,
                some_of(TIERS, 1),
            )
                .prop_map(|(id, service, to_version, basis_points, tiers)| {
                    Mutation::UpsertRollout {
                        rollout: Rollout {
                            cohort: Cohort { tiers, ..Cohort::default() },
                            ..rollout(&id, &service, &to_version, basis_points)
                        },
                    }
                }),
            1 => (one_of(SERVICES), one_of(&["r1", "r2"])).prop_map(|(service, rollout_id)| {
                Mutation::RemoveRollout { service, rollout_id }
            }),
            2 => (
                one_of(&["e1", "e2"]),
                one_of(SERVICES),
                prop::collection::vec((one_of(&["a", "b", ""]), one_of(VERSIONS), 0u32..3), 0..3),
            )
                .prop_map(|(id, service, variants)| Mutation::UpsertExperiment {
                    experiment: Experiment {
                        variants: variants
                            .into_iter()
                            .map(|(name, version, weight)| Variant { name, version, weight })
                            .collect(),
                        ..experiment(&id, &service, &[])
                    },
                }),
            1 => (one_of(SERVICES), one_of(&["e1", "e2"])).prop_map(|(service, experiment_id)| {
                Mutation::RemoveExperiment { service, experiment_id }
            }),
        ]
    }
}

/// Returns the error of a mutation that must fail.
fn refused(state: &RoutingState, mutation: &Mutation) -> RoutingError {
    match state.apply(mutation) {
        Ok((_, outcome)) => panic!("{mutation:?} was applied: {outcome:?}"),
        Err(error) => error,
    }
}

fn upsert_tenant(tenant: Tenant) -> Mutation {
    Mutation::UpsertTenant { tenant }
}

fn register(instance: Instance) -> Mutation {
    Mutation::RegisterInstance { instance }
}

fn pair(version: &str, source: &str) -> (String, String) {
    (version.to_owned(), source.to_owned())
}

fn not_servable(service: &str, version: &str) -> RoutingError {
    RoutingError::VersionNotServable {
        service: service.into(),
        version: version.into(),
    }
}

/// Returns the tenants of a service whose resolution source is `source`.
fn tenants_with_source(state: &RoutingState, service: &str, source: &Source) -> BTreeSet<String> {
    state
        .tenants_after(None)
        .filter(|entry| {
            state
                .resolve(&entry.tenant.id, service)
                .is_ok_and(|r| r.source == *source)
        })
        .map(|entry| entry.tenant.id.clone())
        .collect()
}

fn with_tenants(state: &RoutingState, ids: impl IntoIterator<Item = String>) -> RoutingState {
    build(state, ids.into_iter().map(|id| upsert_tenant(tenant(&id))))
}

fn rollback_id(outcome: &Outcome) -> String {
    match outcome {
        Outcome::RolledBack { override_id, .. } => override_id.clone(),
        other => panic!("expected a rollback, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution order

#[test]
fn resolution_precedence_peels_layer_by_layer() {
    let in_rules = ["t-rollout", "t-experiment", "t-pin", "t-override"];
    let state = with_tenants(
        &world(),
        ["t-default"]
            .iter()
            .chain(&in_rules)
            .map(|t| (*t).to_owned()),
    );
    let state = build(
        &state,
        [
            register(instance("api-4", "api", "v4")),
            Mutation::UpsertRollout {
                rollout: crate::Rollout {
                    cohort: fixtures::only(&in_rules),
                    ..rollout("r1", "api", "v2", 10_000)
                },
            },
            Mutation::UpsertExperiment {
                experiment: crate::Experiment {
                    cohort: fixtures::only(&in_rules[1..]),
                    ..experiment("e1", "api", &[("treat", "v3", 1)])
                },
            },
            pin("t-pin", "api", "v4"),
            pin("t-override", "api", "v4"),
        ],
    );
    let (state, outcome) = step(&state, &rollback("api", "v4", "v1", &["t-override"]));
    let override_id = rollback_id(&outcome);
    assert_eq!(override_id, format!("rb-{}", state.revision()));

    assert_eq!(resolved(&state, "t-default", "api"), pair("v1", "default"));
    assert_eq!(
        resolved(&state, "t-rollout", "api"),
        pair("v2", "rollout:r1")
    );
    let experiment_source = "experiment:e1:treat";
    assert_eq!(
        resolved(&state, "t-experiment", "api"),
        pair("v3", experiment_source)
    );
    assert_eq!(resolved(&state, "t-pin", "api"), pair("v4", "pin"));
    assert_eq!(
        resolved(&state, "t-override", "api"),
        pair("v1", &format!("override:{override_id}"))
    );

    // Remove the layers one at a time: the tenant falls through to the next one each time.
    let state = build(
        &state,
        [Mutation::ClearOverride {
            service: "api".into(),
            override_id,
        }],
    );
    assert_eq!(resolved(&state, "t-override", "api"), pair("v4", "pin"));
    let state = build(
        &state,
        [Mutation::ClearTenantVersion {
            tenant_id: "t-override".into(),
            service: "api".into(),
        }],
    );
    assert_eq!(
        resolved(&state, "t-override", "api"),
        pair("v3", experiment_source)
    );
    let state = build(
        &state,
        [Mutation::RemoveExperiment {
            service: "api".into(),
            experiment_id: "e1".into(),
        }],
    );
    assert_eq!(
        resolved(&state, "t-override", "api"),
        pair("v2", "rollout:r1")
    );
    assert_eq!(
        resolved(&state, "t-experiment", "api"),
        pair("v2", "rollout:r1")
    );
    let state = build(
        &state,
        [Mutation::RemoveRollout {
            service: "api".into(),
            rollout_id: "r1".into(),
        }],
    );
    for id in ["t-default", "t-rollout", "t-experiment", "t-override"] {
        assert_eq!(resolved(&state, id, "api"), pair("v1", "default"), "{id}");
    }
    assert_eq!(resolved(&state, "t-pin", "api"), pair("v4", "pin"));
}

#[test]
fn pinned_tenants_are_not_moved_by_rollouts_or_experiments() {
    // Pinned to the default version itself: the pin, not the default, must keep acme there.
    let state = build(
        &world(),
        [
            pin("acme", "api", "v1"),
            Mutation::UpsertRollout {
                rollout: rollout("r1", "api", "v2", 10_000),
            },
        ],
    );
    assert_eq!(resolved(&state, "acme", "api"), pair("v1", "pin"));
    assert_eq!(resolved(&state, "globex", "api"), pair("v2", "rollout:r1"));
    let state = build(
        &state,
        [Mutation::UpsertExperiment {
            experiment: experiment("e1", "api", &[("only", "v3", 1)]),
        }],
    );
    assert_eq!(resolved(&state, "acme", "api"), pair("v1", "pin"));
    assert_eq!(
        resolved(&state, "globex", "api"),
        pair("v3", "experiment:e1:only")
    );
    // Pins are per service: billing is still the default for acme.
    assert_eq!(resolved(&state, "acme", "billing"), pair("v1", "default"));
}

#[test]
fn rules_outside_their_cohort_or_service_do_not_apply() {
    let state = build(
        &world(),
        [
            Mutation::UpsertRollout {
                rollout: crate::Rollout {
                    cohort: Cohort {
                        tiers: ["free".to_owned()].into(),
                        ..Cohort::default()
                    },
                    ..rollout("r1", "api", "v2", 10_000)
                },
            },
            Mutation::UpsertExperiment {
                experiment: crate::Experiment {
                    cohort: fixtures::only(&["initech"]),
                    ..experiment("e1", "api", &[("b", "v3", 1)])
                },
            },
        ],
    );
    assert_eq!(resolved(&state, "globex", "api"), pair("v2", "rollout:r1"));
    assert_eq!(
        resolved(&state, "initech", "api"),
        pair("v3", "experiment:e1:b")
    );
    assert_eq!(resolved(&state, "acme", "api"), pair("v1", "default"));
    assert_eq!(resolved(&state, "globex", "billing"), pair("v1", "default"));
}

#[test]
fn chained_overrides_move_tenants_along_the_chain() {
    let state = build(
        &world(),
        [pin("acme", "api", "v3"), pin("globex", "api", "v2")],
    );
    let (state, first) = step(&state, &rollback("api", "v3", "v2", &[]));
    let first = rollback_id(&first);
    assert_eq!(
        resolved(&state, "acme", "api"),
        pair("v2", &format!("override:{first}"))
    );
    let (state, outcome) = step(&state, &rollback("api", "v2", "v1", &[]));
    let Outcome::RolledBack {
        override_id: second,
        moved_tenants,
    } = outcome
    else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert_ne!(first, second);
    // acme (v3 -> v2 -> v1) and globex (pinned v2) leave v2; initech was on v1 already.
    assert_eq!(moved_tenants, 2);
    let by_second = format!("override:{second}");
    assert_eq!(resolved(&state, "acme", "api"), pair("v1", &by_second));
    assert_eq!(resolved(&state, "globex", "api"), pair("v1", &by_second));
    assert_eq!(resolved(&state, "initech", "api"), pair("v1", "default"));

    let state = build(
        &state,
        [Mutation::ClearOverride {
            service: "api".into(),
            override_id: second,
        }],
    );
    assert_eq!(
        resolved(&state, "acme", "api"),
        pair("v2", &format!("override:{first}"))
    );
    assert_eq!(resolved(&state, "globex", "api"), pair("v2", "pin"));

    // Overrides apply in the order they were made: v2 -> v1 first, then v3 -> v2, leaves
    // v3 tenants on v2.
    let state = build(
        &world(),
        [
            pin("acme", "api", "v3"),
            rollback("api", "v2", "v1", &[]),
            rollback("api", "v3", "v2", &[]),
        ],
    );
    assert_eq!(resolved(&state, "acme", "api").0, "v2");
}

#[test]
fn resolve_reports_unknown_tenants_and_services() {
    let state = world();
    assert_eq!(
        state.resolve("ghost", "api"),
        Err(RoutingError::not_found(Entity::Tenant, "ghost"))
    );
    assert_eq!(
        state.resolve("acme", "ghost"),
        Err(RoutingError::not_found(Entity::Service, "ghost"))
    );
}

// ---------------------------------------------------------------------------------------------
// Rollouts and experiments

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn raising_a_rollout_share_never_moves_a_tenant_back(
        ids in prop::collection::btree_set("[a-z0-9-]{1,12}", 1..40),
        salt in "[a-z0-9]{0,8}",
        a in 0u32..=10_000,
        b in 0u32..=10_000,
    ) {
        let (low, high) = (a.min(b), a.max(b));
        let state = with_tenants(&RoutingState::default(), ids.iter().cloned());
        let state = build(
            &state,
            [
                Mutation::UpsertService {
                    service: service("api", "v1", &["v2"]),
                    force: true,
                },
            ],
        );
        let share = |state: &RoutingState, basis_points: u32| {
            let rollout = crate::Rollout {
                salt: salt.clone(),
                ..rollout("r1", "api", "v2", basis_points)
            };
            let state = build(state, [Mutation::UpsertRollout { rollout }]);
            tenants_with_source(&state, "api", &Source::Rollout { id: "r1".into() })
        };
        let at_low = share(&state, low);
        let at_high = share(&state, high);
        prop_assert!(at_low.is_subset(&at_high), "{at_low:?} not within {at_high:?}");
        prop_assert!(share(&state, 0).is_empty());
        prop_assert_eq!(share(&state, 10_000), ids);
    }
}

#[test]
fn rollout_share_follows_basis_points() {
    let ids = (0..2_000).map(|i| format!("tenant-{i}"));
    let state = with_tenants(&world(), ids);
    let mut previous = BTreeSet::new();
    for (basis_points, expected) in [(0, 0), (1_000, 200), (2_500, 500), (7_500, 1_500)] {
        let state = build(
            &state,
            [Mutation::UpsertRollout {
                rollout: rollout("r1", "api", "v2", basis_points),
            }],
        );
        let included = tenants_with_source(&state, "api", &Source::Rollout { id: "r1".into() });
        // A binomial count's standard deviation is at most sqrt(2,000 / 4) ~ 22: allow ~4.
        let count = included.len();
        assert!(
            count.abs_diff(expected) <= 90,
            "{basis_points} bp: {count} tenants, expected ~{expected}"
        );
        assert!(previous.is_subset(&included));
        previous = included;
    }
}

#[test]
fn rollouts_and_experiments_with_the_same_salt_bucket_independently() {
    let ids: Vec<String> = (0..2_000).map(|i| format!("tenant-{i}")).collect();
    let state = with_tenants(&world(), ids.iter().cloned());
    // Same id and salt on both: only the hash domain tells them apart.
    let state = build(
        &state,
        [
            Mutation::UpsertRollout {
                rollout: rollout("x", "api", "v2", 5_000),
            },
            Mutation::UpsertExperiment {
                experiment: experiment("x", "billing", &[("a", "v2", 1), ("b", "v1", 1)]),
            },
        ],
    );
    let in_rollout = tenants_with_source(&state, "api", &Source::Rollout { id: "x".into() });
    let in_a = tenants_with_source(
        &state,
        "billing",
        &Source::Experiment {
            id: "x".into(),
            variant: "a".into(),
        },
    );
    assert!(
        in_rollout.len().abs_diff(1_000) <= 100,
        "{}",
        in_rollout.len()
    );
    assert!(in_a.len().abs_diff(1_000) <= 100, "{}", in_a.len());
    // Independent halves overlap on a quarter (~500, sd ~19); the same buckets would give ~1,000.
    let both = in_rollout.intersection(&in_a).count();
    assert!(both.abs_diff(500) <= 100, "{both} tenants in both halves");
}

#[test]
fn experiment_variants_follow_weights_and_skip_zero_weights() {
    let ids: Vec<String> = (0..1_000).map(|i| format!("tenant-{i}")).collect();
    let state = with_tenants(&world(), ids.iter().cloned());
    let state = build(
        &state,
        [Mutation::UpsertExperiment {
            experiment: experiment(
                "e1",
                "api",
                &[("a", "v2", 1), ("off", "v1", 0), ("b", "v3", 3)],
            ),
        }],
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let (version, source) = resolved(&state, id, "api");
        *counts.entry(format!("{version} {source}")).or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    let b = counts.get("v3 experiment:e1:b").copied().unwrap_or(0);
    assert!(b.abs_diff(750) <= 60, "{counts:?}");
}

#[test]
fn rollout_and_experiment_validation() {
    let state = world();
    let mutation = Mutation::UpsertRollout {
        rollout: rollout("r1", "api", "v9", 100),
    };
    assert_eq!(
        refused(&state, &mutation),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    let mutation = Mutation::UpsertRollout {
        rollout: rollout("r1", "ghost", "v1", 100),
    };
    assert_eq!(
        refused(&state, &mutation),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    let mutation = Mutation::UpsertExperiment {
        experiment: experiment("e1", "api", &[("a", "v1", 1), ("b", "v9", 1)]),
    };
    assert_eq!(
        refused(&state, &mutation),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    // Upserting again replaces (same id) instead of adding a second rule.
    let state = build(
        &state,
        [
            Mutation::UpsertRollout {
                rollout: rollout("r1", "api", "v2", 10_000),
            },
            Mutation::UpsertRollout {
                rollout: rollout("r1", "api", "v3", 10_000),
            },
        ],
    );
    let rollouts = state.service("api").expect("api").rollouts().to_vec();
    assert_eq!(rollouts.len(), 1);
    assert_eq!(resolved(&state, "acme", "api"), pair("v3", "rollout:r1"));
}

#[test]
fn creating_an_experiment_refuses_an_id_in_use_and_keeps_its_sticky_tenants() {
    let state = world();
    let create =
        |id: &str, service: &str, variants: &[(&str, &str, u32)]| Mutation::CreateExperiment {
            experiment: experiment(id, service, variants),
        };
    let halves = [("a", "v1", 50), ("b", "v2", 50)];
    // A new id: created exactly as an upsert would create it, in the same scope.
    let first = create("e1", "api", &halves);
    let upsert = Mutation::UpsertExperiment {
        experiment: experiment("e1", "api", &halves),
    };
    assert_eq!(first.scope(), upsert.scope());
    let (created, outcome) = step(&state, &first);
    let (upserted, upserted_outcome) = step(&state, &upsert);
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(outcome, upserted_outcome);
    assert_eq!(created.dump(), upserted.dump());
    // New weights without a rebalance: the tenants in the experiment keep their variants.
    let (sticky, _) = step(
        &created,
        &Mutation::UpdateExperiment {
            service: "api".into(),
            experiment_id: "e1".into(),
            variants: vec![
                crate::Variant {
                    name: "a".into(),
                    version: "v1".into(),
                    weight: 10,
                },
                crate::Variant {
                    name: "b".into(),
                    version: "v2".into(),
                    weight: 90,
                },
            ],
            rebalance: false,
        },
    );
    let existing = sticky.service("api").expect("api").experiments().to_vec();
    assert!(
        !existing[0].sticky.is_empty(),
        "tenants kept their variants"
    );
    let resolutions: Vec<_> = fixtures::TENANT_IDS
        .iter()
        .map(|id| sticky.resolve(id, "api"))
        .collect();

    // A second creation of the id (a router that checked before the first) is refused ...
    let again = create("e1", "api", &[("c", "v3", 1)]);
    assert_eq!(
        refused(&sticky, &again),
        RoutingError::FailedPrecondition("experiment 'e1' of service 'api' already exists".into())
    );
    // ... and leaves the experiment, its sticky tenants and every resolution as they were.
    assert_eq!(
        sticky.service("api").expect("api").experiments(),
        existing.as_slice()
    );
    let after: Vec<_> = fixtures::TENANT_IDS
        .iter()
        .map(|id| sticky.resolve(id, "api"))
        .collect();
    assert_eq!(after, resolutions);
    // (An upsert of the same id replaces it, sticky tenants and all.)
    let (replaced, _) = step(
        &sticky,
        &Mutation::UpsertExperiment {
            experiment: experiment("e1", "api", &[("c", "v3", 1)]),
        },
    );
    assert!(
        replaced.service("api").expect("api").experiments()[0]
            .sticky
            .is_empty()
    );

    // Another id is created beside it; the same id in another service is another experiment.
    let (both, outcome) = step(&sticky, &create("e2", "api", &[("x", "v3", 1)]));
    assert_eq!(outcome, Outcome::Done);
    let experiments = both.service("api").expect("api").experiments();
    assert_eq!(experiments.len(), 2);
    assert_eq!(experiments[0], existing[0]);
    assert_eq!(experiments[1], experiment("e2", "api", &[("x", "v3", 1)]));
    step(&sticky, &create("e1", "billing", &[("a", "v1", 1)]));

    // Its checks are the upsert's.
    assert_eq!(
        refused(&state, &create("e1", "ghost", &halves)),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    assert_eq!(
        refused(&state, &create("e1", "api", &[("a", "v9", 1)])),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert!(matches!(
        refused(&state, &create("e 1", "api", &halves)),
        RoutingError::InvalidArgument { ref field, .. } if field == "experiment.id"
    ));
}

#[test]
fn create_experiment_is_stored_beside_the_other_mutations() {
    let record = experiment("e1", "api", &[("a", "v1", 1)]);
    let fields = serde_json::to_value(&record).expect("an experiment serializes");
    let upsert = Mutation::UpsertExperiment {
        experiment: record.clone(),
    };
    let create = Mutation::CreateExperiment { experiment: record };
    // The existing variants keep their form; the new one has its own tag.
    assert_eq!(
        serde_json::to_value(&upsert).expect("serializes"),
        serde_json::json!({ "op": "upsert_experiment", "experiment": fields })
    );
    assert_eq!(
        serde_json::to_value(&create).expect("serializes"),
        serde_json::json!({ "op": "create_experiment", "experiment": fields })
    );
    assert_eq!(
        serde_json::to_value(Mutation::ClearTenantVersion {
            tenant_id: "acme".into(),
            service: "api".into(),
        })
        .expect("serializes"),
        serde_json::json!({ "op": "clear_tenant_version", "tenant_id": "acme", "service": "api" })
    );
    for mutation in [upsert, create] {
        let text = serde_json::to_string(&mutation).expect("serializes");
        let back: Mutation = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, mutation);
    }
}

#[test]
fn start_rollout_errors_name_the_fields_of_the_api() {
    use crate::model::{RolloutPhase, RolloutPlan};
    let state = world();
    let plan = RolloutPlan {
        from_version: String::new(),
        steps: vec![1_000, 5_000],
        interval_ms: 60_000,
        analysis: crate::AnalysisPolicy::default(),
        phase: RolloutPhase::Running,
        step: 0,
        step_started_ms: 0,
        failed_checks: 0,
        decisions: Vec::new(),
    };
    let start = |rollout: crate::Rollout| Mutation::StartRollout {
        rollout,
        force: false,
    };
    let planned = |id: &str, to_version: &str, change: &dyn Fn(&mut RolloutPlan)| {
        let mut plan = plan.clone();
        change(&mut plan);
        start(crate::Rollout {
            plan: Some(plan),
            ..rollout(id, "api", to_version, 0)
        })
    };
    let as_is = |_: &mut RolloutPlan| {};
    // The API (StartRolloutRequest) takes `interval_seconds`; the plan holds milliseconds.
    assert_eq!(
        refused(&state, &planned("r1", "v2", &|p| p.interval_ms = 0)),
        RoutingError::invalid("interval_seconds", "must be positive")
    );
    let cases: Vec<(Mutation, &str)> = vec![
        (
            planned("r1", "v2", &|p| p.interval_ms = 0),
            "interval_seconds",
        ),
        (planned("r1", "v2", &|p| p.steps.clear()), "steps"),
        (
            planned("r1", "v2", &|p| p.steps = vec![5_000, 1_000]),
            "steps",
        ),
        (planned("r1", "v2", &|p| p.steps = vec![0, 1_000]), "steps"),
        (planned("r1", "v2", &|p| p.steps = vec![10_001]), "steps"),
        (
            planned("r1", "v2", &|p| p.analysis.min_requests = 0),
            "analysis",
        ),
        (planned("r 1", "v2", &as_is), "id"),
        (planned("r1", "v 2", &as_is), "to_version"),
        // Already the default version.
        (planned("r1", "v1", &as_is), "to_version"),
        // Not a field of the API: a caller that builds the mutation must give a plan.
        (start(rollout("r1", "api", "v2", 0)), "rollout.plan"),
    ];
    for (mutation, expected) in cases {
        match refused(&state, &mutation) {
            RoutingError::InvalidArgument { field, .. } => {
                assert_eq!(field, expected, "{mutation:?}");
            }
            other => panic!("{mutation:?}: expected invalid {expected}, got {other:?}"),
        }
    }
    step(&state, &planned("r1", "v2", &as_is));
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[test]
fn upsert_tenant_replaces_the_tenant_and_keeps_its_pins() {
    let state = build(&world(), [pin("acme", "api", "v2")]);
    let renamed = Tenant {
        name: "Acme Corporation".into(),
        tier: "free".into(),
        labels: [("team".to_owned(), "core".to_owned())].into(),
        ..tenant("acme")
    };
    let (state, outcome) = step(&state, &upsert_tenant(renamed.clone()));
    assert_eq!(outcome, Outcome::Done);
    let entry = state.tenant("acme").expect("acme");
    assert_eq!(entry.tenant, renamed);
    assert_eq!(state.pins_of(entry), vec![("api", "v2")]);
    assert_eq!(resolved(&state, "acme", "api"), pair("v2", "pin"));
    // A new tenant starts without pins.
    let (state, _) = step(&state, &upsert_tenant(tenant("hooli")));
    assert_eq!(state.tenant("hooli").expect("hooli").pin_count(), 0);
    assert_eq!(state.tenant_count(), 5);
}

#[test]
fn upsert_service_merges_versions_and_checks_a_new_default() {
    let state = world();
    let update = |default: &str, versions: &[&str], force: bool| Mutation::UpsertService {
        service: crate::Service {
            strategy: crate::Strategy::LeastConnections,
            ..service("api", default, versions)
        },
        force,
    };
    // Same default: new versions are added, none removed, the strategy is replaced.
    let (next, _) = step(&state, &update("v1", &["v9"], false));
    let api = &next.service("api").expect("api").service;
    let expected: BTreeSet<String> = ["v1", "v2", "v3", "v9"].map(String::from).into();
    assert_eq!(api.versions, expected);
    assert_eq!(api.strategy, crate::Strategy::LeastConnections);
    // Instances survive an update.
    assert!(next.service("api").expect("api").pool("v1").is_some());

    // A new default must be servable: v9 has no instance, v2 has one.
    assert_eq!(
        refused(&state, &update("v9", &[], false)),
        not_servable("api", "v9")
    );
    let (next, _) = step(&state, &update("v2", &[], false));
    assert_eq!(resolved(&next, "acme", "api"), pair("v2", "default"));
    let (next, _) = step(&state, &update("v9", &[], true));
    let api = &next.service("api").expect("api").service;
    assert_eq!(api.default_version, "v9");
    assert!(api.versions.contains("v9"));

    // A new service knows its default version without listing it.
    let (next, _) = step(
        &state,
        &Mutation::UpsertService {
            service: service("search", "v5", &[]),
            force: false,
        },
    );
    let search = &next.service("search").expect("search").service;
    assert_eq!(search.versions, BTreeSet::from(["v5".to_owned()]));
}

#[test]
fn register_instance_requires_the_service_and_adds_its_version() {
    let state = world();
    assert_eq!(
        refused(&state, &register(instance("x-1", "ghost", "v1"))),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    // v7 is unknown: pinning to it is refused until an instance brings it.
    assert_eq!(
        refused(&state, &pin("acme", "api", "v7")),
        RoutingError::not_found(Entity::Version, "api/v7")
    );
    let state = build(&state, [register(instance("api-7", "api", "v7"))]);
    assert!(
        state
            .service("api")
            .expect("api")
            .service
            .versions
            .contains("v7")
    );
    let state = build(&state, [pin("acme", "api", "v7")]);
    assert_eq!(resolved(&state, "acme", "api"), pair("v7", "pin"));
}

#[test]
fn register_instance_moves_an_instance_that_changes_version() {
    let state = build(&world(), [register(instance("api-1b", "api", "v1"))]);
    let (state, _) = step(&state, &register(instance("api-1", "api", "v2")));
    let api = state.service("api").expect("api");
    let ids = |version: &str| -> Vec<String> {
        api.pool(version)
            .map(|pool| {
                pool.members()
                    .iter()
                    .map(|m| m.instance.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(ids("v1"), ["api-1b"]);
    assert_eq!(ids("v2"), ["api-1", "api-2"]);
    // Registered exactly once.
    let dump = state.dump();
    assert_eq!(dump.instances.iter().filter(|i| i.id == "api-1").count(), 1);
    // Moving the last instance of a version leaves it without a pool.
    let (state, _) = step(&state, &register(instance("api-1b", "api", "v3")));
    assert!(state.service("api").expect("api").pool("v1").is_none());
}

#[test]
fn reregistering_an_instance_updates_it_in_place() {
    let state = build(&world(), [register(instance("api-1b", "api", "v1"))]);
    let (state, _) = step(
        &state,
        &register(Instance {
            health_score: 40,
            ..instance("api-1", "api", "v1")
        }),
    );
    let pool = state
        .service("api")
        .expect("api")
        .pool("v1")
        .expect("v1 pool");
    assert_eq!(pool.members().len(), 2);
    let member = pool.member("api-1").expect("api-1");
    assert_eq!(member.instance.health_score, 40);
}

/// Regression: re-registering an instance in the same version (a health or weight update)
/// rebuilt its pool from a copy without the instance, so its in-flight count dropped to zero
/// and `least_connections` sent it more than its share.
#[test]
fn reregistering_an_instance_keeps_its_in_flight_load() {
    for others in [&[][..], &["api-1b"][..]] {
        let state = build(
            &world(),
            others.iter().map(|id| register(instance(id, "api", "v1"))),
        );
        let pool = state
            .service("api")
            .expect("api")
            .pool("v1")
            .expect("v1 pool");
        let load = &pool.member("api-1").expect("api-1").load;
        load.start(0);
        load.start(0);
        let (state, _) = step(
            &state,
            &register(Instance {
                health_score: 50,
                ..instance("api-1", "api", "v1")
            }),
        );
        let pool = state
            .service("api")
            .expect("api")
            .pool("v1")
            .expect("v1 pool");
        let member = pool.member("api-1").expect("api-1");
        assert_eq!(member.instance.health_score, 50);
        assert_eq!(member.load.in_flight(0), 2, "with {others:?}");
    }
}

#[test]
fn deregister_instance_removes_it_and_reports_unknown_ones() {
    let state = world();
    let unknown = Mutation::DeregisterInstance {
        service: "api".into(),
        instance_id: "api-9".into(),
    };
    assert_eq!(
        refused(&state, &unknown),
        RoutingError::not_found(Entity::Instance, "api/api-9")
    );
    let ghost = Mutation::DeregisterInstance {
        service: "ghost".into(),
        instance_id: "api-1".into(),
    };
    assert_eq!(
        refused(&state, &ghost),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    let (state, outcome) = step(
        &state,
        &Mutation::DeregisterInstance {
            service: "api".into(),
            instance_id: "api-2".into(),
        },
    );
    assert_eq!(outcome, Outcome::Done);
    assert!(state.service("api").expect("api").pool("v2").is_none());
    // The version stays known, but is no longer servable.
    assert_eq!(
        refused(&state, &pin("acme", "api", "v2")),
        not_servable("api", "v2")
    );
    // Deregistering twice is an error: it is gone.
    let again = Mutation::DeregisterInstance {
        service: "api".into(),
        instance_id: "api-2".into(),
    };
    assert_eq!(
        refused(&state, &again),
        RoutingError::not_found(Entity::Instance, "api/api-2")
    );
}

#[test]
fn set_default_version_checks_the_version() {
    let set = |service: &str, version: &str, force: bool| Mutation::SetDefaultVersion {
        service: service.into(),
        version: version.into(),
        force,
    };
    // v2 has only an unhealthy instance, v3 only a drained one.
    let state = build(
        &world(),
        [
            register(Instance {
                healthy: false,
                ..instance("api-2", "api", "v2")
            }),
            register(Instance {
                weight: 0,
                ..instance("api-3", "api", "v3")
            }),
        ],
    );
    assert_eq!(
        refused(&state, &set("api", "v9", false)),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert_eq!(
        refused(&state, &set("api", "v9", true)),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert_eq!(
        refused(&state, &set("ghost", "v1", false)),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    assert_eq!(
        refused(&state, &set("api", "v2", false)),
        not_servable("api", "v2")
    );
    assert_eq!(
        refused(&state, &set("api", "v3", false)),
        not_servable("api", "v3")
    );
    assert_eq!(
        refused(&state, &set("billing", "v2", false)),
        not_servable("billing", "v2")
    );
    let (next, _) = step(&state, &set("api", "v2", true));
    assert_eq!(resolved(&next, "acme", "api"), pair("v2", "default"));
    // A healthy instance makes it servable without force.
    let state = build(&state, [register(instance("api-2b", "api", "v2"))]);
    let (next, _) = step(&state, &set("api", "v2", false));
    assert_eq!(
        next.service("api").expect("api").service.default_version,
        "v2"
    );
}

#[test]
fn set_tenant_version_checks_tenant_service_and_version() {
    let state = build(
        &world(),
        [register(Instance {
            healthy: false,
            ..instance("api-2", "api", "v2")
        })],
    );
    assert_eq!(
        refused(&state, &pin("ghost", "api", "v1")),
        RoutingError::not_found(Entity::Tenant, "ghost")
    );
    assert_eq!(
        refused(&state, &pin("acme", "ghost", "v1")),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    assert_eq!(
        refused(&state, &pin("acme", "api", "v9")),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert_eq!(
        refused(&state, &pin("acme", "api", "v2")),
        not_servable("api", "v2")
    );
    let forced = Mutation::SetTenantVersion {
        tenant_id: "acme".into(),
        service: "api".into(),
        version: "v2".into(),
        expected_version: None,
        force: true,
    };
    let (next, outcome) = step(&state, &forced);
    assert_eq!(
        outcome,
        Outcome::Reassigned {
            previous_version: "v1".into()
        }
    );
    assert_eq!(resolved(&next, "acme", "api"), pair("v2", "pin"));
    // Inactive tenants may be pinned too (they are just not routed).
    let (next, _) = step(&state, &pin("umbrella", "api", "v3"));
    assert_eq!(resolved(&next, "umbrella", "api"), pair("v3", "pin"));
}

#[test]
fn compare_and_set_compares_the_effective_version() {
    let cas = |version: &str, expected: &str| Mutation::SetTenantVersion {
        tenant_id: "globex".into(),
        service: "api".into(),
        version: version.into(),
        expected_version: Some(expected.into()),
        force: false,
    };
    // globex is on v2 through a rollout: the default v1 is not its version.
    let state = build(
        &world(),
        [Mutation::UpsertRollout {
            rollout: crate::Rollout {
                cohort: fixtures::only(&["globex"]),
                ..rollout("r1", "api", "v2", 10_000)
            },
        }],
    );
    assert_eq!(
        refused(&state, &cas("v3", "v1")),
        RoutingError::VersionMismatch {
            tenant_id: "globex".into(),
            service: "api".into(),
            expected: "v1".into(),
            current: "v2".into(),
        }
    );
    let (state, outcome) = step(&state, &cas("v3", "v2"));
    assert_eq!(
        outcome,
        Outcome::Reassigned {
            previous_version: "v2".into()
        }
    );
    assert_eq!(resolved(&state, "globex", "api"), pair("v3", "pin"));

    // An override moves globex off its pin: the effective version is the override's.
    let state = build(&state, [rollback("api", "v3", "v1", &["globex"])]);
    let Err(RoutingError::VersionMismatch { current, .. }) = state.apply(&cas("v2", "v3")) else {
        panic!("expected a version mismatch");
    };
    assert_eq!(current, "v1");
    let (_, outcome) = step(&state, &cas("v2", "v1"));
    assert_eq!(
        outcome,
        Outcome::Reassigned {
            previous_version: "v1".into()
        }
    );
}

#[test]
fn clear_tenant_version_reports_whether_a_pin_existed() {
    let clear = Mutation::ClearTenantVersion {
        tenant_id: "acme".into(),
        service: "api".into(),
    };
    let state = build(
        &world(),
        [pin("acme", "api", "v2"), pin("acme", "billing", "v1")],
    );
    let (state, outcome) = step(&state, &clear);
    assert_eq!(outcome, Outcome::Cleared { existed: true });
    assert_eq!(resolved(&state, "acme", "api"), pair("v1", "default"));
    // Only that service's pin is cleared.
    assert_eq!(resolved(&state, "acme", "billing"), pair("v1", "pin"));
    let (state, outcome) = step(&state, &clear);
    assert_eq!(outcome, Outcome::Cleared { existed: false });
    let ghost = Mutation::ClearTenantVersion {
        tenant_id: "ghost".into(),
        service: "api".into(),
    };
    assert_eq!(
        refused(&state, &ghost),
        RoutingError::not_found(Entity::Tenant, "ghost")
    );
}

/// acme pinned to v2, globex on v2 by rollout, initech by experiment, hooli on the default v1,
/// umbrella (inactive) pinned to v2.
fn everyone_on_v2() -> RoutingState {
    build(
        &world(),
        [
            upsert_tenant(tenant("hooli")),
            pin("acme", "api", "v2"),
            pin("umbrella", "api", "v2"),
            Mutation::UpsertRollout {
                rollout: crate::Rollout {
                    cohort: fixtures::only(&["globex"]),
                    ..rollout("r1", "api", "v2", 10_000)
                },
            },
            Mutation::UpsertExperiment {
                experiment: crate::Experiment {
                    cohort: fixtures::only(&["initech"]),
                    ..experiment("e1", "api", &[("b", "v2", 1)])
                },
            },
        ],
    )
}

#[test]
fn emergency_rollback_moves_every_tenant_on_the_version() {
    let state = everyone_on_v2();
    assert_eq!(resolved(&state, "globex", "api"), pair("v2", "rollout:r1"));
    assert_eq!(
        resolved(&state, "initech", "api"),
        pair("v2", "experiment:e1:b")
    );
    let (next, outcome) = step(&state, &rollback("api", "v2", "v3", &[]));
    let id = format!("rb-{}", next.revision());
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            override_id: id.clone(),
            // acme, globex and initech; umbrella is inactive, hooli was not on v2.
            moved_tenants: 3,
        }
    );
    let source = format!("override:{id}");
    for tenant_id in ["acme", "globex", "initech", "umbrella"] {
        assert_eq!(
            resolved(&next, tenant_id, "api"),
            pair("v3", &source),
            "{tenant_id}"
        );
    }
    assert_eq!(resolved(&next, "hooli", "api"), pair("v1", "default"));
    let overrides = next.service("api").expect("api").overrides().to_vec();
    assert_eq!(overrides.len(), 1);
    assert_eq!(overrides[0].created_revision, next.revision());
    assert!(overrides[0].tenant_ids.is_empty());
}

#[test]
fn emergency_rollback_of_listed_tenants_moves_only_those() {
    let state = everyone_on_v2();
    let (next, outcome) = step(&state, &rollback("api", "v2", "v3", &["acme", "hooli"]));
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            override_id: format!("rb-{}", next.revision()),
            // hooli is listed but on v1.
            moved_tenants: 1,
        }
    );
    assert_eq!(resolved(&next, "acme", "api").0, "v3");
    assert_eq!(resolved(&next, "hooli", "api"), pair("v1", "default"));
    assert_eq!(resolved(&next, "globex", "api"), pair("v2", "rollout:r1"));
    assert_eq!(
        resolved(&next, "initech", "api"),
        pair("v2", "experiment:e1:b")
    );
    assert_eq!(resolved(&next, "umbrella", "api"), pair("v2", "pin"));
}

#[test]
fn emergency_rollback_refusals() {
    let state = everyone_on_v2();
    assert_eq!(
        refused(&state, &rollback("api", "v2", "v2", &[])),
        RoutingError::invalid("to_version", "must differ from from_version")
    );
    assert_eq!(
        refused(&state, &rollback("api", "v9", "v1", &[])),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert_eq!(
        refused(&state, &rollback("api", "v2", "v9", &[])),
        RoutingError::not_found(Entity::Version, "api/v9")
    );
    assert_eq!(
        refused(&state, &rollback("ghost", "v2", "v1", &[])),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    assert_eq!(
        refused(&state, &rollback("api", "v2", "v1", &["acme", "ghost"])),
        RoutingError::not_found(Entity::Tenant, "ghost")
    );
    assert_eq!(
        refused(&state, &rollback("billing", "v1", "v2", &[])),
        not_servable("billing", "v2")
    );
    let forced = Mutation::EmergencyRollback {
        service: "billing".into(),
        from_version: "v1".into(),
        to_version: "v2".into(),
        tenant_ids: BTreeSet::new(),
        force: true,
    };
    let (next, _) = step(&state, &forced);
    assert_eq!(resolved(&next, "acme", "billing").0, "v2");
}

#[test]
fn clear_override_restores_the_previous_resolutions() {
    let state = everyone_on_v2();
    let everyone = |state: &RoutingState| -> Vec<(String, String)> {
        ["acme", "globex", "initech", "umbrella", "hooli"]
            .iter()
            .map(|t| resolved(state, t, "api"))
            .collect()
    };
    let (rolled_back, outcome) = step(&state, &rollback("api", "v2", "v1", &[]));
    assert_ne!(everyone(&rolled_back), everyone(&state));
    let (restored, outcome) = step(
        &rolled_back,
        &Mutation::ClearOverride {
            service: "api".into(),
            override_id: rollback_id(&outcome),
        },
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(everyone(&restored), everyone(&state));
    assert!(restored.service("api").expect("api").overrides().is_empty());
    let unknown = Mutation::ClearOverride {
        service: "api".into(),
        override_id: "rb-999".into(),
    };
    assert_eq!(
        refused(&restored, &unknown),
        RoutingError::not_found(Entity::Override, "api/rb-999")
    );
}

#[test]
fn removing_an_unknown_rollout_or_experiment_is_not_found() {
    let state = everyone_on_v2();
    assert_eq!(
        refused(
            &state,
            &Mutation::RemoveRollout {
                service: "api".into(),
                rollout_id: "nope".into(),
            }
        ),
        RoutingError::not_found(Entity::Rollout, "api/nope")
    );
    assert_eq!(
        refused(
            &state,
            &Mutation::RemoveExperiment {
                service: "api".into(),
                experiment_id: "nope".into(),
            }
        ),
        RoutingError::not_found(Entity::Experiment, "api/nope")
    );
}

#[test]
fn old_revisions_are_unchanged_by_later_ones() {
    let before = world();
    let after = build(
        &before,
        [
            pin("acme", "api", "v2"),
            register(instance("api-1b", "api", "v1")),
            rollback("api", "v1", "v3", &[]),
        ],
    );
    assert_eq!(after.revision(), before.revision() + 3);
    assert_eq!(resolved(&after, "acme", "api"), pair("v2", "pin"));
    assert_eq!(resolved(&after, "globex", "api").0, "v3");
    // `before` is routed only now, after the later revisions shared (and extended) its pools:
    // it still answers its own version, source, instance and revision, every time.
    for tenant_id in ["acme", "globex"] {
        for _ in 0..4 {
            let decision = before
                .route(&query(tenant_id, "api"))
                .unwrap_or_else(|e| panic!("routing {tenant_id}: {e}"));
            assert_eq!(
                (
                    decision.resolution.version.as_str(),
                    decision.resolution.source.to_string(),
                    decision.member.instance.id.as_str(),
                    decision.revision,
                ),
                ("v1", "default".to_owned(), "api-1", before.revision()),
                "{tenant_id}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn invalid_names_name_their_field() {
    let state = everyone_on_v2();
    let long = "x".repeat(crate::validate::MAX_NAME_LEN + 1);
    let service_with = |service: crate::Service| Mutation::UpsertService {
        service,
        force: true,
    };
    let cases: Vec<(Mutation, &str)> = vec![
        (upsert_tenant(tenant("")), "tenant.id"),
        (upsert_tenant(tenant("a b")), "tenant.id"),
        (upsert_tenant(tenant(&long)), "tenant.id"),
        (
            upsert_tenant(Tenant {
                name: "line\nbreak".into(),
                ..tenant("t")
            }),
            "tenant.name",
        ),
        (
            upsert_tenant(Tenant {
                region: "eu west".into(),
                ..tenant("t")
            }),
            "tenant.region",
        ),
        (
            upsert_tenant(Tenant {
                tier: "pro/max".into(),
                ..tenant("t")
            }),
            "tenant.tier",
        ),
        (
            upsert_tenant(Tenant {
                labels: [("bad key".to_owned(), "v".to_owned())].into(),
                ..tenant("t")
            }),
            "tenant.labels.key",
        ),
        (service_with(service("", "v1", &[])), "service.name"),
        (
            service_with(service("api", "", &[])),
            "service.default_version",
        ),
        (
            service_with(service("api", "v1", &["v 2"])),
            "service.versions",
        ),
        (register(instance("", "api", "v1")), "instance.id"),
        (
            register(Instance {
                address: "nohost".into(),
                ..instance("i", "api", "v1")
            }),
            "instance.address",
        ),
        (
            register(Instance {
                address: "host:0".into(),
                ..instance("i", "api", "v1")
            }),
            "instance.address",
        ),
        (register(instance("i", "a pi", "v1")), "instance.service"),
        (register(instance("i", "api", "")), "instance.version"),
        (
            register(Instance {
                zone: "a/b".into(),
                ..instance("i", "api", "v1")
            }),
            "instance.zone",
        ),
        (
            register(Instance {
                region: "e u".into(),
                ..instance("i", "api", "v1")
            }),
            "instance.region",
        ),
        (
            register(Instance {
                health_score: 101,
                ..instance("i", "api", "v1")
            }),
            "instance.health_score",
        ),
        (
            Mutation::DeregisterInstance {
                service: "api".into(),
                instance_id: String::new(),
            },
            "instance_id",
        ),
        (
            Mutation::SetDefaultVersion {
                service: "api".into(),
                version: "v 1".into(),
                force: true,
            },
            "version",
        ),
        (pin("", "api", "v1"), "tenant_id"),
        (pin("acme", "", "v1"), "service"),
        (pin("acme", "api", ""), "version"),
        (
            Mutation::SetTenantVersion {
                tenant_id: "acme".into(),
                service: "api".into(),
                version: "v1".into(),
                expected_version: Some(String::new()),
                force: false,
            },
            "expected_version",
        ),
        (
            Mutation::ClearTenantVersion {
                tenant_id: "a b".into(),
                service: "api".into(),
            },
            "tenant_id",
        ),
        (rollback("api", "", "v1", &[]), "from_version"),
        (rollback("api", "v2", "", &[]), "to_version"),
        (rollback("api", "v2", "v1", &["a b"]), "tenant_ids"),
        (
            Mutation::ClearOverride {
                service: "api".into(),
                override_id: String::new(),
            },
            "override_id",
        ),
        (
            Mutation::UpsertRollout {
                rollout: rollout("", "api", "v2", 10),
            },
            "rollout.id",
        ),
        (
            Mutation::UpsertRollout {
                rollout: rollout("r1", "api", "v2", 10_001),
            },
            "rollout.basis_points",
        ),
        (
            Mutation::UpsertRollout {
                rollout: crate::Rollout {
                    salt: "a\u{7}".into(),
                    ..rollout("r1", "api", "v2", 10)
                },
            },
            "rollout.salt",
        ),
        (
            Mutation::UpsertExperiment {
                experiment: experiment("e1", "api", &[]),
            },
            "experiment.variants",
        ),
        (
            Mutation::UpsertExperiment {
                experiment: experiment("e1", "api", &[("", "v1", 1)]),
            },
            "experiment.variants.name",
        ),
        (
            Mutation::UpsertExperiment {
                experiment: experiment("e 1", "api", &[("a", "v1", 1)]),
            },
            "experiment.id",
        ),
    ];
    for (mutation, expected) in cases {
        match refused(&state, &mutation) {
            RoutingError::InvalidArgument { field, .. } => {
                assert_eq!(field, expected, "{mutation:?}");
            }
            other => panic!("{mutation:?}: expected invalid {expected}, got {other:?}"),
        }
    }
    // The limits are inclusive: a name of exactly the maximum length is fine.
    let longest = "x".repeat(crate::validate::MAX_NAME_LEN);
    step(&state, &upsert_tenant(tenant(&longest)));
}

// ---------------------------------------------------------------------------------------------
// Routing

fn query<'a>(tenant_id: &'a str, service: &'a str) -> RouteQuery<'a> {
    RouteQuery {
        tenant_id,
        service,
        region: "",
        hash_key: "",
        strategy: None,
        entropy: 0,
        now_ms: 0,
    }
}

/// Routes `times` times, returning the picked instance ids.
fn picks(state: &RoutingState, query: &RouteQuery<'_>, times: u64) -> Vec<String> {
    (0..times)
        .map(|i| {
            let query = RouteQuery {
                entropy: crate::hash::fmix64(i + 1),
                ..*query
            };
            let decision = state
                .route(&query)
                .unwrap_or_else(|e| panic!("routing {query:?}: {e}"));
            decision.member.instance.id.clone()
        })
        .collect()
}

fn distinct(ids: &[String]) -> BTreeSet<&str> {
    ids.iter().map(String::as_str).collect()
}

#[test]
fn route_refusals() {
    let state = build(
        &world(),
        [
            register(Instance {
                healthy: false,
                ..instance("api-3", "api", "v3")
            }),
            Mutation::SetTenantVersion {
                tenant_id: "globex".into(),
                service: "api".into(),
                version: "v3".into(),
                expected_version: None,
                force: true,
            },
            Mutation::SetTenantVersion {
                tenant_id: "globex".into(),
                service: "billing".into(),
                version: "v2".into(),
                expected_version: None,
                force: true,
            },
        ],
    );
    let error = |query: RouteQuery<'_>| match state.route(&query) {
        Ok(decision) => panic!("{query:?} routed to {}", decision.member.instance.id),
        Err(error) => error,
    };
    assert_eq!(
        error(query("ghost", "api")),
        RoutingError::not_found(Entity::Tenant, "ghost")
    );
    assert_eq!(
        error(query("acme", "ghost")),
        RoutingError::not_found(Entity::Service, "ghost")
    );
    assert_eq!(
        error(query("umbrella", "api")),
        RoutingError::InactiveTenant("umbrella".into())
    );
    // An unhealthy instance only, and no instance at all.
    for (service, version) in [("api", "v3"), ("billing", "v2")] {
        assert_eq!(
            error(query("globex", service)),
            RoutingError::NoHealthyInstance {
                service: service.into(),
                version: version.into(),
            }
        );
    }
}

#[test]
fn route_returns_the_resolution_and_revision() {
    let state = build(&world(), [pin("acme", "api", "v2")]);
    let decision = state.route(&query("acme", "api")).expect("route");
    assert_eq!(decision.member.instance.id, "api-2");
    assert_eq!(decision.resolution.version, "v2");
    assert_eq!(decision.resolution.source, Source::Pin);
    assert_eq!(decision.revision, state.revision());
}

#[test]
fn route_prefers_the_tenants_region_unless_the_query_names_one() {
    // acme lives in eu, globex in us; v1 has an instance in each.
    let state = build(
        &world(),
        [register(Instance {
            region: "us".into(),
            ..instance("api-1-us", "api", "v1")
        })],
    );
    assert_eq!(
        distinct(&picks(&state, &query("acme", "api"), 6)),
        BTreeSet::from(["api-1"])
    );
    assert_eq!(
        distinct(&picks(&state, &query("globex", "api"), 6)),
        BTreeSet::from(["api-1-us"])
    );
    let in_us = RouteQuery {
        region: "us",
        ..query("acme", "api")
    };
    assert_eq!(
        distinct(&picks(&state, &in_us, 6)),
        BTreeSet::from(["api-1-us"])
    );
    // initech has no region: both instances take turns, in id order.
    assert_eq!(
        picks(&state, &query("initech", "api"), 6),
        [
            "api-1", "api-1-us", "api-1", "api-1-us", "api-1", "api-1-us"
        ]
    );
}

#[test]
fn route_names_the_strategy_that_picked_and_counts_nothing_in_flight() {
    let state = world();
    let service = state.service("api").expect("api").service.strategy;
    let decision = state.route(&query("acme", "api")).expect("route");
    assert_eq!(decision.strategy, service);
    for strategy in crate::Strategy::ALL {
        let decision = state
            .route(&RouteQuery {
                strategy: Some(strategy),
                ..query("acme", "api")
            })
            .expect("route");
        assert_eq!(decision.strategy, strategy);
        // Counting is the caller's, and only for least_connections.
        assert_eq!(decision.member.load.in_flight(0), 0, "{strategy}");
    }
}

#[test]
fn route_strategy_can_be_overridden_per_query() {
    let ids: Vec<String> = (0..20).map(|i| format!("tenant-{i}")).collect();
    let state = with_tenants(&world(), ids.iter().cloned());
    let state = build(&state, [register(instance("api-1b", "api", "v1"))]);
    // The service is round robin: consecutive picks alternate, in id order; the key is unused.
    let keyed = RouteQuery {
        hash_key: "order-42",
        ..query("tenant-0", "api")
    };
    assert_eq!(
        picks(&state, &keyed, 4),
        ["api-1", "api-1b", "api-1", "api-1b"]
    );
    // Consistent hashing keeps a key on one instance.
    let hashed = RouteQuery {
        strategy: Some(crate::Strategy::ConsistentHash),
        ..keyed
    };
    assert_eq!(distinct(&picks(&state, &hashed, 4)).len(), 1);
    // Without a hash key, the tenant id is the key.
    let mut seen = BTreeSet::new();
    for id in &ids {
        let implicit = picks(
            &state,
            &RouteQuery {
                strategy: Some(crate::Strategy::ConsistentHash),
                ..query(id, "api")
            },
            1,
        );
        let explicit = picks(
            &state,
            &RouteQuery {
                strategy: Some(crate::Strategy::ConsistentHash),
                hash_key: id,
                ..query(id, "api")
            },
            1,
        );
        assert_eq!(implicit, explicit, "{id}");
        seen.extend(implicit);
    }
    assert_eq!(seen.len(), 2, "20 tenants all hashed to {seen:?}");
}

fn clear(tenant_id: &str, service: &str) -> Mutation {
    Mutation::ClearTenantVersion {
        tenant_id: tenant_id.into(),
        service: service.into(),
    }
}

#[test]
fn pins_keep_their_versions_as_services_and_versions_are_added() {
    // Pins hold numbers: a version or service made later must not shift what they name.
    let state = build(
        &world(),
        [pin("acme", "api", "v2"), pin("acme", "billing", "v1")],
    );
    let later = build(
        &state,
        [
            register(instance("api-0", "api", "v0")),
            Mutation::UpsertService {
                service: service("aaa", "v9", &["v0", "v2"]),
                force: false,
            },
            register(instance("aaa-0", "aaa", "v0")),
            pin("globex", "aaa", "v0"),
            pin("acme", "api", "v3"),
            pin("acme", "api", "v0"),
        ],
    );
    let acme = later.tenant("acme").expect("acme");
    assert_eq!(later.pins_of(acme), vec![("api", "v0"), ("billing", "v1")]);
    let globex = later.tenant("globex").expect("globex");
    assert_eq!(later.pins_of(globex), vec![("aaa", "v0")]);
    assert_eq!(resolved(&later, "globex", "aaa"), pair("v0", "pin"));
    // The earlier revision still reads its own pins.
    assert_eq!(resolved(&state, "acme", "api"), pair("v2", "pin"));
    // A rebuilt state numbers everything afresh, and names the same pins.
    let rebuilt = RoutingState::from_dump(&later.dump()).expect("from_dump");
    assert_eq!(rebuilt.dump(), later.dump());
    assert_same_resolutions(&later, &rebuilt);
    // Clearing one pin keeps the other; clearing a pin of an unknown service clears nothing.
    let (cleared, outcome) = step(&later, &clear("acme", "api"));
    assert_eq!(outcome, Outcome::Cleared { existed: true });
    let acme = cleared.tenant("acme").expect("acme");
    assert_eq!(cleared.pins_of(acme), vec![("billing", "v1")]);
    assert_eq!(
        step(&cleared, &clear("acme", "ghost")).1,
        Outcome::Cleared { existed: false }
    );
}

#[test]
fn the_loader_takes_tenants_one_at_a_time_and_checks_their_pins() {
    let dump = full_state().dump();
    let mut loader = StateLoader::new(&dump.services, &dump.instances).expect("loader");
    // Of two pins of one service the later wins; pins come in any order.
    loader
        .tenant(
            tenant("acme"),
            [("billing", "v2"), ("api", "v1"), ("billing", "v1")],
        )
        .expect("acme");
    let refusal = loader
        .tenant(tenant("globex"), [("ghost", "v1")])
        .expect_err("unknown service");
    assert_eq!(refusal, RoutingError::not_found(Entity::Service, "ghost"));
    let refusal = loader
        .tenant(tenant("globex"), [("api", "v9")])
        .expect_err("unknown version");
    assert_eq!(refusal, RoutingError::not_found(Entity::Version, "api/v9"));
    assert!(matches!(
        loader.tenant(tenant("globex"), [("api", "bad name")]),
        Err(RoutingError::InvalidArgument { field, .. }) if field == "pin.version"
    ));
    let state = loader
        .finish(7, &dump.overrides, &dump.rollouts, &dump.experiments)
        .expect("finish");
    assert_eq!(state.revision(), 7);
    assert_eq!(state.tenant_count(), 1);
    let acme = state.tenant("acme").expect("acme");
    assert_eq!(state.pins_of(acme), vec![("api", "v1"), ("billing", "v1")]);
    assert_eq!(state.dump().overrides, dump.overrides);
}

#[test]
fn the_loader_replays_tenant_changes_whatever_the_tenant_held() {
    let dump = full_state().dump();
    let mut loader = StateLoader::new(&dump.services, &dump.instances).expect("loader");
    // acme was read with its pin already moved to v2 by a change that is replayed below.
    loader
        .tenant(tenant("acme"), [("api", "v2")])
        .expect("acme");
    let replays = [
        // Made when acme was on v1: its compare-and-set no longer holds, the value is set all
        // the same.
        Mutation::SetTenantVersion {
            tenant_id: "acme".into(),
            service: "api".into(),
            version: "v2".into(),
            expected_version: Some("v1".into()),
            force: false,
        },
        // A tenant made during the read, then pinned.
        Mutation::UpsertTenant {
            tenant: tenant("initech"),
        },
        Mutation::SetTenantVersion {
            tenant_id: "initech".into(),
            service: "api".into(),
            version: "v2".into(),
            expected_version: None,
            force: false,
        },
        Mutation::ClearTenantVersion {
            tenant_id: "initech".into(),
            service: "billing".into(),
        },
    ];
    for mutation in &replays {
        assert_eq!(loader.replay_tenant_change(mutation), Ok(true));
    }
    // Anything but a tenant's change is not replayed.
    let other = Mutation::SetDefaultVersion {
        service: "api".into(),
        version: "v2".into(),
        force: true,
    };
    assert_eq!(loader.replay_tenant_change(&other), Ok(false));
    let state = loader
        .finish(9, &dump.overrides, &dump.rollouts, &dump.experiments)
        .expect("finish");
    assert_eq!(state.tenant_count(), 2);
    for id in ["acme", "initech"] {
        let entry = state.tenant(id).expect("tenant");
        assert_eq!(state.pins_of(entry), vec![("api", "v2")], "{id}");
    }
    assert_eq!(
        state.service("api").expect("api").service.default_version,
        "v1"
    );
}

// ---------------------------------------------------------------------------------------------
// Dumps

fn full_state() -> RoutingState {
    build(
        &everyone_on_v2(),
        [
            // Overrides of two services, made in another order than the services sort.
            Mutation::EmergencyRollback {
                service: "billing".into(),
                from_version: "v1".into(),
                to_version: "v2".into(),
                tenant_ids: BTreeSet::new(),
                force: true,
            },
            register(Instance {
                weight: 0,
                region: "us".into(),
                zone: "us-1a".into(),
                metadata: [("build".to_owned(), "1234".to_owned())].into(),
                ..instance("api-2b", "api", "v2")
            }),
            Mutation::UpsertService {
                service: crate::Service {
                    strategy: crate::Strategy::HealthAware,
                    ..service("search", "v1", &["v2"])
                },
                force: false,
            },
            Mutation::UpsertRollout {
                rollout: rollout("r2", "billing", "v2", 2_500),
            },
            rollback("api", "v3", "v2", &[]),
            rollback("api", "v2", "v1", &["acme", "globex"]),
        ],
    )
}

fn assert_same_resolutions(a: &RoutingState, b: &RoutingState) {
    for tenant in a.tenants_after(None) {
        for service in a.services() {
            let id = &tenant.tenant.id;
            let name = &service.service.name;
            assert_eq!(a.resolve(id, name), b.resolve(id, name), "{id}/{name}");
        }
    }
}

#[test]
fn dump_round_trips_through_from_dump() {
    let state = full_state();
    let dump = state.dump();
    assert_eq!(dump.overrides.len(), 3);
    assert_eq!(dump.pins.len(), 2);
    assert_eq!(dump.revision, state.revision());
    let rebuilt = RoutingState::from_dump(&dump).expect("from_dump");
    assert_eq!(rebuilt.dump(), dump);
    assert_eq!(rebuilt.revision(), state.revision());
    assert_same_resolutions(&state, &rebuilt);
    // Both go on identically: the next override gets the same id.
    let next = rollback("api", "v1", "v3", &[]);
    assert_eq!(step(&state, &next).1, step(&rebuilt, &next).1);
    // And the dump survives serialisation.
    let json = serde_json::to_string(&dump).expect("serialise");
    let parsed: StateDump = serde_json::from_str(&json).expect("parse");
    assert_eq!(parsed, dump);
}

#[test]
fn from_dump_checks_every_record() {
    let dump = full_state().dump();
    let mut orphan_pin = dump.clone();
    orphan_pin.pins.push(Pin {
        tenant_id: "ghost".into(),
        service: "api".into(),
        version: "v1".into(),
    });
    assert_eq!(
        RoutingState::from_dump(&orphan_pin).err(),
        Some(RoutingError::not_found(Entity::Tenant, "ghost"))
    );
    let mut orphan_override = dump.clone();
    orphan_override.overrides[0].service = "ghost".into();
    assert_eq!(
        RoutingState::from_dump(&orphan_override).err(),
        Some(RoutingError::not_found(Entity::Service, "ghost"))
    );
    let mut bad_instance = dump;
    bad_instance.instances[0].address = "nohost".into();
    assert!(matches!(
        RoutingState::from_dump(&bad_instance),
        Err(RoutingError::InvalidArgument { field, .. }) if field == "instance.address"
    ));
}

// ---------------------------------------------------------------------------------------------
// Laws over random mutation sequences

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every successful apply moves the revision by one; the result is deterministic and survives
    /// a dump round trip; later applies, successful or refused, leave how old revisions route.
    #[test]
    fn apply_is_all_or_nothing(mutations in prop::collection::vec(fixtures::mutation(), 1..40)) {
        let mut state = world();
        let mut replica = world();
        let mut revisions = Vec::new();
        for mutation in &mutations {
            revisions.push(state.clone());
            let before = state.dump();
            match state.apply(mutation) {
                Ok((next, outcome)) => {
                    prop_assert_eq!(next.revision(), state.revision() + 1);
                    let active = next.tenants_after(None).filter(|t| t.tenant.active).count();
                    prop_assert_eq!(next.active_tenant_count(), active);
                    let after = next.dump();
                    prop_assert_eq!(after.revision, before.revision + 1);
                    match RoutingState::from_dump(&after) {
                        Ok(rebuilt) => prop_assert_eq!(&rebuilt.dump(), &after),
                        Err(error) => prop_assert!(false, "from_dump: {}", error),
                    }
                    // A replica applying the same mutation reaches the same state.
                    match replica.apply(mutation) {
                        Ok((copy, copy_outcome)) => {
                            prop_assert_eq!(&copy_outcome, &outcome);
                            prop_assert_eq!(copy.dump(), after);
                            replica = copy;
                        }
                        Err(error) => prop_assert!(false, "the replica refused: {}", error),
                    }
                    state = next;
                }
                Err(error) => {
                    prop_assert_eq!(replica.apply(mutation).err(), Some(error));
                }
            }
        }
        // Revisions share pools, with their lazily built caches and their cursors. Routed only
        // now, after every later revision was made from it (or an apply began and was refused),
        // each old revision still routes every tenant as a copy rebuilt from its dump does.
        revisions.push(state);
        for old in revisions.iter().rev() {
            let fresh = RoutingState::from_dump(&old.dump()).expect("a revision rebuilds");
            prop_assert_eq!(
                routes(old),
                routes(&fresh),
                "revision {} routes differently",
                old.revision()
            );
        }
    }
}

/// A route's resolution, instance id and revision, or its refusal.
type Routed = Result<(crate::Resolution, String, u64), RoutingError>;

/// Returns how a state routes every tenant and service the generated mutations name: the
/// resolution, the instance and the revision, or the refusal. Consistent hashing picks the
/// instance, so that no cursor moved by earlier routes changes the answer.
fn routes(state: &RoutingState) -> Vec<Routed> {
    let mut routes = Vec::new();
    for tenant_id in fixtures::TENANT_IDS {
        for service in fixtures::SERVICES {
            let query = RouteQuery {
                strategy: Some(crate::Strategy::ConsistentHash),
                ..query(tenant_id, service)
            };
            routes.push(state.route(&query).map(|decision| {
                (
                    decision.resolution,
                    decision.member.instance.id.clone(),
                    decision.revision,
                )
            }));
        }
    }
    routes
}

// ---------------------------------------------------------------------------------------------
// Rollout decisions

/// Returns `world` with a managed rollout `r1` of `api` to v2 running at its first step.
fn managed_world() -> RoutingState {
    use crate::model::{RolloutPhase, RolloutPlan};
    build(
        &world(),
        [Mutation::StartRollout {
            rollout: crate::Rollout {
                plan: Some(RolloutPlan {
                    from_version: String::new(),
                    steps: vec![1_000, 5_000],
                    interval_ms: 60_000,
                    analysis: crate::AnalysisPolicy::default(),
                    phase: RolloutPhase::Running,
                    step: 0,
                    step_started_ms: 0,
                    failed_checks: 0,
                    decisions: Vec::new(),
                }),
                ..rollout("r1", "api", "v2", 0)
            },
            force: false,
        }],
    )
}

fn decision(event: crate::model::RolloutEvent, note: &str) -> crate::model::RolloutDecision {
    crate::model::RolloutDecision {
        at_ms: 1_000,
        step: 0,
        basis_points: 0,
        event,
        canary: None,
        baseline: None,
        note: note.into(),
    }
}

#[test]
fn rollout_decision_notes_follow_the_note_rule() {
    use crate::StepAction;
    use crate::model::RolloutEvent;
    let state = managed_world();
    let control = |note: &str| Mutation::ControlRollout {
        service: "api".into(),
        rollout_id: "r1".into(),
        decision: decision(RolloutEvent::Paused, note),
        force: false,
    };
    let progress = |note: &str| Mutation::ProgressRollout {
        service: "api".into(),
        rollout_id: "r1".into(),
        decision: decision(
            RolloutEvent::Step {
                action: StepAction::Hold {
                    reason: "quiet".into(),
                },
            },
            note,
        ),
    };
    let too_long = "x".repeat(crate::validate::MAX_NOTE_LEN + 1);
    for mutation in [control(&too_long), progress(&too_long)] {
        assert_eq!(
            refused(&state, &mutation),
            RoutingError::invalid(
                "decision.note",
                format!("longer than {} characters", crate::validate::MAX_NOTE_LEN)
            )
        );
    }
    for hidden in [
        "by eve: ok\u{202E}gnp.exe",
        "by eve\u{200B}: ok",
        "line\nbreak",
    ] {
        for mutation in [control(hidden), progress(hidden)] {
            assert!(
                matches!(
                    refused(&state, &mutation),
                    RoutingError::InvalidArgument { ref field, .. } if field == "decision.note"
                ),
                "{hidden:?}"
            );
        }
    }
    // At the limit, in characters, the note is recorded.
    let longest = "é".repeat(crate::validate::MAX_NOTE_LEN);
    step(&state, &progress(&longest));
    let (paused, _) = step(&state, &control(&longest));
    let decisions = paused.service("api").expect("api").rollouts()[0]
        .plan
        .as_ref()
        .expect("managed")
        .decisions
        .clone();
    assert_eq!(
        decisions.last().map(|d| d.note.as_str()),
        Some(longest.as_str())
    );
}

#[test]
fn a_registration_costs_a_path_of_the_pool_not_every_instance_of_the_service() {
    use crate::state::Scope;
    use crate::{PickRequest, Strategy};
    // Two versions: 2,000 instances of v1 stay untouched while v2 grows.
    let state = build(
        &RoutingState::default(),
        [Mutation::UpsertService {
            service: service("big", "v1", &["v1", "v2"]),
            force: true,
        }],
    );
    let many: Vec<Mutation> = (0..2_000)
        .map(|i| register(instance(&format!("v1-{i:05}"), "big", "v1")))
        .collect();
    let before = build(&state, many);
    let scope = Scope::Service("big".into());
    let v1 = std::sync::Arc::clone(before.service("big").expect("big").pool("v1").expect("v1"));
    let whole = v1.bytes_beside(None);
    assert!(whole >= 2_000 * std::mem::size_of::<crate::Member>());

    // Another version's registration shares v1's pool outright.
    let (after, _) = step(&before, &register(instance("v2-00001", "big", "v2")));
    let kept = after.service("big").expect("big").pool("v1").expect("v1");
    assert!(
        std::sync::Arc::ptr_eq(&v1, kept),
        "an untouched pool is shared"
    );
    let cost = RoutingState::superseded_bytes(&before, &after, &scope);
    assert!(
        cost < whole / 4,
        "{cost} bytes for a change that left v1 alone ({whole})"
    );

    // A registration into v1 itself copies a path of the member list, not the list ...
    let (grown, _) = step(&after, &register(instance("v1-99999", "big", "v1")));
    let cost = RoutingState::superseded_bytes(&after, &grown, &scope);
    assert!(
        cost < whole / 4,
        "{cost} bytes for one more of 2,000 members ({whole})"
    );
    let grown_pool = grown.service("big").expect("big").pool("v1").expect("v1");
    assert_eq!(grown_pool.members().len(), 2_001);
    assert!(grown_pool.member("v1-99999").is_some());

    // ... but a pool that was picked from built candidate sets, which only it holds.
    let pick = PickRequest {
        strategy: Strategy::RoundRobin,
        region: "",
        hash_key: "",
        entropy: 1,
        now_ms: 0,
    };
    assert!(grown_pool.pick(&pick).is_some());
    let (again, _) = step(&grown, &register(instance("v1-99998", "big", "v1")));
    let cost = RoutingState::superseded_bytes(&grown, &again, &scope);
    assert!(
        cost >= 2_001 * 4,
        "{cost}: the candidate set of 2,001 indices is counted"
    );
}

#[test]
fn a_service_change_shares_its_experiments_sticky_tenants() {
    let state = world();
    let (with_experiment, _) = step(
        &state,
        &Mutation::UpsertExperiment {
            experiment: experiment("e1", "api", &[("a", "v1", 50), ("b", "v2", 50)]),
        },
    );
    let (sticky, _) = step(
        &with_experiment,
        &Mutation::UpdateExperiment {
            service: "api".into(),
            experiment_id: "e1".into(),
            variants: vec![
                crate::Variant {
                    name: "a".into(),
                    version: "v1".into(),
                    weight: 10,
                },
                crate::Variant {
                    name: "b".into(),
                    version: "v2".into(),
                    weight: 90,
                },
            ],
            rebalance: false,
        },
    );
    let kept = &sticky.service("api").expect("api").experiments()[0].sticky;
    assert!(!kept.is_empty(), "tenants kept their variants");
    let (registered, _) = step(&sticky, &register(instance("api-new", "api", "v1")));
    let after = &registered.service("api").expect("api").experiments()[0].sticky;
    assert!(
        std::sync::Arc::ptr_eq(kept, after),
        "a change that does not touch the experiment copies no sticky map"
    );
}
