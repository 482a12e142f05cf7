//! Manifests in the local store: parsing YAML streams into typed objects,
//! with errors that name the file, the document and the field; reading a
//! directory of them ([`load_dir`], [`ManifestCache`]); and `lanyard
//! apply` ([`apply`]), which validates everything before it writes
//! anything.

mod apply;
mod cache;

use std::fmt;
use std::path::{Path, PathBuf};

use lanyard_crds::api::{
    API_VERSION, Certificate, ClusterIssuer, Issuer, IssuerConfig, is_valid_object_name,
};
use lanyard_crds::quote::{excerpt, quoted};
use lanyard_crds::trust_bundle::TrustBundle;
use serde::de::DeserializeOwned;

use crate::secret::SecretData;

pub use apply::{Applied, ApplyError, apply};
pub use cache::{ManifestCache, load_dir, manifest_files};

/// One object from a manifest.
#[derive(Debug, Clone)]
pub enum Object {
    /// A Certificate.
    Certificate(Box<Certificate>),
    /// A namespaced Issuer.
    Issuer(Box<Issuer>),
    /// A ClusterIssuer.
    ClusterIssuer(Box<ClusterIssuer>),
    /// A TrustBundle (cluster-scoped).
    TrustBundle(Box<TrustBundle>),
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
    /// `Certificate`, `Issuer`, `ClusterIssuer`, `TrustBundle` or `Secret`.
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
            Object::TrustBundle(b) => ("TrustBundle", None, b.metadata.name.clone()),
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

/// Parses a YAML stream, or a JSON stream when `file` ends in `.json`
/// (what `lanyard apply` writes). Every document must be usable; all errors are
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
    let documents = if is_json_file(file) {
        json_documents(text).map_err(|e| format!("not valid JSON: {}", excerpt(&e)))
    } else {
        serde_saphyr::from_multiple::<serde_json::Value>(text)
            .map_err(|e| format!("not valid YAML: {}", excerpt(&e.to_string())))
    };
    let documents = match documents {
        Ok(docs) => docs,
        Err(message) => return Err(vec![error(0, None, message)]),
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

/// The most documents one file may hold, in either syntax: serde-saphyr's
/// default guard against document storms, applied to JSON streams too.
const MAX_DOCUMENTS: usize = 1024;

/// Whether `file` is read as JSON (a stream of JSON values, as `lanyard
/// apply` stores objects) rather than YAML. JSON is also YAML, but a JSON
/// parser reads it about ten times faster.
fn is_json_file(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "json")
}

/// The values of a JSON stream (whitespace between them), at most
/// [`MAX_DOCUMENTS`]; nesting is bounded by serde_json's recursion limit.
fn json_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut documents = Vec::new();
    for document in serde_json::Deserializer::from_str(text).into_iter() {
        if documents.len() == MAX_DOCUMENTS {
            return Err(format!("more than {MAX_DOCUMENTS} documents in one file"));
        }
        documents.push(document.map_err(|e| e.to_string())?);
    }
    Ok(documents)
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
        (API_VERSION, "TrustBundle") => Object::TrustBundle(Box::new(typed(doc)?)),
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
                    "{} is not a {API_VERSION} kind (Certificate, Issuer, ClusterIssuer, TrustBundle)",
                    quoted(other)
                ),
            ));
        }
        (other, kind) => {
            return Err((
                Some("apiVersion".into()),
                format!(
                    "{} {} is not served here; Lanyard takes {API_VERSION} Certificate, Issuer, ClusterIssuer and TrustBundle, and v1 Secret",
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
        Object::TrustBundle(b) => (b.metadata.name.clone(), None),
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
        Object::TrustBundle(b) => b.spec.validate().map_err(|e| (None, e))?,
        Object::Secret { .. } => {}
    }
    Ok(object)
}

fn validate_issuer(config: &IssuerConfig) -> Result<(), DocError> {
    config
        .validate()
        .map_err(|message| (Some("spec".into()), message))
}

/// A JSON stream for a list of documents, one indented document after
/// another: how `lanyard apply` stores objects (see [`is_json_file`]).
fn to_json_stream(values: &[serde_json::Value]) -> Result<String, String> {
    let mut out = String::new();
    for value in values {
        out.push_str(&serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
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
