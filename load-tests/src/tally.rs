//! What one worker saw: a latency histogram and counts, owned by that worker alone and merged
//! once at the end, so that recording a call touches no shared memory.
//!
//! Calls and decisions are counted apart. A `Route` call asks for one decision, a `RouteBatch`
//! call for many: a successful call may still answer some of its decisions with an error
//! (`RouteResult.error`), and a failed call leaves every decision it asked for unanswered, so
//! those count as failed decisions with the call's code.

use std::time::Duration;

use greyrouter_proto::v1 as pb;
use hdrhistogram::Histogram;
use tonic::Code;

/// Largest latency recorded, in microseconds (60 s); larger values are recorded as this.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Significant decimal digits of the histogram: values are exact to 0.1%.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Number of gRPC status codes (`OK` = 0 to `UNAUTHENTICATED` = 16).
pub const CODES: usize = 17;

/// The outcomes a worker recorded.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latencies of successful calls, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Latencies of calls refused with `RESOURCE_EXHAUSTED` (shed), in microseconds.
    pub refused_latency_us: Histogram<u64>,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls by status code (index `code as usize`; `OK` stays 0).
    pub errors_by_code: [u64; CODES],
    /// The message of the first failed call of each code, to show what went wrong.
    pub error_samples: [Option<String>; CODES],
    /// Calls sent during the warm-up, not recorded.
    pub warmup: u64,
    /// Decisions answered with an instance.
    pub decisions_ok: u64,
    /// Decisions without an instance, by status code: `RouteResult.error`s of successful calls,
    /// and every decision of a failed call (with the call's code).
    pub decision_errors_by_code: [u64; CODES],
    /// The message of the first failed decision of each code.
    pub decision_error_samples: [Option<String>; CODES],
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// Returns an empty tally.
    pub fn new() -> Tally {
        Tally {
            latency_us: new_histogram(),
            refused_latency_us: new_histogram(),
            ok: 0,
            errors_by_code: [0; CODES],
            error_samples: Default::default(),
            warmup: 0,
            decisions_ok: 0,
            decision_errors_by_code: [0; CODES],
            decision_error_samples: Default::default(),
        }
    }

    /// Records a successful call that took `latency` (its decisions are recorded apart).
    #[inline]
    pub fn record_ok(&mut self, latency: Duration) {
        record(&mut self.latency_us, latency);
        self.ok += 1;
    }

    /// Records a call refused with `RESOURCE_EXHAUSTED` after `latency`: how fast shedding is.
    pub fn record_refused(&mut self, latency: Duration) {
        record(&mut self.refused_latency_us, latency);
    }

    /// Records a failed call that asked for `decisions` decisions: each counts as failed, with
    /// the call's code.
    pub fn record_error(&mut self, status: &tonic::Status, decisions: u64) {
        let index = code_index(status.code());
        self.errors_by_code[index] += 1;
        if self.error_samples[index].is_none() {
            self.error_samples[index] = Some(status.message().to_owned());
        }
        self.record_decision_errors(index, status.message(), decisions);
    }

    /// Records `count` decisions answered with an instance.
    #[inline]
    pub fn record_decisions_ok(&mut self, count: u64) {
        self.decisions_ok += count;
    }

    /// Records the results of a successful `RouteBatch` call that asked for `asked` decisions.
    /// An answer with another number of results than asked counts every decision as failed
    /// (`UNKNOWN`): results are matched to requests by position, so none can be trusted.
    pub fn record_results(&mut self, results: &[pb::RouteResult], asked: usize) {
        if results.len() != asked {
            let message = format!("{} results in answer to {asked} requests", results.len());
            self.record_decision_errors(Code::Unknown as usize, &message, asked as u64);
            return;
        }
        for result in results {
            match &result.result {
                Some(pb::route_result::Result::Route(_)) => self.decisions_ok += 1,
                Some(pb::route_result::Result::Error(error)) => {
                    self.record_decision_errors(decision_code_index(error.code), &error.message, 1);
                }
                None => self.record_decision_errors(
                    Code::Unknown as usize,
                    "a result with neither a route nor an error",
                    1,
                ),
            }
        }
    }

    fn record_decision_errors(&mut self, index: usize, message: &str, count: u64) {
        if count == 0 {
            return;
        }
        self.decision_errors_by_code[index] += count;
        if self.decision_error_samples[index].is_none() {
            self.decision_error_samples[index] = Some(message.to_owned());
        }
    }

    /// Returns the number of failed calls.
    pub fn errors(&self) -> u64 {
        self.errors_by_code.iter().sum()
    }

    /// Returns the number of failed decisions.
    pub fn decision_errors(&self) -> u64 {
        self.decision_errors_by_code.iter().sum()
    }

    /// Adds `other` into this tally.
    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail; count it as a check.
        if let Err(err) = self.latency_us.add(&other.latency_us) {
            unreachable!("histograms share their bounds: {err:?}");
        }
        if let Err(err) = self.refused_latency_us.add(&other.refused_latency_us) {
            unreachable!("histograms share their bounds: {err:?}");
        }
        self.ok += other.ok;
        for (mine, theirs) in self.errors_by_code.iter_mut().zip(other.errors_by_code) {
            *mine += theirs;
        }
        for (mine, theirs) in self.error_samples.iter_mut().zip(other.error_samples) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
        self.warmup += other.warmup;
        self.decisions_ok += other.decisions_ok;
        for (mine, theirs) in self
            .decision_errors_by_code
            .iter_mut()
            .zip(other.decision_errors_by_code)
        {
            *mine += theirs;
        }
        for (mine, theirs) in self
            .decision_error_samples
            .iter_mut()
            .zip(other.decision_error_samples)
        {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }
}

/// Records `latency` in microseconds into a histogram made by [`new_histogram`]; latencies
/// above [`MAX_LATENCY_US`] are recorded as that.
#[inline]
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.min(MAX_LATENCY_US));
}

/// Returns an empty latency histogram: microseconds, up to [`MAX_LATENCY_US`], 3 significant
/// digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_max(MAX_LATENCY_US, SIGNIFICANT_DIGITS) {
        Ok(histogram) => histogram,
        Err(err) => unreachable!("constant histogram bounds are valid: {err:?}"),
    }
}

pub(crate) fn code_index(code: Code) -> usize {
    usize::try_from(code as i32)
        .unwrap_or(Code::Unknown as usize)
        .min(CODES - 1)
}

/// Returns the index of a `RouteError.code` (a `google.rpc.Code` number sent by the server):
/// `UNKNOWN` for a number outside the codes, or for `OK`, which is no error.
fn decision_code_index(code: i32) -> usize {
    match usize::try_from(code) {
        Ok(index) if (1..CODES).contains(&index) => index,
        _ => Code::Unknown as usize,
    }
}

/// Returns the canonical name of a status code, as gRPC spells it: `NOT_FOUND`.
pub fn code_name(index: usize) -> &'static str {
    const NAMES: [&str; CODES] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(index).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_the_first_sample() {
        let mut a = Tally::new();
        a.record_ok(Duration::from_micros(100));
        a.record_decisions_ok(1);
        a.record_error(&tonic::Status::not_found("tenant 'x' not found"), 1);
        a.warmup = 5;
        let mut b = Tally::new();
        b.record_ok(Duration::from_micros(300));
        b.record_ok(Duration::from_micros(200));
        b.record_decisions_ok(2);
        b.record_error(&tonic::Status::not_found("tenant 'y' not found"), 1);
        b.record_error(&tonic::Status::unavailable("gone"), 1);
        b.warmup = 2;

        a.merge(b);
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.errors(), 3);
        assert_eq!(a.errors_by_code[Code::NotFound as usize], 2);
        assert_eq!(a.errors_by_code[Code::Unavailable as usize], 1);
        assert_eq!(
            a.error_samples[Code::NotFound as usize].as_deref(),
            Some("tenant 'x' not found")
        );
        assert_eq!(a.warmup, 7);
        assert_eq!(a.decisions_ok, 3);
        assert_eq!(a.decision_errors(), 3);
        assert_eq!(a.decision_errors_by_code[Code::NotFound as usize], 2);
    }

    fn routed() -> pb::RouteResult {
        pb::RouteResult {
            result: Some(pb::route_result::Result::Route(pb::RouteResponse::default())),
        }
    }

    fn refused(code: i32, message: &str) -> pb::RouteResult {
        pb::RouteResult {
            result: Some(pb::route_result::Result::Error(pb::RouteError {
                code,
                message: message.to_owned(),
            })),
        }
    }

    #[test]
    fn batch_results_count_each_decision_by_its_code() {
        let mut tally = Tally::new();
        let results = [
            routed(),
            refused(Code::NotFound as i32, "tenant 'a' not found"),
            routed(),
            refused(Code::NotFound as i32, "tenant 'b' not found"),
            refused(Code::FailedPrecondition as i32, "tenant 'c' is inactive"),
            refused(0, "an error with code OK"),
            refused(99, "a code from the future"),
            pb::RouteResult { result: None },
        ];
        tally.record_results(&results, results.len());
        assert_eq!(tally.decisions_ok, 2);
        assert_eq!(tally.decision_errors(), 6);
        assert_eq!(tally.decision_errors_by_code[Code::NotFound as usize], 2);
        assert_eq!(
            tally.decision_errors_by_code[Code::FailedPrecondition as usize],
            1
        );
        assert_eq!(tally.decision_errors_by_code[Code::Unknown as usize], 3);
        assert_eq!(tally.decision_errors_by_code[Code::Ok as usize], 0);
        assert_eq!(
            tally.decision_error_samples[Code::NotFound as usize].as_deref(),
            Some("tenant 'a' not found")
        );
        assert_eq!(tally.errors(), 0, "the call itself succeeded");
    }

    #[test]
    fn a_short_answer_fails_every_decision_of_the_call() {
        let mut tally = Tally::new();
        tally.record_results(&[routed(), routed()], 5);
        assert_eq!(tally.decisions_ok, 0);
        assert_eq!(tally.decision_errors_by_code[Code::Unknown as usize], 5);
        assert_eq!(
            tally.decision_error_samples[Code::Unknown as usize].as_deref(),
            Some("2 results in answer to 5 requests")
        );
    }

    #[test]
    fn a_failed_call_fails_each_of_its_decisions() {
        let mut tally = Tally::new();
        tally.record_error(&tonic::Status::unavailable("connection reset"), 100);
        assert_eq!(tally.errors(), 1);
        assert_eq!(tally.decision_errors(), 100);
        assert_eq!(
            tally.decision_errors_by_code[Code::Unavailable as usize],
            100
        );
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut tally = Tally::new();
        tally.record_ok(Duration::from_secs(3600));
        assert_eq!(tally.latency_us.len(), 1);
        assert!(tally.latency_us.max() >= MAX_LATENCY_US);
    }

    #[test]
    fn code_names_follow_the_grpc_spelling() {
        assert_eq!(code_name(Code::Ok as usize), "OK");
        assert_eq!(code_name(Code::NotFound as usize), "NOT_FOUND");
        assert_eq!(code_name(Code::Unauthenticated as usize), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
