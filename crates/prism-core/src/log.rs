//! The shard log: an ordered, durable, checksummed sequence of entries. It is the write-ahead log
//! of a shard copy: an entry is durable once `append` returns, and a copy rebuilds its state by
//! replaying entries after its checkpoints.
//!
//! Layout: `dir/<first_index:020>.wal` segment files. Each entry is framed as
//! `[payload_len u32][crc32 u32][index u64][payload]`, little-endian, with the checksum covering
//! the index and the payload. A crash can leave a torn frame at the tail of the newest segment;
//! `open` detects it by length or checksum and truncates it (that write was never acknowledged).

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const HEADER_LEN: usize = 16;
/// Largest payload accepted; a larger length in a header means corruption.
pub const MAX_ENTRY_BYTES: usize = 512 << 20;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub payload: Vec<u8>,
}

struct Segment {
    first_index: u64,
    path: PathBuf,
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the tail of the newest segment because they did not form a whole entry.
    pub truncated_bytes: u64,
}

/// An append-only log of entries with consecutive indexes starting at 1.
pub struct ShardLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    next_index: u64,
    segment_bytes: u64,
    poisoned: bool,
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Reads one frame. `Ok(None)` means a clean end or a torn/corrupt frame at `offset`.
fn read_frame(reader: &mut impl Read) -> std::io::Result<Option<Entry>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut header[filled..])?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
    }
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let index = u64::from_le_bytes(header[8..16].try_into().unwrap());
    if len > MAX_ENTRY_BYTES {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..16]);
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Ok(None);
    }
    Ok(Some(Entry { index, payload }))
}

fn encode_frame(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let index_bytes = index.to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index_bytes);
    hasher.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(&index_bytes);
    buf.extend_from_slice(payload);
}

impl ShardLog {
    /// Opens (or creates) the log in `dir`, truncating a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Recovery)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".wal") {
                if let Ok(first_index) = stem.parse::<u64>() {
                    segments.push(Segment {
                        first_index,
                        path: entry.path(),
                    });
                }
            }
        }
        segments.sort_by_key(|s| s.first_index);
        let mut recovery = Recovery::default();
        if segments.is_empty() {
            let path = segment_path(dir, 1);
            File::create(&path).map_err(|e| Error::io(&path, e))?;
            sync_dir(dir)?;
            segments.push(Segment {
                first_index: 1,
                path,
            });
        }
        // Scan the newest segment to find where the valid entries end.
        let last = segments.last().expect("at least one segment");
        let mut file = File::open(&last.path).map_err(|e| Error::io(&last.path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&last.path, e))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, &mut file);
        let mut valid_len = 0u64;
        let mut expected = last.first_index;
        loop {
            match read_frame(&mut reader).map_err(|e| Error::io(&last.path, e))? {
                Some(entry) if entry.index == expected => {
                    valid_len += (HEADER_LEN + entry.payload.len()) as u64;
                    expected += 1;
                }
                _ => break,
            }
        }
        drop(reader);
        let mut active = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&last.path)
            .map_err(|e| Error::io(&last.path, e))?;
        if valid_len < file_len {
            recovery.truncated_bytes = file_len - valid_len;
            tracing::warn!(
                path = %last.path.display(),
                bytes = recovery.truncated_bytes,
                "truncating a torn entry at the log tail (it was never acknowledged)"
            );
            active
                .set_len(valid_len)
                .and_then(|_| active.sync_all())
                .map_err(|e| Error::io(&last.path, e))?;
        }
        active
            .seek(SeekFrom::Start(valid_len))
            .map_err(|e| Error::io(&last.path, e))?;
        Ok((
            ShardLog {
                dir: dir.to_path_buf(),
                segments,
                active,
                active_len: valid_len,
                next_index: expected,
                segment_bytes,
                poisoned: false,
            },
            recovery,
        ))
    }

    /// Index of the newest entry, or the index before the first if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// True once a failed fsync (or an undo that failed) stopped the log taking writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Index of the oldest entry still held.
    pub fn first_index(&self) -> u64 {
        self.segments[0].first_index
    }

    /// Appends entries and makes them durable with one fsync (group commit). Returns the index
    /// of the first appended entry; the rest follow consecutively.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64> {
        if self.poisoned {
            return Err(Error::StorageFailed {
                path: self.dir.clone(),
                message: "an earlier log write or fsync failed, so the page cache may have dropped data; the log takes no more writes".into(),
            });
        }
        if self.active_len >= self.segment_bytes {
            self.roll()?;
        }
        let first = self.next_index;
        let total: usize = payloads.iter().map(|p| p.len() + HEADER_LEN).sum();
        let mut buf = Vec::with_capacity(total);
        for (i, payload) in payloads.iter().enumerate() {
            if payload.len() > MAX_ENTRY_BYTES {
                return Err(Error::InvalidRequest(format!(
                    "a log entry of {} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit",
                    payload.len()
                )));
            }
            encode_frame(&mut buf, first + i as u64, payload);
        }
        let path = self.segments.last().expect("active segment").path.clone();
        if let Err(e) = self.active.write_all(&buf) {
            // The file may hold part of the batch: cut it back so the log stays consistent.
            if let Err(undo) = self.cut_back() {
                self.poisoned = true;
                return Err(Error::WriteUnknown {
                    path,
                    message: format!("a write failed ({e}) and could not be undone ({undo})"),
                });
            }
            return Err(Error::io(path, e));
        }
        if let Err(e) = self.active.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages and cleared the
            // error, so a retry could report success for lost data (PostgreSQL's fsyncgate):
            // the log takes no more writes. The batch is cut off, or a restart would read it
            // back from the page cache and apply a write that was refused.
            self.poisoned = true;
            return Err(match self.cut_back() {
                Ok(()) => Error::StorageFailed {
                    path,
                    message: format!("fsync failed: {e}"),
                },
                Err(undo) => Error::WriteUnknown {
                    path,
                    message: format!(
                        "fsync failed ({e}) and the batch could not be cut off ({undo})"
                    ),
                },
            });
        }
        self.active_len += buf.len() as u64;
        self.next_index += payloads.len() as u64;
        Ok(first)
    }

    /// Truncates the active segment to its last whole, acknowledged entry.
    fn cut_back(&mut self) -> std::io::Result<()> {
        self.active.set_len(self.active_len)?;
        self.active.seek(SeekFrom::Start(self.active_len))?;
        self.active.sync_all()
    }

    fn roll(&mut self) -> Result<()> {
        let path = segment_path(&self.dir, self.next_index);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if let Err(e) = sync_dir(&self.dir) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.active = file;
        self.active_len = 0;
        self.segments.push(Segment {
            first_index: self.next_index,
            path,
        });
        Ok(())
    }

    /// Calls `visit` for every entry with index `>= from`, in order.
    pub fn read_from(&self, from: u64, mut visit: impl FnMut(Entry) -> Result<()>) -> Result<()> {
        let start = self
            .segments
            .iter()
            .rposition(|s| s.first_index <= from)
            .unwrap_or(0);
        if from < self.first_index() && from <= self.last_index() {
            return Err(Error::Corrupt {
                path: self.dir.clone(),
                message: format!(
                    "entry {from} is needed for recovery but the log starts at {}",
                    self.first_index()
                ),
            });
        }
        for (i, segment) in self.segments.iter().enumerate().skip(start) {
            let file = File::open(&segment.path).map_err(|e| Error::io(&segment.path, e))?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut expected = segment.first_index;
            let end = self
                .segments
                .get(i + 1)
                .map_or(self.next_index, |next| next.first_index);
            while expected < end {
                let entry = read_frame(&mut reader)
                    .map_err(|e| Error::io(&segment.path, e))?
                    .filter(|e| e.index == expected)
                    .ok_or_else(|| Error::Corrupt {
                        path: segment.path.clone(),
                        message: format!("entry {expected} is missing or fails its checksum"),
                    })?;
                expected += 1;
                if entry.index >= from {
                    visit(entry)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes whole segments whose entries are all at or below `index`. The active segment is
    /// never deleted.
    pub fn purge_through(&mut self, index: u64) -> Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= index + 1 {
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(|e| Error::io(&segment.path, e))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|i| format!("entry-{i}").into_bytes()).collect()
    }

    fn read_all(log: &ShardLog, from: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        log.read_from(from, |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn appends_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.append(&payloads(0..3)).unwrap(), 1);
        assert_eq!(log.append(&payloads(3..5)).unwrap(), 4);
        drop(log);
        let (log, rec) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(log.last_index(), 5);
        let entries = read_all(&log, 2);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].index, 2);
        assert_eq!(entries[0].payload, b"entry-1");
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&payloads(0..3)).unwrap();
        let path = segment_path(dir.path(), 1);
        let len = fs::metadata(&path).unwrap().len();
        drop(log);
        // Simulate a crash in the middle of writing a fourth entry.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[42, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (mut log, rec) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(rec.truncated_bytes, 7);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        assert_eq!(log.append(&payloads(9..10)).unwrap(), 4);
        assert_eq!(read_all(&log, 1).len(), 4);
    }

    #[test]
    fn corrupted_last_entry_fails_its_checksum_and_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&payloads(0..2)).unwrap();
        drop(log);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (log, rec) = ShardLog::open(dir.path(), 1 << 20).unwrap();
        assert!(rec.truncated_bytes > 0);
        assert_eq!(log.last_index(), 1);
    }

    #[test]
    fn segments_roll_and_purge_keeps_needed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ShardLog::open(dir.path(), 64).unwrap();
        for i in 0..10 {
            log.append(&payloads(i..i + 1)).unwrap();
        }
        assert!(log.segments.len() > 3);
        log.purge_through(6).unwrap();
        assert!(log.first_index() <= 7);
        let entries = read_all(&log, 7);
        assert_eq!(
            entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        drop(log);
        let (log, _) = ShardLog::open(dir.path(), 64).unwrap();
        assert_eq!(log.last_index(), 10);
        assert!(
            log.read_from(1, |_| Ok(())).is_err(),
            "purged entries must not read as present"
        );
    }
}
