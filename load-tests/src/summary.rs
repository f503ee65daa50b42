//! The result of a run: counts, throughput, latency percentiles, and the checks it must pass;
//! printed as text, or as one JSON object.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::distribution::Distribution;
use crate::duration::HumanDuration;
use crate::run::{Rpc, RunConfig};
use crate::tally::{CODES, Tally, code_name};

/// Latency percentiles of the successful requests, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Number of latencies recorded (the successful requests).
    pub count: u64,
    /// Fastest request.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Slowest request.
    pub max: u64,
}

impl Latency {
    /// Returns the percentiles of `histogram` (microseconds); all zero when it is empty.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        let count = histogram.len();
        if count == 0 {
            return Latency {
                count,
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p99_9: 0,
                max: 0,
            };
        }
        Latency {
            count,
            min: histogram.min(),
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p99_9: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// CPU the generator itself used while recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuUsage {
    /// CPU seconds (user + system, all threads) spent during the recorded period.
    pub seconds: f64,
    /// `seconds` per elapsed second: how many cores the generator kept busy.
    pub cores: f64,
    /// Cores available to the process.
    pub available_cores: usize,
}

/// Everything a run measured. Serialized as-is by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The method called.
    pub rpc: Rpc,
    /// The server.
    pub target: String,
    /// Workers, each with one request in flight.
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    pub connections: usize,
    /// Tenants asked for.
    pub tenants: usize,
    /// Services asked for (uniformly).
    pub services: usize,
    /// How tenants are chosen.
    pub distribution: Distribution,
    /// Length of the warm-up, in seconds.
    pub warmup_secs: f64,
    /// Requests sent during the warm-up (not in any other figure).
    pub warmup_requests: u64,
    /// Seconds from the end of the warm-up to the last recorded response.
    pub elapsed_secs: f64,
    /// Recorded requests: `ok + errors`.
    pub total: u64,
    /// Requests answered with `OK`.
    pub ok: u64,
    /// Requests that failed, whatever the code.
    pub errors: u64,
    /// Failed requests by gRPC status code name (`NOT_FOUND`, `UNAVAILABLE`, ...).
    pub error_codes: BTreeMap<String, u64>,
    /// The first message seen for each failing code.
    pub error_samples: BTreeMap<String, String>,
    /// Recorded requests per second: `total / elapsed_secs`.
    pub throughput_rps: f64,
    /// Latency of the successful requests, in microseconds.
    pub latency_us: Latency,
    /// CPU the generator used while recording; absent where it cannot be read.
    pub generator_cpu: Option<CpuUsage>,
    /// Failed checks (`--max-p99-ms`, `--fail-on-error`); empty when all pass.
    pub violations: Vec<String>,
}

impl Summary {
    /// Returns the summary of a run of `config` that recorded `tally` over `elapsed`.
    pub fn new(
        config: &RunConfig,
        tally: &Tally,
        elapsed: Duration,
        generator_cpu: Option<CpuUsage>,
    ) -> Summary {
        let latency_us = Latency::from_histogram(&tally.latency_us);
        let mut error_codes = BTreeMap::new();
        let mut error_samples = BTreeMap::new();
        for index in 0..CODES {
            let failed = tally.errors_by_code[index];
            if failed > 0 {
                error_codes.insert(code_name(index).to_owned(), failed);
            }
            if let Some(sample) = &tally.error_samples[index] {
                error_samples.insert(code_name(index).to_owned(), sample.clone());
            }
        }
        let errors = tally.errors();
        let total = tally.ok + errors;
        let seconds = elapsed.as_secs_f64();
        Summary {
            rpc: config.rpc,
            target: config.target.clone(),
            concurrency: config.concurrency,
            connections: config.connections,
            tenants: config.keyspace.tenants,
            services: config.keyspace.services,
            distribution: config.distribution,
            warmup_secs: config.warmup.as_secs_f64(),
            warmup_requests: tally.warmup,
            elapsed_secs: seconds,
            total,
            ok: tally.ok,
            errors,
            error_codes,
            error_samples,
            throughput_rps: if seconds > 0.0 {
                total as f64 / seconds
            } else {
                0.0
            },
            latency_us,
            generator_cpu,
            violations: Vec::new(),
        }
    }

    /// Returns the summary as one line of JSON.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(err) => unreachable!("a summary always serializes: {err}"),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warmup = HumanDuration(Duration::from_secs_f64(self.warmup_secs));
        writeln!(
            f,
            "{} against {}: {} workers over {} connections",
            self.rpc, self.target, self.concurrency, self.connections
        )?;
        writeln!(
            f,
            "keys: {} tenants ({}) x {} services (uniform)",
            self.tenants, self.distribution, self.services
        )?;
        writeln!(
            f,
            "warm-up: {warmup}, {} requests not recorded",
            self.warmup_requests
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "requests     {} total, {} ok, {} errors",
            self.total, self.ok, self.errors
        )?;
        writeln!(f, "elapsed      {:.2} s", self.elapsed_secs)?;
        writeln!(f, "throughput   {:.1} req/s", self.throughput_rps)?;
        let l = &self.latency_us;
        writeln!(f, "latency      µs, of {} successful requests", l.count)?;
        for (name, value) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p99_9),
            ("max", l.max),
        ] {
            writeln!(f, "  {name:<10} {value:>10}")?;
        }
        writeln!(f, "  {:<10} {:>10.1}", "mean", l.mean)?;
        if let Some(cpu) = &self.generator_cpu {
            writeln!(
                f,
                "generator    {:.2} CPU s in {:.2} s: {:.2} of {} cores",
                cpu.seconds, self.elapsed_secs, cpu.cores, cpu.available_cores
            )?;
        }
        if !self.error_codes.is_empty() {
            writeln!(f, "errors")?;
            for (code, count) in &self.error_codes {
                let sample = self.error_samples.get(code).map_or("", String::as_str);
                writeln!(f, "  {code:<20} {count:>10}  e.g. {sample}")?;
            }
        }
        Ok(())
    }
}

/// Conditions a run must meet for the command to succeed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checks {
    /// Fails the run when the p99 latency is above this.
    pub max_p99: Option<Duration>,
    /// Fails the run when any request failed.
    pub fail_on_error: bool,
}

impl Checks {
    /// Returns a sentence for each check `summary` fails.
    pub fn violations(&self, summary: &Summary) -> Vec<String> {
        let mut violations = Vec::new();
        if let Some(max) = self.max_p99 {
            let max_ms = max.as_secs_f64() * 1e3;
            let p99 = summary.latency_us.p99;
            if summary.latency_us.count == 0 {
                violations.push(format!(
                    "no successful request, so p99 cannot be held to --max-p99-ms {max_ms}"
                ));
            } else if u128::from(p99) > max.as_micros() {
                violations.push(format!(
                    "p99 latency {:.3} ms exceeds --max-p99-ms {max_ms}",
                    p99 as f64 / 1e3
                ));
            }
        }
        if self.fail_on_error && summary.errors > 0 {
            let codes: Vec<String> = summary
                .error_codes
                .iter()
                .map(|(code, count)| format!("{code} {count}"))
                .collect();
            violations.push(format!(
                "{} of {} requests failed ({}) with --fail-on-error",
                summary.errors,
                summary.total,
                codes.join(", ")
            ));
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::KeyspaceSpec;

    fn config() -> RunConfig {
        RunConfig {
            target: "http://127.0.0.1:50051".to_owned(),
            concurrency: 4,
            connections: 2,
            keyspace: KeyspaceSpec {
                tenants: 100,
                services: 5,
                ..KeyspaceSpec::default()
            },
            distribution: Distribution::Zipf { s: 1.0 },
            warmup: Duration::from_secs(2),
            ..RunConfig::default()
        }
    }

    /// 1,000 successes of 1 to 1,000 µs, two NOT_FOUND and one UNAVAILABLE, over 2 s.
    fn summary() -> Summary {
        let mut tally = Tally::new();
        for micros in 1..=1_000 {
            tally.record_ok(Duration::from_micros(micros));
        }
        tally.record_error(&tonic::Status::not_found("tenant 'x' not found"));
        tally.record_error(&tonic::Status::not_found("tenant 'y' not found"));
        tally.record_error(&tonic::Status::unavailable("connection reset"));
        tally.warmup = 40;
        let cpu = CpuUsage {
            seconds: 0.5,
            cores: 0.25,
            available_cores: 2,
        };
        Summary::new(&config(), &tally, Duration::from_secs(2), Some(cpu))
    }

    #[test]
    fn counts_add_up_and_percentiles_come_from_the_histogram() {
        let s = summary();
        assert_eq!((s.total, s.ok, s.errors), (1_003, 1_000, 3));
        assert_eq!(s.warmup_requests, 40);
        assert!((s.throughput_rps - 501.5).abs() < 1e-9);
        let l = &s.latency_us;
        assert_eq!(l.count, 1_000);
        assert_eq!(l.min, 1);
        assert_eq!(l.p50, 500);
        assert_eq!(l.p90, 900);
        assert_eq!(l.p99, 990);
        assert_eq!(l.p99_9, 999);
        assert_eq!(l.max, 1_000);
        assert!((l.mean - 500.5).abs() < 0.5, "{}", l.mean);
        assert_eq!(s.error_codes.get("NOT_FOUND"), Some(&2));
        assert_eq!(s.error_codes.get("UNAVAILABLE"), Some(&1));
        assert_eq!(s.error_codes.len(), 2);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json: serde_json::Value =
            serde_json::from_str(&summary().to_json()).expect("valid JSON");
        let object = json.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "concurrency",
                "connections",
                "distribution",
                "elapsed_secs",
                "error_codes",
                "error_samples",
                "errors",
                "generator_cpu",
                "latency_us",
                "ok",
                "rpc",
                "services",
                "target",
                "tenants",
                "throughput_rps",
                "total",
                "violations",
                "warmup_requests",
                "warmup_secs",
            ]
        );
        assert_eq!(json["rpc"], "route");
        assert_eq!(json["total"], 1_003);
        assert_eq!(json["ok"], 1_000);
        assert_eq!(json["errors"], 3);
        assert_eq!(json["error_codes"]["NOT_FOUND"], 2);
        assert_eq!(json["error_samples"]["UNAVAILABLE"], "connection reset");
        assert_eq!(json["distribution"]["kind"], "zipf");
        assert_eq!(json["distribution"]["s"], 1.0);
        let latency = &json["latency_us"];
        for (key, value) in [
            ("count", 1_000),
            ("min", 1),
            ("p50", 500),
            ("p90", 900),
            ("p99", 990),
            ("p99_9", 999),
            ("max", 1_000),
        ] {
            assert_eq!(latency[key], value, "latency_us.{key}");
        }
        assert!(latency["mean"].is_f64());
        assert_eq!(json["generator_cpu"]["cores"], 0.25);
        assert_eq!(json["violations"], serde_json::json!([]));
    }

    #[test]
    fn text_lists_every_figure() {
        let text = summary().to_string();
        for expected in [
            "route against http://127.0.0.1:50051: 4 workers over 2 connections",
            "keys: 100 tenants (zipf (s=1)) x 5 services (uniform)",
            "warm-up: 2s, 40 requests not recorded",
            "requests     1003 total, 1000 ok, 3 errors",
            "elapsed      2.00 s",
            "throughput   501.5 req/s",
            "  p50               500",
            "  p99.9             999",
            "  max              1000",
            "generator    0.50 CPU s in 2.00 s: 0.25 of 2 cores",
            "  NOT_FOUND                     2  e.g. tenant 'x' not found",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn an_empty_run_has_zero_latencies() {
        let s = Summary::new(&config(), &Tally::new(), Duration::ZERO, None);
        assert_eq!(s.total, 0);
        assert_eq!(s.throughput_rps, 0.0);
        assert_eq!(s.latency_us.max, 0);
        assert!(s.to_string().contains("0 total"));
        assert!(s.to_json().contains("\"generator_cpu\":null"));
    }

    #[test]
    fn checks_fail_on_slow_p99_and_on_errors() {
        let s = summary();
        assert!(Checks::default().violations(&s).is_empty());
        let lenient = Checks {
            max_p99: Some(Duration::from_millis(1)),
            fail_on_error: false,
        };
        assert!(lenient.violations(&s).is_empty(), "990 µs is within 1 ms");
        let strict = Checks {
            max_p99: Some(Duration::from_micros(500)),
            fail_on_error: true,
        };
        let violations = strict.violations(&s);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert_eq!(
            violations[0],
            "p99 latency 0.990 ms exceeds --max-p99-ms 0.5"
        );
        assert_eq!(
            violations[1],
            "3 of 1003 requests failed (NOT_FOUND 2, UNAVAILABLE 1) with --fail-on-error"
        );
    }

    #[test]
    fn a_p99_check_without_successes_fails() {
        let s = Summary::new(&config(), &Tally::new(), Duration::from_secs(1), None);
        let checks = Checks {
            max_p99: Some(Duration::from_millis(5)),
            fail_on_error: false,
        };
        assert_eq!(checks.violations(&s).len(), 1);
    }
}
