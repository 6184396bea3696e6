//! A shard group's snapshots on disk: one directory per snapshot id under `snapshots/`, each a
//! sealed shard snapshot (`prism_core::shard::snapshot`: the checkpoint files and a manifest
//! with their SHA-256, the last log id and the membership).
//!
//! openraft hands snapshots around as [`ShardSnapshot`] values (the type config's
//! `SnapshotData`, with openraft's `generic-snapshot-data`): each holds a shared handle to its
//! directory. A directory that a newer snapshot replaced is deleted only when its last handle
//! goes, so a transfer still reading it keeps its files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{SnapshotMeta, StoredMembership};
use parking_lot::Mutex;
use prism_core::shard::snapshot::{SnapshotManifest, MANIFEST};

use super::log_store::from_core;
use super::types::Node;

/// The directory of one snapshot; deleted when the last handle goes, once superseded.
#[derive(Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    superseded: AtomicBool,
}

impl SnapshotFiles {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SnapshotFiles {
    fn drop(&mut self) {
        if self.superseded.load(Ordering::Acquire) {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "removing a superseded snapshot failed; it goes at the next start");
                }
            }
        }
    }
}

/// A snapshot as openraft carries it: a handle to its files.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    files: Arc<SnapshotFiles>,
}

impl ShardSnapshot {
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }
}

/// The name prefix of a snapshot directory that is complete: built here, or received and
/// installed. Anything else in `snapshots/` at start is left over from a crash.
const PUBLISHED: &str = "snap-";

/// A snapshot's metadata in openraft's terms.
pub type Meta = SnapshotMeta<u64, Node>;

/// The membership a state machine recorded, decoded; the default when it recorded none.
pub fn decode_membership(
    bytes: Option<&[u8]>,
) -> Result<StoredMembership<u64, Node>, serde_json::Error> {
    match bytes {
        Some(bytes) => serde_json::from_slice(bytes),
        None => Ok(StoredMembership::default()),
    }
}

pub fn encode_membership(membership: &StoredMembership<u64, Node>) -> Vec<u8> {
    serde_json::to_vec(membership).expect("memberships serialize")
}

/// openraft's metadata of a sealed snapshot, from its manifest.
pub fn meta_of(manifest: &SnapshotManifest) -> Result<Meta, String> {
    let position = manifest
        .position
        .as_ref()
        .ok_or("the snapshot's manifest has no applied state: it was not built by a Raft group")?;
    let snapshot_id = manifest
        .snapshot_id
        .clone()
        .ok_or("the snapshot's manifest has no snapshot id")?;
    Ok(SnapshotMeta {
        last_log_id: position.applied.map(from_core),
        last_membership: decode_membership(position.membership.as_deref())
            .map_err(|e| format!("the snapshot's membership is unreadable: {e}"))?,
        snapshot_id,
    })
}

/// How a copy caught up by snapshot since its process started: `/cluster/shards` and the
/// metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotCatchUp {
    /// Bytes of the snapshot being received now, if one is.
    pub receiving_bytes: Option<u64>,
    /// Snapshots received and installed.
    pub installed: u64,
    /// Receptions abandoned (cut off and started again, or refused as damaged).
    pub failed: u64,
}

/// The snapshots of one group: the current one, and where new ones go.
pub struct SnapshotStore {
    dir: PathBuf,
    current: Mutex<Option<(Meta, Arc<SnapshotFiles>)>>,
    next_id: AtomicU64,
    receiving: Mutex<Receiving>,
}

/// How long a reception may go without a chunk before it no longer counts as under way.
pub const RECEPTION_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The reception under way, and the counts so far.
#[derive(Debug, Default)]
struct Receiving {
    ticket: u64,
    bytes: Option<u64>,
    last_chunk: Option<std::time::Instant>,
    catch_up: SnapshotCatchUp,
}

impl SnapshotStore {
    /// Opens `dir` (created if missing): the newest published snapshot becomes current, and
    /// every other directory there (older snapshots, unfinished builds and receptions, and
    /// received snapshots never installed) goes.
    pub fn open(dir: &Path) -> std::io::Result<SnapshotStore> {
        // Durably: a purged log relies on the snapshot found here after a power loss.
        prism_core::log::create_dir_durable(dir).map_err(std::io::Error::other)?;
        let mut newest: Option<(Meta, PathBuf)> = None;
        let mut others = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if !entry.file_name().to_string_lossy().starts_with(PUBLISHED) {
                others.push(path);
                continue;
            }
            let meta = std::fs::read(path.join(MANIFEST))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<SnapshotManifest>(&bytes).ok())
                .and_then(|manifest| meta_of(&manifest).ok());
            match meta {
                Some(meta)
                    if newest
                        .as_ref()
                        .is_none_or(|(n, _)| meta.last_log_id > n.last_log_id) =>
                {
                    if let Some((_, older)) = newest.replace((meta, path)) {
                        others.push(older);
                    }
                }
                _ => others.push(path),
            }
        }
        for path in others {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot");
            }
        }
        let store = SnapshotStore {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
            next_id: AtomicU64::new(0),
            receiving: Mutex::default(),
        };
        if let Some((meta, path)) = newest {
            store.set_current(meta, store.handle(path));
        }
        Ok(store)
    }

    /// Gives a snapshot built or installed in `path` its published name, under which it
    /// survives a restart, and returns a handle to it there.
    pub fn publish(&self, path: &Path) -> std::io::Result<ShardSnapshot> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let published = self.dir.join(format!("{PUBLISHED}{name}"));
        std::fs::rename(path, &published)?;
        prism_core::log::sync_dir(&self.dir).map_err(std::io::Error::other)?;
        Ok(self.handle(published))
    }

    /// A new, unused directory name for a snapshot being built or received, and its path.
    pub fn new_dir(&self, kind: &str) -> (String, PathBuf) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{kind}-{nanos:x}-{n}");
        let path = self.dir.join(&id);
        (id, path)
    }

    /// A handle to the published snapshot directory `path`.
    pub fn handle(&self, path: PathBuf) -> ShardSnapshot {
        ShardSnapshot {
            files: Arc::new(SnapshotFiles {
                dir: path,
                superseded: AtomicBool::new(false),
            }),
        }
    }

    /// A handle to a directory being filled (a reception): it goes with its last handle
    /// unless it is published first (a rename leaves nothing at the old path).
    pub fn scratch(&self, path: PathBuf) -> ShardSnapshot {
        ShardSnapshot {
            files: Arc::new(SnapshotFiles {
                dir: path,
                superseded: AtomicBool::new(true),
            }),
        }
    }

    /// Makes `snapshot` the current one, unless the current one is at least as new (a build
    /// that an install overtook): then `snapshot` goes with its last handle instead. The one
    /// replaced goes when its last reader does. Deleting may cost a directory removal: call
    /// it off the async workers.
    /// A reception starts, `replacing` one that never finished; the ticket names it in the
    /// calls that follow, so that a late end of an older one changes nothing.
    pub fn reception_started(&self, replacing: bool) -> u64 {
        let mut receiving = self.receiving.lock();
        receiving.ticket += 1;
        receiving.bytes = Some(0);
        receiving.last_chunk = Some(std::time::Instant::now());
        receiving.catch_up.failed += u64::from(replacing);
        receiving.ticket
    }

    /// `bytes` more of reception `ticket` arrived.
    pub fn received(&self, ticket: u64, bytes: u64) {
        let mut receiving = self.receiving.lock();
        if receiving.ticket == ticket {
            if let Some(so_far) = receiving.bytes.as_mut() {
                *so_far += bytes;
            }
            receiving.last_chunk = Some(std::time::Instant::now());
        }
    }

    /// Reception `ticket` ended: installed, or refused.
    pub fn reception_ended(&self, ticket: u64, installed: bool) {
        let mut receiving = self.receiving.lock();
        if installed {
            receiving.catch_up.installed += 1;
        } else {
            receiving.catch_up.failed += 1;
        }
        if receiving.ticket == ticket {
            receiving.bytes = None;
            receiving.last_chunk = None;
        }
    }

    /// The copy's catch-up by snapshot. A reception no chunk reached for
    /// [`RECEPTION_IDLE`] is not reported as under way: its leader gave it up (it lost
    /// leadership, or the copy caught up from the log).
    pub fn catch_up(&self) -> SnapshotCatchUp {
        let receiving = self.receiving.lock();
        let live = receiving
            .last_chunk
            .is_some_and(|at| at.elapsed() < RECEPTION_IDLE);
        SnapshotCatchUp {
            receiving_bytes: receiving.bytes.filter(|_| live),
            ..receiving.catch_up
        }
    }

    /// Makes `snapshot` the group's current one.
    pub fn set_current(&self, meta: Meta, snapshot: ShardSnapshot) {
        let mut current = self.current.lock();
        if current
            .as_ref()
            .is_some_and(|(now, _)| now.last_log_id >= meta.last_log_id)
        {
            snapshot.files.superseded.store(true, Ordering::Release);
            return;
        }
        if let Some((_, files)) = current.replace((meta, snapshot.files)) {
            files.superseded.store(true, Ordering::Release);
        }
    }

    pub fn current(&self) -> Option<(Meta, ShardSnapshot)> {
        self.current.lock().as_ref().map(|(meta, files)| {
            (
                meta.clone(),
                ShardSnapshot {
                    files: files.clone(),
                },
            )
        })
    }
}

/// Fsyncs every file under `dir` and the directory itself (a received snapshot's files were
/// written without fsyncs).
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            let file = std::fs::File::open(&path)?;
            prism_core::log::durable::sync_all(&file, &path)?;
        }
    }
    prism_core::log::sync_dir(dir).map_err(std::io::Error::other)
}

impl SnapshotStore {
    /// True when `snapshot` is this store's current snapshot (a received one the network
    /// already kept): installing it needs no copy of its own.
    pub fn is_current(&self, snapshot: &ShardSnapshot) -> bool {
        self.current
            .lock()
            .as_ref()
            .is_some_and(|(_, files)| Arc::ptr_eq(files, &snapshot.files))
    }
}
