use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
// The model `Strategy` by name; proptest's `Strategy` trait for its methods only.
use proptest::strategy::Strategy as _;

use super::*;
use crate::Strategy;

/// A deterministic stream of entropy for repeatable statistical tests.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        fmix64(self.0)
    }
}

fn instance(id: &str, weight: u32, region: &str, healthy: bool) -> Arc<Instance> {
    Arc::new(Instance {
        id: id.into(),
        address: format!("{id}.internal:8080"),
        service: "api".into(),
        version: "v1".into(),
        weight,
        region: region.into(),
        zone: String::new(),
        metadata: BTreeMap::new(),
        healthy,
        health_score: 100,
    })
}

fn pick<'p>(
    pool: &'p Pool,
    strategy: Strategy,
    region: &str,
    key: &str,
    rng: &mut SplitMix,
) -> Option<&'p str> {
    pool.pick(&PickRequest {
        strategy,
        region,
        hash_key: key,
        entropy: rng.next(),
        now_ms: 0,
    })
    .map(|m| m.instance.id.as_str())
}

fn counts(pool: &Pool, strategy: Strategy, picks: usize) -> HashMap<String, usize> {
    let mut rng = SplitMix(7);
    let mut counts = HashMap::new();
    for i in 0..picks {
        let key = format!("key-{i}");
        if let Some(id) = pick(pool, strategy, "", &key, &mut rng) {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn weighted_round_robin_interleaves_five_one_one() {
    let pool = Pool::new(
        [
            instance("a", 5, "", true),
            instance("b", 1, "", true),
            instance("c", 1, "", true),
        ],
        None,
    );
    let mut rng = SplitMix(1);
    let sequence: String = (0..14)
        .map(|_| pick(&pool, Strategy::WeightedRoundRobin, "", "", &mut rng).unwrap_or("?"))
        .collect();
    assert_eq!(sequence, "aabacaaaabacaa");
    // Bursting would give five of `a` in a row.
    assert!(!sequence.contains("aaaaa"), "{sequence}");
}

#[test]
fn round_robin_rotates_in_id_order_within_each_region() {
    let pool = Pool::new(
        [
            instance("us-1", 1, "us", true),
            instance("eu-3", 1, "eu", true),
            instance("eu-1", 1, "eu", true),
            instance("eu-2", 1, "eu", true),
        ],
        None,
    );
    let mut rng = SplitMix(23);
    let everyone = ["eu-1", "eu-2", "eu-3", "us-1"];
    let in_eu = ["eu-1", "eu-2", "eu-3"];
    // Each candidate set keeps its own turn: picks in eu do not skip anyone's turn in all.
    for turn in 0..12 {
        assert_eq!(
            pick(&pool, Strategy::RoundRobin, "eu", "", &mut rng),
            Some(in_eu[turn % 3]),
            "eu, turn {turn}"
        );
        assert_eq!(
            pick(&pool, Strategy::RoundRobin, "", "", &mut rng),
            Some(everyone[turn % 4]),
            "all, turn {turn}"
        );
    }
}

#[test]
fn drained_and_unhealthy_instances_are_skipped() {
    let pool = Pool::new(
        [
            instance("a", 0, "", true),
            instance("b", 1, "", false),
            instance("c", 1, "", true),
        ],
        None,
    );
    for strategy in Strategy::ALL {
        let picked = counts(&pool, strategy, 50);
        assert_eq!(picked.keys().collect::<Vec<_>>(), vec!["c"], "{strategy}");
    }
}

#[test]
fn no_eligible_instance_gives_none() {
    let pool = Pool::new(
        [instance("a", 0, "", true), instance("b", 1, "", false)],
        None,
    );
    assert!(!pool.has_eligible());
    let mut rng = SplitMix(3);
    for strategy in Strategy::ALL {
        assert_eq!(pick(&pool, strategy, "", "k", &mut rng), None);
    }
}

#[test]
fn region_is_preferred_then_fails_over() {
    let pool = Pool::new(
        [
            instance("eu-1", 1, "eu", true),
            instance("eu-2", 1, "eu", false),
            instance("us-1", 1, "us", true),
            instance("ap-1", 1, "ap", false),
        ],
        None,
    );
    let mut rng = SplitMix(5);
    for strategy in Strategy::ALL {
        for _ in 0..20 {
            assert_eq!(pick(&pool, strategy, "eu", "k", &mut rng), Some("eu-1"));
        }
        // No healthy instance in ap: any healthy instance serves.
        let other = pick(&pool, strategy, "ap", "k", &mut rng);
        assert!(
            matches!(other, Some("eu-1" | "us-1")),
            "{strategy}: {other:?}"
        );
    }
}

#[test]
fn least_connections_prefers_the_idle_instance() {
    let pool = Pool::new(
        [instance("a", 1, "", true), instance("b", 1, "", true)],
        None,
    );
    for _ in 0..10 {
        pool.members()[0].load.start(0);
    }
    let picked = counts(&pool, Strategy::LeastConnections, 100);
    assert_eq!(picked.get("b"), Some(&100));
    // Finishing never goes below zero.
    let idle = &pool.members()[1].load;
    idle.finish(0);
    assert_eq!(idle.in_flight(0), 0);
}

#[test]
fn load_survives_a_rebuild() {
    let first = Pool::new([instance("a", 1, "", true)], None);
    first.members()[0].load.start(0);
    let second = Pool::new(
        [instance("a", 2, "", true), instance("b", 1, "", true)],
        Some(&first),
    );
    assert_eq!(second.member("a").map(|m| m.load.in_flight(0)), Some(1));
    assert_eq!(second.member("b").map(|m| m.load.in_flight(0)), Some(0));
}

#[test]
fn health_aware_follows_scores() {
    let mut low = (*instance("low", 1, "", true)).clone();
    low.health_score = 20;
    let pool = Pool::new([Arc::new(low), instance("high", 1, "", true)], None);
    let picked = counts(&pool, Strategy::HealthAware, 12_000);
    // Expected 2,000 vs 10,000.
    let low = picked.get("low").copied().unwrap_or(0);
    assert!((1_800..=2_200).contains(&low), "{picked:?}");
}

/// Ejects the named instances until `until_ms`.
fn eject(pool: &Pool, ids: &[&str], until_ms: u64) {
    for id in ids {
        if let Some(member) = pool.member(id) {
            member.load.eject_until(until_ms);
        }
    }
}

fn pick_at<'p>(
    pool: &'p Pool,
    strategy: Strategy,
    region: &str,
    key: &str,
    now_ms: u64,
    rng: &mut SplitMix,
) -> Option<&'p str> {
    pool.pick(&PickRequest {
        strategy,
        region,
        hash_key: key,
        entropy: rng.next(),
        now_ms,
    })
    .map(|m| m.instance.id.as_str())
}

#[test]
fn an_ejected_instance_alone_in_its_region_fails_over_to_another_region() {
    // The case found by the hostile-input review: a tenant's region holds one instance, ejected, while a healthy
    // instance exists elsewhere. The old pick ignored the ejection (panic mode within the region).
    let pool = Pool::new(
        [
            instance("eu-1", 1, "eu", true),
            instance("us-1", 1, "us", true),
        ],
        None,
    );
    eject(&pool, &["eu-1"], 1_000);
    let mut rng = SplitMix(11);
    for strategy in Strategy::ALL {
        for n in 0..20 {
            let key = format!("k{n}");
            assert_eq!(
                pick_at(&pool, strategy, "eu", &key, 500, &mut rng),
                Some("us-1"),
                "{strategy}"
            );
        }
        // Once the ejection ends, the region is preferred again.
        assert_eq!(
            pick_at(&pool, strategy, "eu", "k", 1_000, &mut rng),
            Some("eu-1"),
            "{strategy}"
        );
    }
}

#[test]
fn an_ejected_instance_passes_its_turn_within_the_region_first() {
    let pool = Pool::new(
        [
            instance("eu-1", 1, "eu", true),
            instance("eu-2", 1, "eu", true),
            instance("us-1", 1, "us", true),
        ],
        None,
    );
    eject(&pool, &["eu-1"], 1_000);
    let mut rng = SplitMix(13);
    for strategy in Strategy::ALL {
        for n in 0..20 {
            let key = format!("k{n}");
            assert_eq!(
                pick_at(&pool, strategy, "eu", &key, 0, &mut rng),
                Some("eu-2"),
                "{strategy}"
            );
        }
    }
}

#[test]
fn failover_skips_ejected_instances_of_other_regions() {
    let pool = Pool::new(
        [
            instance("ap-1", 1, "ap", true),
            instance("eu-1", 1, "eu", true),
            instance("eu-2", 1, "eu", true),
            instance("us-1", 1, "us", true),
        ],
        None,
    );
    eject(&pool, &["eu-1", "eu-2", "ap-1"], 1_000);
    let mut rng = SplitMix(17);
    for strategy in Strategy::ALL {
        for n in 0..20 {
            let key = format!("k{n}");
            assert_eq!(
                pick_at(&pool, strategy, "eu", &key, 0, &mut rng),
                Some("us-1"),
                "{strategy}"
            );
        }
    }
}

#[test]
fn panic_mode_only_when_every_region_is_ejected_and_stays_in_the_preferred_region() {
    let pool = Pool::new(
        [
            instance("eu-1", 1, "eu", true),
            instance("eu-2", 1, "eu", true),
            instance("us-1", 1, "us", true),
            // Not eligible: its not being ejected does not end panic mode.
            instance("us-2", 1, "us", false),
        ],
        None,
    );
    eject(&pool, &["eu-1", "eu-2", "us-1"], 1_000);
    let mut rng = SplitMix(19);
    for strategy in Strategy::ALL {
        for n in 0..20 {
            let key = format!("k{n}");
            let picked = pick_at(&pool, strategy, "eu", &key, 0, &mut rng);
            assert!(
                matches!(picked, Some("eu-1" | "eu-2")),
                "{strategy}: {picked:?}"
            );
        }
        // Without a preferred region, panic mode picks among every eligible instance.
        let picked = pick_at(&pool, strategy, "", "k", 0, &mut rng);
        assert!(
            matches!(picked, Some("eu-1" | "eu-2" | "us-1")),
            "{strategy}: {picked:?}"
        );
    }
}

fn instances_strategy() -> impl proptest::strategy::Strategy<Value = Vec<Arc<Instance>>> {
    prop::collection::vec(
        (
            0u32..6,
            prop::sample::select(vec!["", "eu", "us"]),
            any::<bool>(),
        ),
        1..24,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (weight, region, healthy))| {
                instance(&format!("i{i:02}"), weight, region, healthy)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Never an unhealthy or drained instance while an eligible one exists; the preferred
    /// region's eligible instances whenever it has one.
    #[test]
    fn picks_are_eligible_and_regional(
        instances in instances_strategy(),
        region in prop::sample::select(vec!["", "eu", "us", "ap"]),
        seed: u64,
    ) {
        let pool = Pool::new(instances.clone(), None);
        let any_eligible = instances.iter().any(|i| i.is_eligible());
        let regional = !region.is_empty() && instances.iter().any(|i| i.is_eligible() && i.region == region);
        let mut rng = SplitMix(seed);
        for strategy in Strategy::ALL {
            for n in 0..8 {
                let picked = pool.pick(&PickRequest { strategy, region, hash_key: &format!("k{n}"), entropy: rng.next() , now_ms: 0});
                prop_assert_eq!(picked.is_some(), any_eligible);
                if let Some(member) = picked {
                    prop_assert!(member.instance.is_eligible());
                    if regional {
                        prop_assert_eq!(&member.instance.region, region);
                    }
                }
            }
        }
    }

    /// Ejection after region preference: the picked instance is not ejected whenever any
    /// eligible instance anywhere is not ejected, and it is in the preferred region whenever
    /// that region has a non-ejected eligible instance.
    #[test]
    fn picks_avoid_ejected_instances_across_regions(
        instances in instances_strategy(),
        ejected in prop::collection::vec(any::<bool>(), 24),
        region in prop::sample::select(vec!["", "eu", "us", "ap"]),
        seed: u64,
    ) {
        let pool = Pool::new(instances.clone(), None);
        let now_ms = 1_000;
        for (instance, &ejected) in instances.iter().zip(&ejected) {
            if let Some(member) = pool.member(&instance.id) {
                member.load.eject_until(if ejected { now_ms + 1 } else { now_ms });
            }
        }
        let is_ejected = |id: &str| pool.member(id).is_some_and(|m| m.load.is_ejected(now_ms));
        let usable = |i: &Instance| i.is_eligible() && !is_ejected(&i.id);
        let any_usable = instances.iter().any(|i| usable(i));
        let regional = !region.is_empty() && instances.iter().any(|i| usable(i) && i.region == region);
        let mut rng = SplitMix(seed);
        for strategy in Strategy::ALL {
            for n in 0..8 {
                let picked = pool.pick(&PickRequest { strategy, region, hash_key: &format!("k{n}"), entropy: rng.next(), now_ms });
                prop_assert_eq!(picked.is_some(), pool.has_eligible());
                if let Some(member) = picked {
                    prop_assert!(member.instance.is_eligible());
                    if any_usable {
                        prop_assert!(!member.load.is_ejected(now_ms), "{}: picked ejected {}", strategy, member.instance.id);
                    }
                    if regional {
                        prop_assert_eq!(&member.instance.region, region);
                    }
                }
            }
        }
    }

    /// Over one schedule cycle every instance gets exactly its share of the reduced weights,
    /// and at every prefix no instance is more than two turns ahead of or behind its share.
    #[test]
    fn weighted_round_robin_is_exact_and_smooth(weights in prop::collection::vec(1u32..20, 1..12)) {
        let instances: Vec<_> = weights.iter().enumerate()
            .map(|(i, &w)| instance(&format!("i{i:02}"), w, "", true)).collect();
        let pool = Pool::new(instances, None);
        let divisor = weights.iter().copied().fold(0, |a, b| gcd(u64::from(a), u64::from(b)) as u32);
        let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / divisor)).collect();
        let total: u64 = reduced.iter().sum();
        let mut seen = vec![0u64; weights.len()];
        let mut rng = SplitMix(0);
        for step in 1..=total {
            let id = pick(&pool, Strategy::WeightedRoundRobin, "", "", &mut rng).unwrap_or_default();
            let index: usize = id[1..].parse().unwrap_or(usize::MAX);
            prop_assert!(index < seen.len());
            seen[index] += 1;
            for (i, &w) in reduced.iter().enumerate() {
                let ideal = (step * w) as f64 / total as f64;
                prop_assert!((seen[i] as f64 - ideal).abs() <= 2.0, "step {} instance {} seen {} ideal {}", step, i, seen[i], ideal);
            }
        }
        prop_assert_eq!(seen, reduced);
    }

    /// Round robin visits the eligible instances one after another in id order, from the
    /// first, and starts over: n*k picks give each instance exactly k, in a fixed rotation
    /// (which random picking, or any other order, fails).
    #[test]
    fn round_robin_visits_instances_in_id_order(
        healthy in prop::collection::vec(any::<bool>(), 1..16),
        rounds in 1usize..8,
    ) {
        // Registered in reverse: the rotation follows ids, not registration, and skips the
        // unhealthy.
        let instances: Vec<_> = healthy
            .iter()
            .enumerate()
            .rev()
            .map(|(i, &healthy)| instance(&format!("i{i:02}"), 1, "", healthy))
            .collect();
        let pool = Pool::new(instances, None);
        let eligible: Vec<String> = healthy
            .iter()
            .enumerate()
            .filter(|(_, healthy)| **healthy)
            .map(|(i, _)| format!("i{i:02}"))
            .collect();
        let mut rng = SplitMix(11);
        let picks = eligible.len().max(1) * rounds;
        let picked: Vec<Option<&str>> = (0..picks)
            .map(|_| pick(&pool, Strategy::RoundRobin, "", "", &mut rng))
            .collect();
        let expected: Vec<Option<&str>> = if eligible.is_empty() {
            vec![None; picks]
        } else {
            eligible.iter().map(|id| Some(id.as_str())).cycle().take(picks).collect()
        };
        prop_assert_eq!(picked, expected);
    }

    /// Random and least-connections (with no load) spread within 20% of the mean.
    #[test]
    fn random_choices_are_uniform(n in 2usize..8, seed: u64) {
        let instances: Vec<_> = (0..n).map(|i| instance(&format!("i{i:02}"), 1, "", true)).collect();
        let pool = Pool::new(instances, None);
        for strategy in [Strategy::Random, Strategy::HealthAware, Strategy::LeastConnections] {
            let picks = 2_000 * n;
            let mut rng = SplitMix(seed);
            let mut seen = HashMap::<String, usize>::new();
            for _ in 0..picks {
                if let Some(id) = pick(&pool, strategy, "", "", &mut rng) {
                    *seen.entry(id.to_owned()).or_default() += 1;
                }
            }
            for count in seen.values() {
                prop_assert!((1_600..=2_400).contains(count), "{}: {:?}", strategy, seen);
            }
        }
    }

    /// When an instance leaves, only the keys it served move; the others keep their instance.
    #[test]
    fn consistent_hash_moves_only_the_leavers_keys(n in 2usize..12, leaver in 0usize..12) {
        let leaver = leaver % n;
        let instances: Vec<_> = (0..n).map(|i| instance(&format!("i{i:02}"), 1, "", true)).collect();
        let before = Pool::new(instances.clone(), None);
        let remaining: Vec<_> = instances.iter().enumerate().filter(|(i, _)| *i != leaver).map(|(_, x)| Arc::clone(x)).collect();
        let after = Pool::new(remaining, None);
        let left = format!("i{leaver:02}");
        let mut rng = SplitMix(0);
        for k in 0..500 {
            let key = format!("user-{k}");
            let was = pick(&before, Strategy::ConsistentHash, "", &key, &mut rng).map(str::to_owned);
            let now = pick(&after, Strategy::ConsistentHash, "", &key, &mut rng).map(str::to_owned);
            prop_assert!(was.is_some() && now.is_some());
            if was.as_deref() != Some(left.as_str()) {
                prop_assert_eq!(was, now);
            }
        }
    }
}

#[test]
fn consistent_hash_spreads_keys() {
    let instances: Vec<_> = (0..4)
        .map(|i| instance(&format!("i{i:02}"), 1, "", true))
        .collect();
    let pool = Pool::new(instances, None);
    let picked = counts(&pool, Strategy::ConsistentHash, 20_000);
    // 128 points per instance keep each share within roughly 25% of the mean.
    for count in picked.values() {
        assert!((3_750..=6_250).contains(count), "{picked:?}");
    }
}

/// One change of a pool's membership: register (id, weight, region, healthy) or deregister id.
fn membership_change() -> impl proptest::strategy::Strategy<Value = (bool, u8, u32, u8, bool)> {
    (any::<bool>(), 0u8..12, 0u32..3, 0u8..3, any::<bool>())
}

proptest! {
    /// A pool changed one instance at a time holds exactly what a pool built from scratch
    /// holds: the same members in the same order, the same eligible count, the same picks, and
    /// every remaining member keeps its live load.
    #[test]
    fn a_pool_changed_in_place_equals_a_pool_built_from_scratch(
        changes in prop::collection::vec(membership_change(), 1..60),
        entropy in any::<u64>(),
    ) {
        let mut pool = Pool::new(Vec::new(), None);
        let mut model: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
        for (register, id, weight, region, healthy) in changes {
            let id = format!("i{id:02}");
            if register {
                let region = ["", "eu", "us"][usize::from(region)];
                let added = instance(&id, weight, region, healthy);
                let before = pool.member(&id).map(|m| Arc::clone(&m.load));
                pool = pool.with_instance(Arc::clone(&added));
                if let Some(load) = before {
                    let kept = pool.member(&id).map(|m| Arc::clone(&m.load));
                    prop_assert!(kept.is_some_and(|kept| Arc::ptr_eq(&kept, &load)));
                }
                model.insert(id, added);
            } else {
                pool = pool.without_instance(&id);
                model.remove(&id);
            }
            let scratch = Pool::new(model.values().cloned(), None);
            let ids = |p: &Pool| p.members().iter().map(|m| m.instance.id.clone()).collect::<Vec<_>>();
            prop_assert_eq!(ids(&pool), ids(&scratch));
            prop_assert_eq!(pool.eligible_len(), scratch.eligible_len());
            prop_assert_eq!(pool.has_eligible(), scratch.has_eligible());
            for strategy in Strategy::ALL {
                for region in ["", "eu", "us"] {
                    let request = PickRequest {
                        strategy,
                        region,
                        hash_key: "tenant-7",
                        entropy,
                        now_ms: 0,
                    };
                    // Fresh pools on both sides: round-robin cursors start alike.
                    let fresh = Pool::new(pool.members().iter().map(|m| Arc::clone(&m.instance)), None);
                    let scratch = Pool::new(model.values().cloned(), None);
                    let expected = scratch.pick(&request).map(|m| m.instance.id.clone());
                    prop_assert_eq!(&fresh.pick(&request).map(|m| m.instance.id.clone()), &expected);
                    // Strategies without a cursor pick the same from the changed pool itself.
                    if !matches!(strategy, Strategy::RoundRobin | Strategy::WeightedRoundRobin) {
                        prop_assert_eq!(&pool.pick(&request).map(|m| m.instance.id.clone()), &expected);
                    }
                }
            }
        }
    }
}

// README promises of the strategy table: `least_connections` compares in-flight per weight,
// `health_aware` picks in proportion to weight x registered score x live score.

/// An instance of `weight` whose registered health score is `score`.
fn scored(id: &str, weight: u32, score: u8) -> Arc<Instance> {
    let mut instance = (*instance(id, weight, "", true)).clone();
    instance.health_score = score;
    Arc::new(instance)
}

/// Sets a member's in-flight count.
fn in_flight(pool: &Pool, id: &str, count: u64) {
    let load = &pool.member(id).expect("a member").load;
    while load.in_flight(0) < count {
        load.start(0);
    }
}

#[test]
fn least_connections_compares_in_flight_per_weight_so_three_of_three_ties_one_of_one() {
    let pool = Pool::new(
        [
            instance("heavy", 3, "", true),
            instance("light", 1, "", true),
        ],
        None,
    );
    in_flight(&pool, "heavy", 3);
    in_flight(&pool, "light", 1);
    // 3 per 3 equals 1 per 1: a tie, which goes to the first of the two sampled; with two
    // members that is `reduce(entropy, 2)`, so the counts follow the entropy exactly. Comparing
    // raw counts (3 > 1) would send every request to `light`.
    let mut rng = SplitMix(29);
    let mut expected = SplitMix(29);
    let mut heavy = 0;
    for _ in 0..1_000 {
        let first = reduce(expected.next(), 2);
        let picked = pick(&pool, Strategy::LeastConnections, "", "", &mut rng);
        let sampled_first = if first == 0 { "heavy" } else { "light" };
        assert_eq!(picked, Some(sampled_first));
        heavy += usize::from(picked == Some("heavy"));
    }
    assert!((400..=600).contains(&heavy), "heavy picked {heavy} of 1000");
}

#[test]
fn least_connections_prefers_the_heavier_instance_at_equal_in_flight() {
    let pool = Pool::new(
        [
            instance("heavy", 3, "", true),
            instance("light", 1, "", true),
        ],
        None,
    );
    in_flight(&pool, "heavy", 2);
    in_flight(&pool, "light", 2);
    // 2 per 3 is less than 2 per 1: `heavy` whichever is sampled first.
    let picked = counts(&pool, Strategy::LeastConnections, 500);
    assert_eq!(picked.get("heavy"), Some(&500), "{picked:?}");
    // Until it carries three times the load: 6 per 3 against 2 per 1 ties again, 7 loses.
    in_flight(&pool, "heavy", 7);
    let picked = counts(&pool, Strategy::LeastConnections, 500);
    assert_eq!(picked.get("light"), Some(&500), "{picked:?}");
}

#[test]
fn health_aware_picks_in_proportion_to_weight_times_registered_and_live_score() {
    let pool = Pool::new(
        [
            scored("a", 1, 100),
            scored("b", 2, 50),
            scored("c", 3, 100),
            scored("d", 1, 100),
            // Registered score 0: never picked while anyone else can be.
            scored("e", 5, 0),
        ],
        None,
    );
    pool.member("c").expect("c").load.set_live_score(50);
    pool.member("d").expect("d").load.set_live_score(20);
    // a 1x100x100 = 10,000; b 2x50x100 = 10,000; c 3x100x50 = 15,000; d 1x100x20 = 2,000;
    // e 0: shares 10/37, 10/37, 15/37, 2/37. Leaving out any one factor moves some share by
    // more than a third.
    let picks = 100_000;
    let picked = counts(&pool, Strategy::HealthAware, picks);
    let total: u64 = 37_000;
    for (id, weight) in [("a", 10_000), ("b", 10_000), ("c", 15_000), ("d", 2_000)] {
        let expected = picks as u64 * weight / total;
        let got = picked.get(id).copied().unwrap_or(0) as u64;
        // The SplitMix sequence is fixed, so this either always holds or never: 1% of the
        // picks is about 7 standard deviations of a binomial share.
        assert!(
            got.abs_diff(expected) <= picks as u64 / 100,
            "{id}: {got} picks, expected {expected}: {picked:?}"
        );
    }
    assert_eq!(picked.get("e"), None, "{picked:?}");
    assert_eq!(picked.values().sum::<usize>(), picks);
}

#[test]
fn health_aware_follows_a_live_score_change_on_the_same_pool() {
    let pool = Pool::new([scored("a", 1, 100), scored("b", 1, 100)], None);
    let even = counts(&pool, Strategy::HealthAware, 10_000);
    let a = even.get("a").copied().unwrap_or(0);
    assert!((4_500..=5_500).contains(&a), "{even:?}");
    // Outcome reports lower a's live score to 25: a gets 25/125 of the picks.
    pool.member("a").expect("a").load.set_live_score(25);
    let after = counts(&pool, Strategy::HealthAware, 10_000);
    let a = after.get("a").copied().unwrap_or(0);
    assert!((1_700..=2_300).contains(&a), "{after:?}");
    // A live score of 0 takes it out of health_aware picks entirely.
    pool.member("a").expect("a").load.set_live_score(0);
    let gone = counts(&pool, Strategy::HealthAware, 1_000);
    assert_eq!(gone.get("b"), Some(&1_000), "{gone:?}");
}

// In-flight counts: only starts count, finishes end the oldest counted start, and a start that
// no report ends is forgotten after IN_FLIGHT_TIMEOUT_MS to twice that. Time is an input.

const T: u64 = IN_FLIGHT_TIMEOUT_MS;

#[test]
fn a_start_no_report_ends_stops_counting_after_the_timeout() {
    let load = InstanceLoad::default();
    // In the middle of an epoch, at an arbitrary (realistic) time.
    let started = 1_700_000_000_000 / T * T + T / 2;
    load.start(started);
    assert_eq!(load.in_flight(started), 1);
    // Counted for the timeout at least...
    assert_eq!(load.in_flight(started + T - 1), 1);
    // ... until the end of the next epoch (here 1.5 timeouts)...
    let forgotten = (started / T + 2) * T;
    assert_eq!(load.in_flight(forgotten - 1), 1);
    // ... and never after twice the timeout.
    assert_eq!(load.in_flight(forgotten), 0);
    assert_eq!(load.in_flight(started + 2 * T), 0);
    assert_eq!(load.in_flight(started + 100 * T), 0);
    // A start then reuses the slot afresh: the forgotten one does not come back.
    load.start(started + 2 * T);
    assert_eq!(load.in_flight(started + 2 * T), 1);
    // Its late finish ends the new start (a finish cannot tell them apart).
    load.finish(started + 2 * T);
    assert_eq!(load.in_flight(started + 2 * T), 0);
}

#[test]
fn least_connections_stops_avoiding_an_instance_whose_requests_were_never_reported() {
    let pool = Pool::new(
        [instance("a", 1, "", true), instance("b", 1, "", true)],
        None,
    );
    let now = 1_000 * T;
    for _ in 0..10 {
        pool.members()[0].load.start(now);
    }
    let pick_at = |now_ms: u64| {
        let mut rng = SplitMix(11);
        let mut picked: HashMap<String, usize> = HashMap::new();
        for _ in 0..200 {
            let request = PickRequest {
                strategy: Strategy::LeastConnections,
                region: "",
                hash_key: "",
                entropy: rng.next(),
                now_ms,
            };
            if let Some(member) = pool.pick(&request) {
                *picked.entry(member.instance.id.clone()).or_default() += 1;
            }
        }
        picked
    };
    // While the ten unreported requests count, every pick avoids `a`.
    assert_eq!(pick_at(now + T).get("b"), Some(&200));
    // Once they are forgotten both are idle, and ties go to the first sampled: either.
    let later = pick_at(now + 2 * T);
    let a = later.get("a").copied().unwrap_or(0);
    assert!((60..=140).contains(&a), "{later:?}");
}

#[test]
fn finishes_never_take_the_count_below_zero_nor_leave_a_debt() {
    let load = InstanceLoad::default();
    let now = 5 * T + 7;
    // Finishes with nothing counted (reports of requests another process decided) change
    // nothing...
    for _ in 0..3 {
        load.finish(now);
    }
    assert_eq!(load.in_flight(now), 0);
    // ... and leave no debt: the next start counts in full.
    load.start(now);
    load.start(now + 1);
    assert_eq!(load.in_flight(now + 1), 2);
    // What saturation cannot do: a finish that matches no counted start, arriving while
    // starts are counted, ends one of them (a finish does not say which request it ends).
    load.finish(now + 2);
    assert_eq!(load.in_flight(now + 2), 1);
    // The request it took the place of then finishes too, and the last one: the count stops
    // at zero, early by one finish, and does not go below.
    load.finish(now + 3);
    assert_eq!(load.in_flight(now + 3), 0);
    load.finish(now + 4);
    assert_eq!(load.in_flight(now + 4), 0);
    load.start(now + 5);
    assert_eq!(load.in_flight(now + 5), 1);
}

#[test]
fn a_finish_ends_the_oldest_counted_start_so_a_steady_load_stays_counted_across_epochs() {
    // Ten requests in flight at all times, each lasting 7 s, over ten epochs. Were finishes to
    // end the newest start, the count would fall to about zero at the first change of epoch
    // (the previous epoch's slot, dropped then, would still hold the starts of the requests
    // running).
    let load = InstanceLoad::default();
    let step = 700;
    let mut running = std::collections::VecDeque::new();
    let mut now = 3 * T;
    while now < 13 * T {
        if running.len() == 10 {
            running.pop_front();
            load.finish(now);
        }
        load.start(now);
        running.push_back(now);
        assert_eq!(load.in_flight(now), running.len() as u64, "at {now}");
        now += step;
    }
}

#[test]
fn a_clock_one_epoch_ahead_or_behind_does_not_lose_starts() {
    let load = InstanceLoad::default();
    let e = 40 * T;
    // A thread whose clock is one epoch ahead: its start counts for the others too.
    load.start(e + T);
    assert_eq!(load.in_flight(e), 1);
    assert_eq!(load.in_flight(e + T), 1);
    // A thread one epoch behind adds to the current count as it is, rather than move it back.
    load.start(e + 2 * T);
    load.start(e + T);
    assert_eq!(load.in_flight(e + 2 * T), 3);
    // The first start is the previous epoch's: forgotten first.
    assert_eq!(load.in_flight(e + 3 * T), 2);
    // And a finish from the late clock ends the oldest, as any other.
    load.finish(e + T);
    assert_eq!(load.in_flight(e + 2 * T), 2);
    assert_eq!(load.in_flight(e + 3 * T), 2);
}

#[test]
fn a_generation_saturates_without_touching_the_other_or_the_epoch() {
    let load = InstanceLoad::default();
    let now = 77 * T;
    for _ in 0..GENERATION_MAX + 5 {
        load.start(now);
    }
    assert_eq!(load.in_flight(now), GENERATION_MAX);
    // The next epoch: the full generation is the previous one, and the current one counts.
    load.start(now + T);
    assert_eq!(load.in_flight(now + T), GENERATION_MAX + 1);
    assert_eq!(load.in_flight(now + 2 * T), 1);
    assert_eq!(load.in_flight(now + 3 * T), 0);
}

#[test]
fn a_fresh_load_counts_from_any_time() {
    // A new load's word holds epoch 0: whatever the time, the first start counts from then.
    for epoch in [
        0,
        1,
        2,
        (1 << EPOCH_BITS) / 2,
        (1 << EPOCH_BITS) - 1,
        1 << EPOCH_BITS,
    ] {
        let load = InstanceLoad::default();
        let now = epoch * T + 1;
        load.start(now);
        assert_eq!(load.in_flight(now), 1, "epoch {epoch}");
        assert_eq!(load.in_flight(now + 2 * T), 0, "epoch {epoch}");
    }
}

#[test]
fn epochs_compare_across_the_wrap_of_their_bits() {
    let load = InstanceLoad::default();
    let last = ((1 << EPOCH_BITS) - 1) * T;
    load.start(last);
    load.start(last + T / 2);
    // The next epoch's number wraps to 0: still the previous epoch's starts...
    assert_eq!(load.in_flight(last + T), 2);
    load.finish(last + T);
    assert_eq!(load.in_flight(last + T + 1), 1);
    // ... and forgotten the epoch after.
    assert_eq!(load.in_flight(last + 2 * T), 0);
}

/// A request for the in-flight properties: starts `offset` ms after the previous request's
/// start and lasts `latency` ms.
#[derive(Debug, Clone, Copy)]
struct Call {
    offset: u64,
    latency: u64,
}

fn calls(latency: std::ops::Range<u64>) -> impl proptest::strategy::Strategy<Value = Vec<Call>> {
    proptest::collection::vec(
        (0u64..3 * T / 4, latency).prop_map(|(offset, latency)| Call { offset, latency }),
        0..80,
    )
}

/// The starts and finishes of `calls` from `begin`, in time order (starts first at the same
/// time): `(time, is_start)`.
fn events(begin: u64, calls: &[Call], finished: bool) -> Vec<(u64, bool)> {
    let mut events = Vec::new();
    let mut at = begin;
    for call in calls {
        at += call.offset;
        events.push((at, true));
        if finished {
            events.push((at + call.latency, false));
        }
    }
    events.sort_by_key(|&(time, start)| (time, !start));
    events
}

proptest! {
    #[test]
    fn requests_finished_within_the_timeout_are_counted_exactly(
        begin in 0u64..1_000_000 * T,
        calls in calls(0..T),
    ) {
        let load = InstanceLoad::default();
        let mut running = 0u64;
        for (now, start) in events(begin, &calls, true) {
            if start {
                load.start(now);
                running += 1;
            } else {
                load.finish(now);
                running -= 1;
            }
            prop_assert_eq!(load.in_flight(now), running, "at {}", now);
        }
    }

    #[test]
    fn the_count_never_exceeds_the_starts_of_the_last_two_epochs(
        begin in 0u64..1_000_000 * T,
        calls in calls(0..4 * T),
        finished in any::<bool>(),
        stray in proptest::collection::vec(0u64..8 * T, 0..20),
    ) {
        let load = InstanceLoad::default();
        let mut events = events(begin, &calls, finished);
        // Finishes of requests nobody here started.
        events.extend(stray.iter().map(|&at| (begin + at, false)));
        events.sort_by_key(|&(time, start)| (time, !start));
        let mut starts: Vec<u64> = Vec::new();
        for (now, start) in events {
            if start {
                load.start(now);
                starts.push(now);
            } else {
                load.finish(now);
            }
            let recent = starts.iter().filter(|&&at| at / T + 1 >= now / T).count() as u64;
            prop_assert!(load.in_flight(now) <= recent, "at {}", now);
        }
    }
}
