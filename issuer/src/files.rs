//! Writing key and certificate files: atomically (temporary file in the same
//! directory, fsync, rename, fsync the directory) and, for keys, with mode
//! 0600 from the first byte.
//!
//! Several files are staged first and renamed into place only when all of
//! them were written, so a failure part-way leaves the directory as it was.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::Error;

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Owner only (0600): private keys.
    Secret,
    /// World-readable (0644): certificates.
    Public,
}

impl FileMode {
    fn bits(self) -> u32 {
        match self {
            FileMode::Secret => 0o600,
            FileMode::Public => 0o644,
        }
    }
}

/// Files written to temporary names, waiting to be renamed into place.
#[derive(Debug, Default)]
pub struct StagedFiles {
    staged: Vec<(tempfile::NamedTempFile, PathBuf)>,
}

impl StagedFiles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `contents` to a temporary file beside `path`, created with
    /// `mode`'s permissions, and syncs it to disk.
    pub fn stage(&mut self, path: &Path, contents: &[u8], mode: FileMode) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = parent_dir(path);
        let mut tmp = tempfile::Builder::new()
            .prefix(".lanyard-")
            .suffix(".tmp")
            .permissions(Permissions::from_mode(mode.bits()))
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(contents).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Renames every staged file into place. Without `overwrite`, a file
    /// that already exists is refused before anything is renamed.
    pub fn commit(self, overwrite: bool) -> Result<(), Error> {
        if !overwrite && let Some((_, path)) = self.staged.iter().find(|(_, p)| p.exists()) {
            return Err(Error::WouldOverwrite { path: path.clone() });
        }
        let mut dirs = Vec::new();
        for (tmp, path) in self.staged {
            let persisted = if overwrite {
                tmp.persist(&path).map_err(|e| e.error)
            } else {
                tmp.persist_noclobber(&path).map_err(|e| e.error)
            };
            persisted.map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let dir = parent_dir(&path).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| Error::Io { path: dir, source })?;
        }
        Ok(())
    }
}

/// Writes one file atomically.
pub fn write_atomic(path: &Path, contents: &[u8], mode: FileMode) -> Result<(), Error> {
    let mut staged = StagedFiles::new();
    staged.stage(path, contents, mode)?;
    staged.commit(true)
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
