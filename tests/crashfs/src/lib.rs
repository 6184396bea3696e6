//! `prism-crashfs`: a FUSE pass-through filesystem that can simulate a power loss.
//!
//! [`CrashFs::mount`] exposes a backing directory at a mount point. Every operation is passed
//! straight through to the backing directory, so processes using the mount (including mmap
//! readers, served from the kernel page cache) always see the latest data. On the side the
//! filesystem keeps, per backing inode, an *undo log* of every file-data change made since that
//! file was last synced. [`CrashFs::power_cut`] applies those logs to the backing files and
//! unmounts: what is left in the backing directory is what a disk would hold after losing
//! power. A durability test can then start the program again directly on the backing directory
//! and check that everything it acknowledged is still there.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::io::Write;
//! let dir = tempfile::tempdir()?;
//! let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
//! std::fs::create_dir(&backing)?;
//! std::fs::create_dir(&mnt)?;
//! let fs = prism_crashfs::CrashFs::mount(&backing, &mnt)?;
//! let mut f = std::fs::File::create(mnt.join("wal"))?;
//! f.write_all(b"acknowledged")?;
//! f.sync_data()?;
//! f.write_all(b" lost")?;
//! drop(f);
//! let report = fs.power_cut()?;
//! assert_eq!(std::fs::read(backing.join("wal"))?, b"acknowledged");
//! assert_eq!(report.bytes_dropped(), 5);
//! # Ok(())
//! # }
//! ```
//!
//! # What is volatile (the model)
//!
//! * **File data and length are volatile until an fsync.** Writes, truncations and extensions
//!   (`setattr` size, `ftruncate`, `set_len`, `O_TRUNC`) and `fallocate` (plain, punch-hole and
//!   zero-range; collapse/insert-range are refused with `EOPNOTSUPP`) are undone by a power cut
//!   unless the file was synced afterwards. A sync is any FUSE `fsync` request on the inode,
//!   `datasync` or not, through *any* open handle of it: `fsync`, `fdatasync`, `sync_all`,
//!   `sync_data`, `msync(MS_SYNC)` and writes on `O_SYNC`/`O_DSYNC` handles (the kernel turns
//!   those into fsync requests). A sync makes everything the inode holds at that moment durable.
//! * **The sync point** of a file is its last fsync, or the moment it was created through the
//!   mount (length 0), or the mount itself for a file that already existed.
//! * **How it is undone.** At the first unsynced change of an inode its length is recorded;
//!   before bytes inside that length are overwritten (or cut off by a shrinking truncation or
//!   punched out), their synced value is saved, the first save of a byte range winning. Appends
//!   cost nothing. A power cut sets every logged file back to its recorded length and writes
//!   the saved bytes back. The undo logs live in memory, so overwriting huge synced files
//!   without syncing costs memory of the same size.
//! * **Metadata is durable at once.** `create`, `mkdir`, `unlink`, `rmdir`, `rename` (flags
//!   0, `RENAME_NOREPLACE`, `RENAME_EXCHANGE`), `link`, `symlink`, `chmod`, `chown` and
//!   `utimens` take effect on the backing directory immediately and are never undone: the
//!   model of a journaling filesystem that orders metadata and never loses a directory entry.
//!   A file created but never synced therefore survives the power cut *empty* (with its
//!   original length 0), and a renamed file keeps whatever of its data was synced, whatever
//!   name it has now. Directory fsyncs are accepted and change nothing. A file unlinked (or
//!   replaced by a rename) while it had unsynced changes simply stays gone.
//! * **Not modelled:** losing directory entries (a file created, written and fsynced whose
//!   parent directory was never fsynced survives here, but may not on a real filesystem),
//!   reordering of unsynced writes (either all unsynced changes of a file are lost, or with the
//!   file's next fsync none are; a real disk may keep any subset, torn sectors included),
//!   `sync`/`syncfs` (not forwarded by FUSE; they persist nothing here), xattrs, `mknod`, and
//!   file locks beyond what the kernel does locally. The backing files are never really
//!   fsynced: the backing directory plays the disk, not a durable copy of it.
//!
//! # After a power cut
//!
//! The mount answers every request with `EIO` (a dead disk) until it is gone. Stop (kill and
//! wait for) every process using the mount before calling [`CrashFs::power_cut`]; if one still
//! holds a file open, the mount is lazily detached instead of unmounted, and the serving thread
//! goes on answering `EIO` until the last such file is closed.
//!
//! # Requirements
//!
//! Linux with `/dev/fuse`, mounting as root (the pure-Rust mount path of `fuser`, no libfuse;
//! `fusermount3` is the fallback for unprivileged users). The mount uses `allow_other`, so
//! processes of any user may use it.
//!
//! **Do not mmap files of the mount in the process that owns the [`CrashFs`].** The serving
//! threads live in that process; `munmap` of a dirty shared mapping (and, rarely, a page
//! fault) holds the process's mm lock while it waits for them, and a serving thread that needs
//! the same lock to grow its heap deadlocks. Run the program under test in a child process
//! (the intended use: the server is spawned, killed, and started again); plain
//! `read`/`write` from the owning process are fine.

mod fs;
mod undo;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fs::{CrashFilesystem, Shared};

/// The `fsname` of the mounts, as shown by `mount` and `/proc/self/mountinfo`.
pub const FS_NAME: &str = "prism-crashfs";

/// What a power cut threw away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Files whose data or length was rolled back to their last sync.
    pub files_reverted: usize,
    /// Bytes past the synced lengths that were cut off.
    pub bytes_truncated: u64,
    /// Bytes inside the synced lengths written back to their synced value.
    pub bytes_restored: u64,
    /// The reverted files, relative to the backing directory (absolute if outside it).
    pub files: Vec<PathBuf>,
}

impl PowerCutReport {
    /// Unsynced bytes dropped: cut off past the synced length, plus overwritten ones restored.
    pub fn bytes_dropped(&self) -> u64 {
        self.bytes_truncated + self.bytes_restored
    }
}

impl fmt::Display for PowerCutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "power cut: {} file(s) reverted, {} byte(s) dropped ({} truncated, {} restored)",
            self.files_reverted,
            self.bytes_dropped(),
            self.bytes_truncated,
            self.bytes_restored
        )
    }
}

/// A mounted crash-simulating pass-through filesystem. Dropping it unmounts (keeping all data,
/// like [`CrashFs::unmount`]), so a panicking test leaves no mount behind.
#[derive(Debug)]
pub struct CrashFs {
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl CrashFs {
    /// Mounts a pass-through view of `backing` at `mountpoint` (both existing directories),
    /// served by background threads.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<CrashFs> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/fuse is missing: prism-crashfs needs the FUSE kernel module \
                 (modprobe fuse) and the /dev/fuse device",
            ));
        }
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        for (what, dir) in [("backing", &backing), ("mount point", &mountpoint)] {
            if !dir.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what} {} is not a directory", dir.display()),
                ));
            }
        }
        // Serving a mount from inside itself would deadlock the serving threads.
        if mountpoint.starts_with(&backing) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "mount point {} lies inside the backing directory {}",
                    mountpoint.display(),
                    backing.display()
                ),
            ));
        }
        let shared = Arc::new(Shared::new(backing.clone())?);
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(FS_NAME.to_string()),
            MountOption::Subtype("crashfs".to_string()),
        ];
        // The program under test may run as another user than the test harness.
        config.acl = SessionACL::All;
        // A second thread keeps e.g. page-fault reads moving while a long write is served.
        config.n_threads = Some(2);
        let filesystem = CrashFilesystem {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(filesystem, &mountpoint, &config).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mounting prism-crashfs at {}: {e}", mountpoint.display()),
            )
        })?;
        Ok(CrashFs {
            session: Some(session),
            shared,
            backing,
            mountpoint,
        })
    }

    /// The backing directory (canonicalized).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The mount point (canonicalized).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Simulates power loss: every file's data and length go back to what they were at that
    /// file's last fsync/fdatasync (or at its creation / the mount, if never synced), then the
    /// filesystem is unmounted. From the cut on, the mount answers `EIO`.
    ///
    /// Errors if a file could not be reverted (the others still are) or the unmount failed.
    pub fn power_cut(mut self) -> io::Result<PowerCutReport> {
        let outcome = self.shared.cut_power();
        let unmounted = self.shutdown();
        if !outcome.errors.is_empty() {
            return Err(io::Error::other(format!(
                "power cut could not revert everything: {}",
                outcome.errors.join("; ")
            )));
        }
        unmounted?;
        let mut report = PowerCutReport {
            files_reverted: outcome.files.len(),
            ..PowerCutReport::default()
        };
        for (path, reverted) in outcome.files {
            report.bytes_truncated += reverted.truncated;
            report.bytes_restored += reverted.restored;
            report.files.push(path);
        }
        Ok(report)
    }

    /// Unmounts without dropping anything: the backing directory keeps the latest data.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.shared.discard_undo();
        let result = session.umount_and_join();
        if is_our_mount(&self.mountpoint) {
            // Still mounted: some process holds a file open (EBUSY). Detach lazily so no mount
            // is left behind; the kernel ends the session when the last user lets go.
            lazy_unmount(&self.mountpoint)?;
            return Ok(());
        }
        result
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!(
                "prism-crashfs: unmounting {} failed: {e}",
                self.mountpoint.display()
            );
        }
    }
}

/// Whether `mountpoint` is currently a prism-crashfs mount in this mount namespace.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let mountpoint = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    is_our_mount(&mountpoint)
}

fn is_our_mount(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts...> - <fstype> <source> <super opts>"
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let Some(point) = left.split(' ').nth(4) else {
            return false;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(source)) = (right.next(), right.next()) else {
            return false;
        };
        fstype.starts_with("fuse")
            && unescape_mountinfo(source) == FS_NAME
            && Path::new(&unescape_mountinfo(point)) == mountpoint
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid C string; umount2 takes no other pointers.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // Not root: the setuid helper can detach too.
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "-q", "--"])
        .arg(mountpoint)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(io::Error::new(
            err.kind(),
            format!("lazy unmount of {}: {err}", mountpoint.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("plain"), "plain");
    }
}
