//! Populates a running server through `Admin` with the keyspace a run asks for.
//!
//! Three phases, each with at most `concurrency` calls in flight: services (every version
//! declared, the first as default), then `instances_per_version` instances of each version, then
//! tenants. Every call is an upsert, so seeding twice leaves the same state (with a newer
//! revision). Instance `k` of version `v` of service `j` is `{service}-{version}-{k}`; the `i`-th
//! instance overall listens at the `i`-th address of 10.0.0.0/8, port 8080 (valid IPv4 up to
//! 16 million instances); addresses are never dialled.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::connection::connect;
use crate::error::Error;
use crate::keyspace::KeyspaceSpec;

/// What to create.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedConfig {
    /// Server URI, e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// Tenants and services to create.
    pub keyspace: KeyspaceSpec,
    /// Versions of every service; the first is the default.
    pub versions: Vec<String>,
    /// Instances registered for each version of each service.
    pub instances_per_version: usize,
    /// Most Admin calls in flight.
    pub concurrency: usize,
    /// Separate HTTP/2 connections the calls are spread over.
    pub connections: usize,
    /// Deadline of each call.
    pub timeout: Duration,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            target: "http://127.0.0.1:50051".to_owned(),
            keyspace: KeyspaceSpec::default(),
            versions: vec!["v1".to_owned()],
            instances_per_version: 4,
            concurrency: 64,
            connections: 4,
            timeout: Duration::from_secs(10),
        }
    }
}

impl SeedConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.keyspace.tenants == 0 {
            return invalid("--tenants", "must be at least 1");
        }
        if self.keyspace.services == 0 {
            return invalid("--services", "must be at least 1");
        }
        if self.versions.is_empty() || self.versions.iter().any(String::is_empty) {
            return invalid("--versions", "must name at least one version, none empty");
        }
        if self.instances_per_version == 0 {
            return invalid("--instances", "must be at least 1");
        }
        if self.concurrency == 0 {
            return invalid("--concurrency", "must be at least 1");
        }
        if self.connections == 0 {
            return invalid("--connections", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return invalid("--timeout", "must be longer than 0s");
        }
        Ok(())
    }

    /// Returns the service message of service `j`.
    fn service(&self, j: usize) -> pb::Service {
        pb::Service {
            name: self.keyspace.service_name(j),
            default_version: self.versions[0].clone(),
            strategy: pb::Strategy::Unspecified.into(),
            versions: self.versions.clone(),
        }
    }

    /// Returns the instance message of instance number `i`, counted over services, then
    /// versions, then instances of a version.
    fn instance(&self, i: usize) -> pb::Instance {
        let per_service = self.versions.len() * self.instances_per_version;
        let j = i / per_service;
        let v = i % per_service / self.instances_per_version;
        let k = i % self.instances_per_version;
        let service = self.keyspace.service_name(j);
        let version = &self.versions[v];
        pb::Instance {
            id: format!("{service}-{version}-{k}"),
            address: format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            service,
            version: version.clone(),
            ..Default::default()
        }
    }

    /// Returns the tenant message of tenant `i`: active, tier `pro`, no region.
    fn tenant(&self, i: usize) -> pb::Tenant {
        pb::Tenant {
            id: self.keyspace.tenant_id(i),
            name: format!("Load tenant {i}"),
            tier: "pro".to_owned(),
            active: true,
            ..Default::default()
        }
    }
}

/// What a seed created, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedReport {
    /// The server.
    pub target: String,
    /// Services upserted.
    pub services: usize,
    /// Instances registered.
    pub instances: usize,
    /// Tenants upserted.
    pub tenants: usize,
    /// Admin calls made: `services + instances + tenants`.
    pub calls: usize,
    /// Seconds from the first call to the last answer.
    pub elapsed_secs: f64,
    /// Highest revision the server answered.
    pub revision: u64,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeded {}: {} services, {} instances, {} tenants ({} upserts) in {:.2} s ({:.0} upserts/s), revision {}",
            self.target,
            self.services,
            self.instances,
            self.tenants,
            self.calls,
            self.elapsed_secs,
            self.calls as f64 / self.elapsed_secs.max(f64::MIN_POSITIVE),
            self.revision
        )
    }
}

/// Creates (or updates) the services, instances and tenants `config` describes.
pub async fn seed(config: &SeedConfig) -> Result<SeedReport, Error> {
    config.validate()?;
    let connections = config.connections.min(config.concurrency);
    let channels = connect(&config.target, connections, config.timeout).await?;
    let config = Arc::new(config.clone());
    let services = config.keyspace.services;
    let instances = services * config.versions.len() * config.instances_per_version;
    let tenants = config.keyspace.tenants;

    let started = Instant::now();
    let mut revision = 0;
    for (phase, count) in [
        (Phase::Services, services),
        (Phase::Instances, instances),
        (Phase::Tenants, tenants),
    ] {
        revision = revision.max(run_phase(&config, &channels, phase, count).await?);
    }
    Ok(SeedReport {
        target: config.target.clone(),
        services,
        instances,
        tenants,
        calls: services + instances + tenants,
        elapsed_secs: started.elapsed().as_secs_f64(),
        revision,
    })
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Services,
    Instances,
    Tenants,
}

/// Makes calls `0..count` of `phase` with at most `concurrency` in flight; returns the highest
/// revision answered, or the first failure (after which no new call starts).
async fn run_phase(
    config: &Arc<SeedConfig>,
    channels: &[Channel],
    phase: Phase,
    count: usize,
) -> Result<u64, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for worker in 0..config.concurrency.min(count) {
        let mut admin = AdminClient::new(channels[worker % channels.len()].clone());
        let (config, next, failed) = (Arc::clone(config), Arc::clone(&next), Arc::clone(&failed));
        tasks.spawn(async move {
            let mut revision = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || failed.load(Ordering::Relaxed) {
                    return Ok(revision);
                }
                match call_within_rate(&config, &mut admin, phase, i).await {
                    Ok(answered) => revision = revision.max(answered),
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                }
            }
        });
    }
    let mut revision = 0;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(answered) => revision = revision.max(answered),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(revision),
    }
}

/// How long seeding waits out a server's call rate before it gives up.
const RATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Makes call `i` of `phase`, waiting and trying again while the server answers that the
/// caller's call rate is used up (a large seed outruns the default admin rate).
async fn call_within_rate(
    config: &SeedConfig,
    admin: &mut AdminClient<Channel>,
    phase: Phase,
    i: usize,
) -> Result<u64, Error> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(1);
    loop {
        match call(config, admin, phase, i).await {
            Err(Error::Seed { status, .. })
                if status.code() == tonic::Code::ResourceExhausted
                    && started.elapsed() < RATE_PATIENCE =>
            {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Makes call `i` of `phase`; returns the revision it produced.
async fn call(
    config: &SeedConfig,
    admin: &mut AdminClient<Channel>,
    phase: Phase,
    i: usize,
) -> Result<u64, Error> {
    let failed = |what: String| {
        move |status| Error::Seed {
            what,
            status: Box::new(status),
        }
    };
    match phase {
        Phase::Services => {
            let service = config.service(i);
            let what = format!("upsert service '{}'", service.name);
            let request = pb::UpsertServiceRequest {
                service: Some(service),
                // Instances come next: the default version has none yet.
                force: true,
            };
            let response = admin.upsert_service(request).await.map_err(failed(what))?;
            Ok(response.into_inner().revision)
        }
        Phase::Instances => {
            let instance = config.instance(i);
            let what = format!("register instance '{}'", instance.id);
            let request = pb::RegisterInstanceRequest {
                instance: Some(instance),
                ttl_seconds: 0,
            };
            let response = admin
                .register_instance(request)
                .await
                .map_err(failed(what))?;
            Ok(response.into_inner().revision)
        }
        Phase::Tenants => {
            let tenant = config.tenant(i);
            let what = format!("upsert tenant '{}'", tenant.id);
            let request = pb::UpsertTenantRequest {
                tenant: Some(tenant),
            };
            let response = admin.upsert_tenant(request).await.map_err(failed(what))?;
            Ok(response.into_inner().revision)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SeedConfig {
        SeedConfig {
            keyspace: KeyspaceSpec {
                tenants: 5,
                services: 3,
                ..KeyspaceSpec::default()
            },
            versions: vec!["v1".to_owned(), "v2".to_owned()],
            instances_per_version: 2,
            ..SeedConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        SeedConfig::default().validate().expect("valid");
    }

    #[test]
    fn instances_cover_every_service_version_and_index_once() {
        let config = config();
        let instances: Vec<pb::Instance> = (0..3 * 2 * 2).map(|i| config.instance(i)).collect();
        let ids: std::collections::BTreeSet<&str> =
            instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), 12, "ids are unique");
        assert_eq!(instances[0].id, "service-0-v1-0");
        assert_eq!(instances[0].address, "10.0.0.0:8080");
        assert_eq!(instances[3].id, "service-0-v2-1");
        assert_eq!(instances[3].address, "10.0.0.3:8080");
        assert_eq!(instances[11].id, "service-2-v2-1");
        assert_eq!(instances[11].address, "10.0.0.11:8080");
        assert_eq!(instances[11].service, "service-2");
        assert_eq!(instances[11].version, "v2");
    }

    #[test]
    fn services_default_to_the_first_version() {
        let service = config().service(1);
        assert_eq!(service.name, "service-1");
        assert_eq!(service.default_version, "v1");
        assert_eq!(service.versions, ["v1", "v2"]);
    }

    #[test]
    fn tenants_are_active() {
        let tenant = config().tenant(4);
        assert_eq!(tenant.id, "tenant-4");
        assert!(tenant.active);
    }

    #[test]
    fn names_the_bad_setting() {
        let bad = SeedConfig {
            instances_per_version: 0,
            ..config()
        };
        match bad.validate() {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "--instances"),
            other => panic!("{other:?}"),
        }
    }
}
