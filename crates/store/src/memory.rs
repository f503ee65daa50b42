//! The embedded in-memory store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use routing_core::{Mutation, Revision, RoutingState};
use tokio::sync::watch;

use crate::{Change, ChangeMeta, Commit, Store, StoreError};

/// Changes kept by default for routers to follow.
pub const DEFAULT_LOG_CAPACITY: usize = 100_000;

/// Routing state in this process's memory: nothing to install, gone when the process ends.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    revision: watch::Sender<Revision>,
    log_capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    state: RoutingState,
    log: VecDeque<Change>,
    leases: std::collections::HashMap<String, (String, std::time::Instant)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_LOG_CAPACITY)
    }
}

impl MemoryStore {
    /// Returns an empty store keeping the last `log_capacity` changes (at least one).
    pub fn new(log_capacity: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            revision: watch::Sender::new(0),
            log_capacity: log_capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied state: the state is
        // replaced only after a successful apply.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_after(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        let inner = self.lock();
        let current = inner.state.revision();
        if after >= current {
            return Ok(Vec::new());
        }
        let oldest = inner.log.front().map_or(current, |c| c.revision - 1);
        if after < oldest {
            return Err(StoreError::Compacted {
                requested: after,
                oldest,
            });
        }
        let skip = (after - oldest) as usize;
        Ok(inner.log.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn load(&self) -> Result<RoutingState, StoreError> {
        Ok(self.lock().state.clone())
    }

    /// Validates against the store's own latest state (always current here), so `base` is not
    /// needed and no conflict arises.
    async fn commit(
        &self,
        _base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        let revision = {
            let mut inner = self.lock();
            let (state, outcome) = inner.state.apply(&mutation)?;
            let revision = state.revision();
            inner.state = state;
            inner.log.push_back(Change {
                revision,
                mutation,
                meta,
            });
            while inner.log.len() > self.log_capacity {
                inner.log.pop_front();
            }
            Commit { revision, outcome }
        };
        self.revision.send_replace(revision.revision);
        Ok(revision)
    }

    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        let mut revisions = self.revision.subscribe();
        let changes = self.read_after(after, limit)?;
        if !changes.is_empty() {
            return Ok(changes);
        }
        let arrived = tokio::time::timeout(wait, revisions.wait_for(|&r| r > after)).await;
        match arrived {
            Ok(_) => self.read_after(after, limit),
            Err(_elapsed) => Ok(Vec::new()),
        }
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut inner = self.lock();
        let free = match inner.leases.get(name) {
            Some((current, expires)) => current == holder || *expires <= now,
            None => true,
        };
        if free {
            inner
                .leases
                .insert(name.to_owned(), (holder.to_owned(), now + ttl));
        }
        Ok(free)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_suite!(async { MemoryStore::default() });

    #[tokio::test]
    async fn compacted_log_is_reported() {
        let store = MemoryStore::new(2);
        for i in 0..4 {
            store
                .commit(
                    &RoutingState::default(),
                    crate::suite::tenant(&format!("t{i}")),
                    ChangeMeta::default(),
                )
                .await
                .expect("commit");
        }
        let err = store
            .changes_after(0, 10, Duration::ZERO)
            .await
            .expect_err("log holds only revisions 3 and 4");
        assert!(
            matches!(
                err,
                StoreError::Compacted {
                    requested: 0,
                    oldest: 2
                }
            ),
            "{err:?}"
        );
        let kept = store
            .changes_after(2, 10, Duration::ZERO)
            .await
            .expect("kept");
        assert_eq!(kept.iter().map(|c| c.revision).collect::<Vec<_>>(), [3, 4]);
    }
}
