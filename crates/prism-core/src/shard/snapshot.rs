//! Snapshots of a shard copy: what a replica that fell behind the log receives. A snapshot is
//! a directory holding a durable checkpoint of every component at one applied log entry (the
//! tantivy commit and the vector checkpoint, hard-linked, since their files never change once
//! written) and `MANIFEST.json` with the SHA-256 of every file. Installing one verifies every
//! file first, so a damaged snapshot changes nothing.
//!
//! Layout: `index/` (tantivy's `meta.json` and segment files), `vectors/CHECKPOINT` and
//! `vectors/<checkpoint>/`, `schema.json`, `MANIFEST.json`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::log::{create_dir_durable, sync_dir, write_atomically, LogId};

/// The manifest's file name in a snapshot directory.
pub const MANIFEST: &str = "MANIFEST.json";
/// The collection schema the snapshot was taken under; an install requires the same.
pub const SCHEMA: &str = "schema.json";
const FORMAT: u32 = 1;

/// What a snapshot holds: the last entry its components applied, and every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    /// The last entry applied (index 0 when none).
    pub applied: LogId,
    /// The id a Raft group gave the snapshot; `None` for a single node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The exact applied state: the last log id (or none) and the last membership applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<super::AppliedState>,
    pub files: Vec<SnapshotFile>,
}

/// One file of a snapshot, by its path relative to the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Links `from` to `to`, or copies it where a link cannot be made (another filesystem).
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(_) => fs::copy(from, to).map(|_| ()),
    }
}

/// The files of a committed segment: every component tantivy writes, and the deletes of the
/// commit's opstamp.
fn segment_files(segment: &tantivy::index::SegmentMeta) -> Vec<PathBuf> {
    use tantivy::index::SegmentComponent as C;
    let mut components = vec![
        C::Postings,
        C::Positions,
        C::FastFields,
        C::FieldNorms,
        C::Terms,
        C::Store,
    ];
    if segment.has_deletes() {
        components.push(C::Delete);
    }
    components
        .into_iter()
        .map(|c| segment.relative_path(c))
        .collect()
}

/// Links the committed text index into `target/index`: the files of every segment of the
/// commit tantivy reads (`load_metas`), that commit's `meta.json`, and a `.managed.json`
/// naming them, so that the copy's garbage collector deletes them once merges replace
/// them. A merge may delete a segment between the read and the links; then the links start
/// over from a fresh read. A component file a live segment lacks is simply not there.
pub(crate) fn link_text_index(
    index: &tantivy::Index,
    index_dir: &Path,
    target: &Path,
) -> Result<()> {
    let out = target.join("index");
    'attempt: for _attempt in 0..8 {
        let _ = fs::remove_dir_all(&out);
        create_dir_durable(&out)?;
        let metas = index.load_metas()?;
        let mut linked: Vec<PathBuf> = Vec::new();
        for segment in &metas.segments {
            for file in segment_files(segment) {
                match link_or_copy(&index_dir.join(&file), &out.join(&file)) {
                    Ok(()) => linked.push(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let live = index
                            .load_metas()?
                            .segments
                            .iter()
                            .any(|s| s.id() == segment.id());
                        if !live {
                            continue 'attempt;
                        }
                    }
                    Err(e) => return Err(Error::io(index_dir.join(&file), e)),
                }
            }
        }
        let meta = serde_json::to_vec_pretty(&metas).expect("tantivy metas serialize");
        write_atomically(&out.join("meta.json"), &meta)?;
        linked.push(PathBuf::from("meta.json"));
        let managed = serde_json::to_vec(&linked).expect("paths serialize");
        write_atomically(&out.join(".managed.json"), &managed)?;
        return sync_dir(&out);
    }
    Err(Error::StorageFailed {
        path: index_dir.to_path_buf(),
        message: "segments kept changing under the snapshot; retry it".into(),
    })
}

/// Links the vector checkpoint `files` (a directory under `vectors_dir`) and its pointer.
pub(crate) fn link_vectors(
    vectors_dir: &Path,
    files: &str,
    applied: u64,
    position: &super::AppliedState,
    target: &Path,
) -> Result<()> {
    let out = target.join("vectors");
    let from = vectors_dir.join(files);
    let to = out.join(files);
    create_dir_durable(&to)?;
    for entry in fs::read_dir(&from).map_err(|e| Error::io(&from, e))? {
        let entry = entry.map_err(|e| Error::io(&from, e))?;
        link_or_copy(&entry.path(), &to.join(entry.file_name()))
            .map_err(|e| Error::io(entry.path(), e))?;
    }
    sync_dir(&to)?;
    super::vector_files::write_pointer(&out, applied, files, position)?;
    sync_dir(&out)
}

/// Size and SHA-256 (hex) of the file at `path`, each chunk also handed to `sink` (which
/// reports its own errors).
fn hash_file(path: &Path, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<(u64, String)> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        sink(&buffer[..n])?;
        bytes += n as u64;
    }
    let digest = hasher.finalize();
    Ok((bytes, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn sha256_of(path: &Path) -> Result<(u64, String)> {
    hash_file(path, |_| Ok(()))
}

/// Copies `from` to `to`, checking size and SHA-256 against `expected` on the way, and syncs it.
fn copy_verified(from: &Path, to: &Path, expected: &SnapshotFile) -> Result<()> {
    use std::io::Write;
    let mut out = fs::File::create(to).map_err(|e| Error::io(to, e))?;
    let (bytes, sha256) = hash_file(from, |chunk| {
        out.write_all(chunk).map_err(|e| Error::io(to, e))
    })?;
    out.sync_all().map_err(|e| Error::io(to, e))?;
    if bytes != expected.bytes || sha256 != expected.sha256 {
        return Err(Error::Corrupt {
            path: from.to_path_buf(),
            message: format!(
                "the file changed after it was verified ({bytes} bytes, sha256 {sha256}; expected {} bytes, sha256 {}); fetch the snapshot again",
                expected.bytes, expected.sha256
            ),
        });
    }
    Ok(())
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let here = dir.join(&relative);
        for entry in fs::read_dir(&here).map_err(|e| Error::io(&here, e))? {
            let entry = entry.map_err(|e| Error::io(&here, e))?;
            let path = relative.join(entry.file_name());
            if entry.path().is_dir() {
                pending.push(path);
            } else {
                out.push(path.to_string_lossy().to_string());
            }
        }
    }
    out.retain(|p| p != MANIFEST);
    out.sort();
    Ok(out)
}

/// Hashes every file of the snapshot in `dir` and writes its manifest durably.
pub fn seal(
    dir: &Path,
    position: super::AppliedState,
    snapshot_id: Option<String>,
) -> Result<SnapshotManifest> {
    let mut files = Vec::new();
    for path in files_under(dir)? {
        let (bytes, sha256) = sha256_of(&dir.join(&path))?;
        files.push(SnapshotFile {
            path,
            bytes,
            sha256,
        });
    }
    let manifest = SnapshotManifest {
        format: FORMAT,
        applied: position.applied.unwrap_or(LogId::new(0, 0, 0)),
        snapshot_id,
        position: Some(position),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
    write_atomically(&dir.join(MANIFEST), &json)?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// Reads the manifest of the snapshot in `dir` and checks every file it lists: present, of
/// its size and SHA-256. Files it does not list are refused too: they were not sealed.
pub fn verify(dir: &Path) -> Result<SnapshotManifest> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: SnapshotManifest =
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: format!("unreadable snapshot manifest: {e}"),
        })?;
    if manifest.format != FORMAT {
        return Err(Error::Corrupt {
            path,
            message: format!(
                "snapshot format {} is not {FORMAT}; it comes from another version of Prism",
                manifest.format
            ),
        });
    }
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for present in files_under(dir)? {
        if !listed.contains(&present.as_str()) {
            return Err(Error::Corrupt {
                path: dir.join(&present),
                message: "this file is not in the snapshot's manifest".into(),
            });
        }
    }
    for file in &manifest.files {
        if file.path.contains("..") || Path::new(&file.path).is_absolute() {
            return Err(Error::Corrupt {
                path: path.clone(),
                message: format!(
                    "the manifest names a path outside the snapshot: {}",
                    file.path
                ),
            });
        }
        let at = dir.join(&file.path);
        let (bytes, sha256) = sha256_of(&at)?;
        if bytes != file.bytes || sha256 != file.sha256 {
            return Err(Error::Corrupt {
                path: at,
                message: format!(
                    "the file differs from the snapshot's manifest ({bytes} bytes, sha256 {sha256}; expected {} bytes, sha256 {}); fetch the snapshot again",
                    file.bytes, file.sha256
                ),
            });
        }
    }
    Ok(manifest)
}

/// Names of a shard directory's neighbours during an install.
pub(crate) fn installing_dir(shard_dir: &Path) -> PathBuf {
    sibling(shard_dir, ".installing-")
}

pub(crate) fn replaced_dir(shard_dir: &Path) -> PathBuf {
    sibling(shard_dir, ".replaced-")
}

fn sibling(shard_dir: &Path, prefix: &str) -> PathBuf {
    let name = shard_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    shard_dir.with_file_name(format!("{prefix}{name}"))
}

/// Written last into a staged shard directory: the install may roll forward.
pub(crate) const STAGED: &str = "STAGED";

/// Prepares `shard_dir`'s replacement from the verified snapshot in `snapshot`: its files
/// copied and checked again, and the STAGED marker. With `log_options` (a copy that owns its
/// log) also an empty log that starts after the snapshot's entry and keeps the old copy's
/// vote (a replica must not vote twice in a term); without, the state machine's files only
/// (a Raft group keeps its log and vote elsewhere). Returns the staging directory.
pub fn stage(
    snapshot: &Path,
    manifest: &SnapshotManifest,
    shard_dir: &Path,
    log_options: Option<crate::log::OpenOptions>,
) -> Result<PathBuf> {
    let staging = installing_dir(shard_dir);
    let _ = fs::remove_dir_all(&staging);
    create_dir_durable(&staging)?;
    // Copied, not linked, and hashed as copied: the live shard shares no file with a
    // directory its sender may still change, and what is installed is what was verified.
    for file in manifest.files.iter().filter(|f| f.path != SCHEMA) {
        let to = staging.join(&file.path);
        if let Some(parent) = to.parent() {
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        copy_verified(&snapshot.join(&file.path), &to, file)?;
    }
    for dir in ["index", "vectors"] {
        let sub = staging.join(dir);
        if sub.exists() {
            for entry in fs::read_dir(&sub)
                .map_err(|e| Error::io(&sub, e))?
                .flatten()
            {
                if entry.path().is_dir() {
                    sync_dir(&entry.path())?;
                }
            }
            sync_dir(&sub)?;
        }
    }
    if let Some(log_options) = log_options {
        let vote = crate::log::read_hard_state(&shard_dir.join("log"))?.vote;
        let (log, _) = crate::log::ShardLog::open(&staging.join("log"), log_options)?;
        log.purge(manifest.applied)?;
        if let Some(vote) = vote {
            log.save_vote(&vote)?;
        }
        drop(log);
    }
    write_atomically(&staging.join(STAGED), b"")?;
    sync_dir(&staging)?;
    Ok(staging)
}

/// Finishes or undoes an install that a crash interrupted, before `shard_dir` opens: a
/// complete staging directory replaces the shard (roll forward); an incomplete one goes; a
/// replaced copy goes once the new one is in place, and comes back if nothing replaced it.
pub fn finish_interrupted_install(shard_dir: &Path) -> Result<()> {
    let staging = installing_dir(shard_dir);
    let replaced = replaced_dir(shard_dir);
    let parent = shard_dir.parent().unwrap_or(Path::new("."));
    if staging.exists() {
        if staging.join(STAGED).exists() && !shard_dir.exists() {
            fs::rename(&staging, shard_dir).map_err(|e| Error::io(&staging, e))?;
            sync_dir(parent)?;
            tracing::warn!(shard = %shard_dir.display(), "an interrupted snapshot install was completed");
        } else {
            fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
            tracing::warn!(shard = %shard_dir.display(), "an interrupted snapshot install was undone");
        }
    }
    if replaced.exists() {
        if shard_dir.exists() {
            fs::remove_dir_all(&replaced).map_err(|e| Error::io(&replaced, e))?;
        } else {
            fs::rename(&replaced, shard_dir).map_err(|e| Error::io(&replaced, e))?;
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Swaps the staged directory in for `shard_dir` (closed by the caller): the old copy moves
/// aside, the staged one takes its name, and the old one goes. Each step is durable, and
/// [`finish_interrupted_install`] completes the swap after a crash at any point.
pub fn swap_in(staging: &Path, shard_dir: &Path) -> Result<()> {
    let replaced = replaced_dir(shard_dir);
    let parent = shard_dir.parent().unwrap_or(Path::new("."));
    let _ = fs::remove_dir_all(&replaced);
    if shard_dir.exists() {
        fs::rename(shard_dir, &replaced).map_err(|e| Error::io(shard_dir, e))?;
        sync_dir(parent)?;
    }
    fs::rename(staging, shard_dir).map_err(|e| Error::io(staging, e))?;
    sync_dir(parent)?;
    let _ = fs::remove_file(shard_dir.join(STAGED));
    if let Err(e) = fs::remove_dir_all(&replaced) {
        tracing::warn!(path = %replaced.display(), error = %e, "removing the replaced shard copy failed; it goes at the next start");
    }
    Ok(())
}
