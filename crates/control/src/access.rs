//! Who may do what: roles, tenant scopes, the rule of every operation, and admission (rate
//! limits and caps) — for every front door alike.
//!
//! A front door learns who calls (crate `auth`: a verified token, an API key or a client
//! certificate; everyone, unrestricted, when auth is off) as a [`Caller`], and asks here:
//! - [`rule`]: the role an operation needs and how it reaches tenants ([`Reach`]). Every
//!   operation of every front door has one; an operation without one is refused.
//! - [`Caller::check_tenant`], [`Caller::check_tenants`], [`Caller::check_fleet`],
//!   [`Caller::sees`]: what the caller's tenant scope lets it read and change. A caller scoped
//!   to some tenants never reads or changes another tenant; the answer for a tenant outside the
//!   scope is the same whether the tenant exists or not.
//! - [`Admission`]: token buckets per caller and per tenant (Router and Admin calls apart),
//!   a cap on calls in flight and on watch streams per caller. Excess is refused at once with
//!   `RESOURCE_EXHAUSTED` and the time to wait, never queued.
//!
//! Roles: `viewer` reads; `router` routes, watches and reports outcomes (what services and
//! gateways need); `operator` moves tenants (pins, rollouts, experiments, schema upgrades) and
//! reads; `admin` changes what every tenant shares (services, instances, defaults, overrides,
//! emergency rollback, the whole state) and holds `operator` and `viewer`. `router` is held
//! only by name: outcome reports steer traffic, so no other role implies it.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use routing_core::limits::{Buckets, Rate};
use routing_core::{RoutingState, Tenant};
use smol_str::SmolStr;

use crate::audit::Actor;
use crate::{Error, ErrorKind};

/// A role a caller may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Routes, watches assignments, reports outcomes.
    Router,
    /// Pins, rollouts, experiments, schema upgrades.
    Operator,
    /// Services, instances, defaults, overrides, emergency rollback, the whole state.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Router, Role::Operator, Role::Admin];

    /// The role's name in tokens and configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Router => "router",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`, if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// Whether holding this role grants `needed`.
    pub const fn grants(self, needed: Role) -> bool {
        matches!(
            (self, needed),
            (Role::Viewer, Role::Viewer)
                | (Role::Router, Role::Router)
                | (Role::Operator, Role::Operator | Role::Viewer)
                | (Role::Admin, Role::Admin | Role::Operator | Role::Viewer)
        )
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles a caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Roles(u8);

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles(0b1111);

    /// No role.
    pub const NONE: Roles = Roles(0);

    /// These roles and `role`.
    #[must_use]
    pub const fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// The roles named in `names`; unknown names are ignored (a token may carry roles of other
    /// products).
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Roles {
        names
            .into_iter()
            .filter_map(Role::parse)
            .fold(Roles::NONE, Roles::with)
    }

    /// Whether a held role grants `needed`.
    pub fn grant(self, needed: Role) -> bool {
        Role::ALL
            .into_iter()
            .any(|role| self.0 & role.bit() != 0 && role.grants(needed))
    }

    /// The held roles' names.
    pub fn names(self) -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|role| self.0 & role.bit() != 0)
            .map(Role::name)
            .collect()
    }
}

/// Which tenants a caller may read and change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TenantScope {
    /// Every tenant.
    #[default]
    All,
    /// Only these.
    Only(ScopeEntries),
}

/// The tenants of a limited scope: ids, and labels a tenant may match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeEntries {
    /// Tenant ids.
    pub tenants: BTreeSet<String>,
    /// `(key, value)` pairs: a tenant whose label `key` (or field `tier` or `region`) is
    /// `value` is in scope.
    pub labels: Vec<(String, String)>,
}

impl TenantScope {
    /// Most entries in a scope (a token listing more is refused).
    pub const MAX_ENTRIES: usize = 10_000;

    /// Reads a scope from its entries: a tenant id, `key=value` for a label (or the tenant's
    /// `tier` or `region`), or `*` for every tenant.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<TenantScope, String> {
        let mut scope = ScopeEntries::default();
        for (count, entry) in entries.into_iter().enumerate() {
            if count >= TenantScope::MAX_ENTRIES {
                return Err(format!(
                    "a tenant scope lists at most {} entries",
                    TenantScope::MAX_ENTRIES
                ));
            }
            if entry == "*" {
                return Ok(TenantScope::All);
            }
            match entry.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    scope.labels.push((key.to_owned(), value.to_owned()));
                }
                Some(_) => return Err(format!("bad tenant scope entry {entry:?}")),
                None if entry.is_empty() => return Err("empty tenant scope entry".to_owned()),
                None => {
                    scope.tenants.insert(entry.to_owned());
                }
            }
        }
        Ok(TenantScope::Only(scope))
    }

    /// Whether the scope holds every tenant.
    pub fn is_all(&self) -> bool {
        matches!(self, TenantScope::All)
    }

    /// Whether `tenant` is in scope.
    pub fn holds(&self, tenant: &Tenant) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(scope) => {
                scope.tenants.contains(&tenant.id)
                    || scope.labels.iter().any(|(key, value)| match key.as_str() {
                        "tier" => &tenant.tier == value,
                        "region" => &tenant.region == value,
                        _ => tenant.labels.get(key) == Some(value),
                    })
            }
        }
    }

    /// Whether the tenant `id` is in scope, as `state` knows it (a tenant that does not exist
    /// is in scope only when listed by id).
    pub fn holds_id(&self, state: &RoutingState, id: &str) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Only(scope) => {
                scope.tenants.contains(id)
                    || state
                        .tenant(id)
                        .is_some_and(|entry| self.holds(&entry.tenant))
            }
        }
    }
}

/// Who calls: a verified identity, or everyone when auth is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject, the API key's name or the certificate's subject (each following
    /// the actor rule, `routing_core::validate::actor`); the peer's address when auth is off.
    pub subject: String,
    /// How the identity was proven: `jwt`, `api-key`, `certificate`, or `none` (auth off).
    pub method: &'static str,
    /// Roles held.
    pub roles: Roles,
    /// Tenants the caller may read and change.
    pub scope: TenantScope,
    /// The tenant the credential speaks for (a token's tenant claim, when one is configured):
    /// what the gateway routes the caller's requests as.
    pub tenant: Option<String>,
}

impl Caller {
    /// Anyone, when auth is off: every role, every tenant; `peer` names the caller for rate
    /// limits.
    pub fn unrestricted(peer: impl Into<String>) -> Caller {
        Caller {
            subject: peer.into(),
            method: "none",
            roles: Roles::ALL,
            scope: TenantScope::All,
            tenant: None,
        }
    }

    /// Whether the identity was proven (auth is on).
    pub fn is_verified(&self) -> bool {
        self.method != "none"
    }

    /// Refuses a caller without the role `rule` needs, naming it.
    pub fn check_role(&self, rule: &Rule) -> Result<(), Error> {
        if self.roles.grant(rule.role) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{}/{} needs the role {}",
                    rule.service, rule.operation, rule.role
                ),
            ))
        }
    }

    /// Refuses a tenant outside the caller's scope (the same answer whether it exists or not).
    pub fn check_tenant(&self, state: &RoutingState, tenant_id: &str) -> Result<(), Error> {
        if self.scope.holds_id(state, tenant_id) {
            Ok(())
        } else {
            Err(out_of_scope(tenant_id))
        }
    }

    /// Refuses tenants outside the scope; an empty list means every tenant, which only an
    /// unscoped caller may name.
    pub fn check_tenants<S: AsRef<str>>(
        &self,
        state: &RoutingState,
        tenant_ids: &[S],
    ) -> Result<(), Error> {
        if tenant_ids.is_empty() {
            return self.check_fleet();
        }
        tenant_ids
            .iter()
            .try_for_each(|id| self.check_tenant(state, id.as_ref()))
    }

    /// Refuses a scoped caller: the operation concerns every tenant.
    pub fn check_fleet(&self) -> Result<(), Error> {
        if self.scope.is_all() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                "this concerns every tenant, and the caller's tenant scope is limited",
            ))
        }
    }

    /// Whether the caller may see `tenant`.
    pub fn sees(&self, tenant: &Tenant) -> bool {
        self.scope.holds(tenant)
    }

    /// The audit trail's actor: the verified identity when auth is on (a name claimed in a
    /// header is then ignored); the claimed name, or `anonymous`, when it is off.
    pub fn actor(&self, claimed: Option<&str>, reason: Option<&str>) -> Result<Actor, Error> {
        if self.is_verified() {
            let mut actor = Actor::from_headers(None, reason)?;
            actor.name.clone_from(&self.subject);
            Ok(actor)
        } else {
            Actor::from_headers(claimed, reason)
        }
    }
}

fn out_of_scope(tenant_id: &str) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!("tenant {tenant_id:?} is outside the caller's tenant scope"),
    )
}

/// How an operation reaches tenants, and so what a tenant scope allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It names one tenant: in scope, or refused.
    Tenant,
    /// It names tenants: each in scope; none named means every tenant (unscoped callers only).
    Tenants,
    /// It lists tenants or their records, or carries many tenants' requests (a batch, outcome
    /// reports): only those in scope are answered or taken, each other one refused in its place.
    Filtered,
    /// It reads records no tenant owns (services, instances, discovery): any scope.
    Shared,
    /// It concerns every tenant (defaults, instances, rollouts, experiments, overrides, the
    /// whole state): unscoped callers only.
    Fleet,
}

/// The rule of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The service: `Router` or `Admin`.
    pub service: &'static str,
    /// The operation, named as the RPC.
    pub operation: &'static str,
    /// The role it needs.
    pub role: Role,
    /// How it reaches tenants.
    pub reach: Reach,
}

impl Rule {
    /// Which budget the operation's calls take from.
    pub fn class(&self) -> CallClass {
        if self.service == "Router" {
            CallClass::Router
        } else {
            CallClass::Admin
        }
    }
}

const fn r(service: &'static str, operation: &'static str, role: Role, reach: Reach) -> Rule {
    Rule {
        service,
        operation,
        role,
        reach,
    }
}

/// The rule of every operation of every front door.
pub const RULES: &[Rule] = &[
    r("Router", "Route", Role::Router, Reach::Tenant),
    r("Router", "RouteBatch", Role::Router, Reach::Filtered),
    r("Router", "WatchAssignments", Role::Router, Reach::Tenants),
    r("Router", "ReportOutcome", Role::Router, Reach::Filtered),
    r("Router", "ReportOutcomes", Role::Router, Reach::Filtered),
    r("Admin", "UpsertTenant", Role::Admin, Reach::Tenant),
    r("Admin", "ListTenants", Role::Viewer, Reach::Filtered),
    r("Admin", "UpsertService", Role::Admin, Reach::Fleet),
    r("Admin", "ListServices", Role::Viewer, Reach::Shared),
    r("Admin", "RegisterInstance", Role::Admin, Reach::Fleet),
    r("Admin", "DeregisterInstance", Role::Admin, Reach::Fleet),
    r("Admin", "Heartbeat", Role::Admin, Reach::Fleet),
    r("Admin", "ListInstances", Role::Viewer, Reach::Shared),
    r("Admin", "SetDefaultVersion", Role::Admin, Reach::Fleet),
    r("Admin", "SetTenantVersion", Role::Operator, Reach::Tenant),
    r("Admin", "ClearTenantVersion", Role::Operator, Reach::Tenant),
    r("Admin", "GetTenantServices", Role::Viewer, Reach::Tenant),
    r("Admin", "EmergencyRollback", Role::Admin, Reach::Tenants),
    r("Admin", "ListOverrides", Role::Viewer, Reach::Fleet),
    r("Admin", "ClearOverride", Role::Admin, Reach::Fleet),
    r("Admin", "StartRollout", Role::Operator, Reach::Fleet),
    r("Admin", "GetRollout", Role::Viewer, Reach::Fleet),
    r("Admin", "ListRollouts", Role::Viewer, Reach::Fleet),
    r("Admin", "PauseRollout", Role::Operator, Reach::Fleet),
    r("Admin", "ResumeRollout", Role::Operator, Reach::Fleet),
    r("Admin", "PromoteRollout", Role::Operator, Reach::Fleet),
    r("Admin", "AbortRollout", Role::Operator, Reach::Fleet),
    r("Admin", "CreateExperiment", Role::Operator, Reach::Fleet),
    r("Admin", "UpdateExperiment", Role::Operator, Reach::Fleet),
    r("Admin", "GetExperiment", Role::Viewer, Reach::Fleet),
    r("Admin", "StopExperiment", Role::Operator, Reach::Fleet),
    r("Admin", "ListEvents", Role::Viewer, Reach::Filtered),
    r("Admin", "UpgradeSchema", Role::Operator, Reach::Tenants),
    r("Admin", "GetSchemaUpgrade", Role::Viewer, Reach::Fleet),
    r("Admin", "WatchSchemaUpgrade", Role::Viewer, Reach::Fleet),
    r("Admin", "GetTenantSchema", Role::Viewer, Reach::Tenant),
    r("Admin", "RepairTenantSchema", Role::Operator, Reach::Tenant),
    r("Admin", "AdoptStoreHistory", Role::Admin, Reach::Fleet),
    r("Admin", "GetDiscoveryStatus", Role::Viewer, Reach::Shared),
    r("Admin", "ExportState", Role::Admin, Reach::Fleet),
    r("Admin", "ApplyState", Role::Admin, Reach::Fleet),
];

/// The rule of `service`'s `operation`, if it has one.
pub fn rule(service: &str, operation: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|rule| rule.service == service && rule.operation == operation)
}

/// Checks a request under `rule` that names `tenants` against the caller's scope (the rule's
/// reach says how), then takes it from each tenant's rate budget. Every front door calls this
/// with its decoded request.
pub fn admit_tenants(
    state: &RoutingState,
    admission: &Admission,
    caller: &Caller,
    rule: &Rule,
    tenants: &[&str],
) -> Result<(), Error> {
    match rule.reach {
        Reach::Tenant | Reach::Tenants => caller.check_tenants(state, tenants)?,
        Reach::Fleet => caller.check_fleet()?,
        Reach::Filtered | Reach::Shared => {}
    }
    let class = rule.class();
    for tenant in tenants {
        admission.admit_tenant(class, tenant)?;
    }
    Ok(())
}

/// Which budget a call takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// Routing, watches, outcome reports.
    Router,
    /// Everything else.
    Admin,
}

/// Rate limits and caps.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Router calls per caller.
    pub router_per_caller: Rate,
    /// Router calls per tenant (each decision of a batch counts).
    pub router_per_tenant: Rate,
    /// Admin calls per caller.
    pub admin_per_caller: Rate,
    /// Admin calls per tenant they name.
    pub admin_per_tenant: Rate,
    /// Most calls in flight on the node; 0: no cap.
    pub max_in_flight: usize,
    /// Most open watch streams per caller; 0: no cap.
    pub max_watches_per_caller: usize,
    /// Most callers and most tenants with a bucket of their own (memory bound).
    pub max_tracked_keys: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let rate = |per_second: f64| Rate {
            per_second,
            burst: per_second,
        };
        LimitSettings {
            router_per_caller: rate(100_000.0),
            router_per_tenant: rate(20_000.0),
            admin_per_caller: rate(10_000.0),
            admin_per_tenant: rate(1_000.0),
            max_in_flight: 4_096,
            max_watches_per_caller: 1_000,
            max_tracked_keys: 100_000,
        }
    }
}

impl LimitSettings {
    /// No limit at all.
    pub fn unlimited() -> LimitSettings {
        let off = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        LimitSettings {
            router_per_caller: off,
            router_per_tenant: off,
            admin_per_caller: off,
            admin_per_tenant: off,
            max_in_flight: 0,
            max_watches_per_caller: 0,
            max_tracked_keys: 1,
        }
    }
}

const SHARDS: usize = 16;

/// Token buckets by key, in shards so that callers rarely wait on one lock.
struct Sharded {
    /// Keys are ids of callers and tenants: inline up to 23 bytes, so a new bucket does not
    /// allocate for its key.
    shards: Vec<Mutex<Buckets<SmolStr>>>,
    /// Picks a key's shard.
    spread: foldhash::fast::RandomState,
    limited: bool,
}

impl Sharded {
    fn new(rate: Rate, max_keys: usize) -> Sharded {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Buckets::new(rate, max_keys.div_ceil(SHARDS), 0)))
                .collect(),
            spread: foldhash::fast::RandomState::default(),
            limited: rate.is_limited(),
        }
    }

    fn take(&self, key: &str, now_ms: u64) -> Result<(), u64> {
        if !self.limited {
            return Ok(());
        }
        let shard = (self.spread.hash_one(key) % SHARDS as u64) as usize;
        let Some(shard) = self.shards.get(shard) else {
            return Ok(());
        };
        let mut buckets = shard.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.take(key, now_ms)
    }
}

/// Rate limits, the in-flight cap and the watch cap of one node.
pub struct Admission {
    settings: LimitSettings,
    epoch: Instant,
    router_callers: Sharded,
    router_tenants: Sharded,
    admin_callers: Sharded,
    admin_tenants: Sharded,
    in_flight: Arc<AtomicUsize>,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// Admission under `settings`.
    pub fn new(settings: LimitSettings) -> Admission {
        let keys = settings.max_tracked_keys;
        Admission {
            router_callers: Sharded::new(settings.router_per_caller, keys),
            router_tenants: Sharded::new(settings.router_per_tenant, keys),
            admin_callers: Sharded::new(settings.admin_per_caller, keys),
            admin_tenants: Sharded::new(settings.admin_per_tenant, keys),
            settings,
            epoch: Instant::now(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            watches: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a call of `caller` from its budget.
    pub fn admit_caller(&self, class: CallClass, caller: &Caller) -> Result<(), Error> {
        let buckets = match class {
            CallClass::Router => &self.router_callers,
            CallClass::Admin => &self.admin_callers,
        };
        buckets
            .take(&caller.subject, self.now_ms())
            .map_err(|wait| exhausted("the caller's call rate is used up", wait))
    }

    /// Takes a call about `tenant_id` from the tenant's budget.
    pub fn admit_tenant(&self, class: CallClass, tenant_id: &str) -> Result<(), Error> {
        let buckets = match class {
            CallClass::Router => &self.router_tenants,
            CallClass::Admin => &self.admin_tenants,
        };
        buckets
            .take(tenant_id, self.now_ms())
            .map_err(|wait| exhausted("the tenant's call rate is used up", wait))
    }

    /// Counts a call in flight until the returned guard drops; refused above the cap.
    pub fn enter(&self) -> Result<InFlight, Error> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = InFlight(Arc::clone(&self.in_flight));
        let cap = self.settings.max_in_flight;
        if cap > 0 && now > cap {
            return Err(exhausted("too many calls in flight on this router", 50));
        }
        Ok(guard)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Opens a watch stream of `caller` until the returned slot drops; refused above the cap.
    pub fn open_watch(&self, caller: &Caller) -> Result<WatchSlot, Error> {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let open = watches.entry(caller.subject.clone()).or_default();
        let cap = self.settings.max_watches_per_caller;
        if cap > 0 && *open >= cap {
            return Err(exhausted(
                "too many watch streams open for this caller",
                1000,
            ));
        }
        *open += 1;
        Ok(WatchSlot {
            watches: Arc::clone(&self.watches),
            caller: caller.subject.clone(),
        })
    }
}

fn exhausted(what: &str, retry_after_ms: u64) -> Error {
    Error::Exhausted {
        message: format!("{what}; retry after {retry_after_ms} ms"),
        retry_after_ms,
    }
}

/// A call in flight; counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open watch stream; counted until dropped.
#[derive(Debug)]
pub struct WatchSlot {
    watches: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = watches.get_mut(&self.caller) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                watches.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, tier: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: String::new(),
            region: "eu".into(),
            tier: tier.into(),
            labels: [("team".to_owned(), "blue".to_owned())].into(),
            active: true,
        }
    }

    #[test]
    fn admin_holds_operator_and_viewer_but_no_role_implies_router() {
        assert!(Roles::NONE.with(Role::Admin).grant(Role::Operator));
        assert!(Roles::NONE.with(Role::Admin).grant(Role::Viewer));
        assert!(Roles::NONE.with(Role::Operator).grant(Role::Viewer));
        assert!(!Roles::NONE.with(Role::Operator).grant(Role::Admin));
        assert!(!Roles::NONE.with(Role::Viewer).grant(Role::Operator));
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert!(!Roles::NONE.with(role).grant(Role::Router), "{role}");
        }
        assert!(!Roles::NONE.with(Role::Router).grant(Role::Viewer));
        assert_eq!(
            Roles::parse(["router", "other-product", "viewer"]).names(),
            ["viewer", "router"]
        );
    }

    #[test]
    fn a_scope_holds_listed_ids_and_matching_labels() {
        let scope = TenantScope::parse(["acme", "tier=gold", "team=red"]).expect("scope");
        assert!(scope.holds(&tenant("acme", "free")));
        assert!(scope.holds(&tenant("globex", "gold")));
        assert!(!scope.holds(&tenant("globex", "free")));
        assert!(TenantScope::parse(["*"]).expect("all").is_all());
        assert!(TenantScope::parse([""]).is_err());
        assert!(TenantScope::parse(["=x"]).is_err());
        let many: Vec<String> = (0..=TenantScope::MAX_ENTRIES)
            .map(|i| i.to_string())
            .collect();
        assert!(TenantScope::parse(many.iter().map(String::as_str)).is_err());
    }

    #[test]
    fn a_scoped_caller_is_refused_every_tenant_but_its_own_and_the_fleet() {
        let state = RoutingState::default();
        let caller = Caller {
            subject: "svc".into(),
            method: "jwt",
            roles: Roles::ALL,
            scope: TenantScope::parse(["acme"]).expect("scope"),
            tenant: None,
        };
        assert!(caller.check_tenant(&state, "acme").is_ok());
        let err = caller
            .check_tenant(&state, "globex")
            .expect_err("out of scope");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(caller.check_tenants(&state, &["acme"]).is_ok());
        assert!(caller.check_tenants(&state, &["acme", "globex"]).is_err());
        assert!(caller.check_tenants::<&str>(&state, &[]).is_err());
        assert!(caller.check_fleet().is_err());
        assert!(Caller::unrestricted("peer").check_fleet().is_ok());
    }

    #[test]
    fn a_missing_role_is_named() {
        let caller = Caller {
            subject: "svc".into(),
            method: "jwt",
            roles: Roles::NONE.with(Role::Viewer),
            scope: TenantScope::All,
            tenant: None,
        };
        let rule = rule("Admin", "SetTenantVersion").expect("rule");
        let err = caller.check_role(rule).expect_err("denied");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("operator"), "{err}");
    }

    #[test]
    fn the_verified_identity_is_the_actor() {
        let caller = Caller {
            subject: "alice@example.com".into(),
            method: "jwt",
            roles: Roles::ALL,
            scope: TenantScope::All,
            tenant: None,
        };
        let actor = caller.actor(Some("mallory"), Some("why")).expect("actor");
        assert_eq!(actor.name, "alice@example.com");
        assert_eq!(actor.reason, "why");
        let anyone = Caller::unrestricted("127.0.0.1");
        assert_eq!(anyone.actor(Some("bob"), None).expect("actor").name, "bob");
    }

    #[test]
    fn calls_above_the_in_flight_cap_are_refused_at_once() {
        let admission = Admission::new(LimitSettings {
            max_in_flight: 2,
            ..LimitSettings::default()
        });
        let first = admission.enter().expect("first");
        let _second = admission.enter().expect("second");
        let err = admission.enter().expect_err("third");
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        drop(first);
        let _third = admission.enter().expect("room again");
        assert_eq!(admission.in_flight(), 2);
    }

    #[test]
    fn watch_streams_are_capped_per_caller() {
        let admission = Admission::new(LimitSettings {
            max_watches_per_caller: 1,
            ..LimitSettings::default()
        });
        let alice = Caller::unrestricted("alice");
        let slot = admission.open_watch(&alice).expect("first");
        assert!(admission.open_watch(&alice).is_err());
        assert!(admission.open_watch(&Caller::unrestricted("bob")).is_ok());
        drop(slot);
        assert!(admission.open_watch(&alice).is_ok());
    }

    #[test]
    fn a_caller_over_its_rate_is_told_when_to_retry() {
        let admission = Admission::new(LimitSettings {
            admin_per_caller: Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            ..LimitSettings::default()
        });
        let alice = Caller::unrestricted("alice");
        admission
            .admit_caller(CallClass::Admin, &alice)
            .expect("first");
        let err = admission
            .admit_caller(CallClass::Admin, &alice)
            .expect_err("second");
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert!(err.retry_after_ms().is_some_and(|ms| ms > 0));
        // Router calls have their own budget.
        assert!(admission.admit_caller(CallClass::Router, &alice).is_ok());
    }
}
