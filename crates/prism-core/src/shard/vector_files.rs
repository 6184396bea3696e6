//! The checksums of a vector checkpoint, checked before usearch reads a byte of it.
//!
//! usearch trusts the files it loads: a graph file overwritten in place, at its own size,
//! loads without an error and then fails searches ("Out of memory!") or aborts the process
//! ("Linking to missing level"). So every file of a vector checkpoint carries an xxh3-128
//! checksum, written when the checkpoint is saved and checked when it is loaded:
//!
//! - `vectors/CHECKPOINT` is `<applied index> <directory> <xxh3-128 of the text before the last
//!   space, 32 hex digits>`.
//! - `vectors/<directory>/CHECKSUMS` lists every other file of the directory, one line each,
//!   `<xxh3-128, 32 hex digits> <length in bytes> <file name>`, and ends with the line
//!   `end <xxh3-128 of every byte before that line>`.
//!
//! A checkpoint written before checksums existed has a pointer of two words and no
//! `CHECKSUMS`; it loads unchecked, and the next save writes a checked one.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use super::state_machine::AppliedState;
use crate::error::{Error, Result};
use crate::log::write_atomically;

/// The pointer to the current vector checkpoint, in `vectors/`.
pub(crate) const POINTER: &str = "CHECKPOINT";
/// The checksums of a checkpoint directory's files, in that directory.
pub(crate) const CHECKSUMS: &str = "CHECKSUMS";

/// What `vectors/CHECKPOINT` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// The last log entry the checkpoint includes.
    pub applied: u64,
    /// The checkpoint's directory under `vectors/`.
    pub files: String,
    /// The applied state the checkpoint records; `None` in pointers of older versions.
    pub position: Option<AppliedState>,
    /// Whether the pointer carried its checksum (and its directory has `CHECKSUMS`).
    pub checked: bool,
}

fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        message,
    }
}

/// A checkpoint directory's name: `ckpt-` and 20 digits.
fn is_checkpoint_name(name: &str) -> bool {
    name.strip_prefix("ckpt-")
        .is_some_and(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Points `vectors/CHECKPOINT` (in `vectors_dir`) at `files`, durably and atomically, with a
/// checksum when that directory has `CHECKSUMS`; an old, unchecked directory gets an
/// unchecked pointer, so that a checked pointer always means a checked directory. A checked
/// pointer of a Raft group's copy carries the applied state (log id and membership) too, as
/// hex of its postcard encoding, so that it moves with the pointer atomically:
/// `<applied> <dir> <state> <hash>`.
/// (Only a directory of an older version is unchecked, and it is rewritten at the next save.)
pub(crate) fn write_pointer(
    vectors_dir: &Path,
    applied: u64,
    files: &str,
    position: &AppliedState,
) -> Result<()> {
    let text = if vectors_dir.join(files).join(CHECKSUMS).exists() {
        // A single node's position is implied by the index: the pointer keeps the form older
        // versions read.
        let body = if *position == AppliedState::of_local_index(applied) {
            format!("{applied} {files}")
        } else {
            let position = postcard::to_stdvec(position).expect("applied state serializes");
            let position: String = position.iter().map(|b| format!("{b:02x}")).collect();
            format!("{applied} {files} {position}")
        };
        let hash = hex(xxh3_128(body.as_bytes()));
        format!("{body} {hash}")
    } else {
        format!("{applied} {files}")
    };
    write_atomically(&vectors_dir.join(POINTER), text.as_bytes())
}

/// Reads `vectors/CHECKPOINT`: `None` when there is none (no checkpoint was ever saved). A
/// pointer that fails its checksum or does not parse is [`Error::Corrupt`], naming it.
pub(crate) fn read_pointer(vectors_dir: &Path) -> Result<Option<Pointer>> {
    let path = vectors_dir.join(POINTER);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let unreadable = || {
        corrupt(
            &path,
            format!(
                "unreadable vector checkpoint pointer {:?}",
                String::from_utf8_lossy(&bytes)
            ),
        )
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| unreadable())?;
    let words: Vec<&str> = text.split(' ').collect();
    let (body, checked) = match words.as_slice() {
        [_, _] => (text, false),
        // Three words: a checked pointer of a version that kept no applied state.
        [_, _, hash] | [_, _, _, hash] => {
            let body = &text[..text.len() - hash.len() - 1];
            if *hash != hex(xxh3_128(body.as_bytes())) {
                return Err(corrupt(
                    &path,
                    format!("the vector checkpoint pointer {text:?} fails its checksum"),
                ));
            }
            (body, true)
        }
        _ => return Err(unreadable()),
    };
    let (applied, rest) = body.split_once(' ').ok_or_else(unreadable)?;
    let (files, position) = match rest.split_once(' ') {
        Some((files, position)) => (
            files,
            Some(decode_position(position).ok_or_else(unreadable)?),
        ),
        None => (rest, None),
    };
    let applied = applied
        .parse::<u64>()
        .ok()
        .filter(|_| applied.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(unreadable)?;
    if !is_checkpoint_name(files) {
        return Err(unreadable());
    }
    Ok(Some(Pointer {
        applied,
        files: files.to_string(),
        position,
        checked,
    }))
}

fn decode_position(hex: &str) -> Option<AppliedState> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    postcard::from_bytes(&bytes?).ok()
}

/// The xxh3-128 of a file's bytes, and its length.
fn hash_file(path: &Path) -> std::io::Result<(u128, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Xxh3::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((hasher.digest128(), length));
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
}

/// Writes `dir/CHECKSUMS` over every other file in `dir`, durably. The files are read back
/// from the disk, after they were written and synced.
pub(crate) fn write_checksums(dir: &Path) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(|e| Error::io(dir, e))?.is_file();
        if is_file && name != CHECKSUMS && !name.ends_with(".tmp") {
            names.push(name);
        }
    }
    names.sort();
    let mut text = String::new();
    for name in names {
        if name.contains(['\n', '\r']) {
            return Err(corrupt(
                &dir.join(&name),
                "a file name in a vector checkpoint holds a line break".into(),
            ));
        }
        let path = dir.join(&name);
        let (hash, length) = hash_file(&path).map_err(|e| Error::io(&path, e))?;
        text.push_str(&format!("{} {length} {name}\n", hex(hash)));
    }
    let end = hex(xxh3_128(text.as_bytes()));
    text.push_str(&format!("end {end}\n"));
    write_atomically(&dir.join(CHECKSUMS), text.as_bytes())
}

/// The files a checked checkpoint directory holds, each verified against `CHECKSUMS`.
#[derive(Debug)]
pub(crate) struct Verified {
    names: Vec<String>,
}

impl Verified {
    /// Whether the checkpoint holds `name` (checked).
    pub fn holds(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Checks every file `dir/CHECKSUMS` lists: present, of its length, and of its checksum.
/// Returns `None` for a directory without `CHECKSUMS` (a checkpoint of an older version);
/// any damage is [`Error::Corrupt`] naming the damaged file.
pub(crate) fn verify(dir: &Path) -> Result<Option<Verified>> {
    let list = dir.join(CHECKSUMS);
    let bytes = match fs::read(&list) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&list, e)),
    };
    let damaged = |why: &str| corrupt(&list, format!("the checksum list is damaged: {why}"));
    let text = std::str::from_utf8(&bytes).map_err(|_| damaged("it is not UTF-8"))?;
    let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let (body, last) = text.split_at(body_end);
    if last != format!("end {}\n", hex(xxh3_128(body.as_bytes()))) {
        return Err(damaged("it fails its own checksum"));
    }
    let mut names = Vec::new();
    for line in body.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(hash), Some(length), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(damaged("a line does not parse"));
        };
        let length: u64 = length
            .parse()
            .map_err(|_| damaged("a length does not parse"))?;
        if name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(damaged("a file name is not a plain name"));
        }
        let path = dir.join(name);
        let (got, got_length) = match hash_file(&path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(
                    &path,
                    format!("a file of the vector checkpoint is missing (listed in {CHECKSUMS})"),
                ))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if got_length != length {
            return Err(corrupt(
                &path,
                format!("the vector checkpoint file is {got_length} bytes, {length} were written"),
            ));
        }
        if hex(got) != hash {
            return Err(corrupt(
                &path,
                format!(
                    "the vector checkpoint file fails its checksum (xxh3-128 {}, {hash} written): its bytes changed after it was saved",
                    hex(got)
                ),
            ));
        }
        names.push(name.to_string());
    }
    Ok(Some(Verified { names }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_round_trips_and_any_changed_byte_is_caught() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let files = "ckpt-00000000000000000042";
        fs::create_dir(dir.join(files)).unwrap();
        fs::write(dir.join(files).join("keys.bin"), b"keys").unwrap();
        // Without CHECKSUMS the directory is old: an unchecked pointer.
        let position = AppliedState {
            applied: Some(crate::log::LogId::new(3, 2, 57)),
            membership: Some(vec![1, 2, 3]),
        };
        write_pointer(dir, 57, files, &position).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(POINTER)).unwrap(),
            format!("57 {files}")
        );
        let old = read_pointer(dir).unwrap().unwrap();
        assert_eq!((old.applied, old.checked), (57, false));
        write_checksums(&dir.join(files)).unwrap();
        write_pointer(dir, 57, files, &position).unwrap();
        let pointer = read_pointer(dir).unwrap().unwrap();
        assert_eq!(
            pointer,
            Pointer {
                applied: 57,
                files: files.into(),
                position: Some(position),
                checked: true
            }
        );
        let good = fs::read(dir.join(POINTER)).unwrap();
        for at in 0..good.len() {
            for byte in [b'0', b'7', b' ', b'x', b'\n', 0] {
                let mut bad = good.clone();
                if bad[at] == byte {
                    continue;
                }
                bad[at] = byte;
                fs::write(dir.join(POINTER), &bad).unwrap();
                match read_pointer(dir) {
                    Err(Error::Corrupt { path, .. }) => assert!(path.ends_with(POINTER)),
                    other => panic!("{:?} read as {other:?}", String::from_utf8_lossy(&bad)),
                }
            }
        }
        assert_eq!(
            verify(&dir.join(files)).unwrap().unwrap().names,
            ["keys.bin"]
        );
    }

    #[test]
    fn verify_names_the_damaged_or_missing_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(dir.join("a.usearch"), vec![7u8; 5000]).unwrap();
        fs::write(dir.join("keys.bin"), b"keys").unwrap();
        write_checksums(dir).unwrap();
        assert!(verify(dir).unwrap().unwrap().holds("a.usearch"));
        let mut bytes = fs::read(dir.join("a.usearch")).unwrap();
        bytes[4321] = 8;
        fs::write(dir.join("a.usearch"), &bytes).unwrap();
        let Err(Error::Corrupt { path, message }) = verify(dir) else {
            panic!("not caught")
        };
        assert!(
            path.ends_with("a.usearch") && message.contains("checksum"),
            "{message}"
        );
        fs::remove_file(dir.join("a.usearch")).unwrap();
        let Err(Error::Corrupt { path, message }) = verify(dir) else {
            panic!("not caught")
        };
        assert!(
            path.ends_with("a.usearch") && message.contains("missing"),
            "{message}"
        );
        // A damaged list names itself.
        let mut list = fs::read(dir.join(CHECKSUMS)).unwrap();
        list[3] ^= 1;
        fs::write(dir.join(CHECKSUMS), &list).unwrap();
        let Err(Error::Corrupt { path, .. }) = verify(dir) else {
            panic!("not caught")
        };
        assert!(path.ends_with(CHECKSUMS));
        // No list at all: an old checkpoint, unchecked.
        fs::remove_file(dir.join(CHECKSUMS)).unwrap();
        assert!(verify(dir).unwrap().is_none());
    }
}
