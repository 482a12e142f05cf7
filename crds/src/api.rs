//! The Kubernetes API types: `Certificate`, `Issuer` and `ClusterIssuer` in
//! the group `lanyard.dev`, version `v1`, with cert-manager's field names and
//! meaning so a cert-manager manifest applies with only `apiVersion` changed.
//!
//! The CRD schemas carry the checks the API server can make (CEL rules,
//! enums, ranges); [`CertificateSpec::validate`] makes the same checks and
//! the ones CEL cannot, in the controller, with messages that name the field.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::quote::quoted;
use crate::usage::{KeyUsage, PrivateKeyAlgorithm, RotationPolicy};

/// The API group of Lanyard's own kinds.
pub const GROUP: &str = "lanyard.dev";
/// The version of Lanyard's own kinds.
pub const VERSION: &str = "v1";
/// `lanyard.dev/v1`, as written in `apiVersion`.
pub const API_VERSION: &str = "lanyard.dev/v1";
/// cert-manager's default `duration`: 90 days.
pub const DEFAULT_DURATION: GoDuration = GoDuration::from_hours(2_160);
/// The shortest `duration` accepted, as cert-manager's webhook requires.
pub const MIN_DURATION: GoDuration = GoDuration::from_hours(1);
/// The shortest `renewBefore` accepted, as cert-manager's webhook requires.
pub const MIN_RENEW_BEFORE: GoDuration = GoDuration::from_secs(300);

/// A desired X.509 certificate, kept valid by the controller: issued into
/// the Secret `secretName` and renewed before it expires.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lanyard.dev",
    version = "v1",
    kind = "Certificate",
    namespaced,
    status = "CertificateStatus",
    shortname = "cert",
    shortname = "certs",
    category = "lanyard",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuerRef.name","priority":1}"#,
    // Times to come as timestamps: kubectl renders a `date` column as an
    // age, which for a future time is `<invalid>`.
    printcolumn = r#"{"name":"NotAfter","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renewal","type":"string","jsonPath":".status.renewalTime","priority":1}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))")
        .message("renewBefore and renewBeforePercentage are mutually exclusive; set one"),
    validation = Rule::new("has(self.commonName) || (has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.uris) && size(self.uris) > 0)")
        .message("at least one of commonName, dnsNames or uris must be set"),
    validation = Rule::new("!has(self.duration) || duration(self.duration) >= duration('1h')")
        .message("duration must be at least 1h"),
    validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < (has(self.duration) ? duration(self.duration) : duration('2160h'))")
        .message("renewBefore must be shorter than duration (default 2160h)")
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The Secret the certificate is written to (`tls.crt`, `tls.key`,
    /// `ca.crt`), in the Certificate's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("secretName must not be empty"))]
    pub secret_name: String,
    /// The subject common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// URI subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// Requested lifetime (Go syntax, at least `1h`); default `2160h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<GoDuration>,
    /// Renew this long before the certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<GoDuration>,
    /// Renew when this percentage of the lifetime remains (1 to 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,
    /// Whether the certificate is a CA (it then also gets `cert sign`).
    #[serde(default, rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    /// Key usages and extended key usages; default `digital signature`
    /// (and `key encipherment` for RSA keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<KeyUsage>,
    /// The private key to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    /// The issuer that signs the certificate.
    pub issuer_ref: IssuerRef,
    /// Labels and annotations copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
}

/// `spec.privateKey`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    /// `RSA`, `ECDSA` (default) or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<PrivateKeyAlgorithm>,
    /// Key size: RSA bits, or the ECDSA curve size (256 or 384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // `uint32` is no format Kubernetes knows (the API server warns).
    #[schemars(extend("format" = "int32"))]
    pub size: Option<u32>,
    /// `Always` (default) makes a new key at every issuance; `Never`
    /// keeps the existing key while it fits the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

/// `spec.issuerRef`: which issuer signs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    pub name: String,
    /// `Issuer` (default, same namespace) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `lanyard.dev` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The kind of issuer a reference names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    /// A namespaced `Issuer`, in the Certificate's namespace.
    Issuer,
    /// A `ClusterIssuer`.
    ClusterIssuer,
}

impl IssuerKind {
    /// The kind as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

impl fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl IssuerRef {
    /// The kind, defaulted as cert-manager does (`Issuer`); `None` when the
    /// kind is not one Lanyard serves.
    pub fn issuer_kind(&self) -> Option<IssuerKind> {
        match self.kind.as_deref() {
            None | Some("") | Some("Issuer") => Some(IssuerKind::Issuer),
            Some("ClusterIssuer") => Some(IssuerKind::ClusterIssuer),
            Some(_) => None,
        }
    }

    /// The group, defaulted to `lanyard.dev`.
    pub fn group(&self) -> &str {
        match self.group.as_deref() {
            None | Some("") => GROUP,
            Some(group) => group,
        }
    }
}

/// `spec.secretTemplate`: metadata copied onto the Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretTemplate {
    /// Labels for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the controller last did with a Certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `Ready` and `Issuing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Start of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// When the current certificate will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<DateTime<Utc>>,
    /// How many times a certificate has been issued for this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the last issuance failed; cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<DateTime<Utc>>,
    /// Failed issuances since the last success; drives the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i64>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `Issuing`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
    /// The resource generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// Whether `status` is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Sets condition `new` in `conditions`, keeping the old transition time
/// when the status did not change, as `meta.SetStatusCondition` does.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.or(new.last_transition_time);
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// The configuration shared by `Issuer` and `ClusterIssuer`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.ca) != has(self.selfSigned)")
        .message("exactly one of ca or selfSigned must be set")
)]
#[serde(rename_all = "camelCase")]
pub struct IssuerConfig {
    /// Sign with the CA in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Sign each certificate with its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
}

/// `spec.ca`: the signing CA lives in a Secret holding `tls.crt` (the CA
/// certificate, optionally followed by its chain), `tls.key`, and
/// optionally `ca.crt` (the root it chains to).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    /// The Secret's name: in the Issuer's namespace, or for a
    /// ClusterIssuer in the controller's cluster resource namespace.
    pub secret_name: String,
}

/// `spec.selfSigned`: each certificate is signed by its own key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SelfSignedIssuer {}

/// An issuer in one namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lanyard.dev",
    version = "v1",
    kind = "Issuer",
    namespaced,
    status = "IssuerStatus",
    category = "lanyard",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct IssuerSpec {
    /// How this issuer signs.
    #[serde(flatten)]
    pub config: IssuerConfig,
}

/// An issuer for every namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lanyard.dev",
    version = "v1",
    kind = "ClusterIssuer",
    status = "IssuerStatus",
    category = "lanyard",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterIssuerSpec {
    /// How this issuer signs.
    #[serde(flatten)]
    pub config: IssuerConfig,
}

/// An issuer's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IssuerStatus {
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The CRD documents for every kind, in a stable order, as `lanyard crds`
/// prints them and `crds/*.yaml` holds them.
pub fn custom_resource_definitions()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        Certificate::crd(),
        Issuer::crd(),
        ClusterIssuer::crd(),
        crate::trust_bundle::TrustBundle::crd(),
    ]
}

/// One thing wrong with a Certificate's spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `secretName` is empty or not a valid Secret name.
    #[error(
        "spec.secretName {} is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253)",
        quoted(.0)
    )]
    SecretName(String),
    /// None of commonName, dnsNames, uris.
    #[error("at least one of spec.commonName, spec.dnsNames or spec.uris must be set")]
    NoSubject,
    /// commonName longer than X.509 allows.
    #[error("spec.commonName is {0} characters; X.509 allows at most 64")]
    CommonNameTooLong(usize),
    /// A DNS name that cannot go in a certificate.
    #[error("spec.dnsNames[{index}] {} is not a DNS name", quoted(.name))]
    DnsName {
        /// Position in the list.
        index: usize,
        /// The value.
        name: String,
    },
    /// A URI without a scheme.
    #[error(
        "spec.uris[{index}] {} is not a URI (expected scheme:rest, e.g. spiffe://...)",
        quoted(.uri)
    )]
    Uri {
        /// Position in the list.
        index: usize,
        /// The value.
        uri: String,
    },
    /// `duration` under an hour.
    #[error("spec.duration {0} is too short: at least 1h")]
    DurationTooShort(GoDuration),
    /// `renewBefore` under five minutes.
    #[error("spec.renewBefore {0} is too short: at least 5m")]
    RenewBeforeTooShort(GoDuration),
    /// `renewBefore` not shorter than `duration`.
    #[error("spec.renewBefore {renew_before} must be shorter than spec.duration {duration}")]
    RenewBeforeNotShorter {
        /// The renewBefore.
        renew_before: GoDuration,
        /// The (possibly default) duration.
        duration: GoDuration,
    },
    /// Both renewal knobs.
    #[error("spec.renewBefore and spec.renewBeforePercentage are mutually exclusive; set one")]
    BothRenewals,
    /// Percentage outside (0, 100).
    #[error("spec.renewBeforePercentage {0} must be between 1 and 99")]
    Percentage(i32),
    /// A key size the algorithm does not have.
    #[error("spec.privateKey.size {size} is not valid for {algorithm}: {allowed}")]
    KeySize {
        /// The algorithm.
        algorithm: PrivateKeyAlgorithm,
        /// The size given.
        size: u32,
        /// What is allowed.
        allowed: &'static str,
    },
    /// issuerRef without a name.
    #[error("spec.issuerRef.name must not be empty")]
    IssuerName,
    /// issuerRef kind not served.
    #[error(
        "spec.issuerRef.kind {} is not served here; use Issuer or ClusterIssuer",
        quoted(.0)
    )]
    IssuerKind(String),
    /// issuerRef group not ours.
    #[error(
        "spec.issuerRef.group {} is not served here; Lanyard's issuers are in `lanyard.dev` (omit the field or set it)",
        quoted(.0)
    )]
    IssuerGroup(String),
}

/// All that is wrong with a spec, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<SpecError>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn is_valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_uri(uri: &str) -> bool {
    match uri.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                && !uri
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        }
        None => false,
    }
}

impl CertificateSpec {
    /// A spec that names only its Secret and issuer; every other field at
    /// its default (as if omitted from the manifest).
    pub fn new(secret_name: impl Into<String>, issuer_ref: IssuerRef) -> Self {
        CertificateSpec {
            secret_name: secret_name.into(),
            common_name: None,
            dns_names: Vec::new(),
            uris: Vec::new(),
            duration: None,
            renew_before: None,
            renew_before_percentage: None,
            is_ca: false,
            usages: Vec::new(),
            private_key: None,
            issuer_ref,
            secret_template: None,
        }
    }

    /// The requested lifetime, defaulted.
    pub fn duration(&self) -> GoDuration {
        self.duration.unwrap_or(DEFAULT_DURATION)
    }

    /// The key algorithm, defaulted (`ECDSA`).
    pub fn key_algorithm(&self) -> PrivateKeyAlgorithm {
        self.private_key
            .as_ref()
            .and_then(|k| k.algorithm)
            .unwrap_or_default()
    }

    /// The key size, defaulted per algorithm (RSA 2048, ECDSA 256).
    pub fn key_size(&self) -> Option<u32> {
        let size = self.private_key.as_ref().and_then(|k| k.size);
        match self.key_algorithm() {
            PrivateKeyAlgorithm::Rsa => Some(size.unwrap_or(2048)),
            PrivateKeyAlgorithm::Ecdsa => Some(size.unwrap_or(256)),
            PrivateKeyAlgorithm::Ed25519 => None,
        }
    }

    /// The rotation policy, defaulted (`Always`).
    pub fn rotation_policy(&self) -> RotationPolicy {
        self.private_key
            .as_ref()
            .and_then(|k| k.rotation_policy)
            .unwrap_or_default()
    }

    /// The usages the certificate gets: the spec's (canonical, sorted,
    /// deduplicated), or the default, plus `cert sign` for a CA.
    pub fn effective_usages(&self) -> Vec<KeyUsage> {
        let mut usages: Vec<KeyUsage> = if self.usages.is_empty() {
            let mut defaults = vec![KeyUsage::DigitalSignature];
            if self.key_algorithm() == PrivateKeyAlgorithm::Rsa {
                defaults.push(KeyUsage::KeyEncipherment);
            }
            defaults
        } else {
            self.usages.iter().map(|u| u.canonical()).collect()
        };
        if self.is_ca {
            usages.push(KeyUsage::CertSign);
        }
        usages.sort();
        usages.dedup();
        usages
    }

    /// When to renew, relative to the certificate's end, if set by
    /// `renewBefore` or `renewBeforePercentage` for a lifetime `lifetime`.
    pub fn renew_before_for(&self, lifetime: TimeDelta) -> Option<TimeDelta> {
        if let Some(before) = self.renew_before {
            return Some(before.to_chrono());
        }
        self.renew_before_percentage
            .map(|pct| lifetime * pct.clamp(1, 99) / 100)
    }

    /// Every check the controller makes before acting on a Certificate;
    /// all problems are reported together.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut errors = Vec::new();
        if !is_valid_object_name(&self.secret_name) {
            errors.push(SpecError::SecretName(self.secret_name.clone()));
        }
        let common_name = self.common_name.as_deref().filter(|cn| !cn.is_empty());
        if common_name.is_none() && self.dns_names.is_empty() && self.uris.is_empty() {
            errors.push(SpecError::NoSubject);
        }
        if let Some(cn) = common_name {
            let len = cn.chars().count();
            if len > 64 {
                errors.push(SpecError::CommonNameTooLong(len));
            }
        }
        for (index, name) in self.dns_names.iter().enumerate() {
            if !is_dns_name(name) {
                errors.push(SpecError::DnsName {
                    index,
                    name: name.clone(),
                });
            }
        }
        for (index, uri) in self.uris.iter().enumerate() {
            if !is_uri(uri) {
                errors.push(SpecError::Uri {
                    index,
                    uri: uri.clone(),
                });
            }
        }
        let duration = self.duration();
        if duration < MIN_DURATION {
            errors.push(SpecError::DurationTooShort(duration));
        }
        if self.renew_before.is_some() && self.renew_before_percentage.is_some() {
            errors.push(SpecError::BothRenewals);
        }
        if let Some(renew_before) = self.renew_before {
            if renew_before < MIN_RENEW_BEFORE {
                errors.push(SpecError::RenewBeforeTooShort(renew_before));
            }
            if renew_before >= duration {
                errors.push(SpecError::RenewBeforeNotShorter {
                    renew_before,
                    duration,
                });
            }
        }
        if let Some(pct) = self.renew_before_percentage
            && !(1..=99).contains(&pct)
        {
            errors.push(SpecError::Percentage(pct));
        }
        if let Some(size) = self.private_key.as_ref().and_then(|k| k.size) {
            let algorithm = self.key_algorithm();
            let allowed = match algorithm {
                PrivateKeyAlgorithm::Rsa if !(2048..=8192).contains(&size) => {
                    Some("RSA keys are 2048 to 8192 bits")
                }
                PrivateKeyAlgorithm::Ecdsa if size == 521 => Some(
                    "ECDSA keys are 256 or 384 (P-521 is refused: peers using ring cannot verify it)",
                ),
                PrivateKeyAlgorithm::Ecdsa if size != 256 && size != 384 => {
                    Some("ECDSA keys are 256 or 384")
                }
                _ => None,
            };
            if let Some(allowed) = allowed {
                errors.push(SpecError::KeySize {
                    algorithm,
                    size,
                    allowed,
                });
            }
        }
        if self.issuer_ref.name.is_empty() {
            errors.push(SpecError::IssuerName);
        }
        if self.issuer_ref.issuer_kind().is_none() {
            errors.push(SpecError::IssuerKind(
                self.issuer_ref.kind.clone().unwrap_or_default(),
            ));
        }
        if self.issuer_ref.group() != GROUP {
            errors.push(SpecError::IssuerGroup(self.issuer_ref.group().to_string()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(errors))
        }
    }
}

impl IssuerConfig {
    /// Checks that exactly one way of signing is configured.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.ca, &self.self_signed) {
            (Some(ca), None) if !is_valid_object_name(&ca.secret_name) => Err(format!(
                "spec.ca.secretName {} is not a valid Secret name",
                quoted(&ca.secret_name)
            )),
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("exactly one of spec.ca or spec.selfSigned must be set".to_string()),
        }
    }
}

/// The CRDs as one multi-document YAML stream, exactly as committed in
/// `crds/lanyard.dev.yaml` and printed by `lanyard crds`.
pub fn custom_resource_definitions_yaml() -> String {
    let mut out = String::from(
        "# Generated by `lanyard crds` from the Rust types in crds/src/api.rs; do not edit.\n",
    );
    for crd in custom_resource_definitions() {
        out.push_str("---\n");
        // Serialising plain data to YAML cannot fail.
        let doc = serde_saphyr::to_string(&crd).expect("a CRD serialises to YAML");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
