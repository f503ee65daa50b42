//! Load balancing among the instances of one service version.
//!
//! A [`Pool`] holds the instances of one (service, version), sorted by id. Only *eligible*
//! instances (healthy, weight > 0) are ever picked; when the request's region has an eligible
//! instance, only that region's are considered, otherwise every region's.
//!
//! Outlier ejection applies after region preference: an ejected instance passes its turn to
//! the next candidate of the set that is not ejected; when every eligible instance of the
//! preferred region is ejected, the pick fails over to every region's. Only when every eligible
//! instance anywhere is ejected are ejections ignored (panic mode), and the pick is made as if
//! nothing were ejected, within the preferred region.
//!
//! Per candidate set (all regions, and each region) the pool keeps a cursor for the round-robin
//! strategies and, built on first use, the structures a strategy needs: the weighted schedule, the
//! hash ring. The pool is immutable apart from those lazy caches,
//! the cursors and the in-flight counters, so it is shared freely between routing-state revisions.
//!
//! Randomness, time and load come in as inputs (`entropy`, `now_ms`, [`InstanceLoad`]): picking
//! does no I/O and reads no clock. Ejections end, and `least_connections`' in-flight counts decay
//! ([`IN_FLIGHT_TIMEOUT_MS`]), by the `now_ms` callers pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::hash::{fmix64, reduce, stable_hash};
use crate::{Instance, Strategy};

/// Points per instance on the consistent-hash ring.
pub const RING_POINTS_PER_INSTANCE: u32 = 128;
/// Bound on cycle length times members when building a weighted round-robin cycle; larger
/// weight sums are scaled down to fit.
pub const MAX_SCHEDULE_WORK: u64 = 1 << 24;

/// How long a started request that no report ends keeps counting as in flight, at least: such
/// a request is forgotten 30 to 60 seconds after it started (see [`InstanceLoad`]).
///
/// Calls that take longer than this (streams, long polls) should not be balanced by
/// `least_connections`: their count is dropped while they still run.
pub const IN_FLIGHT_TIMEOUT_MS: u64 = 30_000;

/// Bits of each generation's count in the in-flight word (at most 1,048,575 each).
const GENERATION_BITS: u32 = 20;
/// The largest count of a generation; starts beyond it are not counted.
const GENERATION_MAX: u64 = (1 << GENERATION_BITS) - 1;
/// Bits of the epoch in the in-flight word (the rest): epochs compare wrapping.
const EPOCH_BITS: u32 = 64 - 2 * GENERATION_BITS;
/// The low [`EPOCH_BITS`] bits; also the difference of an epoch one ahead of another.
const EPOCH_MASK: u32 = (1 << EPOCH_BITS) - 1;

/// Live load and health of one instance, kept across routing-state revisions.
///
/// Outcome reports feed it: they end in-flight requests, eject an instance that keeps failing
/// (until a time), and lower its live health score.
///
/// # In-flight requests
///
/// Only `least_connections` reads the count, so only its decisions
/// [`start`](Self::start) one; the report of the request [`finish`](Self::finish)es it. Time
/// is an input (`now_ms`, milliseconds): a start counts for [`IN_FLIGHT_TIMEOUT_MS`] at least
/// and twice that at most, so a caller that never reports cannot make an instance look busy
/// forever.
///
/// The count lives in two generations, each an epoch of [`IN_FLIGHT_TIMEOUT_MS`] (epoch
/// `now_ms / IN_FLIGHT_TIMEOUT_MS`): a start counts in the current epoch's generation,
/// [`in_flight`](Self::in_flight) sums the current and the previous epochs', and when the epoch
/// moves on the current generation becomes the previous one and the previous one is forgotten.
/// Both generations and their epoch are packed in one atomic word (24 bits of epoch, 20 bits of
/// count each, saturating), so reading costs one load, every change is one compare-and-swap
/// over both generations, and nothing locks.
///
/// A finish cannot tell which start it ends, so it ends the *oldest* counted one: the previous
/// epoch's when it counts any, else the current one's. Ending the newest instead would let a
/// steady load's count fall to about zero at every change of epoch (the previous generation,
/// then forgotten, would keep the starts of the requests still running). As a result, when
/// every start is finished once, within [`IN_FLIGHT_TIMEOUT_MS`], and the callers' clocks
/// agree, the count is exact.
///
/// What finishes guarantee, and what they cannot:
/// - the count never goes below zero, and a finish that finds nothing counted changes
///   nothing: it leaves no debt that would cancel a later start;
/// - a finish that matches no counted start (a request another process decided and counted,
///   or one whose start was already forgotten) still ends a counted one when there is one: the
///   count is then one below the requests really in flight, until a later finish finds nothing
///   counted and changes nothing. Finishes only ever lower the count, so it is never higher
///   than the starts of the last two epochs.
///
/// Clocks of different threads may disagree a little: a caller whose clock is one epoch behind
/// the word's counts in (and reads) the word's generations as they are, never moving them
/// back. A clock further off starts afresh, as a clock two epochs later would.
#[derive(Debug)]
pub struct InstanceLoad {
    /// `epoch << 40 | previous epoch's count << 20 | current epoch's count`. The epoch wraps
    /// every 2^24 epochs (16 years): only a word left counting for exactly that long is misread.
    in_flight: AtomicU64,
    ejected_until_ms: AtomicU64,
    live_score: AtomicU8,
}

impl Default for InstanceLoad {
    fn default() -> Self {
        InstanceLoad {
            in_flight: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            live_score: AtomicU8::new(100),
        }
    }
}

/// The in-flight epoch of a time (its low [`EPOCH_BITS`] bits).
fn epoch(now_ms: u64) -> u32 {
    (now_ms / IN_FLIGHT_TIMEOUT_MS) as u32 & EPOCH_MASK
}

/// The in-flight generations as of one epoch.
#[derive(Debug, Clone, Copy)]
struct Generations {
    epoch: u32,
    previous: u64,
    current: u64,
}

impl Generations {
    /// The generations of `word` as a caller at epoch `now` sees them: as they are when the
    /// word's epoch is `now`'s or one ahead, moved on by one epoch (the current one becomes the
    /// previous one) when it is one behind, forgotten otherwise. A word that counts nothing
    /// (a new one holds epoch 0) is `now`'s.
    fn at(word: u64, now: u32) -> Generations {
        let epoch = (word >> (2 * GENERATION_BITS)) as u32;
        let previous = (word >> GENERATION_BITS) & GENERATION_MAX;
        let current = word & GENERATION_MAX;
        let forgotten = Generations {
            epoch: now,
            previous: 0,
            current: 0,
        };
        match now.wrapping_sub(epoch) & EPOCH_MASK {
            _ if previous == 0 && current == 0 => forgotten,
            0 | EPOCH_MASK => Generations {
                epoch,
                previous,
                current,
            },
            1 => Generations {
                epoch: now,
                previous: current,
                current: 0,
            },
            _ => forgotten,
        }
    }

    fn word(self) -> u64 {
        (u64::from(self.epoch) << (2 * GENERATION_BITS))
            | (self.previous << GENERATION_BITS)
            | self.current
    }
}

impl InstanceLoad {
    /// Whether the instance is ejected (by outlier detection) at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Ejects the instance until `until_ms` (0 lifts an ejection).
    pub fn eject_until(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }

    /// Returns the end of the current ejection (0: none).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Returns the live health score, 0-100, from outcome reports (100 without reports).
    pub fn live_score(&self) -> u8 {
        self.live_score.load(Ordering::Relaxed)
    }

    /// Sets the live health score (clamped to 100).
    pub fn set_live_score(&self, score: u8) {
        self.live_score.store(score.min(100), Ordering::Relaxed);
    }

    /// Returns the number of requests started on the instance and not yet finished at `now_ms`:
    /// the counts of the current and the previous epochs (see [In-flight
    /// requests](InstanceLoad#in-flight-requests)).
    pub fn in_flight(&self, now_ms: u64) -> u64 {
        self.in_flight_in(epoch(now_ms))
    }

    /// [`in_flight`](Self::in_flight) at the epoch `now`: what [`Generations::at`] sums to,
    /// computed straight from the word (a `least_connections` pick reads two members', with
    /// one division for both).
    fn in_flight_in(&self, now: u32) -> u64 {
        let word = self.in_flight.load(Ordering::Relaxed);
        // 0: the word is one epoch ahead, 1: now's, 2: one behind; more: forgotten.
        let age = now
            .wrapping_sub((word >> (2 * GENERATION_BITS)) as u32)
            .wrapping_add(1)
            & EPOCH_MASK;
        let previous = (word >> GENERATION_BITS) & GENERATION_MAX;
        let current = word & GENERATION_MAX;
        (if age <= 1 { previous } else { 0 }) + (if age <= 2 { current } else { 0 })
    }

    /// Counts a request started on the instance at `now_ms` (by a `least_connections`
    /// decision); it counts until [`finish`](Self::finish)ed, or for
    /// [`IN_FLIGHT_TIMEOUT_MS`] to twice that.
    pub fn start(&self, now_ms: u64) {
        self.update_in_flight(now_ms, |generations| {
            generations.current = (generations.current + 1).min(GENERATION_MAX);
            true
        });
    }

    /// Ends one counted request at `now_ms`: the oldest counted one (the previous epoch's when
    /// it counts any). Never below zero: with nothing counted, nothing changes.
    pub fn finish(&self, now_ms: u64) {
        self.update_in_flight(now_ms, |generations| {
            if generations.previous > 0 {
                generations.previous -= 1;
            } else if generations.current > 0 {
                generations.current -= 1;
            } else {
                return false;
            }
            true
        });
    }

    /// Changes the generations as of `now_ms` in one compare-and-swap; `change` returns false to
    /// leave them as they are.
    fn update_in_flight(&self, now_ms: u64, change: impl Fn(&mut Generations) -> bool) {
        let now = epoch(now_ms);
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let mut generations = Generations::at(word, now);
                change(&mut generations).then(|| generations.word())
            });
    }
}

/// An instance of the pool and its live load.
#[derive(Debug, Clone)]
pub struct Member {
    /// The registered instance.
    pub instance: Arc<Instance>,
    /// Its live load.
    pub load: Arc<InstanceLoad>,
}

/// What a pick needs besides the pool.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// The strategy.
    pub strategy: Strategy,
    /// The preferred region (empty: none).
    pub region: &'a str,
    /// The key of `consistent_hash`.
    pub hash_key: &'a str,
    /// A random value, used by `random`, `least_connections` and `health_aware`.
    pub entropy: u64,
    /// The time, for ejections and `least_connections`' in-flight counts (milliseconds since
    /// the Unix epoch).
    pub now_ms: u64,
}

/// The members of a pool, sorted by instance id: a persistent vector, so that a pool with one
/// instance more or less shares all but a path of chunks with the pool it was made from.
pub type Members = imbl::Vector<Member>;

/// The instances of one service version.
#[derive(Debug)]
pub struct Pool {
    members: Members,
    /// How many members are eligible.
    eligible: usize,
    /// The candidate sets, built on the first pick: a pool that is never picked from (one of
    /// many made in a burst of registrations, kept only by the watch history) costs no more
    /// than the path it changed.
    candidates: OnceLock<CandidateSets>,
}

/// Every eligible member, and those of each region.
#[derive(Debug)]
struct CandidateSets {
    /// The members in a plain slice, in the pool's order: picks index it, not the persistent
    /// vector (a slice index is one load; a persistent vector's walks its tree).
    members: Vec<Member>,
    all: Candidates,
    regions: BTreeMap<String, Candidates>,
}

/// A set of eligible members and the per-strategy structures over it.
#[derive(Debug)]
struct Candidates {
    /// Indices into `Pool::members`, ascending.
    members: Vec<u32>,
    cursor: AtomicU64,
    schedule: OnceLock<Vec<u32>>,
    ring: OnceLock<Vec<(u64, u32)>>,
}

impl Pool {
    /// Builds a pool from instances, carrying over the live load of instances that were in
    /// `previous` (matched by id).
    pub fn new(
        instances: impl IntoIterator<Item = Arc<Instance>>,
        previous: Option<&Pool>,
    ) -> Self {
        let mut instances: Vec<Arc<Instance>> = instances.into_iter().collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        instances.dedup_by(|a, b| a.id == b.id);
        // Both lists are sorted by id: one walk matches every instance with its previous load.
        let mut earlier = previous
            .map(|pool| pool.members.iter())
            .into_iter()
            .flatten()
            .peekable();
        let members: Members = instances
            .into_iter()
            .map(|instance| {
                while earlier.next_if(|m| m.instance.id < instance.id).is_some() {}
                let load = earlier
                    .next_if(|m| m.instance.id == instance.id)
                    .map_or_else(Arc::default, |member| Arc::clone(&member.load));
                Member { instance, load }
            })
            .collect();
        Pool::of(members)
    }

    fn of(members: Members) -> Self {
        Pool {
            eligible: members.iter().filter(|m| m.instance.is_eligible()).count(),
            members,
            candidates: OnceLock::new(),
        }
    }

    /// Returns this pool with `instance` added, or replacing the member of the same id (which
    /// keeps its live load). Costs a path of the persistent member list, not a copy of it.
    pub fn with_instance(&self, instance: Arc<Instance>) -> Pool {
        let mut members = self.members.clone();
        let mut eligible = self.eligible + usize::from(instance.is_eligible());
        match members.binary_search_by(|m| m.instance.id.as_str().cmp(&instance.id)) {
            Ok(at) => {
                let old = members.set(
                    at,
                    Member {
                        load: Arc::clone(&members[at].load),
                        instance,
                    },
                );
                eligible -= usize::from(old.instance.is_eligible());
            }
            Err(at) => members.insert(
                at,
                Member {
                    instance,
                    load: Arc::default(),
                },
            ),
        }
        Pool {
            members,
            eligible,
            candidates: OnceLock::new(),
        }
    }

    /// Returns this pool without the instance `instance_id` (the same members if it has none).
    pub fn without_instance(&self, instance_id: &str) -> Pool {
        let mut members = self.members.clone();
        let mut eligible = self.eligible;
        if let Ok(at) = members.binary_search_by(|m| m.instance.id.as_str().cmp(instance_id)) {
            let old = members.remove(at);
            eligible -= usize::from(old.instance.is_eligible());
        }
        Pool {
            members,
            eligible,
            candidates: OnceLock::new(),
        }
    }

    fn candidates(&self) -> &CandidateSets {
        self.candidates.get_or_init(|| {
            let mut all = Vec::with_capacity(self.eligible);
            let mut regions: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            let eligible = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.instance.is_eligible());
            for (index, member) in eligible {
                let index = index as u32;
                all.push(index);
                if !member.instance.region.is_empty() {
                    match regions.get_mut(&member.instance.region) {
                        Some(members) => members.push(index),
                        None => {
                            regions.insert(member.instance.region.clone(), vec![index]);
                        }
                    }
                }
            }
            CandidateSets {
                members: self.members.iter().cloned().collect(),
                all: Candidates::new(all),
                regions: regions
                    .into_iter()
                    .map(|(region, members)| (region, Candidates::new(members)))
                    .collect(),
            }
        })
    }

    /// Returns the members, sorted by instance id.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Returns the member with this instance id.
    pub fn member(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.instance.id.as_str().cmp(instance_id))
            .ok()
            .and_then(|index| self.members.get(index))
    }

    /// Returns the member at `position` of [`members`](Pool::members), as
    /// [`pick_position`](Pool::pick_position) names it (from the plain copy picks use, once
    /// built).
    pub fn member_at(&self, position: usize) -> Option<&Member> {
        match self.candidates.get() {
            Some(sets) => sets.members.get(position),
            None => self.members.get(position),
        }
    }

    /// Whether any instance can take traffic.
    pub fn has_eligible(&self) -> bool {
        self.eligible > 0
    }

    /// Returns the number of eligible instances.
    pub fn eligible_len(&self) -> usize {
        self.eligible
    }

    /// Picks an eligible instance, or `None` when there is none.
    pub fn pick(&self, request: &PickRequest<'_>) -> Option<&Member> {
        self.pick_position(request)
            .and_then(|position| self.member_at(position))
    }

    /// Picks as [`pick`](Pool::pick) does, returning the member's position in
    /// [`members`](Pool::members).
    pub fn pick_position(&self, request: &PickRequest<'_>) -> Option<usize> {
        let sets = self.candidates();
        let preferred = sets
            .regions
            .get(request.region)
            .filter(|_| !request.region.is_empty())
            .unwrap_or(&sets.all);
        let members = sets.members.as_slice();
        let position = preferred.pick(members, request)?;
        // An ejected instance passes its turn to the next candidate that is not ejected.
        if let Some(chosen) = first_not_ejected(members, preferred, position, request.now_ms) {
            return Some(chosen);
        }
        // Every eligible instance of the preferred region is ejected: fail over to every
        // region's. Only when every eligible instance anywhere is ejected are ejections
        // ignored (panic mode): better a struggling instance than none.
        if !std::ptr::eq(preferred, &sets.all)
            && let Some(chosen) = sets
                .all
                .pick(members, request)
                .and_then(|at| first_not_ejected(members, &sets.all, at, request.now_ms))
        {
            return Some(chosen);
        }
        Some(preferred.members[position] as usize)
    }
}

/// Returns the member index of the first candidate from `position` on (wrapping) that is not
/// ejected at `now_ms`, or `None` when every candidate is ejected.
fn first_not_ejected(
    members: &[Member],
    candidates: &Candidates,
    position: usize,
    now_ms: u64,
) -> Option<usize> {
    let n = candidates.members.len();
    (0..n)
        .map(|offset| candidates.members[(position + offset) % n] as usize)
        .find(|&m| !members[m].load.is_ejected(now_ms))
}

impl Pool {
    /// Estimates the heap bytes this pool holds beside `next`, the pool that replaced it (if
    /// any): the member list's chunks it does not share (all of them without `next`, a path of
    /// chunks with it), and its candidate sets and strategy structures, built on its first pick
    /// and never shared. Instances and live loads are shared and not counted.
    pub fn bytes_beside(&self, next: Option<&Pool>) -> usize {
        /// Elements in one chunk of the persistent vector.
        const CHUNK: usize = 64;
        let member = std::mem::size_of::<Member>();
        let list = match next {
            None => self.members.len() * member,
            // A change rewrites the chunks on the path from the root to the changed element.
            Some(_) => {
                let depth = self.members.len().max(1).ilog(CHUNK) as usize + 1;
                depth * CHUNK * member
            }
        };
        let candidates = |c: &Candidates| {
            c.members.capacity() * std::mem::size_of::<u32>()
                + c.schedule.get().map_or(0, |s| s.capacity() * 4)
                + c.ring.get().map_or(0, |r| r.capacity() * 16)
        };
        let sets = self.candidates.get().map_or(0, |sets| {
            sets.members.capacity() * member
                + candidates(&sets.all)
                + sets
                    .regions
                    .iter()
                    .map(|(region, c)| region.len() + 64 + candidates(c))
                    .sum::<usize>()
        });
        std::mem::size_of::<Pool>() + list + sets
    }
}

impl Candidates {
    fn new(members: Vec<u32>) -> Self {
        Candidates {
            members,
            cursor: AtomicU64::new(0),
            schedule: OnceLock::new(),
            ring: OnceLock::new(),
        }
    }

    /// Returns the position (in `self.members`) the strategy picks.
    fn pick(&self, members: &[Member], request: &PickRequest<'_>) -> Option<usize> {
        let n = self.members.len() as u64;
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let position = match request.strategy {
            Strategy::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            Strategy::Random => reduce(request.entropy, n),
            Strategy::WeightedRoundRobin => {
                let schedule = self
                    .schedule
                    .get_or_init(|| self.weighted_schedule(members));
                let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % schedule.len() as u64;
                u64::from(schedule[turn as usize])
            }
            Strategy::LeastConnections => self.power_of_two_choices(members, request),
            Strategy::HealthAware => self.health_weighted(members, request.entropy),
            Strategy::ConsistentHash => {
                let ring = self.ring.get_or_init(|| self.ring(members));
                let key = stable_hash(&[request.hash_key.as_bytes()]);
                let at = ring.partition_point(|&(point, _)| point < key);
                u64::from(ring[at % ring.len()].1)
            }
        };
        Some(position as usize).filter(|&p| p < self.members.len())
    }

    /// Power of two choices: the less loaded (in flight at the request's `now_ms`, per weight)
    /// of two distinct members.
    fn power_of_two_choices(&self, members: &[Member], request: &PickRequest<'_>) -> u64 {
        let entropy = request.entropy;
        let now = epoch(request.now_ms);
        let n = self.members.len() as u64;
        let first = reduce(entropy, n);
        let mut second = reduce(fmix64(entropy ^ 0x9e37_79b9_7f4a_7c15), n - 1);
        if second >= first {
            second += 1;
        }
        let load = |position: u64| {
            let member = &members[self.members[position as usize] as usize];
            (
                member.load.in_flight_in(now),
                u64::from(member.instance.weight),
            )
        };
        let ((load_a, weight_a), (load_b, weight_b)) = (load(first), load(second));
        // load_a / weight_a <= load_b / weight_b, without division.
        if u128::from(load_a) * u128::from(weight_b) <= u128::from(load_b) * u128::from(weight_a) {
            first
        } else {
            second
        }
    }

    /// Smooth weighted round robin (as in nginx): each turn every member's credit grows by its
    /// weight and the richest member, paying the total, is picked. 5:1:1 gives a a b a c a a,
    /// not a a a a a b c. One cycle is computed once; picks then walk it with the cursor.
    fn weighted_schedule(&self, members: &[Member]) -> Vec<u32> {
        let mut weights: Vec<u64> = self
            .members
            .iter()
            .map(|&m| u64::from(members[m as usize].instance.weight))
            .collect();
        let divisor = weights.iter().copied().fold(0, gcd).max(1);
        weights.iter_mut().for_each(|w| *w /= divisor);
        // Building costs cycle length times members: bound it by scaling the weights down.
        let limit = (MAX_SCHEDULE_WORK / weights.len() as u64).max(weights.len() as u64);
        let total: u64 = weights.iter().sum();
        if total > limit {
            weights
                .iter_mut()
                .for_each(|w| *w = (*w * limit / total).max(1));
        }
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut credit = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (position, weight) in weights.iter().enumerate() {
                credit[position] += *weight as i64;
                if credit[position] > credit[best] {
                    best = position;
                }
            }
            credit[best] -= total;
            schedule.push(best as u32);
        }
        schedule
    }

    /// At random, in proportion to weight x registered score x live score.
    fn health_weighted(&self, members: &[Member], entropy: u64) -> u64 {
        let weight = |m: u32| {
            let member = &members[m as usize];
            u64::from(member.instance.weight)
                * u64::from(member.instance.health_score.min(100))
                * u64::from(member.load.live_score())
        };
        let total: u64 = self.members.iter().map(|&m| weight(m)).sum();
        if total == 0 {
            return reduce(entropy, self.members.len() as u64);
        }
        let mut point = reduce(entropy, total);
        for (position, &m) in self.members.iter().enumerate() {
            let w = weight(m);
            if point < w {
                return position as u64;
            }
            point -= w;
        }
        self.members.len() as u64 - 1
    }

    fn ring(&self, members: &[Member]) -> Vec<(u64, u32)> {
        let mut ring = Vec::with_capacity(self.members.len() * RING_POINTS_PER_INSTANCE as usize);
        for (position, &m) in self.members.iter().enumerate() {
            let id = members[m as usize].instance.id.as_bytes();
            for point in 0..RING_POINTS_PER_INSTANCE {
                ring.push((stable_hash(&[id, &point.to_le_bytes()]), position as u32));
            }
        }
        ring.sort_unstable();
        ring
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
