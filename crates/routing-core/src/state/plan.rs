//! Declarative state: the plan that takes the routing state to a desired one, record by record.
//!
//! A desired state ([`StateDump`], the seed file format) manages some [`Section`]s (those its
//! file has); the others are left as they are. [`desired_state`] merges it into the current
//! state (records of a tenant or service that goes, go with it), and [`plan`] lists what
//! differs between two states: creations, updates (with the fields that change) and deletions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{Pin, StateDump};

/// The kinds of records a desired state can manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Tenants.
    Tenants,
    /// Services (with their versions and default version).
    Services,
    /// Instances.
    Instances,
    /// Tenants' pinned versions.
    Pins,
    /// Emergency overrides.
    Overrides,
    /// Rollouts.
    Rollouts,
    /// Experiments.
    Experiments,
}

impl Section {
    /// Every section, in the order records depend on each other.
    pub const ALL: [Section; 7] = [
        Section::Services,
        Section::Instances,
        Section::Tenants,
        Section::Pins,
        Section::Overrides,
        Section::Rollouts,
        Section::Experiments,
    ];

    /// The section's name, as in the seed file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Section::Tenants => "tenants",
            Section::Services => "services",
            Section::Instances => "instances",
            Section::Pins => "pins",
            Section::Overrides => "overrides",
            Section::Rollouts => "rollouts",
            Section::Experiments => "experiments",
        }
    }

    /// The section named `name`.
    pub fn parse(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The kind of one record of the section.
    pub const fn record(self) -> &'static str {
        match self {
            Section::Tenants => "tenant",
            Section::Services => "service",
            Section::Instances => "instance",
            Section::Pins => "pin",
            Section::Overrides => "override",
            Section::Rollouts => "rollout",
            Section::Experiments => "experiment",
        }
    }
}

/// What a plan does to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// The record is new.
    Create,
    /// The record changes.
    Update,
    /// The record goes.
    Delete,
}

impl PlanAction {
    /// The action's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PlanAction::Create => "create",
            PlanAction::Update => "update",
            PlanAction::Delete => "delete",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Create, update or delete.
    pub action: PlanAction,
    /// The record's section.
    pub section: Section,
    /// The record: `tenant-id`, `service`, `service/instance-id`, `tenant-id/service`, or
    /// `service/id` for overrides, rollouts and experiments.
    pub key: String,
    /// What changes: the fields and their values before and after.
    pub detail: String,
}

/// Returns `current` with the `sections` of `desired` in place of its own; records of
/// tenants and services that are no longer there go with them.
pub fn desired_state(current: &StateDump, desired: &StateDump, sections: &[Section]) -> StateDump {
    fn pick<T: Clone>(takes: bool, own: &[T], wanted: &[T]) -> Vec<T> {
        if takes { wanted.to_vec() } else { own.to_vec() }
    }
    let takes = |section| sections.contains(&section);
    let mut merged = StateDump {
        revision: current.revision,
        tenants: pick(takes(Section::Tenants), &current.tenants, &desired.tenants),
        services: pick(
            takes(Section::Services),
            &current.services,
            &desired.services,
        ),
        instances: pick(
            takes(Section::Instances),
            &current.instances,
            &desired.instances,
        ),
        pins: pick(takes(Section::Pins), &current.pins, &desired.pins),
        overrides: pick(
            takes(Section::Overrides),
            &current.overrides,
            &desired.overrides,
        ),
        rollouts: pick(
            takes(Section::Rollouts),
            &current.rollouts,
            &desired.rollouts,
        ),
        experiments: pick(
            takes(Section::Experiments),
            &current.experiments,
            &desired.experiments,
        ),
    };
    let tenants: std::collections::BTreeSet<String> =
        merged.tenants.iter().map(|t| t.id.clone()).collect();
    let services: std::collections::BTreeSet<String> =
        merged.services.iter().map(|s| s.name.clone()).collect();
    // Kept records of a tenant or service that goes, go with it. Records the desired state
    // names are left as they are: one naming a tenant or service that does not exist is an
    // error when the state is built, not something to drop quietly.
    if !takes(Section::Pins) {
        merged
            .pins
            .retain(|p| tenants.contains(&p.tenant_id) && services.contains(&p.service));
    }
    if !takes(Section::Instances) {
        merged.instances.retain(|i| services.contains(&i.service));
    }
    if !takes(Section::Overrides) {
        merged.overrides.retain(|o| services.contains(&o.service));
    }
    if !takes(Section::Rollouts) {
        merged.rollouts.retain(|r| services.contains(&r.service));
    }
    if !takes(Section::Experiments) {
        merged.experiments.retain(|e| services.contains(&e.service));
    }
    merged
}

/// Lists what differs between `from` and `to`, section by section, in key order.
pub fn plan(from: &StateDump, to: &StateDump) -> Vec<PlanStep> {
    let mut steps = Vec::new();
    for section in Section::ALL {
        let before = records(from, section);
        let after = records(to, section);
        for (key, old) in &before {
            match after.get(key) {
                None => steps.push(PlanStep {
                    action: PlanAction::Delete,
                    section,
                    key: key.clone(),
                    detail: String::new(),
                }),
                Some(new) if new != old => steps.push(PlanStep {
                    action: PlanAction::Update,
                    section,
                    key: key.clone(),
                    detail: changes(old, new),
                }),
                Some(_) => {}
            }
        }
        for (key, new) in &after {
            if !before.contains_key(key) {
                steps.push(PlanStep {
                    action: PlanAction::Create,
                    section,
                    key: key.clone(),
                    detail: summary(new),
                });
            }
        }
    }
    steps
}

fn value<T: Serialize>(record: &T) -> serde_json::Value {
    // Plain records with string keys always serialize.
    serde_json::to_value(record).unwrap_or(serde_json::Value::Null)
}

/// The records of one section, by key, as JSON values.
fn records(dump: &StateDump, section: Section) -> BTreeMap<String, serde_json::Value> {
    let keyed = |key: String, record: serde_json::Value| (key, record);
    match section {
        Section::Tenants => dump
            .tenants
            .iter()
            .map(|t| keyed(t.id.clone(), value(t)))
            .collect(),
        Section::Services => dump
            .services
            .iter()
            .map(|s| keyed(s.name.clone(), value(s)))
            .collect(),
        Section::Instances => dump
            .instances
            .iter()
            .map(|i| keyed(format!("{}/{}", i.service, i.id), value(i)))
            .collect(),
        Section::Pins => dump
            .pins
            .iter()
            .map(
                |Pin {
                     tenant_id,
                     service,
                     version,
                 }| {
                    keyed(
                        format!("{tenant_id}/{service}"),
                        serde_json::json!({ "version": version }),
                    )
                },
            )
            .collect(),
        Section::Overrides => dump
            .overrides
            .iter()
            .map(|o| keyed(format!("{}/{}", o.service, o.id), value(o)))
            .collect(),
        Section::Rollouts => dump
            .rollouts
            .iter()
            .map(|r| keyed(format!("{}/{}", r.service, r.id), value(r)))
            .collect(),
        Section::Experiments => dump
            .experiments
            .iter()
            .map(|e| keyed(format!("{}/{}", e.service, e.id), value(e)))
            .collect(),
    }
}

/// `field: old → new` for each top-level field that differs.
fn changes(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| old.get(*f) != new.get(*f))
        .map(|f| {
            let show = |v: Option<&serde_json::Value>| {
                v.map_or_else(|| "(none)".to_owned(), |v| shorten(&v.to_string()))
            };
            format!("{f}: {} → {}", show(old.get(f)), show(new.get(f)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short description of a new record: its version, when it has one.
fn summary(record: &serde_json::Value) -> String {
    ["version", "default_version", "to_version", "address"]
        .iter()
        .find_map(|field| {
            record
                .get(*field)
                .and_then(|v| v.as_str())
                .map(|v| format!("{field}: {v}"))
        })
        .unwrap_or_default()
}

fn shorten(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.chars().count() <= LIMIT {
        return text.to_owned();
    }
    let cut: String = text.chars().take(LIMIT).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tenant;

    fn tenant(id: &str, region: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: id.into(),
            region: region.into(),
            tier: "pro".into(),
            labels: BTreeMap::new(),
            active: true,
        }
    }

    #[test]
    fn equal_states_make_an_empty_plan() {
        let dump = StateDump {
            tenants: vec![tenant("a", "eu"), tenant("b", "us")],
            ..StateDump::default()
        };
        assert!(plan(&dump, &dump).is_empty());
        let merged = desired_state(&dump, &dump, &Section::ALL);
        assert!(plan(&dump, &merged).is_empty());
    }

    #[test]
    fn creations_updates_and_deletions_name_their_records() {
        let from = StateDump {
            tenants: vec![tenant("a", "eu"), tenant("b", "us")],
            ..StateDump::default()
        };
        let to = StateDump {
            tenants: vec![tenant("a", "us"), tenant("c", "eu")],
            ..StateDump::default()
        };
        let steps: Vec<(PlanAction, String, String)> = plan(&from, &to)
            .into_iter()
            .map(|s| (s.action, s.key, s.detail))
            .collect();
        assert_eq!(
            steps,
            [
                (
                    PlanAction::Update,
                    "a".to_owned(),
                    "region: \"eu\" → \"us\"".to_owned()
                ),
                (PlanAction::Delete, "b".to_owned(), String::new()),
                (PlanAction::Create, "c".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn sections_not_managed_are_kept_and_records_of_a_deleted_tenant_go_with_it() {
        let service = crate::Service {
            name: "s".into(),
            default_version: "v1".into(),
            strategy: crate::Strategy::RoundRobin,
            versions: ["v1".to_owned()].into(),
        };
        let current = StateDump {
            tenants: vec![tenant("a", "eu"), tenant("b", "eu")],
            services: vec![service],
            pins: vec![Pin {
                tenant_id: "b".into(),
                service: "s".into(),
                version: "v1".into(),
            }],
            ..StateDump::default()
        };
        let desired = StateDump {
            tenants: vec![tenant("a", "eu")],
            ..StateDump::default()
        };
        // The file manages tenants only: the pin of a kept tenant would stay, b's goes.
        let merged = desired_state(&current, &desired, &[Section::Tenants]);
        assert!(merged.pins.is_empty());
        let keys: Vec<String> = plan(&current, &merged)
            .into_iter()
            .map(|s| format!("{} {} {}", s.action.as_str(), s.section.record(), s.key))
            .collect();
        assert_eq!(keys, ["delete tenant b", "delete pin b/s"]);
        // Managing nothing changes nothing.
        assert_eq!(desired_state(&current, &desired, &[]), current);
        // A desired pin of a tenant that is not there is kept, for the state to refuse.
        let orphan = StateDump {
            pins: vec![Pin {
                tenant_id: "nobody".into(),
                service: "s".into(),
                version: "v1".into(),
            }],
            ..StateDump::default()
        };
        let merged = desired_state(&current, &orphan, &[Section::Pins]);
        assert_eq!(merged.pins, orphan.pins);
        assert!(crate::RoutingState::from_dump(&merged).is_err());
    }
}
