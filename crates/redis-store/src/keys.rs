//! The key layout, one function per key so no key is formatted twice.
//!
//! Every key starts with the hash tag `{<prefix>}`, so all of them live in one Cluster slot and
//! every change (which also bumps the revision and appends to the change stream) is one atomic
//! script in Redis Cluster too. Routing state is small (a few hundred bytes per tenant); the slot
//! gives ordering and atomicity, Cluster and Sentinel give availability.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:revision` | string | the revision of the last change |
//! | `{p}:history` | string | the id of this history of revisions, `<origin>` or `<origin>.<epoch>` (a new epoch after changes were lost to a failover; gone with an emptied Redis) |
//! | `{p}:head` | string | the id of the last change |
//! | `{p}:adopted` | hash | retired history origin → the history routers following it may adopt (`greyrouter store adopt`) |
//! | `{p}:changes` | stream | the last changes (the audit trail): entry id `<revision>-0`; fields `mutation` (JSON), `actor`, `reason`, `at_ms`, `before`, `after`, `history`, `id`, `parent` (the id of the change before) |
//! | `{p}:tenants` | set | every tenant id |
//! | `{p}:active_tenants` | set | ids of active tenants |
//! | `{p}:tenant:<id>:metadata` | hash | `name`, `region`, `tier`, `active` (`1`/`0`), `labels` (JSON) |
//! | `{p}:tenant:<id>:services` | hash | service → pinned version |
//! | `{p}:services` | set | every service name |
//! | `{p}:service:<name>` | hash | `default_version`, `strategy`, `versions` (JSON array) |
//! | `{p}:service:<name>:version:<v>:instances` | hash | instance id → instance (JSON) |
//! | `{p}:service:<name>:overrides` | hash | override id → override (JSON) |
//! | `{p}:service:<name>:rollouts` | hash | rollout id → rollout (JSON) |
//! | `{p}:service:<name>:experiments` | hash | experiment id → experiment (JSON) |
//!
//! | `{p}:lease:<name>` | string | the holder of a lease (the replica driving rollouts); expires |
//!
//! Routing state has no TTL: pins and defaults never expire. Only leases do. Names may contain `:`; inside a key it
//! is written `%3A` (names never contain `%`), so no two names share a key.

/// Returns a name as a key part: `:` becomes `%3A`.
fn part(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(':') {
        name.replace(':', "%3A").into()
    } else {
        name.into()
    }
}

/// Builds the keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
}

impl Keys {
    /// Returns the keys under `prefix` (which must not contain braces).
    pub fn new(prefix: &str) -> Self {
        Keys {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The revision counter.
    pub fn revision(&self) -> String {
        format!("{}:revision", self.tag)
    }

    /// The id of this prefix's history of revisions, set once.
    pub fn history(&self) -> String {
        format!("{}:history", self.tag)
    }

    /// The id of the last change.
    pub fn head(&self) -> String {
        format!("{}:head", self.tag)
    }

    /// Which history replaces a retired one, by the retired one's origin.
    pub fn adopted(&self) -> String {
        format!("{}:adopted", self.tag)
    }

    /// The change stream.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.tag)
    }

    /// Every tenant id.
    pub fn tenants(&self) -> String {
        format!("{}:tenants", self.tag)
    }

    /// Active tenant ids.
    pub fn active_tenants(&self) -> String {
        format!("{}:active_tenants", self.tag)
    }

    /// A tenant's fields.
    pub fn tenant_metadata(&self, tenant_id: &str) -> String {
        format!("{}:tenant:{}:metadata", self.tag, part(tenant_id))
    }

    /// A tenant's pins.
    pub fn tenant_services(&self, tenant_id: &str) -> String {
        format!("{}:tenant:{}:services", self.tag, part(tenant_id))
    }

    /// Every service name.
    pub fn services(&self) -> String {
        format!("{}:services", self.tag)
    }

    /// A service's fields.
    pub fn service(&self, service: &str) -> String {
        format!("{}:service:{}", self.tag, part(service))
    }

    /// The instances of a service version.
    pub fn instances(&self, service: &str, version: &str) -> String {
        format!(
            "{}:service:{}:version:{}:instances",
            self.tag,
            part(service),
            part(version)
        )
    }

    /// A service's emergency overrides.
    pub fn overrides(&self, service: &str) -> String {
        format!("{}:service:{}:overrides", self.tag, part(service))
    }

    /// A service's rollouts.
    pub fn rollouts(&self, service: &str) -> String {
        format!("{}:service:{}:rollouts", self.tag, part(service))
    }

    /// A lease (its holder, with an expiry).
    pub fn lease(&self, name: &str) -> String {
        format!("{}:lease:{}", self.tag, part(name))
    }

    /// A service's experiments.
    pub fn experiments(&self, service: &str) -> String {
        format!("{}:service:{}:experiments", self.tag, part(service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let keys = Keys::new("gr");
        for key in [
            keys.revision(),
            keys.history(),
            keys.head(),
            keys.adopted(),
            keys.changes(),
            keys.tenants(),
            keys.active_tenants(),
            keys.tenant_metadata("acme"),
            keys.tenant_services("acme"),
            keys.services(),
            keys.service("api"),
            keys.instances("api", "v1"),
            keys.overrides("api"),
            keys.rollouts("api"),
            keys.experiments("api"),
        ] {
            assert!(key.starts_with("{gr}:"), "{key}");
        }
        assert_eq!(keys.tenant_services("acme"), "{gr}:tenant:acme:services");
        // A version with a colon cannot be mistaken for part of another key.
        assert_ne!(
            keys.instances("a:version:b", "c"),
            keys.instances("a", "b:version:c")
        );
        assert_eq!(
            keys.instances("user-service", "v1.0"),
            "{gr}:service:user-service:version:v1.0:instances"
        );
    }
}
