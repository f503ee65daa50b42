//! Acknowledged changes per second: `--concurrency` writers, each upserting its own tenant
//! (a new name each time) one change after another through `Admin/UpsertTenant`, for
//! `--duration`. Every change counted was acknowledged by the server, so with the durable store
//! every one of them was on disk first. With `--etcd URL` the same writers put their own key
//! through etcd's v3 JSON gateway instead (`/v3/kv/put`), for a side-by-side figure.

use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use greyrouter_proto::v1::admin_client::AdminClient;
use serde::Serialize;

use crate::error::Error;

/// What `writes` measured.
#[derive(Debug, Clone, Serialize)]
pub struct WritesReport {
    /// Concurrent writers.
    pub writers: usize,
    /// Acknowledged changes.
    pub changes: u64,
    /// Failed calls.
    pub errors: u64,
    /// Acknowledged changes per second.
    pub changes_per_s: f64,
    /// Latency of one change, in microseconds.
    pub p50_us: u64,
    /// 99th percentile, in microseconds.
    pub p99_us: u64,
}

/// Where the writers write.
#[derive(Debug, Clone)]
enum Sink {
    Greyrouter(AdminClient<tonic::transport::Channel>),
    Etcd(reqwest::Client, String),
}

impl Sink {
    async fn write(&mut self, writer: usize, k: u64) -> bool {
        match self {
            Sink::Greyrouter(admin) => {
                let request = pb::UpsertTenantRequest {
                    tenant: Some(pb::Tenant {
                        id: format!("writer-{writer}"),
                        name: format!("change {k}"),
                        region: "eu".into(),
                        tier: "pro".into(),
                        active: true,
                        ..Default::default()
                    }),
                };
                admin.upsert_tenant(request).await.is_ok()
            }
            Sink::Etcd(http, base) => {
                use base64::Engine;
                let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
                let body = serde_json::json!({
                    "key": encode(&format!("/writes/writer-{writer}")),
                    "value": encode(&format!("change {k}")),
                });
                match http
                    .post(format!("{base}/v3/kv/put"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                }
            }
        }
    }
}

/// Runs `writers` writers against etcd's JSON gateway at `url` for `duration`.
pub async fn measure_etcd(
    url: &str,
    writers: usize,
    duration: Duration,
) -> Result<WritesReport, Error> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| Error::Discovery(err.to_string()))?;
    run(
        Sink::Etcd(http, url.trim_end_matches('/').to_owned()),
        writers,
        duration,
    )
    .await
}

/// Runs `writers` writers against the greyrouter at `target` for `duration`.
pub async fn measure(
    target: &str,
    writers: usize,
    duration: Duration,
) -> Result<WritesReport, Error> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(target.to_owned()).map_err(|source| {
            Error::InvalidTarget {
                target: target.to_owned(),
                source,
            }
        })?;
    let channel = endpoint.connect().await.map_err(|source| Error::Connect {
        target: target.to_owned(),
        source,
    })?;
    run(
        Sink::Greyrouter(AdminClient::new(channel)),
        writers,
        duration,
    )
    .await
}

async fn run(sink: Sink, writers: usize, duration: Duration) -> Result<WritesReport, Error> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers.max(1))
        .map(|w| {
            let mut sink = sink.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut k = 0u64;
                while Instant::now() < deadline {
                    k += 1;
                    let sent = Instant::now();
                    if sink.write(w, k).await {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mine, failed) = task.await?;
        latencies.extend(mine);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(WritesReport {
        writers: writers.max(1),
        changes: latencies.len() as u64,
        errors,
        changes_per_s: latencies.len() as f64 / elapsed,
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}
