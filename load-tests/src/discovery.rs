//! How long a change in a service registry (Nacos or etcd) takes to reach a router's routing
//! state through `[discovery]`: the instance's weight is changed in the registry, then the
//! router's `Admin/ListInstances` is read every 2 ms until it shows the new weight.
//!
//! The router must already sync the registry into `--service` (see `load-tests/discovery.sh`).
//! Changes are made one after another; each starts once the previous one arrived. The figures are
//! dominated by the sync interval (`[discovery] interval_ms`): a change waits for the next read.

use std::time::{Duration, Instant};

use base64::Engine;
use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use serde::Serialize;

use crate::error::Error;

/// Which registry the changes are made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// Nacos's v1 Open API (`POST /v1/ns/instance`).
    Nacos,
    /// etcd's v3 JSON gateway (`/v3/kv/put` under `/services/<service>/`).
    Etcd,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The router.
    pub target: String,
    /// The registry.
    pub kind: RegistryKind,
    /// Its URL (`http://127.0.0.1:8848/nacos`, `http://127.0.0.1:2379`).
    pub registry: String,
    /// The greyrouter service the router syncs from it.
    pub service: String,
    /// Number of changes.
    pub changes: usize,
    /// Longest wait for one change.
    pub timeout: Duration,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryReport {
    /// Registry kind.
    pub registry: String,
    /// Changes made.
    pub changes: usize,
    /// Changes that did not arrive within the timeout.
    pub missing: usize,
    /// Milliseconds from the registry's answer to the router showing the change.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn err(what: impl std::fmt::Display) -> Error {
    Error::Discovery(what.to_string())
}

/// Makes the changes and measures each one's arrival.
pub async fn measure(config: &DiscoveryConfig) -> Result<DiscoveryReport, Error> {
    let mut admin = AdminClient::connect(config.target.clone())
        .await
        .map_err(|e| err(format!("{}: {e}", config.target)))?;
    admin
        .upsert_service(pb::UpsertServiceRequest {
            service: Some(pb::Service {
                name: config.service.clone(),
                default_version: "v1".into(),
                strategy: pb::Strategy::RoundRobin.into(),
                versions: vec!["v1".into()],
            }),
            force: true,
        })
        .await
        .map_err(|e| err(format!("upsert service: {e}")))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(err)?;
    let (id, mut latencies, mut missing) = (instance_id(config.kind), Vec::new(), 0);
    for i in 0..config.changes {
        // 2..=10 in the registry's terms; the router's weight is what the adapter maps it to.
        let step = 2 + (i % 9) as u32;
        let expected = write(&http, config, step).await?;
        let written = Instant::now();
        let deadline = written + config.timeout;
        loop {
            let instances = admin
                .list_instances(pb::ListInstancesRequest {
                    service: config.service.clone(),
                    version: String::new(),
                })
                .await
                .map_err(|e| err(format!("list instances: {e}")))?
                .into_inner()
                .instances;
            if instances
                .iter()
                .any(|x| x.id == id && x.weight == Some(expected))
            {
                latencies.push(written.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                missing += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(DiscoveryReport {
        registry: format!("{:?}", config.kind).to_lowercase(),
        changes: config.changes,
        missing,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

fn instance_id(kind: RegistryKind) -> String {
    match kind {
        RegistryKind::Nacos => "10.200.0.1:8080@DEFAULT".to_owned(),
        RegistryKind::Etcd => "latency-1".to_owned(),
    }
}

/// Writes the instance with weight `step`; returns the weight the router will show.
async fn write(http: &reqwest::Client, config: &DiscoveryConfig, step: u32) -> Result<u32, Error> {
    let base = config.registry.trim_end_matches('/');
    match config.kind {
        RegistryKind::Nacos => {
            let response = http
                .post(format!("{base}/v1/ns/instance"))
                .query(&[
                    ("serviceName", config.service.as_str()),
                    ("ip", "10.200.0.1"),
                    ("port", "8080"),
                    ("ephemeral", "false"),
                    ("weight", &step.to_string()),
                    ("metadata", r#"{"version":"v1"}"#),
                ])
                .send()
                .await
                .map_err(|e| err(format!("nacos: {e}")))?;
            if !response.status().is_success() {
                return Err(err(format!("nacos: {}", response.status())));
            }
            // Nacos's float weight times the default weight_scale of 100.
            Ok(step * 100)
        }
        RegistryKind::Etcd => {
            let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
            let key = format!("/services/{}/{}", config.service, instance_id(config.kind));
            let value =
                format!(r#"{{"address":"10.200.0.2:8080","version":"v1","weight":{step}}}"#);
            let response = http
                .post(format!("{base}/v3/kv/put"))
                .json(&serde_json::json!({"key": encode(&key), "value": encode(&value)}))
                .send()
                .await
                .map_err(|e| err(format!("etcd: {e}")))?;
            if !response.status().is_success() {
                return Err(err(format!("etcd: {}", response.status())));
            }
            Ok(step)
        }
    }
}
