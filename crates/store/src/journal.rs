//! The change journal of the durable embedded store: every change appended and synced to disk
//! before it is acknowledged, and replayed on open (event sourcing: the log of changes *is* the
//! state).
//!
//! File `<dir>/changes.log`: frames of `[length: u32 LE][crc32 of payload: u32 LE][payload]`,
//! the payload one JSON entry: first the store's history id, then one entry per change. A frame
//! cut short by a crash (power loss, `SIGKILL` mid-write) can only be the last one: it is cut off
//! on open and reported ([`Recovered::truncated_bytes`]). A frame that fails its checksum with
//! whole frames after it is corruption in the middle: the open is refused, nothing is changed.
//! `<dir>/LOCK` is held (an OS file lock) while a store has the directory open, so a second
//! process is refused instead of writing beside the first.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use routing_core::{Mutation, Revision};
use serde::{Deserialize, Serialize};

use crate::{Change, ChangeMeta};

/// The journal file in the data directory.
pub const JOURNAL_FILE: &str = "changes.log";
/// The lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Largest frame accepted on replay (a longer declared length is corruption).
const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Why a journal cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A frame in the middle of the journal is damaged.
    #[error(
        "journal {path} is damaged at byte {offset} with intact changes after it; refusing to open (restore it from a backup, or move it aside)"
    )]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// Where the damaged frame starts.
        offset: u64,
    },
    /// Reading or writing failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
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

/// What a journal held when opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The store's history id, when the journal has one.
    pub history: Option<String>,
    /// Every change, in order.
    pub changes: Vec<Change>,
    /// Bytes of a torn last frame cut off on open (0: none).
    pub truncated_bytes: u64,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    _lock: File,
}

/// CRC-32 (IEEE), bitwise: a few hundred bytes per change are not worth a table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, replaying what it holds.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked(dir.to_owned()));
        }
        let path = dir.join(JOURNAL_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        let mut recovered = Recovered::default();
        let mut at = 0usize;
        while at < bytes.len() {
            match frame(&bytes[at..]) {
                Frame::Whole(payload, length) => {
                    match serde_json::from_slice::<Entry>(payload) {
                        Ok(Entry::History { id }) => recovered.history = Some(id),
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
                        }) => recovered.changes.push(Change {
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
                        Err(_) => {
                            return Err(JournalError::Corrupt {
                                path,
                                offset: at as u64,
                            });
                        }
                    }
                    at += length;
                }
                Frame::Torn => {
                    recovered.truncated_bytes = (bytes.len() - at) as u64;
                    file.set_len(at as u64).map_err(io(&path))?;
                    file.sync_all().map_err(io(&path))?;
                    break;
                }
                Frame::Damaged => {
                    return Err(JournalError::Corrupt {
                        path,
                        offset: at as u64,
                    });
                }
            }
        }
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        let journal = Journal {
            path,
            file,
            _lock: lock,
        };
        Ok((journal, recovered))
    }

    /// Appends the store's history id (once, when the journal is new).
    pub fn write_history(&mut self, id: &str) -> Result<(), JournalError> {
        self.write(&Entry::History { id: id.to_owned() })
    }

    /// Appends a change and syncs it to disk.
    pub fn append(&mut self, change: &Change) -> Result<(), JournalError> {
        self.write(&Entry::Change {
            revision: change.revision,
            mutation: Box::new(change.mutation.clone()),
            actor: change.meta.actor.clone(),
            reason: change.meta.reason.clone(),
            at_ms: change.meta.at_ms,
            before: change.meta.before.clone(),
            after: change.meta.after.clone(),
            history: change.history.clone(),
            id: change.id.clone(),
            parent: change.parent.clone(),
        })
    }

    fn write(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let payload = serde_json::to_vec(entry)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let length = u32::try_from(payload.len())
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&length.to_le_bytes());
        frame.extend_from_slice(&crc32(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let end = self.file.stream_position().map_err(io)?;
        if let Err(err) = self
            .file
            .write_all(&frame)
            .and_then(|()| self.file.sync_data())
        {
            // Leave no partial frame behind for the next append to follow.
            let _ = self.file.set_len(end);
            let _ = self.file.seek(SeekFrom::Start(end));
            return Err(io(err));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
