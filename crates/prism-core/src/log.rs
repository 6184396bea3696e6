//! The shard log: an ordered, durable, checksummed sequence of entries addressed by log id
//! (term, leader, index), with the vote, the committed log id and the last purged log id
//! beside it. It has the shape a Raft log store needs: entries are appended at the indexes
//! the caller gives, a suffix can be truncated after a conflict, a prefix purged after a
//! snapshot, and bounded range reads run while the writer appends. On a single node the
//! shard's writer is the only caller; in cluster mode openraft drives it through an adapter
//! in `prism-cluster`. This module knows nothing of openraft: the vote is opaque bytes.
//!
//! Layout:
//! - `dir/<first_index:020>.log` segment files. A segment starts with a 24-byte header
//!   `[magic "PRISMLG1"][previous last index u64, u64::MAX for none][crc32 u32][0 u32]` that
//!   names the entry before its first one, so a lost segment is detected even where the log
//!   starts afresh after a purge past its end (a snapshot install). An append that would
//!   leave a gap is refused. Each entry is framed as
//!   `[payload_len u32][crc32 u32][term u64][leader u64][index u64][payload]`, little-endian;
//!   the checksum covers everything after itself.
//! - `dir/STATE`: the hard state (vote, committed, last purged), replaced atomically.
//! - `dir/COMMITTED`: the newest committed id, rewritten in place without an fsync (see
//!   [`ShardLog::save_committed`]).
//!
//! Only an incomplete or failing entry with nothing valid after it, at the very end of the
//! newest segment, is a torn write (never acknowledged) and is cut at open. A failing entry
//! followed by valid ones, or one in an older segment, is corruption: `open` refuses with the
//! file and byte offset, unless [`OpenOptions::truncate_corrupt`] asks to cut the log there
//! and report what was lost.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod durable;

const HEADER_LEN: usize = 32;
const SEGMENT_MAGIC: &[u8; 8] = b"PRISMLG1";
const SEGMENT_HEADER_LEN: u64 = 24;
/// Largest payload accepted; a larger length in a header means corruption.
pub const MAX_ENTRY_BYTES: usize = 512 << 20;
const STATE_FILE: &str = "STATE";
const COMMITTED_FILE: &str = "COMMITTED";

/// Where an entry sits in the replicated history: the term and the node that led it (0 on a
/// single node), and its position.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LogId {
    pub term: u64,
    pub leader: u64,
    pub index: u64,
}

impl LogId {
    pub fn new(term: u64, leader: u64, index: u64) -> Self {
        LogId {
            term,
            leader,
            index,
        }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.term, self.leader, self.index)
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: LogId,
    pub payload: Vec<u8>,
}

/// The durable state kept beside the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The consensus layer's vote, opaque here.
    pub vote: Option<Vec<u8>>,
    pub committed: Option<LogId>,
    /// Entries at or below this are gone (covered by a snapshot).
    pub last_purged: Option<LogId>,
}

/// What `open` may do with a corrupt log.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    pub segment_bytes: u64,
    /// Cut the log at the first corrupt entry, deleting it and everything after, instead of
    /// refusing to open. What was lost is reported in [`Recovery::lost`].
    pub truncate_corrupt: bool,
}

/// What `open` found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the tail of the newest segment because they did not form a whole entry.
    pub truncated_bytes: u64,
    /// Set when `truncate_corrupt` cut a corrupt log: the entries it dropped.
    pub lost: Option<LostEntries>,
}

/// Entries dropped by `truncate_corrupt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostEntries {
    pub path: PathBuf,
    pub offset: u64,
    /// The first index lost; every later entry the log held is lost too.
    pub from_index: u64,
    /// Highest index seen in a valid frame after the corruption, if any.
    pub through_index: Option<u64>,
    pub bytes: u64,
}

struct Segment {
    first_index: u64,
    /// Index of the entry before this segment's first, when the segment was begun.
    prev_last: Option<u64>,
    path: PathBuf,
    file: Arc<File>,
    /// Byte offset of each entry; entry `first_index + i` starts at `offsets[i]`.
    offsets: Vec<u64>,
    /// Bytes of the header and whole entries.
    len: u64,
}

impl Segment {
    fn end_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    /// The newest index this segment accounts for: its last entry, else the one before it.
    fn last_or_prev(&self) -> Option<u64> {
        if self.offsets.is_empty() {
            self.prev_last
        } else {
            Some(self.end_index() - 1)
        }
    }
}

fn segment_header(prev_last: Option<u64>) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[0..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&prev_last.unwrap_or(u64::MAX).to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// `Some(prev_last)` for a valid header, `None` for a damaged or short one.
fn parse_segment_header(header: &[u8]) -> Option<Option<u64>> {
    if header.len() < SEGMENT_HEADER_LEN as usize || &header[0..8] != SEGMENT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[0..16]) != crc {
        return None;
    }
    let prev = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    Some((prev != u64::MAX).then_some(prev))
}

/// What readers see: the segments and the newest log id.
struct View {
    segments: Vec<Segment>,
    last: Option<LogId>,
    /// One above the last purged index: lower entries may still sit in a segment file.
    first_readable: u64,
}

/// The appending side; its lock orders appends, truncation and purges.
struct Appender {
    poisoned: Option<String>,
    state: HardState,
}

/// A durable log of entries with consecutive indexes.
pub struct ShardLog {
    dir: PathBuf,
    segment_bytes: u64,
    appender: Mutex<Appender>,
    view: RwLock<View>,
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.log"))
}

/// Fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    durable::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Creates `dir` and any missing parents, fsyncing each parent whose entries changed.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_durable(parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    }
    sync_dir(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` through a fsynced temporary file, a rename and a directory fsync.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = fs::write(&tmp, bytes)
        .and_then(|_| durable::sync_all(&File::open(&tmp)?, &tmp))
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn encode_frame(buf: &mut Vec<u8>, id: LogId, payload: &[u8]) {
    let mut ids = [0u8; 24];
    ids[0..8].copy_from_slice(&id.term.to_le_bytes());
    ids[8..16].copy_from_slice(&id.leader.to_le_bytes());
    ids[16..24].copy_from_slice(&id.index.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&ids);
    hasher.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(&ids);
    buf.extend_from_slice(payload);
}

struct Header {
    len: usize,
    crc: u32,
    id: LogId,
}

fn parse_header(header: &[u8; HEADER_LEN]) -> Header {
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    Header {
        len: u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize,
        crc: u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")),
        id: LogId::new(u64_at(8), u64_at(16), u64_at(24)),
    }
}

fn checksum_ok(header: &[u8; HEADER_LEN], crc: u32, payload: &[u8]) -> bool {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(payload);
    hasher.finalize() == crc
}

/// Reads one frame. `Ok(None)` means a clean end, or a frame that is cut short, too long or
/// fails its checksum.
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
    let parsed = parse_header(&header);
    if parsed.len > MAX_ENTRY_BYTES {
        return Ok(None);
    }
    let mut payload = vec![0u8; parsed.len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if !checksum_ok(&header, parsed.crc, &payload) {
        return Ok(None);
    }
    Ok(Some(Entry {
        id: parsed.id,
        payload,
    }))
}

/// Looks for a whole, valid frame anywhere in `rest` whose index is above `after`: if one
/// exists, the bad bytes before it are corruption, not a torn write. Returns its index.
fn valid_frame_after(rest: &[u8], after: u64) -> Option<u64> {
    if rest.len() < HEADER_LEN {
        return None;
    }
    // An entry takes at least a header, which bounds how far its index can be from `after`.
    let max_index = after + (rest.len() / HEADER_LEN) as u64 + 1;
    let mut found = None;
    for start in 1..=rest.len() - HEADER_LEN {
        let header: &[u8; HEADER_LEN] = rest[start..start + HEADER_LEN].try_into().expect("len");
        let parsed = parse_header(header);
        if parsed.id.index <= after
            || parsed.id.index > max_index
            || parsed.len > rest.len() - start - HEADER_LEN
        {
            continue;
        }
        let payload = &rest[start + HEADER_LEN..start + HEADER_LEN + parsed.len];
        if checksum_ok(header, parsed.crc, payload) {
            found = Some(found.map_or(parsed.id.index, |f: u64| f.max(parsed.id.index)));
        }
    }
    found
}

/// Result of scanning one segment file.
struct Scan {
    /// `None` when the segment header is damaged or cut short.
    prev_last: Option<Option<u64>>,
    offsets: Vec<u64>,
    len: u64,
    last: Option<LogId>,
    /// The first bad frame: its offset, and the newest valid index after it, if any.
    bad: Option<(u64, Option<u64>)>,
    file_len: u64,
}

fn scan_segment(path: &Path, first_index: u64, previous: Option<LogId>) -> Result<Scan> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    let prev_last = match reader.read_exact(&mut header) {
        Ok(()) => parse_segment_header(&header),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut scan = Scan {
        prev_last,
        offsets: Vec::new(),
        len: SEGMENT_HEADER_LEN,
        last: previous,
        bad: None,
        file_len,
    };
    if prev_last.is_none() {
        return Ok(scan);
    }
    loop {
        let expected = first_index + scan.offsets.len() as u64;
        match read_frame(&mut reader).map_err(|e| Error::io(path, e))? {
            Some(entry)
                if entry.id.index == expected
                    && scan
                        .last
                        .is_none_or(|l| (l.term, l.leader) <= (entry.id.term, entry.id.leader)) =>
            {
                scan.offsets.push(scan.len);
                scan.len += (HEADER_LEN + entry.payload.len()) as u64;
                scan.last = Some(entry.id);
            }
            _ => break,
        }
    }
    if scan.len < file_len {
        let mut rest = Vec::new();
        let mut file = &file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(scan.len))
            .and_then(|_| file.read_to_end(&mut rest))
            .map_err(|e| Error::io(path, e))?;
        let expected = first_index + scan.offsets.len() as u64;
        scan.bad = Some((
            scan.len,
            valid_frame_after(&rest, expected.saturating_sub(1)),
        ));
    }
    if scan.offsets.is_empty() {
        scan.last = None;
    }
    Ok(scan)
}

/// The hard state a log directory holds (its default when there is none), read without
/// opening the log: for a snapshot install, which keeps the replaced copy's vote.
pub fn read_hard_state(dir: &Path) -> Result<HardState> {
    if !dir.join(STATE_FILE).exists() {
        return Ok(HardState::default());
    }
    read_state(dir)
}

fn read_state(dir: &Path) -> Result<HardState> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let corrupt = |message: String| Error::Corrupt {
                path: path.clone(),
                message,
            };
            if bytes.len() < 4 {
                return Err(corrupt("the file is cut short".into()));
            }
            let (crc, body) = bytes.split_at(4);
            if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
                return Err(corrupt("the file fails its checksum".into()));
            }
            postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HardState::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `[crc32 u32][term u64][leader u64][index u64]`, little-endian; all zero for none.
const COMMITTED_RECORD: usize = 28;

fn write_committed(dir: &Path, committed: Option<LogId>) -> Result<()> {
    let mut record = [0u8; COMMITTED_RECORD];
    if let Some(id) = committed {
        record[4..12].copy_from_slice(&id.term.to_le_bytes());
        record[12..20].copy_from_slice(&id.leader.to_le_bytes());
        record[20..28].copy_from_slice(&(id.index + 1).to_le_bytes());
    }
    let crc = crc32fast::hash(&record[4..]);
    record[..4].copy_from_slice(&crc.to_le_bytes());
    let path = dir.join(COMMITTED_FILE);
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .and_then(|file| file.write_all_at(&record, 0))
        .map_err(|e| Error::io(path, e))
}

/// The committed id of the last [`write_committed`] that reached the disk whole, if any.
fn read_committed(dir: &Path) -> Option<LogId> {
    let bytes = fs::read(dir.join(COMMITTED_FILE)).ok()?;
    let record = bytes.get(..COMMITTED_RECORD)?;
    let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    if crc32fast::hash(&record[4..]) != u32::from_le_bytes(record[..4].try_into().ok()?) {
        return None;
    }
    let index = word(20).checked_sub(1)?;
    Some(LogId::new(word(4), word(12), index))
}

fn write_state(dir: &Path, state: &HardState) -> Result<()> {
    let body = postcard::to_stdvec(state).expect("hard state serializes");
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    write_atomically(&dir.join(STATE_FILE), &bytes)
}

fn open_segment_file(path: &Path, create: bool) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn cut(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len)
        .and_then(|_| durable::sync_all(file, path))
        .map_err(|e| Error::io(path, e))
}

impl ShardLog {
    /// Opens (or creates) the log in `dir`: cuts a torn tail, refuses corruption (see the
    /// module docs), and drops entries at or below the last purged log id.
    pub fn open(dir: &Path, options: OpenOptions) -> Result<(Self, Recovery)> {
        create_dir_durable(dir)?;
        legacy::migrate(dir)?;
        let mut state = read_state(dir)?;
        // Either may be the newer: the committed file is written without an fsync, the hard
        // state carries the committed id of its own last write.
        state.committed = state.committed.max(read_committed(dir));
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                found.push((first, entry.path()));
            }
        }
        found.sort();
        let purged_through = state.last_purged.map(|p| p.index);
        let purged_below = purged_through.map_or(0, |p| p + 1);
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let mut last_entry: Option<LogId> = None;
        let count = found.len();
        for (position, (first_index, path)) in found.into_iter().enumerate() {
            if let Some(lost) = recovery.lost.as_mut() {
                // Everything after a cut corruption goes with it.
                lost.bytes += fs::metadata(&path).map_or(0, |m| m.len());
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            let newest = position + 1 == count;
            let before = segments.last().map(|s| s.last_or_prev());
            let contiguous = segments
                .last()
                .is_some_and(|s| s.end_index() == first_index);
            let scan = scan_segment(
                &path,
                first_index,
                if contiguous { last_entry } else { None },
            )?;
            let Some(prev_last) = scan.prev_last else {
                if newest && scan.file_len < SEGMENT_HEADER_LEN {
                    // A crash while a segment was begun: it never held an entry.
                    tracing::warn!(path = %path.display(), "removing a log segment whose header was never completed");
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    continue;
                }
                return Err(Error::Corrupt {
                    path,
                    message: format!("the segment header is damaged. {}", Self::repair_hint()),
                });
            };
            // A segment begun after a purge point stands on its own: what came before is gone.
            let after_purge = prev_last.is_some_and(|p| purged_through.is_some_and(|t| p <= t));
            if let Some(before) = before {
                if prev_last != before && !after_purge {
                    return Err(Error::Corrupt {
                        path,
                        message: format!(
                            "the segment follows entry {} but the previous segment ends at {}: entries are missing. {}",
                            prev_last.map_or("none".into(), |p| p.to_string()),
                            before.map_or("none".into(), |p| p.to_string()),
                            Self::repair_hint()
                        ),
                    });
                }
            }
            let file = open_segment_file(&path, false)?;
            if let Some((offset, valid_after)) = scan.bad {
                let index = first_index + scan.offsets.len() as u64;
                if newest && valid_after.is_none() {
                    recovery.truncated_bytes = scan.file_len - offset;
                    tracing::warn!(path = %path.display(), offset, bytes = recovery.truncated_bytes, "cutting a torn entry at the log tail (it was never acknowledged)");
                } else if options.truncate_corrupt {
                    tracing::error!(path = %path.display(), offset, from_index = index, through_index = ?valid_after, "cutting the log at a corrupt entry, as --truncate-corrupt-log asked: this entry and every later one are lost");
                    recovery.lost = Some(LostEntries {
                        path: path.clone(),
                        offset,
                        from_index: index,
                        through_index: valid_after,
                        bytes: scan.file_len - offset,
                    });
                } else {
                    let after = match valid_after {
                        Some(i) => format!(
                            "valid entries follow it (through entry {i}), so it is not a torn write"
                        ),
                        None => "it is not at the end of the log, so it is not a torn write".into(),
                    };
                    return Err(Error::Corrupt {
                        path,
                        message: format!(
                            "entry {index} at byte offset {offset} is damaged (bad length, checksum or index) and {after}. {}",
                            Self::repair_hint()
                        ),
                    });
                }
                cut(&file, &path, offset)?;
            }
            if scan.last.is_some() {
                last_entry = scan.last;
            }
            segments.push(Segment {
                first_index,
                prev_last,
                path,
                file: Arc::new(file),
                offsets: scan.offsets,
                len: scan.len,
            });
        }
        if recovery.lost.is_some() {
            sync_dir(dir)?;
        }
        // Segments wholly at or below the purge point may survive a crash during a purge.
        while segments.len() > 1 && segments[0].last_or_prev().is_none_or(|l| l < purged_below) {
            let gone = segments.remove(0);
            fs::remove_file(&gone.path).map_err(|e| Error::io(&gone.path, e))?;
        }
        // With nothing held after the purge point, appends start in a fresh segment there.
        let all_purged = segments
            .last()
            .is_none_or(|s| s.last_or_prev().is_some_and(|l| l < purged_below));
        if all_purged {
            let fresh = Self::new_segment(dir, purged_below.max(1), purged_through)?;
            for gone in segments.drain(..) {
                if gone.path != fresh.path {
                    fs::remove_file(&gone.path).map_err(|e| Error::io(&gone.path, e))?;
                }
            }
            segments.push(fresh);
            last_entry = None;
        }
        let last = match (last_entry, state.last_purged) {
            (Some(entry), Some(purged)) if entry.index <= purged.index => Some(purged),
            (Some(entry), _) => Some(entry),
            (None, purged) => purged,
        };
        let log = ShardLog {
            dir: dir.to_path_buf(),
            segment_bytes: options
                .segment_bytes
                .max(SEGMENT_HEADER_LEN + HEADER_LEN as u64),
            appender: Mutex::new(Appender {
                poisoned: None,
                state,
            }),
            view: RwLock::new(View {
                segments,
                last,
                first_readable: purged_below,
            }),
        };
        Ok((log, recovery))
    }

    fn repair_hint() -> &'static str {
        "Restore this collection's directory from a backup, or start the server with --truncate-corrupt-log to cut the log at this entry (every later entry is lost and the server logs which)"
    }

    fn new_segment(dir: &Path, first_index: u64, prev_last: Option<u64>) -> Result<Segment> {
        let path = segment_path(dir, first_index);
        let file = open_segment_file(&path, true)?;
        let written = file
            .set_len(0)
            .and_then(|_| file.write_all_at(&segment_header(prev_last), 0))
            .and_then(|_| durable::sync_all(&file, &path));
        if let Err(e) = written
            .map_err(|e| Error::io(&path, e))
            .and_then(|_| sync_dir(dir))
        {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            first_index,
            prev_last,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            len: SEGMENT_HEADER_LEN,
        })
    }

    /// The newest entry's log id, or the last purged one when no entry follows it.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.view.read().last
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the newest entry (0 when the log never held one).
    pub fn last_index(&self) -> u64 {
        self.last_log_id().map_or(0, |l| l.index)
    }

    /// Index of the oldest entry that can still be read.
    pub fn first_index(&self) -> u64 {
        let view = self.view.read();
        view.segments[0].first_index.max(view.first_readable)
    }

    pub fn hard_state(&self) -> HardState {
        self.appender.lock().state.clone()
    }

    /// True once a failed fsync (or an undo that failed) stopped the log taking writes.
    pub fn is_poisoned(&self) -> bool {
        self.appender.lock().poisoned.is_some()
    }

    fn refuse_if_poisoned(&self, appender: &Appender) -> Result<()> {
        match &appender.poisoned {
            Some(reason) => Err(Error::StorageFailed {
                path: self.dir.clone(),
                message: format!("{reason}; the page cache may have dropped data, so the log takes no more writes until a restart"),
            }),
            None => Ok(()),
        }
    }

    /// Appends entries and makes them durable with one fsync (group commit) before
    /// returning. The caller gives the indexes: entries must be consecutive, and terms must not
    /// go back. An append at or below the newest index replaces the log from there (Raft's
    /// conflict rule); one that would leave a gap after it is refused. Entries at or below the
    /// last purged index are skipped.
    pub fn append(&self, entries: &[(LogId, &[u8])]) -> Result<()> {
        let mut appender = self.appender.lock();
        self.refuse_if_poisoned(&appender)?;
        // Entries at or below the purge point are already in the snapshot that replaced them.
        let purged = appender.state.last_purged.map(|p| p.index);
        let covered = entries
            .iter()
            .take_while(|(id, _)| purged.is_some_and(|p| id.index <= p))
            .count();
        let entries = &entries[covered..];
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        let last = self.view.read().last;
        if let Some(last) = last.filter(|l| first.index > l.index + 1) {
            return Err(Error::LogOrder(format!(
                "an append of {first} after {last} would leave a gap"
            )));
        }
        if last.is_some_and(|l| first.index <= l.index) {
            self.truncate_locked(&appender, first.index)?;
        }
        let (last, roll) = {
            let view = self.view.read();
            let mut previous = view.last;
            for (position, &(id, payload)) in entries.iter().enumerate() {
                if position > 0 && previous.is_some_and(|p| id.index != p.index + 1) {
                    return Err(Error::LogOrder(format!(
                        "entries of one append must be consecutive: {id} follows {}",
                        previous.expect("checked")
                    )));
                }
                if previous.is_some_and(|p| (p.term, p.leader) > (id.term, id.leader)) {
                    return Err(Error::LogOrder(format!(
                        "an append of {id} after {}: terms cannot go back",
                        previous.expect("checked")
                    )));
                }
                if payload.len() > MAX_ENTRY_BYTES {
                    return Err(Error::InvalidRequest(format!(
                        "a log entry of {} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit",
                        payload.len()
                    )));
                }
                previous = Some(id);
            }
            let active = view.segments.last().expect("a log has a segment");
            let roll = active.end_index() != first.index || active.len >= self.segment_bytes;
            (view.last, roll)
        };
        if roll {
            self.roll(first.index, last.map(|l| l.index))?;
        }
        self.append_locked(&mut appender, entries)
    }

    fn append_locked(&self, appender: &mut Appender, entries: &[(LogId, &[u8])]) -> Result<()> {
        let (path, file, offset) = {
            let view = self.view.read();
            let active = view.segments.last().expect("a log has a segment");
            (active.path.clone(), active.file.clone(), active.len)
        };
        let total: usize = entries.iter().map(|(_, p)| p.len() + HEADER_LEN).sum();
        let mut buf = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(entries.len());
        for &(id, payload) in entries {
            offsets.push(offset + buf.len() as u64);
            encode_frame(&mut buf, id, payload);
        }
        if let Err(e) = file.write_all_at(&buf, offset) {
            // The file may hold part of the batch: cut it back so the log stays consistent.
            if let Err(undo) = file
                .set_len(offset)
                .and_then(|_| durable::sync_all(&file, &path))
            {
                appender.poisoned = Some(format!(
                    "a write failed ({e}) and could not be undone ({undo})"
                ));
                return Err(Error::WriteUnknown {
                    path,
                    message: format!("a write failed ({e}) and could not be undone ({undo})"),
                });
            }
            return Err(Error::io(path, e));
        }
        if let Err(e) = durable::sync_appended(&file, &path) {
            // After a failed fsync the kernel may have dropped the dirty pages and cleared the
            // error, so a retry could report success for lost data (PostgreSQL's fsyncgate):
            // the log takes no more writes. The batch is cut off, or a restart would read it
            // back from the page cache and apply a write that was refused.
            appender.poisoned = Some(format!("fsync failed: {e}"));
            return Err(
                match file
                    .set_len(offset)
                    .and_then(|_| durable::sync_all(&file, &path))
                {
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
                },
            );
        }
        let mut view = self.view.write();
        let active = view.segments.last_mut().expect("a log has a segment");
        active.offsets.extend(offsets);
        active.len = offset + buf.len() as u64;
        view.last = Some(entries.last().expect("not empty").0);
        Ok(())
    }

    /// Starts a new segment at `first_index`, replacing an active segment with no entries.
    fn roll(&self, first_index: u64, prev_last: Option<u64>) -> Result<()> {
        let segment = Self::new_segment(&self.dir, first_index, prev_last)?;
        let mut view = self.view.write();
        if view.segments.last().is_some_and(|s| s.offsets.is_empty()) {
            let old = view.segments.pop().expect("checked");
            if old.path != segment.path {
                fs::remove_file(&old.path).map_err(|e| Error::io(&old.path, e))?;
                // Durably: the empty segment would come back after a crash, in front of or
                // behind entries it does not follow, and the log would not open.
                sync_dir(&self.dir)?;
            }
        }
        view.segments.push(segment);
        Ok(())
    }

    /// Appends payloads after the newest entry under one term and leader, and returns the
    /// first new log id. The single-node proposer uses this.
    pub fn append_next(&self, term: u64, leader: u64, payloads: &[Vec<u8>]) -> Result<LogId> {
        let next = self.last_index() + 1;
        let entries: Vec<(LogId, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (LogId::new(term, leader, next + i as u64), p.as_slice()))
            .collect();
        self.append(&entries)?;
        Ok(entries[0].0)
    }

    /// Deletes every entry with index `>= from` (a conflicting suffix).
    pub fn truncate(&self, from: u64) -> Result<()> {
        let appender = self.appender.lock();
        self.refuse_if_poisoned(&appender)?;
        self.truncate_locked(&appender, from)
    }

    fn truncate_locked(&self, appender: &Appender, from: u64) -> Result<()> {
        let mut view = self.view.write();
        if view.last.is_none_or(|l| l.index < from) {
            return Ok(());
        }
        let purged = appender.state.last_purged;
        if purged.is_some_and(|p| p.index >= from) {
            return Err(Error::LogOrder(format!(
                "cannot truncate from entry {from}: entries through {} are purged",
                purged.expect("checked").index
            )));
        }
        let mut removed = false;
        while view.segments.len() > 1 && view.segments.last().expect("len>1").first_index >= from {
            let gone = view.segments.pop().expect("len>1");
            fs::remove_file(&gone.path).map_err(|e| Error::io(&gone.path, e))?;
            removed = true;
        }
        // The removals are durable before the active segment shrinks: a crash in between
        // must not bring back later segments after a shortened one, a hole that reopening
        // reads as a lost segment.
        if removed {
            sync_dir(&self.dir)?;
        }
        let active = view.segments.last_mut().expect("a log has a segment");
        let keep = from.saturating_sub(active.first_index) as usize;
        if keep < active.offsets.len() {
            let len = active.offsets[keep];
            cut(&active.file, &active.path, len)?;
            active.offsets.truncate(keep);
            active.len = len;
        }
        sync_dir(&self.dir)?;
        view.last = Self::last_entry_locked(&view)?.or(purged);
        Ok(())
    }

    /// The log id of the newest entry held in a segment.
    fn last_entry_locked(view: &View) -> Result<Option<LogId>> {
        match view.segments.iter().rev().find(|s| !s.offsets.is_empty()) {
            Some(segment) => Self::read_id_in(segment, segment.end_index() - 1).map(Some),
            None => Ok(None),
        }
    }

    /// Marks every entry through `upto` as gone and deletes the segments that hold nothing
    /// newer. The purge point is durable before any file is deleted.
    pub fn purge(&self, upto: LogId) -> Result<()> {
        let mut appender = self.appender.lock();
        self.refuse_if_poisoned(&appender)?;
        if appender
            .state
            .last_purged
            .is_some_and(|p| p.index >= upto.index)
        {
            return Ok(());
        }
        let mut state = appender.state.clone();
        state.last_purged = Some(upto);
        write_state(&self.dir, &state)?;
        appender.state = state;
        let mut view = self.view.write();
        let mut removed = 0;
        while view.segments.len() > 1
            && view.segments[0]
                .last_or_prev()
                .is_none_or(|l| l <= upto.index)
        {
            let gone = view.segments.remove(0);
            fs::remove_file(&gone.path).map_err(|e| Error::io(&gone.path, e))?;
            removed += 1;
        }
        if view.last.is_none_or(|l| l.index <= upto.index) {
            // Nothing newer is held (a snapshot went past the log): start afresh after it.
            let fresh = Self::new_segment(&self.dir, upto.index + 1, Some(upto.index))?;
            for gone in view.segments.drain(..) {
                if gone.path != fresh.path {
                    fs::remove_file(&gone.path).map_err(|e| Error::io(&gone.path, e))?;
                }
            }
            view.segments.push(fresh);
            view.last = Some(upto);
            removed += 1;
        }
        view.first_readable = view.first_readable.max(upto.index + 1);
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The log id of the entry at `index`, or the purge point's when `index` is it; `None`
    /// when the log holds neither.
    pub fn log_id_at(&self, index: u64) -> Result<Option<LogId>> {
        if let Some(purged) = self.hard_state().last_purged.filter(|p| p.index == index) {
            return Ok(Some(purged));
        }
        if index == 0 || index < self.first_index() || index > self.last_index() {
            return Ok(None);
        }
        let view = self.view.read();
        self.read_id_locked(&view, index)
    }

    /// Purges through `index`, taking the log id from the entry there.
    pub fn purge_through(&self, index: u64) -> Result<()> {
        if index == 0 || index < self.first_index() {
            return Ok(());
        }
        let id = {
            let view = self.view.read();
            self.read_id_locked(&view, index)?
        };
        match id {
            Some(id) => self.purge(id),
            None => Ok(()),
        }
    }

    pub fn save_vote(&self, vote: &[u8]) -> Result<()> {
        self.save_state(|s| s.vote = Some(vote.to_vec()))
    }

    /// Records the highest committed entry, without an fsync: losing it in a crash only makes
    /// the node learn it again from its leader, and a torn write fails its checksum and reads
    /// as the older value the hard state holds. It goes to its own small file, rewritten in
    /// place, so that the vote's file is never at risk.
    pub fn save_committed(&self, committed: Option<LogId>) -> Result<()> {
        let mut appender = self.appender.lock();
        self.refuse_if_poisoned(&appender)?;
        if appender.state.committed != committed {
            write_committed(&self.dir, committed)?;
            appender.state.committed = committed;
        }
        Ok(())
    }

    fn save_state(&self, change: impl FnOnce(&mut HardState)) -> Result<()> {
        let mut appender = self.appender.lock();
        self.refuse_if_poisoned(&appender)?;
        let mut state = appender.state.clone();
        change(&mut state);
        if state != appender.state {
            write_state(&self.dir, &state)?;
            appender.state = state;
        }
        Ok(())
    }

    fn read_id_locked(&self, view: &View, index: u64) -> Result<Option<LogId>> {
        view.segments
            .iter()
            .rev()
            .find(|s| s.first_index <= index && index < s.end_index())
            .map(|segment| Self::read_id_in(segment, index))
            .transpose()
    }

    fn read_id_in(segment: &Segment, index: u64) -> Result<LogId> {
        let offset = segment.offsets[(index - segment.first_index) as usize];
        let mut header = [0u8; HEADER_LEN];
        segment
            .file
            .read_exact_at(&mut header, offset)
            .map_err(|e| Error::io(&segment.path, e))?;
        Ok(parse_header(&header).id)
    }

    /// Entries with indexes in `range`, in order, stopping before the payload would pass
    /// `max_bytes` (the first entry is always returned). Entries that were purged or are not there
    /// yet are left out: the caller sees where the answer starts and ends.
    pub fn read(&self, range: Range<u64>, max_bytes: usize) -> Result<Vec<Entry>> {
        let first = self.first_index();
        let view = self.view.read();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for segment in &view.segments {
            let from = range.start.max(segment.first_index).max(first);
            let to = range.end.min(segment.end_index());
            for index in from..to {
                let position = (index - segment.first_index) as usize;
                let offset = segment.offsets[position];
                let end = segment
                    .offsets
                    .get(position + 1)
                    .copied()
                    .unwrap_or(segment.len);
                let mut frame = vec![0u8; (end - offset) as usize];
                segment
                    .file
                    .read_exact_at(&mut frame, offset)
                    .map_err(|e| Error::io(&segment.path, e))?;
                let entry = read_frame(&mut frame.as_slice())
                    .map_err(|e| Error::io(&segment.path, e))?
                    .filter(|e| e.id.index == index)
                    .ok_or_else(|| Error::Corrupt {
                        path: segment.path.clone(),
                        message: format!(
                            "entry {index} at byte offset {offset} no longer passes its checksum"
                        ),
                    })?;
                bytes += entry.payload.len();
                if bytes > max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Calls `visit` for every entry with index in `from..=through`, in order, streaming
    /// each segment once. Fails if an entry in that range was purged.
    pub fn read_from(
        &self,
        from: u64,
        through: u64,
        mut visit: impl FnMut(Entry) -> Result<()>,
    ) -> Result<()> {
        if from > through {
            return Ok(());
        }
        let first = self.first_index();
        if from < first {
            return Err(Error::Corrupt {
                path: self.dir.clone(),
                message: format!(
                    "entry {from} is needed but the log starts at entry {first}; restore the collection from a backup"
                ),
            });
        }
        let segments: Vec<(u64, u64, PathBuf, Arc<File>)> = {
            let view = self.view.read();
            view.segments
                .iter()
                .filter(|s| s.end_index() > from && s.first_index <= through)
                .map(|s| (s.first_index, s.end_index(), s.path.clone(), s.file.clone()))
                .collect()
        };
        for (first_index, end, path, file) in segments {
            let mut reader =
                BufReader::with_capacity(1 << 20, ReadAt::new(&file, SEGMENT_HEADER_LEN));
            for expected in first_index..end.min(through + 1) {
                let entry = read_frame(&mut reader)
                    .map_err(|e| Error::io(&path, e))?
                    .filter(|e| e.id.index == expected)
                    .ok_or_else(|| Error::Corrupt {
                        path: path.clone(),
                        message: format!("entry {expected} is missing or fails its checksum"),
                    })?;
                if expected >= from {
                    visit(entry)?;
                }
            }
        }
        Ok(())
    }
}

/// Sequential reads through positioned reads, so that many readers share one descriptor.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> ReadAt<'a> {
    fn new(file: &'a File, offset: u64) -> Self {
        ReadAt { file, offset }
    }
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Logs written before entries carried log ids (`<first_index>.wal`, 16-byte headers) are
/// rewritten once into the current format, under term 0.
mod legacy {
    use super::*;

    const LEGACY_HEADER: usize = 16;

    fn read_legacy(reader: &mut impl Read) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let mut header = [0u8; LEGACY_HEADER];
        if let Err(e) = reader.read_exact(&mut header) {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(None)
            } else {
                Err(e)
            };
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4"));
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
        Ok(Some((
            u64::from_le_bytes(header[8..16].try_into().expect("8")),
            payload,
        )))
    }

    pub(super) fn migrate(dir: &Path) -> Result<()> {
        let mut old = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                old.push((first, entry.path()));
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        old.sort();
        let mut prev_last = None;
        for (first, path) in &old {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let mut reader = BufReader::new(file);
            let mut buf = segment_header(prev_last).to_vec();
            let mut expected = *first;
            while let Some((index, payload)) =
                read_legacy(&mut reader).map_err(|e| Error::io(path, e))?
            {
                if index != expected {
                    break;
                }
                encode_frame(&mut buf, LogId::new(0, 0, index), &payload);
                expected += 1;
            }
            if expected > *first {
                prev_last = Some(expected - 1);
            }
            let target = segment_path(dir, *first);
            let tmp = target.with_extension("migrating");
            fs::write(&tmp, &buf)
                .and_then(|_| durable::sync_all(&File::open(&tmp)?, &tmp))
                .and_then(|_| fs::rename(&tmp, &target))
                .map_err(|e| Error::io(&target, e))?;
        }
        sync_dir(dir)?;
        for (_, path) in &old {
            fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), segments = old.len(), "log segments rewritten into the format with log ids");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
