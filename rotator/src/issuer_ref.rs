//! Which issuer a Certificate's `issuerRef` names, and where that issuer's
//! CA Secret lives: the one answer both shells use to find an issuer, key
//! its signing material, label its metrics and map a CA Secret back to the
//! Certificates it signs for.
//!
//! cert-manager's rules: an `Issuer` is looked up in the Certificate's own
//! namespace and keeps its CA Secret there; a `ClusterIssuer` is
//! cluster-scoped and keeps its CA Secret in the cluster resource namespace
//! (`--cluster-resource-namespace`).

use lanyard_crds::api::{GROUP, IssuerKind, IssuerRef, SpecError};

/// Where ClusterIssuers' CA Secrets live unless configured otherwise
/// (cert-manager's `--cluster-resource-namespace`).
pub const DEFAULT_CLUSTER_RESOURCE_NAMESPACE: &str = "lanyard";

/// An issuer object and the namespace of its CA Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerTarget {
    /// Issuer or ClusterIssuer.
    pub kind: IssuerKind,
    /// The issuer's namespace; empty for a ClusterIssuer, as in the
    /// metrics' labels and the local store's keys.
    pub namespace: String,
    /// The issuer's name.
    pub name: String,
    /// Where its CA Secret is read from.
    pub secret_namespace: String,
}

impl IssuerTarget {
    /// Kind, namespace (empty for a ClusterIssuer) and name: how the
    /// shells key issuers.
    pub fn key(&self) -> (IssuerKind, String, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// `namespace/name` of an Issuer, the name of a ClusterIssuer: how
    /// errors and logs name it.
    pub fn qualified_name(&self) -> String {
        match self.kind {
            IssuerKind::Issuer => format!("{}/{}", self.namespace, self.name),
            IssuerKind::ClusterIssuer => self.name.clone(),
        }
    }
}

/// The issuer object `kind`/`namespace`/`name` with the namespace of its
/// CA Secret: an Issuer's own namespace, or `cluster_resource_namespace`
/// for a ClusterIssuer (whose `namespace` is ignored and recorded empty).
pub fn issuer_target(
    kind: IssuerKind,
    namespace: &str,
    name: &str,
    cluster_resource_namespace: &str,
) -> IssuerTarget {
    let (namespace, secret_namespace) = match kind {
        IssuerKind::Issuer => (namespace.to_string(), namespace.to_string()),
        IssuerKind::ClusterIssuer => (String::new(), cluster_resource_namespace.to_string()),
    };
    IssuerTarget {
        kind,
        namespace,
        name: name.to_string(),
        secret_namespace,
    }
}

/// The issuer that `issuer_ref`, written in a Certificate in `namespace`,
/// names. The kind defaults to `Issuer` and the group to `lanyard.dev`, as
/// cert-manager defaults them; a kind or group Lanyard does not serve
/// names no issuer, and comes back as the spec error that says so (the
/// same one [`CertificateSpec::validate`] reports).
///
/// [`CertificateSpec::validate`]: lanyard_crds::api::CertificateSpec::validate
pub fn resolve_issuer(
    namespace: &str,
    issuer_ref: &IssuerRef,
    cluster_resource_namespace: &str,
) -> Result<IssuerTarget, SpecError> {
    let kind = issuer_ref
        .issuer_kind()
        .ok_or_else(|| SpecError::IssuerKind(issuer_ref.kind.clone().unwrap_or_default()))?;
    if issuer_ref.group() != GROUP {
        return Err(SpecError::IssuerGroup(issuer_ref.group().to_string()));
    }
    Ok(issuer_target(
        kind,
        namespace,
        &issuer_ref.name,
        cluster_resource_namespace,
    ))
}

/// A Certificate `namespace/name` whose `issuerRef` names `issuer` of
/// `kind`, for the tests of everything that follows issuer references.
#[cfg(test)]
pub(crate) fn certificate_naming(
    namespace: &str,
    name: &str,
    issuer: &str,
    kind: Option<&str>,
) -> lanyard_crds::api::Certificate {
    let mut spec = lanyard_crds::api::CertificateSpec::new(
        format!("{name}-tls"),
        IssuerRef {
            name: issuer.into(),
            kind: kind.map(Into::into),
            group: None,
        },
    );
    spec.common_name = Some(name.into());
    let mut certificate = lanyard_crds::api::Certificate::new(name, spec);
    certificate.metadata.namespace = Some(namespace.into());
    certificate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer_ref(name: &str, kind: Option<&str>, group: Option<&str>) -> IssuerRef {
        IssuerRef {
            name: name.into(),
            kind: kind.map(Into::into),
            group: group.map(Into::into),
        }
    }

    fn target(kind: IssuerKind, namespace: &str, name: &str, secrets: &str) -> IssuerTarget {
        IssuerTarget {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            secret_namespace: secrets.into(),
        }
    }

    #[test]
    fn resolves_an_issuer_ref_as_cert_manager_does() {
        use IssuerKind::{ClusterIssuer, Issuer};
        let cases: [(&str, IssuerRef, Result<IssuerTarget, SpecError>); 9] = [
            (
                "a namespaced Issuer is found in the Certificate's namespace",
                issuer_ref("ca", Some("Issuer"), None),
                Ok(target(Issuer, "web", "ca", "web")),
            ),
            (
                "a reference without a kind names an Issuer",
                issuer_ref("ca", None, None),
                Ok(target(Issuer, "web", "ca", "web")),
            ),
            (
                "an empty kind names an Issuer",
                issuer_ref("ca", Some(""), None),
                Ok(target(Issuer, "web", "ca", "web")),
            ),
            (
                "a ClusterIssuer's CA Secret is in the cluster resource namespace",
                issuer_ref("anchor", Some("ClusterIssuer"), None),
                Ok(target(ClusterIssuer, "", "anchor", "lanyard")),
            ),
            (
                "the group lanyard.dev, written out, is the default group",
                issuer_ref("ca", None, Some("lanyard.dev")),
                Ok(target(Issuer, "web", "ca", "web")),
            ),
            (
                "an empty group is the default group",
                issuer_ref("anchor", Some("ClusterIssuer"), Some("")),
                Ok(target(ClusterIssuer, "", "anchor", "lanyard")),
            ),
            (
                "a kind Lanyard does not serve names no issuer",
                issuer_ref("ca", Some("AWSPCAIssuer"), None),
                Err(SpecError::IssuerKind("AWSPCAIssuer".into())),
            ),
            (
                "cert-manager's group names no issuer of ours",
                issuer_ref("ca", Some("ClusterIssuer"), Some("cert-manager.io")),
                Err(SpecError::IssuerGroup("cert-manager.io".into())),
            ),
            (
                "a kind that is not served is reported before a foreign group",
                issuer_ref("ca", Some("Vault"), Some("example.com")),
                Err(SpecError::IssuerKind("Vault".into())),
            ),
        ];
        for (name, issuer_ref, expected) in cases {
            assert_eq!(
                resolve_issuer("web", &issuer_ref, "lanyard"),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn names_and_keys_an_issuer_as_the_shells_do() {
        use IssuerKind::{ClusterIssuer, Issuer};
        let cases = [
            (
                "an Issuer is named with its namespace",
                issuer_target(Issuer, "web", "ca", "lanyard"),
                "web/ca",
                (Issuer, "web", "ca"),
            ),
            (
                "a ClusterIssuer is named alone and keyed without a namespace",
                issuer_target(ClusterIssuer, "ignored", "anchor", "lanyard"),
                "anchor",
                (ClusterIssuer, "", "anchor"),
            ),
        ];
        for (name, target, qualified, (kind, namespace, issuer)) in cases {
            assert_eq!(target.qualified_name(), qualified, "{name}");
            assert_eq!(
                target.key(),
                (kind, namespace.to_string(), issuer.to_string()),
                "{name}"
            );
        }
        assert_eq!(
            issuer_target(ClusterIssuer, "ignored", "anchor", "cert-system").secret_namespace,
            "cert-system",
            "a ClusterIssuer's CA Secret follows the configured namespace"
        );
    }
}
