//! Linkerd's policy resources as they are written in YAML, before any
//! reference is resolved. Unknown fields in a spec are refused, so a typo
//! is an error naming the field rather than a rule silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The group of Linkerd's policy kinds.
pub const POLICY_GROUP: &str = "policy.linkerd.io";
/// The Gateway API's group, whose HTTPRoute Linkerd also accepts.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The metadata Lanyard reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    /// The object's name.
    pub name: String,
    /// Its namespace (`default` when absent, as kubectl does).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be equal.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// A port given as a number or a container port's name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// `Server.spec` (`v1beta1` to `v1beta3`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// The pods this Server covers.
    pub pod_selector: Option<LabelSelector>,
    /// External workloads: not supported by Lanyard's proxy.
    pub external_workload_selector: Option<serde_json::Value>,
    /// The port.
    pub port: PortRef,
    /// `unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `opaque` or `TLS`.
    pub proxy_protocol: Option<String>,
    /// What happens to traffic no authorization allows (`v1beta3`).
    pub access_policy: Option<String>,
}

/// A reference to another object.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// The referent's API group; empty or `core` for the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// The referent's kind.
    pub kind: String,
    /// The referent's name (optional for some kinds).
    #[serde(default)]
    pub name: Option<String>,
    /// The referent's namespace (defaults to the referrer's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A port, in an HTTPRoute's `parentRefs`.
    #[serde(default)]
    pub port: Option<u16>,
    /// A section name, in an HTTPRoute's `parentRefs`.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `AuthorizationPolicy.spec` (`v1alpha1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// A Server, an HTTPRoute, or a Namespace (all its Servers).
    pub target_ref: ObjectRef,
    /// Every one of these must authenticate the client.
    #[serde(default)]
    pub required_authentication_refs: Vec<ObjectRef>,
}

/// `MeshTLSAuthentication.spec` (`v1alpha1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTlsAuthenticationSpec {
    /// Identity names, `*`, or `*.<suffix>` wildcards.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// ServiceAccounts or Namespaces.
    #[serde(default)]
    pub identity_refs: Option<Vec<ObjectRef>>,
}

/// `NetworkAuthentication.spec` (`v1alpha1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAuthenticationSpec {
    /// The networks clients may come from.
    pub networks: Vec<Network>,
}

/// One network of a NetworkAuthentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// The network, e.g. `10.0.0.0/8`.
    pub cidr: String,
    /// Parts of it that are not included.
    #[serde(default)]
    pub except: Vec<String>,
}

/// `HTTPRoute.spec`: what Lanyard needs to authorize per route. Filters,
/// backends and timeouts are accepted and not used by authorization.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Servers the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectRef>,
    /// The rules; a request matching any rule is on this route.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// One rule of an HTTPRoute.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Matches; none means every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
}

/// One match of a rule: all of its parts must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path match.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// The method, e.g. `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Header matches: not supported; refused rather than ignored, since
    /// ignoring one would widen the route.
    #[serde(default)]
    pub headers: Option<serde_json::Value>,
    /// Query parameter matches: refused, as headers are.
    #[serde(default)]
    pub query_params: Option<serde_json::Value>,
}

/// A path match: `Exact`, `PathPrefix` (the default) or `RegularExpression`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// The kind of match.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The path or pattern.
    #[serde(default)]
    pub value: Option<String>,
}
