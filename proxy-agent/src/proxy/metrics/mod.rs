//! The proxy's metrics, under the names *and labels* the Linkerd proxy
//! exports, so dashboards and alerts written for Linkerd
//! (`sum by (srv_name, authz_name) (rate(inbound_http_authz_allow_total[1m]))`,
//! `response_total{direction="inbound",classification="failure"}`) work
//! unchanged.
//!
//! Every inbound series carries Linkerd's `target_addr` / `target_ip` /
//! `target_port` (the address the client was going to: the pod's address
//! and the application's port), `srv_group` / `srv_kind` / `srv_name` /
//! `srv_port`, and `tls` with `client_id` (mTLS) or `no_tls_reason`
//! (plaintext); the authorization counters add `route_*` and `authz_*` as
//! Linkerd's do. Label values are bounded: one per Server, route,
//! authorization, client identity and status, never per connection.

mod classify;
mod connection;
mod labels;
mod latency;

use std::net::SocketAddr;

use lanyard_runtime::listen::ListenerMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use lanyard_policy::{Decision, PolicyRef, Verdict};

pub(crate) use classify::ClassifiedBody;
pub(crate) use connection::ConnectionMetrics;
pub use labels::TlsLabel;
use labels::{AuthzKey, EndpointKey, ErrorKey, ResponseKey, ResultLabels, Series, Target};
use latency::Latencies;

/// Where an inbound connection was going and how it came: what every
/// inbound series is labelled with besides the policy.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The pod's address the client connected to, with the application's
    /// port: Linkerd's original destination.
    pub target: SocketAddr,
    /// How it came.
    pub tls: TlsLabel,
}

/// Decisions and errors. Cheap to clone; clones share series.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    http_allow: Family<AuthzKey, Counter>,
    http_deny: Family<AuthzKey, Counter>,
    http_route_not_found: Family<AuthzKey, Counter>,
    tcp_allow: Family<AuthzKey, Counter>,
    tcp_deny: Family<AuthzKey, Counter>,
    requests: Family<EndpointKey, Counter>,
    responses: Family<ResponseKey, Counter>,
    latencies: Latencies,
    http_errors: Family<ErrorKey, Counter>,
    outbound_tls_errors: Counter,
    policy_reloads: Family<ResultLabels, Counter>,
    inbound_listener: ListenerMetrics,
    outbound_listener: ListenerMetrics,
}

impl ProxyMetrics {
    /// Adds every series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "inbound_http_authz_allow",
            "HTTP requests allowed, by Server, route and authorization",
            self.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "HTTP requests denied (403, or gRPC 7), by Server and route",
            self.http_deny.clone(),
        );
        registry.register(
            "inbound_http_route_not_found",
            "HTTP requests that matched no route of their Server (404, or gRPC 12)",
            self.http_route_not_found.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "Opaque TCP connections allowed, by Server and authorization",
            self.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Opaque TCP connections refused (closed), by Server",
            self.tcp_deny.clone(),
        );
        registry.register(
            "request",
            "Allowed HTTP requests sent on to the application (direction=\"inbound\")",
            self.requests.clone(),
        );
        registry.register(
            "response",
            "Responses to allowed HTTP requests, by status and classification (failure: 5xx, a failing gRPC status, or no response)",
            self.responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from an allowed request's headers to the first byte of its response body (or its end), in milliseconds, by status",
            self.latencies.clone(),
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

    pub(crate) fn tcp_decision(&self, peer: &Peer, decision: &Decision) {
        let allowed = decision.verdict == Verdict::Allow;
        let series = Series {
            target: Target(peer.target),
            tls: Some(peer.tls.clone()),
            server: decision.labels.server.clone(),
            route: None,
            authz: if allowed {
                decision.labels.authz.clone()
            } else {
                None
            },
        };
        let family = if allowed {
            &self.tcp_allow
        } else {
            &self.tcp_deny
        };
        family.get_or_create(&AuthzKey(series)).inc();
    }

    /// Counts a connection that failed before any request, on the port
    /// `target` that `server` covers.
    pub(crate) fn http_error(&self, error: &'static str, target: SocketAddr, server: PolicyRef) {
        let series = Series {
            target: Target(target),
            tls: None,
            server,
            route: None,
            authz: None,
        };
        self.http_errors
            .get_or_create(&ErrorKey { error, series })
            .inc();
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

#[cfg(test)]
mod tests;
