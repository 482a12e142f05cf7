//! Lanyard's one way of writing files. Every key, certificate, manifest and
//! status file any Lanyard process writes goes through here:
//!
//! - [`StagedFile`] / [`write_atomic`]: one file replaced atomically
//!   (temporary file in the same directory, optional fsync, rename, fsync of
//!   the directory), created with its final mode from the first byte, so a
//!   key is never readable by others, not even for an instant;
//! - [`StagedFiles`]: several files staged first and renamed into place only
//!   when all of them were written, so a failure part-way leaves the
//!   directory as it was;
//! - [`StagedDir`]: a directory filled under a temporary name, then made to
//!   appear whole in one rename;
//! - [`volume`]: directories written the way the kubelet writes a Secret
//!   volume, where one rename swaps every key at once;
//! - [`is_staged`]: the names those writers leave behind when killed
//!   between stage and commit, for a start-up sweep.

#![forbid(unsafe_code)]

pub mod volume;

use std::fs::{self, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A write error, naming the file or directory at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file exists and overwriting was not asked for.
    #[error("{} already exists; pass --force to replace it", path.display())]
    WouldOverwrite {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::WouldOverwrite { path } | Error::Io { path, .. } => path,
        }
    }

    /// What went wrong, without the path.
    pub fn reason(&self) -> String {
        match self {
            Error::WouldOverwrite { .. } => "already exists".into(),
            Error::Io { source, .. } => source.to_string(),
        }
    }
}

/// An [`Error::Io`] about `path`, for `map_err`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Owner only (0600): private keys.
    Secret,
    /// World-readable (0644): certificates.
    Public,
}

impl FileMode {
    /// The permission bits.
    pub const fn bits(self) -> u32 {
        match self {
            FileMode::Secret => 0o600,
            FileMode::Public => 0o644,
        }
    }
}

const TMP_PREFIX: &str = ".lanyard-";
const TMP_SUFFIX: &str = ".tmp";

/// Whether `name` is a temporary file that an atomic writer makes beside
/// its destination (`.lanyard-*.tmp`, and `.tmp-*` from earlier versions).
/// Found after a restart, such a file is the remains of an interrupted
/// write: nothing reads it, and the directory's one writer may remove it.
pub fn is_staged(name: &str) -> bool {
    name.starts_with(".tmp-") || (name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX))
}

/// A file written beside its destination but not yet renamed onto it; see
/// [`StagedFile::new`]. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct StagedFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl StagedFile {
    /// Writes `contents` to a temporary file beside `path` (creating the
    /// directory if needed), with `mode` from the first byte; with `flush`,
    /// the contents are on disk when this returns.
    pub fn new(path: &Path, contents: &[u8], mode: u32, flush: bool) -> Result<Self, Error> {
        let dir = parent_dir(path);
        fs::create_dir_all(dir).map_err(at(dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .suffix(TMP_SUFFIX)
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(at(dir))?;
        tmp.write_all(contents).map_err(at(path))?;
        if flush {
            tmp.as_file().sync_all().map_err(at(path))?;
        }
        Ok(StagedFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file onto its destination; with `flush`, the rename is
    /// on disk when this returns.
    pub fn commit(self, flush: bool) -> Result<(), Error> {
        let dir = parent_dir(&self.path).to_path_buf();
        self.persist(true)?;
        if flush {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    fn persist(self, overwrite: bool) -> Result<(), Error> {
        let StagedFile { tmp, path } = self;
        let persisted = if overwrite {
            tmp.persist(&path).map_err(|e| e.error)
        } else {
            tmp.persist_noclobber(&path).map_err(|e| e.error)
        };
        persisted.map(drop).map_err(at(&path))
    }
}

/// Files written to temporary names, waiting to be renamed into place
/// together. Every file is flushed to disk before any is renamed.
#[derive(Debug, Default)]
pub struct StagedFiles {
    staged: Vec<StagedFile>,
}

impl StagedFiles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `contents` to a temporary file beside `path`, created with
    /// `mode`'s permissions, and syncs it to disk.
    pub fn stage(&mut self, path: &Path, contents: &[u8], mode: FileMode) -> Result<(), Error> {
        self.staged
            .push(StagedFile::new(path, contents, mode.bits(), true)?);
        Ok(())
    }

    /// Renames every staged file into place. Without `overwrite`, a file
    /// that already exists is refused before anything is renamed.
    pub fn commit(self, overwrite: bool) -> Result<(), Error> {
        if !overwrite && let Some(file) = self.staged.iter().find(|f| f.path.exists()) {
            return Err(Error::WouldOverwrite {
                path: file.path.clone(),
            });
        }
        let mut dirs = Vec::new();
        for file in self.staged {
            let dir = parent_dir(&file.path).to_path_buf();
            file.persist(overwrite)?;
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// A directory filled under a temporary name beside its destination, then
/// renamed into place whole: a reader sees no directory or a complete
/// one. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct StagedDir {
    dir: tempfile::TempDir,
}

impl StagedDir {
    /// An empty directory in `parent`, with `mode`.
    pub fn new(parent: &Path, mode: u32) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .suffix(TMP_SUFFIX)
            .permissions(Permissions::from_mode(mode))
            .tempdir_in(parent)
            .map_err(at(parent))?;
        Ok(StagedDir { dir })
    }

    /// Where to write the directory's files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the directory to `dest`, which must not exist (or be an
    /// empty directory); with `flush`, the rename is on disk when this
    /// returns. On failure the staged directory is removed.
    pub fn commit(self, dest: &Path, flush: bool) -> Result<(), Error> {
        let staged = self.dir.keep();
        if let Err(source) = fs::rename(&staged, dest) {
            let _ = fs::remove_dir_all(&staged);
            return Err(Error::Io {
                path: dest.to_path_buf(),
                source,
            });
        }
        if flush {
            sync_dir(parent_dir(dest))?;
        }
        Ok(())
    }
}

/// Writes one file atomically, flushed to disk, as [`StagedFiles`] does.
pub fn write_atomic(path: &Path, contents: &[u8], mode: FileMode) -> Result<(), Error> {
    let mut staged = StagedFiles::new();
    staged.stage(path, contents, mode)?;
    staged.commit(true)
}

/// Replaces `path` atomically with `mode`; with `flush`, the contents and
/// the rename are on disk when this returns.
pub fn replace(path: &Path, contents: &[u8], mode: u32, flush: bool) -> Result<(), Error> {
    StagedFile::new(path, contents, mode, flush)?.commit(flush)
}

/// Flushes a directory's entries to disk.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// Flushes the whole filesystem holding `path` (`syncfs`): one call in
/// place of an fsync per file when many files were written together.
pub fn flush_filesystem(path: &Path) -> Result<(), Error> {
    let dir = fs::File::open(path).map_err(at(path))?;
    rustix::fs::syncfs(&dir).map_err(|e| at(path)(e.into()))
}

/// Creates `dir` and its missing parents, owner-only (0700).
pub fn create_private_dirs(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(at(dir))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_secret_file_is_written_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_atomic(&path, b"secret", FileMode::Secret).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }

    #[test]
    fn staged_names_are_told_from_real_ones() {
        for (name, staged) in [
            (".tmp-abc123", true),
            (".lanyard-x1y2.tmp", true),
            ("linkerd-identity.yaml", false),
            ("web.json", false),
            (".lock", false),
            (".tmp", false),
        ] {
            assert_eq!(is_staged(name), staged, "{name}");
        }
    }

    #[test]
    fn a_replaced_file_takes_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/status.json");
        replace(&path, b"one", 0o644, false).unwrap();
        replace(&path, b"two", 0o644, true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_staged_directory_appears_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("manifests");
        let staged = StagedDir::new(root.path(), 0o755).unwrap();
        replace(&staged.path().join("a.yaml"), b"a", 0o644, true).unwrap();
        assert!(!dest.exists(), "nothing is visible before the commit");
        assert!(is_staged(
            staged.path().file_name().unwrap().to_str().unwrap()
        ));
        staged.commit(&dest, true).unwrap();
        assert_eq!(std::fs::read(dest.join("a.yaml")).unwrap(), b"a");
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o755);

        // A destination that is a non-empty directory refuses the rename,
        // and the staged copy goes.
        let again = StagedDir::new(root.path(), 0o755).unwrap();
        replace(&again.path().join("b.yaml"), b"b", 0o644, false).unwrap();
        assert!(again.commit(&dest, false).is_err());
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the committed directory is left");
        assert!(!dest.join("b.yaml").exists());
    }

    #[test]
    fn refusing_to_overwrite_leaves_every_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&b, b"old").unwrap();
        let mut staged = StagedFiles::new();
        staged.stage(&a, b"new a", FileMode::Public).unwrap();
        staged.stage(&b, b"new b", FileMode::Public).unwrap();
        assert!(matches!(
            staged.commit(false),
            Err(Error::WouldOverwrite { .. })
        ));
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files were cleaned up");
    }
}
