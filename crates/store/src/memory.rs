//! The embedded in-memory store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use routing_core::{Mutation, Revision, RoutingState};
use tokio::sync::watch;

use crate::journal::{Journal, JournalError};
use crate::{Change, ChangeMeta, Commit, Snapshot, Store, StoreError};

/// Changes kept by default for routers to follow.
pub const DEFAULT_LOG_CAPACITY: usize = 100_000;
/// Memory the kept changes may take by default (estimated), in bytes.
pub const DEFAULT_LOG_BYTES: usize = 64 * 1024 * 1024;

/// Routing state in this process's memory: nothing to install, gone when the process ends.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    revision: watch::Sender<Revision>,
    log_capacity: usize,
    log_bytes: usize,
    audit_file: Option<std::path::PathBuf>,
    history: String,
    /// With a data directory: every change is written here before it is acknowledged.
    journal: Option<Mutex<Journal>>,
}

#[derive(Debug, Default)]
struct Inner {
    state: RoutingState,
    log: VecDeque<Change>,
    /// The estimated bytes of each kept change, in the same order, and their sum.
    log_sizes: VecDeque<usize>,
    logged_bytes: usize,
    leases: std::collections::HashMap<String, (String, std::time::Instant)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_LOG_CAPACITY)
    }
}

impl MemoryStore {
    /// Returns an empty store keeping the last `log_capacity` changes (at least one), and no
    /// more than [`DEFAULT_LOG_BYTES`] of them.
    pub fn new(log_capacity: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            revision: watch::Sender::new(0),
            log_capacity: log_capacity.max(1),
            log_bytes: DEFAULT_LOG_BYTES,
            audit_file: None,
            history: crate::new_history_id(),
            journal: None,
        }
    }

    /// Opens the durable embedded store in `dir`: the state is what the journal's changes
    /// make, and every new change is synced to the journal before it is acknowledged. Returns
    /// the store and the bytes of a torn last frame cut off (0 when the journal was whole).
    pub fn open_durable(dir: &std::path::Path) -> Result<(Self, u64), JournalError> {
        let (mut journal, recovered) = Journal::open(dir)?;
        let history = match recovered.history {
            Some(history) => history,
            None => {
                let history = crate::new_history_id();
                journal.write_history(&history)?;
                history
            }
        };
        let mut store = MemoryStore::new(DEFAULT_LOG_CAPACITY);
        store.history = history;
        {
            let mut inner = store.lock();
            for change in recovered.changes {
                let applied = inner.state.apply(&change.mutation);
                match applied {
                    Ok((state, _)) if state.revision() == change.revision => inner.state = state,
                    // The journal only holds changes that applied: one that does not is damage.
                    _ => {
                        return Err(JournalError::Corrupt {
                            path: dir.join(crate::journal::JOURNAL_FILE),
                            offset: 0,
                        });
                    }
                }
                store.keep(&mut inner, change);
            }
            store.revision.send_replace(inner.state.revision());
        }
        store.journal = Some(Mutex::new(journal));
        Ok((store, recovered.truncated_bytes))
    }

    /// Keeps `change` in the bounded log.
    fn keep(&self, inner: &mut Inner, change: Change) {
        let bytes = change_bytes(&change);
        inner.log.push_back(change);
        inner.log_sizes.push_back(bytes);
        inner.logged_bytes += bytes;
        while inner.log.len() > self.log_capacity
            || (inner.logged_bytes > self.log_bytes && inner.log.len() > 1)
        {
            inner.log.pop_front();
            if let Some(oldest) = inner.log_sizes.pop_front() {
                inner.logged_bytes -= oldest;
            }
        }
    }

    /// Keeps no more than about `bytes` of changes (the newest change is always kept).
    pub fn with_log_bytes(mut self, bytes: usize) -> Self {
        self.log_bytes = bytes;
        self
    }

    /// Returns how many changes the log keeps and their estimated bytes.
    pub fn log_footprint(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.log.len(), inner.logged_bytes)
    }

    /// Also appends every change, as one JSON line, to `path`: the audit trail outlives the
    /// bounded log and the process. A change whose line cannot be written is refused.
    pub fn with_audit_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.audit_file = Some(path.into());
        self
    }

    fn append_audit(&self, change: &Change) -> Result<(), StoreError> {
        use std::io::Write;
        let Some(path) = &self.audit_file else {
            return Ok(());
        };
        let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let line = serde_json::json!({
            "revision": change.revision,
            "at_ms": change.meta.at_ms,
            "actor": change.meta.actor,
            "reason": change.meta.reason,
            "mutation": change.mutation,
            "before": parse(&change.meta.before),
            "after": parse(&change.meta.after),
        });
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{line}"));
        written.map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot write the audit log {}: {err}",
                path.display()
            ))
        })
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

/// Estimates the memory a kept change takes: its mutation (as its JSON length), its audit record
/// and ids, and a fixed overhead.
fn change_bytes(change: &Change) -> usize {
    let mutation = serde_json::to_vec(&change.mutation).map_or(0, |json| json.len());
    std::mem::size_of::<Change>()
        + mutation
        + change.meta.text_bytes()
        + change.history.len()
        + change.id.len()
        + change.parent.len()
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
            let change = Change {
                revision,
                mutation,
                meta,
                history: self.history.clone(),
                id: crate::new_history_id(),
                parent: inner.log.back().map(|c| c.id.clone()).unwrap_or_default(),
            };
            if let Some(journal) = &self.journal {
                // On disk before anyone sees it: a change that cannot be written is refused.
                journal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .append(&change)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            }
            self.append_audit(&change)?;
            inner.state = state;
            self.keep(&mut inner, change);
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

    async fn history(&self) -> Result<String, StoreError> {
        Ok(self.history.clone())
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        Ok(Snapshot {
            state: inner.state.clone(),
            history: Some(self.history.clone()),
            head: inner.log.back().map(|c| c.id.clone()).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_suite!(async { MemoryStore::default() });

    /// The same behaviour with a journal on disk.
    mod durable {
        use super::*;

        crate::store_suite!(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
            // The open files outlive the directory's name.
            drop(dir);
            store
        });
    }

    fn meta() -> ChangeMeta {
        ChangeMeta {
            actor: "alice".into(),
            reason: "test".into(),
            at_ms: 7,
            before: "null".into(),
            after: "{}".into(),
        }
    }

    async fn commit_tenants(store: &MemoryStore, ids: &[&str]) {
        for id in ids {
            store
                .commit(&RoutingState::default(), crate::suite::tenant(id), meta())
                .await
                .expect("commit");
        }
    }

    #[tokio::test]
    async fn acknowledged_changes_and_the_history_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        commit_tenants(&store, &["t1", "t2", "t3"]).await;
        let history = store.history().await.expect("history");
        let before = store
            .changes_after(0, 10, Duration::ZERO)
            .await
            .expect("log");
        drop(store);
        let (store, truncated) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!(truncated, 0);
        assert_eq!(store.history().await.expect("history"), history);
        let state = store.load().await.expect("load");
        assert_eq!(state.revision(), 3);
        assert!(state.tenant("t2").is_some());
        let after = store
            .changes_after(0, 10, Duration::ZERO)
            .await
            .expect("log");
        assert_eq!(after, before, "the same changes, ids and parents");
        // And it goes on from there.
        commit_tenants(&store, &["t4"]).await;
        assert_eq!(store.load().await.expect("load").revision(), 4);
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_cut_off_and_reported() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        commit_tenants(&store, &["t1", "t2"]).await;
        drop(store);
        // A crash in the middle of writing the next frame: its header promises 100 bytes.
        let journal = dir.path().join(crate::journal::JOURNAL_FILE);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .expect("journal");
        file.write_all(&100u32.to_le_bytes()).expect("write");
        file.write_all(&[0xab; 14]).expect("write");
        drop(file);
        let (store, truncated) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!(truncated, 18);
        assert_eq!(store.load().await.expect("load").revision(), 2);
        commit_tenants(&store, &["t3"]).await;
        drop(store);
        let (store, truncated) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!(
            (truncated, store.load().await.expect("load").revision()),
            (0, 3)
        );
    }

    #[tokio::test]
    async fn damage_in_the_middle_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        commit_tenants(&store, &["t1", "t2", "t3"]).await;
        drop(store);
        let journal = dir.path().join(crate::journal::JOURNAL_FILE);
        let mut bytes = std::fs::read(&journal).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&journal, &bytes).expect("write");
        let err = MemoryStore::open_durable(dir.path()).expect_err("damaged");
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&journal).expect("read"), bytes, "nothing cut");
    }

    #[tokio::test]
    async fn a_data_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        let err = MemoryStore::open_durable(dir.path()).expect_err("in use");
        assert!(matches!(err, JournalError::Locked(_)), "{err}");
    }

    #[tokio::test]
    async fn every_embedded_store_starts_its_own_history() {
        let one = MemoryStore::default().history().await.expect("history");
        let two = MemoryStore::default().history().await.expect("history");
        assert_ne!(one, two);
    }

    #[tokio::test]
    async fn the_audit_file_gets_one_line_per_change() {
        let dir = std::env::temp_dir().join(format!("greyrouter-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let store = MemoryStore::default().with_audit_file(&path);
        let meta = ChangeMeta {
            actor: "alice".into(),
            reason: "onboarding".into(),
            at_ms: 42,
            before: "null".into(),
            after: "{\"id\":\"t1\"}".into(),
        };
        for id in ["t1", "t2"] {
            store
                .commit(
                    &RoutingState::default(),
                    crate::suite::tenant(id),
                    meta.clone(),
                )
                .await
                .expect("commit");
        }
        let text = std::fs::read_to_string(&path).expect("audit file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["revision"], 2);
        assert_eq!(lines[0]["actor"], "alice");
        assert_eq!(lines[0]["after"]["id"], "t1");
        assert_eq!(lines[0]["mutation"]["op"], "upsert_tenant");

        // An audit log that cannot be written refuses the change.
        let broken = MemoryStore::default().with_audit_file(dir.join("missing/dir/audit.jsonl"));
        let err = broken
            .commit(&RoutingState::default(), crate::suite::tenant("t1"), meta)
            .await
            .expect_err("unwritable audit log");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(broken.load().await.expect("load").revision(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

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

    #[tokio::test]
    async fn the_log_is_bounded_in_bytes_as_well_as_in_changes() {
        let store = MemoryStore::new(100_000).with_log_bytes(64 * 1024);
        let meta = ChangeMeta {
            reason: "r".repeat(256),
            before: "b".repeat(2_000),
            after: "a".repeat(2_000),
            ..ChangeMeta::default()
        };
        for i in 0..200 {
            store
                .commit(
                    &RoutingState::default(),
                    crate::suite::tenant(&format!("t{i}")),
                    meta.clone(),
                )
                .await
                .expect("commit");
        }
        let (kept, bytes) = store.log_footprint();
        assert!(bytes <= 64 * 1024, "{kept} changes of {bytes} bytes");
        assert!((5..200).contains(&kept), "{kept} changes kept");
        // The oldest are gone, the newest are there, and a follower that fell behind is told.
        let newest = store
            .changes_after(199, 10, Duration::ZERO)
            .await
            .expect("kept");
        assert_eq!(newest.len(), 1);
        assert!(matches!(
            store.changes_after(0, 10, Duration::ZERO).await,
            Err(StoreError::Compacted { .. })
        ));
    }
}
