//! Exactly what each component may do, and nothing more. Each rule is
//! here because a call in the code needs it; the live tests run the
//! binaries under these rules alone, and `lanyard check` asks the API
//! server whether each is granted.

/// One RBAC rule: API group, resources, verbs, and optionally the only
/// object names it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    /// Resources, with subresources as `certificates/status`.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// When not empty, the only object names the rule covers.
    pub names: &'static [&'static str],
}

impl Rule {
    const fn new(
        group: &'static str,
        resources: &'static [&'static str],
        verbs: &'static [&'static str],
    ) -> Self {
        Rule {
            group,
            resources,
            verbs,
            names: &[],
        }
    }

    /// The rule as a `PolicyRule` object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut rule = serde_json::json!({
            "apiGroups": [self.group],
            "resources": self.resources,
            "verbs": self.verbs,
        });
        if !self.names.is_empty() {
            rule["resourceNames"] = serde_json::json!(self.names);
        }
        rule
    }
}

/// The controller, cluster-wide (ClusterRole `lanyard-controller`).
pub const CONTROLLER_CLUSTER: &[Rule] = &[
    // Its kinds: watched through caches; the status is a merge patch.
    Rule::new(
        "lanyard.dev",
        &["certificates", "issuers", "clusterissuers", "trustbundles"],
        &["get", "list", "watch"],
    ),
    Rule::new(
        "lanyard.dev",
        &[
            "certificates/status",
            "issuers/status",
            "clusterissuers/status",
            "trustbundles/status",
        ],
        &["patch"],
    ),
    // Certificates' Secrets (created, then patched), CA Secrets read; an
    // anchor rotation replaces the anchor's Secret under its
    // resourceVersion, creates the prepared `-next` Secret and deletes it
    // when done; TrustBundle Secret targets are applied and removed.
    Rule::new(
        "",
        &["secrets"],
        &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
    ),
    // TrustBundle ConfigMap targets, applied server-side into selected
    // namespaces and removed from the rest; ConfigMap sources are read.
    Rule::new(
        "",
        &["configmaps"],
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // Which namespaces a TrustBundle's selector picks.
    Rule::new("", &["namespaces"], &["list", "watch"]),
];

/// The controller, in its own namespace (Role `lanyard-controller`): the
/// Lease that elects the one active replica.
pub const CONTROLLER_NAMESPACED: &[Rule] = &[Rule::new(
    "coordination.k8s.io",
    &["leases"],
    &["get", "create", "update"],
)];

/// The identity service, cluster-wide (ClusterRole `lanyard-identity`):
/// the agents' ServiceAccount tokens are checked with TokenReview.
pub const IDENTITY_CLUSTER: &[Rule] = &[Rule::new(
    "authentication.k8s.io",
    &["tokenreviews"],
    &["create"],
)];

/// The identity service, in the control-plane namespace (Role
/// `linkerd-identity`): the issuer Secret, by name, which it watches.
pub const IDENTITY_NAMESPACED: &[Rule] = &[Rule {
    group: "",
    resources: &["secrets"],
    verbs: &["get", "list", "watch"],
    names: &[lanyard_crds::linkerd::IDENTITY_ISSUER_NAME],
}];
