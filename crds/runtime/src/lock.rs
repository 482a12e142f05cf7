//! One owner per state directory: an advisory `flock` on `DIR/.lock`,
//! held for the life of the process and released by the kernel however it
//! ends (even `kill -9`). The holder writes its PID into the file so that a
//! second would-be owner can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// The lock file's name inside the directory.
pub const LOCK_FILE: &str = ".lock";

/// Why the directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the lock.
    #[error("{} is in use by another process{}; stop it first, or use another directory", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The directory.
        dir: PathBuf,
        /// The holder's PID, when it has written it.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The lock on a directory; released when dropped or when the process
/// ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting, or says
    /// who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if std::io::Error::from(e).kind() == ErrorKind::WouldBlock => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just as another process would.
        match DirLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        let message = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let message = DirLock::acquire(&missing).unwrap_err().to_string();
        assert!(message.contains("nope/.lock"), "{message}");
    }
}
