//! Reading a manifests directory: every file parsed, and, for the
//! controller that reads it again and again, only the files that changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

type Parsed = Result<Arc<Vec<Object>>, Vec<ManifestError>>;

/// [`load_dir`] for a directory read again and again: files whose size,
/// times and inode are unchanged are not parsed again, and changed files
/// are parsed on every core.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<PathBuf, (Stamp, Parsed)>,
}

impl ManifestCache {
    /// Every object in `dir`, by file (shared with the cache, not copied),
    /// and every error, by file.
    #[allow(clippy::type_complexity)]
    pub fn load(
        &mut self,
        dir: &Path,
        default_namespace: &str,
    ) -> (
        BTreeMap<PathBuf, Arc<Vec<Object>>>,
        BTreeMap<PathBuf, Vec<ManifestError>>,
    ) {
        let files = manifest_files(dir);
        // Both sides are sorted by path: one walk pairs each file with its
        // cached parse, without a map lookup (and its path comparisons)
        // per file.
        let mut old = std::mem::take(&mut self.files).into_iter().peekable();
        let stamps: Vec<Option<Stamp>> = files.par_iter().map(|p| Stamp::of(p)).collect();
        let mut kept = Vec::new();
        let mut stale = Vec::new();
        for (path, stamp) in files.into_iter().zip(stamps) {
            while old.next_if(|(cached, _)| *cached < path).is_some() {}
            let cached = old.next_if(|(cached, _)| *cached == path);
            match (stamp, cached) {
                (Some(stamp), Some((_, (was, parsed)))) if was == stamp => {
                    kept.push((path, (stamp, parsed)));
                }
                (stamp, _) => stale.push((path, stamp)),
            }
        }
        drop(old);
        // Results come back in the files' order.
        let parsed: Vec<_> = stale
            .into_par_iter()
            .map(|(path, stamp)| {
                let parsed = parse_file(&path, default_namespace).map(Arc::new);
                (path, stamp, parsed)
            })
            .collect();
        // Stamped before reading, so a write during the read shows up as a
        // changed stamp next time. A file without a stamp vanished between
        // listing and reading: it is gone.
        kept.extend(
            parsed
                .into_iter()
                .filter_map(|(path, stamp, result)| stamp.map(|stamp| (path, (stamp, result)))),
        );
        // Two sorted runs: collecting merges them and builds the map
        // without a search per file.
        self.files = kept.into_iter().collect();
        let objects = self
            .files
            .iter()
            .filter_map(|(path, (_, parsed))| {
                Some((path.clone(), Arc::clone(parsed.as_ref().ok()?)))
            })
            .collect();
        let errors = self
            .files
            .iter()
            .filter_map(|(path, (_, parsed))| Some((path.clone(), parsed.as_ref().err()?.clone())))
            .collect();
        (objects, errors)
    }
}

fn parse_file(path: &Path, default_namespace: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
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
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let wanted = !name.starts_with('.')
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                );
            // The entry's type comes with the listing; only a symbolic link
            // (or a file system that does not say) needs a stat to follow.
            let is_file = || match e.file_type() {
                Ok(t) if t.is_file() => true,
                Ok(t) if t.is_dir() => false,
                _ => p.is_file(),
            };
            (wanted && is_file()).then_some(p)
        })
        .collect();
    files.sort();
    files
}
