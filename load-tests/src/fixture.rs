//! A data directory of the durable store holding `tenants` x `services` pins, written directly
//! (one snapshot), to measure how long a server takes to start from it and how much disk it
//! takes, without seeding millions of changes through the API first.
//!
//! Services `service-<j>` with versions `v1` (the default) and `v2`, `instances` instances of
//! each (`service-<j>-<version>-<k>`), tenants `tenant-<i>` each pinned to `v2` of every service.

use std::collections::BTreeSet;
use std::path::Path;

use greyrouter_store::journal;
use routing_core::{Instance, Pin, RoutingState, Service, StateDump, Strategy, Tenant};

use crate::error::Error;

/// Writes the fixture into `dir` (which must hold no data directory yet); returns its revision.
pub fn write(dir: &Path, tenants: usize, services: usize, instances: usize) -> Result<u64, Error> {
    let fail = |what: String| Error::Discovery(format!("fixture: {what}"));
    if journal::files(dir).is_ok_and(|f| !f.snapshots.is_empty() || !f.segments.is_empty()) {
        return Err(fail(format!(
            "{} already holds a data directory",
            dir.display()
        )));
    }
    let mut dump = StateDump::default();
    let mut address = 0u32;
    for j in 0..services {
        let name = format!("service-{j}");
        dump.services.push(Service {
            name: name.clone(),
            default_version: "v1".into(),
            strategy: Strategy::RoundRobin,
            versions: BTreeSet::from(["v1".to_owned(), "v2".to_owned()]),
        });
        for version in ["v1", "v2"] {
            for k in 0..instances {
                address += 1;
                let [_, b, c, d] = address.to_be_bytes();
                dump.instances.push(Instance::new(
                    format!("{name}-{version}-{k}"),
                    format!("10.{b}.{c}.{d}:8080"),
                    name.clone(),
                    version,
                ));
            }
        }
    }
    for i in 0..tenants {
        let id = format!("tenant-{i}");
        dump.tenants.push(Tenant {
            id: id.clone(),
            name: id.clone(),
            region: "eu".into(),
            tier: "pro".into(),
            labels: Default::default(),
            active: true,
        });
        for j in 0..services {
            dump.pins.push(Pin {
                tenant_id: id.clone(),
                service: format!("service-{j}"),
                version: "v2".into(),
            });
        }
    }
    dump.revision = (services + services * 2 * instances + tenants + tenants * services) as u64;
    let state = RoutingState::from_dump(&dump).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    journal::write_snapshot(dir, "fixture", "", &state).map_err(|e| fail(e.to_string()))?;
    Ok(state.revision())
}
