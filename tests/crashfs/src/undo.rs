//! The per-inode undo log: what a file looked like at its last fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Everything needed to put one backing file back to its last synced state.
///
/// Invariant: every byte in `0..orig_len` that is not covered by `saved` still holds its
/// synced value in the backing file, because each change saves the bytes it is about to
/// destroy first (writes, shrinking truncations, hole punches).
#[derive(Debug)]
pub(crate) struct UndoLog {
    /// A descriptor of its own (dup of a writable handle), so renames and closed handles
    /// do not matter when the log is applied.
    file: File,
    /// The file length at the sync point.
    orig_len: u64,
    /// Synced bytes that were since overwritten, keyed by offset; ranges never overlap.
    saved: BTreeMap<u64, Vec<u8>>,
}

/// What applying one undo log changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reverted {
    /// Bytes beyond the synced length that were cut off.
    pub(crate) truncated: u64,
    /// Bytes inside the synced length written back to their synced value (includes bytes
    /// re-grown after a shrinking truncation).
    pub(crate) restored: u64,
}

impl UndoLog {
    /// Starts a log at the file's current state, which is taken as the synced state.
    pub(crate) fn new(file: File) -> io::Result<UndoLog> {
        let orig_len = file.metadata()?.len();
        Ok(UndoLog {
            file,
            orig_len,
            saved: BTreeMap::new(),
        })
    }

    /// The log's own read-write descriptor of the backing file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Saves the synced bytes of `start..end` before they are overwritten. Only bytes inside
    /// the synced length that are not saved yet are read: the first save wins.
    pub(crate) fn save_range(&mut self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.orig_len);
        if start >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut cursor = start;
        if let Some((&s, bytes)) = self.saved.range(..start).next_back() {
            cursor = cursor.max(s + bytes.len() as u64);
        }
        for (&s, bytes) in self.saved.range(start..end) {
            if s > cursor {
                gaps.push((cursor, s));
            }
            cursor = cursor.max(s + bytes.len() as u64);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (s, e) in gaps {
            let mut buf = vec![0u8; (e - s) as usize];
            self.file.read_exact_at(&mut buf, s)?;
            self.saved.insert(s, buf);
        }
        Ok(())
    }

    /// Prepares for the file length to become `new_len`. Growing needs nothing (the synced
    /// length is already known); shrinking destroys the synced bytes past `new_len`.
    pub(crate) fn before_set_len(&mut self, new_len: u64) -> io::Result<()> {
        self.save_range(new_len, u64::MAX)
    }

    /// Puts the file back to its synced length and bytes.
    pub(crate) fn restore(&self) -> io::Result<Reverted> {
        let current = self.file.metadata()?.len();
        self.file.set_len(self.orig_len)?;
        let mut restored = 0;
        for (&offset, bytes) in &self.saved {
            self.file.write_all_at(bytes, offset)?;
            restored += bytes.len() as u64;
        }
        Ok(Reverted {
            truncated: current.saturating_sub(self.orig_len),
            restored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::fs::OpenOptions;

    fn file_with(dir: &tempfile::TempDir, content: &[u8]) -> File {
        let path = dir.path().join("f");
        fs::write(&path, content).unwrap();
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    }

    fn content(file: &File) -> Vec<u8> {
        let len = file.metadata().unwrap().len() as usize;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// Writes through the log the way the filesystem does: save first, then write.
    fn write(log: &mut UndoLog, file: &File, data: &[u8], offset: u64) {
        log.save_range(offset, offset + data.len() as u64).unwrap();
        file.write_all_at(data, offset).unwrap();
    }

    #[test]
    fn overlapping_overwrites_keep_the_first_saved_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&dir, b"0123456789");
        let mut log = UndoLog::new(file.try_clone().unwrap()).unwrap();
        write(&mut log, &file, b"aaa", 2);
        write(&mut log, &file, b"bbbbbb", 0);
        write(&mut log, &file, b"cc", 7);
        write(&mut log, &file, &[b'd'; 16], 1);
        let mut expected = b"b".to_vec();
        expected.extend_from_slice(&[b'd'; 16]);
        assert_eq!(content(&file), expected);
        let reverted = log.restore().unwrap();
        assert_eq!(content(&file), b"0123456789");
        assert_eq!(reverted.truncated, 7);
        assert_eq!(reverted.restored, 10);
        // The saved ranges tile the overwritten part exactly once.
        let mut covered = 0;
        for (&s, bytes) in &log.saved {
            assert_eq!(s, covered);
            covered += bytes.len() as u64;
        }
        assert_eq!(covered, 10);
    }

    #[test]
    fn shrink_then_grow_then_write_restores() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&dir, b"abcdefgh");
        let mut log = UndoLog::new(file.try_clone().unwrap()).unwrap();
        log.before_set_len(3).unwrap();
        file.set_len(3).unwrap();
        log.before_set_len(20).unwrap();
        file.set_len(20).unwrap();
        write(&mut log, &file, b"XY", 5);
        write(&mut log, &file, b"Z", 0);
        let reverted = log.restore().unwrap();
        assert_eq!(content(&file), b"abcdefgh");
        assert_eq!(reverted.truncated, 12);
    }

    #[test]
    fn appends_save_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&dir, b"synced");
        let mut log = UndoLog::new(file.try_clone().unwrap()).unwrap();
        write(&mut log, &file, b" and more", 6);
        assert!(log.saved.is_empty());
        let reverted = log.restore().unwrap();
        assert_eq!(content(&file), b"synced");
        assert_eq!(
            reverted,
            Reverted {
                truncated: 9,
                restored: 0
            }
        );
    }
}
