//! Loading manifests from a directory, and reloading them when it changes.

use std::path::{Path, PathBuf};

use crate::{Manifests, Policy, PolicyError, PolicyErrors, PolicyOptions};

impl Manifests {
    /// Reads every `.yaml`, `.yml` and `.json` file in `dir` (not below).
    pub fn add_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        for (path, bytes) in read_manifest_files(dir)? {
            self.add_yaml(&path, &String::from_utf8_lossy(&bytes));
        }
        Ok(())
    }
}

/// Keeps a policy current from a directory of manifests: a changed
/// directory is rebuilt and swapped in; one that does not build is refused
/// and the last good policy stays.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    options: PolicyOptions,
    seen: Option<Vec<(PathBuf, Vec<u8>)>>,
}

/// What one look at the policy directory found.
#[derive(Debug)]
pub enum PolicyReload {
    /// Nothing changed.
    Unchanged,
    /// A new policy.
    Loaded(Policy),
    /// The manifests are wrong; keep the last good policy.
    Refused(PolicyErrors),
}

impl PolicyDir {
    /// A directory of manifests built with `options`.
    pub fn new(dir: impl Into<PathBuf>, options: PolicyOptions) -> Self {
        PolicyDir {
            dir: dir.into(),
            options,
            seen: None,
        }
    }

    /// Reads the directory; rebuilds when any file changed.
    pub fn poll(&mut self) -> PolicyReload {
        let files = match read_manifest_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                return PolicyReload::Refused(PolicyErrors(vec![PolicyError {
                    file: self.dir.clone(),
                    document: 0,
                    object: None,
                    field: None,
                    message: e.to_string(),
                }]));
            }
        };
        if self.seen.as_ref() == Some(&files) {
            return PolicyReload::Unchanged;
        }
        let mut manifests = Manifests::new();
        for (path, bytes) in &files {
            manifests.add_yaml(path, &String::from_utf8_lossy(bytes));
        }
        self.seen = Some(files);
        match manifests.build(&self.options) {
            Ok(policy) => PolicyReload::Loaded(policy),
            Err(errors) => PolicyReload::Refused(errors),
        }
    }
}

fn read_manifest_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| std::fs::read(&path).map(|bytes| (path, bytes)))
        .collect()
}
