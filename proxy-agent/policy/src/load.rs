//! Reading YAML manifests into typed objects: one document at a time,
//! each checked for its kind, version and fields, nothing yet resolved.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::PolicyError;
use crate::manifest::{
    AuthorizationPolicySpec, GATEWAY_GROUP, HttpRouteSpec, MeshTlsAuthenticationSpec, Meta,
    NetworkAuthenticationSpec, POLICY_GROUP, ServerSpec,
};

/// Where a parsed object came from, for errors.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    file: PathBuf,
    document: usize,
    object: String,
}

impl Origin {
    pub(crate) fn error(&self, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            document: self.document,
            object: Some(self.object.clone()),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Parsed<T> {
    /// The API group of its `apiVersion`.
    pub(crate) group: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) origin: Origin,
    pub(crate) spec: T,
}

/// The manifests of one load, parsed but not yet resolved.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub(crate) servers: Vec<Parsed<ServerSpec>>,
    pub(crate) policies: Vec<Parsed<AuthorizationPolicySpec>>,
    pub(crate) mesh_tls: Vec<Parsed<MeshTlsAuthenticationSpec>>,
    pub(crate) networks: Vec<Parsed<NetworkAuthenticationSpec>>,
    pub(crate) routes: Vec<Parsed<HttpRouteSpec>>,
    pub(crate) errors: Vec<PolicyError>,
}

impl Manifests {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the documents of one YAML stream read from `file`. Kinds that
    /// are not policy (Deployments, ServiceAccounts...) are skipped, so a
    /// whole application manifest can be given.
    pub fn add_yaml(&mut self, file: &Path, text: &str) {
        let documents: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
            Ok(docs) => docs,
            Err(e) => {
                self.errors.push(PolicyError {
                    file: file.to_path_buf(),
                    document: 0,
                    object: None,
                    field: None,
                    message: format!("not valid YAML: {e}"),
                });
                return;
            }
        };
        for (i, doc) in documents.into_iter().enumerate() {
            if !doc.is_null() {
                self.add_document(file, i + 1, doc);
            }
        }
    }

    // `add_dir` is in `dir`, `build` in `compile`.

    fn add_document(&mut self, file: &Path, document: usize, doc: serde_json::Value) {
        let text = |field: &str| doc.get(field).and_then(|v| v.as_str()).map(str::to_string);
        let fail = |field: Option<&str>, message: String| PolicyError {
            file: file.to_path_buf(),
            document,
            object: None,
            field: field.map(str::to_string),
            message,
        };
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            self.errors.push(fail(
                None,
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
            return;
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let versions = match (group, kind.as_str()) {
            (POLICY_GROUP, "ServerAuthorization") => {
                self.errors.push(fail(
                    Some("kind"),
                    "ServerAuthorization is Linkerd's deprecated form; write an AuthorizationPolicy with requiredAuthenticationRefs instead".into(),
                ));
                return;
            }
            (group, kind) => match versions_read(group, kind) {
                Some(versions) => versions,
                None if group == POLICY_GROUP => {
                    self.errors.push(fail(
                        Some("kind"),
                        format!("`{kind}` is not a policy kind Lanyard knows (Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPRoute)"),
                    ));
                    return;
                }
                // Not policy: skipped.
                None => return,
            },
        };
        if !versions.contains(&version) {
            let named: Vec<String> = versions.iter().map(|v| format!("`{group}/{v}`")).collect();
            let fix = match named.as_slice() {
                [one] => format!("use {one}"),
                many => format!("use one of {}", many.join(", ")),
            };
            self.errors.push(fail(
                Some("apiVersion"),
                format!("`{api_version}` is not a version of {kind} that Lanyard reads; {fix}"),
            ));
            return;
        }
        let meta: Meta = match doc.get("metadata").cloned().map(serde_json::from_value) {
            Some(Ok(meta)) => meta,
            Some(Err(e)) => {
                self.errors.push(fail(Some("metadata"), e.to_string()));
                return;
            }
            None => {
                self.errors
                    .push(fail(Some("metadata.name"), "missing".into()));
                return;
            }
        };
        let namespace = meta.namespace.unwrap_or_else(|| "default".into());
        let origin = Origin {
            file: file.to_path_buf(),
            document,
            object: format!("{kind} {namespace}/{}", meta.name),
        };
        let spec = doc.get("spec").cloned().unwrap_or(serde_json::Value::Null);
        macro_rules! push {
            ($list:ident) => {
                match typed(spec) {
                    Ok(spec) => self.$list.push(Parsed {
                        group: group.to_string(),
                        namespace,
                        name: meta.name,
                        origin,
                        spec,
                    }),
                    Err((field, message)) => self.errors.push(origin.error(&field, message)),
                }
            };
        }
        match kind.as_str() {
            "Server" => push!(servers),
            "AuthorizationPolicy" => push!(policies),
            "MeshTLSAuthentication" => push!(mesh_tls),
            "NetworkAuthentication" => push!(networks),
            _ => push!(routes),
        }
    }
}

type FieldError = (String, String);

fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

/// The versions of `group`'s `kind` that Lanyard reads, or `None` when it
/// is not a policy kind. Linkerd serves its authentication and
/// authorization kinds only as `v1alpha1`, though guides often write
/// `v1beta1`; a refusal names these so the fix is in the message.
pub fn versions_read(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        (POLICY_GROUP, "Server") => Some(&["v1beta1", "v1beta2", "v1beta3"]),
        (
            POLICY_GROUP,
            "AuthorizationPolicy" | "MeshTLSAuthentication" | "NetworkAuthentication",
        ) => Some(&["v1alpha1"]),
        (POLICY_GROUP, "HTTPRoute") => Some(&["v1alpha1", "v1beta1", "v1beta2", "v1beta3"]),
        (GATEWAY_GROUP, "HTTPRoute") => Some(&["v1", "v1beta1"]),
        _ => None,
    }
}
