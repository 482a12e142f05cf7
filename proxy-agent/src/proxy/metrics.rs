//! The proxy's metrics, under the names the Linkerd proxy exports, so
//! alerts written for Linkerd (`inbound_http_errors_total{error="tls"}`)
//! work unchanged.

use lanyard_runtime::listen::ListenerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::policy::{Decision, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpAuthz {
    srv_name: String,
    authz_name: String,
    route_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpAuthz {
    srv_name: String,
    authz_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Decisions and errors. Cheap to clone; clones share series.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    http_allow: Family<HttpAuthz, Counter>,
    http_deny: Family<HttpAuthz, Counter>,
    tcp_allow: Family<TcpAuthz, Counter>,
    tcp_deny: Family<TcpAuthz, Counter>,
    http_errors: Family<ErrorLabels, Counter>,
    outbound_tls_errors: Counter,
    policy_reloads: Family<ResultLabels, Counter>,
    inbound_listener: ListenerMetrics,
    outbound_listener: ListenerMetrics,
}

fn server_name(decision: &Decision) -> String {
    decision
        .server
        .clone()
        .unwrap_or_else(|| decision.authz.clone())
}

impl ProxyMetrics {
    /// Adds every series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "inbound_http_authz_allow",
            "HTTP requests allowed, by Server, authorization and route",
            self.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "HTTP requests denied (403, gRPC 7, or 404 for no route), by Server, authorization and route",
            self.http_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "Opaque TCP connections allowed, by Server and authorization",
            self.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Opaque TCP connections refused (closed), by Server and authorization",
            self.tcp_deny.clone(),
        );
        registry.register(
            "inbound_http_errors",
            "Inbound connections that failed before a request, by error (`tls`: the TLS handshake failed)",
            self.http_errors.clone(),
        );
        registry.register(
            "outbound_tls_errors",
            "Outbound mTLS handshakes that failed (the peer did not present the expected identity, or did not chain to the bundle)",
            self.outbound_tls_errors.clone(),
        );
        registry.register(
            "lanyard_proxy_policy_reloads",
            "Policy reloads: result=loaded, or refused (the last good policy stays)",
            self.policy_reloads.clone(),
        );
        self.inbound_listener
            .register(registry, "lanyard_proxy_inbound");
        self.outbound_listener
            .register(registry, "lanyard_proxy_outbound");
    }

    /// The inbound listener's connection counters.
    pub fn inbound_listener(&self) -> &ListenerMetrics {
        &self.inbound_listener
    }

    /// The outbound listeners' connection counters.
    pub fn outbound_listener(&self) -> &ListenerMetrics {
        &self.outbound_listener
    }

    pub(crate) fn http_decision(&self, decision: &Decision) {
        let labels = HttpAuthz {
            srv_name: server_name(decision),
            authz_name: decision.authz.clone(),
            route_name: decision.route.clone().unwrap_or_default(),
        };
        let family = if decision.verdict == Verdict::Allow {
            &self.http_allow
        } else {
            &self.http_deny
        };
        family.get_or_create(&labels).inc();
    }

    pub(crate) fn tcp_decision(&self, decision: &Decision) {
        let labels = TcpAuthz {
            srv_name: server_name(decision),
            authz_name: decision.authz.clone(),
        };
        let family = if decision.verdict == Verdict::Allow {
            &self.tcp_allow
        } else {
            &self.tcp_deny
        };
        family.get_or_create(&labels).inc();
    }

    pub(crate) fn http_error(&self, error: &'static str) {
        self.http_errors.get_or_create(&ErrorLabels { error }).inc();
    }

    pub(crate) fn outbound_tls_error(&self) {
        self.outbound_tls_errors.inc();
    }

    /// Counts a policy reload.
    pub fn policy_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.policy_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
