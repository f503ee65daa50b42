//! How often each tenant is asked for: uniformly, or with Zipf's law (a few hot tenants).
//!
//! Zipf sampling precomputes the cumulative distribution once (`n` floats, 80 KB for 10,000
//! tenants) and answers each draw with one uniform value and a binary search over it: about
//! `log2(n)` comparisons, no allocation, and the table is shared read-only by every worker.

use serde::Serialize;

use crate::rng::SplitMix64;

/// Which keys are asked for, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    /// Every key equally often.
    Uniform,
    /// Key of rank `k` (1-based) with probability proportional to `1 / k^s`: rank 1 is the
    /// hottest. `s = 0` is uniform; `s = 1` is the classic Zipf law.
    Zipf {
        /// The exponent.
        s: f64,
    },
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipf { s } => write!(f, "zipf (s={s})"),
        }
    }
}

/// Draws key indices in `0..n` following a [`Distribution`].
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Uniform over `0..n`.
    Uniform {
        /// Number of keys.
        n: usize,
    },
    /// Inverse-CDF sampling: `cdf[i]` is the probability of an index `<= i`; the last is 1.
    Zipf {
        /// Cumulative probabilities, non-decreasing, ending at exactly 1.
        cdf: Vec<f64>,
    },
}

impl Sampler {
    /// Returns a sampler over `n` keys (`n > 0`, and for Zipf a finite `s >= 0`, which
    /// [`crate::run::RunConfig::validate`] checks).
    pub fn new(distribution: Distribution, n: usize) -> Sampler {
        match distribution {
            Distribution::Uniform => Sampler::Uniform { n },
            Distribution::Zipf { s } => Sampler::Zipf {
                cdf: zipf_cdf(n, s),
            },
        }
    }

    /// Returns the number of keys.
    pub fn len(&self) -> usize {
        match self {
            Sampler::Uniform { n } => *n,
            Sampler::Zipf { cdf } => cdf.len(),
        }
    }

    /// Returns whether there are no keys to draw.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the index of the next key: `0` is the hottest under Zipf.
    #[inline]
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        match self {
            Sampler::Uniform { n } => rng.below(*n),
            Sampler::Zipf { cdf } => {
                let u = rng.next_f64();
                // The first index whose cumulative probability exceeds u.
                cdf.partition_point(|&p| p <= u).min(cdf.len() - 1)
            }
        }
    }
}

/// Returns the cumulative distribution of Zipf's law over `n` ranks with exponent `s`.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0_f64;
    for rank in 1..=n {
        total += (rank as f64).powf(-s);
        cdf.push(total);
    }
    for p in &mut cdf {
        *p /= total;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn histogram(sampler: &Sampler, draws: usize, seed: u64) -> Vec<usize> {
        let mut rng = SplitMix64::new(seed);
        let mut counts = vec![0; sampler.len()];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng)] += 1;
        }
        counts
    }

    fn harmonic(n: usize, s: f64) -> f64 {
        (1..=n).map(|k| (k as f64).powf(-s)).sum()
    }

    #[test]
    fn uniform_covers_the_range_evenly() {
        let sampler = Sampler::new(Distribution::Uniform, 10);
        let draws = 200_000;
        let counts = histogram(&sampler, draws, 3);
        let expected = draws / 10;
        for (i, &count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(expected) < expected / 20,
                "index {i}: {count} draws, expected about {expected}"
            );
        }
    }

    #[test]
    fn zipf_is_skewed_towards_low_ranks() {
        let n = 1_000;
        let sampler = Sampler::new(Distribution::Zipf { s: 1.0 }, n);
        let draws = 400_000;
        let counts = histogram(&sampler, draws, 11);
        let share = |range: std::ops::Range<usize>| {
            counts[range].iter().sum::<usize>() as f64 / draws as f64
        };
        let h = harmonic(n, 1.0);
        // Rank 1 alone takes 1/H(n) = 13.4% of draws; the top 1% of keys take H(10)/H(n) = 39%.
        assert!((share(0..1) - 1.0 / h).abs() < 0.005, "{}", share(0..1));
        assert!((share(0..10) - harmonic(10, 1.0) / h).abs() < 0.01);
        // Rank k is drawn about k times less often than rank 1.
        let ratio = counts[0] as f64 / counts[9] as f64;
        assert!((8.5..11.5).contains(&ratio), "rank 1 / rank 10 = {ratio}");
        assert!(counts[0] > counts[1] && counts[1] > counts[2]);
        // The cold half of the keys gets only about ln(2)/H(n) = 9% of the draws.
        assert!(share(n / 2..n) < 0.11, "{}", share(n / 2..n));
    }

    #[test]
    fn zipf_with_zero_exponent_is_uniform() {
        let sampler = Sampler::new(Distribution::Zipf { s: 0.0 }, 10);
        let draws = 200_000;
        let counts = histogram(&sampler, draws, 5);
        let expected = draws / 10;
        for &count in &counts {
            assert!(count.abs_diff(expected) < expected / 20, "{counts:?}");
        }
    }

    #[test]
    fn larger_exponent_concentrates_more() {
        let n = 10_000;
        let top = |s| {
            let counts = histogram(&Sampler::new(Distribution::Zipf { s }, n), 100_000, 1);
            counts[0]
        };
        assert!(top(1.2) > top(1.0));
        assert!(top(1.0) > top(0.5));
    }

    #[test]
    fn zipf_cdf_ends_at_one_and_never_decreases() {
        let cdf = zipf_cdf(10_000, 1.0);
        assert_eq!(cdf.len(), 10_000);
        assert_eq!(cdf.last().copied(), Some(1.0));
        assert!(cdf.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn displays_its_name() {
        assert_eq!(Distribution::Uniform.to_string(), "uniform");
        assert_eq!(Distribution::Zipf { s: 1.0 }.to_string(), "zipf (s=1)");
    }

    proptest! {
        #[test]
        fn samples_stay_in_range(
            n in 1_usize..2_000,
            s in 0.0_f64..3.0,
            zipf in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let distribution = if zipf { Distribution::Zipf { s } } else { Distribution::Uniform };
            let sampler = Sampler::new(distribution, n);
            let mut rng = SplitMix64::new(seed);
            for _ in 0..200 {
                prop_assert!(sampler.sample(&mut rng) < n);
            }
        }
    }
}
