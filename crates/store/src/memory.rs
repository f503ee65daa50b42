//! The embedded store: routing state in this process, in memory only or kept on disk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use routing_core::{Mutation, Revision, RoutingError, RoutingState};
use tokio::sync::{oneshot, watch};

use crate::journal::{self, DurableOptions, JournalError, Writer};
use crate::{Change, ChangeMeta, Commit, Snapshot, Store, StoreError};

/// Changes kept by default for routers to follow.
pub const DEFAULT_LOG_CAPACITY: usize = 100_000;
/// Memory the kept changes may take by default (estimated), in bytes.
pub const DEFAULT_LOG_BYTES: usize = 64 * 1024 * 1024;

/// Routing state in this process: in memory only (gone with the process), or durable (every
/// change on disk before it is acknowledged, see [`MemoryStore::open_durable`]).
#[derive(Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    history: String,
    durable: Option<Durable>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the journal writer when changes wait for it.
    wake: Condvar,
    /// The revision readers see.
    revision: watch::Sender<Revision>,
}

#[derive(Debug)]
struct Durable {
    dir: PathBuf,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Set while a snapshot is being written.
    snapshotting: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The state readers see: with a journal, only changes on disk.
    state: RoutingState,
    log: VecDeque<Change>,
    /// The estimated bytes of each kept change, in the same order, and their sum.
    log_sizes: VecDeque<usize>,
    logged_bytes: usize,
    log_capacity: usize,
    log_bytes: usize,
    audit_file: Option<PathBuf>,
    leases: std::collections::HashMap<String, (String, std::time::Instant)>,
    /// With a journal: changes applied and waiting to be written, in order, and the state
    /// they make (new changes are checked against it).
    pending: Vec<Pending>,
    latest: Option<RoutingState>,
    closing: bool,
    /// A past state the kept log continues from (the snapshot a durable store opened on):
    /// recent past states are rebuilt from it without reading the disk. Dropped once the log
    /// no longer reaches it.
    base: Option<RoutingState>,
    /// The id of the change that produced `state` (empty: none).
    published_head: String,
    /// The id of the newest change, also while a batch is being written (it then is in neither
    /// `pending` nor the log).
    latest_head: String,
}

#[derive(Debug)]
struct Pending {
    change: Change,
    frame: Vec<u8>,
    audit: Option<String>,
    reply: oneshot::Sender<Result<(), String>>,
}

impl Inner {
    /// Keeps `change` in the bounded log.
    fn keep(&mut self, change: Change) {
        let bytes = change_bytes(&change);
        self.keep_sized(change, bytes);
    }

    /// Keeps `change`, whose size is estimated at `bytes`, in the bounded log.
    fn keep_sized(&mut self, change: Change, bytes: usize) {
        self.log.push_back(change);
        self.log_sizes.push_back(bytes);
        self.logged_bytes += bytes;
        while self.log.len() > self.log_capacity
            || (self.logged_bytes > self.log_bytes && self.log.len() > 1)
        {
            self.log.pop_front();
            if let Some(oldest) = self.log_sizes.pop_front() {
                self.logged_bytes -= oldest;
            }
        }
        if let (Some(base), Some(front)) = (&self.base, self.log.front())
            && front.revision > base.revision() + 1
        {
            self.base = None;
        }
    }

    /// The changes to replay onto the base for `revision`, when the base and the log reach it.
    fn replay_from_base(&self, revision: Revision) -> Option<(RoutingState, Vec<Change>)> {
        let base = self.base.as_ref()?;
        if revision < base.revision() {
            return None;
        }
        let changes: Vec<Change> = self
            .log
            .iter()
            .filter(|c| c.revision > base.revision() && c.revision <= revision)
            .cloned()
            .collect();
        let reaches = changes
            .first()
            .is_none_or(|c| c.revision == base.revision() + 1);
        reaches.then(|| (base.clone(), changes))
    }

    /// The id of the newest change, written or waiting to be.
    fn head(&self) -> String {
        match self.pending.last() {
            Some(pending) => pending.change.id.clone(),
            None => self.latest_head.clone(),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied state: the state is
        // replaced only after a successful apply.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_LOG_CAPACITY)
    }
}

/// What opening a durable store found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Bytes of a torn last record cut off (0: the log was whole).
    pub truncated_bytes: u64,
    /// The snapshot the state was rebuilt from (`None`: the log from the start).
    pub snapshot: Option<Revision>,
    /// Changes replayed after it.
    pub replayed: usize,
    /// Damaged snapshots passed over, and the like.
    pub warnings: Vec<String>,
}

impl MemoryStore {
    /// Returns an empty store keeping the last `log_capacity` changes (at least one), and no
    /// more than [`DEFAULT_LOG_BYTES`] of them.
    pub fn new(log_capacity: usize) -> Self {
        let inner = Inner {
            log_capacity: log_capacity.max(1),
            log_bytes: DEFAULT_LOG_BYTES,
            ..Inner::default()
        };
        MemoryStore {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                wake: Condvar::new(),
                revision: watch::Sender::new(0),
            }),
            history: crate::new_history_id(),
            durable: None,
        }
    }

    /// Opens the durable embedded store in `dir` with the default snapshot policy.
    pub fn open_durable(dir: &Path) -> Result<(Self, Opened), JournalError> {
        MemoryStore::open_durable_with(dir, DurableOptions::default())
    }

    /// Opens the durable embedded store in `dir` (created when missing, locked while open):
    /// the state is the newest snapshot and the log after it; every new change is synced to
    /// the log before it is acknowledged (changes arriving together share one sync).
    pub fn open_durable_with(
        dir: &Path,
        options: DurableOptions,
    ) -> Result<(Self, Opened), JournalError> {
        let lock = journal::lock(dir)?;
        let truncated_bytes = journal::cut_torn_tail(dir)?;
        let recovered = journal::recover(dir, None)?;
        let history = recovered
            .history
            .clone()
            .unwrap_or_else(crate::new_history_id);
        let revision = recovered.state.revision();
        let writer = Writer::open(dir, &history, revision + 1)?;
        let opened = Opened {
            truncated_bytes,
            snapshot: recovered.snapshot,
            replayed: recovered
                .changes
                .iter()
                .filter(|c| c.revision > recovered.snapshot.unwrap_or(0))
                .count(),
            warnings: recovered.warnings,
        };
        let mut store = MemoryStore::new(DEFAULT_LOG_CAPACITY);
        store.history.clone_from(&history);
        {
            let mut inner = store.shared.lock();
            inner.state = recovered.state;
            inner.base = Some(recovered.base);
            inner.published_head.clone_from(&recovered.head);
            inner.latest_head.clone_from(&recovered.head);
            for change in recovered.changes {
                inner.keep(change);
            }
        }
        store.shared.revision.send_replace(revision);
        let since_snapshot = revision - recovered.snapshot.unwrap_or(0);
        let snapshotting = Arc::new(watch::Sender::new(false));
        let journal = JournalWriter {
            shared: Arc::clone(&store.shared),
            writer,
            dir: dir.to_owned(),
            options,
            history,
            since_snapshot,
            snapshotting: Arc::clone(&snapshotting),
            snapshot_thread: None,
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("greyrouter-journal".into())
            .spawn(move || journal.run())
            .map_err(|source| JournalError::Io {
                path: dir.to_owned(),
                source,
            })?;
        store.durable = Some(Durable {
            dir: dir.to_owned(),
            writer: Some(thread),
            snapshotting,
        });
        Ok((store, opened))
    }

    /// Keeps no more than about `bytes` of changes (the newest change is always kept).
    pub fn with_log_bytes(self, bytes: usize) -> Self {
        self.shared.lock().log_bytes = bytes;
        self
    }

    /// Returns how many changes the log keeps and their estimated bytes.
    pub fn log_footprint(&self) -> (usize, usize) {
        let inner = self.shared.lock();
        (inner.log.len(), inner.logged_bytes)
    }

    /// Also appends every change, as one JSON line, to `path`: the audit trail outlives the
    /// bounded log and the process. A change whose line cannot be written is refused.
    pub fn with_audit_file(self, path: impl Into<PathBuf>) -> Self {
        self.shared.lock().audit_file = Some(path.into());
        self
    }

    /// Whether a snapshot is being written now.
    pub fn snapshot_running(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| *d.snapshotting.borrow())
    }

    /// Waits until no snapshot is being written (its file on disk and old files pruned).
    pub async fn snapshot_finished(&self) {
        if let Some(durable) = &self.durable {
            let mut running = durable.snapshotting.subscribe();
            let _ = running.wait_for(|running| !running).await;
        }
    }

    /// The data directory of a durable store.
    pub fn data_dir(&self) -> Option<&Path> {
        self.durable.as_ref().map(|d| d.dir.as_path())
    }

    fn read_after(&self, after: Revision, limit: usize) -> Result<Vec<Change>, StoreError> {
        let inner = self.shared.lock();
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

    /// Applies `mutation` to `base`: the state it makes, what it reported, and its change
    /// record, whose parent is `parent`.
    fn next_change(
        &self,
        base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
        parent: String,
    ) -> Result<(RoutingState, routing_core::Outcome, Change), StoreError> {
        let (state, outcome) = base.apply(&mutation)?;
        let change = Change {
            revision: state.revision(),
            mutation,
            meta,
            history: self.history.clone(),
            id: crate::new_history_id(),
            parent,
        };
        Ok((state, outcome, change))
    }

    /// Commits in memory only: applied and visible at once.
    fn commit_in_memory(&self, mutation: Mutation, meta: ChangeMeta) -> Result<Commit, StoreError> {
        let commit = {
            let mut inner = self.shared.lock();
            let (state, outcome, change) =
                self.next_change(&inner.state, mutation, meta, inner.head())?;
            let revision = change.revision;
            if let Some(path) = &inner.audit_file {
                append_audit(path, &audit_line(&change))?;
            }
            inner.state = state;
            inner.published_head.clone_from(&change.id);
            inner.latest_head.clone_from(&change.id);
            inner.keep(change);
            Commit { revision, outcome }
        };
        self.shared.revision.send_replace(commit.revision);
        Ok(commit)
    }

    /// Commits through the journal: applied to the latest state at once (so that the next
    /// change is checked against it), visible and acknowledged once on disk.
    async fn commit_durable(
        &self,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        let (written, commit) = {
            let mut inner = self.shared.lock();
            if inner.closing {
                return Err(StoreError::Unavailable("the store is closing".into()));
            }
            let base = inner.latest.as_ref().unwrap_or(&inner.state);
            let (state, outcome, change) = self.next_change(base, mutation, meta, inner.head())?;
            let revision = change.revision;
            let frame = journal::change_frame(&change);
            let audit = inner.audit_file.as_ref().map(|_| audit_line(&change));
            let (reply, written) = oneshot::channel();
            inner.latest_head.clone_from(&change.id);
            inner.pending.push(Pending {
                change,
                frame,
                audit,
                reply,
            });
            inner.latest = Some(state);
            self.shared.wake.notify_one();
            (written, Commit { revision, outcome })
        };
        match written.await {
            Ok(Ok(())) => Ok(commit),
            Ok(Err(reason)) => Err(StoreError::Unavailable(reason)),
            Err(_) => Err(StoreError::Unavailable(
                "the journal writer stopped before the change was written".into(),
            )),
        }
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        if let Some(durable) = &mut self.durable {
            self.shared.lock().closing = true;
            self.shared.wake.notify_all();
            // What waits is written first; then the directory is unlocked.
            if let Some(thread) = durable.writer.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The journal writer: one thread that writes what waits, syncs once for all of it
/// (group commit), then makes it visible and acknowledges it; and starts snapshots.
struct JournalWriter {
    shared: Arc<Shared>,
    writer: Writer,
    dir: PathBuf,
    options: DurableOptions,
    history: String,
    since_snapshot: u64,
    snapshotting: Arc<watch::Sender<bool>>,
    snapshot_thread: Option<std::thread::JoinHandle<()>>,
    /// Released last: after the snapshot thread is done with the directory.
    _lock: std::fs::File,
}

impl JournalWriter {
    fn run(mut self) {
        loop {
            let (batch, latest) = {
                let mut inner = self.shared.lock();
                while inner.pending.is_empty() && !inner.closing {
                    inner = self
                        .shared
                        .wake
                        .wait(inner)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                let batch = std::mem::take(&mut inner.pending);
                match (batch.is_empty(), inner.latest.clone()) {
                    (false, Some(latest)) => (batch, latest),
                    _ => break,
                }
            };
            self.write(batch, latest);
        }
        if let Some(thread) = self.snapshot_thread.take() {
            let _ = thread.join();
        }
    }

    fn write(&mut self, batch: Vec<Pending>, latest: RoutingState) {
        let mut frames = Vec::with_capacity(batch.iter().map(|p| p.frame.len()).sum());
        for pending in &batch {
            frames.extend_from_slice(&pending.frame);
        }
        let audit_path = self.shared.lock().audit_file.clone();
        let audited = match &audit_path {
            Some(path) => {
                let lines: String = batch
                    .iter()
                    .filter_map(|p| p.audit.as_deref())
                    .flat_map(|line| [line, "\n"])
                    .collect();
                append_audit(path, lines.trim_end_matches('\n')).map_err(|e| e.to_string())
            }
            None => Ok(()),
        };
        let written = audited.and_then(|()| self.writer.append(&frames).map_err(|e| e.to_string()));
        if let Err(reason) = written {
            // Later changes were checked against these: they fail with them.
            let later = {
                let mut inner = self.shared.lock();
                inner.latest = None;
                inner.latest_head = inner.published_head.clone();
                std::mem::take(&mut inner.pending)
            };
            for pending in batch.into_iter().chain(later) {
                let _ = pending
                    .reply
                    .send(Err(format!("cannot write the journal: {reason}")));
            }
            return;
        }
        let revision = latest.revision();
        let count = batch.len() as u64;
        let head = batch
            .last()
            .map(|p| p.change.id.clone())
            .unwrap_or_default();
        let mut replies = Vec::with_capacity(batch.len());
        {
            let mut inner = self.shared.lock();
            inner.state = latest.clone();
            inner.published_head.clone_from(&head);
            if inner.pending.is_empty() {
                inner.latest = None;
            }
            for pending in batch {
                // Its log record is its size: no second encoding.
                let bytes = std::mem::size_of::<Change>() + pending.frame.len();
                inner.keep_sized(pending.change, bytes);
                replies.push(pending.reply);
            }
        }
        // A snapshot due is started before the changes are acknowledged, so that whoever saw
        // the acknowledgement also sees it running.
        self.since_snapshot += count;
        if self.since_snapshot >= self.options.snapshot_every
            && !self.snapshotting.send_replace(true)
        {
            self.snapshot(latest, head);
        }
        self.shared.revision.send_replace(revision);
        for reply in replies {
            let _ = reply.send(Ok(()));
        }
    }

    /// Starts a new segment after `state`'s revision and writes the snapshot of `state` in the
    /// background; old snapshots and segments go once it is on disk.
    fn snapshot(&mut self, state: RoutingState, head: String) {
        if self.writer.rotate(state.revision() + 1).is_err() {
            // Keep appending to the current segment; try again after the next changes.
            self.snapshotting.send_replace(false);
            return;
        }
        self.since_snapshot = 0;
        let dir = self.dir.clone();
        let history = self.history.clone();
        let keep = self.options.keep_snapshots;
        let snapshotting = Arc::clone(&self.snapshotting);
        let spawned = std::thread::Builder::new()
            .name("greyrouter-snapshot".into())
            .spawn(move || {
                if journal::write_snapshot(&dir, &history, &head, &state).is_ok() {
                    let _ = journal::prune(&dir, keep);
                }
                snapshotting.send_replace(false);
            });
        match spawned {
            Ok(thread) => {
                if let Some(previous) = self.snapshot_thread.replace(thread) {
                    // Already done: its flag was down.
                    let _ = previous.join();
                }
            }
            Err(_) => {
                self.snapshotting.send_replace(false);
            }
        }
    }
}

fn audit_line(change: &Change) -> String {
    let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "revision": change.revision,
        "at_ms": change.meta.at_ms,
        "actor": change.meta.actor,
        "reason": change.meta.reason,
        "mutation": change.mutation,
        "before": parse(&change.meta.before),
        "after": parse(&change.meta.after),
    })
    .to_string()
}

fn append_audit(path: &Path, lines: &str) -> Result<(), StoreError> {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{lines}"));
    written.map_err(|err| {
        StoreError::Unavailable(format!(
            "cannot write the audit log {}: {err}",
            path.display()
        ))
    })
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
        Ok(self.shared.lock().state.clone())
    }

    /// Validates against the store's own latest state (always current here), so `base` is not
    /// needed and no conflict arises.
    async fn commit(
        &self,
        _base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        if self.durable.is_some() {
            self.commit_durable(mutation, meta).await
        } else {
            self.commit_in_memory(mutation, meta)
        }
    }

    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        let mut revisions = self.shared.revision.subscribe();
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
        let mut inner = self.shared.lock();
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

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        Ok(*self.shared.revision.borrow())
    }

    fn describe(&self) -> String {
        match &self.durable {
            Some(durable) => format!("durable:{}", durable.dir.display()),
            None => "memory".to_owned(),
        }
    }

    async fn history(&self) -> Result<String, StoreError> {
        Ok(self.history.clone())
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let inner = self.shared.lock();
        Ok(Snapshot {
            state: inner.state.clone(),
            history: Some(self.history.clone()),
            head: inner.published_head.clone(),
        })
    }

    fn rebuildable_from(&self) -> Option<Revision> {
        self.shared.lock().base.as_ref().map(RoutingState::revision)
    }

    async fn state_at(&self, revision: Revision) -> Result<RoutingState, StoreError> {
        let current = self.shared.lock().state.clone();
        if revision == current.revision() {
            return Ok(current);
        }
        if revision > current.revision() {
            return Err(StoreError::Rejected(RoutingError::FailedPrecondition(
                format!(
                    "revision {revision} is ahead of the store (at revision {})",
                    current.revision()
                ),
            )));
        }
        let Some(durable) = &self.durable else {
            return Err(StoreError::Rejected(RoutingError::FailedPrecondition(
                "the in-memory store keeps no past states (the durable store does)".into(),
            )));
        };
        let recent = self.shared.lock().replay_from_base(revision);
        if let Some((mut state, changes)) = recent {
            for change in &changes {
                match state.apply(&change.mutation) {
                    Ok((next, _)) => state = next,
                    Err(err) => return Err(StoreError::Corrupt(err.to_string())),
                }
            }
            if state.revision() == revision {
                return Ok(state);
            }
        }
        let dir = durable.dir.clone();
        let rebuilt = tokio::task::spawn_blocking(move || journal::recover(&dir, Some(revision)))
            .await
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        match rebuilt {
            Ok(recovered) => Ok(recovered.state),
            Err(JournalError::NotKept { oldest, .. }) => Err(StoreError::Rejected(
                RoutingError::FailedPrecondition(format!(
                    "revision {revision} is no longer kept (the oldest that can be rebuilt is {oldest})"
                )),
            )),
            Err(err) => Err(StoreError::Unavailable(err.to_string())),
        }
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

    fn newest_segment(dir: &Path) -> PathBuf {
        let files = journal::files(dir).expect("files");
        files.segments.last().expect("a segment").1.clone()
    }

    fn small_snapshots() -> DurableOptions {
        DurableOptions {
            snapshot_every: 4,
            keep_snapshots: 2,
        }
    }

    /// Commits tenants `t<from>..t<to>` one by one, letting each snapshot finish (written and
    /// old files pruned) before the next change, so that snapshots fall every 4 changes.
    async fn commit_with_snapshots(store: &MemoryStore, from: usize, to: usize) {
        for i in from..to {
            commit_tenants(store, &[&format!("t{i}")]).await;
            tokio::time::timeout(Duration::from_secs(20), store.snapshot_finished())
                .await
                .expect("the snapshot finishes");
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
        let (store, opened) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!((opened.truncated_bytes, opened.replayed), (0, 3));
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
    async fn concurrent_changes_share_syncs_and_each_is_acknowledged_once_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        let store = Arc::new(store);
        let writers = (0..32).map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..20 {
                    let commit = store
                        .commit(
                            &RoutingState::default(),
                            crate::suite::tenant(&format!("w{w}-{i}")),
                            meta(),
                        )
                        .await
                        .expect("commit");
                    revisions.push(commit.revision);
                }
                revisions
            })
        });
        let mut revisions = Vec::new();
        for writer in writers {
            revisions.extend(writer.await.expect("writer"));
        }
        revisions.sort_unstable();
        assert_eq!(
            revisions,
            (1..=640).collect::<Vec<_>>(),
            "one revision each"
        );
        let state = store.load().await.expect("load");
        drop(store);
        let recovered = journal::recover(dir.path(), None).expect("recover");
        assert_eq!(recovered.state.dump(), state.dump());
    }

    #[tokio::test]
    async fn snapshots_shorten_the_replay_and_old_files_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("open");
        commit_with_snapshots(&store, 0, 14).await;
        let state = store.load().await.expect("load");
        drop(store);
        let files = journal::files(dir.path()).expect("files");
        let kept: Vec<Revision> = files.snapshots.iter().map(|(r, _)| *r).collect();
        assert_eq!(kept, [8, 12], "the newest two");
        assert_eq!(files.segments.first().map(|(first, _)| *first), Some(9));
        let (store, opened) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("reopen");
        assert_eq!((opened.snapshot, opened.replayed), (Some(12), 2));
        assert_eq!(store.load().await.expect("load").dump(), state.dump());
        // Watchers still get the changes from before the snapshot.
        let kept = store
            .changes_after(8, 100, Duration::ZERO)
            .await
            .expect("kept");
        assert_eq!(kept.first().map(|c| c.revision), Some(9));
    }

    #[tokio::test]
    async fn a_missing_or_damaged_snapshot_falls_back_to_an_older_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("open");
        commit_with_snapshots(&store, 0, 13).await;
        let state = store.load().await.expect("load");
        drop(store);
        let newest = journal::files(dir.path()).expect("files").snapshots[1]
            .1
            .clone();
        let mut bytes = std::fs::read(&newest).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&newest, &bytes).expect("write");
        let (store, opened) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("reopen");
        assert_eq!(opened.snapshot, Some(8));
        assert_eq!(opened.warnings.len(), 1, "{:?}", opened.warnings);
        assert_eq!(store.load().await.expect("load").dump(), state.dump());
        drop(store);
        std::fs::remove_file(&newest).expect("remove");
        let (store, opened) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("reopen");
        assert_eq!(opened.snapshot, Some(8));
        assert_eq!(store.load().await.expect("load").dump(), state.dump());
        drop(store);
        // With every snapshot gone the log no longer reaches back far enough: refused.
        for (_, path) in journal::files(dir.path()).expect("files").snapshots {
            std::fs::remove_file(path).expect("remove");
        }
        let err = MemoryStore::open_durable_with(dir.path(), small_snapshots())
            .expect_err("no base to replay onto");
        assert!(matches!(err, JournalError::NotKept { .. }), "{err}");
    }

    #[tokio::test]
    async fn past_states_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("open");
        let mut states = vec![store.load().await.expect("load")];
        for i in 0..10 {
            commit_with_snapshots(&store, i, i + 1).await;
            states.push(store.load().await.expect("load"));
        }
        // From what this process keeps in memory (every change since it opened the directory).
        for revision in [2, 5, 8, 10] {
            let past = store.state_at(revision).await.expect("kept");
            assert_eq!(
                past.dump(),
                states[revision as usize].dump(),
                "revision {revision}"
            );
        }
        // After a restart: from the snapshots and the log on disk.
        drop(store);
        let (store, _) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("reopen");
        for revision in [5, 7, 8, 9, 10] {
            let past = store.state_at(revision).await.expect("kept");
            assert_eq!(
                past.dump(),
                states[revision as usize].dump(),
                "revision {revision}"
            );
        }
        // Before the oldest snapshot kept and the log after it: gone, and said so.
        let err = store.state_at(2).await.expect_err("no longer kept");
        assert!(err.to_string().contains("no longer kept"), "{err}");
        let err = store.state_at(11).await.expect_err("ahead");
        assert!(err.to_string().contains("ahead"), "{err}");
        // The memory store has only its present.
        let memory = MemoryStore::default();
        commit_tenants(&memory, &["t1", "t2"]).await;
        assert_eq!(memory.state_at(2).await.expect("now").revision(), 2);
        assert!(memory.state_at(1).await.is_err());
    }

    #[tokio::test]
    async fn check_reports_what_the_directory_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            MemoryStore::open_durable_with(dir.path(), small_snapshots()).expect("open");
        commit_with_snapshots(&store, 0, 9).await;
        let report = journal::check(dir.path()).expect("check while open");
        // Snapshots 4 and 8, and the log after the older one.
        assert_eq!((report.revision, report.changes), (9, 5));
        let statuses: Vec<&str> = report.snapshots.iter().map(|s| s.status.as_str()).collect();
        assert_eq!(
            statuses,
            [
                "ok (the log does not reach back before it)",
                "ok (equals the replay of the log)"
            ]
        );
        drop(store);
        // Damage in a segment with records after it (damage in the very last record cannot be
        // told from a torn write, and is cut off as one).
        let segment = journal::files(dir.path()).expect("files").segments[0]
            .1
            .clone();
        let mut bytes = std::fs::read(&segment).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&segment, &bytes).expect("write");
        let err = journal::check(dir.path()).expect_err("damaged");
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_cut_off_and_reported() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        commit_tenants(&store, &["t1", "t2"]).await;
        drop(store);
        // A crash in the middle of writing the next frame: its header promises 100 bytes.
        let segment = newest_segment(dir.path());
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("segment");
        file.write_all(&100u32.to_le_bytes()).expect("write");
        file.write_all(&[0xab; 14]).expect("write");
        drop(file);
        let (store, opened) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!(opened.truncated_bytes, 18);
        assert_eq!(store.load().await.expect("load").revision(), 2);
        commit_tenants(&store, &["t3"]).await;
        drop(store);
        let (store, opened) = MemoryStore::open_durable(dir.path()).expect("reopen");
        assert_eq!(
            (
                opened.truncated_bytes,
                store.load().await.expect("load").revision()
            ),
            (0, 3)
        );
    }

    #[tokio::test]
    async fn damage_in_the_middle_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = MemoryStore::open_durable(dir.path()).expect("open");
        commit_tenants(&store, &["t1", "t2", "t3"]).await;
        drop(store);
        let segment = newest_segment(dir.path());
        let mut bytes = std::fs::read(&segment).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&segment, &bytes).expect("write");
        let err = MemoryStore::open_durable(dir.path()).expect_err("damaged");
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&segment).expect("read"), bytes, "nothing cut");
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
