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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, StatusCode};
use lanyard_runtime::listen::ListenerMetrics;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
// Latency is a duration on tokio's monotonic clock, which tests can pause
// and advance (as linkerd2-proxy measures it); validity decisions take
// the injected wall `Clock` instead.
use tokio::time::Instant;

use lanyard_policy::{Decision, PolicyLabels, PolicyRef, Verdict};

/// How the client reached the inbound proxy: Linkerd's `tls` label and
/// its companion (`client_id` or `no_tls_reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum TlsLabel {
    /// A TLS session: `tls="true"`, `client_id` the identity of the
    /// client's certificate, empty when it sent none.
    Established {
        /// The client's identity, if it presented a certificate.
        client_id: Option<String>,
    },
    /// Plaintext: `tls="no_identity",no_tls_reason="no_tls_from_remote"`.
    NoTlsFromRemote,
}

impl EncodeLabelSet for TlsLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match self {
            TlsLabel::Established { client_id } => {
                ("tls", "true").encode(encoder.encode_label())?;
                ("client_id", client_id.as_deref().unwrap_or("")).encode(encoder.encode_label())
            }
            TlsLabel::NoTlsFromRemote => {
                ("tls", "no_identity").encode(encoder.encode_label())?;
                ("no_tls_reason", "no_tls_from_remote").encode(encoder.encode_label())
            }
        }
    }
}

/// `target_addr`, `target_ip`, `target_port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Target(SocketAddr);

impl EncodeLabelSet for Target {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("target_addr", self.0.to_string()).encode(encoder.encode_label())?;
        ("target_ip", self.0.ip().to_string()).encode(encoder.encode_label())?;
        ("target_port", self.0.port().to_string()).encode(encoder.encode_label())
    }
}

fn encode_ref(
    encoder: &mut LabelSetEncoder,
    prefix: &str,
    r: &PolicyRef,
) -> Result<(), std::fmt::Error> {
    (format!("{prefix}_group"), &*r.group).encode(encoder.encode_label())?;
    (format!("{prefix}_kind"), &*r.kind).encode(encoder.encode_label())?;
    (format!("{prefix}_name"), &*r.name).encode(encoder.encode_label())
}

/// The labels of one inbound series: where the client was going, how it
/// came, and the policy objects that decided (present or not per metric,
/// as in Linkerd).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Series {
    target: Target,
    tls: Option<TlsLabel>,
    server: PolicyRef,
    route: Option<PolicyRef>,
    authz: Option<PolicyRef>,
}

impl Series {
    fn encode_policy(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        encode_ref(encoder, "srv", &self.server)?;
        ("srv_port", self.target.0.port().to_string()).encode(encoder.encode_label())?;
        if let Some(route) = &self.route {
            encode_ref(encoder, "route", route)?;
        }
        if let Some(authz) = &self.authz {
            encode_ref(encoder, "authz", authz)?;
        }
        Ok(())
    }
}

/// The authorization counters' order: target, Server, route, authz, tls.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct AuthzKey(Series);

impl EncodeLabelSet for AuthzKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.target.encode(encoder)?;
        self.0.encode_policy(encoder)?;
        if let Some(tls) = &self.0.tls {
            tls.encode(encoder)?;
        }
        Ok(())
    }
}

/// `request_total`'s order: direction, target, tls, Server, route, authz.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct EndpointKey(Series);

impl EncodeLabelSet for EndpointKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("direction", "inbound").encode(encoder.encode_label())?;
        self.0.target.encode(encoder)?;
        if let Some(tls) = &self.0.tls {
            tls.encode(encoder)?;
        }
        self.0.encode_policy(encoder)
    }
}

/// How a response went, as Linkerd classifies it.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Class {
    /// An HTTP response: a failure when 5xx.
    Http(StatusCode),
    /// A gRPC response: its status code, and whether that is a failure.
    Grpc { code: u16, failure: bool },
    /// No response, or the stream broke: `error` says why.
    Error(&'static str),
}

/// gRPC codes Linkerd counts as failures by default: UNKNOWN,
/// PERMISSION_DENIED, INTERNAL, UNAVAILABLE, DATA_LOSS, DEADLINE_EXCEEDED.
const GRPC_FAILURES: [u16; 6] = [2, 4, 7, 13, 14, 15];

impl Class {
    fn grpc(code: u16) -> Class {
        Class::Grpc {
            code,
            failure: GRPC_FAILURES.contains(&code),
        }
    }

    fn is_failure(&self) -> bool {
        match self {
            Class::Http(status) => status.is_server_error(),
            Class::Grpc { failure, .. } => *failure,
            Class::Error(_) => true,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ResponseKey {
    endpoint: EndpointKey,
    status: Option<StatusCode>,
    class: Class,
}

impl EncodeLabelSet for ResponseKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.endpoint.encode(encoder)?;
        if let Some(status) = self.status {
            ("status_code", status.as_u16().to_string()).encode(encoder.encode_label())?;
        }
        let classification = if self.class.is_failure() {
            "failure"
        } else {
            "success"
        };
        ("classification", classification).encode(encoder.encode_label())?;
        let grpc_status = match self.class {
            Class::Grpc { code, .. } => code.to_string(),
            _ => String::new(),
        };
        ("grpc_status", grpc_status).encode(encoder.encode_label())?;
        let error = match self.class {
            Class::Error(error) => error,
            _ => "",
        };
        ("error", error).encode(encoder.encode_label())
    }
}

/// `response_latency_ms`'s labels: the endpoint's and `status_code`, as
/// Linkerd's.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct LatencyKey {
    endpoint: EndpointKey,
    status: StatusCode,
}

impl EncodeLabelSet for LatencyKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.endpoint.encode(encoder)?;
        ("status_code", self.status.as_u16().to_string()).encode(encoder.encode_label())
    }
}

/// Linkerd's latency buckets, in milliseconds (`+Inf` is implied).
const LATENCY_BOUNDS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0,
];

/// A histogram of milliseconds that every request observes without a
/// lock: one atomic add for its bucket, its count and its sum (kept in
/// microseconds). prometheus-client's own histogram takes a write lock
/// per observation, which connections on different threads sharing one
/// series contend for. A scrape reads each atomic once; it may see an
/// observation in the count but not yet in its bucket, as any lock-free
/// histogram (Linkerd's included) may.
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyHistogram {
    inner: Arc<LatencyCells>,
}

#[derive(Debug, Default)]
struct LatencyCells {
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1_000.0;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let cells = &*self.inner;
        cells.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cells.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        cells.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let cells = &*self.inner;
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&cells.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let sum_ms = cells.sum_us.load(Ordering::Relaxed) as f64 / 1_000.0;
        encoder.encode_histogram::<NoLabelSet>(
            sum_ms,
            cells.count.load(Ordering::Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Latencies = Family<LatencyKey, LatencyHistogram>;

/// `inbound_http_errors_total`'s labels: error, target, Server.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ErrorKey {
    error: &'static str,
    series: Series,
}

impl EncodeLabelSet for ErrorKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("error", self.error).encode(encoder.encode_label())?;
        self.series.target.encode(encoder)?;
        self.series.encode_policy(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

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

    /// The metrics of one inbound connection from `peer`.
    pub(crate) fn connection(&self, peer: Peer) -> ConnectionMetrics {
        ConnectionMetrics {
            metrics: self.clone(),
            peer,
            last: Mutex::default(),
        }
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
    fn record_latency(&self, status: StatusCode) {
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

    fn record(&self, status: Option<StatusCode>, class: Class) {
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

    /// The response's head arrived. It is counted when its body ends (or
    /// breaks, or is dropped), as Linkerd counts it: HTTP by status, gRPC
    /// by the status in the headers of a trailers-only response, else in
    /// the trailers.
    pub(crate) fn responded<B>(self, grpc: bool, response: &hyper::Response<B>) -> Pending {
        let status = response.status();
        let state = match (grpc, grpc_status(response.headers())) {
            (false, _) => Classified::Done(Class::Http(status)),
            (true, Some(code)) => Classified::Done(Class::grpc(code)),
            (true, None) => Classified::GrpcOpen,
        };
        Pending {
            exchange: Some(self),
            status,
            state,
            first_byte: false,
        }
    }
}

enum Classified {
    Done(Class),
    GrpcOpen,
}

/// A response whose class may still depend on its trailers.
pub(crate) struct Pending {
    exchange: Option<Exchange>,
    status: StatusCode,
    state: Classified,
    /// Whether the time to the first byte was recorded.
    first_byte: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("status", &self.status)
            .field("recorded", &self.exchange.is_none())
            .finish()
    }
}

impl Pending {
    /// The body's first frame arrived, or its end (an empty body): the
    /// response's latency, as Linkerd measures it (time to first byte).
    fn first_byte(&mut self) {
        if !self.first_byte
            && let Some(exchange) = &self.exchange
        {
            self.first_byte = true;
            exchange.record_latency(self.status);
        }
    }

    fn finish(&mut self, class: Class) {
        if let Some(exchange) = self.exchange.take() {
            exchange.record(Some(self.status), class);
        }
    }

    /// The end of the body, with its trailers if any.
    fn end(&mut self, trailers: Option<&HeaderMap>) {
        self.first_byte();
        let class = match self.state {
            Classified::Done(ref class) => class.clone(),
            Classified::GrpcOpen => match trailers.and_then(grpc_status) {
                Some(code) => Class::grpc(code),
                // A gRPC stream that ends without a status: UNKNOWN, which
                // Linkerd counts as a success here (it records
                // `Class::Grpc(Ok(Unknown))`).
                None => Class::Grpc {
                    code: 2,
                    failure: false,
                },
            },
        };
        self.finish(class);
    }

    fn error(&mut self) {
        self.finish(Class::Error("unclassified"));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) is
        // classified as if it ended there, as Linkerd does.
        self.end(None);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that classifies the response when it ends.
#[derive(Debug)]
pub(crate) struct ClassifiedBody<B> {
    inner: B,
    pending: Pending,
}

impl<B> ClassifiedBody<B> {
    pub(crate) fn new(inner: B, pending: Pending) -> Self {
        ClassifiedBody { inner, pending }
    }
}

impl<B> Body for ClassifiedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.pending.end(None),
            Some(Ok(frame)) => {
                this.pending.first_byte();
                if let Some(trailers) = frame.trailers_ref() {
                    this.pending.end(Some(trailers));
                }
            }
            Some(Err(_)) => this.pending.error(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> hyper::Response<()> {
        let mut r = hyper::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    fn text(metrics: &ProxyMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn exchange(metrics: &ProxyMetrics) -> Exchange {
        let decision = Decision {
            verdict: Verdict::Allow,
            server: None,
            authz: "default:all-unauthenticated".into(),
            route: None,
            audit: false,
            labels: lanyard_policy::PolicyLabels {
                server: PolicyRef::default_named("all-unauthenticated"),
                route: PolicyRef::default_route(),
                authz: Some(PolicyRef::default_named("all-unauthenticated")),
            },
        };
        let peer = Peer {
            target: "10.0.0.1:8080".parse().unwrap(),
            tls: TlsLabel::NoTlsFromRemote,
        };
        metrics.connection(peer).http_decision(&decision).unwrap()
    }

    /// One connection keeps the counters of its last decision; requests
    /// decided differently (another verdict, another authorization after a
    /// policy reload) still land in their own series, and each response in
    /// its own status series.
    #[test]
    fn a_connection_counts_each_decision_in_its_own_series() {
        let metrics = ProxyMetrics::default();
        let connection = metrics.connection(Peer {
            target: "10.0.0.1:8080".parse().unwrap(),
            tls: TlsLabel::Established {
                client_id: Some("web.shop.serviceaccount.identity.linkerd.cluster.local".into()),
            },
        });
        let decision = |verdict, authz: Option<&str>| Decision {
            verdict,
            server: Some("api".into()),
            authz: String::new(),
            route: None,
            audit: false,
            labels: lanyard_policy::PolicyLabels {
                server: PolicyRef::default_named("api"),
                route: PolicyRef::default_route(),
                authz: authz.map(PolicyRef::default_named),
            },
        };
        let allow_a = decision(Verdict::Allow, Some("a"));
        let allow_b = decision(Verdict::Allow, Some("b"));
        let deny = decision(Verdict::Deny, None);
        for (d, status) in [
            (&allow_a, Some(200)),
            (&allow_a, Some(200)),
            (&deny, None),
            (&allow_a, Some(503)),
            (&allow_b, Some(200)),
            (&deny, None),
            (&allow_a, Some(200)),
        ] {
            let exchange = connection.http_decision(d);
            assert_eq!(exchange.is_some(), status.is_some());
            if let (Some(exchange), Some(status)) = (exchange, status) {
                drop(exchange.responded(false, &response(status, &[])));
            }
        }
        let text = text(&metrics);
        let value = |prefix: &str, needles: &[&str]| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(
            value("inbound_http_authz_allow_total{", &["authz_name=\"a\""]),
            4,
            "{text}"
        );
        assert_eq!(
            value("inbound_http_authz_allow_total{", &["authz_name=\"b\""]),
            1,
            "{text}"
        );
        assert_eq!(value("inbound_http_authz_deny_total{", &[]), 2, "{text}");
        assert_eq!(value("request_total{", &["authz_name=\"a\""]), 4, "{text}");
        assert_eq!(value("request_total{", &["authz_name=\"b\""]), 1, "{text}");
        assert_eq!(
            value(
                "response_total{",
                &["authz_name=\"a\"", "status_code=\"200\""]
            ),
            3,
            "{text}"
        );
        assert_eq!(
            value(
                "response_total{",
                &[
                    "authz_name=\"a\"",
                    "status_code=\"503\"",
                    "classification=\"failure\""
                ]
            ),
            1,
            "{text}"
        );
        assert_eq!(
            value(
                "response_total{",
                &["authz_name=\"b\"", "status_code=\"200\""]
            ),
            1,
            "{text}"
        );
    }

    /// Time to first byte is recorded once per answered request, under
    /// its status and Linkerd's buckets; a request the application never
    /// answered has no latency.
    #[test]
    fn latency_is_recorded_once_per_answer_in_linkerds_buckets() {
        let metrics = ProxyMetrics::default();
        // A body: its first frame records the latency, its end does not
        // record it again.
        let mut pending = exchange(&metrics).responded(false, &response(200, &[]));
        pending.first_byte();
        pending.end(None);
        drop(pending);
        // An empty body: its end is its first byte.
        drop(exchange(&metrics).responded(false, &response(503, &[])));
        exchange(&metrics).failed();
        let text = text(&metrics);
        let counts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("response_latency_ms_count{"))
            .collect();
        assert_eq!(counts.len(), 2, "{text}");
        for status in ["200", "503"] {
            assert!(
                counts
                    .iter()
                    .any(|l| l.contains(&format!("status_code=\"{status}\"}} 1"))),
                "{status}: {counts:?}"
            );
        }
        let bounds: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("response_latency_ms_bucket{") && l.contains("status_code=\"200\"")
            })
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            bounds,
            [
                "1.0", "2.0", "3.0", "4.0", "5.0", "10.0", "20.0", "30.0", "40.0", "50.0", "100.0",
                "200.0", "300.0", "400.0", "500.0", "1000.0", "2000.0", "3000.0", "4000.0",
                "5000.0", "10000.0", "20000.0", "30000.0", "40000.0", "50000.0", "+Inf"
            ]
        );
    }

    /// On tokio's paused clock, a first byte 45 ms after the request lands
    /// in Linkerd's 50 ms bucket and not the 40 ms one: no sleeping.
    #[tokio::test(start_paused = true)]
    async fn latency_lands_in_the_bucket_of_its_time_to_first_byte() {
        let metrics = ProxyMetrics::default();
        let mut pending = exchange(&metrics).responded(false, &response(200, &[]));
        tokio::time::advance(std::time::Duration::from_millis(45)).await;
        pending.first_byte();
        let text = text(&metrics);
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("response_latency_ms_bucket{")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(bucket("40.0").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("50.0").as_deref(), Some("1"), "{text}");
        assert!(text.contains("response_latency_ms_sum{"), "{text}");
    }

    /// The `response_total` suffix each outcome is counted under.
    #[test]
    fn responses_are_classified_as_linkerd_classifies_them() {
        type Outcome = fn(Exchange);
        let cases: Vec<(&str, Outcome, &str)> = vec![
            (
                "a 200 is a success",
                |x| drop(x.responded(false, &response(200, &[]))),
                r#"status_code="200",classification="success",grpc_status="",error="""#,
            ),
            (
                "a 404 is a success: the server answered",
                |x| drop(x.responded(false, &response(404, &[]))),
                r#"status_code="404",classification="success",grpc_status="",error="""#,
            ),
            (
                "a 503 is a failure",
                |x| drop(x.responded(false, &response(503, &[]))),
                r#"status_code="503",classification="failure",grpc_status="",error="""#,
            ),
            (
                "no answer is a failure with an error and no status",
                |x| x.failed(),
                r#"classification="failure",grpc_status="",error="unclassified""#,
            ),
            (
                "a trailers-only gRPC OK is a success",
                |x| drop(x.responded(true, &response(200, &[("grpc-status", "0")]))),
                r#"status_code="200",classification="success",grpc_status="0",error="""#,
            ),
            (
                "a gRPC UNAVAILABLE in the trailers is a failure",
                |x| {
                    let mut pending = x.responded(true, &response(200, &[]));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", "14".parse().unwrap());
                    pending.end(Some(&trailers));
                },
                r#"status_code="200",classification="failure",grpc_status="14",error="""#,
            ),
            (
                "a gRPC NOT_FOUND is a success: the server answered",
                |x| drop(x.responded(true, &response(200, &[("grpc-status", "5")]))),
                r#"status_code="200",classification="success",grpc_status="5",error="""#,
            ),
            (
                "a gRPC stream that ends without a status is UNKNOWN, counted as Linkerd counts it",
                |x| drop(x.responded(true, &response(200, &[]))),
                r#"status_code="200",classification="success",grpc_status="2",error="""#,
            ),
            (
                "a body that breaks is a failure with an error",
                |x| x.responded(false, &response(200, &[])).error(),
                r#"status_code="200",classification="failure",grpc_status="",error="unclassified""#,
            ),
        ];
        for (case, outcome, want) in cases {
            let metrics = ProxyMetrics::default();
            outcome(exchange(&metrics));
            let text = text(&metrics);
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("response_total{"))
                .collect();
            assert_eq!(lines.len(), 1, "{case}: one series\n{text}");
            assert!(
                lines[0].contains(&format!("{want}}} 1")),
                "{case}: {}",
                lines[0]
            );
        }
    }
}
