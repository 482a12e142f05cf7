//! `v1.Secret` <-> [`SecretData`]: the Kubernetes shell's side of the
//! Secret the core reads and writes.

use std::collections::BTreeMap;

use ::kube::api::{Api, PostParams};
use ::kube::{Client, Resource};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use lanyard_crds::api::Certificate;

use super::cache::{MANAGED_LABEL, MANAGED_LABEL_VALUE};
use super::context::Error;
use crate::secret::{MANAGED_KEYS, SecretData};

/// The type a Secret the controller creates gets, as cert-manager's do.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// What the core needs of a `v1.Secret`: its data (base64 on the wire,
/// bytes here), labels and annotations. `stringData` is write-only and
/// never comes back from the API server, so it is not read.
pub fn secret_data(secret: &Secret) -> SecretData {
    SecretData {
        data: secret
            .data
            .iter()
            .flatten()
            .map(|(key, value)| (key.clone(), value.0.clone()))
            .collect(),
        labels: secret.metadata.labels.clone().unwrap_or_default(),
        annotations: secret.metadata.annotations.clone().unwrap_or_default(),
    }
}

/// [`SecretData`]'s keys as a `v1.Secret`'s `data`.
pub(super) fn to_data(secret: &SecretData) -> BTreeMap<String, ByteString> {
    secret
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}

/// The Secret `namespace/name` read from the API server, or `None` when it
/// does not exist.
pub(super) async fn get_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, Error> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            what: format!("Secret `{namespace}/{name}`"),
            source,
        })
}

/// Creates the `kubernetes.io/tls` Secret `namespace/name` holding `data`
/// (its keys and annotations), as a new trust anchor's Secret is made:
/// `true` when made, `false` when a Secret of that name exists already,
/// which is kept as it is (creation never overwrites).
pub(super) async fn create_tls_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    data: &SecretData,
) -> Result<bool, Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            annotations: (!data.annotations.is_empty()).then(|| data.annotations.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_SECRET_TYPE.into()),
        data: Some(to_data(data)),
        ..Secret::default()
    };
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
    {
        Ok(_) => Ok(true),
        Err(::kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::ApplySecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// Why the Secret to apply cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppliedSecretError {
    /// The Certificate has no uid or name, so nothing can point at it as the
    /// Secret's owner (only an object read from the API server has both).
    #[error("Certificate `{0}` has no uid; an ownerReference needs one")]
    NoOwnerReference(String),
    /// The Certificate has no namespace.
    #[error("Certificate `{0}` has no namespace")]
    NoNamespace(String),
}

/// The server-side apply configuration for the Certificate's Secret.
///
/// It holds only what the controller manages: the keys in
/// [`MANAGED_KEYS`], the labels and annotations the core chose,
/// [`MANAGED_LABEL`] (which puts the Secret in the controller's cache), and an
/// ownerReference (controller=true) to the Certificate. Server-side apply
/// then leaves every other key, label and annotation to whoever wrote it,
/// as cert-manager does.
///
/// `existing_type` is the `type` of the Secret already there: `type` is
/// immutable, so the controller repeats it rather than fighting it; a new
/// Secret is `kubernetes.io/tls`.
pub fn applied_secret(
    certificate: &Certificate,
    issued: &SecretData,
    existing_type: Option<&str>,
) -> Result<Secret, AppliedSecretError> {
    let name = certificate.metadata.name.clone().unwrap_or_default();
    let namespace = certificate
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| AppliedSecretError::NoNamespace(name.clone()))?;
    let owner = certificate
        .controller_owner_ref(&())
        .ok_or_else(|| AppliedSecretError::NoOwnerReference(name.clone()))?;
    let data: BTreeMap<String, ByteString> = issued
        .data
        .iter()
        .filter(|(key, _)| MANAGED_KEYS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), ByteString(value.clone())))
        .collect();
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    let mut labels = issued.labels.clone();
    labels.insert(MANAGED_LABEL.to_string(), MANAGED_LABEL_VALUE.to_string());
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(certificate.spec.secret_name.clone()),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: non_empty(&issued.annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some(existing_type.unwrap_or(TLS_SECRET_TYPE).to_string()),
        ..Secret::default()
    })
}

/// The reason a Certificate gets when its Secret is controlled by another
/// object.
pub const SECRET_OWNER_CONFLICT: &str = "SecretOwnerConflict";

/// The object other than `certificate` that controls `secret`: an
/// ownerReference with `controller: true` and another uid. The API server
/// allows one controller per object, so the controller's apply (which
/// makes the Certificate the controller) would be refused with `Only one
/// reference can have Controller set to true`: cert-manager's Certificate
/// (with `--enable-certificate-owner-ref`), or an earlier Certificate of
/// the same name whose Secret is not yet collected.
pub fn foreign_controller<'a>(
    secret: &'a Secret,
    certificate: &Certificate,
) -> Option<&'a OwnerReference> {
    let ours = certificate.metadata.uid.as_deref();
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) != ours)
}

/// Whether `secret` is this Certificate's (it controls it) but lacks
/// [`MANAGED_LABEL`]: written before the label existed, so outside the
/// controller's cache until labelled.
pub fn needs_label(secret: &Secret, certificate: &Certificate) -> bool {
    let ours = certificate.metadata.uid.as_deref();
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(MANAGED_LABEL));
    !labelled
        && ours.is_some()
        && secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == ours)
}

/// Why the Certificate cannot write `secret`, which `owner` controls: the
/// Ready message, naming the owner and the way out.
pub fn owner_conflict_message(secret: &Secret, owner: &OwnerReference) -> String {
    let namespace = secret.metadata.namespace.as_deref().unwrap_or_default();
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let way_out = if owner.api_version.starts_with("cert-manager.io/") {
        "to hand it over, delete cert-manager's Certificate with `--cascade=orphan` \
         (the Secret and its certificate stay, the ownerReference goes), \
         or choose another spec.secretName"
    } else {
        "remove that ownerReference, or choose another spec.secretName"
    };
    format!(
        "Secret `{namespace}/{name}` is controlled by {} {} `{}` (uid {}), and an object has \
         only one controller; it was not written: {way_out}",
        owner.api_version, owner.kind, owner.name, owner.uid
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::api::{CertificateSpec, IssuerRef};

    fn certificate() -> Certificate {
        let mut spec = CertificateSpec::new(
            "web-tls",
            IssuerRef {
                name: "ca".into(),
                kind: None,
                group: None,
            },
        );
        spec.common_name = Some("web".into());
        let mut cert = Certificate::new("web", spec);
        cert.metadata.namespace = Some("apps".into());
        cert.metadata.uid = Some("0b5e-uid".into());
        cert
    }

    #[test]
    fn the_applied_secret_holds_only_managed_keys_and_an_owner() {
        let mut issued = SecretData::default();
        for key in ["tls.crt", "tls.key", "ca.crt", "someone-elses"] {
            issued.data.insert(key.into(), key.as_bytes().to_vec());
        }
        issued
            .annotations
            .insert("lanyard.dev/issuer-name".into(), "ca".into());
        let secret = applied_secret(&certificate(), &issued, None).unwrap();
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(secret.metadata.name.as_deref(), Some("web-tls"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            secret.metadata.labels,
            Some([(MANAGED_LABEL.to_string(), "true".to_string())].into())
        );
        assert_eq!(secret.type_.as_deref(), Some(TLS_SECRET_TYPE));
        let owners = secret.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Certificate");
        assert_eq!(owners[0].uid, "0b5e-uid");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn an_existing_secret_keeps_its_type() {
        let secret =
            applied_secret(&certificate(), &SecretData::default(), Some("Opaque")).unwrap();
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    }

    #[test]
    fn a_certificate_without_uid_cannot_own_a_secret() {
        let mut cert = certificate();
        cert.metadata.uid = None;
        assert_eq!(
            applied_secret(&cert, &SecretData::default(), None),
            Err(AppliedSecretError::NoOwnerReference("web".into()))
        );
    }

    fn owned_by(api_version: &str, kind: &str, name: &str, uid: &str, controller: bool) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("web-tls".into()),
                namespace: Some("apps".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn only_another_objects_controller_reference_is_a_conflict() {
        let cert = certificate();
        let cases = [
            (
                "cert-manager's Certificate controls it",
                owned_by("cert-manager.io/v1", "Certificate", "web", "cm-uid", true),
                true,
            ),
            (
                "an earlier Certificate of the same name controls it",
                owned_by("lanyard.dev/v1", "Certificate", "web", "old-uid", true),
                true,
            ),
            (
                "this Certificate controls it",
                owned_by("lanyard.dev/v1", "Certificate", "web", "0b5e-uid", true),
                false,
            ),
            (
                "another object owns it without controlling it",
                owned_by("v1", "ConfigMap", "notes", "cm-uid", false),
                false,
            ),
            ("nobody owns it", Secret::default(), false),
        ];
        for (sentence, secret, conflict) in cases {
            assert_eq!(
                foreign_controller(&secret, &cert).is_some(),
                conflict,
                "{sentence}"
            );
        }
        let secret = owned_by("cert-manager.io/v1", "Certificate", "web", "cm-uid", true);
        let message = owner_conflict_message(&secret, foreign_controller(&secret, &cert).unwrap());
        assert!(
            message.contains("Secret `apps/web-tls` is controlled by cert-manager.io/v1 Certificate `web` (uid cm-uid)"),
            "{message}"
        );
        assert!(message.contains("--cascade=orphan"), "{message}");
    }

    #[test]
    fn reading_a_secret_keeps_data_labels_and_annotations() {
        let secret = Secret {
            metadata: ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                annotations: Some([("note".to_string(), "x".to_string())].into()),
                ..ObjectMeta::default()
            },
            data: Some([("tls.crt".to_string(), ByteString(b"PEM".to_vec()))].into()),
            ..Secret::default()
        };
        let data = secret_data(&secret);
        assert_eq!(data.get("tls.crt"), Some(&b"PEM"[..]));
        assert_eq!(data.labels["app"], "web");
        assert_eq!(data.annotation("note"), Some("x"));
    }
}
