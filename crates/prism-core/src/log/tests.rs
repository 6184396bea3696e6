use super::*;
use std::io::Write;

fn options(segment_bytes: u64) -> OpenOptions {
    OpenOptions {
        segment_bytes,
        truncate_corrupt: false,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (ShardLog, Recovery) {
    ShardLog::open(dir, options(segment_bytes)).unwrap()
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|i| format!("entry-{i}").into_bytes()).collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.id.index).collect()
}

fn read_all(log: &ShardLog) -> Vec<Entry> {
    let mut out = Vec::new();
    log.read_from(log.first_index(), log.last_index(), |e| {
        out.push(e);
        Ok(())
    })
    .unwrap();
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn entries_keep_their_log_ids_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    assert_eq!(log.last_log_id(), None);
    assert_eq!(
        log.append_next(1, 7, &payloads(0..3)).unwrap(),
        LogId::new(1, 7, 1)
    );
    log.append(&[(LogId::new(2, 9, 4), b"four".as_slice())])
        .unwrap();
    drop(log);
    let (log, recovery) = open(dir.path(), 1 << 20);
    assert_eq!(recovery, Recovery::default());
    assert_eq!(log.last_log_id(), Some(LogId::new(2, 9, 4)));
    let entries = log.read(2..10, usize::MAX).unwrap();
    assert_eq!(indexes(&entries), vec![2, 3, 4]);
    assert_eq!(entries[0].id, LogId::new(1, 7, 2));
    assert_eq!(entries[0].payload, b"entry-1");
    assert_eq!(entries[2].payload, b"four");
}

#[test]
fn terms_never_go_back_and_batches_are_consecutive() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append_next(3, 1, &payloads(0..2)).unwrap();
    let back = log.append(&[(LogId::new(2, 1, 3), b"x".as_slice())]);
    assert!(
        matches!(back, Err(Error::LogOrder(_))),
        "a lower term must be refused"
    );
    let holey = log.append(&[
        (LogId::new(3, 1, 3), b"x".as_slice()),
        (LogId::new(3, 1, 5), b"y".as_slice()),
    ]);
    assert!(
        matches!(holey, Err(Error::LogOrder(_))),
        "a batch with a hole must be refused"
    );
    assert_eq!(log.last_index(), 2);
    drop(log);
    let (log, _) = open(dir.path(), 1 << 20);
    assert_eq!(log.last_index(), 2, "refused appends left nothing behind");
}

#[test]
fn an_append_over_existing_entries_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    log.append_next(1, 1, &payloads(0..8)).unwrap();
    log.append(&[(LogId::new(2, 2, 4), b"new".as_slice())])
        .unwrap();
    assert_eq!(log.last_log_id(), Some(LogId::new(2, 2, 4)));
    drop(log);
    let (log, _) = open(dir.path(), 100);
    let entries = read_all(&log);
    assert_eq!(indexes(&entries), vec![1, 2, 3, 4]);
    assert_eq!(entries[3].payload, b"new");
}

#[test]
fn an_append_that_would_leave_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append(&[(LogId::new(0, 0, 0), b"zero".as_slice())])
        .unwrap();
    let refused = log.append(&[(LogId::new(1, 0, 3), b"three".as_slice())]);
    assert!(
        matches!(refused, Err(Error::LogOrder(ref m)) if m.contains("gap")),
        "{refused:?}"
    );
    assert_eq!(log.last_log_id(), Some(LogId::new(0, 0, 0)));
    // After a purge past the end (a snapshot install) the log starts afresh after it.
    log.purge(LogId::new(2, 0, 7)).unwrap();
    log.append(&[(LogId::new(2, 0, 8), b"eight".as_slice())])
        .unwrap();
    drop(log);
    let (log, _) = open(dir.path(), 1 << 20);
    assert_eq!(log.last_log_id(), Some(LogId::new(2, 0, 8)));
    assert_eq!(indexes(&log.read(0..10, usize::MAX).unwrap()), vec![8]);
}

#[test]
fn range_reads_are_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    for i in 0..20 {
        log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
    }
    assert!(segment_files(dir.path()).len() > 3, "the log rolled");
    let all = log.read(1..21, usize::MAX).unwrap();
    assert_eq!(indexes(&all), (1..=20).collect::<Vec<_>>());
    let some = log.read(5..21, 15).unwrap();
    assert_eq!(indexes(&some), vec![5, 6], "7 bytes each, stopping at 15");
    assert_eq!(log.read(5..5, usize::MAX).unwrap(), vec![]);
    assert_eq!(
        indexes(&log.read(19..100, usize::MAX).unwrap()),
        vec![19, 20]
    );
}

#[test]
fn truncate_removes_a_suffix_across_segments_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    for i in 0..20 {
        log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
    }
    let before = segment_files(dir.path()).len();
    log.truncate(6).unwrap();
    assert_eq!(log.last_log_id(), Some(LogId::new(1, 0, 5)));
    assert!(
        segment_files(dir.path()).len() < before,
        "whole segments went"
    );
    log.append(&[(LogId::new(2, 1, 6), b"new".as_slice())])
        .unwrap();
    drop(log);
    let (log, _) = open(dir.path(), 100);
    let entries = read_all(&log);
    assert_eq!(indexes(&entries), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(entries[5].id, LogId::new(2, 1, 6));
    assert_eq!(entries[5].payload, b"new");
    log.truncate(1).unwrap();
    assert_eq!(log.last_log_id(), None);
    log.append_next(3, 0, &payloads(0..1)).unwrap();
    assert_eq!(log.last_log_id(), Some(LogId::new(3, 0, 1)));
}

#[test]
fn purge_is_durable_and_hides_entries_still_in_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    for i in 0..20 {
        log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
    }
    log.purge_through(7).unwrap();
    assert_eq!(log.hard_state().last_purged, Some(LogId::new(1, 0, 7)));
    assert_eq!(log.first_index(), 8);
    assert_eq!(indexes(&log.read(1..10, usize::MAX).unwrap()), vec![8, 9]);
    assert!(
        log.read_from(3, 9, |_| Ok(())).is_err(),
        "purged entries are not replayable"
    );
    drop(log);
    let (log, _) = open(dir.path(), 100);
    assert_eq!(log.first_index(), 8);
    assert_eq!(log.last_index(), 20);
    assert_eq!(indexes(&read_all(&log)), (8..=20).collect::<Vec<_>>());
}

#[test]
fn purge_past_the_end_starts_the_log_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    log.append_next(1, 0, &payloads(0..5)).unwrap();
    log.purge(LogId::new(4, 2, 50)).unwrap();
    assert_eq!(log.last_log_id(), Some(LogId::new(4, 2, 50)));
    assert_eq!(log.read(1..100, usize::MAX).unwrap(), vec![]);
    log.append(&[(LogId::new(4, 2, 51), b"after".as_slice())])
        .unwrap();
    drop(log);
    let (log, _) = open(dir.path(), 100);
    assert_eq!(log.first_index(), 51);
    assert_eq!(log.last_log_id(), Some(LogId::new(4, 2, 51)));
    assert_eq!(segment_files(dir.path()).len(), 1);
    drop(log);
    // Purged through the last entry, then reopened: still one past the purge point.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    log.append_next(1, 0, &payloads(0..3)).unwrap();
    log.purge_through(3).unwrap();
    drop(log);
    let (log, _) = open(dir.path(), 100);
    assert_eq!(log.last_log_id(), Some(LogId::new(1, 0, 3)));
    log.append_next(1, 0, &payloads(3..4)).unwrap();
    assert_eq!(log.last_index(), 4);
}

#[test]
fn vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.save_vote(b"term 3 for node 2").unwrap();
    log.save_committed(Some(LogId::new(3, 2, 10))).unwrap();
    drop(log);
    let (log, _) = open(dir.path(), 1 << 20);
    let state = log.hard_state();
    assert_eq!(state.vote.as_deref(), Some(b"term 3 for node 2".as_slice()));
    assert_eq!(state.committed, Some(LogId::new(3, 2, 10)));
    fs::write(dir.path().join(STATE_FILE), b"\x01\x02\x03\x04garbage").unwrap();
    drop(log);
    let refused = ShardLog::open(dir.path(), options(1 << 20));
    assert!(
        matches!(refused, Err(Error::Corrupt { .. })),
        "a damaged vote is never guessed"
    );
}

#[test]
fn a_torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append_next(1, 0, &payloads(0..3)).unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let len = fs::metadata(&path).unwrap().len();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[42, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let (log, recovery) = open(dir.path(), 1 << 20);
    assert_eq!(recovery.truncated_bytes, 7);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
    assert_eq!(log.append_next(1, 0, &payloads(9..10)).unwrap().index, 4);
    assert_eq!(read_all(&log).len(), 4);
}

#[test]
fn a_zero_filled_tail_is_a_torn_write() {
    // After a power loss a filesystem can show a grown file whose new blocks are zeros.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append_next(1, 0, &payloads(0..3)).unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let (log, recovery) = open(dir.path(), 1 << 20);
    assert_eq!(recovery.truncated_bytes, 4096);
    assert_eq!(log.last_index(), 3);
}

#[test]
fn a_damaged_last_entry_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append_next(1, 0, &payloads(0..2)).unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (log, recovery) = open(dir.path(), 1 << 20);
    assert!(recovery.truncated_bytes > 0);
    assert_eq!(log.last_index(), 1);
}

/// Flips one byte inside the payload of entry `index` (1-based, all entries equal length).
fn flip_inside_entry(path: &Path, index: usize, entry_len: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[SEGMENT_HEADER_LEN as usize + (index - 1) * entry_len + HEADER_LEN + 2] ^= 0x55;
    fs::write(path, &bytes).unwrap();
}

#[test]
fn a_damaged_entry_followed_by_valid_ones_is_corruption_named_by_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    log.append_next(1, 0, &payloads(0..10)).unwrap();
    drop(log);
    let path = segment_files(dir.path())[0].clone();
    let entry_len = HEADER_LEN + "entry-0".len();
    flip_inside_entry(&path, 4, entry_len);
    let before = fs::read(&path).unwrap();
    let error = ShardLog::open(dir.path(), options(1 << 20))
        .err()
        .expect("corruption refuses to open");
    let message = error.to_string();
    assert!(matches!(error, Error::Corrupt { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    let offset = SEGMENT_HEADER_LEN + 3 * entry_len as u64;
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(
        message.contains("entry 4") && message.contains("through entry 10"),
        "{message}"
    );
    assert!(message.contains("--truncate-corrupt-log"), "{message}");
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "a refusal changes nothing"
    );

    let (log, recovery) = ShardLog::open(
        dir.path(),
        OpenOptions {
            segment_bytes: 1 << 20,
            truncate_corrupt: true,
        },
    )
    .unwrap();
    let lost = recovery.lost.expect("the cut is reported");
    assert_eq!((lost.from_index, lost.through_index), (4, Some(10)));
    assert_eq!(lost.offset, offset);
    assert_eq!(indexes(&read_all(&log)), vec![1, 2, 3]);
}

#[test]
fn a_damaged_older_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    for i in 0..12 {
        log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
    }
    drop(log);
    let first = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&first, &bytes).unwrap();
    let error = ShardLog::open(dir.path(), options(100))
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains(&first.display().to_string()),
        "{error}"
    );
}

#[test]
fn a_missing_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 100);
    for i in 0..12 {
        log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
    }
    drop(log);
    let files = segment_files(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let error = ShardLog::open(dir.path(), options(100))
        .err()
        .expect("refused");
    assert!(error.to_string().contains("entries are missing"), "{error}");
}

#[test]
fn reads_run_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096);
    let log = Arc::new(log);
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let last = log.last_index();
        let entries = log.read(1..last + 1, usize::MAX).unwrap();
        assert_eq!(indexes(&entries), (1..=last).collect::<Vec<_>>());
        reads += 1;
    }
    writer.join().unwrap();
    assert_eq!(log.last_index(), 300);
}

#[test]
fn a_legacy_log_is_rewritten_with_log_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for index in 1..=3u64 {
        let payload = format!("old-{index}").into_bytes();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&index.to_le_bytes());
        hasher.update(&payload);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&hasher.finalize().to_le_bytes());
        bytes.extend_from_slice(&index.to_le_bytes());
        bytes.extend_from_slice(&payload);
    }
    fs::write(dir.path().join(format!("{:020}.wal", 1)), &bytes).unwrap();
    let (log, _) = open(dir.path(), 1 << 20);
    let entries = read_all(&log);
    assert_eq!(indexes(&entries), vec![1, 2, 3]);
    assert_eq!(entries[2].payload, b"old-3");
    assert_eq!(entries[2].id, LogId::new(0, 0, 3));
    assert!(!dir.path().join(format!("{:020}.wal", 1)).exists());
    log.append_next(1, 0, &payloads(0..1)).unwrap();
    assert_eq!(log.last_index(), 4);
}

#[test]
fn created_directories_are_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a/b/c");
    create_dir_durable(&deep).unwrap();
    assert!(deep.is_dir());
    create_dir_durable(&deep).unwrap();
}

/// Crashes at every fsync of an operation: before the first, and after each one, the log is
/// reopened from exactly what was durable there (`durable::CrashImage`).
#[cfg(feature = "fault-injection")]
mod crash_points {
    use super::*;
    use crate::log::durable::CrashImage;

    const SEGMENT: u64 = 256;

    /// Runs `setup`, then `operation` under a crash image, then for each crash point of the
    /// operation reopens the log there (which must succeed) and hands it to `check`, with
    /// whether it is the last point (the operation returned: its effect must be durable).
    /// Returns how many crash points there were.
    fn at_every_crash_point(
        setup: impl Fn(&ShardLog),
        operation: impl Fn(&ShardLog),
        check: impl Fn(&ShardLog, bool),
    ) -> usize {
        let mut point = 0;
        loop {
            let root = tempfile::tempdir_in("/dev/shm").unwrap();
            let image = CrashImage::watch(root.path()).unwrap();
            let dir = root.path().join("log");
            let (log, _) = open(&dir, SEGMENT);
            setup(&log);
            image.record_crash_points();
            operation(&log);
            let points = image.crash_points();
            let count = points.len();
            drop(log);
            let frozen = points.into_iter().nth(point).expect("a crash point");
            image.crash_to(frozen).unwrap();
            let log = ShardLog::open(&dir, options(SEGMENT))
                .unwrap_or_else(|e| panic!("crash point {point} of {count}: {e}"))
                .0;
            check(&log, point + 1 == count);
            point += 1;
            if point >= count {
                return count;
            }
        }
    }

    type Contents = Vec<(u64, u64, Vec<u8>)>;

    fn contents(log: &ShardLog) -> Contents {
        read_all(log)
            .into_iter()
            .map(|e| (e.id.term, e.id.index, e.payload))
            .collect()
    }

    fn thirty(log: &ShardLog) {
        for i in 0..30 {
            log.append_next(1, 0, &payloads(i..i + 1)).unwrap();
        }
        assert!(segment_files(&log.dir).len() > 3, "several segments");
    }

    fn thirty_contents() -> Contents {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let (log, _) = open(root.path(), SEGMENT);
        thirty(&log);
        contents(&log)
    }

    /// Truncating removes entries that conflict with a new leader's, which were never
    /// committed: keeping a prefix of them is safe, but never later ones after a gap.
    #[test]
    fn a_crash_in_a_truncate_leaves_a_prefix_of_the_old_log_at_least_as_long_as_the_cut() {
        let before = thirty_contents();
        let cut: Contents = before.iter().filter(|e| e.1 < 12).cloned().collect();
        let points = at_every_crash_point(
            thirty,
            |log| log.truncate(12).unwrap(),
            |log, last| {
                let now = contents(log);
                assert!(before.starts_with(&now) && now.starts_with(&cut), "{now:?}");
                if last {
                    assert_eq!(now, cut, "a finished truncate is durable");
                }
            },
        );
        assert!(points > 2, "{points} crash points");
    }

    #[test]
    fn a_crash_in_a_conflicting_append_leaves_an_old_prefix_or_the_new_log_whole() {
        let before = thirty_contents();
        let mut after: Contents = before.iter().filter(|e| e.1 < 12).cloned().collect();
        after.extend((12..15).map(|i| (2, i, b"new".to_vec())));
        let replace = |log: &ShardLog| {
            let batch: Vec<(LogId, &[u8])> = (12..15)
                .map(|i| (LogId::new(2, 0, i), b"new".as_slice()))
                .collect();
            log.append(&batch).unwrap();
        };
        at_every_crash_point(thirty, replace, |log, last| {
            let now = contents(log);
            let old_prefix = before.starts_with(&now) && now.len() >= 11;
            assert!(old_prefix || now == after, "{now:?}");
            if last {
                assert_eq!(now, after, "a finished append is durable");
            }
        });
    }

    #[test]
    fn a_crash_in_a_purge_loses_no_entry_after_the_purge_point() {
        let purge = |log: &ShardLog| {
            let upto = log.log_id_at(17).unwrap().unwrap();
            log.purge(upto).unwrap();
        };
        at_every_crash_point(thirty, purge, |log, last| {
            let now: Vec<u64> = contents(log).iter().map(|e| e.1).collect();
            let purged = log.hard_state().last_purged.map(|p| p.index);
            match purged {
                // Not purged yet: every entry is there.
                None => assert_eq!(now, (1..=30).collect::<Vec<_>>()),
                Some(17) => {
                    assert!(log.first_index() > 17);
                    assert_eq!(now, (18..=30).collect::<Vec<_>>());
                }
                other => panic!("purged {other:?}"),
            }
            if last {
                assert_eq!(purged, Some(17), "a finished purge is durable");
            }
        });
    }

    #[test]
    fn a_crash_while_voting_keeps_the_old_vote_or_the_new_one() {
        let setup = |log: &ShardLog| {
            thirty(log);
            log.save_vote(b"old").unwrap();
        };
        let vote = |log: &ShardLog| log.save_vote(b"new").unwrap();
        let points = at_every_crash_point(setup, vote, |log, last| {
            let vote = log.hard_state().vote;
            let (old, new) = (Some(b"old".to_vec()), Some(b"new".to_vec()));
            assert!(vote == old || vote == new, "{vote:?}");
            if last {
                assert_eq!(vote, new, "a cast vote is durable");
            }
        });
        assert!(points > 1);
    }

    #[test]
    fn a_crash_in_an_append_loses_it_whole_or_keeps_it_whole() {
        at_every_crash_point(
            |log| {
                log.append_next(1, 0, &payloads(0..5)).unwrap();
            },
            |log| {
                log.append_next(1, 0, &payloads(5..8)).unwrap();
            },
            |log, last| {
                let now: Vec<u64> = contents(log).iter().map(|e| e.1).collect();
                let (before, after) = ((1..=5).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
                assert!(now == before || now == after, "{now:?}");
                if last {
                    assert_eq!(now, after, "an acknowledged append is durable");
                }
            },
        );
    }

    #[test]
    fn the_committed_id_costs_no_fsync_and_a_crash_only_makes_it_older() {
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let image = CrashImage::watch(root.path()).unwrap();
        let dir = root.path().join("log");
        let (log, _) = open(&dir, SEGMENT);
        thirty(&log);
        let fifth = log.log_id_at(5).unwrap().unwrap();
        log.save_committed(Some(fifth)).unwrap();
        log.save_vote(b"v").unwrap();
        image.record_crash_points();
        let tenth = log.log_id_at(10).unwrap().unwrap();
        log.save_committed(Some(tenth)).unwrap();
        assert_eq!(image.crash_points().len(), 1, "no fsync");
        assert_eq!(log.hard_state().committed, Some(tenth));
        // Read back after a clean close: the newer one.
        drop(log);
        let (log, _) = open(&dir, SEGMENT);
        assert_eq!(log.hard_state().committed, Some(tenth));
        drop(log);
        // After a power loss: the one the vote's write carried.
        image.crash().unwrap();
        let (log, _) = open(&dir, SEGMENT);
        assert_eq!(log.hard_state().committed, Some(fifth));
        assert_eq!(log.hard_state().vote.as_deref(), Some(b"v".as_slice()));
    }
}
