//! The domain: tenants, services, versions, instances and the rules that assign versions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisPolicy, Measurement, StepAction};
use crate::hash;

/// A revision of the routing state: every change increments it by one.
pub type Revision = u64;

/// A tenant of the SaaS: the unit versions are assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Stable identifier.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Region the tenant lives in; its instances there are preferred.
    #[serde(default)]
    pub region: String,
    /// Tier such as `free`, `pro` or `internal`.
    #[serde(default)]
    pub tier: String,
    /// Free-form labels, matched by cohorts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Inactive tenants are not routed.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn full_health() -> u8 {
    100
}

/// A load-balancing strategy among the instances of one version.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// In proportion to weights, interleaved (smooth weighted round robin).
    WeightedRoundRobin,
    /// The less loaded of two random instances (power of two choices on in-flight requests).
    LeastConnections,
    /// At random, in proportion to weight times health score.
    HealthAware,
    /// By a hash of the request key on a ring: the same key keeps its instance.
    ConsistentHash,
}

impl Strategy {
    /// Every strategy, in API order.
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::HealthAware,
        Strategy::ConsistentHash,
    ];

    /// Returns the name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::HealthAware => "health_aware",
            Strategy::ConsistentHash => "consistent_hash",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown strategy '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// A backend service whose versions are routed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// The version tenants get when nothing else applies.
    pub default_version: String,
    /// How an instance of the resolved version is picked.
    #[serde(default)]
    pub strategy: Strategy,
    /// Known versions: declared, the default, or any with a registered instance.
    #[serde(default)]
    pub versions: BTreeSet<String>,
}

/// One running instance of a service version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Unique within the service.
    pub id: String,
    /// `host:port` clients connect to.
    pub address: String,
    /// The service it runs.
    pub service: String,
    /// The version it runs.
    pub version: String,
    /// Relative weight; 0 means drained.
    #[serde(default = "one")]
    pub weight: u32,
    /// Region it runs in.
    #[serde(default)]
    pub region: String,
    /// Zone within the region.
    #[serde(default)]
    pub zone: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Unhealthy instances are not picked while a healthy one exists.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// 0-100, the `health_aware` strategy's weight factor.
    #[serde(default = "full_health")]
    pub health_score: u8,
}

impl Instance {
    /// An instance with the documented defaults: weight 1, healthy, health score 100, no
    /// region, zone or metadata.
    pub fn new(
        id: impl Into<String>,
        address: impl Into<String>,
        service: impl Into<String>,
        version: impl Into<String>,
    ) -> Instance {
        Instance {
            id: id.into(),
            address: address.into(),
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
}

impl Instance {
    /// Whether the instance may take new traffic: healthy and not drained.
    pub fn is_eligible(&self) -> bool {
        self.healthy && self.weight > 0
    }
}

/// The tenants a rollout or experiment applies to; empty parts match everyone.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Tenants of these tiers (any tier when empty).
    #[serde(default)]
    pub tiers: BTreeSet<String>,
    /// Tenants carrying every one of these labels (any when empty).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only these tenants (any when empty).
    #[serde(default)]
    pub tenant_ids: BTreeSet<String>,
}

impl Cohort {
    /// Whether the tenant belongs to the cohort.
    pub fn contains(&self, tenant: &Tenant) -> bool {
        (self.tiers.is_empty() || self.tiers.contains(&tenant.tier))
            && (self.tenant_ids.is_empty() || self.tenant_ids.contains(&tenant.id))
            && self
                .labels
                .iter()
                .all(|(key, value)| tenant.labels.get(key) == Some(value))
    }
}

/// A gradual rollout: a share of a service's tenants moves to `to_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Unique identifier.
    pub id: String,
    /// The service rolled out.
    pub service: String,
    /// The version tenants move to.
    pub to_version: String,
    /// Share of the cohort on `to_version`, in basis points (0-10,000).
    pub basis_points: u32,
    /// Salt of the tenant hash; keep it when raising the share so no tenant moves back.
    pub salt: String,
    /// The tenants eligible for the rollout.
    #[serde(default)]
    pub cohort: Cohort,
    /// The managed progression: steps, analysis and decisions. Absent for a fixed share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RolloutPlan>,
}

impl Rollout {
    /// Whether the tenant is on the rollout's version at its current share.
    ///
    /// A tenant is included when its bucket is below the share, so raising the share only ever
    /// adds tenants. An aborted or promoted rollout includes nobody (after a promotion the
    /// version is the default).
    pub fn includes(&self, tenant: &Tenant) -> bool {
        self.is_live()
            && self.cohort.contains(tenant)
            && hash::bucket("rollout", &self.salt, &tenant.id) < self.basis_points
    }

    /// Whether the rollout still routes tenants: fixed, running or paused.
    pub fn is_live(&self) -> bool {
        self.plan
            .as_ref()
            .is_none_or(|plan| matches!(plan.phase, RolloutPhase::Running | RolloutPhase::Paused))
    }
}

/// Where a managed rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    /// Advancing step by step as analysis allows.
    Running,
    /// Held at its current share until resumed.
    Paused,
    /// Finished: the version became the service's default.
    Promoted,
    /// Stopped: every moved tenant went back to the previous version.
    Aborted,
}

impl RolloutPhase {
    /// Every phase.
    pub const ALL: [RolloutPhase; 4] = [
        RolloutPhase::Running,
        RolloutPhase::Paused,
        RolloutPhase::Promoted,
        RolloutPhase::Aborted,
    ];

    /// Returns the name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Promoted => "promoted",
            RolloutPhase::Aborted => "aborted",
        }
    }
}

/// What a rollout decision did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum RolloutEvent {
    /// The rollout started at its first step.
    Started,
    /// The analysis of a step decided.
    Step {
        /// The decision.
        action: StepAction,
    },
    /// An operator paused it.
    Paused,
    /// An operator resumed it.
    Resumed,
    /// It was promoted: the version became the default.
    Promoted,
    /// An operator aborted it: every moved tenant went back.
    Aborted,
}

/// Most decisions a rollout keeps (the oldest are dropped).
pub const MAX_ROLLOUT_DECISIONS: usize = 200;

/// The managed progression of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// The version tenants leave: the service's default when the rollout started (the baseline
    /// of the analysis).
    pub from_version: String,
    /// Shares in basis points, strictly increasing.
    pub steps: Vec<u32>,
    /// How long each step runs before it is judged.
    pub interval_ms: u64,
    /// Limits the new version must keep to.
    #[serde(default)]
    pub analysis: AnalysisPolicy,
    /// Where the rollout stands.
    pub phase: RolloutPhase,
    /// Index of the current step.
    pub step: usize,
    /// When the current step (or the current check of it) started.
    pub step_started_ms: u64,
    /// Failed checks in a row.
    pub failed_checks: u32,
    /// Every decision, with the figures behind it (the last [`MAX_ROLLOUT_DECISIONS`]).
    #[serde(default)]
    pub decisions: Vec<RolloutDecision>,
}

/// One decision about a rollout, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutDecision {
    /// When it was made.
    pub at_ms: u64,
    /// The step it judged.
    pub step: usize,
    /// The share after the decision, in basis points.
    pub basis_points: u32,
    /// What happened.
    pub event: RolloutEvent,
    /// The new version's figures over the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Measurement>,
    /// The previous version's figures over the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Measurement>,
    /// Who or what decided, and why (operator actions).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// One arm of an A/B experiment.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Name shown in the route source.
    pub name: String,
    /// The version the variant routes to.
    pub version: String,
    /// Relative share of the cohort.
    pub weight: u32,
}

/// An A/B experiment: the cohort is split between variants by a salted tenant hash.
///
/// Assignments are sticky: when the weights change (without a rebalance), every tenant keeps the
/// variant it had, recorded in `sticky`; only tenants new to the experiment follow the new weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Unique identifier.
    pub id: String,
    /// The service experimented on.
    pub service: String,
    /// Salt of the tenant hash.
    pub salt: String,
    /// The arms; tenants are spread over them by weight.
    pub variants: Vec<Variant>,
    /// The tenants in the experiment.
    #[serde(default)]
    pub cohort: Cohort,
    /// Variants kept by tenants across weight changes (tenant id → variant name). Shared
    /// between revisions: a change of the service copies a pointer, not one entry per tenant.
    #[serde(default, skip_serializing_if = "is_empty_map")]
    pub sticky: Arc<BTreeMap<String, String>>,
}

fn is_empty_map(map: &Arc<BTreeMap<String, String>>) -> bool {
    map.is_empty()
}

impl Experiment {
    /// Returns the variant the tenant is on, if it is in the experiment: its sticky variant, or
    /// the one its bucket falls into.
    pub fn variant_for(&self, tenant: &Tenant) -> Option<&Variant> {
        if !self.cohort.contains(tenant) {
            return None;
        }
        if let Some(name) = self.sticky.get(&tenant.id)
            && let Some(variant) = self.variants.iter().find(|v| &v.name == name)
        {
            return Some(variant);
        }
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return None;
        }
        let bucket = u64::from(hash::bucket("experiment", &self.salt, &tenant.id));
        // Scale the bucket onto the summed weights, then walk the cumulative weights.
        let point = bucket * total / u64::from(hash::BUCKETS);
        let mut cumulative = 0;
        self.variants.iter().find(|variant| {
            cumulative += u64::from(variant.weight);
            point < cumulative
        })
    }
}

/// An emergency override: tenants that would be on `from_version` go to `to_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Unique identifier (`rb-<revision>`).
    pub id: String,
    /// The service.
    pub service: String,
    /// The version tenants are moved off.
    pub from_version: String,
    /// The version they are moved to.
    pub to_version: String,
    /// Only these tenants; every tenant when empty.
    #[serde(default)]
    pub tenant_ids: BTreeSet<String>,
    /// The revision that installed it.
    pub created_revision: Revision,
}

impl Override {
    /// Whether the override moves this tenant when it is on `version`.
    pub fn applies(&self, tenant_id: &str, version: &str) -> bool {
        self.from_version == version
            && (self.tenant_ids.is_empty() || self.tenant_ids.contains(tenant_id))
    }
}

/// Why a tenant is on a version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An emergency override.
    Override {
        /// The override's id.
        id: String,
    },
    /// A tenant pin.
    Pin,
    /// An experiment variant.
    Experiment {
        /// The experiment's id.
        id: String,
        /// The variant's name.
        variant: String,
    },
    /// A gradual rollout.
    Rollout {
        /// The rollout's id.
        id: String,
    },
    /// The service's default version.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Override { id } => write!(f, "override:{id}"),
            Source::Pin => f.write_str("pin"),
            Source::Experiment { id, variant } => write!(f, "experiment:{id}:{variant}"),
            Source::Rollout { id } => write!(f, "rollout:{id}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The version a tenant resolves to for a service, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolution {
    /// The version.
    pub version: String,
    /// Why.
    pub source: Source,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, tier: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: String::new(),
            region: String::new(),
            tier: tier.into(),
            labels: BTreeMap::from([("team".to_owned(), "core".to_owned())]),
            active: true,
        }
    }

    #[test]
    fn strategy_names_round_trip() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.as_str().parse::<Strategy>(), Ok(strategy));
        }
        assert!("fastest".parse::<Strategy>().is_err());
    }

    #[test]
    fn sources_print_as_documented() {
        assert_eq!(Source::Pin.to_string(), "pin");
        assert_eq!(Source::Default.to_string(), "default");
        assert_eq!(
            Source::Override { id: "rb-7".into() }.to_string(),
            "override:rb-7"
        );
        assert_eq!(
            Source::Rollout { id: "r1".into() }.to_string(),
            "rollout:r1"
        );
        let source = Source::Experiment {
            id: "e1".into(),
            variant: "b".into(),
        };
        assert_eq!(source.to_string(), "experiment:e1:b");
    }

    #[test]
    fn cohort_matches_tier_labels_and_ids() {
        let acme = tenant("acme", "internal");
        assert!(Cohort::default().contains(&acme));
        let internal = Cohort {
            tiers: ["internal".to_owned()].into(),
            ..Cohort::default()
        };
        assert!(internal.contains(&acme));
        assert!(!internal.contains(&tenant("globex", "pro")));
        let labelled = Cohort {
            labels: [("team".to_owned(), "edge".to_owned())].into(),
            ..Cohort::default()
        };
        assert!(!labelled.contains(&acme));
        let listed = Cohort {
            tenant_ids: ["globex".to_owned()].into(),
            ..Cohort::default()
        };
        assert!(!listed.contains(&acme));
    }

    #[test]
    fn experiment_splits_by_weight() {
        let experiment = Experiment {
            id: "e1".into(),
            service: "api".into(),
            salt: "e1".into(),
            variants: vec![
                Variant {
                    name: "a".into(),
                    version: "v1".into(),
                    weight: 3,
                },
                Variant {
                    name: "b".into(),
                    version: "v2".into(),
                    weight: 1,
                },
            ],
            cohort: Cohort::default(),
            sticky: Default::default(),
        };
        let b = (0..20_000)
            .filter(|i| {
                let t = tenant(&format!("t{i}"), "");
                experiment.variant_for(&t).map(|v| v.name.as_str()) == Some("b")
            })
            .count();
        // Expected 5,000 of 20,000 (25%); allow 4 standard deviations (~245).
        assert!((4_750..=5_250).contains(&b), "{b}");
    }
}
