//! Stable hashing and bucketing, and per-thread [`entropy`] for picks.
//!
//! The hash is FNV-1a (64 bit) over the parts, each followed by a `0xff` separator byte (which
//! never occurs in UTF-8), finished with MurmurHash3's `fmix64` so that similar inputs spread over
//! the whole range. It is specified here, not borrowed from `std`, so it never changes between
//! releases, and any client in any language can compute the same buckets.

/// Number of buckets tenants are hashed into for rollouts and experiments (basis points).
pub const BUCKETS: u32 = 10_000;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Returns the stable 64-bit hash of a sequence of byte strings.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash = FNV_OFFSET;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Maps a 64-bit value uniformly onto `0..n` (Lemire's multiply-shift), `n > 0`.
pub fn reduce(value: u64, n: u64) -> u64 {
    ((u128::from(value) * u128::from(n)) >> 64) as u64
}

/// Returns a fresh random value for a pick's `entropy`: splitmix64 over a per-thread state,
/// seeded from std's [`RandomState`](std::hash::RandomState) the first time a thread asks.
///
/// For the callers that decide (routers, SDKs): routing itself still takes its randomness as an
/// input. A few nanoseconds, no lock, no system call after a thread's first; not for secrets.
pub fn entropy() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};

    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64));
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        fmix64(next)
    })
}

/// Returns the bucket (`0..BUCKETS`) of a tenant for a salted purpose.
///
/// `domain` separates purposes ("rollout", "experiment") so that a rollout and an experiment with
/// the same salt still bucket tenants independently.
pub fn bucket(domain: &str, salt: &str, tenant_id: &str) -> u32 {
    let hash = stable_hash(&[domain.as_bytes(), salt.as_bytes(), tenant_id.as_bytes()]);
    reduce(hash, u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_stable_across_releases() {
        // Pinned values, computed once (and cross-checked with an independent implementation of
        // the algorithm in the module docs): changing the offset, the prime, the separator or the
        // finaliser would move every tenant of every rollout, and fails here.
        let hashes: [(&[&[u8]], u64); 5] = [
            (&[], 0xefd0_1f60_ba99_2926),
            (&[b""], 0x1bbd_5c81_3c69_a8d7),
            (&[b"tenant-1"], 0xb260_cc34_54ca_6610),
            (&[b"ab", b"c"], 0x04f3_60e5_0ae8_8219),
            (&[b"a", b"bc"], 0x0b1a_b3f8_db79_4b96),
        ];
        for (parts, expected) in hashes {
            assert_eq!(stable_hash(parts), expected, "stable_hash({parts:?})");
        }
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
        let buckets = [
            (("rollout", "r1", "acme"), 1812),
            (("rollout", "r1", "globex"), 5587),
            (("experiment", "r1", "acme"), 8800),
            (("rollout", "canary-2024", "tenant-42"), 4853),
            (("rollout", "", ""), 7914),
        ];
        for ((domain, salt, tenant), expected) in buckets {
            assert_eq!(
                bucket(domain, salt, tenant),
                expected,
                "bucket({domain:?}, {salt:?}, {tenant:?})"
            );
        }
    }

    #[test]
    fn domains_separate_rollouts_from_experiments() {
        let same = (0..2_000)
            .filter(|i| {
                let tenant = format!("tenant-{i}");
                bucket("rollout", "x", &tenant) == bucket("experiment", "x", &tenant)
            })
            .count();
        // Independent buckets coincide with probability 1/10,000.
        assert!(same < 5, "{same} tenants share buckets across domains");
    }

    #[test]
    fn buckets_are_uniform() {
        // 100,000 tenants into 10 deciles of the bucket space: each within 5% of 10,000.
        let mut deciles = [0u32; 10];
        for i in 0..100_000 {
            let b = bucket("rollout", "salt", &format!("tenant-{i}"));
            deciles[(b / 1_000) as usize] += 1;
        }
        for count in deciles {
            assert!((9_500..=10_500).contains(&count), "{deciles:?}");
        }
    }

    #[test]
    fn entropy_differs_between_calls_and_threads() {
        let here: Vec<u64> = (0..64).map(|_| entropy()).collect();
        let distinct: std::collections::BTreeSet<_> = here.iter().collect();
        assert_eq!(distinct.len(), here.len());
        let there = std::thread::spawn(|| (0..64).map(|_| entropy()).collect::<Vec<u64>>())
            .join()
            .expect("the thread ends");
        assert!(here.iter().all(|value| !there.contains(value)));
        // Spread over the whole range: both halves, both parities.
        assert!(here.iter().any(|v| v >> 63 == 1) && here.iter().any(|v| v >> 63 == 0));
        assert!(here.iter().any(|v| v & 1 == 1) && here.iter().any(|v| v & 1 == 0));
    }

    proptest! {
        #[test]
        fn reduce_stays_in_range(value: u64, n in 1u64..u64::MAX) {
            prop_assert!(reduce(value, n) < n);
        }

        #[test]
        fn bucket_stays_in_range(salt in ".{0,20}", tenant in ".{0,40}") {
            prop_assert!(bucket("rollout", &salt, &tenant) < BUCKETS);
        }
    }
}
