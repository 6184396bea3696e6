//! End-to-end tests on a real FUSE mount under a temporary directory.
//!
//! They need /dev/fuse and root (or fusermount3); without FUSE they fail, never skip.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use prism_crashfs::{is_mounted, CrashFs};
use tempfile::TempDir;

struct Mounted {
    fs: CrashFs,
    backing: PathBuf,
    mnt: PathBuf,
    _dir: TempDir,
}

fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the prism-crashfs tests need FUSE (modprobe fuse, run as root)"
    );
}

fn mount() -> Mounted {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let fs = CrashFs::mount(&backing, &mnt).expect("mounting prism-crashfs");
    assert!(
        is_mounted(&mnt),
        "mount not visible in /proc/self/mountinfo"
    );
    Mounted {
        fs,
        backing,
        mnt,
        _dir: dir,
    }
}

#[test]
fn synced_data_survives_and_the_unsynced_tail_is_dropped() {
    let m = mount();
    let path = m.mnt.join("wal.log");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"record-1;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"record-2;").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"record-3 (never synced)").unwrap();
    drop(f);
    // Before the cut everyone sees the latest data, through the mount and in the backing dir.
    assert_eq!(
        fs::read(&path).unwrap(),
        b"record-1;record-2;record-3 (never synced)"
    );
    assert_eq!(
        fs::read(m.backing.join("wal.log")).unwrap(),
        b"record-1;record-2;record-3 (never synced)"
    );

    let report = m.fs.power_cut().unwrap();
    assert!(!is_mounted(&m.mnt));
    assert_eq!(
        fs::read(m.backing.join("wal.log")).unwrap(),
        b"record-1;record-2;"
    );
    assert_eq!(report.files_reverted, 1);
    assert_eq!(report.files, vec![PathBuf::from("wal.log")]);
    assert_eq!(report.bytes_truncated, 23);
    assert_eq!(report.bytes_dropped(), 23);
}

#[test]
fn an_overwrite_after_the_last_sync_is_reverted() {
    let m = mount();
    let path = m.mnt.join("segment");
    fs::write(&path, b"AAAAAAAAAA").unwrap();
    File::open(&path).unwrap().sync_all().unwrap();

    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"BBB", 2).unwrap();
    f.write_all_at(b"CCCCC", 8).unwrap(); // straddles the synced end
    f.write_all_at(b"DDDD", 0).unwrap(); // overlaps the first overwrite
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"DDDDBAAACCCCC");

    // A shrinking truncation of another synced file is volatile too.
    let other = m.mnt.join("truncated");
    let mut g = File::create(&other).unwrap();
    g.write_all(b"0123456789").unwrap();
    g.sync_all().unwrap();
    g.set_len(4).unwrap();
    g.seek(SeekFrom::Start(4)).unwrap();
    g.write_all(b"xy").unwrap();
    drop(g);
    assert_eq!(fs::read(&other).unwrap(), b"0123xy");

    let report = m.fs.power_cut().unwrap();
    assert_eq!(fs::read(m.backing.join("segment")).unwrap(), b"AAAAAAAAAA");
    assert_eq!(
        fs::read(m.backing.join("truncated")).unwrap(),
        b"0123456789"
    );
    assert_eq!(report.files_reverted, 2);
    // segment: 3 bytes past the synced end cut, 2+2+1+... synced bytes 0..10 restored where
    // overwritten (0..5 and 8..10); truncated: 4..10 restored.
    assert_eq!(report.bytes_truncated, 3);
    assert_eq!(report.bytes_restored, 7 + 6);
}

#[test]
fn renamed_synced_file_keeps_its_data_and_an_unsynced_temp_file_is_empty() {
    let m = mount();
    fs::create_dir(m.mnt.join("index")).unwrap();

    // The "write x.tmp, fsync, rename to x" pattern.
    let tmp = m.mnt.join("index/meta.json.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(br#"{"opstamp":7}"#).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&tmp, m.mnt.join("index/meta.json")).unwrap();

    // A temp file that is written and renamed but never synced.
    let tmp2 = m.mnt.join("index/seg.tmp");
    fs::write(&tmp2, b"unsynced segment bytes").unwrap();
    fs::rename(&tmp2, m.mnt.join("index/seg.bin")).unwrap();
    // A temp file that is written and never synced nor renamed.
    fs::write(m.mnt.join("index/other.tmp"), b"also unsynced").unwrap();

    // Data written through one handle and synced through another is durable.
    let shared = m.mnt.join("index/shared");
    let mut writer = File::create(&shared).unwrap();
    writer.write_all(b"written by one handle").unwrap();
    File::open(&shared).unwrap().sync_data().unwrap();
    drop(writer);

    let mut names: Vec<_> = fs::read_dir(m.mnt.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["meta.json", "other.tmp", "seg.bin", "shared"]);

    let report = m.fs.power_cut().unwrap();
    let index = m.backing.join("index");
    assert_eq!(
        fs::read(index.join("meta.json")).unwrap(),
        br#"{"opstamp":7}"#
    );
    assert!(!index.join("meta.json.tmp").exists());
    // Metadata survives, unsynced data does not.
    assert_eq!(fs::read(index.join("seg.bin")).unwrap(), b"");
    assert_eq!(fs::read(index.join("other.tmp")).unwrap(), b"");
    assert_eq!(
        fs::read(index.join("shared")).unwrap(),
        b"written by one handle"
    );
    assert_eq!(
        report.files,
        vec![
            PathBuf::from("index/other.tmp"),
            PathBuf::from("index/seg.bin")
        ]
    );
}

#[test]
fn unmount_keeps_everything() {
    let m = mount();
    fs::create_dir_all(m.mnt.join("a/b")).unwrap();
    fs::write(m.mnt.join("a/b/never-synced"), b"kept anyway").unwrap();
    let mut f = File::create(m.mnt.join("a/partly")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"+unsynced").unwrap();
    drop(f);
    m.fs.unmount().unwrap();
    assert!(!is_mounted(&m.mnt));
    assert_eq!(
        fs::read(m.backing.join("a/b/never-synced")).unwrap(),
        b"kept anyway"
    );
    assert_eq!(
        fs::read(m.backing.join("a/partly")).unwrap(),
        b"synced+unsynced"
    );
}

#[test]
fn files_that_existed_at_mount_revert_to_their_state_at_the_mount() {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(backing.join("old"), b"from before the mount").unwrap();
    fs::write(backing.join("old-synced"), b"v1").unwrap();

    let crash = CrashFs::mount(&backing, &mnt).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.join("old"))
        .unwrap();
    f.write_all(b", appended").unwrap();
    drop(f);
    fs::write(mnt.join("old-synced"), b"v2, longer").unwrap(); // O_TRUNC + write
    assert_eq!(
        fs::read(mnt.join("old")).unwrap(),
        b"from before the mount, appended"
    );
    File::open(mnt.join("old-synced"))
        .unwrap()
        .sync_all()
        .unwrap();

    let report = crash.power_cut().unwrap();
    assert_eq!(
        fs::read(backing.join("old")).unwrap(),
        b"from before the mount"
    );
    assert_eq!(fs::read(backing.join("old-synced")).unwrap(), b"v2, longer");
    assert_eq!(report.files, vec![PathBuf::from("old")]);
}

#[test]
fn unlinked_and_replaced_dirty_files_stay_gone() {
    let m = mount();
    fs::write(m.mnt.join("doomed"), b"unsynced").unwrap();
    fs::remove_file(m.mnt.join("doomed")).unwrap();

    // Replace a synced file by a rename of a synced temp file: the old inode's log must go.
    let mut f = File::create(m.mnt.join("current")).unwrap();
    f.write_all(b"old version").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" + dirty tail").unwrap();
    drop(f);
    let mut t = File::create(m.mnt.join("current.tmp")).unwrap();
    t.write_all(b"new version").unwrap();
    t.sync_all().unwrap();
    drop(t);
    fs::rename(m.mnt.join("current.tmp"), m.mnt.join("current")).unwrap();

    // remove_dir_all of a tree with unsynced files (what dropping an index does).
    fs::create_dir_all(m.mnt.join("tree/sub")).unwrap();
    fs::write(m.mnt.join("tree/sub/f1"), b"x").unwrap();
    fs::write(m.mnt.join("tree/f2"), b"y").unwrap();
    fs::remove_dir_all(m.mnt.join("tree")).unwrap();

    let report = m.fs.power_cut().unwrap();
    assert!(!m.backing.join("doomed").exists());
    assert!(!m.backing.join("tree").exists());
    assert_eq!(fs::read(m.backing.join("current")).unwrap(), b"new version");
    assert_eq!(report.files_reverted, 0, "{report}");
}

#[test]
fn a_killed_process_loses_what_it_did_not_sync() {
    let m = mount();
    // A separate process writes through the mount, syncs part of it and is SIGKILLed.
    let script = format!(
        "printf durable > {dir}/a && sync {dir}/a && printf volatile > {dir}/b && \
         printf ' tail' >> {dir}/a && echo ready && exec sleep 60",
        dir = m.mnt.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    child.kill().unwrap();
    child.wait().unwrap();

    let report = m.fs.power_cut().unwrap();
    assert_eq!(fs::read(m.backing.join("a")).unwrap(), b"durable");
    assert_eq!(fs::read(m.backing.join("b")).unwrap(), b"");
    assert_eq!(report.files_reverted, 2, "{report}");
}

#[test]
fn power_cut_with_a_file_still_open_detaches_and_fails_further_io() {
    let m = mount();
    let mut f = File::create(m.mnt.join("held")).unwrap();
    f.write_all(b"lost").unwrap();
    let report = m.fs.power_cut().unwrap();
    assert_eq!(report.files_reverted, 1);
    assert!(!is_mounted(&m.mnt), "a busy mount must be detached");
    let err = f.write_all(b"more").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop(f);
    assert_eq!(fs::read(m.backing.join("held")).unwrap(), b"");
}

#[test]
fn dropping_unmounts_even_when_a_test_panics() {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let result = std::panic::catch_unwind(|| {
        let _crash = CrashFs::mount(&backing, &mnt).unwrap();
        fs::write(mnt.join("f"), b"data").unwrap();
        panic!("test failure while mounted");
    });
    assert!(result.is_err());
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read(backing.join("f")).unwrap(), b"data");
}

#[test]
fn mounting_inside_the_backing_directory_is_refused() {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("mnt");
    fs::create_dir(&inner).unwrap();
    let err = CrashFs::mount(dir.path(), &inner).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random writes, truncations, syncs through either of two handles and renames, checked
/// against a model of "latest" and "last synced" content per inode.
#[test]
fn random_operations_match_the_model() {
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 42, 7_777_777] {
        let m = mount();
        let mut rng = Rng(seed);
        const FILES: usize = 3;
        let mut names: Vec<String> = (0..FILES).map(|i| format!("f{i}")).collect();
        let mut current: Vec<Vec<u8>> = vec![Vec::new(); FILES];
        let mut synced: Vec<Vec<u8>> = vec![Vec::new(); FILES];
        let handles: Vec<[File; 2]> = names
            .iter()
            .map(|name| {
                let path = m.mnt.join(name);
                let a = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .unwrap();
                let b = OpenOptions::new().write(true).open(&path).unwrap();
                [a, b]
            })
            .collect();
        for step in 0..1500 {
            let ino = rng.below(FILES as u64) as usize;
            let handle = &handles[ino][rng.below(2) as usize];
            match rng.below(10) {
                0..=4 => {
                    let offset = rng.below(current[ino].len() as u64 + 3000) as usize;
                    let len = 1 + rng.below(6000) as usize;
                    let byte = rng.next() as u8;
                    let data = vec![byte; len];
                    handle.write_all_at(&data, offset as u64).unwrap();
                    let cur = &mut current[ino];
                    if cur.len() < offset + len {
                        cur.resize(offset + len, 0);
                    }
                    cur[offset..offset + len].copy_from_slice(&data);
                }
                5 => {
                    let len = rng.below(current[ino].len() as u64 + 2000) as usize;
                    handle.set_len(len as u64).unwrap();
                    current[ino].resize(len, 0);
                }
                6 | 7 => {
                    if rng.below(2) == 0 {
                        handle.sync_all().unwrap();
                    } else {
                        handle.sync_data().unwrap();
                    }
                    synced[ino] = current[ino].clone();
                }
                8 => {
                    // Swap the names of two inodes through a temporary name.
                    let other = (ino + 1 + rng.below(FILES as u64 - 1) as usize) % FILES;
                    let tmp = m.mnt.join("swap.tmp");
                    fs::rename(m.mnt.join(&names[ino]), &tmp).unwrap();
                    fs::rename(m.mnt.join(&names[other]), m.mnt.join(&names[ino])).unwrap();
                    fs::rename(&tmp, m.mnt.join(&names[other])).unwrap();
                    names.swap(ino, other);
                }
                _ => {
                    let seen = fs::read(m.mnt.join(&names[ino])).unwrap();
                    assert!(
                        seen == current[ino],
                        "seed {seed} step {step}: read differs"
                    );
                }
            }
        }
        drop(handles);
        m.fs.power_cut().unwrap();
        for ino in 0..FILES {
            let after = fs::read(m.backing.join(&names[ino])).unwrap();
            assert!(
                after == synced[ino],
                "seed {seed}: {} has {} bytes after the power cut, synced {}",
                names[ino],
                after.len(),
                synced[ino].len()
            );
        }
    }
}

#[test]
fn renaming_a_directory_keeps_the_inodes_inside_it_usable() {
    let m = mount();
    fs::create_dir_all(m.mnt.join("d/sub")).unwrap();
    let f = File::create(m.mnt.join("d/sub/file")).unwrap();
    f.write_all_at(b"synced", 0).unwrap();
    f.sync_all().unwrap();
    // Cache the inode of the file in the kernel, then move its grandparent.
    let before = fs::metadata(m.mnt.join("d/sub/file")).unwrap();
    fs::rename(m.mnt.join("d"), m.mnt.join("e")).unwrap();
    f.write_all_at(b" + unsynced", 6).unwrap();
    let after = fs::metadata(m.mnt.join("e/sub/file")).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(after.len(), 17);
    fs::set_permissions(m.mnt.join("e/sub/file"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.backing.join("e/sub/file"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    drop(f);
    let report = m.fs.power_cut().unwrap();
    assert_eq!(fs::read(m.backing.join("e/sub/file")).unwrap(), b"synced");
    assert_eq!(report.files, vec![PathBuf::from("e/sub/file")]);
}

#[test]
fn other_metadata_operations_pass_through() {
    let m = mount();
    fs::write(m.mnt.join("target"), b"t").unwrap();
    std::os::unix::fs::symlink("target", m.mnt.join("link")).unwrap();
    assert_eq!(
        fs::read_link(m.mnt.join("link")).unwrap(),
        Path::new("target")
    );
    assert_eq!(fs::read(m.mnt.join("link")).unwrap(), b"t");
    fs::hard_link(m.mnt.join("target"), m.mnt.join("hard")).unwrap();
    fs::remove_file(m.mnt.join("target")).unwrap();
    assert_eq!(fs::read(m.mnt.join("hard")).unwrap(), b"t");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(m.mnt.join("hard"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(
        fs::metadata(m.backing.join("hard"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );
    // renameat2 flags pass through: NOREPLACE refuses, EXCHANGE swaps (and the inodes
    // stay usable under their new names).
    fs::write(m.mnt.join("x"), b"x").unwrap();
    fs::write(m.mnt.join("y"), b"y").unwrap();
    let renameat2 = |from: &str, to: &str, flags: libc::c_uint| {
        let (from, to) = (m.mnt.join(from), m.mnt.join(to));
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let (from, to) = (c(&from), c(&to));
        // SAFETY: valid C strings.
        unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                flags,
            )
        }
    };
    assert_eq!(renameat2("x", "y", libc::RENAME_NOREPLACE), -1);
    assert_eq!(renameat2("x", "y", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.mnt.join("x")).unwrap(), b"y");
    fs::write(m.mnt.join("y"), b"y2").unwrap();
    assert_eq!(fs::read(m.backing.join("y")).unwrap(), b"y2");
    assert_eq!(fs::read(m.backing.join("x")).unwrap(), b"y");
    assert!(fs::remove_dir(m.mnt.join("missing")).is_err());
    let err = fs::create_dir(m.mnt.join("hard")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    // statfs goes to the backing filesystem.
    let out = Command::new("stat")
        .args(["-f", "-c", "%b"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let blocks: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(blocks > 0);
    m.fs.unmount().unwrap();
    assert_eq!(fs::read(m.backing.join("hard")).unwrap(), b"t");
    assert!(!m.backing.join("target").exists());
}

#[test]
fn an_unlinked_open_file_keeps_working() {
    let m = mount();
    let path = m.mnt.join("scratch");
    let mut f = File::create(&path).unwrap();
    fs::remove_file(&path).unwrap();
    f.write_all(b"still writable").unwrap();
    // Past the attribute TTL the kernel asks again, without a handle.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(f.metadata().unwrap().len(), 14);
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    let mut back = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    // Opened write-only by the test, so read through /proc's reopen of the same inode.
    File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&f)
    ))
    .unwrap()
    .read_to_string(&mut back)
    .unwrap();
    assert_eq!(back, "still writable");
    f.sync_all().unwrap();
    drop(f);
    let report = m.fs.power_cut().unwrap();
    assert_eq!(report.files_reverted, 0);
    assert!(fs::read_dir(&m.backing).unwrap().next().is_none());
}

#[test]
fn writes_on_an_o_dsync_handle_are_durable() {
    use std::os::unix::fs::OpenOptionsExt;
    let m = mount();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DSYNC)
        .open(m.mnt.join("dsync"))
        .unwrap();
    f.write_all(b"each write is synced").unwrap();
    drop(f);
    let report = m.fs.power_cut().unwrap();
    assert_eq!(
        fs::read(m.backing.join("dsync")).unwrap(),
        b"each write is synced"
    );
    assert_eq!(report.files_reverted, 0);
}

/// Runs `child` in a forked process and returns whether it succeeded.
///
/// mmap users must not share an address space with the FUSE server: munmap (and sometimes a
/// page fault) holds the process's mm lock while waiting for the server, and a serving thread
/// that needs that lock to grow its heap then deadlocks. The program under test always runs in
/// its own process; these tests do their mmap work in a child too.
fn in_child(child: impl FnOnce() -> bool) -> bool {
    // SAFETY: the child only runs `child` (plain file I/O and mmap) and leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(false);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    }
}

fn pipe() -> (File, File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe fills in two new descriptors, which the Files then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

#[test]
fn mmap_reads_see_written_data() {
    let m = mount();
    let path = m.mnt.join("mapped");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let data: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 251) as u8).collect();
    f.write_all_at(&data, 0).unwrap();
    let mut changed = data.clone();
    changed[4096..4096 + 7].copy_from_slice(b"changed");

    let (mut from_child, mut to_parent) = pipe();
    let (mut from_parent, mut to_child) = pipe();
    let reader = || {
        let file = File::open(&path).unwrap();
        // SAFETY: nobody truncates the file while it is mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let first = map[..] == data[..];
        to_parent.write_all(b"1").unwrap();
        let mut go = [0u8];
        from_parent.read_exact(&mut go).unwrap();
        // The same mapping shows a write made afterwards through another handle.
        first && map[..] == changed[..]
    };
    let child_ok = std::thread::scope(|s| {
        let parent = s.spawn(|| {
            let mut ready = [0u8];
            from_child.read_exact(&mut ready).unwrap();
            f.write_all_at(b"changed", 4096).unwrap();
            to_child.write_all(b"2").unwrap();
        });
        let ok = in_child(reader);
        parent.join().unwrap();
        ok
    });
    assert!(child_ok, "the mmap reader in the child saw the wrong bytes");
    drop(f);
    m.fs.unmount().unwrap();
    assert_eq!(fs::read(m.backing.join("mapped")).unwrap(), changed);
}

#[test]
fn shared_mmap_writes_are_durable_after_msync_only() {
    let m = mount();
    for name in ["msynced", "not-msynced"] {
        let f = File::create(m.mnt.join(name)).unwrap();
        f.set_len(4096).unwrap();
        f.sync_all().unwrap();
    }
    let writer = || {
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.mnt.join(name))
                .unwrap()
        };
        let (synced, unsynced) = (open("msynced"), open("not-msynced"));
        // SAFETY: nobody resizes the files while they are mapped.
        let mut a = unsafe { memmap2::MmapMut::map_mut(&synced) }.unwrap();
        let mut b = unsafe { memmap2::MmapMut::map_mut(&unsynced) }.unwrap();
        a[..5].copy_from_slice(b"hello");
        b[..5].copy_from_slice(b"hello");
        a.flush().unwrap(); // msync(MS_SYNC)
                            // munmap writes b's dirty page back, without a sync.
        true
    };
    assert!(in_child(writer));
    // Both writes reached the backing files.
    assert_eq!(&fs::read(m.mnt.join("not-msynced")).unwrap()[..5], b"hello");
    let report = m.fs.power_cut().unwrap();
    assert_eq!(&fs::read(m.backing.join("msynced")).unwrap()[..5], b"hello");
    assert_eq!(
        fs::read(m.backing.join("not-msynced")).unwrap(),
        vec![0u8; 4096]
    );
    assert_eq!(report.files, vec![PathBuf::from("not-msynced")]);
}
