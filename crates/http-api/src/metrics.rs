//! `GET /metrics`: the Prometheus text format, rendered by `metrics-exporter-prometheus` from
//! what the node recorded (see `control::telemetry`), after taking the node's readings.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use control::telemetry::{self, names};

/// How often recorded histogram samples are folded into their buckets, so that memory stays
/// bounded between scrapes (and without any).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Series of readings not taken for this long are dropped (a deleted rollout, a service
/// version with no instance left).
const STALE_READINGS_AFTER: Duration = Duration::from_secs(600);

/// The renderer of an installed recorder.
#[derive(Clone, Debug)]
pub struct Exporter {
    handle: PrometheusHandle,
}

impl Exporter {
    /// Installs the process-wide recorder (once per process) and starts folding samples on the
    /// current tokio runtime.
    pub fn install() -> Result<Exporter, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::LATENCY.to_owned()),
                &telemetry::LATENCY_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(names::REPLICATION_DELAY.to_owned()),
                &telemetry::DELAY_BUCKETS,
            )?
            .idle_timeout(MetricKindMask::GAUGE, Some(STALE_READINGS_AFTER))
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)?;
        telemetry::describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Exporter { handle })
    }

    /// Renders every series in the text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
