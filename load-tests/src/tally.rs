//! What one worker saw: a latency histogram and counts, owned by that worker alone and merged
//! once at the end, so that recording a request touches no shared memory.

use std::time::Duration;

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
    /// Latencies of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests by status code (index `code as usize`; `OK` stays 0).
    pub errors_by_code: [u64; CODES],
    /// The message of the first failure of each code, to show what went wrong.
    pub error_samples: [Option<String>; CODES],
    /// Requests sent during the warm-up, not recorded.
    pub warmup: u64,
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
            ok: 0,
            errors_by_code: [0; CODES],
            error_samples: Default::default(),
            warmup: 0,
        }
    }

    /// Records a successful request that took `latency`.
    #[inline]
    pub fn record_ok(&mut self, latency: Duration) {
        record(&mut self.latency_us, latency);
        self.ok += 1;
    }

    /// Records a failed request.
    pub fn record_error(&mut self, status: &tonic::Status) {
        let index = code_index(status.code());
        self.errors_by_code[index] += 1;
        if self.error_samples[index].is_none() {
            self.error_samples[index] = Some(status.message().to_owned());
        }
    }

    /// Returns the number of failed requests.
    pub fn errors(&self) -> u64 {
        self.errors_by_code.iter().sum()
    }

    /// Adds `other` into this tally.
    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail; count it as a check.
        if let Err(err) = self.latency_us.add(&other.latency_us) {
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

fn code_index(code: Code) -> usize {
    usize::try_from(code as i32)
        .unwrap_or(Code::Unknown as usize)
        .min(CODES - 1)
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
        a.record_error(&tonic::Status::not_found("tenant 'x' not found"));
        a.warmup = 5;
        let mut b = Tally::new();
        b.record_ok(Duration::from_micros(300));
        b.record_ok(Duration::from_micros(200));
        b.record_error(&tonic::Status::not_found("tenant 'y' not found"));
        b.record_error(&tonic::Status::unavailable("gone"));
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
