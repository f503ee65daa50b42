//! Outcome statistics of requests: counts, errors and a latency histogram, over a sliding window.
//!
//! [`Stats`] is a fixed histogram of [`LATENCY_BOUNDS_MS`] buckets plus request and error counts;
//! two of them merge by adding. [`Window`] keeps one [`Stats`] per time slot in a ring, so the
//! outcomes of the last `span_ms` are a merge of at most `slots` histograms, whatever the traffic.
//!
//! Time is an input (`now_ms`, milliseconds): the window reads no clock.

use serde::{Deserialize, Serialize};

/// Number of latency buckets of [`Stats`].
const BUCKET_COUNT: usize = 24;

/// Upper bounds (inclusive, in milliseconds) of the latency buckets of [`Stats`].
///
/// Bucket `i` holds latencies in `(LATENCY_BOUNDS_MS[i - 1], LATENCY_BOUNDS_MS[i]]` (the first
/// from 0). The last bucket, up to `u32::MAX`, holds everything above 30 s.
pub const LATENCY_BOUNDS_MS: [u32; BUCKET_COUNT] = [
    1,
    2,
    3,
    5,
    8,
    12,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1_000,
    1_500,
    2_000,
    3_000,
    5_000,
    10_000,
    30_000,
    u32::MAX,
];

/// The latency reported for the open-ended last bucket: twice the last finite bound (60 s).
const OVERFLOW_REPORT_MS: u32 = LATENCY_BOUNDS_MS[BUCKET_COUNT - 2] * 2;

/// Most slots a [`Window`] has; larger configurations are reduced to it.
const MAX_SLOTS: u32 = 1_024;

/// Returns the index of the bucket holding a latency.
fn bucket_of(latency_ms: u32) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&bound| bound < latency_ms)
}

/// Returns the latency reported for a bucket: its upper bound, or [`OVERFLOW_REPORT_MS`] for the
/// last one.
fn reported_bound(bucket: usize) -> u32 {
    if bucket + 1 >= BUCKET_COUNT {
        OVERFLOW_REPORT_MS
    } else {
        LATENCY_BOUNDS_MS[bucket]
    }
}

/// Request, error and latency counts of some requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stats {
    /// Requests that finished.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Requests per latency bucket; bucket `i` ends at `LATENCY_BOUNDS_MS[i]`.
    pub latency: [u64; BUCKET_COUNT],
}

impl Stats {
    /// Counts one finished request.
    pub fn record(&mut self, success: bool, latency_ms: u32) {
        self.requests = self.requests.saturating_add(1);
        if !success {
            self.errors = self.errors.saturating_add(1);
        }
        let bucket = &mut self.latency[bucket_of(latency_ms)];
        *bucket = bucket.saturating_add(1);
    }

    /// Adds another's counts to these.
    pub fn merge(&mut self, other: &Stats) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Returns the share of requests that failed (0.0-1.0), 0.0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.errors.min(self.requests) as f64 / self.requests as f64).min(1.0)
        }
    }

    /// Returns the `q`-quantile latency (`q` in 0.0-1.0), `None` without requests.
    ///
    /// The answer is the upper bound of the bucket holding the request of rank
    /// `max(1, ceil(q × n))` among the `n` counted latencies in ascending order, so it is never
    /// below that request's latency, except in the open-ended last bucket (above 30 s), which
    /// reports twice the last finite bound: 60,000 ms. `q` is clamped to 0.0-1.0; NaN counts as
    /// 1.0. The answer is monotonic in `q`.
    pub fn percentile_ms(&self, q: f64) -> Option<u32> {
        let total: u64 = self
            .latency
            .iter()
            .fold(0u64, |sum, &count| sum.saturating_add(count));
        if self.requests == 0 || total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut cumulative = 0u64;
        self.latency
            .iter()
            .position(|&count| {
                cumulative = cumulative.saturating_add(count);
                cumulative >= rank
            })
            .map(reported_bound)
    }

    /// Returns the 99th percentile latency, `None` without requests (see
    /// [`percentile_ms`](Stats::percentile_ms)).
    pub fn p99_ms(&self) -> Option<u32> {
        self.percentile_ms(0.99)
    }
}

/// The shape of a [`Window`]: how much time it covers, in how many slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Time covered, in milliseconds.
    pub span_ms: u64,
    /// Number of slots the span is divided into; each covers `span_ms / slots` ms.
    pub slots: u32,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            span_ms: 60_000,
            slots: 12,
        }
    }
}

impl WindowConfig {
    /// Checks the configuration, reporting every bad value.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.slots == 0 || self.slots > MAX_SLOTS {
            problems.push(format!("slots must be 1-{MAX_SLOTS}, got {}", self.slots));
        }
        if self.span_ms < u64::from(self.slots.max(1)) {
            problems.push(format!(
                "span_ms must be at least slots ({}), got {}",
                self.slots, self.span_ms
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One slot of a [`Window`]: the outcomes recorded in `[start_ms, start_ms + slot_ms)`.
#[derive(Debug, Clone, Default)]
struct Slot {
    start_ms: u64,
    stats: Stats,
}

/// Outcomes of the last `span_ms` milliseconds, in a ring of time slots.
///
/// Slots are aligned to multiples of the slot width (`span_ms / slots`, at least 1 ms): the slot
/// of time `t` starts at `t - t % width`. At time `now` the window holds the slot of `now` and
/// the `slots - 1` before it; older slots are expired and reused as time moves on. So the
/// window covers between `span - width + 1` and `span` milliseconds of history, where `span` is
/// `width × slots` (which is `span_ms` when `slots` divides it).
///
/// Times may arrive slightly out of order: an outcome older than the newest one is counted in its
/// own slot while that slot is still in the window, and dropped otherwise.
#[derive(Debug, Clone)]
pub struct Window {
    slot_ms: u64,
    slots: Vec<Slot>,
    /// Start of the newest slot recorded into; `None` before the first record.
    newest_start_ms: Option<u64>,
}

impl Window {
    /// Creates an empty window.
    ///
    /// An invalid configuration (see [`WindowConfig::validate`]) is made usable rather than
    /// refused: at least one slot, at most 1,024, and slots at least 1 ms wide.
    pub fn new(config: WindowConfig) -> Window {
        let slots = config.slots.clamp(1, MAX_SLOTS);
        let slot_ms = (config.span_ms / u64::from(slots)).max(1);
        Window {
            slot_ms,
            slots: vec![Slot::default(); slots as usize],
            newest_start_ms: None,
        }
    }

    /// Returns the time the window covers: the slot width times the number of slots.
    pub fn span_ms(&self) -> u64 {
        self.slot_ms.saturating_mul(self.slots.len() as u64)
    }

    /// Returns the width of one slot, in milliseconds.
    pub fn slot_ms(&self) -> u64 {
        self.slot_ms
    }

    /// Counts one finished request at `now_ms`.
    ///
    /// Moving forward in time clears the slots that expired; an outcome older than the window
    /// (relative to the newest one recorded) is dropped.
    pub fn record(&mut self, now_ms: u64, success: bool, latency_ms: u32) {
        let start = now_ms - now_ms % self.slot_ms;
        let span = self.span_ms();
        if self
            .newest_start_ms
            .is_some_and(|newest| newest.saturating_sub(start) >= span)
        {
            return;
        }
        let index = ((now_ms / self.slot_ms) % self.slots.len() as u64) as usize;
        let slot = &mut self.slots[index];
        if slot.start_ms < start {
            // The slot last held the same position one or more turns of the ring ago: expired.
            *slot = Slot {
                start_ms: start,
                stats: Stats::default(),
            };
        } else if slot.start_ms > start {
            // Unreachable given the check above (the slot would be newer than the newest);
            // dropping keeps the ring consistent regardless.
            return;
        }
        slot.stats.record(success, latency_ms);
        self.newest_start_ms = Some(self.newest_start_ms.map_or(start, |n| n.max(start)));
    }

    /// Returns the merged outcomes of the slots overlapping `(now_ms - span_ms, now_ms]`.
    ///
    /// `span_ms` is capped at the window's span, and only the slots of the window at `now_ms`
    /// count (the slot of `now_ms` and the ones before it), so nothing older than the window's
    /// span is ever included. Outcomes recorded at times after `now_ms`, in later slots, are
    /// not included either.
    pub fn stats(&self, now_ms: u64, span_ms: u64) -> Stats {
        let mut merged = Stats::default();
        for slot in self.slots_within(now_ms, span_ms) {
            merged.merge(&slot.stats);
        }
        merged
    }

    /// Returns the requests and the errors of the last `span_ms` (what [`Window::stats`]
    /// counts, without merging latencies).
    pub fn counts(&self, now_ms: u64, span_ms: u64) -> (u64, u64) {
        self.slots_within(now_ms, span_ms)
            .fold((0_u64, 0_u64), |(requests, errors), slot| {
                (
                    requests.saturating_add(slot.stats.requests),
                    errors.saturating_add(slot.stats.errors),
                )
            })
    }

    /// The slots that overlap the last `span_ms` (at most the window's span).
    fn slots_within(&self, now_ms: u64, span_ms: u64) -> impl Iterator<Item = &Slot> {
        let ring = self.span_ms();
        let span = span_ms.min(ring);
        self.slots.iter().filter(move |slot| {
            if span == 0 || slot.start_ms > now_ms {
                return false;
            }
            // Differences rather than sums, which could overflow near the end of time.
            let age = now_ms - slot.start_ms;
            // The slot's last millisecond, `start + width - 1`, is after `now_ms - span`.
            let overlaps = age.saturating_sub(self.slot_ms - 1) < span;
            let in_window = age < ring;
            overlaps && in_window
        })
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        self.slots
            .iter_mut()
            .for_each(|slot| *slot = Slot::default());
        self.newest_start_ms = None;
    }
}

#[cfg(test)]
mod tests;
