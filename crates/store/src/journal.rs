//! The files of the durable embedded store: the change log in segments, the snapshots, the lock.
//!
//! Event sourcing: the log of changes *is* the state. Snapshots only shorten the replay.
//!
//! - `changes-<first revision>.log`, the log in segments: frames of
//!   `[length: u32 LE][crc32 of payload: u32 LE][payload]`, the payload one JSON entry: first
//!   the store's history id, then one entry per change, in revision order without gaps. A frame
//!   cut short by a crash (power loss, `SIGKILL` mid-write) can only be the last one of the last
//!   segment: it was never acknowledged, and it is cut off on open (reported in
//!   [`Recovered::truncated_bytes`]). A frame that fails its checksum anywhere else is damage:
//!   the open is refused and nothing is changed.
//! - `snapshot-<revision>.snap`: the whole state at a revision (`GRSNAP1\n`, the payload's
//!   length as u64 LE, its crc32, then a JSON [`StateDump`] with the history id and the id of
//!   the change that produced it), written to a temporary file, synced and renamed into place.
//!   The newest few are kept with the segments after the oldest of them, so that a damaged or
//!   missing snapshot falls back to an older one and past states can be rebuilt.
//! - `LOCK`, held (an OS file lock) while a store has the directory open, so that a second
//!   process is refused instead of writing beside the first.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use routing_core::{Mutation, Revision, RoutingState, StateDump};
use serde::{Deserialize, Serialize};

use crate::{Change, ChangeMeta};

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Largest log frame accepted on replay (a longer declared length is damage).
const MAX_FRAME: u32 = 256 * 1024 * 1024;
const SNAPSHOT_MAGIC: &[u8; 8] = b"GRSNAP1\n";

/// How often the durable store writes a snapshot and how many it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableOptions {
    /// A snapshot (and a new log segment) after this many changes.
    pub snapshot_every: u64,
    /// Snapshots kept (at least 1); the log is kept from the oldest of them on, so this many
    /// times `snapshot_every` changes stay readable for watchers and past states.
    pub keep_snapshots: usize,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            snapshot_every: 20_000,
            keep_snapshots: 3,
        }
    }
}

/// Why a data directory cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A file of the data directory is damaged.
    #[error(
        "{path} is damaged at byte {offset}: {what}; refusing to open (run `greyrouter store check --data-dir DIR`, then restore from a backup or move the file aside)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The changes needed are no longer kept.
    #[error(
        "revision {requested} is no longer kept in {dir} (the oldest that can be rebuilt is {oldest})"
    )]
    NotKept {
        /// The data directory.
        dir: PathBuf,
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision that can be rebuilt.
        oldest: Revision,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        path: path.to_owned(),
        offset,
        what: what.into(),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
enum Entry {
    History {
        id: String,
    },
    Change {
        revision: Revision,
        mutation: Box<Mutation>,
        actor: String,
        reason: String,
        at_ms: u64,
        before: String,
        after: String,
        history: String,
        id: String,
        parent: String,
    },
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    history: String,
    head: String,
    state: StateDump,
}

/// A snapshot read back.
#[derive(Debug, Clone)]
pub struct SnapshotRead {
    /// The store's history id.
    pub history: String,
    /// The id of the change that produced the state.
    pub head: String,
    /// The state.
    pub state: RoutingState,
}

/// CRC-32 (IEEE) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE), a byte at a time from a table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &byte in bytes {
        crc = (crc >> 8) ^ CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize];
    }
    !crc
}

/// A change as written: the same record as [`Entry::Change`], borrowed.
#[derive(Serialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
enum EntryOut<'a> {
    Change {
        revision: Revision,
        mutation: &'a Mutation,
        actor: &'a str,
        reason: &'a str,
        at_ms: u64,
        before: &'a str,
        after: &'a str,
        history: &'a str,
        id: &'a str,
        parent: &'a str,
    },
}

fn frame_of<T: Serialize>(entry: &T) -> Vec<u8> {
    let mut frame = vec![0u8; 8];
    // Serializing plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut frame, entry);
    let length = u32::try_from(frame.len() - 8).unwrap_or(u32::MAX);
    let crc = crc32(&frame[8..]);
    frame[..4].copy_from_slice(&length.to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Encodes a change as one log frame.
pub fn change_frame(change: &Change) -> Vec<u8> {
    frame_of(&EntryOut::Change {
        revision: change.revision,
        mutation: &change.mutation,
        actor: &change.meta.actor,
        reason: &change.meta.reason,
        at_ms: change.meta.at_ms,
        before: &change.meta.before,
        after: &change.meta.after,
        history: &change.history,
        id: &change.id,
        parent: &change.parent,
    })
}

enum Frame<'a> {
    /// A frame whose checksum holds: its payload and its whole length.
    Whole(&'a [u8], usize),
    /// The last frame, cut short.
    Torn,
    /// A complete frame whose checksum fails, or a length no frame can have.
    Damaged,
}

fn frame(bytes: &[u8]) -> Frame<'_> {
    let Some(header) = bytes.get(..8) else {
        return Frame::Torn;
    };
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if length > MAX_FRAME {
        return Frame::Damaged;
    }
    let end = 8 + length as usize;
    let Some(payload) = bytes.get(8..end) else {
        return Frame::Torn;
    };
    if crc32(payload) != crc {
        // The last frame may be torn inside its payload; one with frames after it is damage.
        return if end == bytes.len() {
            Frame::Torn
        } else {
            Frame::Damaged
        };
    }
    Frame::Whole(payload, end)
}

/// The files of a data directory, by revision.
#[derive(Debug, Default)]
pub struct Files {
    /// Snapshots, oldest first: (revision, path).
    pub snapshots: Vec<(Revision, PathBuf)>,
    /// Log segments, oldest first: (first revision, path).
    pub segments: Vec<(Revision, PathBuf)>,
}

fn revision_of(name: &str, prefix: &str, suffix: &str) -> Option<Revision> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn segment_name(first: Revision) -> String {
    format!("changes-{first:020}.log")
}

fn snapshot_name(revision: Revision) -> String {
    format!("snapshot-{revision:020}.snap")
}

/// Lists the snapshots and segments of `dir`.
pub fn files(dir: &Path) -> Result<Files, JournalError> {
    let mut found = Files::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(io_error(dir)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(revision) = revision_of(name, "snapshot-", ".snap") {
            found.snapshots.push((revision, entry.path()));
        } else if let Some(first) = revision_of(name, "changes-", ".log") {
            found.segments.push((first, entry.path()));
        }
    }
    found.snapshots.sort();
    found.segments.sort();
    Ok(found)
}

/// One segment read back.
#[derive(Debug, Default)]
struct SegmentRead {
    history: Option<String>,
    changes: Vec<Change>,
    /// Length of the whole frames.
    whole: u64,
    /// Bytes after them (a torn last frame).
    torn: u64,
}

fn read_segment(path: &Path) -> Result<SegmentRead, JournalError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let mut read = SegmentRead::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match frame(&bytes[at..]) {
            Frame::Whole(payload, length) => {
                match serde_json::from_slice::<Entry>(payload) {
                    Ok(Entry::History { id }) => read.history = Some(id),
                    Ok(Entry::Change {
                        revision,
                        mutation,
                        actor,
                        reason,
                        at_ms,
                        before,
                        after,
                        history,
                        id,
                        parent,
                    }) => read.changes.push(Change {
                        revision,
                        mutation: *mutation,
                        meta: ChangeMeta {
                            actor,
                            reason,
                            at_ms,
                            before,
                            after,
                        },
                        history,
                        id,
                        parent,
                    }),
                    // A checksummed entry that does not parse is damage, not a torn write.
                    Err(err) => {
                        return Err(corrupt(path, at as u64, format!("unreadable entry: {err}")));
                    }
                }
                at += length;
            }
            Frame::Torn => {
                read.torn = (bytes.len() - at) as u64;
                break;
            }
            Frame::Damaged => {
                return Err(corrupt(
                    path,
                    at as u64,
                    "a record fails its checksum with records after it",
                ));
            }
        }
    }
    read.whole = at as u64;
    Ok(read)
}

/// Reads a snapshot file, checking its checksum and every record in it.
pub fn read_snapshot(path: &Path) -> Result<SnapshotRead, JournalError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let damaged = |what: &str| corrupt(path, 0, what);
    let header = bytes
        .get(..20)
        .ok_or_else(|| damaged("shorter than its header"))?;
    if &header[..8] != SNAPSHOT_MAGIC {
        return Err(damaged("not a snapshot"));
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&header[8..16]);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[16..20]);
    let payload = &bytes[20..];
    if payload.len() as u64 != u64::from_le_bytes(length) {
        return Err(damaged("cut short"));
    }
    if crc32(payload) != u32::from_le_bytes(crc) {
        return Err(damaged("fails its checksum"));
    }
    let file: SnapshotFile =
        serde_json::from_slice(payload).map_err(|err| damaged(&format!("unreadable: {err}")))?;
    let state = RoutingState::from_dump(&file.state)
        .map_err(|err| damaged(&format!("holds a record the rules refuse: {err}")))?;
    Ok(SnapshotRead {
        history: file.history,
        head: file.head,
        state,
    })
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Writes a snapshot of `state` atomically (temporary file, sync, rename, sync directory).
pub fn write_snapshot(
    dir: &Path,
    history: &str,
    head: &str,
    state: &RoutingState,
) -> Result<PathBuf, JournalError> {
    let file = SnapshotFile {
        history: history.to_owned(),
        head: head.to_owned(),
        state: state.dump(),
    };
    let payload = serde_json::to_vec(&file).unwrap_or_default();
    let path = dir.join(snapshot_name(state.revision()));
    let temporary = dir.join(format!("{}.tmp", snapshot_name(state.revision())));
    let written = File::create(&temporary).and_then(|mut out| {
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&(payload.len() as u64).to_le_bytes())?;
        out.write_all(&crc32(&payload).to_le_bytes())?;
        out.write_all(&payload)?;
        out.sync_all()
    });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_error(&temporary)(err));
    }
    std::fs::rename(&temporary, &path).map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Deletes all but the newest `keep` snapshots, and the segments wholly before the oldest
/// snapshot kept. The newest segment is never deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<(), JournalError> {
    let files = files(dir)?;
    let cut = files.snapshots.len().saturating_sub(keep.max(1));
    let Some((oldest_kept, _)) = files.snapshots.get(cut) else {
        return Ok(());
    };
    let oldest_kept = *oldest_kept;
    for (_, path) in &files.snapshots[..cut] {
        std::fs::remove_file(path).map_err(io_error(path))?;
    }
    // Segment i ends where segment i+1 begins.
    for pair in files.segments.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first.saturating_sub(1) <= oldest_kept {
            std::fs::remove_file(path).map_err(io_error(path))?;
        }
    }
    Ok(())
}

/// What a data directory holds.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The store's history id, when it has one.
    pub history: Option<String>,
    /// The state at the last change.
    pub state: RoutingState,
    /// The state the replay started from (the snapshot used, or the empty state).
    pub base: RoutingState,
    /// The id of the last change (empty: none).
    pub head: String,
    /// Every change the log keeps, in order (including those before the snapshot used).
    pub changes: Vec<Change>,
    /// The revision of the snapshot the state was rebuilt from (`None`: from the start).
    pub snapshot: Option<Revision>,
    /// Bytes of a torn last frame (0: none).
    pub truncated_bytes: u64,
    /// Things worth a loud log line (a damaged snapshot passed over).
    pub warnings: Vec<String>,
}

/// Reads a data directory without changing it: the state at `upto` (the latest when `None`),
/// from the newest usable snapshot at or before it and the log after that snapshot.
pub fn recover(dir: &Path, upto: Option<Revision>) -> Result<Recovered, JournalError> {
    let files = files(dir)?;
    let mut recovered = Recovered::default();
    let segment_count = files.segments.len();
    for (index, (first, path)) in files.segments.iter().enumerate() {
        let read = read_segment(path)?;
        if read.torn > 0 {
            if index + 1 < segment_count {
                return Err(corrupt(
                    path,
                    read.whole,
                    "a record is cut short in a segment that is not the last",
                ));
            }
            recovered.truncated_bytes = read.torn;
        }
        if let Some(history) = read.history {
            recovered.history.get_or_insert(history);
        }
        if let Some(change) = read.changes.first()
            && change.revision != *first
        {
            return Err(corrupt(
                path,
                0,
                format!(
                    "starts at revision {} but is named for {first}",
                    change.revision
                ),
            ));
        }
        for change in read.changes {
            if let Some(last) = recovered.changes.last()
                && change.revision != last.revision + 1
            {
                return Err(corrupt(
                    path,
                    0,
                    format!(
                        "revision {} follows {}: changes are missing",
                        change.revision, last.revision
                    ),
                ));
            }
            recovered.changes.push(change);
        }
    }
    let first_kept = recovered.changes.first().map(|c| c.revision);
    let last_kept = recovered.changes.last().map(|c| c.revision);
    let newest_snapshot = files.snapshots.last().map(|(revision, _)| *revision);
    let latest = last_kept.or(newest_snapshot).unwrap_or(0);
    let target = upto.unwrap_or(latest);
    let not_kept = |files: &Files| JournalError::NotKept {
        dir: dir.to_owned(),
        requested: target,
        oldest: oldest_rebuildable(files, first_kept),
    };
    if target > latest {
        return Err(not_kept(&files));
    }
    // The newest snapshot at or before the target that reads back whole and that the log
    // continues from (or that is the target itself).
    let mut base: Option<SnapshotRead> = None;
    for (revision, path) in files.snapshots.iter().rev() {
        if *revision > target {
            continue;
        }
        let continued = first_kept.is_some_and(|first| *revision + 1 >= first);
        if !continued && *revision != target {
            // Neither it nor any older one can be carried forward to the target.
            break;
        }
        match read_snapshot(path) {
            Ok(read) if read.state.revision() == *revision => {
                base = Some(read);
                break;
            }
            Ok(_) => recovered.warnings.push(format!(
                "{} holds another revision than its name says; passed over",
                path.display()
            )),
            Err(err) => recovered
                .warnings
                .push(format!("{err}; using an older snapshot or the log instead")),
        }
    }
    let (mut state, mut head) = match base {
        Some(read) => {
            recovered.snapshot = Some(read.state.revision());
            if recovered.history.is_none() {
                recovered.history = Some(read.history);
            }
            (read.state, read.head)
        }
        None if target == 0 || first_kept == Some(1) => (RoutingState::default(), String::new()),
        None => return Err(not_kept(&files)),
    };
    recovered.base = state.clone();
    for change in &recovered.changes {
        if change.revision <= state.revision() {
            continue;
        }
        if change.revision > target {
            break;
        }
        let segment = segment_holding(&files, change.revision);
        match state.apply(&change.mutation) {
            Ok((next, _)) if next.revision() == change.revision => state = next,
            Ok(_) => {
                return Err(corrupt(
                    &segment,
                    0,
                    format!("revision {} does not follow its parent", change.revision),
                ));
            }
            Err(err) => {
                return Err(corrupt(
                    &segment,
                    0,
                    format!(
                        "revision {} does not apply to the state before it: {err}",
                        change.revision
                    ),
                ));
            }
        }
        head.clone_from(&change.id);
    }
    if state.revision() != target {
        return Err(not_kept(&files));
    }
    recovered.state = state;
    recovered.head = head;
    Ok(recovered)
}

fn oldest_rebuildable(files: &Files, first_kept: Option<Revision>) -> Revision {
    match first_kept {
        Some(1) => 0,
        Some(first) => files
            .snapshots
            .iter()
            .map(|(revision, _)| *revision)
            .find(|revision| revision + 1 >= first)
            .unwrap_or(first),
        None => files.snapshots.last().map_or(0, |(revision, _)| *revision),
    }
}

fn segment_holding(files: &Files, revision: Revision) -> PathBuf {
    files
        .segments
        .iter()
        .rev()
        .find(|(first, _)| *first <= revision)
        .map(|(_, path)| path.clone())
        .unwrap_or_default()
}

/// Holds the lock of `dir` (created when missing) for as long as the returned file is open.
pub fn lock(dir: &Path) -> Result<File, JournalError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(JournalError::Locked(dir.to_owned()));
    }
    Ok(lock)
}

/// Cuts a torn last frame off the newest segment.
pub fn cut_torn_tail(dir: &Path) -> Result<u64, JournalError> {
    let files = files(dir)?;
    let Some((_, path)) = files.segments.last() else {
        return Ok(0);
    };
    let read = read_segment(path)?;
    if read.torn == 0 {
        return Ok(0);
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.set_len(read.whole).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    Ok(read.torn)
}

/// The open end of the log: appends to the newest segment, starts new ones.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    history: String,
}

impl Writer {
    /// Opens the newest segment for appending, or starts one at `next` (with the history id)
    /// when there is none.
    pub fn open(dir: &Path, history: &str, next: Revision) -> Result<Writer, JournalError> {
        let files = files(dir)?;
        match files.segments.last() {
            Some((_, path)) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.seek(SeekFrom::End(0)).map_err(io_error(path))?;
                Ok(Writer {
                    dir: dir.to_owned(),
                    path: path.clone(),
                    file,
                    history: history.to_owned(),
                })
            }
            None => Writer::start(dir, history, next),
        }
    }

    fn start(dir: &Path, history: &str, first: Revision) -> Result<Writer, JournalError> {
        let path = dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all(&frame_of(&Entry::History {
            id: history.to_owned(),
        }))
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
        sync_dir(dir)?;
        Ok(Writer {
            dir: dir.to_owned(),
            path,
            file,
            history: history.to_owned(),
        })
    }

    /// Appends frames and syncs them to disk; on failure nothing of them is left behind.
    pub fn append(&mut self, frames: &[u8]) -> Result<(), JournalError> {
        let end = self.file.stream_position().map_err(io_error(&self.path))?;
        if let Err(err) = self
            .file
            .write_all(frames)
            .and_then(|()| self.file.sync_data())
        {
            // Leave no partial frame behind for the next append to follow.
            let _ = self.file.set_len(end);
            let _ = self.file.seek(SeekFrom::Start(end));
            return Err(io_error(&self.path)(err));
        }
        Ok(())
    }

    /// Starts a new segment whose first change will be `first`.
    pub fn rotate(&mut self, first: Revision) -> Result<(), JournalError> {
        *self = Writer::start(&self.dir, &self.history, first)?;
        Ok(())
    }
}

/// What `greyrouter store check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// The store's history id.
    pub history: Option<String>,
    /// The revision of the last change.
    pub revision: Revision,
    /// Log segments and the changes they hold.
    pub segments: usize,
    /// Changes the log keeps.
    pub changes: usize,
    /// Snapshots, and which of them read back and equal the replay of the log up to them.
    pub snapshots: Vec<SnapshotCheck>,
    /// Bytes of a torn last frame (cut off at the next start).
    pub torn_bytes: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// One snapshot checked.
#[derive(Debug, Serialize)]
pub struct SnapshotCheck {
    /// Its revision.
    pub revision: Revision,
    /// `ok`, or what is wrong.
    pub status: String,
}

/// Checks every file of `dir` without changing it: every log record's checksum and order, every
/// change applies to the state before it, and every snapshot equals the replay of the log up to
/// it (where the log reaches back to an older snapshot or to the start).
pub fn check(dir: &Path) -> Result<CheckReport, JournalError> {
    if !dir.is_dir() {
        return Err(io_error(dir)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such data directory",
        )));
    }
    let latest = recover(dir, None)?;
    let files = files(dir)?;
    let mut report = CheckReport {
        history: latest.history.clone(),
        revision: latest.state.revision(),
        segments: files.segments.len(),
        changes: latest.changes.len(),
        torn_bytes: latest.truncated_bytes,
        ..CheckReport::default()
    };
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
    }
    let mut previous: Option<RoutingState> = None;
    for (revision, path) in &files.snapshots {
        let status = match read_snapshot(path) {
            Err(err) => err.to_string(),
            Ok(read) if read.state.revision() != *revision => {
                "holds another revision than its name says".to_owned()
            }
            Ok(read) => {
                // Replay from the previous snapshot (or the start) up to this one.
                let from = previous.clone().or_else(|| {
                    (latest.changes.first()?.revision == 1).then(RoutingState::default)
                });
                let replayed = from.map(|mut state| {
                    for change in &latest.changes {
                        if change.revision <= state.revision() || change.revision > *revision {
                            continue;
                        }
                        match state.apply(&change.mutation) {
                            Ok((next, _)) => state = next,
                            Err(_) => return None,
                        }
                    }
                    Some(state)
                });
                let status = match replayed {
                    None => "ok (the log does not reach back before it)".to_owned(),
                    Some(Some(state)) if state.revision() == *revision => {
                        if state.dump() == read.state.dump() {
                            "ok (equals the replay of the log)".to_owned()
                        } else {
                            "differs from the replay of the log".to_owned()
                        }
                    }
                    Some(_) => "ok (the log does not reach back before it)".to_owned(),
                };
                previous = Some(read.state);
                status
            }
        };
        report.snapshots.push(SnapshotCheck {
            revision: *revision,
            status,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
