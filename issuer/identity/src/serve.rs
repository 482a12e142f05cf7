//! Running the identity service as Linkerd runs its own: over TLS, with a
//! certificate the current issuer signs for the service's own identity
//! (`linkerd-identity.<namespace>.serviceaccount.<identity-domain>`),
//! renewed with the issuer and before it expires, swapped into rustls with
//! no restart ([`crate::serving`]). The issuer itself is kept current by an [`IssuerReloader`]
//! fed from its Secret's files ([`watch_files`]) or the API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use lanyard_crds::identity::Identity;
use lanyard_crds::time::Clock;
use lanyard_issuer::IdentityIssuer;
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Limits};

use crate::metrics::IdentityMetrics;
use crate::one_write::{SmallFramesService, UnvectoredIo};
use crate::reload::IssuerReloader;
use crate::service::{Authenticator, IdentityService, RateLimit};
pub use crate::serving::{ServingCert, keep_serving_cert, server_config};

/// Requests served at once on one connection; more wait their turn.
pub const MAX_CONCURRENT_PER_CONNECTION: usize = 32;

/// How often the issuer's files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where and how the identity service runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The listen address.
    pub addr: SocketAddr,
    /// The issuer to sign with, kept current by an [`IssuerReloader`]
    /// (see [`watch_files`]) or a Secret watch.
    pub issuer: Arc<ArcSwapOption<IdentityIssuer>>,
    /// The service's own identity, for its serving certificate.
    pub service_identity: Identity,
    /// Where `Certify` calls are counted.
    pub metrics: IdentityMetrics,
    /// How often each identity may call.
    pub rate_limit: RateLimit,
    /// Serve plaintext gRPC instead of TLS: tokens cross the wire in the
    /// clear. For tests on loopback only.
    pub insecure_plaintext: bool,
    /// What one client may hold: connections, handshake and idle time.
    pub limits: Limits,
    /// The lifetime of the workload certificates it issues (Linkerd's
    /// `issuanceLifetime`; [`lanyard_issuer::DEFAULT_LEAF_LIFETIME`], 24h,
    /// by default).
    pub leaf_lifetime: chrono::TimeDelta,
}

/// How often the issuer's files are looked at while none is loaded yet, so
/// the first callers are held only briefly.
pub const FIRST_LOAD_INTERVAL: Duration = Duration::from_millis(100);

/// Reloads the issuer from its Secret's files every [`RELOAD_INTERVAL`]
/// ([`FIRST_LOAD_INTERVAL`] until one is loaded). Runs forever.
pub async fn watch_files<C: Clock>(mut reloader: IssuerReloader, clock: C) {
    loop {
        reloader.poll(clock.now());
        let interval = if reloader.current().load().is_some() {
            RELOAD_INTERVAL
        } else {
            FIRST_LOAD_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}

/// Runs the identity service until `shutdown`: signs with whatever
/// `options.issuer` holds, serves over TLS with a certificate for the
/// service's own identity (or plaintext, when told so). Calls `on_ready`
/// with the bound address.
///
/// Every connection is bounded by `options.limits`. Until the first issuer
/// is loaded, new connections are held (within the handshake timeout)
/// rather than answered UNAVAILABLE, so a caller that starts with the
/// service is certified on its first call. On `shutdown` the listener
/// closes and open connections finish their calls.
pub async fn serve<A: Authenticator, C: Clock + Clone + 'static>(
    options: ServeOptions,
    authenticator: A,
    clock: C,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let cert = Arc::new(ServingCert::default());
    let keeper = tokio::spawn(keep_serving_cert(
        options.issuer.clone(),
        cert.clone(),
        options.service_identity.clone(),
        clock.clone(),
    ));
    let listener_metrics = options.metrics.listener().clone();
    let service = IdentityService::new(options.issuer, authenticator, clock.clone())
        .with_metrics(options.metrics)
        .with_rate_limit(options.rate_limit)
        .with_leaf_lifetime(options.leaf_lifetime)
        .into_server();
    // The one service is served directly: its generated router matches the
    // path (anything else is UNIMPLEMENTED), with no axum router and no
    // boxed bodies in between. Answers leave in one write (`one_write`).
    let routes = hyper_util::service::TowerToHyperService::new(SmallFramesService(service));
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    let mut listener = BoundedListener::new(listener, options.limits, listener_metrics, "identity");
    let bound = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.addr,
        source,
    })?;
    on_ready(bound);
    let acceptor = (!options.insecure_plaintext).then(|| {
        tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert.clone(), clock.clone())))
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => break,
        };
        let (cert, acceptor, routes, shutdown) = (
            cert.clone(),
            acceptor.clone(),
            routes.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            let mut builder = slot.http_builder().http2_only();
            builder
                .http2()
                .max_concurrent_streams(MAX_CONCURRENT_PER_CONNECTION as u32)
                // gRPC has no use for a `date` header (grpc-go sends none);
                // leaving it out saves encoding one per answer.
                .auto_date_header(false);
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = slot
                        .handshake(async {
                            cert.wait_ready().await;
                            acceptor.accept(tcp).await
                        })
                        .await;
                    match tls {
                        Ok(tls) => {
                            slot.serve_http(&builder, UnvectoredIo(tls), routes, &shutdown)
                                .await
                        }
                        Err(error) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                    }
                }
                None => {
                    if slot
                        .handshake(async {
                            cert.wait_ready().await;
                            Ok(())
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    slot.serve_http(&builder, UnvectoredIo(tcp), routes, &shutdown)
                        .await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
        // Reap finished connections so the set stays as small as the cap.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Calls in flight finish; connections were told to close.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    keeper.abort();
    Ok(())
}

/// How long a stopping service waits for calls in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the identity service stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
