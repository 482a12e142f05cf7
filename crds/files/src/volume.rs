//! Directories written the way the kubelet writes a Secret volume: the
//! files live in a fresh hidden directory, `..data` is a symlink to it, and
//! each key is a symlink through `..data`. One `rename` of `..data` swaps
//! every key at once, so a reader never sees a new `tls.crt` with an old
//! `tls.key`, and an interrupted write leaves the old version. A new
//! volume's `..data` is made in place, as atomic as the rename: before it,
//! the volume has no keys.
//!
//! The local controller writes Secrets this way, and the agent writes its
//! certificate and key this way for applications that read files.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The symlink to the current version.
pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

use crate::{Error, at};
pub use crate::{create_private_dirs, sync_dir};

/// One file of a version: its name, contents and permission bits. Names
/// starting with `..` are hidden (kept in the version, not linked).
pub type VolumeFile<'a> = (&'a str, &'a [u8], u32);

/// The first half of a write: the new version's files, in a hidden
/// directory of `dir` no reader looks at. Dropped uncommitted, it is
/// removed. With `flush`, the files are on disk when this returns.
///
/// No descriptor is held between stage and commit (a pass stages
/// thousands of Secrets before it commits any), and the kernel is asked
/// only for what the write needs: one `mkdir` per directory, `open`,
/// `write`, `close` per file; a new volume skips the look for a previous
/// version, and its commit makes `..data` in place (nothing to swap).
pub fn stage(dir: &Path, files: &[VolumeFile<'_>], flush: bool) -> Result<StagedVolume, Error> {
    for (name, _, _) in files {
        if name.is_empty() || name.contains('/') || matches!(*name, "." | ".." | DATA | DATA_TMP) {
            return Err(at(Path::new(name))(std::io::Error::new(
                ErrorKind::InvalidInput,
                "not a valid file name in a volume",
            )));
        }
    }
    let fresh = make_private_dir(dir)?;
    if fresh && flush {
        // The volume's own entry in its parent.
        sync_dir(crate::parent_dir(dir))?;
    }
    let version = make_version_dir(dir)?;
    let staged = StagedVolume {
        dir: dir.to_path_buf(),
        fresh,
        keys: files
            .iter()
            .map(|(name, _, _)| name.to_string())
            .filter(|name| !name.starts_with(".."))
            .collect(),
        version: Some(version),
    };
    let version_dir = dir.join(staged.version.as_deref().expect("just made"));
    for (name, contents, mode) in files {
        write_new_file(&version_dir.join(name), contents, *mode, flush)?;
    }
    if flush {
        sync_dir(&version_dir)?;
    }
    Ok(staged)
}

/// Replaces the volume in `dir` with `files`, atomically: every key
/// changes at once or none does.
pub fn write(dir: &Path, files: &[VolumeFile<'_>], flush: bool) -> Result<(), Error> {
    stage(dir, files, flush)?.commit(flush)
}

/// A version written but not yet visible; see [`stage`].
#[derive(Debug)]
pub struct StagedVolume {
    dir: PathBuf,
    /// Whether `dir` was made by this write (so it has no `..data` and no
    /// key links yet).
    fresh: bool,
    keys: Vec<String>,
    /// The version directory's name in `dir`; `None` once committed.
    version: Option<String>,
}

impl Drop for StagedVolume {
    fn drop(&mut self) {
        if let Some(version) = self.version.take() {
            let _ = fs::remove_dir_all(self.dir.join(version));
        }
    }
}

impl StagedVolume {
    /// The second half of a write: `..data` swaps to the staged version in
    /// one rename, key links are made, stale ones and the old version go.
    /// With `flush`, the swap is on disk when this returns.
    pub fn commit(mut self, flush: bool) -> Result<(), Error> {
        let version = self.version.clone().expect("uncommitted");
        let dir = self.dir.clone();

        // A volume this write made has no `..data` yet: making the link
        // in place is as atomic as the swap, and one step cheaper.
        let made = self.fresh
            && match std::os::unix::fs::symlink(&version, dir.join(DATA)) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
                Err(e) => return Err(at(&dir.join(DATA))(e)),
            };
        let previous = if made {
            None
        } else {
            // Swap `..data` to the new version in one rename.
            let previous = fs::read_link(dir.join(DATA)).ok();
            replace_symlink(Path::new(&version), &dir.join(DATA_TMP))?;
            fs::rename(dir.join(DATA_TMP), dir.join(DATA)).map_err(at(&dir))?;
            previous
        };
        // From here the version is the live one: never removed on drop.
        self.version = None;

        // User-visible keys are stable symlinks through `..data`.
        for key in &self.keys {
            let link = dir.join(key);
            if previous.is_none() || fs::read_link(&link).is_err() {
                replace_symlink(&Path::new(DATA).join(key), &link)?;
            }
        }
        // A first write has no stale links to sweep.
        if previous.is_some() {
            for entry in fs::read_dir(&dir).map_err(at(&dir))? {
                let entry = entry.map_err(at(&dir))?;
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str() else {
                    continue;
                };
                if !name.starts_with("..") && !self.keys.iter().any(|k| k == name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        if flush {
            sync_dir(&dir)?;
        }
        if let Some(previous) = previous
            && previous.as_os_str() != version.as_str()
        {
            let _ = fs::remove_dir_all(dir.join(previous));
        }
        Ok(())
    }
}

/// Makes `dir` (and missing parents) owner-only; whether `dir` itself was
/// made now. One `mkdir` when the parent exists.
fn make_private_dir(dir: &Path) -> Result<bool, Error> {
    let mode = Mode::from_raw_mode(0o700);
    match rustix::fs::mkdir(dir, mode) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(rustix::io::Errno::NOENT) => {
            create_private_dirs(crate::parent_dir(dir))?;
            match rustix::fs::mkdir(dir, mode) {
                Ok(()) => Ok(true),
                Err(rustix::io::Errno::EXIST) => Ok(false),
                Err(e) => Err(at(dir)(e.into())),
            }
        }
        Err(e) => Err(at(dir)(e.into())),
    }
}

/// A new hidden version directory in `dir`, named `..` and 16 random hex
/// digits (from the standard library's per-thread hash keys: no system
/// call per name).
fn make_version_dir(dir: &Path) -> Result<String, Error> {
    use std::hash::{BuildHasher, Hasher};
    let mut last = None;
    for attempt in 0u32..16 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        let name = format!("..{:016x}", hasher.finish());
        match rustix::fs::mkdir(dir.join(&name), Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok(name),
            Err(e @ rustix::io::Errno::EXIST) => last = Some(e),
            Err(e) => return Err(at(dir)(e.into())),
        }
    }
    Err(at(dir)(last.expect("tried").into()))
}

/// Removes what an interrupted write (a `kill -9` between stage and
/// commit) left in the volume `dir`: version directories that `..data`
/// does not point to, and a half-made `..data_tmp` link. Only the one
/// writer of the volume may call this, before it writes. Returns what was
/// removed.
pub fn sweep(dir: &Path) -> Vec<PathBuf> {
    let current = fs::read_link(dir.join(DATA)).ok();
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("..") || name == DATA {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let stale = if name == DATA_TMP {
            true
        } else {
            kind.is_dir() && current.as_deref() != Some(Path::new(name))
        };
        let gone = if kind.is_dir() {
            stale && fs::remove_dir_all(&path).is_ok()
        } else {
            stale && fs::remove_file(&path).is_ok()
        };
        if gone {
            removed.push(path);
        }
    }
    removed
}

/// Creates `path` (which must not exist) with `mode` from the first byte;
/// flushed when `flush`.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32, flush: bool) -> Result<(), Error> {
    let file = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| at(path)(e.into()))?;
    let mut file = fs::File::from(file);
    std::io::Write::write_all(&mut file, bytes).map_err(at(path))?;
    if flush {
        file.sync_all().map_err(at(path))?;
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, replacing whatever is there.
fn replace_symlink(target: &Path, link: &Path) -> Result<(), Error> {
    match std::os::unix::fs::symlink(target, link) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            fs::remove_file(link).map_err(at(link))?;
            std::os::unix::fs::symlink(target, link).map_err(at(link))
        }
        other => other.map_err(at(link)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The hidden version directories of `dir`.
    fn versions(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_rewrite_swaps_every_key_drops_stale_ones_and_keeps_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        write(
            &dir,
            &[
                ("tls.crt", b"c1", 0o644),
                ("tls.key", b"k1", 0o600),
                ("extra", b"x", 0o644),
            ],
            true,
        )
        .unwrap();
        write(
            &dir,
            &[("tls.crt", b"c2", 0o644), ("tls.key", b"k2", 0o600)],
            true,
        )
        .unwrap();
        assert_eq!(fs::read(dir.join("tls.crt")).unwrap(), b"c2");
        assert_eq!(fs::read(dir.join("tls.key")).unwrap(), b"k2");
        assert!(
            !dir.join("extra").exists(),
            "a dropped key's link is removed"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("tls.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(versions(&dir).len(), 1, "the old version is removed");
    }

    #[test]
    fn two_writes_of_a_new_volume_end_with_the_last_committed_whichever_made_it() {
        for first_made_commits_first in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("v");
            // The first stage makes the volume; the second finds it made.
            let made = stage(&dir, &[("tls.crt", b"made", 0o644)], true).unwrap();
            let found = stage(&dir, &[("tls.crt", b"found", 0o644)], true).unwrap();
            let last = if first_made_commits_first {
                made.commit(true).unwrap();
                found.commit(true).unwrap();
                "found"
            } else {
                found.commit(true).unwrap();
                made.commit(true).unwrap();
                "made"
            };
            assert_eq!(
                fs::read(dir.join("tls.crt")).unwrap(),
                last.as_bytes(),
                "{last} committed last"
            );
            let live = fs::read_link(dir.join(DATA)).unwrap();
            assert_eq!(
                versions(&dir),
                [live.to_str().unwrap()],
                "only the live version is left, and no `..data_tmp`"
            );
        }
    }

    #[test]
    fn a_sweep_removes_what_an_interrupted_write_left_and_keeps_the_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        write(&dir, &[("tls.key", b"k1", 0o600)], false).unwrap();
        // A writer killed between stage and commit leaves its version, key
        // included, and possibly a half-made `..data_tmp` link.
        let mut staged = stage(&dir, &[("tls.key", b"k2", 0o600)], false).unwrap();
        let leftover = dir.join(staged.version.take().unwrap());
        drop(staged);
        std::os::unix::fs::symlink(Path::new("..nowhere"), dir.join(DATA_TMP)).unwrap();
        assert!(leftover.join("tls.key").exists());

        let removed = sweep(&dir);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!leftover.exists());
        assert!(fs::symlink_metadata(dir.join(DATA_TMP)).is_err());
        assert_eq!(fs::read(dir.join("tls.key")).unwrap(), b"k1");
        assert!(sweep(&dir).is_empty(), "a second sweep finds nothing");
    }

    #[test]
    fn a_bad_name_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        write(&dir, &[("tls.crt", b"c1", 0o644)], false).unwrap();
        assert!(write(&dir, &[("../escape", b"x", 0o644)], false).is_err());
        assert!(write(&dir, &[("..data", b"x", 0o644)], false).is_err());
        assert_eq!(fs::read(dir.join("tls.crt")).unwrap(), b"c1");
    }
}
