//! Outcome reports: sliding windows per service version and per instance, outlier ejection and
//! live health scores.
//!
//! Windows are per replica: each replica judges from the reports it receives. SDKs and gateways
//! spread their reports over the fleet like any other call, so every replica sees a fair share;
//! the replica that drives a rollout judges its canary on its own share.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use greyrouter_proto::v1 as pb;
use routing_core::ejection::{EjectionPolicy, InstanceHealth, may_eject};
use routing_core::outcome::{Stats, Window, WindowConfig};
use routing_core::{Entity, RoutingError, RoutingState, validate};

/// Outcome windows and instance health of one replica.
#[derive(Debug)]
pub struct Outcomes {
    policy: EjectionPolicy,
    window: WindowConfig,
    versions: Mutex<HashMap<(String, String), Window>>,
    instances: Mutex<HashMap<(String, String), InstanceHealth>>,
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
            instances: Mutex::new(HashMap::new()),
        }
    }

    /// Records one report against the instance it names (by id, or by address).
    ///
    /// Ends one in-flight request of the instance, updates its health score, and ejects it when
    /// it keeps failing (never more than the policy's share of its version's instances).
    pub fn record(
        &self,
        state: &RoutingState,
        report: &pb::Outcome,
        now_ms: u64,
    ) -> Result<(), RoutingError> {
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
        member.load.finish();
        lock(&self.versions)
            .entry((report.service.clone(), version.clone()))
            .or_insert_with(|| Window::new(self.window))
            .record(now_ms, report.success, report.latency_ms);

        let mut instances = lock(&self.instances);
        let key = (report.service.clone(), member.instance.id.clone());
        let health = instances
            .entry(key)
            .or_insert_with(|| InstanceHealth::new(&self.policy));
        if health.record(&self.policy, now_ms, report.success, report.latency_ms) {
            let ejected = pool
                .members()
                .iter()
                .filter(|m| m.load.is_ejected(now_ms))
                .count();
            if may_eject(ejected, pool.members().len(), &self.policy) {
                let until = health.eject(&self.policy, now_ms);
                member.load.eject_until(until);
                tracing::warn!(
                    service = %report.service,
                    instance = %member.instance.id,
                    until_ms = until,
                    times = health.times_ejected(),
                    "instance ejected"
                );
            }
        }
        member.load.set_live_score(health.health_score(now_ms));
        Ok(())
    }

    /// Returns the merged outcomes of a service version over the last `span_ms`.
    pub fn version_stats(&self, service: &str, version: &str, now_ms: u64, span_ms: u64) -> Stats {
        lock(&self.versions)
            .get(&(service.to_owned(), version.to_owned()))
            .map(|window| window.stats(now_ms, span_ms))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use routing_core::{Instance, Mutation, Service, Strategy};

    use super::*;

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
            instance: Instance {
                id: "api-1".into(),
                address: "10.0.0.1:8080".into(),
                service: "api".into(),
                version: "v1".into(),
                weight: 1,
                region: String::new(),
                zone: String::new(),
                metadata: Default::default(),
                healthy: true,
                health_score: 100,
            },
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

    fn report(tenant_id: &str) -> pb::Outcome {
        pb::Outcome {
            instance_id: "api-1".into(),
            tenant_id: tenant_id.into(),
            service: "api".into(),
            success: true,
            latency_ms: 5,
            ..pb::Outcome::default()
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
}
