//! What every reconcile shares ([`Context`]: the client, the clock, the
//! metrics, the API failure counts behind the error policies' backoff,
//! each trust bundle's last good anchors), and the shell's errors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ::kube::Client;
use lanyard_crds::api::IssuerKind;
use lanyard_crds::time::Clock;
use lanyard_runtime::Backoff;
use lanyard_trust_bundle::Anchor;

use super::cache::{Caches, IssuerMaterials, Written};
use super::secret;
use crate::issuer_ref::DEFAULT_CLUSTER_RESOURCE_NAMESPACE;
use crate::metrics::Metrics;

/// How many reconciles of one kind run at once by default: enough to keep
/// the API server's write path busy, few enough that a start with
/// thousands of Certificates due queues them instead of opening thousands
/// of requests at once.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// What every reconcile shares: the client, the clock, the metrics, the
/// watch caches.
pub struct Context<C: Clock> {
    /// The API client.
    pub client: Client,
    /// Where `now` comes from.
    pub clock: C,
    /// The controller's metrics.
    pub metrics: Arc<Metrics>,
    /// The namespace of ClusterIssuers' CA Secrets.
    pub cluster_resource_namespace: String,
    /// How many reconciles of one kind run at once.
    pub concurrency: u16,
    /// Whether the TrustBundle controller runs beside the Certificate
    /// controller (see [`Context::with_trust_bundles`]).
    pub trust_bundles: bool,
    /// The watch caches reconciles read from: replaced each time the
    /// controller starts (it keeps them only while it leads).
    caches: RwLock<Caches>,
    /// Secrets applied whose new version the cache may not hold yet.
    pub(super) applied: Written,
    /// Certificates whose status was written at a version the cache may
    /// not hold yet.
    pub(super) statuses: Written,
    /// The issuers' loaded signing material.
    pub(super) materials: IssuerMaterials,
    /// API failures per object (kind, namespace, name) since its last
    /// successful reconcile, for [`error_policy`](super::error_policy)'s backoff.
    api_failures: Mutex<HashMap<FailureKey, u32>>,
    /// Each trust bundle's last good anchors per source, by bundle name.
    pub(super) bundle_anchors: LastGoodAnchors,
    /// The anchor rotation's leaf lifetime and skew.
    pub rotation: super::anchor_rotation::RotationTiming,
}

/// A source's last good anchors, by source name, as
/// [`lanyard_trust_bundle::assemble`] takes and returns them.
pub type SourceAnchors = BTreeMap<String, Vec<Anchor>>;

/// Each trust bundle's last good anchors per source: what lets a source
/// that turns unreadable or invalid keep its anchors in the bundle. Kept in
/// memory only: after a restart a source that is broken from the start has
/// none to keep.
#[derive(Debug, Default)]
pub(super) struct LastGoodAnchors(Mutex<HashMap<String, SourceAnchors>>);

impl LastGoodAnchors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SourceAnchors>> {
        // Whole values are swapped in; a panic elsewhere cannot leave the
        // map invalid.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bundle's last good anchors (empty before its first assembly).
    pub(super) fn get(&self, bundle: &str) -> SourceAnchors {
        self.lock().get(bundle).cloned().unwrap_or_default()
    }

    /// Records what the bundle's latest assembly returned.
    pub(super) fn set(&self, bundle: &str, anchors: SourceAnchors) {
        self.lock().insert(bundle.to_string(), anchors);
    }

    /// Forgets a deleted bundle.
    pub(super) fn forget(&self, bundle: &str) {
        self.lock().remove(bundle);
    }
}

/// Kind, namespace (empty for a ClusterIssuer) and name.
type FailureKey = (&'static str, String, String);

impl<C: Clock> fmt::Debug for Context<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("clock", &self.clock)
            .field(
                "cluster_resource_namespace",
                &self.cluster_resource_namespace,
            )
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Context<C> {
    /// A context whose ClusterIssuers keep their CA Secrets in
    /// [`DEFAULT_CLUSTER_RESOURCE_NAMESPACE`].
    pub fn new(client: Client, clock: C, metrics: Arc<Metrics>) -> Self {
        Context {
            client,
            clock,
            metrics,
            cluster_resource_namespace: DEFAULT_CLUSTER_RESOURCE_NAMESPACE.to_string(),
            concurrency: DEFAULT_CONCURRENCY,
            trust_bundles: false,
            caches: RwLock::new(Caches::new().0),
            applied: Written::default(),
            statuses: Written::default(),
            materials: IssuerMaterials::default(),
            api_failures: Mutex::default(),
            bundle_anchors: LastGoodAnchors::default(),
            rotation: Default::default(),
        }
    }

    /// Runs the TrustBundle controller too (off by default): it watches
    /// TrustBundles, Namespaces and ConfigMaps, which a controller run
    /// without the TrustBundle CRD installed, or without the RBAC to read
    /// them, cannot. Its caches fill apart from the Certificate
    /// controller's, so its failing watches never hold Certificates up.
    pub fn with_trust_bundles(mut self, enabled: bool) -> Self {
        self.trust_bundles = enabled;
        self
    }

    /// Sets the anchor rotation's leaf lifetime (the identity service's
    /// `--issuance-lifetime`) and skew.
    pub fn with_rotation_timing(mut self, timing: super::anchor_rotation::RotationTiming) -> Self {
        self.rotation = timing;
        self
    }

    /// Sets how many reconciles of one kind run at once (at least one).
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The watch caches reconciles read.
    pub fn caches(&self) -> Caches {
        self.caches
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes reconciles read `caches` (filled by their writers' watches).
    pub fn use_caches(&self, caches: Caches) {
        *self
            .caches
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = caches;
    }

    /// Sets the namespace of ClusterIssuers' CA Secrets.
    pub fn with_cluster_resource_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.cluster_resource_namespace = namespace.into();
        self
    }

    fn api_failures(&self) -> std::sync::MutexGuard<'_, HashMap<FailureKey, u32>> {
        // The map only counts; a panic elsewhere cannot leave it invalid.
        self.api_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn record_api_failure(
        &self,
        kind: &'static str,
        namespace: String,
        name: String,
    ) -> u32 {
        let mut failures = self.api_failures();
        let count = failures.entry((kind, namespace, name)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    pub(super) fn clear_api_failures(&self, kind: &'static str, namespace: &str, name: &str) {
        self.api_failures()
            .remove(&(kind, namespace.to_string(), name.to_string()));
    }
}

/// Why a reconcile (or the controller) failed. Everything here is the API
/// server's or the object's fault, not the certificate's: a Certificate
/// that cannot be issued is a `Ready=False` status, not an `Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Certificate came without a namespace.
    #[error("Certificate `{name}` has no namespace")]
    NoNamespace {
        /// The Certificate's name.
        name: String,
    },
    /// Reading an object failed (other than it not existing).
    #[error("reading {what}: {source}")]
    Read {
        /// Kind and `namespace/name` of the object.
        what: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// The Secret to write could not be built.
    #[error("building Secret `{namespace}/{name}`: {source}")]
    BuildSecret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is missing.
        #[source]
        source: secret::AppliedSecretError,
    },
    /// Applying the Secret failed.
    #[error("applying Secret `{namespace}/{name}`: {source}")]
    ApplySecret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// Writing the Certificate's status failed.
    #[error("updating the status of Certificate `{namespace}/{name}`: {source}")]
    PatchStatus {
        /// The Certificate's namespace.
        namespace: String,
        /// The Certificate's name.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// The status did not serialise.
    #[error("serialising the status of Certificate `{namespace}/{name}`: {source}")]
    SerializeStatus {
        /// The Certificate's namespace.
        namespace: String,
        /// The Certificate's name.
        name: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An Issuer came without a namespace.
    #[error("Issuer `{name}` has no namespace")]
    IssuerNoNamespace {
        /// The Issuer's name.
        name: String,
    },
    /// Writing an Issuer's or ClusterIssuer's status failed.
    #[error("updating the status of {kind} `{name}`: {source}")]
    PatchIssuerStatus {
        /// Issuer or ClusterIssuer.
        kind: IssuerKind,
        /// `namespace/name` of an Issuer, the name of a ClusterIssuer.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// Applying a trust bundle's ConfigMap or Secret in one namespace
    /// failed (other than the namespace being gone or going).
    #[error("writing {target} of TrustBundle `{bundle}`: {source}")]
    WriteBundleTarget {
        /// The bundle's name.
        bundle: String,
        /// Kind and `namespace/name` of the target.
        target: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// Removing a trust bundle's ConfigMap or Secret from a namespace the
    /// bundle no longer selects failed.
    #[error(
        "removing {target} of TrustBundle `{bundle}`, whose namespace it no longer selects: {source}"
    )]
    RemoveBundleTarget {
        /// The bundle's name.
        bundle: String,
        /// Kind and `namespace/name` of the target.
        target: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// Writing a TrustBundle's status failed.
    #[error("updating the status of TrustBundle `{name}`: {source}")]
    PatchBundleStatus {
        /// The bundle's name.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// A TrustBundle's status did not serialise.
    #[error("serialising the status of TrustBundle `{name}`: {source}")]
    SerializeBundleStatus {
        /// The bundle's name.
        name: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// No API client could be configured.
    #[error("configuring the Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
}

/// The kind in [`Context`]'s failure counts of a Certificate.
pub(super) const CERTIFICATE: &str = "Certificate";
/// The kind in [`Context`]'s failure counts of a TrustBundle.
pub(super) const TRUST_BUNDLE: &str = "TrustBundle";

/// The delay after `attempts` consecutive API failures: 5s, doubling, at
/// most 5 minutes (the first delay also for a count of 0).
pub fn error_backoff(attempts: u32) -> Duration {
    Backoff::new(Duration::from_secs(5), Duration::from_secs(300)).delay_after(attempts.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_from_five_seconds_to_five_minutes() {
        for (attempts, seconds) in [(1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (100, 300)] {
            assert_eq!(
                error_backoff(attempts),
                Duration::from_secs(seconds),
                "{attempts}"
            );
        }
    }
}
