//! Manifests in the local store: parsing YAML streams into typed objects,
//! with errors that name the file, the document and the field, and
//! `lanyard apply`, which validates everything before it writes anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lanyard_crds::api::{
    API_VERSION, Certificate, ClusterIssuer, Issuer, IssuerConfig, is_valid_object_name,
};
use lanyard_crds::quote::{excerpt, quoted};
use serde::de::DeserializeOwned;

use super::secrets::{
    Durability, SecretStore, SecretStoreError, StagedFile, StagedSecret, stage_file,
};
use crate::secret::SecretData;

/// One object from a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    /// A Certificate.
    Certificate(Box<Certificate>),
    /// A namespaced Issuer.
    Issuer(Box<Issuer>),
    /// A ClusterIssuer.
    ClusterIssuer(Box<ClusterIssuer>),
    /// A `v1` Secret (`kubectl create secret tls ... -o yaml` output).
    Secret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Contents.
        data: SecretData,
    },
}

/// Which object: kind, namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `Certificate`, `Issuer`, `ClusterIssuer` or `Secret`.
    pub kind: &'static str,
    /// Namespace; empty for a ClusterIssuer.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Certificate(c) => (
                "Certificate",
                c.metadata.namespace.clone(),
                c.metadata.name.clone(),
            ),
            Object::Issuer(i) => (
                "Issuer",
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            ),
            Object::ClusterIssuer(i) => ("ClusterIssuer", None, i.metadata.name.clone()),
            Object::Secret {
                namespace, name, ..
            } => ("Secret", Some(namespace.clone()), Some(name.clone())),
        };
        ObjectKey {
            kind,
            namespace: namespace.unwrap_or_default(),
            name: name.unwrap_or_default(),
        }
    }
}

/// A manifest that cannot be used: which file, which document (1-based),
/// which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// The document in the file, counting from 1; 0 when the YAML stream
    /// itself does not parse.
    pub document: usize,
    /// The field at fault, as a path like `spec.renewBefore`.
    pub field: Option<String>,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// How much of an object [`parse`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checks {
    /// Shape, names and every spec rule, as the API server's schema and CEL
    /// rules would: what `lanyard apply` refuses.
    Admission,
    /// Shape and names only. The controller loads objects this way, so a
    /// Certificate with a bad spec that reached the store anyway is still
    /// seen, and gets `Ready=False` with the reason.
    Structure,
}

/// Parses a YAML stream. Every document must be usable; all errors are
/// returned together. Empty documents are skipped. Namespaced objects
/// without a namespace get `default_namespace`, as kubectl does.
pub fn parse(
    file: &Path,
    text: &str,
    default_namespace: &str,
    checks: Checks,
) -> Result<Vec<Object>, Vec<ManifestError>> {
    let error = |document, field: Option<&str>, message: String| ManifestError {
        file: file.to_path_buf(),
        document,
        field: field.map(str::to_string),
        message,
    };
    let documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            let message = format!("not valid YAML: {}", excerpt(&e.to_string()));
            return Err(vec![error(0, None, message)]);
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in documents.into_iter().enumerate() {
        let document = i + 1;
        if doc.is_null() {
            continue;
        }
        match parse_document(doc, default_namespace, checks) {
            Ok(object) => objects.push(object),
            Err((field, message)) => errors.push(error(document, field.as_deref(), message)),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

type DocError = (Option<String>, String);

fn typed<T: DeserializeOwned>(doc: serde_json::Value) -> Result<T, DocError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        // Both can repeat input: map keys in the path, values in serde's
        // message (`invalid type: string "..."`, `unknown variant ...`).
        let path = e.path().to_string();
        let field = (path != ".").then(|| excerpt(&path).to_string());
        (field, excerpt(&e.into_inner().to_string()).to_string())
    })
}

fn parse_document(
    doc: serde_json::Value,
    default_namespace: &str,
    checks: Checks,
) -> Result<Object, DocError> {
    let text = |field: &str| doc.get(field).and_then(|v| v.as_str()).map(str::to_string);
    let api_version = text("apiVersion").ok_or((
        Some("apiVersion".into()),
        "missing; Lanyard's kinds are `apiVersion: lanyard.dev/v1`".into(),
    ))?;
    let kind = text("kind").ok_or((Some("kind".into()), "missing".into()))?;
    let mut object = match (api_version.as_str(), kind.as_str()) {
        (API_VERSION, "Certificate") => Object::Certificate(Box::new(typed(doc)?)),
        (API_VERSION, "Issuer") => Object::Issuer(Box::new(typed(doc)?)),
        (API_VERSION, "ClusterIssuer") => Object::ClusterIssuer(Box::new(typed(doc)?)),
        ("v1", "Secret") => {
            let secret: k8s_openapi::api::core::v1::Secret = typed(doc)?;
            let mut data = SecretData::default();
            for (key, value) in secret.data.unwrap_or_default() {
                data.data.insert(key, value.0);
            }
            for (key, value) in secret.string_data.unwrap_or_default() {
                data.data.insert(key, value.into_bytes());
            }
            data.labels = secret.metadata.labels.unwrap_or_default();
            data.annotations = secret.metadata.annotations.unwrap_or_default();
            Object::Secret {
                namespace: secret.metadata.namespace.unwrap_or_default(),
                name: secret.metadata.name.unwrap_or_default(),
                data,
            }
        }
        ("cert-manager.io/v1", _) => {
            return Err((
                Some("apiVersion".into()),
                format!(
                    "`cert-manager.io/v1` is cert-manager's API; change it to `{API_VERSION}` and the {} applies unchanged",
                    excerpt(&kind)
                ),
            ));
        }
        (API_VERSION, other) => {
            return Err((
                Some("kind".into()),
                format!(
                    "{} is not a {API_VERSION} kind (Certificate, Issuer, ClusterIssuer)",
                    quoted(other)
                ),
            ));
        }
        (other, kind) => {
            return Err((
                Some("apiVersion".into()),
                format!(
                    "{} {} is not served here; Lanyard takes {API_VERSION} Certificate, Issuer and ClusterIssuer, and v1 Secret",
                    quoted(other),
                    quoted(kind)
                ),
            ));
        }
    };
    // Names and namespaces, defaulted and checked as the API server would.
    let (name, namespace) = match &mut object {
        Object::Certificate(c) => (c.metadata.name.clone(), Some(&mut c.metadata.namespace)),
        Object::Issuer(i) => (i.metadata.name.clone(), Some(&mut i.metadata.namespace)),
        Object::ClusterIssuer(i) => (i.metadata.name.clone(), None),
        Object::Secret {
            namespace, name, ..
        } => {
            if namespace.is_empty() {
                *namespace = default_namespace.to_string();
            }
            (Some(name.clone()).filter(|n| !n.is_empty()), None)
        }
    };
    match name {
        Some(name) if is_valid_object_name(&name) => {}
        Some(name) => {
            return Err((
                Some("metadata.name".into()),
                format!(
                    "{} is not a valid name (lower-case letters, digits, '-' and '.', at most 253)",
                    quoted(&name)
                ),
            ));
        }
        None => return Err((Some("metadata.name".into()), "missing".into())),
    }
    if let Some(namespace) = namespace {
        let ns = namespace.get_or_insert_with(|| default_namespace.to_string());
        if !is_valid_object_name(ns) {
            return Err((
                Some("metadata.namespace".into()),
                format!("{} is not a valid namespace", quoted(ns)),
            ));
        }
    }
    if let Object::Secret { namespace, .. } = &object
        && !is_valid_object_name(namespace)
    {
        return Err((
            Some("metadata.namespace".into()),
            format!("{} is not a valid namespace", quoted(namespace)),
        ));
    }
    if checks == Checks::Structure {
        return Ok(object);
    }
    match &object {
        Object::Certificate(c) => c.spec.validate().map_err(|e| (None, e.to_string()))?,
        Object::Issuer(i) => validate_issuer(&i.spec.config)?,
        Object::ClusterIssuer(i) => validate_issuer(&i.spec.config)?,
        Object::Secret { .. } => {}
    }
    Ok(object)
}

fn validate_issuer(config: &IssuerConfig) -> Result<(), DocError> {
    config
        .validate()
        .map_err(|message| (Some("spec".into()), message))
}

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
        let parsed = super::parallel_map(stale, |(path, stamp)| {
            let parsed = parse_file(&path, default_namespace);
            (path, stamp, parsed)
        });
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
        let yaml = to_yaml_stream(&index.files[path]).map_err(|reason| {
            stage_error(SecretStoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(reason),
            })
        })?;
        let file = stage_file(path, yaml.as_bytes(), 0o644, flush).map_err(stage_error)?;
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
        let file_name = if key.namespace.is_empty() {
            format!("{}.{}.yaml", key.kind.to_lowercase(), key.name)
        } else {
            format!(
                "{}.{}.{}.yaml",
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

/// YAML for a list of documents.
pub fn to_yaml_stream(values: &[serde_json::Value]) -> Result<String, String> {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(value).map_err(|e| e.to_string())?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
