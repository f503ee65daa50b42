//! Rate limits: token buckets, one per key, in a table of bounded size.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens per second; a call takes one
//! token or is refused with the time until one is there. Time is an input (milliseconds on any
//! monotonic clock), so every rule is tested without sleeping.
//!
//! Memory is bounded by [`Buckets::new`]'s `max_keys`, never by the number of callers: a full
//! bucket is the same as a fresh one, so when the table is full, full buckets are dropped to
//! make room; when none is full, new keys share one overflow bucket (they are limited together
//! rather than not at all).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A rate: `per_second` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens gained per second; 0 turns the limit off.
    pub per_second: f64,
    /// Most tokens saved up (the largest burst of calls admitted at once).
    pub burst: f64,
}

impl Rate {
    /// Whether this rate limits anything.
    pub fn is_limited(&self) -> bool {
        self.per_second > 0.0
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst.max(1.0),
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst.max(1.0));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token; or answers how many milliseconds until one is there.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        if !rate.is_limited() {
            return Ok(());
        }
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_second * 1000.0;
            Err((wait.ceil() as u64).max(1))
        }
    }

    /// Whether the bucket is full at `now_ms` (then it is the same as a fresh one).
    pub fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        let mut bucket = *self;
        bucket.refill(rate, now_ms);
        bucket.tokens >= rate.burst.max(1.0)
    }
}

/// Least time between two sweeps of full buckets out of a full table.
const SWEEP_EVERY_MS: u64 = 100;

/// Token buckets by key, at most `max_keys` of them.
#[derive(Debug, Clone)]
pub struct Buckets<K> {
    rate: Rate,
    max_keys: usize,
    /// Keys come from callers: a randomly seeded hash, fast on short keys.
    buckets: HashMap<K, TokenBucket, foldhash::fast::RandomState>,
    overflow: TokenBucket,
    swept_ms: Option<u64>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// An empty table of buckets of `rate`, holding at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize, now_ms: u64) -> Buckets<K> {
        Buckets {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::default(),
            overflow: TokenBucket::full(rate, now_ms),
            swept_ms: None,
        }
    }

    /// Takes one token of `key`'s bucket; or answers how many milliseconds until one is there.
    pub fn take<Q>(&mut self, key: &Q, now_ms: u64) -> Result<(), u64>
    where
        K: Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        let rate = self.rate;
        if !rate.is_limited() {
            return Ok(());
        }
        if let Some(bucket) = self.buckets.get_mut(key) {
            return bucket.take(rate, now_ms);
        }
        // Sweeping is linear in the table: at most every 100 ms, so a flood of new keys
        // costs no more than one sweep per interval.
        let due = self
            .swept_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= SWEEP_EVERY_MS);
        if self.buckets.len() >= self.max_keys && due {
            self.buckets
                .retain(|_, bucket| !bucket.is_full(rate, now_ms));
            self.swept_ms = Some(now_ms);
        }
        if self.buckets.len() >= self.max_keys {
            return self.overflow.take(rate, now_ms);
        }
        let mut bucket = TokenBucket::full(rate, now_ms);
        let taken = bucket.take(rate, now_ms);
        self.buckets.insert(K::from(key), bucket);
        taken
    }

    /// Keys with a bucket of their own.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket of its own.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_bucket_admits_its_burst_then_refuses_with_the_wait() {
        let mut bucket = TokenBucket::full(RATE, 0);
        for _ in 0..5 {
            assert_eq!(bucket.take(RATE, 0), Ok(()));
        }
        // One token every 100 ms.
        assert_eq!(bucket.take(RATE, 0), Err(100));
        assert_eq!(bucket.take(RATE, 50), Err(50));
        assert_eq!(bucket.take(RATE, 100), Ok(()));
        assert_eq!(bucket.take(RATE, 100), Err(100));
    }

    #[test]
    fn an_unlimited_rate_admits_everything() {
        let off = Rate {
            per_second: 0.0,
            burst: 0.0,
        };
        let mut buckets = Buckets::<String>::new(off, 1, 0);
        for key in 0..1000 {
            assert_eq!(buckets.take(key.to_string().as_str(), 0), Ok(()));
        }
        assert!(buckets.is_empty());
    }

    #[test]
    fn keys_are_limited_apart() {
        let mut buckets = Buckets::<String>::new(RATE, 100, 0);
        for _ in 0..5 {
            assert_eq!(buckets.take("a", 0), Ok(()));
        }
        assert!(buckets.take("a", 0).is_err());
        assert_eq!(buckets.take("b", 0), Ok(()));
    }

    #[test]
    fn a_full_table_drops_full_buckets_then_shares_the_overflow_bucket() {
        let mut buckets = Buckets::<String>::new(RATE, 2, 0);
        assert_eq!(buckets.take("1", 0), Ok(()));
        assert_eq!(buckets.take("2", 0), Ok(()));
        // Neither is full: key 3 goes to the overflow bucket, which it shares with key 4.
        for _ in 0..5 {
            assert_eq!(buckets.take("3", 0), Ok(()));
        }
        assert!(buckets.take("4", 0).is_err());
        assert_eq!(buckets.len(), 2);
        // A second later both refilled: they make room for key 3's own bucket.
        assert_eq!(buckets.take("3", 1000), Ok(()));
        assert_eq!(buckets.len(), 1);
    }

    proptest! {
        /// Over any span, a bucket admits at most its burst plus what the rate refills.
        #[test]
        fn admitted_calls_never_exceed_burst_plus_rate(
            steps in proptest::collection::vec(0u64..50, 1..500),
            per_second in 1.0f64..1000.0,
            burst in 1.0f64..100.0,
        ) {
            let rate = Rate { per_second, burst };
            let mut bucket = TokenBucket::full(rate, 0);
            let mut now = 0;
            let mut admitted = 0u64;
            for step in steps {
                now += step;
                if bucket.take(rate, now).is_ok() {
                    admitted += 1;
                }
            }
            let most = burst + per_second * now as f64 / 1000.0;
            prop_assert!(admitted as f64 <= most + 1e-6, "{admitted} > {most}");
        }

        /// The table never holds more keys than its bound, whatever keys arrive.
        #[test]
        fn the_table_stays_bounded(keys in proptest::collection::vec(0u32..10_000, 1..2000)) {
            let mut buckets = Buckets::<String>::new(RATE, 64, 0);
            for (at, key) in keys.iter().enumerate() {
                let _ = buckets.take(key.to_string().as_str(), at as u64);
                prop_assert!(buckets.len() <= 64);
            }
        }
    }
}
