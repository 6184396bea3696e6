//! Every fsync of the log and of files written with [`super::write_atomically`] goes through
//! here. With the `fault-injection` feature, a test can watch a directory tree and later crash
//! it back to exactly what those fsyncs made durable: file contents as of their last fsync,
//! directory entries as of their directory's last fsync. That is the worst case POSIX allows
//! after a power loss, and what a simulated crash must lose.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How many fsyncs this process made through here (files and directories).
pub fn syncs() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

/// `file.sync_all()`, observed.
pub fn sync_all(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    SYNCS.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "fault-injection")]
    crash_image::file_synced(path);
    #[cfg(not(feature = "fault-injection"))]
    let _ = path;
    Ok(())
}

/// `file.sync_data()` after an append to the log, observed. The `broken-skip-log-fsync`
/// feature skips it: a build that the simulation must catch losing acknowledged writes.
pub fn sync_appended(file: &File, path: &Path) -> io::Result<()> {
    #[cfg(feature = "broken-skip-log-fsync")]
    {
        let _ = (file, path);
        Ok(())
    }
    #[cfg(not(feature = "broken-skip-log-fsync"))]
    {
        file.sync_data()?;
        SYNCS.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "fault-injection")]
        crash_image::file_synced(path);
        #[cfg(not(feature = "fault-injection"))]
        let _ = path;
        Ok(())
    }
}

/// Fsyncs directory `dir`, observed.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    SYNCS.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "fault-injection")]
    crash_image::dir_synced(dir);
    Ok(())
}

#[cfg(feature = "fault-injection")]
pub use crash_image::{CrashImage, Frozen};

#[cfg(feature = "fault-injection")]
mod crash_image {
    use std::collections::{BTreeMap, HashMap};
    use std::fs;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Weak};

    use parking_lot::Mutex;

    /// What fsyncs made durable under one root. Files and directories are keyed by inode,
    /// because both are often fsynced under a temporary name and then renamed: the rename is
    /// durable once the parent directory is fsynced, and the content is the inode's. Inode
    /// numbers must not be reused while the image lives, which holds on tmpfs (the
    /// simulation's choice).
    #[derive(Default, Clone)]
    struct Image {
        contents: HashMap<u64, Vec<u8>>,
        /// Each fsynced directory's entries, by the directory's inode: name → (inode, is a
        /// directory).
        dirs: HashMap<u64, BTreeMap<String, (u64, bool)>>,
    }

    /// The durable state of a tree at one instant, for [`CrashImage::crash_to`], and what
    /// its files held then (the pages a torn write may have put on the disk).
    pub struct Frozen {
        image: Image,
        written: HashMap<u64, Vec<u8>>,
    }

    /// A watched directory tree; [`CrashImage::crash`] rewinds it to its durable image.
    pub struct CrashImage {
        root: PathBuf,
        root_inode: u64,
        image: Mutex<Image>,
        /// When recording: the image right after each fsync, the crash points of an operation.
        history: Mutex<Option<Vec<Image>>>,
    }

    static WATCHED: Mutex<Vec<Weak<CrashImage>>> = Mutex::new(Vec::new());

    fn watchers_of(path: &Path) -> Vec<Arc<CrashImage>> {
        let mut watched = WATCHED.lock();
        watched.retain(|w| w.strong_count() > 0);
        watched
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|w| path.starts_with(&w.root))
            .collect()
    }

    pub(super) fn file_synced(path: &Path) {
        for watcher in watchers_of(path) {
            if let (Ok(meta), Ok(bytes)) = (fs::metadata(path), fs::read(path)) {
                let mut image = watcher.image.lock();
                image.contents.insert(meta.ino(), bytes);
                watcher.remember(&image);
            }
        }
    }

    pub(super) fn dir_synced(dir: &Path) {
        for watcher in watchers_of(dir) {
            if let (Ok(meta), Ok(entries)) = (fs::metadata(dir), listing(dir)) {
                let mut image = watcher.image.lock();
                image.dirs.insert(meta.ino(), entries);
                watcher.remember(&image);
            }
        }
    }

    fn listing(dir: &Path) -> io::Result<BTreeMap<String, (u64, bool)>> {
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            entries.insert(
                entry.file_name().to_string_lossy().into_owned(),
                (meta.ino(), meta.is_dir()),
            );
        }
        Ok(entries)
    }

    impl CrashImage {
        /// Starts watching `root` (which must exist). Its own entries count as durable.
        pub fn watch(root: &Path) -> io::Result<Arc<CrashImage>> {
            let root_inode = fs::metadata(root)?.ino();
            let image = Arc::new(CrashImage {
                image: Mutex::new(Image::default()),
                root: root.to_path_buf(),
                root_inode,
                history: Mutex::new(None),
            });
            image.image.lock().dirs.insert(root_inode, listing(root)?);
            WATCHED.lock().push(Arc::downgrade(&image));
            Ok(image)
        }

        /// Rewinds the tree to what was durable: every file holds its content as of its last
        /// fsync (nothing if it never had one), and every directory holds the entries of its
        /// last fsync (none if it never had one). The caller has stopped everything that
        /// writes under the root.
        pub fn crash(&self) -> io::Result<()> {
            self.crash_to(self.freeze())
        }

        fn remember(&self, image: &Image) {
            if let Some(history) = self.history.lock().as_mut() {
                history.push(image.clone());
            }
        }

        /// Starts recording a crash point after every fsync from now on.
        pub fn record_crash_points(&self) {
            let now = self.image.lock().clone();
            *self.history.lock() = Some(vec![now]);
        }

        /// The crash points recorded since [`CrashImage::record_crash_points`]: what was
        /// durable before the first fsync, and after each one.
        pub fn crash_points(&self) -> Vec<Frozen> {
            self.history
                .lock()
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|image| Frozen {
                    image,
                    written: HashMap::new(),
                })
                .collect()
        }

        /// What is durable now. The power fails at this instant, whatever the node still
        /// does before the caller stops it.
        pub fn freeze(&self) -> Frozen {
            let image = self.image.lock().clone();
            let mut now = Image::default();
            // Unreadable leftovers only lose the torn-write choice, never durable data.
            let _ = Self::record(&self.root, &mut now);
            Frozen {
                image,
                written: now.contents,
            }
        }

        /// Rewinds the tree to `frozen` (see [`CrashImage::crash`]). What the rewind leaves is
        /// then all durable, under the new inodes it wrote.
        pub fn crash_to(&self, frozen: Frozen) -> io::Result<()> {
            self.crash_torn_to(frozen, &mut |_| 0)
        }

        /// [`CrashImage::crash_to`], where a file that grew by appends since its last fsync
        /// (as of the freeze) also keeps the first `pick(n)` of its `n` unsynced bytes: a torn
        /// write, cut anywhere, as a power loss can leave the pages that did reach the disk.
        /// A file rewritten in place to the same length keeps its new bytes when `pick(1)` is
        /// 1 (a write of one small record lands whole or not at all).
        pub fn crash_torn_to(
            &self,
            frozen: Frozen,
            pick: &mut dyn FnMut(usize) -> usize,
        ) -> io::Result<()> {
            Self::rewind(&self.root, self.root_inode, &frozen, pick)?;
            let mut fresh = Image::default();
            Self::record(&self.root, &mut fresh)?;
            *self.image.lock() = fresh;
            Ok(())
        }

        fn record(dir: &Path, image: &mut Image) -> io::Result<()> {
            let entries = listing(dir)?;
            for (name, (ino, is_dir)) in &entries {
                let path = dir.join(name);
                if *is_dir {
                    Self::record(&path, image)?;
                } else {
                    image.contents.insert(*ino, fs::read(&path)?);
                }
            }
            image.dirs.insert(fs::metadata(dir)?.ino(), entries);
            Ok(())
        }

        /// Rewinds directory `dir`, whose durable entries are those of inode `inode`.
        fn rewind(
            dir: &Path,
            inode: u64,
            frozen: &Frozen,
            pick: &mut dyn FnMut(usize) -> usize,
        ) -> io::Result<()> {
            let image = &frozen.image;
            let durable = image.dirs.get(&inode).cloned().unwrap_or_default();
            for (name, (current_ino, is_dir)) in listing(dir)? {
                let path = dir.join(&name);
                let keep = durable.get(&name);
                match keep {
                    Some(&(ino, true)) if is_dir => Self::rewind(&path, ino, frozen, pick)?,
                    Some(&(ino, false)) if !is_dir => {
                        // A renamed file's durable content is its inode's, whatever name it
                        // was fsynced under.
                        let content = image.contents.get(&ino).cloned().unwrap_or_default();
                        let mut kept = content.clone();
                        let written = (current_ino == ino)
                            .then(|| frozen.written.get(&ino))
                            .flatten();
                        if let Some(now) = written {
                            if now.len() > content.len() && now.starts_with(&content) {
                                let extra = &now[content.len()..];
                                kept.extend_from_slice(
                                    &extra[..pick(extra.len()).min(extra.len())],
                                );
                            } else if now.len() == content.len() && *now != content && pick(1) == 1
                            {
                                kept = now.clone();
                            }
                        }
                        fs::write(&path, kept)?;
                    }
                    _ if is_dir => fs::remove_dir_all(&path)?,
                    _ => fs::remove_file(&path)?,
                }
            }
            // A durable entry whose file is gone now (removed, not yet durable) comes back.
            for (name, (ino, is_dir)) in durable {
                let path = dir.join(&name);
                if path.exists() {
                    continue;
                }
                if is_dir {
                    fs::create_dir(&path)?;
                    Self::rewind(&path, ino, frozen, pick)?;
                } else {
                    let content = image.contents.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
                    fs::write(&path, content)?;
                }
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use std::fs::File;

        use super::super::{sync_all, sync_dir};
        use super::*;

        #[test]
        fn a_crash_keeps_what_was_fsynced_and_loses_the_rest() {
            let root = tempfile::tempdir_in("/dev/shm").unwrap();
            let image = CrashImage::watch(root.path()).unwrap();
            let dir = root.path().join("d");
            fs::create_dir(&dir).unwrap();
            sync_dir(dir.parent().unwrap()).unwrap();

            // Synced content and entry: kept.
            let kept = dir.join("kept");
            fs::write(&kept, b"one").unwrap();
            sync_all(&File::open(&kept).unwrap(), &kept).unwrap();
            // Fsynced under a temporary name, renamed, directory fsynced: kept.
            let tmp = dir.join("state.tmp");
            fs::write(&tmp, b"state").unwrap();
            sync_all(&File::open(&tmp).unwrap(), &tmp).unwrap();
            fs::rename(&tmp, dir.join("state")).unwrap();
            sync_dir(&dir).unwrap();
            // Appended after the fsync: lost.
            fs::write(&kept, b"one two").unwrap();
            // Fsynced but its directory entry never was: lost.
            let unlisted = dir.join("unlisted");
            fs::write(&unlisted, b"x").unwrap();
            sync_all(&File::open(&unlisted).unwrap(), &unlisted).unwrap();
            // Removed without a directory fsync: comes back.
            fs::remove_file(dir.join("state")).unwrap();
            // A directory filled and fsynced under one name, renamed, its parent fsynced:
            // kept whole under the new name.
            let built = root.path().join("built");
            fs::create_dir(&built).unwrap();
            fs::write(built.join("f"), b"snapshot").unwrap();
            sync_all(&File::open(built.join("f")).unwrap(), &built.join("f")).unwrap();
            sync_dir(&built).unwrap();
            fs::rename(&built, root.path().join("published")).unwrap();
            sync_dir(root.path()).unwrap();

            image.crash().unwrap();
            assert_eq!(fs::read(&kept).unwrap(), b"one");
            assert!(!unlisted.exists());
            assert_eq!(fs::read(dir.join("state")).unwrap(), b"state");
            assert!(!tmp.exists());
            assert_eq!(
                fs::read(root.path().join("published/f")).unwrap(),
                b"snapshot"
            );
            assert!(!built.exists());

            // What the first crash left is durable: a second one keeps it, under the new
            // inodes the rewind wrote.
            fs::write(&kept, b"one two three").unwrap();
            image.crash().unwrap();
            assert_eq!(fs::read(&kept).unwrap(), b"one");
            assert_eq!(fs::read(dir.join("state")).unwrap(), b"state");
        }
    }
}
