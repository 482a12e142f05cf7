//! Reading a manifests directory: every file parsed, and, for the
//! controller that reads it again and again, only the files that changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Checks, ManifestError, Object, parse};

/// Every object in every `*.yaml` / `*.yml` / `*.json` file of `dir`, by
/// file. Files that fail to parse are returned as errors, one per problem.
pub fn load_dir(
    dir: &Path,
    default_namespace: &str,
) -> (
    BTreeMap<PathBuf, Vec<Object>>,
    BTreeMap<PathBuf, Vec<ManifestError>>,
) {
    let mut objects = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for path in manifest_files(dir) {
        let result = parse_file(&path, default_namespace);
        match result {
            Ok(objs) => {
                objects.insert(path, objs);
            }
            Err(errs) => {
                errors.insert(path, errs);
            }
        }
    }
    (objects, errors)
}

/// What identifies a file's contents without reading it: a rewrite
/// (in place or by rename) changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

type Parsed = Result<Vec<Object>, Vec<ManifestError>>;

/// [`load_dir`] for a directory read again and again: files whose size,
/// times and inode are unchanged are not parsed again, and changed files
/// are parsed on every core.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<PathBuf, (Stamp, Parsed)>,
}

impl ManifestCache {
    /// Every object in `dir`, by file, and every error, by file.
    #[allow(clippy::type_complexity)]
    pub fn load(
        &mut self,
        dir: &Path,
        default_namespace: &str,
    ) -> (
        BTreeMap<PathBuf, Vec<Object>>,
        BTreeMap<PathBuf, Vec<ManifestError>>,
    ) {
        let files = manifest_files(dir);
        let mut stale = Vec::new();
        let mut fresh = BTreeMap::new();
        for path in files {
            let stamp = Stamp::of(&path);
            match (stamp, self.files.remove(&path)) {
                (Some(stamp), Some((old, parsed))) if old == stamp => {
                    fresh.insert(path, (stamp, parsed));
                }
                (stamp, _) => stale.push((path, stamp)),
            }
        }
        // Results come back in the files' order.
        let parsed: Vec<_> = stale
            .into_par_iter()
            .map(|(path, stamp)| {
                let parsed = parse_file(&path, default_namespace);
                (path, stamp, parsed)
            })
            .collect();
        // Stamped before reading, so a write during the read shows up as a
        // changed stamp next time. A file without a stamp vanished between
        // listing and reading: it is gone.
        for (path, stamp, result) in parsed {
            if let Some(stamp) = stamp {
                fresh.insert(path, (stamp, result));
            }
        }
        self.files = fresh;
        let mut objects = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (path, (_, parsed)) in &self.files {
            match parsed {
                Ok(objs) => {
                    objects.insert(path.clone(), objs.clone());
                }
                Err(errs) => {
                    errors.insert(path.clone(), errs.clone());
                }
            }
        }
        (objects, errors)
    }
}

fn parse_file(path: &Path, default_namespace: &str) -> Parsed {
    std::fs::read_to_string(path)
        .map_err(|e| {
            vec![ManifestError {
                file: path.to_path_buf(),
                document: 0,
                field: None,
                message: format!("cannot read: {e}"),
            }]
        })
        .and_then(|text| parse(path, &text, default_namespace, Checks::Structure))
}

/// The manifest files in `dir`, sorted; hidden and temporary files skipped.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.')
                && p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    files
}
