//! The tenants and services a load test names: `tenant-{i}` and `service-{j}` by default.
//!
//! `seed` creates exactly these names and `run` asks for them, both through [`KeyspaceSpec`],
//! so the two cannot drift apart.

use serde::Serialize;

/// How many tenants and services there are, and how their names are spelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyspaceSpec {
    /// Number of tenants: `{tenant_prefix}0` to `{tenant_prefix}{tenants - 1}`.
    pub tenants: usize,
    /// Number of services: `{service_prefix}0` to `{service_prefix}{services - 1}`.
    pub services: usize,
    /// Prefix of tenant ids.
    pub tenant_prefix: String,
    /// Prefix of service names.
    pub service_prefix: String,
}

impl Default for KeyspaceSpec {
    fn default() -> Self {
        KeyspaceSpec {
            tenants: 10_000,
            services: 20,
            tenant_prefix: "tenant-".to_owned(),
            service_prefix: "service-".to_owned(),
        }
    }
}

impl KeyspaceSpec {
    /// Returns the id of tenant `i`.
    pub fn tenant_id(&self, i: usize) -> String {
        format!("{}{i}", self.tenant_prefix)
    }

    /// Returns the name of service `j`.
    pub fn service_name(&self, j: usize) -> String {
        format!("{}{j}", self.service_prefix)
    }

    /// Returns every name, built once so that requests only clone them.
    pub fn build(&self) -> Keyspace {
        Keyspace {
            tenants: (0..self.tenants).map(|i| self.tenant_id(i)).collect(),
            services: (0..self.services).map(|j| self.service_name(j)).collect(),
        }
    }
}

/// Every tenant id and service name of a [`KeyspaceSpec`], indexed by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    /// Tenant ids; index `i` holds tenant `i`.
    pub tenants: Vec<String>,
    /// Service names; index `j` holds service `j`.
    pub services: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefixes() {
        let spec = KeyspaceSpec {
            tenants: 3,
            services: 2,
            ..KeyspaceSpec::default()
        };
        let keyspace = spec.build();
        assert_eq!(keyspace.tenants, ["tenant-0", "tenant-1", "tenant-2"]);
        assert_eq!(keyspace.services, ["service-0", "service-1"]);

        let custom = KeyspaceSpec {
            tenant_prefix: "t".to_owned(),
            service_prefix: "svc.".to_owned(),
            ..spec
        };
        assert_eq!(custom.tenant_id(7), "t7");
        assert_eq!(custom.service_name(1), "svc.1");
    }
}
