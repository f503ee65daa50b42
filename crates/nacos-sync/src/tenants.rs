//! Tenants from the tenant-management service: a paged HTTP API polled every few minutes.
//!
//! `GET {url}?{page_param}=1&{size_param}=500`, then page 2, 3, ... until a page holds fewer
//! than `page_size` tenants. A page is a JSON array, or an object whose `items_field` holds the
//! array. Each tenant's fields are read under the names of `[discovery.tenants.fields]`
//! (`labels` an object of strings, `active` a boolean, default true). With `token_env`, the
//! request carries `Authorization: Bearer <token>`.
//!
//! Tenants the API lists are created or updated; tenants this sync created that the API no
//! longer lists are marked inactive (never deleted: their pins stay, and they come back as they
//! were when listed again). Tenants created by hand are never touched: the sync marks its own
//! with the label [`SOURCE_LABEL`]. An answer that drops more than the protection threshold of
//! the tenants at once (an empty answer, a wrong page size) holds the deactivations and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use routing_core::{Mutation, RoutingState, Tenant, validate};
use serde::Deserialize;
use serde_json::Value;

use crate::registry::RegistryError;

/// The label marking a tenant as kept by the tenant sync.
pub const SOURCE_LABEL: &str = "greyrouter.source";

/// Where the tenants come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// The list endpoint, e.g. `http://tenant-service/api/tenants`; empty: no tenant sync.
    pub url: String,
    /// How often it is read, in milliseconds.
    pub interval_ms: u64,
    /// Tenants per page.
    pub page_size: u32,
    /// The query parameter of the page number (from 1).
    pub page_param: String,
    /// The query parameter of the page size.
    pub size_param: String,
    /// The field of a page object holding the tenants; empty: the page is an array.
    pub items_field: String,
    /// The names of the tenant fields in the API.
    pub fields: TenantFields,
    /// The environment variable holding a bearer token.
    pub token_env: String,
    /// Most tenants read in one sync (memory is bounded by this, not by the API).
    pub max_tenants: usize,
    /// How long one request may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for TenantSettings {
    fn default() -> Self {
        TenantSettings {
            url: String::new(),
            interval_ms: 300_000,
            page_size: 500,
            page_param: "page".to_owned(),
            size_param: "size".to_owned(),
            items_field: "items".to_owned(),
            fields: TenantFields::default(),
            token_env: String::new(),
            max_tenants: 1_000_000,
            timeout_ms: 10_000,
        }
    }
}

/// The API's names of the tenant fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantFields {
    /// The id.
    pub id: String,
    /// The display name.
    pub name: String,
    /// The region.
    pub region: String,
    /// The tier.
    pub tier: String,
    /// The labels (an object of strings).
    pub labels: String,
    /// Whether the tenant is active.
    pub active: String,
}

impl Default for TenantFields {
    fn default() -> Self {
        TenantFields {
            id: "id".to_owned(),
            name: "name".to_owned(),
            region: "region".to_owned(),
            tier: "tier".to_owned(),
            labels: "labels".to_owned(),
            active: "active".to_owned(),
        }
    }
}

/// Reads every page of tenants.
#[derive(Debug)]
pub struct TenantApi {
    settings: TenantSettings,
    token: Option<String>,
    client: reqwest::Client,
}

impl TenantApi {
    /// An API client; `token` is the bearer token, if any.
    pub fn new(settings: TenantSettings, token: Option<String>) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(TenantApi {
            settings,
            token,
            client,
        })
    }

    /// Where it reads from.
    pub fn describe(&self) -> String {
        format!("tenants {}", self.settings.url)
    }

    /// Reads every page; tenants whose fields cannot be read are returned as problems.
    pub async fn fetch(&self) -> Result<(Vec<Tenant>, Vec<String>), RegistryError> {
        let size = self.settings.page_size.max(1);
        let mut tenants = Vec::new();
        let mut problems = Vec::new();
        for page in 1.. {
            let mut request = self.client.get(&self.settings.url).query(&[
                (self.settings.page_param.as_str(), page.to_string()),
                (self.settings.size_param.as_str(), size.to_string()),
            ]);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            let status = response.status();
            if status.as_u16() == 401 || status.as_u16() == 403 {
                return Err(RegistryError::Unauthorized(status.to_string()));
            }
            if !status.is_success() {
                return Err(RegistryError::Unavailable(format!("page {page}: {status}")));
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| RegistryError::Malformed(format!("page {page}: {e}")))?;
            let items = if self.settings.items_field.is_empty() {
                body.as_array()
            } else {
                body.get(&self.settings.items_field)
                    .and_then(Value::as_array)
            }
            .ok_or_else(|| {
                RegistryError::Malformed(format!(
                    "page {page}: no array{}",
                    if self.settings.items_field.is_empty() {
                        String::new()
                    } else {
                        format!(" in field '{}'", self.settings.items_field)
                    }
                ))
            })?;
            for item in items {
                match self.tenant(item) {
                    Ok(tenant) => tenants.push(tenant),
                    Err(why) => problems.push(why),
                }
            }
            if tenants.len() > self.settings.max_tenants {
                return Err(RegistryError::Malformed(format!(
                    "more than max_tenants ({}) tenants",
                    self.settings.max_tenants
                )));
            }
            if items.len() < size as usize {
                break;
            }
        }
        Ok((tenants, problems))
    }

    fn tenant(&self, item: &Value) -> Result<Tenant, String> {
        let fields = &self.settings.fields;
        let text = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let id = text(&fields.id);
        let labels: BTreeMap<String, String> = item
            .get(&fields.labels)
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let tenant = Tenant {
            name: text(&fields.name),
            region: text(&fields.region),
            tier: text(&fields.tier),
            labels,
            active: item
                .get(&fields.active)
                .and_then(Value::as_bool)
                .unwrap_or(true),
            id,
        };
        validate::name("tenant.id", &tenant.id)
            .and_then(|()| validate::text("tenant.name", &tenant.name))
            .and_then(|()| validate::optional_name("tenant.region", &tenant.region))
            .and_then(|()| validate::optional_name("tenant.tier", &tenant.tier))
            .and_then(|()| validate::entries("tenant.labels", &tenant.labels))
            .map_err(|e| format!("tenant {:?}: {e}", tenant.id))?;
        Ok(tenant)
    }
}

/// What one tenant sync should do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPlan {
    /// Creations, updates and deactivations.
    pub mutations: Vec<Mutation>,
    /// Deactivations held by the protection threshold.
    pub held: Vec<String>,
}

/// The changes that make `state` hold `listed` as source `source` (label [`SOURCE_LABEL`]).
pub fn reconcile_tenants(
    state: &RoutingState,
    listed: &[Tenant],
    source: &str,
    threshold: f64,
) -> TenantPlan {
    let mut plan = TenantPlan::default();
    let mut seen = BTreeSet::new();
    for tenant in listed {
        if !seen.insert(tenant.id.as_str()) {
            continue;
        }
        let mut wanted = tenant.clone();
        wanted
            .labels
            .insert(SOURCE_LABEL.to_owned(), source.to_owned());
        match state.tenant(&tenant.id) {
            Some(entry) if entry.tenant == wanted => {}
            // Created by hand: left as it is.
            Some(entry)
                if entry.tenant.labels.get(SOURCE_LABEL).map(String::as_str) != Some(source) => {}
            _ => plan
                .mutations
                .push(Mutation::UpsertTenant { tenant: wanted }),
        }
    }
    let ours: Vec<&Tenant> = state
        .tenants_after(None)
        .map(|entry| &entry.tenant)
        .filter(|t| t.labels.get(SOURCE_LABEL).map(String::as_str) == Some(source))
        .collect();
    let gone: Vec<&Tenant> = ours
        .iter()
        .copied()
        .filter(|t| t.active && !seen.contains(t.id.as_str()))
        .collect();
    let active = ours.iter().filter(|t| t.active).count().max(1);
    let share = gone.len() as f64 / active as f64;
    if gone.len() > 1 && share > threshold {
        plan.held.push(format!(
            "the tenant service no longer lists {} of {active} active tenant(s) ({:.0}%, over the protection threshold of {:.0}%); deactivations held",
            gone.len(),
            share * 100.0,
            threshold * 100.0
        ));
        return plan;
    }
    for tenant in gone {
        let mut inactive = tenant.clone();
        inactive.active = false;
        plan.mutations
            .push(Mutation::UpsertTenant { tenant: inactive });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, name: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: name.into(),
            region: "eu".into(),
            tier: "pro".into(),
            labels: BTreeMap::new(),
            active: true,
        }
    }

    fn applied(state: &RoutingState, plan: &TenantPlan) -> RoutingState {
        plan.mutations.iter().fold(state.clone(), |state, m| {
            state
                .apply(m)
                .map(|(next, _)| next)
                .unwrap_or_else(|e| panic!("{m:?}: {e}"))
        })
    }

    #[test]
    fn listed_tenants_are_created_updated_and_missing_ones_deactivated() {
        let listed: Vec<Tenant> = (0..10).map(|i| tenant(&format!("t{i}"), "T")).collect();
        let state = applied(
            &RoutingState::default(),
            &reconcile_tenants(&RoutingState::default(), &listed, "tenants", 0.5),
        );
        assert_eq!(state.tenants_after(None).count(), 10);
        // Nothing changed: nothing to do.
        assert_eq!(
            reconcile_tenants(&state, &listed, "tenants", 0.5),
            TenantPlan::default()
        );
        // t0 renamed, t9 gone.
        let mut next = listed[..9].to_vec();
        next[0].name = "Renamed".into();
        let plan = reconcile_tenants(&state, &next, "tenants", 0.5);
        assert_eq!(plan.mutations.len(), 2, "{plan:?}");
        let state = applied(&state, &plan);
        assert_eq!(
            state.tenant("t0").map(|t| t.tenant.name.as_str()),
            Some("Renamed")
        );
        assert_eq!(state.tenant("t9").map(|t| t.tenant.active), Some(false));
    }

    #[test]
    fn an_empty_answer_holds_the_deactivations_and_hand_made_tenants_stay() {
        let by_hand = Mutation::UpsertTenant {
            tenant: tenant("manual", "M"),
        };
        let (state, _) = RoutingState::default().apply(&by_hand).expect("tenant");
        let listed: Vec<Tenant> = (0..4).map(|i| tenant(&format!("t{i}"), "T")).collect();
        let state = applied(&state, &reconcile_tenants(&state, &listed, "tenants", 0.5));
        let plan = reconcile_tenants(&state, &[], "tenants", 0.5);
        assert!(
            plan.mutations.is_empty() && plan.held.len() == 1,
            "{plan:?}"
        );
        // The API lists the hand-made tenant with other fields: left as it is.
        let mut renamed = tenant("manual", "Other");
        renamed.region = "us".into();
        let plan = reconcile_tenants(&state, &[&listed[..], &[renamed]].concat(), "tenants", 0.5);
        assert_eq!(plan, TenantPlan::default());
    }
}
