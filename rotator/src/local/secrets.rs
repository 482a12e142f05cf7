//! Secrets as directories, written the way the kubelet writes a Secret
//! volume: the files live in a fresh hidden directory, `..data` is a symlink
//! to it, and each key is a symlink through `..data`. One `rename` of
//! `..data` swaps every key at once, so a reader never sees a new `tls.crt`
//! with an old `tls.key`, and an interrupted write leaves the old version.
//! The volume itself is [`lanyard_files::volume`]; this adds namespaces,
//! key rules and labels.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use lanyard_files::volume::{self, DATA};

use crate::secret::SecretData;

const METADATA: &str = "..metadata.json";

/// A store error, naming the path.
pub type SecretStoreError = lanyard_files::Error;

use lanyard_files::at;

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Whether each write is flushed to disk before it becomes visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync files and directories: a crash never loses an acknowledged
    /// Secret. The default.
    Fsync,
    /// Leave flushing to the kernel (tests and benchmarks on tmpfs-like
    /// scratch directories only). Writes are still atomic.
    Deferred,
}

/// Secrets under `root/<namespace>/<name>/`.
#[derive(Debug, Clone)]
pub struct SecretStore {
    root: PathBuf,
    durability: Durability,
}

impl SecretStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>, durability: Durability) -> Self {
        SecretStore {
            root: root.into(),
            durability,
        }
    }

    /// The directory holding the Secret's keys.
    pub fn dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(name)
    }

    /// Reads a Secret; `None` when it does not exist.
    pub fn read(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, SecretStoreError> {
        let data_dir = self.dir(namespace, name).join(DATA);
        let entries = match fs::read_dir(&data_dir) {
            Ok(entries) => entries,
            // A file where a directory of the path should be: no Secret
            // is there (a write will say why it cannot put one there).
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(at(&data_dir)(e)),
        };
        let mut secret = SecretData::default();
        for entry in entries {
            let entry = entry.map_err(at(&data_dir))?;
            let file_name = entry.file_name();
            let Some(key) = file_name.to_str() else {
                continue;
            };
            let path = entry.path();
            if key == METADATA {
                let bytes = fs::read(&path).map_err(at(&path))?;
                let metadata: Metadata = serde_json::from_slice(&bytes)
                    .map_err(|e| at(&path)(std::io::Error::new(ErrorKind::InvalidData, e)))?;
                secret.labels = metadata.labels;
                secret.annotations = metadata.annotations;
            } else if !key.starts_with("..") {
                secret
                    .data
                    .insert(key.to_string(), fs::read(&path).map_err(at(&path))?);
            }
        }
        Ok(Some(secret))
    }

    /// Replaces a Secret atomically: every key changes at once or none does.
    /// `tls.key` and every key not known to be public are written 0600.
    pub fn write(
        &self,
        namespace: &str,
        name: &str,
        secret: &SecretData,
    ) -> Result<(), SecretStoreError> {
        let flush = self.durability == Durability::Fsync;
        let staged = self.stage(namespace, name, secret, flush)?;
        self.commit(staged, flush)
    }

    /// The first half of a write: the new version's files, in a hidden
    /// directory no reader looks at. Dropped uncommitted, it is removed.
    /// With `flush`, the files are on disk when this returns; a caller
    /// staging many Secrets may instead flush them all at once
    /// ([`SecretStore::flush_all`]) before committing any.
    pub fn stage(
        &self,
        namespace: &str,
        name: &str,
        secret: &SecretData,
        flush: bool,
    ) -> Result<StagedSecret, SecretStoreError> {
        for key in secret.data.keys() {
            if !is_valid_key(key) {
                return Err(at(Path::new(key))(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "not a valid Secret key (letters, digits, '-', '_', '.'; not starting with '..')",
                )));
            }
        }
        let dir = self.dir(namespace, name);
        let metadata = serde_json::to_vec(&Metadata {
            labels: secret.labels.clone(),
            annotations: secret.annotations.clone(),
        })
        .map_err(|e| at(&dir)(std::io::Error::other(e)))?;
        let mut files: Vec<volume::VolumeFile<'_>> = secret
            .data
            .iter()
            .map(|(key, value)| {
                let mode = if key == "tls.crt" || key == "ca.crt" {
                    0o644
                } else {
                    0o600
                };
                (key.as_str(), value.as_slice(), mode)
            })
            .collect();
        files.push((METADATA, &metadata, 0o644));
        volume::stage(&dir, &files, flush).map(StagedSecret)
    }

    /// The second half of a write: `..data` swaps to the staged version in
    /// one rename, key links are made, stale ones and the old version go.
    /// With `flush`, the swap is on disk when this returns.
    pub fn commit(&self, staged: StagedSecret, flush: bool) -> Result<(), SecretStoreError> {
        staged.0.commit(flush)
    }

    /// Flushes everything written under the store's root to disk in one
    /// call (`syncfs`): what many staged Secrets need before any commits.
    pub fn flush_all(&self) -> Result<(), SecretStoreError> {
        flush_filesystem(&self.root)
    }

    /// Makes sure the store's root exists with owner-only permissions.
    pub fn create_root(&self) -> Result<(), SecretStoreError> {
        volume::create_private_dirs(&self.root)
    }

    /// Whether writes are flushed to disk.
    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// A Secret version written but not yet visible; see [`SecretStore::stage`].
#[derive(Debug)]
pub struct StagedSecret(volume::StagedVolume);

pub(crate) use lanyard_files::StagedFile;

/// Writes `bytes` to a temporary file beside `path`, with `mode`; flushed
/// when `flush`.
pub(crate) fn stage_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    flush: bool,
) -> Result<StagedFile, SecretStoreError> {
    StagedFile::new(path, bytes, mode, flush)
}

pub(crate) use lanyard_files::flush_filesystem;

/// Replaces `path` atomically (temporary file in the same directory, then
/// rename), with `mode`, flushed to disk when `durability` says so.
pub(crate) fn write_file_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), SecretStoreError> {
    lanyard_files::replace(path, bytes, mode, durability == Durability::Fsync)
}

/// Secret keys as Kubernetes allows them, minus the `..` prefix the store
/// reserves for itself.
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && !key.starts_with("..")
        && key != "."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(pairs: &[(&str, &str)]) -> SecretData {
        let mut s = SecretData::default();
        for (k, v) in pairs {
            s.data.insert(k.to_string(), v.as_bytes().to_vec());
        }
        s.annotations.insert("a".into(), "b".into());
        s
    }

    #[test]
    fn a_secret_round_trips_and_a_rewrite_swaps_every_key() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path(), Durability::Fsync);
        assert_eq!(store.read("ns", "s").unwrap(), None);
        let first = secret(&[("tls.crt", "c1"), ("tls.key", "k1"), ("extra", "x")]);
        store.write("ns", "s", &first).unwrap();
        assert_eq!(store.read("ns", "s").unwrap(), Some(first));
        let second = secret(&[("tls.crt", "c2"), ("tls.key", "k2")]);
        store.write("ns", "s", &second).unwrap();
        assert_eq!(store.read("ns", "s").unwrap(), Some(second));
        let dir = store.dir("ns", "s");
        assert_eq!(fs::read(dir.join("tls.crt")).unwrap(), b"c2");
        assert!(
            !dir.join("extra").exists(),
            "a dropped key's link is removed"
        );
        let versions = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                let n = n.to_str().unwrap();
                n.starts_with("..") && n != DATA
            })
            .count();
        assert_eq!(versions, 1, "the old version is removed");
        let mode = fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_bad_key_name_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::new(tmp.path(), Durability::Deferred);
        let good = secret(&[("tls.crt", "c1")]);
        store.write("ns", "s", &good).unwrap();
        let bad = secret(&[("../escape", "x")]);
        assert!(store.write("ns", "s", &bad).is_err());
        assert_eq!(store.read("ns", "s").unwrap(), Some(good));
    }
}
