//! The FUSE pass-through filesystem and the state it shares with `CrashFs`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

use crate::undo::{Reverted, UndoLog};

/// Every change goes through this filesystem, so the kernel may cache attributes and entries;
/// a short TTL only bounds the damage if someone edits the backing directory behind our back.
const TTL: Duration = Duration::from_secs(1);

/// A backing inode: (st_dev, st_ino).
pub(crate) type Key = (u64, u64);

#[derive(Debug)]
struct Node {
    key: Key,
    /// Backing paths known to name this inode (more than one only with hard links). Empty
    /// once every known name is gone; the kernel may still hold the node until `forget`.
    paths: Vec<PathBuf>,
    lookups: u64,
}

#[derive(Debug)]
struct OpenFile {
    file: Arc<File>,
    key: Key,
}

#[derive(Debug)]
struct DirEntry {
    name: OsString,
    ino: u64,
    kind: FileType,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Set by the power cut: from then on the "disk" answers nothing but EIO.
    dead: bool,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next_ino: u64,
    files: HashMap<u64, OpenFile>,
    /// Directory listings are snapshotted at opendir so readdir offsets stay stable.
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    undo: HashMap<Key, UndoLog>,
}

/// Outcome of [`Shared::cut_power`].
#[derive(Debug, Default)]
pub(crate) struct CutOutcome {
    pub(crate) files: Vec<(PathBuf, Reverted)>,
    pub(crate) errors: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    backing: PathBuf,
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(backing: PathBuf) -> io::Result<Shared> {
        let md = fs::metadata(&backing)?;
        let key = (md.dev(), md.ino());
        let root = Node {
            key,
            paths: vec![backing.clone()],
            lookups: 1,
        };
        let state = State {
            dead: false,
            nodes: HashMap::from([(INodeNo::ROOT.0, root)]),
            by_key: HashMap::from([(key, INodeNo::ROOT.0)]),
            next_ino: INodeNo::ROOT.0 + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            undo: HashMap::new(),
        };
        Ok(Shared {
            backing,
            state: Mutex::new(state),
        })
    }

    /// Kills the "disk" and rolls every file back to its last sync. Holding the lock while
    /// doing it makes the cut atomic with respect to in-flight writes.
    pub(crate) fn cut_power(&self) -> CutOutcome {
        let mut state = self.state.lock();
        state.dead = true;
        let mut outcome = CutOutcome::default();
        for (_, log) in state.undo.drain() {
            let path = fd_path(log.file());
            match log.restore() {
                Ok(reverted) => {
                    if reverted != Reverted::default() {
                        let rel = path
                            .strip_prefix(&self.backing)
                            .map(Path::to_path_buf)
                            .unwrap_or(path);
                        outcome.files.push((rel, reverted));
                    }
                }
                Err(e) => outcome
                    .errors
                    .push(format!("reverting {}: {e}", path.display())),
            }
        }
        outcome.files.sort_by(|a, b| a.0.cmp(&b.0));
        outcome
    }

    /// Forgets every pending change (used by a clean unmount).
    pub(crate) fn discard_undo(&self) {
        self.state.lock().undo.clear();
    }
}

/// Best-effort current path of an open descriptor, for the report.
fn fd_path(file: &File) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .unwrap_or_else(|_| PathBuf::from("<unknown>"))
}

/// `path` moved from under `from` to under `to`, if it is `from` or inside it.
fn reparent(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(from).ok()?;
    // `join("")` would add a trailing slash, which makes later opens fail with ENOTDIR.
    Some(if rest.as_os_str().is_empty() {
        to.to_path_buf()
    } else {
        to.join(rest)
    })
}

fn key_of(md: &fs::Metadata) -> Key {
    (md.dev(), md.ino())
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsecs)
    }
}

fn kind_of(ft: fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn attr(ino: u64, md: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: system_time(md.ctime(), md.ctime_nsec()),
        kind: kind_of(md.file_type()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn last_errno() -> Errno {
    errno(io::Error::last_os_error())
}

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Backing open options for a FUSE open. Writable handles are always opened read-write so
/// the undo log (a dup of the handle) can read the bytes it is about to lose.
fn open_options(flags: i32) -> OpenOptions {
    let mut opts = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => opts.read(true),
        _ => opts.read(true).write(true),
    };
    // The kernel resolves offsets (so no O_APPEND: pwrite would ignore the offset), and
    // durability is simulated here, so the backing needs no O_SYNC/O_DIRECT either.
    let stripped = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT
        | libc::O_NOCTTY;
    opts.custom_flags(flags & !stripped);
    opts
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nsecs) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: nsecs as _,
            }
        }
    }
}

impl State {
    fn check_alive(&self) -> Result<(), Errno> {
        if self.dead {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes.get(&ino.0).ok_or(Errno::ESTALE)
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.node(ino)?.paths.first().cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn open_file(&self, fh: FileHandle) -> Result<(Arc<File>, Key), Errno> {
        self.files
            .get(&fh.0)
            .map(|f| (f.file.clone(), f.key))
            .ok_or(Errno::EBADF)
    }

    /// Registers one more kernel reference to the inode at `path` and returns its attributes.
    fn remember(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(&path).map_err(errno)?;
        let key = key_of(&md);
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if !node.paths.contains(&path) {
                    node.paths.push(path);
                }
                node.lookups += 1;
                return Ok(attr(ino, &md));
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                key,
                paths: vec![path],
                lookups: 1,
            },
        );
        self.by_key.insert(key, ino);
        Ok(attr(ino, &md))
    }

    /// Drops a name that no longer exists. A node left without names no longer owns its key,
    /// so a new file that reuses the backing inode number gets a fresh node.
    fn drop_name(&mut self, path: &Path) {
        let by_key = &mut self.by_key;
        for (&ino, node) in self.nodes.iter_mut() {
            let before = node.paths.len();
            node.paths.retain(|p| !p.starts_with(path));
            if node.paths.is_empty() && before > 0 && by_key.get(&node.key) == Some(&ino) {
                by_key.remove(&node.key);
            }
        }
    }

    /// An inode whose last name is gone has nothing to come back after a power cut.
    fn forget_undo_if_unlinked(&mut self, key: Key) {
        let gone = match self.undo.get(&key) {
            Some(log) => log
                .file()
                .metadata()
                .map(|m| m.nlink() == 0)
                .unwrap_or(true),
            None => false,
        };
        if gone {
            self.undo.remove(&key);
        }
    }

    /// The undo log of `key`, started now (at the synced state) if there is none. `None` for
    /// an already unlinked file: nothing of it survives a power cut anyway.
    fn undo_log(&mut self, key: Key, file: &File) -> Result<Option<&mut UndoLog>, Errno> {
        match self.undo.entry(key) {
            Entry::Occupied(log) => Ok(Some(log.into_mut())),
            Entry::Vacant(slot) => {
                if file.metadata().map_err(errno)?.nlink() == 0 {
                    return Ok(None);
                }
                let log = UndoLog::new(file.try_clone().map_err(errno)?).map_err(errno)?;
                Ok(Some(slot.insert(log)))
            }
        }
    }

    fn alloc_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// The handle to use instead of a path: the request's own, or for a node whose names are
    /// all gone (an unlinked but open file; the kernel sends no handle for fstat/fchmod) any
    /// open handle of the inode.
    fn handle_for(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<(Arc<File>, Key)> {
        if let Some(open) = fh.and_then(|fh| self.open_file(fh).ok()) {
            return Some(open);
        }
        let node = self.nodes.get(&ino.0)?;
        if !node.paths.is_empty() {
            return None;
        }
        self.files
            .values()
            .find(|f| f.key == node.key)
            .map(|f| (f.file.clone(), f.key))
    }

    fn stat(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<fs::Metadata, Errno> {
        match self.handle_for(ino, fh) {
            Some((file, _)) => file.metadata().map_err(errno),
            None => fs::symlink_metadata(self.path(ino)?).map_err(errno),
        }
    }

    fn set_len(&mut self, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        let (file, key) = match self.handle_for(ino, fh) {
            Some(open) => open,
            None => {
                let file = open_options(libc::O_RDWR)
                    .open(self.path(ino)?)
                    .map_err(errno)?;
                let key = key_of(&file.metadata().map_err(errno)?);
                (Arc::new(file), key)
            }
        };
        if let Some(log) = self.undo_log(key, &file)? {
            log.before_set_len(size).map_err(errno)?;
        }
        file.set_len(size).map_err(errno)
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        self.check_alive()?;
        let handle = self.handle_for(ino, fh).map(|(f, _)| f);
        if let Some(mode) = mode {
            let perms = fs::Permissions::from_mode(mode & 0o7777);
            match &handle {
                Some(file) => file.set_permissions(perms),
                None => fs::set_permissions(self.path(ino)?, perms),
            }
            .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            match &handle {
                Some(file) => std::os::unix::fs::fchown(file.as_ref(), uid, gid),
                None => std::os::unix::fs::lchown(self.path(ino)?, uid, gid),
            }
            .map_err(errno)?;
        }
        if let Some(size) = size {
            self.set_len(ino, fh, size)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            // SAFETY: `times` is a valid two-element array and the fd / C string outlive the call.
            let rc = match &handle {
                Some(file) => unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) },
                None => {
                    let path = cstring(&self.path(ino)?)?;
                    unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            times.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    }
                }
            };
            if rc != 0 {
                return Err(last_errno());
            }
        }
        Ok(attr(ino.0, &self.stat(ino, fh)?))
    }

    fn create(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        self.check_alive()?;
        let path = self.child(parent, name)?;
        let mut opts = open_options(flags);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        opts.mode(mode & 0o7777);
        let file = opts.open(&path).map_err(errno)?;
        // The kernel already applied the caller's umask; undo ours.
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(errno)?;
        let key = key_of(&file.metadata().map_err(errno)?);
        // A new file's content is volatile from birth: the log starts at length 0.
        if let Some(log) = self.undo_log(key, &file)? {
            if flags & libc::O_TRUNC != 0 {
                log.before_set_len(0).map_err(errno)?;
            }
        }
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0).map_err(errno)?;
        }
        let attr = self.remember(path)?;
        let fh = self.alloc_fh();
        self.files.insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                key,
            },
        );
        Ok((attr, fh))
    }

    fn open(&mut self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        self.check_alive()?;
        // An unlinked file can still be reopened (through /proc/PID/fd): do the same with
        // one of our own handles of it.
        let path = match self.handle_for(ino, None) {
            Some((file, _)) => PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            None => self.path(ino)?,
        };
        let file = open_options(flags.0).open(path).map_err(errno)?;
        let key = key_of(&file.metadata().map_err(errno)?);
        // Only with atomic_o_trunc (not negotiated) would O_TRUNC arrive here; handle it anyway.
        if flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            if let Some(log) = self.undo_log(key, &file)? {
                log.before_set_len(0).map_err(errno)?;
            }
            file.set_len(0).map_err(errno)?;
        }
        let fh = self.alloc_fh();
        self.files.insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                key,
            },
        );
        Ok(fh)
    }

    fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        self.check_alive()?;
        let (file, key) = self.open_file(fh)?;
        let end = offset.saturating_add(data.len() as u64);
        if let Some(log) = self.undo_log(key, &file)? {
            log.save_range(offset, end).map_err(errno)?;
        }
        file.write_all_at(data, offset).map_err(errno)?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    fn fsync(&mut self, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        self.check_alive()?;
        let key = match self.files.get(&fh.0) {
            Some(f) => f.key,
            None => self.node(ino)?.key,
        };
        // The sync point moves to "now": nothing of this inode can be lost any more.
        self.undo.remove(&key);
        Ok(())
    }

    fn fallocate(
        &mut self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        self.check_alive()?;
        let (file, key) = self.open_file(fh)?;
        let end = offset.saturating_add(length);
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Plain allocation only changes the length (if not KEEP_SIZE): the log records it.
            0 => {
                if !keep_size {
                    self.undo_log(key, &file)?;
                }
            }
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {
                if let Some(log) = self.undo_log(key, &file)? {
                    log.save_range(offset, end).map_err(errno)?;
                }
            }
            // Collapse/insert range shift data around; not worth modelling.
            _ => return Err(Errno::EOPNOTSUPP),
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Err(Errno::EINVAL);
        };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } != 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    fn unlink(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        self.check_alive()?;
        let path = self.child(parent, name)?;
        let key = key_of(&fs::symlink_metadata(&path).map_err(errno)?);
        if dir {
            fs::remove_dir(&path).map_err(errno)?;
        } else {
            fs::remove_file(&path).map_err(errno)?;
        }
        self.drop_name(&path);
        self.forget_undo_if_unlinked(key);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        self.check_alive()?;
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let replaced = fs::symlink_metadata(&to).ok().map(|m| key_of(&m));
        if flags.is_empty() {
            fs::rename(&from, &to).map_err(errno)?;
        } else {
            let (cfrom, cto) = (cstring(&from)?, cstring(&to)?);
            // SAFETY: valid C strings; renameat2 takes no other pointers.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    cfrom.as_ptr(),
                    libc::AT_FDCWD,
                    cto.as_ptr(),
                    flags.bits(),
                )
            };
            if rc != 0 {
                return Err(last_errno());
            }
        }
        if from == to {
            return Ok(());
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if !exchange {
            // Whatever was at `to` is gone (a replaced file, or an empty directory).
            self.drop_name(&to);
        }
        for node in self.nodes.values_mut() {
            for p in node.paths.iter_mut() {
                if let Some(moved) = reparent(p, &from, &to) {
                    *p = moved;
                } else if exchange {
                    if let Some(moved) = reparent(p, &to, &from) {
                        *p = moved;
                    }
                }
            }
        }
        if let (Some(key), false) = (replaced, exchange) {
            self.forget_undo_if_unlinked(key);
        }
        Ok(())
    }

    fn opendir(&mut self, ino: INodeNo) -> Result<u64, Errno> {
        self.check_alive()?;
        let path = self.path(ino)?;
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino: ino.0,
                kind: FileType::Directory,
            },
            DirEntry {
                name: "..".into(),
                ino: INodeNo::ROOT.0,
                kind: FileType::Directory,
            },
        ];
        for entry in fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry.file_type().map(kind_of).map_err(errno)?;
            entries.push(DirEntry {
                name: entry.file_name(),
                ino: entry.ino(),
                kind,
            });
        }
        let fh = self.alloc_fh();
        self.dirs.insert(fh, entries);
        Ok(fh)
    }
}

/// The `fuser` side: each request locks the shared state for its whole duration (except the
/// data copy of reads), which keeps the node table, the undo logs and the backing consistent.
#[derive(Debug)]
pub(crate) struct CrashFilesystem {
    pub(crate) shared: Arc<Shared>,
}

macro_rules! reply_result {
    ($reply:expr, $result:expr, |$ok:pat_param| $body:expr) => {
        match $result {
            Ok($ok) => $body,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for CrashFilesystem {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.shared.state.lock();
        let result = state
            .check_alive()
            .and_then(|()| state.child(parent, name))
            .and_then(|path| state.remember(path));
        reply_result!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut state = self.shared.state.lock();
        if ino == INodeNo::ROOT {
            return;
        }
        let remove = match state.nodes.get_mut(&ino.0) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(nlookup);
                node.lookups == 0
            }
            None => false,
        };
        if remove {
            if let Some(node) = state.nodes.remove(&ino.0) {
                if state.by_key.get(&node.key) == Some(&ino.0) {
                    state.by_key.remove(&node.key);
                }
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.shared.state.lock();
        let result = state.check_alive().and_then(|()| state.stat(ino, fh));
        reply_result!(reply, result, |md| reply.attr(&TTL, &attr(ino.0, &md)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.shared.state.lock();
        let result = state.setattr(ino, mode, uid, gid, size, atime, mtime, fh);
        reply_result!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let state = self.shared.state.lock();
        let result = state
            .check_alive()
            .and_then(|()| state.path(ino))
            .and_then(|p| fs::read_link(p).map_err(errno));
        reply_result!(reply, result, |target| reply
            .data(target.as_os_str().as_bytes()));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.shared.state.lock();
        let result = state.check_alive().and_then(|()| {
            let path = state.child(parent, name)?;
            fs::create_dir(&path).map_err(errno)?;
            // The kernel already applied the caller's umask; undo ours.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
            state.remember(path)
        });
        reply_result!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.state.lock().unlink(parent, name, false);
        reply_result!(reply, result, |()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.state.lock().unlink(parent, name, true);
        reply_result!(reply, result, |()| reply.ok());
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut state = self.shared.state.lock();
        let result = state.check_alive().and_then(|()| {
            let path = state.child(parent, link_name)?;
            std::os::unix::fs::symlink(target, &path).map_err(errno)?;
            state.remember(path)
        });
        reply_result!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self
            .shared
            .state
            .lock()
            .rename(parent, name, newparent, newname, flags);
        reply_result!(reply, result, |()| reply.ok());
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut state = self.shared.state.lock();
        let result = state.check_alive().and_then(|()| {
            let from = state.path(ino)?;
            let to = state.child(newparent, newname)?;
            fs::hard_link(&from, &to).map_err(errno)?;
            state.remember(to)
        });
        reply_result!(reply, result, |attr| reply.entry(
            &TTL,
            &attr,
            Generation(0)
        ));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.state.lock().open(ino, flags);
        // No direct_io, no keep_cache: the page cache (and mmap) see every write, and is
        // dropped on each open so it cannot outlive a power cut.
        reply_result!(reply, result, |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = {
            let state = self.shared.state.lock();
            state.check_alive().and_then(|()| state.open_file(fh))
        };
        let (file, _) = match file {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.shared.state.lock().write(fh, offset, data);
        reply_result!(reply, result, |n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.state.lock().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.shared.state.lock().fsync(ino, fh);
        reply_result!(reply, result, |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.state.lock().opendir(ino);
        reply_result!(reply, result, |fh| reply
            .opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.shared.state.lock();
        if let Err(e) = state.check_alive() {
            return reply.error(e);
        }
        let Some(entries) = state.dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, entry) in entries.iter().enumerate().skip(start) {
            if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.state.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is never lost in this model, so a directory sync has nothing to do.
        let result = self.shared.state.lock().check_alive();
        reply_result!(reply, result, |()| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = match cstring(&self.shared.backing) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // SAFETY: `st` is plain old data that statvfs fills in.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(last_errno());
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let state = self.shared.state.lock();
        let result = state
            .check_alive()
            .and_then(|()| state.path(ino))
            .and_then(|p| cstring(&p))
            .and_then(|p| {
                // SAFETY: valid C string.
                if unsafe { libc::access(p.as_ptr(), mask.bits()) } == 0 {
                    Ok(())
                } else {
                    Err(last_errno())
                }
            });
        reply_result!(reply, result, |()| reply.ok());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.shared.state.lock().create(parent, name, mode, flags);
        reply_result!(reply, result, |(attr, fh)| reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty()
        ));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.shared.state.lock().fallocate(fh, offset, length, mode);
        reply_result!(reply, result, |()| reply.ok());
    }
}
