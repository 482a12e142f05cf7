//! What the policy does where no manifest speaks: the default policies
//! (Linkerd's `default-inbound-policy`) and the options a policy is built
//! with.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use ipnet::IpNet;
use lanyard_crds::identity::IdentityDomain;

use crate::PolicyRef;

/// The policy for ports no Server covers (Linkerd's
/// `proxy.defaultInboundPolicy` and `config.linkerd.io/default-inbound-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Everyone.
    AllUnauthenticated,
    /// Meshed clients, from anywhere.
    AllAuthenticated,
    /// Meshed clients from the cluster's networks.
    ClusterAuthenticated,
    /// Anyone from the cluster's networks.
    ClusterUnauthenticated,
    /// No one.
    Deny,
    /// Everyone, recording what `deny` would have refused.
    Audit,
}

impl DefaultPolicy {
    const ALL: [DefaultPolicy; 6] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::ClusterUnauthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    /// How Linkerd labels this default in metrics (`srv_kind="default"`,
    /// `srv_name="all-authenticated"`), built once.
    pub(crate) fn label(self) -> PolicyRef {
        static LABELS: OnceLock<Vec<PolicyRef>> = OnceLock::new();
        let labels = LABELS.get_or_init(|| {
            DefaultPolicy::ALL
                .iter()
                .map(|p| PolicyRef::default_named(p.name()))
                .collect()
        });
        labels[self.index()].clone()
    }

    /// What a decision by this default names as its authorization,
    /// `default:<name>`, built once.
    pub(crate) fn authz(self) -> std::sync::Arc<str> {
        static AUTHZ: OnceLock<Vec<std::sync::Arc<str>>> = OnceLock::new();
        let names = AUTHZ.get_or_init(|| {
            DefaultPolicy::ALL
                .iter()
                .map(|p| format!("default:{}", p.name()).into())
                .collect()
        });
        names[self.index()].clone()
    }

    /// The position in [`DefaultPolicy::ALL`], for the tables built once.
    fn index(self) -> usize {
        DefaultPolicy::ALL
            .iter()
            .position(|p| *p == self)
            .unwrap_or_default()
    }

    /// Every name, for messages.
    pub const NAMES: &'static str = "all-unauthenticated, all-authenticated, cluster-authenticated, cluster-unauthenticated, deny, audit";

    /// The name, as in Linkerd.
    pub fn name(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl FromStr for DefaultPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
            "all-authenticated" => DefaultPolicy::AllAuthenticated,
            "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
            "cluster-unauthenticated" => DefaultPolicy::ClusterUnauthenticated,
            "deny" => DefaultPolicy::Deny,
            "audit" => DefaultPolicy::Audit,
            other => {
                return Err(format!(
                    "unknown policy `{other}`; use one of {}",
                    DefaultPolicy::NAMES
                ));
            }
        })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linkerd's default `clusterNetworks`.
pub const DEFAULT_CLUSTER_NETWORKS: [&str; 4] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
];

/// How the policy treats what no manifest covers.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// The identity domain ServiceAccount and Namespace refs name
    /// identities in.
    pub identity_domain: IdentityDomain,
    /// The policy for ports no Server covers.
    pub default_policy: DefaultPolicy,
    /// The cluster's networks, for the `cluster-*` defaults.
    pub cluster_networks: Vec<IpNet>,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            identity_domain: IdentityDomain::linkerd_default(),
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: DEFAULT_CLUSTER_NETWORKS
                .iter()
                .map(|n| n.parse().expect("valid default network"))
                .collect(),
        }
    }
}
