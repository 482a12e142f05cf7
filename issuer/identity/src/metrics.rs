//! The identity service's metrics: `Certify` calls by gRPC code, their
//! latency, and the loaded issuer's expiry and reloads. Registered into
//! whichever Prometheus registry the process serves.

use lanyard_runtime::listen::ListenerMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

use lanyard_issuer::IdentityIssuer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Latency buckets, in seconds: a signature takes well under a
/// millisecond; a TokenReview round trip can take tens.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The identity service's metrics. Cheap to clone; clones share series.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    certify: Family<CodeLabels, Counter>,
    latency: Histogram,
    issuer_expiration: Gauge,
    anchor_expiration: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    refused: Gauge,
    listener: ListenerMetrics,
}

impl Default for IdentityMetrics {
    fn default() -> Self {
        IdentityMetrics {
            certify: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            issuer_expiration: Gauge::default(),
            anchor_expiration: Gauge::default(),
            reloads: Family::default(),
            refused: Gauge::default(),
            listener: ListenerMetrics::new(),
        }
    }
}

impl IdentityMetrics {
    /// Metrics not yet registered anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lanyard_identity_certify",
            "Certify calls answered, by gRPC status code",
            self.certify.clone(),
        );
        registry.register(
            "lanyard_identity_certify_duration_seconds",
            "Time to answer a Certify call, authentication included",
            self.latency.clone(),
        );
        registry.register(
            "lanyard_identity_issuer_expiration_timestamp_seconds",
            "The date after which the loaded identity issuer expires, as a Unix timestamp (0 while none is loaded)",
            self.issuer_expiration.clone(),
        );
        registry.register(
            "lanyard_identity_trust_anchor_expiration_timestamp_seconds",
            "The date after which the earliest-expiring trust anchor of the loaded issuer expires, as a Unix timestamp",
            self.anchor_expiration.clone(),
        );
        registry.register(
            "lanyard_identity_issuer_reloads",
            "Issuer material looked at: result=loaded (swapped in) or refused (invalid; the previous issuer keeps serving)",
            self.reloads.clone(),
        );
        registry.register(
            "lanyard_identity_issuer_refused",
            "1 while the newest issuer material seen was refused",
            self.refused.clone(),
        );
        self.listener.register(registry, "lanyard_identity");
    }

    /// The listener's connection counters (open, refused over the cap,
    /// accept errors, handshake timeouts, idle closes).
    pub fn listener(&self) -> &ListenerMetrics {
        &self.listener
    }

    /// Counts one answered `Certify` call.
    pub(crate) fn certified(&self, code: Code, seconds: f64) {
        self.certify
            .get_or_create(&CodeLabels {
                code: code_name(code),
            })
            .inc();
        self.latency.observe(seconds);
    }

    /// A new issuer was swapped in.
    pub(crate) fn issuer_loaded(&self, issuer: &IdentityIssuer) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "loaded" })
            .inc();
        self.refused.set(0);
        self.issuer_expiration
            .set(issuer.certificate().not_after().timestamp());
        if let Some(anchor) = issuer.anchors().iter().map(|a| a.not_after()).min() {
            self.anchor_expiration.set(anchor.timestamp());
        }
    }

    /// New material was refused.
    pub(crate) fn issuer_refused(&self) {
        self.reloads
            .get_or_create(&ReloadLabels { result: "refused" })
            .inc();
        self.refused.set(1);
    }
}

/// The gRPC code's canonical name, as grpc-go and Linkerd label it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
