//! Circuit breaking and outlier ejection for one instance.
//!
//! An [`InstanceHealth`] follows the outcomes of the requests sent to one instance and says when
//! it should be ejected: after `consecutive_failures` failures in a row, or when at least
//! `min_requests` requests of the last `window_ms` failed at `error_rate` or more. The caller
//! then asks [`may_eject`] whether the pool can spare one more instance and, if so, calls
//! [`InstanceHealth::eject`]. Each ejection of the same instance lasts twice as long as the one
//! before, up to `max_ejection_ms`. `src/analysis/README.md` describes the algorithm.
//!
//! An [`EjectionBook`] does all of it for every instance a router or an SDK hears about: it keeps
//! their [`InstanceHealth`] and applies what it decides to the instances' live load
//! ([`InstanceLoad`](crate::balance::InstanceLoad): ejection, live score).
//!
//! Time is an input (`now_ms`, milliseconds): nothing here reads a clock.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::balance::{Member, Pool};
use crate::outcome::{Stats, Window, WindowConfig};

/// Slots of the error-rate window (each covers a tenth of `window_ms`).
const WINDOW_SLOTS: u32 = 10;

/// When an instance is ejected, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionPolicy {
    /// Failures in a row that eject the instance (0 disables this trigger).
    pub consecutive_failures: u32,
    /// Share of failed requests over `window_ms` that ejects the instance (0.0-1.0, exclusive of
    /// 0).
    pub error_rate: f64,
    /// Requests over `window_ms` needed before the error rate counts.
    pub min_requests: u64,
    /// The time the error rate is measured over, in milliseconds.
    pub window_ms: u64,
    /// Duration of the first ejection, in milliseconds; each further one doubles it.
    pub base_ejection_ms: u64,
    /// The longest ejection, in milliseconds.
    pub max_ejection_ms: u64,
    /// Most instances of a pool ejected at once, in percent of the pool (0-100).
    pub max_ejected_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window_ms: 30_000,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 50,
        }
    }
}

impl EjectionPolicy {
    /// Checks the policy, reporting every bad value.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !(self.error_rate > 0.0 && self.error_rate <= 1.0) {
            problems.push(format!(
                "error_rate must be above 0 and at most 1, got {}",
                self.error_rate
            ));
        }
        if self.min_requests == 0 {
            problems.push("min_requests must be at least 1".to_owned());
        }
        if self.window_ms == 0 {
            problems.push("window_ms must be positive".to_owned());
        }
        if self.base_ejection_ms == 0 {
            problems.push("base_ejection_ms must be positive".to_owned());
        }
        if self.max_ejection_ms < self.base_ejection_ms {
            problems.push(format!(
                "max_ejection_ms ({}) must be at least base_ejection_ms ({})",
                self.max_ejection_ms, self.base_ejection_ms
            ));
        }
        if self.max_ejected_percent > 100 {
            problems.push(format!(
                "max_ejected_percent must be 0-100, got {}",
                self.max_ejected_percent
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Returns how long an instance already ejected `times_ejected` times is ejected next:
    /// `base_ejection_ms × 2^times_ejected`, at most `max_ejection_ms`.
    pub fn ejection_ms(&self, times_ejected: u32) -> u64 {
        let factor = 1u64.checked_shl(times_ejected).unwrap_or(u64::MAX);
        self.base_ejection_ms
            .saturating_mul(factor)
            .min(self.max_ejection_ms)
    }
}

/// Whether one more instance of a pool of `total` may be ejected while `already_ejected` are.
///
/// The rule: `(already_ejected + 1) × 100 ≤ total × max_ejected_percent`, so the ejected
/// instances never exceed `max_ejected_percent` of the pool, rounding down. With 50% a pool of 1
/// never ejects, a pool of 2 or 3 ejects one; with 100% every instance may go. An empty pool
/// ejects nothing.
pub fn may_eject(already_ejected: usize, total: usize, policy: &EjectionPolicy) -> bool {
    let wanted = (already_ejected as u128 + 1) * 100;
    let allowed = total as u128 * u128::from(policy.max_ejected_percent.min(100));
    wanted <= allowed
}

/// The outcomes and ejection state of one instance.
#[derive(Debug, Clone)]
pub struct InstanceHealth {
    /// Outcomes over the policy's window (since the last ejection).
    window: Window,
    /// The `window_ms` the window was built for.
    window_ms: u64,
    consecutive_failures: u32,
    ejected_until_ms: u64,
    times_ejected: u32,
}

impl InstanceHealth {
    /// Creates the state of an instance without outcomes, never ejected.
    pub fn new(policy: &EjectionPolicy) -> Self {
        InstanceHealth {
            window: window_for(policy.window_ms),
            window_ms: policy.window_ms,
            consecutive_failures: 0,
            ejected_until_ms: 0,
            times_ejected: 0,
        }
    }

    /// Counts the outcome of one request at `now_ms` and returns whether the instance should be
    /// ejected now.
    ///
    /// True when the failures in a row reached `consecutive_failures`, or when the window holds
    /// at least `min_requests` requests and their error rate is `error_rate` or more. It stays
    /// true on later outcomes until the instance is ejected (the pool may not spare it yet, see
    /// [`may_eject`]). Never true while ejected: outcomes reported then (requests in flight
    /// when it was ejected) are ignored. The first outcome after an ejection ended clears it
    /// ([`ejected_until_ms`](Self::ejected_until_ms) returns 0 again).
    ///
    /// A `window_ms` different from the one the state was built with restarts the window.
    pub fn record(
        &mut self,
        policy: &EjectionPolicy,
        now_ms: u64,
        success: bool,
        latency_ms: u32,
    ) -> bool {
        if self.is_ejected(now_ms) {
            return false;
        }
        self.ejected_until_ms = 0;
        self.follow(policy);
        self.consecutive_failures = if success {
            0
        } else {
            self.consecutive_failures.saturating_add(1)
        };
        self.window.record(now_ms, success, latency_ms);
        let by_failures = policy.consecutive_failures > 0
            && self.consecutive_failures >= policy.consecutive_failures;
        let (requests, errors) = self.window.counts(now_ms, policy.window_ms);
        let stats = Stats {
            requests,
            errors,
            ..Stats::default()
        };
        let by_error_rate =
            stats.requests >= policy.min_requests.max(1) && stats.error_rate() >= policy.error_rate;
        by_failures || by_error_rate
    }

    /// Ejects the instance and returns the end of the ejection (`ejected_until_ms`).
    ///
    /// The ejection lasts [`EjectionPolicy::ejection_ms`] of the times the instance was ejected
    /// before (30 s, 60 s, 120 s, ... up to 300 s by default), and the instance comes back with
    /// a clean slate: no failures in a row, an empty window. Ejecting an instance already
    /// ejected changes nothing and returns the current end.
    pub fn eject(&mut self, policy: &EjectionPolicy, now_ms: u64) -> u64 {
        if self.is_ejected(now_ms) {
            return self.ejected_until_ms;
        }
        self.ejected_until_ms = now_ms.saturating_add(policy.ejection_ms(self.times_ejected));
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.consecutive_failures = 0;
        self.window_ms = policy.window_ms;
        self.window = window_for(policy.window_ms);
        self.ejected_until_ms
    }

    /// Whether the instance is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms
    }

    /// Returns the end of the current ejection, 0 when not ejected.
    ///
    /// An ejection that ended is cleared by the next outcome recorded, so until then this
    /// returns a time in the past: ask [`is_ejected`](Self::is_ejected) with the time.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms
    }

    /// Returns how many times the instance was ejected.
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Returns the failures in a row since the last success (or ejection).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Returns the outcomes over the policy's window at `now_ms` (since the last ejection).
    pub fn stats(&self, now_ms: u64) -> Stats {
        self.window.stats(now_ms, self.window_ms)
    }

    /// Returns the health score (0-100) at `now_ms`: 0 while ejected, 100 without outcomes,
    /// otherwise the percentage of successful requests over the policy's window, rounded down.
    pub fn health_score(&self, now_ms: u64) -> u8 {
        if self.is_ejected(now_ms) {
            return 0;
        }
        let stats = self.stats(now_ms);
        if stats.requests == 0 {
            return 100;
        }
        let successes = stats.requests - stats.errors.min(stats.requests);
        (u128::from(successes) * 100 / u128::from(stats.requests)) as u8
    }

    /// Rebuilds the window when the policy's `window_ms` changed.
    fn follow(&mut self, policy: &EjectionPolicy) {
        if policy.window_ms != self.window_ms {
            self.window_ms = policy.window_ms;
            self.window = window_for(policy.window_ms);
        }
    }
}

/// An ejection an outcome caused, for the caller to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// The end of the ejection (milliseconds since the Unix epoch).
    pub until_ms: u64,
    /// How many times the instance was ejected, this one included.
    pub times: u32,
}

/// The outlier-ejection bookkeeping of every instance one process hears outcomes of: the
/// [`InstanceHealth`] of each, by (service, instance id).
///
/// Plain data: a process shares one behind its own lock. The instances' live load (ejection,
/// live score) is what the pickers read; [`record`](Self::record) keeps it in step.
#[derive(Debug, Clone, Default)]
pub struct EjectionBook {
    /// Service -> instance id -> health: looked up by `&str`, so a known instance costs no
    /// allocation.
    services: HashMap<String, HashMap<String, InstanceHealth>>,
}

impl EjectionBook {
    /// Returns a book that knows no instance.
    pub fn new() -> Self {
        EjectionBook::default()
    }

    /// Counts the outcome of one request `member` (of `pool`) served at `now_ms`, and applies
    /// the policy to the member's live load. Returns the ejection it caused, if any.
    ///
    /// The steps: [`InstanceHealth::record`] the outcome (the instance's service and id name
    /// it); when that says eject and [`may_eject`] lets the pool spare one more instance (the
    /// members ejected at `now_ms` count against `max_ejected_percent`),
    /// [`InstanceHealth::eject`] it and set [`eject_until`] on its load; in every case set its
    /// [`live score`](crate::balance::InstanceLoad::set_live_score) to the
    /// [`health score`](InstanceHealth::health_score) at `now_ms`.
    ///
    /// In-flight counts are not touched: who counted the request finishes it.
    ///
    /// [`eject_until`]: crate::balance::InstanceLoad::eject_until
    pub fn record(
        &mut self,
        policy: &EjectionPolicy,
        pool: &Pool,
        member: &Member,
        success: bool,
        latency_ms: u32,
        now_ms: u64,
    ) -> Option<Ejection> {
        let health = self.health_mut(policy, &member.instance.service, &member.instance.id);
        let mut ejection = None;
        if health.record(policy, now_ms, success, latency_ms) {
            let members = pool.members();
            let ejected = members.iter().filter(|m| m.load.is_ejected(now_ms)).count();
            if may_eject(ejected, members.len(), policy) {
                let until_ms = health.eject(policy, now_ms);
                member.load.eject_until(until_ms);
                ejection = Some(Ejection {
                    until_ms,
                    times: health.times_ejected(),
                });
            }
        }
        member.load.set_live_score(health.health_score(now_ms));
        ejection
    }

    /// Returns what the book knows of an instance.
    pub fn health(&self, service: &str, instance_id: &str) -> Option<&InstanceHealth> {
        self.services.get(service)?.get(instance_id)
    }

    /// Returns the number of instances the book knows.
    pub fn len(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    /// Whether the book knows no instance.
    pub fn is_empty(&self) -> bool {
        self.services.values().all(HashMap::is_empty)
    }

    fn health_mut(
        &mut self,
        policy: &EjectionPolicy,
        service: &str,
        instance_id: &str,
    ) -> &mut InstanceHealth {
        if !self.services.contains_key(service) {
            self.services.insert(service.to_owned(), HashMap::new());
        }
        let instances = self
            .services
            .get_mut(service)
            .unwrap_or_else(|| unreachable!("inserted above"));
        if !instances.contains_key(instance_id) {
            instances.insert(instance_id.to_owned(), InstanceHealth::new(policy));
        }
        instances
            .get_mut(instance_id)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }
}

/// Returns an empty window of `window_ms` in (at most) [`WINDOW_SLOTS`] slots.
fn window_for(window_ms: u64) -> Window {
    let slots = WINDOW_SLOTS.min(u32::try_from(window_ms.max(1)).unwrap_or(u32::MAX));
    Window::new(WindowConfig {
        span_ms: window_ms,
        slots,
    })
}

#[cfg(test)]
mod tests;
