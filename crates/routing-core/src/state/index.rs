//! The tenants by id: the lookup every route starts with.
//!
//! A persistent hash map (a HAMT) answers in a walk of four or five nodes at 100,000 tenants,
//! each a cache miss. Here most tenants sit in a flat hash table (`base`, one probe and the
//! entry it points at), shared by every revision that has not changed it, and the tenants
//! changed since it was built sit in a small persistent map (`recent`) looked at first. When
//! `recent` grows past a fraction of `base`, the two are folded into a new `base`: a copy of
//! the table's pointers, paid once per that many changes. A state built from nothing (a load)
//! owns its `base` alone and writes into it directly.

use std::collections::HashSet;
use std::sync::Arc;

use super::{ById, TenantEntry};

/// A fast hasher: tenant ids come from operators, not from requests' senders, so the keyed hash
/// of the standard library buys nothing here and costs a third of a lookup.
type Hasher = foldhash::fast::RandomState;

/// `recent` is folded into `base` when it holds more than this many entries, or more than
/// `base`'s size divided by [`FOLD_FRACTION`], whichever is larger.
const FOLD_AT_LEAST: usize = 512;
const FOLD_FRACTION: usize = 32;

/// Tenants by id (tenants are never removed, only replaced).
#[derive(Debug, Clone, Default)]
pub(super) struct TenantIndex {
    base: Arc<HashSet<ById, Hasher>>,
    recent: imbl::GenericHashMap<ById, (), Hasher, imbl::shared_ptr::DefaultSharedPtr>,
}

impl TenantIndex {
    /// Returns a tenant's entry.
    #[inline]
    pub(super) fn get(&self, id: &str) -> Option<&Arc<TenantEntry>> {
        if !self.recent.is_empty()
            && let Some((entry, ())) = self.recent.get_key_value(id)
        {
            return Some(&entry.0);
        }
        self.base.get(id).map(|entry| &entry.0)
    }

    /// Inserts or replaces a tenant's entry.
    pub(super) fn insert(&mut self, entry: Arc<TenantEntry>) {
        if self.recent.is_empty()
            && let Some(base) = Arc::get_mut(&mut self.base)
        {
            base.replace(ById(entry));
            return;
        }
        self.recent.insert(ById(entry), ());
        if self.recent.len() > FOLD_AT_LEAST.max(self.base.len() / FOLD_FRACTION) {
            self.fold();
        }
    }

    /// Builds a new `base` holding every entry, and empties `recent`.
    fn fold(&mut self) {
        let recent = std::mem::take(&mut self.recent);
        let base = Arc::make_mut(&mut self.base);
        base.reserve(recent.len());
        for (entry, ()) in recent {
            base.replace(entry);
        }
    }

    /// Estimates the heap bytes held by `base` (what a revision that folded no longer shares
    /// with the one before).
    pub(super) fn base_bytes(&self) -> usize {
        self.base.capacity() * (std::mem::size_of::<ById>() + 1)
    }

    /// Returns whether two indexes share their `base`.
    pub(super) fn shares_base(&self, other: &TenantIndex) -> bool {
        Arc::ptr_eq(&self.base, &other.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tenant;

    fn entry(id: &str, name: &str) -> Arc<TenantEntry> {
        Arc::new(TenantEntry::new(
            Tenant {
                id: id.to_owned(),
                name: name.to_owned(),
                region: String::new(),
                tier: String::new(),
                labels: std::collections::BTreeMap::new(),
                active: true,
            },
            super::super::Pins::default(),
        ))
    }

    fn name_of(index: &TenantIndex, id: &str) -> Option<String> {
        index.get(id).map(|entry| entry.tenant.name.clone())
    }

    #[test]
    fn a_state_of_its_own_writes_into_its_table() {
        let mut index = TenantIndex::default();
        for i in 0..2_000 {
            index.insert(entry(&format!("t{i}"), "first"));
        }
        index.insert(entry("t7", "second"));
        assert!(index.recent.is_empty());
        assert_eq!(index.base.len(), 2_000);
        assert_eq!(name_of(&index, "t7").as_deref(), Some("second"));
        assert_eq!(name_of(&index, "t8").as_deref(), Some("first"));
        assert_eq!(name_of(&index, "t2000"), None);
    }

    #[test]
    fn changes_to_a_shared_table_stay_beside_it_until_folded_and_never_reach_the_older_copy() {
        let mut index = TenantIndex::default();
        for i in 0..32_000 {
            index.insert(entry(&format!("t{i}"), "first"));
        }
        let older = index.clone();
        // Under the threshold (1,000 here): the table is still shared.
        for i in 0..999 {
            index.insert(entry(&format!("t{i}"), "second"));
        }
        index.insert(entry("new", "first"));
        // Replaced while in `recent`.
        index.insert(entry("new", "second"));
        assert!(index.shares_base(&older));
        assert_eq!(index.recent.len(), 1_000);
        // One more, and it folds into a table of its own.
        let before_fold = index.clone();
        index.insert(entry("t999", "second"));
        assert!(!index.shares_base(&older));
        assert!(index.recent.is_empty());
        for (which, expected) in [(&before_fold, "second"), (&index, "second")] {
            assert_eq!(name_of(which, "t0").as_deref(), Some(expected));
            assert_eq!(name_of(which, "t998").as_deref(), Some(expected));
            assert_eq!(name_of(which, "new").as_deref(), Some(expected));
        }
        assert_eq!(name_of(&before_fold, "t999").as_deref(), Some("first"));
        assert_eq!(name_of(&index, "t999").as_deref(), Some("second"));
        assert_eq!(name_of(&index, "t31999").as_deref(), Some("first"));
        // The older copy saw none of it.
        assert_eq!(name_of(&older, "t0").as_deref(), Some("first"));
        assert_eq!(name_of(&older, "new"), None);
        assert_eq!(index.base.len(), 32_001);
        assert!(before_fold.shares_base(&older));
    }
}
