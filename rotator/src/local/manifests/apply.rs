//! `lanyard apply`: add or update objects in the local store, all or
//! nothing as far as a filesystem allows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::manifest_files;
use super::{
    Checks, ManifestError, Object, ObjectKey, is_json_file, parse, to_json_stream, to_yaml_stream,
};
use crate::local::secrets::{
    Durability, SecretStore, SecretStoreError, StagedFile, StagedSecret, stage_file,
};
use crate::secret::SecretData;

/// What `apply` did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The object.
    pub key: ObjectKey,
    /// `created`, `configured` or `unchanged`, as kubectl says.
    pub action: &'static str,
}

/// Adds or updates objects in `manifests_dir`; Secrets go to `secrets`.
/// All or nothing, as far as a filesystem allows: nothing is written
/// unless every document of every input is valid, and nothing becomes
/// visible until every Secret and manifest file is staged beside its
/// destination. Only then is each renamed into place; if one of those
/// renames fails, the error lists what was applied and what was not.
pub fn apply(
    manifests_dir: &Path,
    secrets: &SecretStore,
    inputs: &[(PathBuf, String)],
    default_namespace: &str,
) -> Result<Vec<Applied>, ApplyError> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in inputs {
        match parse(file, text, default_namespace, Checks::Admission) {
            Ok(objs) => objects.extend(objs),
            Err(errs) => errors.extend(errs),
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }

    // What changes, decided in memory.
    let mut index = Index::load(manifests_dir, default_namespace);
    let mut applied = Vec::new();
    // One write per Secret; a later document for the same Secret replaces
    // the earlier one's, as writing them in turn would.
    let mut secret_writes: Vec<(ObjectKey, &SecretData)> = Vec::new();
    for object in &objects {
        let key = object.key();
        let action = match object {
            Object::Secret {
                namespace,
                name,
                data,
            } => {
                let pending = secret_writes.iter().position(|(k, _)| *k == key);
                let old = match pending {
                    Some(i) => Some(secret_writes[i].1.clone()),
                    None => secrets
                        .read(namespace, name)
                        .map_err(|source| ApplyError::Read {
                            object: key.clone(),
                            source,
                        })?,
                };
                if old.as_ref() == Some(data) {
                    "unchanged"
                } else {
                    match pending {
                        Some(i) => secret_writes[i].1 = data,
                        None => secret_writes.push((key.clone(), data)),
                    }
                    if old.is_some() {
                        "configured"
                    } else {
                        "created"
                    }
                }
            }
            _ => index.upsert(manifests_dir, object),
        };
        applied.push(Applied { key, action });
    }

    // Stage every write; a failure here leaves everything as it was.
    let flush = secrets.durability() == Durability::Fsync;
    let mut targets: Vec<PathBuf> = secret_writes
        .iter()
        .map(|(key, _)| secrets.dir(&key.namespace, &key.name))
        .collect();
    if !index.changed.is_empty() {
        targets.push(manifests_dir.to_path_buf());
    }
    let created = missing_dirs(&targets);
    let staged = match stage_all(secrets, &secret_writes, &index, flush) {
        Ok(staged) => staged,
        Err(error) => {
            // The staged files went when `stage_all` returned; the
            // directories made for them go now.
            remove_empty_dirs(created);
            return Err(error);
        }
    };

    // Make each staged write visible: Secrets first, then manifests.
    let mut staged = staged.into_iter();
    while let Some(unit) = staged.next() {
        let result = match unit.write {
            Staged::Secret(secret) => secrets.commit(secret, flush),
            Staged::File(file) => file.commit(flush),
        };
        if let Err(source) = result {
            let not_applied: Vec<ObjectKey> = unit
                .objects
                .iter()
                .cloned()
                .chain(staged.flat_map(|later| later.objects))
                .collect();
            return Err(ApplyError::Partial {
                failed: unit.objects,
                source,
                applied: applied
                    .into_iter()
                    .filter(|a| !not_applied.contains(&a.key))
                    .collect(),
                not_applied,
            });
        }
    }
    Ok(applied)
}

/// One staged write and the objects it carries.
struct StagedUnit {
    objects: Vec<ObjectKey>,
    write: Staged,
}

enum Staged {
    Secret(StagedSecret),
    File(StagedFile),
}

/// Stages every Secret and every changed manifest file, in the order they
/// are to be committed. On error, what was staged is dropped (and so
/// removed) before this returns.
fn stage_all(
    secrets: &SecretStore,
    secret_writes: &[(ObjectKey, &SecretData)],
    index: &Index,
    flush: bool,
) -> Result<Vec<StagedUnit>, ApplyError> {
    let mut staged = Vec::new();
    for (key, data) in secret_writes {
        let secret = secrets
            .stage(&key.namespace, &key.name, data, flush)
            .map_err(|source| ApplyError::Stage {
                objects: vec![key.clone()],
                source,
            })?;
        staged.push(StagedUnit {
            objects: vec![key.clone()],
            write: Staged::Secret(secret),
        });
    }
    for (path, objects) in &index.changed {
        let stage_error = |source| ApplyError::Stage {
            objects: objects.clone(),
            source,
        };
        let documents = &index.files[path];
        let text = if is_json_file(path) {
            to_json_stream(documents)
        } else {
            to_yaml_stream(documents)
        };
        let text = text.map_err(|reason| {
            stage_error(SecretStoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(reason),
            })
        })?;
        let file = stage_file(path, text.as_bytes(), 0o644, flush).map_err(stage_error)?;
        staged.push(StagedUnit {
            objects: objects.clone(),
            write: Staged::File(file),
        });
    }
    Ok(staged)
}

/// The directories among `targets` and their ancestors that do not exist
/// yet, deepest first: what staging will create.
fn missing_dirs(targets: &[PathBuf]) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = targets
        .iter()
        .flat_map(|target| {
            target
                .ancestors()
                .take_while(|dir| !dir.as_os_str().is_empty() && dir.symlink_metadata().is_err())
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .collect();
    missing.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    missing.dedup();
    missing
}

/// Removes each of `dirs` (deepest first) that is empty; a directory
/// something else wrote into meanwhile is left alone.
fn remove_empty_dirs(dirs: Vec<PathBuf>) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Why `apply` wrote nothing, or could not finish writing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Some documents are invalid; nothing was written.
    #[error("{}\nnothing was applied", invalid_lines(.0))]
    Invalid(Vec<ManifestError>),
    /// The Secret already in the store could not be read; nothing was
    /// written.
    #[error("error: reading {object}: {source}\nnothing was applied")]
    Read {
        /// The Secret.
        object: ObjectKey,
        /// Where and why.
        source: SecretStoreError,
    },
    /// A write could not be staged; what was staged before it was removed
    /// and nothing was written.
    #[error(
        "error: writing {} to {}: {}\nnothing was applied",
        keys(.objects),
        .source.path().display(),
        .source.reason()
    )]
    Stage {
        /// The objects the write was for.
        objects: Vec<ObjectKey>,
        /// Where and why.
        source: SecretStoreError,
    },
    /// Every write was staged, but making one visible failed: the objects
    /// before it were applied, it and those after were not.
    #[error(
        "error: writing {} to {}: {}\napplied: {}\nnot applied: {}",
        keys(.failed),
        .source.path().display(),
        .source.reason(),
        applied_list(.applied),
        keys(.not_applied)
    )]
    Partial {
        /// The objects whose write failed.
        failed: Vec<ObjectKey>,
        /// Where and why.
        source: SecretStoreError,
        /// What was applied (or was already as asked).
        applied: Vec<Applied>,
        /// What was not: the failed objects and every one after them.
        not_applied: Vec<ObjectKey>,
    },
}

fn invalid_lines(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(|e| format!("error: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn keys(keys: &[ObjectKey]) -> String {
    keys.iter()
        .map(ObjectKey::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn applied_list(applied: &[Applied]) -> String {
    if applied.is_empty() {
        return "nothing".to_string();
    }
    applied
        .iter()
        .map(|a| format!("{} ({})", a.key, a.action))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_value(object: &Object) -> serde_json::Value {
    let value = match object {
        Object::Certificate(c) => serde_json::to_value(c),
        Object::Issuer(i) => serde_json::to_value(i),
        Object::ClusterIssuer(i) => serde_json::to_value(i),
        Object::TrustBundle(b) => serde_json::to_value(b),
        Object::Secret { .. } => unreachable!("Secrets are not kept as manifests"),
    };
    let mut value = value.expect("API objects serialise to JSON");
    if let Some(map) = value.as_object_mut() {
        // Status is the controller's, not the manifest's.
        map.remove("status");
    }
    value
}

/// The manifests directory in memory: every file's documents, and where
/// each object is defined. `apply` reads it once, edits it, and writes only
/// the files it changed.
struct Index {
    files: BTreeMap<PathBuf, Vec<serde_json::Value>>,
    objects: std::collections::HashMap<ObjectKey, (PathBuf, usize)>,
    /// The files to rewrite, with the objects that changed in each.
    changed: BTreeMap<PathBuf, Vec<ObjectKey>>,
}

impl Index {
    fn load(dir: &Path, default_namespace: &str) -> Self {
        let mut index = Index {
            files: BTreeMap::new(),
            objects: std::collections::HashMap::new(),
            changed: BTreeMap::new(),
        };
        for path in manifest_files(dir) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // A file that does not parse is left alone; apply adds objects
            // beside it rather than rewriting what it cannot read.
            let Ok(objects) = parse(&path, &text, default_namespace, Checks::Structure) else {
                continue;
            };
            for (i, object) in objects.iter().enumerate() {
                index
                    .objects
                    .entry(object.key())
                    .or_insert((path.clone(), i));
            }
            index
                .files
                .insert(path, objects.iter().map(to_value).collect());
        }
        index
    }

    /// Puts `object` in the file that already defines it, or a new file.
    fn upsert(&mut self, dir: &Path, object: &Object) -> &'static str {
        let key = object.key();
        let value = to_value(object);
        if let Some((path, i)) = self.objects.get(&key) {
            let docs = self.files.get_mut(path).expect("indexed files are loaded");
            if docs[*i] == value {
                return "unchanged";
            }
            docs[*i] = value;
            self.mark_changed(path.clone(), key);
            return "configured";
        }
        // New objects are stored as JSON, which the controller reads about
        // ten times faster than YAML; files already there keep their
        // syntax.
        let file_name = if key.namespace.is_empty() {
            format!("{}.{}.json", key.kind.to_lowercase(), key.name)
        } else {
            format!(
                "{}.{}.{}.json",
                key.kind.to_lowercase(),
                key.namespace,
                key.name
            )
        };
        let path = dir.join(file_name);
        let docs = self.files.entry(path.clone()).or_default();
        docs.push(value);
        self.objects
            .insert(key.clone(), (path.clone(), docs.len() - 1));
        self.mark_changed(path, key);
        "created"
    }

    fn mark_changed(&mut self, path: PathBuf, key: ObjectKey) {
        let keys = self.changed.entry(path).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
}
