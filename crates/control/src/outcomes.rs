//! Outcome reports: sliding windows per service version and per instance, outlier ejection and
//! live health scores.
//!
//! Windows are per replica: each replica judges from the reports it receives. SDKs and gateways
//! spread their reports over the fleet like any other call, so every replica sees a fair share;
//! the replica that drives a rollout judges its canary on its own share.
//!
//! In-flight counts (read by `least_connections` only) are per replica too: [`Node::route`]
//! starts one for each of its `least_connections` decisions, and every report finishes one. A
//! report does not say which replica, if any, counted its request (SDKs decide locally, and
//! report to any replica), so a finish may end another request's count; counts never go below
//! zero, and a start no report ends is forgotten after 30 to 60 seconds
//! ([`IN_FLIGHT_TIMEOUT_MS`]). See `routing_core::balance::InstanceLoad` for what that
//! guarantees.
//!
//! [`Node::route`]: crate::Node::route
//! [`IN_FLIGHT_TIMEOUT_MS`]: routing_core::balance::IN_FLIGHT_TIMEOUT_MS

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use routing_core::ejection::{EjectionBook, EjectionPolicy};
use routing_core::outcome::{Stats, Window, WindowConfig};
use routing_core::{Entity, RoutingError, RoutingState, validate};

/// One request's outcome, as a caller reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeReport {
    /// The instance that served it; or, when empty, its address.
    pub instance_id: String,
    /// The instance's address, when the reporter does not know its id.
    pub address: String,
    /// The tenant, when the reporter knows it.
    pub tenant_id: String,
    /// The service.
    pub service: String,
    /// The version that served it (the instance's when empty).
    pub version: String,
    /// Whether it succeeded.
    pub success: bool,
    /// How long it took, in milliseconds.
    pub latency_ms: u32,
    /// The backend's own status (HTTP or gRPC code), for the record; not judged.
    pub status_code: u32,
}

/// Most further latencies one report may carry ([`Outcomes::record_many`]).
pub const MAX_MORE_LATENCIES: usize = 10_000;

/// Outcome windows and instance health of one replica.
#[derive(Debug)]
pub struct Outcomes {
    policy: EjectionPolicy,
    window: WindowConfig,
    /// Windows by service, then version (looked up without allocating).
    versions: Mutex<HashMap<String, HashMap<String, Window>>>,
    instances: Mutex<EjectionBook>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outcomes {
    /// Returns empty windows.
    pub fn new(policy: EjectionPolicy, window: WindowConfig) -> Self {
        Outcomes {
            policy,
            window,
            versions: Mutex::new(HashMap::new()),
            instances: Mutex::new(EjectionBook::new()),
        }
    }

    /// Records one report against the instance it names (by id, or by address).
    ///
    /// Ends one in-flight request of the instance (the oldest counted, if any: see the module
    /// docs), updates its health score, and ejects it when it keeps failing (never more than the
    /// policy's share of its version's instances).
    pub fn record(
        &self,
        state: &RoutingState,
        report: &OutcomeReport,
        now_ms: u64,
    ) -> Result<(), RoutingError> {
        self.record_many(state, report, &[], now_ms)
    }

    /// Records `report` and, after it, one request of the same kind for each latency of
    /// `more_latencies_ms` (at most [`MAX_MORE_LATENCIES`]); checked and looked up once.
    pub fn record_many(
        &self,
        state: &RoutingState,
        report: &OutcomeReport,
        more_latencies_ms: &[u32],
        now_ms: u64,
    ) -> Result<(), RoutingError> {
        if more_latencies_ms.len() > MAX_MORE_LATENCIES {
            return Err(RoutingError::invalid(
                "more_latencies_ms",
                format!("at most {MAX_MORE_LATENCIES} latencies in one report"),
            ));
        }
        validate::name("service", &report.service)?;
        // Optional: a gateway or proxy may report without knowing the tenant.
        validate::optional_name("tenant_id", &report.tenant_id)?;
        validate::optional_name("instance_id", &report.instance_id)?;
        validate::optional_name("version", &report.version)?;
        if report.instance_id.is_empty() && report.address.is_empty() {
            return Err(RoutingError::invalid(
                "instance_id",
                "name the instance, or give its address",
            ));
        }
        let service = state
            .service(&report.service)
            .ok_or_else(|| RoutingError::not_found(Entity::Service, &report.service))?;
        let found = service.pools().find_map(|(version, pool)| {
            let member = if report.instance_id.is_empty() {
                pool.members()
                    .iter()
                    .find(|m| m.instance.address == report.address)
            } else {
                pool.member(&report.instance_id)
            };
            member.map(|m| (version, pool, m))
        });
        let Some((version, pool, member)) = found else {
            let id = if report.instance_id.is_empty() {
                &report.address
            } else {
                &report.instance_id
            };
            return Err(RoutingError::not_found(
                Entity::Instance,
                format!("{}/{id}", report.service),
            ));
        };
        if !report.version.is_empty() && report.version != *version {
            return Err(RoutingError::invalid(
                "version",
                format!(
                    "instance '{}' runs version '{version}', not '{}'",
                    member.instance.id, report.version
                ),
            ));
        }
        let latencies = std::iter::once(report.latency_ms).chain(more_latencies_ms.iter().copied());
        {
            let mut versions = lock(&self.versions);
            if !versions.contains_key(&report.service) {
                versions.insert(report.service.clone(), HashMap::new());
            }
            if let Some(windows) = versions.get_mut(&report.service) {
                if !windows.contains_key(version) {
                    windows.insert(version.clone(), Window::new(self.window));
                }
                if let Some(window) = windows.get_mut(version) {
                    for latency_ms in latencies.clone() {
                        window.record(now_ms, report.success, latency_ms);
                    }
                }
            }
        }
        let mut instances = lock(&self.instances);
        for latency_ms in latencies {
            member.load.finish(now_ms);
            let ejection = instances.record(
                &self.policy,
                pool,
                member,
                report.success,
                latency_ms,
                now_ms,
            );
            if let Some(ejection) = ejection {
                tracing::warn!(
                    service = %report.service,
                    instance = %member.instance.id,
                    until_ms = ejection.until_ms,
                    times = ejection.times,
                    "instance ejected"
                );
            }
        }
        Ok(())
    }

    /// Returns the merged outcomes of a service version over the last `span_ms`.
    pub fn version_stats(&self, service: &str, version: &str, now_ms: u64, span_ms: u64) -> Stats {
        lock(&self.versions)
            .get(service)
            .and_then(|windows| windows.get(version))
            .map(|window| window.stats(now_ms, span_ms))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use greyrouter_store::{MemoryStore, Store, suite};
    use routing_core::{Instance, Mutation, Service, Strategy};

    use super::*;
    use crate::{Actor, Node, NodeSettings};
    use routing_core::RouteQuery;

    fn state() -> RoutingState {
        let service = Mutation::UpsertService {
            service: Service {
                name: "api".into(),
                default_version: "v1".into(),
                strategy: Strategy::RoundRobin,
                versions: ["v1".to_owned()].into(),
            },
            force: false,
        };
        let instance = Mutation::RegisterInstance {
            instance: Instance::new("api-1", "10.0.0.1:8080", "api", "v1"),
        };
        [service, instance]
            .iter()
            .fold(RoutingState::default(), |state, mutation| {
                match state.apply(mutation) {
                    Ok((next, _)) => next,
                    Err(err) => panic!("{mutation:?}: {err}"),
                }
            })
    }

    fn report(tenant_id: &str) -> OutcomeReport {
        OutcomeReport {
            tenant_id: tenant_id.into(),
            ..served_by("api-1", true)
        }
    }

    /// A report of a request `instance_id` of service `api` served in 5 ms.
    fn served_by(instance_id: &str, success: bool) -> OutcomeReport {
        OutcomeReport {
            instance_id: instance_id.into(),
            service: "api".into(),
            success,
            latency_ms: 5,
            ..OutcomeReport::default()
        }
    }

    #[test]
    fn report_tenant_id_is_checked_as_an_optional_name() {
        let outcomes = Outcomes::new(EjectionPolicy::default(), WindowConfig::default());
        let state = state();
        assert_eq!(outcomes.record(&state, &report("acme"), 1_000), Ok(()));
        // Empty: the reporter did not know the tenant.
        assert_eq!(outcomes.record(&state, &report(""), 1_000), Ok(()));
        for bad in ["bad id", "acme\u{202E}", "acme\u{200B}", &"x".repeat(129)] {
            let err = outcomes
                .record(&state, &report(bad), 1_000)
                .expect_err("a bad tenant id is rejected");
            assert!(
                matches!(&err, RoutingError::InvalidArgument { field, .. } if field == "tenant_id"),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with("invalid tenant_id: "), "{err}");
        }
        assert_eq!(
            outcomes.version_stats("api", "v1", 1_000, 60_000).requests,
            2
        );
    }

    #[test]
    fn one_report_may_stand_for_many_requests_of_one_kind() {
        let outcomes = Outcomes::new(EjectionPolicy::default(), WindowConfig::default());
        let state = state();
        let failed = OutcomeReport {
            latency_ms: 40,
            ..served_by("api-1", false)
        };
        assert_eq!(
            outcomes.record_many(&state, &failed, &[45, 2_000], 1_000),
            Ok(())
        );
        assert_eq!(
            outcomes.record_many(&state, &served_by("api-1", true), &[5; 7], 1_000),
            Ok(())
        );
        let stats = outcomes.version_stats("api", "v1", 1_000, 60_000);
        assert_eq!((stats.requests, stats.errors), (11, 3));
        assert!(stats.percentile_ms(1.0) >= Some(2_000), "{stats:?}");
        let err = outcomes
            .record_many(
                &state,
                &served_by("api-1", true),
                &vec![5; MAX_MORE_LATENCIES + 1],
                1_000,
            )
            .expect_err("too many latencies in one report");
        assert!(
            matches!(&err, RoutingError::InvalidArgument { field, .. } if field == "more_latencies_ms"),
            "{err}"
        );
        assert_eq!(
            outcomes.version_stats("api", "v1", 1_000, 60_000).requests,
            11,
            "nothing of a refused report counted"
        );
    }

    /// A node over a memory store with `suite`'s service `api` (round robin), instances `a1`
    /// and `a2` of v1 and tenant `t1`.
    async fn node() -> Arc<Node> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let node = Node::start(store, None, NodeSettings::default())
            .await
            .expect("a node");
        let actor = Actor::system("test", "");
        let Mutation::UpsertService { service, force } = suite::service() else {
            unreachable!("suite::service upserts a service")
        };
        assert_eq!(service.strategy, Strategy::RoundRobin);
        node.upsert_service(service, force, &actor)
            .await
            .expect("service");
        for id in ["a1", "a2"] {
            let Mutation::RegisterInstance { instance } = suite::instance(id, "v1") else {
                unreachable!("suite::instance registers an instance")
            };
            node.register_instance(instance, None, &actor)
                .await
                .expect("instance");
        }
        let Mutation::UpsertTenant { tenant } = suite::tenant("t1") else {
            unreachable!("suite::tenant upserts a tenant")
        };
        node.upsert_tenant(tenant, &actor).await.expect("tenant");
        node
    }

    /// Every instance's in-flight count at `now_ms`.
    fn in_flight(node: &Node, now_ms: u64) -> Vec<(String, u64)> {
        let state = node.state();
        let pool = state
            .service("api")
            .and_then(|service| service.pool("v1"))
            .expect("api v1 has instances");
        pool.members()
            .iter()
            .map(|m| (m.instance.id.clone(), m.load.in_flight(now_ms)))
            .collect()
    }

    fn total(counts: &[(String, u64)]) -> u64 {
        counts.iter().map(|(_, n)| n).sum()
    }

    #[tokio::test]
    async fn only_least_connections_decisions_count_requests_in_flight_on_the_router() {
        let node = node().await;
        let now = 1_700_000_000_000;
        let metadata = HashMap::new();
        let request = |strategy, entropy, now_ms| RouteQuery {
            tenant_id: "t1",
            service: "api",
            region: "",
            hash_key: "",
            strategy,
            entropy,
            now_ms,
        };
        let state = node.state();
        // The service's own strategy (round robin), and each other strategy but one: nothing
        // counted, so the reports of these requests have nothing to end.
        let others = Strategy::ALL
            .into_iter()
            .filter(|s| *s != Strategy::LeastConnections);
        for strategy in [None].into_iter().chain(others.map(Some)) {
            for entropy in 0..4 {
                let decision = node
                    .route(&state, &request(strategy, entropy, now), &metadata)
                    .expect("routed");
                assert_ne!(decision.strategy, Strategy::LeastConnections);
            }
        }
        assert_eq!(
            total(&in_flight(&node, now)),
            0,
            "{:?}",
            in_flight(&node, now)
        );
        // A least_connections decision counts its request until reported.
        let least_connections = |entropy, at| {
            node.route(
                &state,
                &request(Some(Strategy::LeastConnections), entropy, at),
                &metadata,
            )
            .expect("routed")
        };
        let decision = least_connections(7, now);
        assert_eq!(decision.strategy, Strategy::LeastConnections);
        let picked = decision.member.instance.id.clone();
        let counts = in_flight(&node, now);
        assert_eq!(total(&counts), 1);
        assert!(counts.contains(&(picked.clone(), 1)), "{counts:?}");
        // So the next one goes to the other instance.
        let next = least_connections(8, now);
        assert_ne!(next.member.instance.id, picked);
        assert_eq!(total(&in_flight(&node, now)), 2);
        // Reports end them.
        for id in [&picked, &next.member.instance.id] {
            node.report_outcome(&state, &served_by(id, true), now + 10)
                .expect("recorded");
        }
        assert_eq!(total(&in_flight(&node, now + 10)), 0);
        // A report of a request the router did not count (an SDK's local decision, say) finds
        // nothing to end, and leaves no debt behind.
        node.report_outcome(&state, &served_by(&picked, true), now + 20)
            .expect("recorded");
        least_connections(9, now + 30);
        assert_eq!(total(&in_flight(&node, now + 30)), 1);
        // A request never reported stops counting after the timeout.
        let later = now + 2 * routing_core::balance::IN_FLIGHT_TIMEOUT_MS;
        assert_eq!(total(&in_flight(&node, later)), 0);
    }

    #[tokio::test]
    async fn an_instance_that_keeps_failing_is_ejected_through_the_book() {
        let node = node().await;
        let state = node.state();
        let now = 1_700_000_000_000;
        let failure = served_by("a1", false);
        let policy = &node.settings().outcomes.ejection;
        for _ in 0..policy.consecutive_failures {
            node.report_outcome(&state, &failure, now)
                .expect("recorded");
        }
        let load = |id: &str| {
            Arc::clone(
                &state
                    .service("api")
                    .and_then(|s| s.pool("v1"))
                    .and_then(|p| p.member(id))
                    .expect("a member")
                    .load,
            )
        };
        assert_eq!(
            load("a1").ejected_until_ms(),
            now + policy.ejection_ms(0),
            "ejected for the base time"
        );
        assert_eq!(load("a1").live_score(), 0);
        // Half the pool at most: a2 stays however it fails.
        let failure = OutcomeReport {
            instance_id: "a2".into(),
            ..failure
        };
        for _ in 0..2 * policy.consecutive_failures {
            node.report_outcome(&state, &failure, now)
                .expect("recorded");
        }
        assert!(!load("a2").is_ejected(now));
    }
}
