//! `TrustBundle` (`lanyard.dev/v1`, cluster-scoped): the trust anchors a
//! mesh relies on, gathered from sources and written to a ConfigMap (and
//! optionally a Secret) in every selected namespace. The field names are
//! trust-manager's `Bundle`, so its users know them; one source kind is
//! Lanyard's own: the live anchors of a Lanyard-managed CA (`issuerRef`),
//! which hold old and new anchor side by side while the anchor rotates.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::{Condition, IssuerRef};
use crate::duration::GoDuration;

/// The name of the bundle Linkerd reads: its proxies and control plane
/// take the trust roots from the ConfigMap `linkerd-identity-trust-roots`.
pub const LINKERD_TRUST_ROOTS: &str = "linkerd-identity-trust-roots";
/// The key Linkerd reads in that ConfigMap.
pub const LINKERD_TRUST_ROOTS_KEY: &str = "ca-bundle.crt";
/// How long a rotation waits after a bundle was written everywhere before
/// it relies on it, when `spec.propagationDelay` is not set: about what
/// the kubelet takes to sync a ConfigMap volume (its sync period plus its
/// cache TTL).
pub const DEFAULT_PROPAGATION_DELAY: GoDuration = GoDuration::from_secs(120);

/// A bundle of trust anchors, distributed to namespaces.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lanyard.dev",
    version = "v1",
    kind = "TrustBundle",
    status = "TrustBundleStatus",
    shortname = "tb",
    category = "lanyard",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Anchors","type":"integer","jsonPath":".status.anchorCount"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.target.configMap.key"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustBundleSpec {
    /// Where the anchors come from; at least one.
    #[schemars(length(min = 1))]
    pub sources: Vec<BundleSource>,
    /// Where the bundle is written.
    pub target: BundleTarget,
    /// How long an anchor rotation waits, after this bundle was written
    /// to every target, before it relies on workloads having it (default
    /// 2m: the kubelet's ConfigMap volume sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation_delay: Option<GoDuration>,
}

/// One source of anchors: exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("(has(self.secret) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.inLine) ? 1 : 0) + (has(self.issuerRef) ? 1 : 0) == 1")
        .message("a source sets exactly one of secret, configMap, inLine or issuerRef")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleSource {
    /// A key of a Secret in the trust namespace (the controller's cluster
    /// resource namespace), holding PEM certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeySelector>,
    /// A key of a ConfigMap in the trust namespace, holding PEM
    /// certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeySelector>,
    /// PEM certificates written in the TrustBundle itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_line: Option<String>,
    /// The live anchors of a Lanyard CA issuer: its CA Secret's `ca.crt`,
    /// which holds old and new anchor while the anchor rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A key of a named Secret or ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySelector {
    /// The object's name.
    pub name: String,
    /// The key holding PEM certificates.
    pub key: String,
}

/// Where a bundle is written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleTarget {
    /// A ConfigMap named after the bundle, with the PEM under `key`.
    pub config_map: TargetKey,
    /// Also a Secret named after the bundle, with the PEM under `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<TargetKey>,
    /// The namespaces to write to; none selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

/// The key a target writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetKey {
    /// The key, e.g. `ca-bundle.crt`.
    pub key: String,
}

/// Namespaces by label, as a `metav1.LabelSelector`'s `matchLabels`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    /// Every label here must be on the namespace with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl NamespaceSelector {
    /// Selects exactly the namespace `name`, by the label the API server
    /// sets on every namespace.
    pub fn namespace(name: &str) -> Self {
        NamespaceSelector {
            match_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                name.to_string(),
            )]),
        }
    }

    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The selector as a label-selector query string (`a=b,c=d`).
    pub fn to_query(&self) -> String {
        self.match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the bundle holds, and whether it is healthy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleStatus {
    /// `Ready`: the bundle was assembled from every source and written to
    /// every target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How many anchors the bundle holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_count: Option<i64>,
    /// The anchors the bundle holds, in bundle order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<AnchorStatus>,
    /// The namespaces the bundle was last written to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_namespaces: Vec<String>,
    /// When the bundle's content last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<DateTime<Utc>>,
}

/// One anchor in a bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnchorStatus {
    /// The subject, e.g. `CN=root.linkerd.cluster.local`.
    pub subject: String,
    /// The serial number, colon-separated hex.
    pub serial_number: String,
    /// The end of its validity.
    pub not_after: DateTime<Utc>,
    /// The SHA-256 fingerprint of its DER, colon-separated hex.
    pub sha256: String,
}

impl TrustBundleSpec {
    /// The bundle Linkerd reads: the live anchors of the CA issuer
    /// `issuer`, written under `ca-bundle.crt` in the control-plane
    /// namespace.
    pub fn linkerd_trust_roots(issuer: IssuerRef, control_plane_namespace: &str) -> Self {
        TrustBundleSpec {
            sources: vec![BundleSource {
                issuer_ref: Some(issuer),
                ..Default::default()
            }],
            target: BundleTarget {
                config_map: TargetKey {
                    key: LINKERD_TRUST_ROOTS_KEY.into(),
                },
                secret: None,
                namespace_selector: Some(NamespaceSelector::namespace(control_plane_namespace)),
            },
            propagation_delay: None,
        }
    }

    /// Checks what the schema cannot say in the controller too, with
    /// messages naming the field: each source sets exactly one kind,
    /// names and keys are not empty.
    pub fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("spec.sources: at least one source is needed".into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            let set = [
                source.secret.is_some(),
                source.config_map.is_some(),
                source.in_line.is_some(),
                source.issuer_ref.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if set != 1 {
                return Err(format!(
                    "spec.sources[{i}]: set exactly one of secret, configMap, inLine or issuerRef ({set} set)"
                ));
            }
            for (what, selector) in [
                ("secret", &source.secret),
                ("configMap", &source.config_map),
            ] {
                if let Some(selector) = selector {
                    if !crate::api::is_valid_object_name(&selector.name) {
                        return Err(format!(
                            "spec.sources[{i}].{what}.name `{}` is not a valid name",
                            selector.name
                        ));
                    }
                    if selector.key.is_empty() {
                        return Err(format!("spec.sources[{i}].{what}.key must not be empty"));
                    }
                }
            }
            if let Some(issuer) = &source.issuer_ref
                && issuer.name.is_empty()
            {
                return Err(format!(
                    "spec.sources[{i}].issuerRef.name must not be empty"
                ));
            }
        }
        if !is_valid_key(&self.target.config_map.key) {
            return Err(format!(
                "spec.target.configMap.key `{}` is not a valid ConfigMap key",
                self.target.config_map.key
            ));
        }
        if let Some(secret) = &self.target.secret
            && !is_valid_key(&secret.key)
        {
            return Err(format!(
                "spec.target.secret.key `{}` is not a valid Secret key",
                secret.key
            ));
        }
        Ok(())
    }

    /// Whether a source reads the live anchors of the ClusterIssuer
    /// `issuer`: the bundles whose targets an anchor rotation of that
    /// issuer waits for.
    pub fn distributes(&self, issuer: &str) -> bool {
        self.sources.iter().any(|s| {
            s.issuer_ref.as_ref().is_some_and(|r| {
                r.name == issuer && r.issuer_kind() == Some(crate::api::IssuerKind::ClusterIssuer)
            })
        })
    }

    /// `spec.propagationDelay`, or the default.
    pub fn propagation_delay(&self) -> GoDuration {
        self.propagation_delay.unwrap_or(DEFAULT_PROPAGATION_DELAY)
    }
}

/// A ConfigMap or Secret key: letters, digits, `-`, `_` and `.`, at most
/// 253 characters.
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
