//! The result of a run: counts of calls and of decisions, throughput, latency percentiles, and
//! the checks it must pass; printed as text, or as one JSON object.
//!
//! A call is one RPC; a decision is one routed request in it (one per `Route` call,
//! `batch_size` per `RouteBatch` call). `total`, `ok`, `errors` and `throughput_rps` count
//! calls, latency is per call, and the `decision*` fields count decisions: with `Route` the two
//! are equal.

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

/// The shape of the successful calls' latencies, for the ghz report (`--format ghz-json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyShape {
    /// (percentage, microseconds) at 10, 25, 50, 75, 90, 95 and 99%.
    pub distribution: Vec<(u32, u64)>,
    /// Eleven buckets from the fastest to the slowest call: (upper mark in microseconds,
    /// calls in the bucket).
    pub buckets: Vec<(u64, u64)>,
}

impl LatencyShape {
    const PERCENTAGES: [u32; 7] = [10, 25, 50, 75, 90, 95, 99];
    const BUCKETS: u64 = 10;

    /// The shape of `histogram` (microseconds); empty when it is.
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencyShape {
        if histogram.is_empty() {
            return LatencyShape::default();
        }
        let distribution = Self::PERCENTAGES
            .iter()
            .map(|&p| (p, histogram.value_at_quantile(f64::from(p) / 100.0)))
            .collect();
        // As ghz draws it: ten equal steps from the fastest, the last mark the slowest.
        let (fastest, slowest) = (histogram.min(), histogram.max());
        let step = (slowest - fastest) / Self::BUCKETS;
        let mut buckets = Vec::with_capacity(Self::BUCKETS as usize + 1);
        let mut low = 0;
        for index in 0..=Self::BUCKETS {
            let mark = if index == Self::BUCKETS {
                slowest
            } else {
                fastest + step * index
            };
            let count = if mark >= low {
                histogram.count_between(low, mark)
            } else {
                0
            };
            buckets.push((mark, count));
            low = mark.saturating_add(1);
        }
        LatencyShape {
            distribution,
            buckets,
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
    /// Decisions asked for per call (1 for `route`).
    pub batch_size: usize,
    /// The server.
    pub target: String,
    /// Workers, each with one call in flight.
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
    /// Calls sent during the warm-up (not in any other figure).
    pub warmup_requests: u64,
    /// Seconds from the end of the warm-up to the last recorded response.
    pub elapsed_secs: f64,
    /// Recorded calls: `ok + errors`.
    pub total: u64,
    /// Calls answered with `OK`.
    pub ok: u64,
    /// Calls that failed, whatever the code.
    pub errors: u64,
    /// Failed calls by gRPC status code name (`NOT_FOUND`, `UNAVAILABLE`, ...).
    pub error_codes: BTreeMap<String, u64>,
    /// The first message seen for each failing code.
    pub error_samples: BTreeMap<String, String>,
    /// Recorded calls per second: `total / elapsed_secs`.
    pub throughput_rps: f64,
    /// Decisions asked for by the recorded calls: `total * batch_size`, and
    /// `decisions_ok + decision_errors`.
    pub decisions: u64,
    /// Decisions answered with an instance.
    pub decisions_ok: u64,
    /// Decisions answered with an error (`RouteResult.error`), or asked for by a failed call.
    pub decision_errors: u64,
    /// Failed decisions by status code name; a failed call counts each of its decisions under
    /// its own code.
    pub decision_error_codes: BTreeMap<String, u64>,
    /// The first message seen for each failing decision code.
    pub decision_error_samples: BTreeMap<String, String>,
    /// Decisions per second: `decisions / elapsed_secs` (`throughput_rps * batch_size`).
    pub decisions_per_s: f64,
    /// Latency of the successful calls, in microseconds.
    pub latency_us: Latency,
    /// Latency of the calls refused with `RESOURCE_EXHAUSTED`, in microseconds.
    pub refused_latency_us: Latency,
    /// CPU the generator used while recording; absent where it cannot be read.
    pub generator_cpu: Option<CpuUsage>,
    /// Failed checks (`--max-p99-ms`, `--fail-on-error`); empty when all pass.
    pub violations: Vec<String>,
    /// Percentages and buckets of the successful calls' latencies (the ghz report only).
    #[serde(skip)]
    pub latency_shape: LatencyShape,
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
        let (error_codes, error_samples) =
            by_code_name(&tally.errors_by_code, &tally.error_samples);
        let (decision_error_codes, decision_error_samples) = by_code_name(
            &tally.decision_errors_by_code,
            &tally.decision_error_samples,
        );
        let errors = tally.errors();
        let total = tally.ok + errors;
        let decision_errors = tally.decision_errors();
        let decisions = tally.decisions_ok + decision_errors;
        let seconds = elapsed.as_secs_f64();
        let per_second = |count: u64| {
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        Summary {
            rpc: config.rpc,
            batch_size: config.batch_size,
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
            throughput_rps: per_second(total),
            decisions,
            decisions_ok: tally.decisions_ok,
            decision_errors,
            decision_error_codes,
            decision_error_samples,
            decisions_per_s: per_second(decisions),
            latency_us,
            refused_latency_us: Latency::from_histogram(&tally.refused_latency_us),
            generator_cpu,
            violations: Vec::new(),
            latency_shape: LatencyShape::from_histogram(&tally.latency_us),
        }
    }

    /// Whether a call asks for several decisions (`RouteBatch`), so that calls and decisions
    /// are reported apart.
    fn batched(&self) -> bool {
        self.rpc == Rpc::RouteBatch
    }

    /// Returns the summary in the JSON layout of ghz's report (`ghz --format json`), so that
    /// tools reading ghz runs read this one: durations in nanoseconds, status codes spelled as
    /// ghz does (`OK`, `NotFound`, ...), latencies of the successful calls; `at_ms` is when the
    /// run ended. Error messages are the first of each code, counted with all calls of that
    /// code; `details` (ghz's per-call list) is empty.
    pub fn to_ghz_json(&self, at_ms: u64) -> String {
        let nanos = |micros: f64| (micros * 1_000.0).round() as u64;
        let call = match self.rpc {
            Rpc::Route => "greyrouter.v1.Router.Route",
            Rpc::RouteBatch => "greyrouter.v1.Router.RouteBatch",
            Rpc::Sdk => "greyrouter-client local decisions",
        };
        let mut status_codes = serde_json::Map::new();
        if self.ok > 0 {
            status_codes.insert("OK".to_owned(), self.ok.into());
        }
        let mut errors = serde_json::Map::new();
        for (code, count) in &self.error_codes {
            let name = ghz_code_name(code);
            status_codes.insert(name.to_owned(), (*count).into());
            let sample = self.error_samples.get(code).map_or("", String::as_str);
            errors.insert(
                format!("rpc error: code = {name} desc = {sample}"),
                (*count).into(),
            );
        }
        let ok = self.latency_us.count.max(1) as f64;
        let report = serde_json::json!({
            "name": format!("greyrouter-load {}", self.rpc),
            "endReason": "normal",
            "options": {
                "host": self.target,
                "call": call,
                "insecure": self.target.starts_with("http://"),
                "concurrency": self.concurrency,
                "connections": self.connections,
                "duration": nanos(self.elapsed_secs * 1e6),
                "CPUs": self.generator_cpu.as_ref().map_or(0, |cpu| cpu.available_cores),
            },
            "date": routing_core::utc::UtcTime::from_unix_ms(at_ms).to_rfc3339(),
            "count": self.total,
            "total": nanos(self.elapsed_secs * 1e6),
            "average": nanos(self.latency_us.mean),
            "fastest": self.latency_us.min * 1_000,
            "slowest": self.latency_us.max * 1_000,
            "rps": self.throughput_rps,
            "errorDistribution": errors,
            "statusCodeDistribution": status_codes,
            "latencyDistribution": self.latency_shape.distribution.iter().map(|(percentage, micros)| {
                serde_json::json!({"percentage": percentage, "latency": micros * 1_000})
            }).collect::<Vec<_>>(),
            "histogram": self.latency_shape.buckets.iter().map(|(mark, count)| {
                serde_json::json!({
                    "mark": *mark as f64 / 1e6,
                    "count": count,
                    "frequency": *count as f64 / ok,
                })
            }).collect::<Vec<_>>(),
            "details": [],
        });
        report.to_string()
    }

    /// Returns the summary as one line of JSON.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            Err(err) => unreachable!("a summary always serializes: {err}"),
        }
    }
}

/// A status code as ghz (Go's gRPC) spells it: `NOT_FOUND` → `NotFound`, `CANCELLED` →
/// `Canceled`.
fn ghz_code_name(canonical: &str) -> &'static str {
    const GO_NAMES: [&str; CODES] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    (0..CODES)
        .find(|&index| code_name(index) == canonical)
        .map_or("Unknown", |index| GO_NAMES[index])
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warmup = HumanDuration(Duration::from_secs_f64(self.warmup_secs));
        let batched = self.batched();
        // With Route a call is a request; with RouteBatch it carries `batch_size` of them.
        let (calls, rate) = if batched {
            ("calls", "calls/s")
        } else {
            ("requests", "req/s")
        };
        write!(
            f,
            "{} against {}: {} workers over {} connections",
            self.rpc, self.target, self.concurrency, self.connections
        )?;
        if batched {
            write!(f, ", {} requests per call", self.batch_size)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "keys: {} tenants ({}) x {} services (uniform)",
            self.tenants, self.distribution, self.services
        )?;
        writeln!(
            f,
            "warm-up: {warmup}, {} {calls} not recorded",
            self.warmup_requests
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{calls:<12} {} total, {} ok, {} errors",
            self.total, self.ok, self.errors
        )?;
        if batched {
            writeln!(
                f,
                "decisions    {} total, {} ok, {} errors",
                self.decisions, self.decisions_ok, self.decision_errors
            )?;
        }
        writeln!(f, "elapsed      {:.2} s", self.elapsed_secs)?;
        writeln!(
            f,
            "throughput   {:.1} {rate}, {:.1} decisions/s",
            self.throughput_rps, self.decisions_per_s
        )?;
        let l = &self.latency_us;
        if batched {
            writeln!(
                f,
                "latency      µs per call, of {} successful calls",
                l.count
            )?;
        } else {
            writeln!(f, "latency      µs, of {} successful requests", l.count)?;
        }
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
            writeln!(f, "{}", if batched { "failed calls" } else { "errors" })?;
            write_codes(f, &self.error_codes, &self.error_samples)?;
        }
        if batched && !self.decision_error_codes.is_empty() {
            writeln!(f, "failed decisions (with every decision of a failed call)")?;
            write_codes(f, &self.decision_error_codes, &self.decision_error_samples)?;
        }
        Ok(())
    }
}

fn write_codes(
    f: &mut fmt::Formatter<'_>,
    counts: &BTreeMap<String, u64>,
    samples: &BTreeMap<String, String>,
) -> fmt::Result {
    for (code, count) in counts {
        let sample = samples.get(code).map_or("", String::as_str);
        writeln!(f, "  {code:<20} {count:>10}  e.g. {sample}")?;
    }
    Ok(())
}

/// Returns the non-zero counts and the samples, keyed by code name.
fn by_code_name(
    counts: &[u64; CODES],
    samples: &[Option<String>; CODES],
) -> (BTreeMap<String, u64>, BTreeMap<String, String>) {
    let mut by_code = BTreeMap::new();
    let mut samples_by_code = BTreeMap::new();
    for index in 0..CODES {
        if counts[index] > 0 {
            by_code.insert(code_name(index).to_owned(), counts[index]);
        }
        if let Some(sample) = &samples[index] {
            samples_by_code.insert(code_name(index).to_owned(), sample.clone());
        }
    }
    (by_code, samples_by_code)
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
        let codes = |counts: &BTreeMap<String, u64>| {
            counts
                .iter()
                .map(|(code, count)| format!("{code} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.fail_on_error && summary.batched() && summary.decision_errors > 0 {
            // Failed calls are in here too: each fails its decisions.
            violations.push(format!(
                "{} of {} decisions failed ({}) with --fail-on-error",
                summary.decision_errors,
                summary.decisions,
                codes(&summary.decision_error_codes)
            ));
        } else if self.fail_on_error && summary.errors > 0 {
            violations.push(format!(
                "{} of {} requests failed ({}) with --fail-on-error",
                summary.errors,
                summary.total,
                codes(&summary.error_codes)
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
            tally.record_decisions_ok(1);
        }
        tally.record_error(&tonic::Status::not_found("tenant 'x' not found"), 1);
        tally.record_error(&tonic::Status::not_found("tenant 'y' not found"), 1);
        tally.record_error(&tonic::Status::unavailable("connection reset"), 1);
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
        // With Route, decisions are the requests.
        assert_eq!(s.batch_size, 1);
        assert_eq!(
            (s.decisions, s.decisions_ok, s.decision_errors),
            (1_003, 1_000, 3)
        );
        assert_eq!(s.decision_error_codes, s.error_codes);
        assert_eq!(s.decisions_per_s, s.throughput_rps);
    }

    /// 10 calls of 50 decisions over 2 s: 8 answered (3 of their decisions NOT_FOUND, the
    /// rest routed), 2 failed with UNAVAILABLE.
    fn batch_summary() -> Summary {
        let config = RunConfig {
            rpc: Rpc::RouteBatch,
            batch_size: 50,
            ..config()
        };
        let routed = greyrouter_proto::v1::RouteResult {
            result: Some(greyrouter_proto::v1::route_result::Result::Route(
                Default::default(),
            )),
        };
        let mut tally = Tally::new();
        for call in 0..8 {
            tally.record_ok(Duration::from_micros(100 + call));
            let mut results = vec![routed.clone(); 50];
            if call < 3 {
                results[7].result = Some(greyrouter_proto::v1::route_result::Result::Error(
                    greyrouter_proto::v1::RouteError {
                        code: tonic::Code::NotFound as i32,
                        message: "tenant 'tenant-77' not found".to_owned(),
                    },
                ));
            }
            tally.record_results(&results, 50);
        }
        tally.record_error(&tonic::Status::unavailable("connection reset"), 50);
        tally.record_error(&tonic::Status::unavailable("connection reset"), 50);
        Summary::new(&config, &tally, Duration::from_secs(2), None)
    }

    #[test]
    fn the_ghz_report_has_ghz_layout_and_units() {
        let s = batch_summary();
        let json: serde_json::Value =
            serde_json::from_str(&s.to_ghz_json(951_827_696_789)).expect("valid JSON");
        assert_eq!(json["date"], "2000-02-29T12:34:56Z");
        assert_eq!(json["count"], 10);
        assert_eq!(
            json["total"], 2_000_000_000_u64,
            "two seconds in nanoseconds"
        );
        assert_eq!(json["rps"], 5.0);
        assert_eq!(json["fastest"], s.latency_us.min * 1_000);
        assert_eq!(json["slowest"], s.latency_us.max * 1_000);
        assert_eq!(json["statusCodeDistribution"]["OK"], 8);
        assert_eq!(json["statusCodeDistribution"]["Unavailable"], 2);
        assert_eq!(
            json["errorDistribution"]["rpc error: code = Unavailable desc = connection reset"],
            2
        );
        assert_eq!(json["options"]["call"], "greyrouter.v1.Router.RouteBatch");
        let distribution = json["latencyDistribution"].as_array().expect("a list");
        let percentages: Vec<u64> = distribution
            .iter()
            .map(|entry| entry["percentage"].as_u64().expect("a percentage"))
            .collect();
        assert_eq!(percentages, [10, 25, 50, 75, 90, 95, 99]);
        let latencies: Vec<u64> = distribution
            .iter()
            .map(|entry| entry["latency"].as_u64().expect("nanoseconds"))
            .collect();
        assert!(
            latencies.windows(2).all(|pair| pair[0] <= pair[1]),
            "{latencies:?}"
        );
        assert!(
            latencies[0] >= 100_000,
            "100 µs and up, in nanoseconds: {latencies:?}"
        );
        let histogram = json["histogram"].as_array().expect("a list");
        assert_eq!(histogram.len(), 11);
        let counted: u64 = histogram
            .iter()
            .map(|bucket| bucket["count"].as_u64().expect("a count"))
            .sum();
        assert_eq!(counted, 8, "every successful call in one bucket");
        assert_eq!(json["details"], serde_json::json!([]));
    }

    #[test]
    fn a_batch_run_counts_calls_and_decisions_apart() {
        let s = batch_summary();
        assert_eq!((s.total, s.ok, s.errors), (10, 8, 2));
        assert_eq!(s.decisions, 10 * 50);
        assert_eq!(s.decisions, s.total * s.batch_size as u64);
        assert_eq!(s.decision_errors, 3 + 2 * 50);
        assert_eq!(s.decisions_ok, 8 * 50 - 3);
        assert_eq!(s.decision_error_codes.get("NOT_FOUND"), Some(&3));
        assert_eq!(s.decision_error_codes.get("UNAVAILABLE"), Some(&100));
        assert_eq!(s.error_codes.get("UNAVAILABLE"), Some(&2));
        assert!((s.throughput_rps - 5.0).abs() < 1e-9);
        assert!((s.decisions_per_s - 250.0).abs() < 1e-9);
        assert_eq!(s.latency_us.count, 8, "latency is per successful call");

        let text = s.to_string();
        for expected in [
            "route-batch against http://127.0.0.1:50051: 4 workers over 2 connections, 50 requests per call",
            "calls        10 total, 8 ok, 2 errors",
            "decisions    500 total, 397 ok, 103 errors",
            "throughput   5.0 calls/s, 250.0 decisions/s",
            "latency      µs per call, of 8 successful calls",
            "failed calls\n  UNAVAILABLE                   2  e.g. connection reset",
            "  NOT_FOUND                     3  e.g. tenant 'tenant-77' not found",
            "  UNAVAILABLE                 100  e.g. connection reset",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }

        let json: serde_json::Value = serde_json::from_str(&s.to_json()).expect("valid JSON");
        assert_eq!(json["rpc"], "route-batch");
        assert_eq!(json["batch_size"], 50);
        assert_eq!(json["decisions"], 500);
        assert_eq!(json["decision_errors"], 103);
        assert_eq!(json["decisions_per_s"], 250.0);
        assert_eq!(json["decision_error_codes"]["NOT_FOUND"], 3);

        let checks = Checks {
            max_p99: None,
            fail_on_error: true,
        };
        assert_eq!(
            checks.violations(&s),
            ["103 of 500 decisions failed (NOT_FOUND 3, UNAVAILABLE 100) with --fail-on-error"]
        );
    }

    #[test]
    fn decision_errors_alone_fail_a_batch_run() {
        let config = RunConfig {
            rpc: Rpc::RouteBatch,
            batch_size: 2,
            ..config()
        };
        let mut tally = Tally::new();
        tally.record_ok(Duration::from_micros(100));
        tally.record_results(
            &[
                greyrouter_proto::v1::RouteResult {
                    result: Some(greyrouter_proto::v1::route_result::Result::Route(
                        Default::default(),
                    )),
                },
                greyrouter_proto::v1::RouteResult {
                    result: Some(greyrouter_proto::v1::route_result::Result::Error(
                        greyrouter_proto::v1::RouteError {
                            code: tonic::Code::FailedPrecondition as i32,
                            message: "tenant 'x' is inactive".to_owned(),
                        },
                    )),
                },
            ],
            2,
        );
        let s = Summary::new(&config, &tally, Duration::from_secs(1), None);
        assert_eq!(s.errors, 0, "every call succeeded");
        let checks = Checks {
            max_p99: None,
            fail_on_error: true,
        };
        assert_eq!(checks.violations(&s).len(), 1);
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
                "batch_size",
                "concurrency",
                "connections",
                "decision_error_codes",
                "decision_error_samples",
                "decision_errors",
                "decisions",
                "decisions_ok",
                "decisions_per_s",
                "distribution",
                "elapsed_secs",
                "error_codes",
                "error_samples",
                "errors",
                "generator_cpu",
                "latency_us",
                "ok",
                "refused_latency_us",
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
            "throughput   501.5 req/s, 501.5 decisions/s",
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
