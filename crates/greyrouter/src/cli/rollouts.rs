//! `greyrouter rollout` and `greyrouter experiment`.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum RolloutCommand {
    /// Starts a rollout of a new version, step by step.
    Start {
        service: String,
        /// The new version.
        #[arg(long)]
        to: String,
        /// Shares in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5,25,50,100")]
        steps: Vec<f64>,
        /// Seconds each step runs before it is judged.
        #[arg(long, default_value_t = 300)]
        interval: u64,
        /// Rollout id (generated when absent).
        #[arg(long, default_value = "")]
        id: String,
        /// Requests a step needs before it is judged.
        #[arg(long, default_value_t = 0)]
        min_requests: u64,
        /// Highest error rate of the new version, in percent.
        #[arg(long, default_value_t = 0.0)]
        max_error_rate: f64,
        /// How far p99 may exceed the previous version's, in percent.
        #[arg(long, default_value_t = 0.0)]
        max_p99_increase: f64,
        /// Only tenants of these tiers (repeatable).
        #[arg(long = "tier")]
        tiers: Vec<String>,
        /// Only tenants with this label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        force: bool,
    },
    /// Shows a rollout with every decision and its figures.
    Show { service: String, id: String },
    /// Lists rollouts.
    List { service: Option<String> },
    /// Holds a rollout at its share.
    Pause { service: String, id: String },
    /// Lets a paused rollout go on.
    Resume { service: String, id: String },
    /// Moves everyone to the new version and makes it the default.
    Promote {
        service: String,
        id: String,
        #[arg(long)]
        force: bool,
    },
    /// Moves every tenant back to the previous version.
    Abort { service: String, id: String },
}

#[derive(Debug, Subcommand)]
pub(super) enum ExperimentCommand {
    /// Creates an experiment: --variant NAME=VERSION:WEIGHT (repeatable).
    Create {
        service: String,
        id: String,
        #[arg(long = "variant", value_parser = variant, required = true)]
        variants: Vec<pb::Variant>,
        /// Only tenants of these tiers (repeatable).
        #[arg(long = "tier")]
        tiers: Vec<String>,
    },
    /// Changes the weights; tenants keep their variant unless --rebalance.
    Update {
        service: String,
        id: String,
        #[arg(long = "variant", value_parser = variant, required = true)]
        variants: Vec<pb::Variant>,
        #[arg(long)]
        rebalance: bool,
    },
    /// Shows an experiment and how many tenants each variant has.
    Show { service: String, id: String },
    /// Ends an experiment: its tenants return to the rollout or default version.
    Stop { service: String, id: String },
}

fn variant(text: &str) -> Result<pb::Variant, String> {
    let parse = || {
        let (name, rest) = text.split_once('=')?;
        let (version, weight) = rest.split_once(':')?;
        Some(pb::Variant {
            name: name.to_owned(),
            version: version.to_owned(),
            weight: weight.parse().ok()?,
        })
    };
    parse().ok_or_else(|| format!("expected NAME=VERSION:WEIGHT, got '{text}'"))
}

pub(super) async fn rollout_command(
    command: RolloutCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let action = |service: String, id: String, force: bool| pb::RolloutActionRequest {
        service,
        id,
        reason: String::new(),
        force,
    };
    let response = match command {
        RolloutCommand::Start {
            service,
            to,
            steps,
            interval,
            id,
            min_requests,
            max_error_rate,
            max_p99_increase,
            tiers,
            labels,
            force,
        } => {
            admin
                .start_rollout(pb::StartRolloutRequest {
                    service,
                    id,
                    to_version: to,
                    steps,
                    interval_seconds: interval,
                    analysis: Some(pb::AnalysisPolicy {
                        max_error_rate_percent: max_error_rate,
                        max_p99_increase_percent: max_p99_increase,
                        min_requests,
                        ..Default::default()
                    }),
                    cohort: Some(pb::Cohort {
                        tiers,
                        labels: labels.into_iter().collect(),
                        tenant_ids: Vec::new(),
                    }),
                    force,
                })
                .await
        }
        RolloutCommand::Show { service, id } => {
            admin
                .get_rollout(pb::GetRolloutRequest { service, id })
                .await
        }
        RolloutCommand::List { service } => {
            let listed = admin
                .list_rollouts(pb::ListRolloutsRequest {
                    service: service.unwrap_or_default(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            let rows = listed
                .rollouts
                .iter()
                .map(|r| {
                    vec![
                        r.service.clone(),
                        r.id.clone(),
                        format!("{} -> {}", r.from_version, r.to_version),
                        r.phase.clone(),
                        format!("{}%", r.percent),
                    ]
                })
                .collect();
            let values = listed.rollouts.iter().map(rollout_json).collect();
            out.table(
                &["SERVICE", "ID", "VERSIONS", "PHASE", "SHARE"],
                rows,
                Value::Array(values),
            );
            return Ok(());
        }
        RolloutCommand::Pause { service, id } => {
            admin.pause_rollout(action(service, id, false)).await
        }
        RolloutCommand::Resume { service, id } => {
            admin.resume_rollout(action(service, id, false)).await
        }
        RolloutCommand::Promote { service, id, force } => {
            admin.promote_rollout(action(service, id, force)).await
        }
        RolloutCommand::Abort { service, id } => {
            admin.abort_rollout(action(service, id, false)).await
        }
    }
    .map_err(call_error)?
    .into_inner();
    let rollout = response.rollout.unwrap_or_default();
    if out.0 == Output::Json {
        out.json(rollout_json(&rollout));
        return Ok(());
    }
    println!(
        "rollout {} of {}: {} -> {}, {} at {}% (step {} of {}), revision {}",
        rollout.id,
        rollout.service,
        rollout.from_version,
        rollout.to_version,
        rollout.phase,
        rollout.percent,
        rollout.step + 1,
        rollout.steps.len(),
        response.revision
    );
    let rows = rollout
        .decisions
        .iter()
        .map(|d| {
            let figures = |m: &Option<pb::Measurement>| {
                m.as_ref().map_or_else(String::new, |m| {
                    format!(
                        "{} req, {:.2}% err, p99 {} ms",
                        m.requests,
                        m.error_rate * 100.0,
                        m.p99_ms
                    )
                })
            };
            vec![
                format_time(d.at_ms),
                d.event.clone(),
                format!("{}%", d.percent),
                figures(&d.canary),
                figures(&d.baseline),
                d.detail.clone(),
            ]
        })
        .collect();
    out.table(
        &[
            "TIME (UTC)",
            "DECISION",
            "SHARE",
            "CANARY",
            "BASELINE",
            "DETAIL",
        ],
        rows,
        Value::Null,
    );
    Ok(())
}

fn rollout_json(r: &pb::Rollout) -> Value {
    let measurement = |m: &Option<pb::Measurement>| {
        m.as_ref().map(|m| {
            json!({"requests": m.requests, "errors": m.errors, "error_rate": m.error_rate,
                   "p99_ms": m.p99_ms})
        })
    };
    json!({"id": r.id, "service": r.service, "from_version": r.from_version,
           "to_version": r.to_version, "phase": r.phase, "percent": r.percent,
           "steps": r.steps, "step": r.step, "failed_checks": r.failed_checks,
           "decisions": r.decisions.iter().map(|d| json!({
               "at_ms": d.at_ms, "event": d.event, "percent": d.percent, "detail": d.detail,
               "canary": measurement(&d.canary), "baseline": measurement(&d.baseline)})).collect::<Vec<_>>()})
}

pub(super) async fn experiment_command(
    command: ExperimentCommand,
    admin: &mut Admin,
    out: Printer,
) -> anyhow::Result<()> {
    let response = match command {
        ExperimentCommand::Create {
            service,
            id,
            variants,
            tiers,
        } => {
            admin
                .create_experiment(pb::CreateExperimentRequest {
                    id,
                    service,
                    variants,
                    cohort: Some(pb::Cohort {
                        tiers,
                        ..Default::default()
                    }),
                })
                .await
        }
        ExperimentCommand::Update {
            service,
            id,
            variants,
            rebalance,
        } => {
            admin
                .update_experiment(pb::UpdateExperimentRequest {
                    service,
                    id,
                    variants,
                    rebalance,
                })
                .await
        }
        ExperimentCommand::Show { service, id } => {
            admin
                .get_experiment(pb::GetExperimentRequest { service, id })
                .await
        }
        ExperimentCommand::Stop { service, id } => {
            let stopped = admin
                .stop_experiment(pb::StopExperimentRequest {
                    service,
                    id: id.clone(),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            out.revision(&format!("experiment {id} stopped"), stopped.revision);
            return Ok(());
        }
    }
    .map_err(call_error)?
    .into_inner();
    let experiment = response.experiment.unwrap_or_default();
    let rows = experiment
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.version.clone(),
                v.weight.to_string(),
                experiment
                    .tenants_per_variant
                    .get(&v.name)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    let json = json!({"id": experiment.id, "service": experiment.service,
        "sticky_tenants": experiment.sticky_tenants,
        "variants": experiment.variants.iter().map(|v| json!({"name": v.name, "version": v.version,
            "weight": v.weight, "tenants": experiment.tenants_per_variant.get(&v.name).copied().unwrap_or(0)})).collect::<Vec<_>>(),
        "revision": response.revision});
    out.table(&["VARIANT", "VERSION", "WEIGHT", "TENANTS"], rows, json);
    Ok(())
}
