//! The identity service: Linkerd's `io.linkerd.proxy.identity.Identity`
//! API over gRPC. An agent sends a token and a CSR for its identity; the
//! service checks who the token speaks for, that the CSR asks for exactly
//! that identity, and signs a 24-hour leaf with the issuer loaded now.
//!
//! The issuer sits behind an [`ArcSwapOption`]: whoever watches the issuer
//! Secret swaps a new, validated [`IdentityIssuer`] in, and requests in
//! flight finish with the one they loaded. No restart, no failed request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::time::Clock;
use tonic::{Request, Response, Status};

use crate::authorize::authorize;
use crate::metrics::IdentityMetrics;
pub use crate::rate::RateLimit;
use crate::rate::RateLimiter;
use crate::token::{TokenError, TokenKey};
use lanyard_issuer::{DEFAULT_LEAF_LIFETIME, IdentityIssuer};

/// The generated API (`lanyard-identity-api`): messages, the server trait
/// and the client.
pub use lanyard_identity_api as proto;

/// Requests larger than this are refused before they are decoded. A CSR
/// is well under 2 KiB; a projected token under 2 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A local join token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The authority (e.g. the API server's TokenReview) refused the
    /// token: answered with `UNAUTHENTICATED`.
    #[error("the token was not accepted: {0}")]
    Rejected(String),
    /// The authority could not be asked (API server unreachable):
    /// answered with `UNAVAILABLE`, so the agent retries.
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

/// A boxed future, for [`Authenticator`].
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Authenticated, AuthError>> + Send + 'a>>;

/// Proves who a token speaks for: local join tokens, or a Kubernetes
/// TokenReview in a cluster.
pub trait Authenticator: Send + Sync + 'static {
    /// The namespace and service account `token` proves at `now`.
    fn authenticate<'a>(&'a self, token: &'a [u8], now: DateTime<Utc>) -> AuthFuture<'a>;
}

impl<A: Authenticator> Authenticator for Arc<A> {
    fn authenticate<'a>(&'a self, token: &'a [u8], now: DateTime<Utc>) -> AuthFuture<'a> {
        (**self).authenticate(token, now)
    }
}

impl Authenticator for TokenKey {
    fn authenticate<'a>(&'a self, token: &'a [u8], now: DateTime<Utc>) -> AuthFuture<'a> {
        Box::pin(async move {
            let claims = self.verify(token, now)?;
            Ok(Authenticated {
                namespace: claims.namespace,
                service_account: claims.service_account,
            })
        })
    }
}

/// The `Certify` service.
#[derive(Debug)]
pub struct IdentityService<A, C> {
    issuer: Arc<ArcSwapOption<IdentityIssuer>>,
    authenticator: A,
    clock: C,
    lifetime: TimeDelta,
    rate: RateLimiter,
    metrics: IdentityMetrics,
    in_flight: tokio::sync::Semaphore,
}

/// At most this many `Certify` calls are worked on at once across all
/// connections; more wait their turn. Bounds the TokenReviews sent to the
/// API server and the memory held by requests.
pub const MAX_IN_FLIGHT: usize = 256;

impl<A: Authenticator, C: Clock + 'static> IdentityService<A, C> {
    /// A service signing with whatever `issuer` holds at each request.
    pub fn new(issuer: Arc<ArcSwapOption<IdentityIssuer>>, authenticator: A, clock: C) -> Self {
        IdentityService {
            issuer,
            authenticator,
            clock,
            lifetime: DEFAULT_LEAF_LIFETIME,
            rate: RateLimiter::default(),
            metrics: IdentityMetrics::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// Issues certificates valid for `lifetime` (default 24h), never past
    /// the issuer's own end.
    pub fn with_leaf_lifetime(mut self, lifetime: TimeDelta) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Limits each identity's calls to `limit` (default: [`RateLimit::default`]).
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate.limit = limit;
        self
    }

    /// Counts calls and their latency into `metrics`.
    pub fn with_metrics(mut self, metrics: IdentityMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tonic server for this service, refusing requests over
    /// [`MAX_REQUEST_BYTES`].
    pub fn into_server(self) -> proto::identity_server::IdentityServer<Self> {
        proto::identity_server::IdentityServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    async fn certify_inner(
        &self,
        request: proto::CertifyRequest,
    ) -> Result<proto::CertifyResponse, Status> {
        let now = self.clock.now();
        // Authentication comes first: an unauthenticated caller learns
        // nothing else, not even whether an issuer is loaded.
        let who = self
            .authenticator
            .authenticate(&request.token, now)
            .await
            .map_err(|e| match e {
                AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            })?;
        let issuer = self
            .issuer
            .load_full()
            .ok_or_else(|| Status::unavailable("no valid identity issuer is loaded"))?;
        let identity = authorize(&who, &request.identity, issuer.domain())
            .map_err(|refusal| Status::permission_denied(refusal.to_string()))?;
        self.rate.take(identity.as_str(), now).map_err(|wait| {
            Status::resource_exhausted(format!(
                "too many requests for `{identity}`; retry in {} ms",
                wait.num_milliseconds().max(1)
            ))
        })?;
        let leaf = issuer
            .issue(
                &request.certificate_signing_request,
                &identity,
                self.lifetime,
                now,
            )
            .map_err(|e| match e {
                lanyard_issuer::Error::Csr(reason) => Status::invalid_argument(reason.to_string()),
                other => Status::unavailable(format!("the identity issuer cannot sign: {other}")),
            })?;
        Ok(proto::CertifyResponse {
            leaf_certificate: leaf.leaf_der,
            intermediate_certificates: leaf.chain_der,
            valid_until: Some(prost_types::Timestamp {
                seconds: leaf.validity.not_after.timestamp(),
                nanos: 0,
            }),
        })
    }
}

#[tonic::async_trait]
impl<A: Authenticator, C: Clock + 'static> proto::identity_server::Identity
    for IdentityService<A, C>
{
    async fn certify(
        &self,
        request: Request<proto::CertifyRequest>,
    ) -> Result<Response<proto::CertifyResponse>, Status> {
        let start = self.clock.now();
        let permit = self.in_flight.acquire().await;
        let result = self.certify_inner(request.into_inner()).await;
        drop(permit);
        let seconds = (self.clock.now() - start)
            .to_std()
            .map_or(0.0, |d| d.as_secs_f64());
        let code = match &result {
            Ok(_) => {
                tracing::debug!("certified");
                tonic::Code::Ok
            }
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "certify refused");
                status.code()
            }
        };
        self.metrics.certified(code, seconds);
        result.map(Response::new)
    }
}
