//! One inbound connection's metrics: the series of its last decision and
//! the response series it has seen, kept at hand so that requests decided
//! alike count with a few atomic increments.

use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use lanyard_policy::{Decision, PolicyLabels, Verdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
// Latency is a duration on tokio's monotonic clock, which tests can pause
// and advance (as linkerd2-proxy measures it); validity decisions take
// the injected wall `Clock` instead.
use tokio::time::Instant;

use super::classify::Class;
use super::labels::{AuthzKey, EndpointKey, LatencyKey, ResponseKey, Series, Target};
use super::latency::{Latencies, LatencyHistogram};
use super::{Peer, ProxyMetrics};

impl ProxyMetrics {
    /// The metrics of one inbound connection from `peer`.
    pub(crate) fn connection(&self, peer: Peer) -> ConnectionMetrics {
        ConnectionMetrics {
            metrics: self.clone(),
            peer,
            last: Mutex::default(),
        }
    }
}

/// The counters one kind of decision on one connection counts into: its
/// authorization counter, and for an allowed request its `request_total`
/// and the `response_total` series seen so far.
#[derive(Debug)]
struct Resolved {
    verdict: Verdict,
    labels: PolicyLabels,
    decision: Counter,
    request: Option<Counter>,
    responses: Family<ResponseKey, Counter>,
    latencies: Latencies,
    endpoint: EndpointKey,
    seen: Seen<(Option<StatusCode>, Class), Counter>,
    seen_latencies: Seen<StatusCode, LatencyHistogram>,
}

/// How many response series one connection keeps at hand (statuses and
/// classes); more are still counted, by a lookup each.
const SEEN_RESPONSES: usize = 8;

/// The inbound metrics of one connection. Its target and TLS labels are
/// fixed, and the counters of its last decision are kept: a connection
/// whose requests are decided alike (nearly always) counts each with a few
/// atomic increments instead of building and hashing three label sets.
#[derive(Debug)]
pub(crate) struct ConnectionMetrics {
    metrics: ProxyMetrics,
    peer: Peer,
    last: Mutex<Option<Arc<Resolved>>>,
}

/// A connection's series at hand, by key.
type Seen<K, M> = Mutex<Vec<(K, M)>>;

/// The series for `key` in `seen`, else `create`s it and keeps it there
/// while there is room ([`SEEN_RESPONSES`]).
fn seen_or_create<K: PartialEq, M: Clone>(
    seen: &Seen<K, M>,
    key: K,
    create: impl FnOnce(&K) -> M,
) -> M {
    let mut seen = lock(seen);
    if let Some((_, metric)) = seen.iter().find(|(k, _)| *k == key) {
        return metric.clone();
    }
    let metric = create(&key);
    if seen.len() < SEEN_RESPONSES {
        seen.push((key, metric.clone()));
    }
    metric
}

/// A lock that a panic elsewhere cannot poison for good: what it guards
/// is a cache that stays valid whatever happened.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ConnectionMetrics {
    /// Counts an HTTP request's decision. An allowed request's
    /// `request_total` / `response_total` come from the returned
    /// [`Exchange`].
    pub(crate) fn http_decision(&self, decision: &Decision) -> Option<Exchange> {
        let resolved = {
            let mut last = lock(&self.last);
            match &*last {
                Some(r) if r.verdict == decision.verdict && r.labels == decision.labels => {
                    r.clone()
                }
                _ => {
                    let r = Arc::new(self.resolve(decision));
                    *last = Some(r.clone());
                    r
                }
            }
        };
        resolved.decision.inc();
        let request = resolved.request.as_ref()?;
        request.inc();
        Some(Exchange {
            resolved,
            started: Instant::now(),
        })
    }

    fn resolve(&self, decision: &Decision) -> Resolved {
        let labels = &decision.labels;
        let metrics = &self.metrics;
        let mut series = Series {
            target: Target(self.peer.target),
            tls: Some(self.peer.tls.clone()),
            server: labels.server.clone(),
            route: Some(labels.route.clone()),
            authz: None,
        };
        let (decision_counter, request) = match decision.verdict {
            Verdict::Allow => {
                series.authz = labels.authz.clone();
                let allow = metrics
                    .http_allow
                    .get_or_create(&AuthzKey(series.clone()))
                    .clone();
                let request = metrics
                    .requests
                    .get_or_create(&EndpointKey(series.clone()))
                    .clone();
                (allow, Some(request))
            }
            Verdict::Deny => (
                metrics
                    .http_deny
                    .get_or_create(&AuthzKey(series.clone()))
                    .clone(),
                None,
            ),
            Verdict::NoRoute => {
                series.route = None;
                (
                    metrics
                        .http_route_not_found
                        .get_or_create(&AuthzKey(series.clone()))
                        .clone(),
                    None,
                )
            }
        };
        Resolved {
            verdict: decision.verdict,
            labels: labels.clone(),
            decision: decision_counter,
            request,
            responses: metrics.responses.clone(),
            latencies: metrics.latencies.clone(),
            endpoint: EndpointKey(series),
            seen: Mutex::default(),
            seen_latencies: Mutex::default(),
        }
    }
}

/// One allowed request on its way to the application; records its
/// `response_total` once the response is classified.
#[derive(Debug)]
pub(crate) struct Exchange {
    resolved: Arc<Resolved>,
    /// When the request's headers were processed, on tokio's clock.
    started: Instant,
}

impl Exchange {
    /// Records the time to the response's first byte under `status`.
    pub(super) fn record_latency(&self, status: StatusCode) {
        let elapsed = self.started.elapsed();
        let resolved = &*self.resolved;
        seen_or_create(&resolved.seen_latencies, status, |status| {
            resolved
                .latencies
                .get_or_create(&LatencyKey {
                    endpoint: resolved.endpoint.clone(),
                    status: *status,
                })
                .clone()
        })
        .observe(elapsed);
    }

    pub(super) fn record(&self, status: Option<StatusCode>, class: Class) {
        let resolved = &*self.resolved;
        seen_or_create(&resolved.seen, (status, class), |(status, class)| {
            resolved
                .responses
                .get_or_create(&ResponseKey {
                    endpoint: resolved.endpoint.clone(),
                    status: *status,
                    class: class.clone(),
                })
                .clone()
        })
        .inc();
    }

    /// The application did not answer.
    pub(crate) fn failed(self) {
        self.record(None, Class::Error("unclassified"));
    }
}
