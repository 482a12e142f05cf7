//! The agent's metrics and what its admin endpoints (`/metrics`, `/ready`,
//! `/live`, served by `lanyard_runtime::admin`) answer, on the port
//! Linkerd's proxy uses for them (4191).
//!
//! The certificate's expiry keeps the Linkerd proxy's name,
//! `identity_cert_expiration_timestamp_seconds`, so dashboards and alerts
//! written for Linkerd work unchanged.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::identity::Credentials;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    /// The gRPC code's name, or `local` for failures on this side (token
    /// file, trust anchors, an unusable answer).
    code: String,
}

/// The agent's metrics. Cheap to clone; clones share series.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    expiration: Gauge,
    refreshes: Counter,
    failures: Family<FailureLabels, Counter>,
    expired: Counter,
    anchor_refreshes: Counter,
}

impl AgentMetrics {
    /// Unregistered metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "The date after which the agent's current certificate expires, as a Unix timestamp (0 before the first)",
            self.expiration.clone(),
        );
        registry.register(
            "lanyard_proxy_identity_refreshes",
            "Certificates received from the identity service",
            self.refreshes.clone(),
        );
        registry.register(
            "lanyard_proxy_identity_refresh_failures",
            "Failed attempts to get a certificate, by gRPC code (`local` when the token file or trust anchors could not be read, or the answer was unusable)",
            self.failures.clone(),
        );
        registry.register(
            "lanyard_proxy_identity_expired",
            "Times the agent's certificate expired before it could be refreshed",
            self.expired.clone(),
        );
        registry.register(
            "lanyard_proxy_identity_anchor_refreshes",
            "Times the trust-anchors file changed so that the agent's certificate no longer chained to any anchor in it, and the agent certified again at once",
            self.anchor_refreshes.clone(),
        );
    }

    pub(crate) fn refreshed(&self, not_after: DateTime<Utc>) {
        self.refreshes.inc();
        self.expiration.set(not_after.timestamp());
    }

    pub(crate) fn failed(&self, code: Option<tonic::Code>) {
        let code = code.map_or_else(|| "local".to_string(), |c| format!("{c:?}"));
        self.failures.get_or_create(&FailureLabels { code }).inc();
    }

    pub(crate) fn expired(&self) {
        self.expired.inc();
    }

    pub(crate) fn anchors_changed(&self) {
        self.anchor_refreshes.inc();
    }
}

/// The agent's admin endpoints: `/metrics` renders `registry`; `/ready` is
/// 200 while `credentials` holds a certificate (503 before the first and
/// after one expires unrefreshed).
pub fn admin_endpoints(
    registry: Arc<Registry>,
    credentials: watch::Receiver<Option<Arc<Credentials>>>,
) -> lanyard_runtime::admin::Endpoints {
    lanyard_runtime::admin::Endpoints::registry(registry).with_readiness(move || {
        if credentials.borrow().is_some() {
            Ok("ready\n")
        } else {
            Err("no certificate yet\n")
        }
    })
}
