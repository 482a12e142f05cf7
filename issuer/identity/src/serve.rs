//! Running the identity service as Linkerd runs its own: over TLS, with a
//! certificate the current issuer signs for the service's own identity
//! (`linkerd-identity.<namespace>.serviceaccount.<identity-domain>`),
//! renewed with the issuer and before it expires, swapped into rustls with
//! no restart. The issuer itself is kept current by an [`IssuerReloader`]
//! fed from its Secret's files ([`watch_files`]) or the API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::Identity;
use lanyard_crds::time::Clock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::IdentityMetrics;
use crate::reload::IssuerReloader;
use crate::service::{Authenticator, IdentityService, RateLimit};
use lanyard_issuer::Error;
use lanyard_issuer::{DEFAULT_LEAF_LIFETIME, IdentityIssuer};
use lanyard_issuer::{KeyAlgorithm, SigningKey};
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Limits};

/// Requests served at once on one connection; more wait their turn.
pub const MAX_CONCURRENT_PER_CONNECTION: usize = 32;

/// How often the issuer's files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The service's own certificate, swapped atomically; handshakes read the
/// current one. Until the first is signed, handshakes wait
/// ([`ServingCert::wait_ready`]) instead of failing.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for ServingCert {
    fn default() -> Self {
        ServingCert {
            current: ArcSwapOption::empty(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ServingCert {
    /// Signs a new certificate for `identity` with `issuer` (key made here,
    /// never written) and swaps it in. Returns its end.
    pub fn renew(
        &self,
        issuer: &IdentityIssuer,
        identity: &Identity,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Error> {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
        let csr = key.certificate_signing_request(identity)?;
        let leaf = issuer.issue(&csr, identity, DEFAULT_LEAF_LIFETIME, now)?;
        let chain = std::iter::once(leaf.leaf_der)
            .chain(leaf.chain_der)
            .collect();
        let certified = key.certified_key(chain)?;
        self.current.store(Some(Arc::new(certified)));
        self.ready.send_replace(true);
        Ok(leaf.validity.not_after)
    }

    /// Completes once a certificate is in place (at once after the first).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}

/// The TLS configuration of the service: HTTP/2 only, the certificate
/// from `cert`, no client certificates (agents authenticate with tokens).
pub fn server_config(cert: Arc<ServingCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

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

/// Keeps the serving certificate current: renews it whenever a new issuer
/// is swapped in and at two thirds of its life. Runs forever.
pub async fn keep_serving_cert<C: Clock>(
    issuer: Arc<ArcSwapOption<IdentityIssuer>>,
    cert: Arc<ServingCert>,
    identity: Identity,
    clock: C,
) {
    let mut signed_by: Option<Arc<IdentityIssuer>> = None;
    let mut renew_at: Option<DateTime<Utc>> = None;
    loop {
        let now = clock.now();
        if let Some(current) = issuer.load_full() {
            let new_issuer = !signed_by
                .as_ref()
                .is_some_and(|seen| Arc::ptr_eq(seen, &current));
            if new_issuer || renew_at.is_none_or(|at| now >= at) {
                match cert.renew(&current, &identity, now) {
                    Ok(not_after) => {
                        renew_at = Some(now + (not_after - now) * 2 / 3);
                        signed_by = Some(current);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot renew the identity service's certificate");
                        renew_at = Some(now + TimeDelta::seconds(10));
                    }
                }
            }
        }
        let interval = if signed_by.is_some() {
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
    let service = IdentityService::new(options.issuer, authenticator, clock)
        .with_metrics(options.metrics)
        .with_rate_limit(options.rate_limit)
        .into_server();
    let routes = hyper_util::service::TowerToHyperService::new(
        tonic::service::Routes::new(service).prepare(),
    );
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
    let acceptor = (!options.insecure_plaintext)
        .then(|| tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert.clone()))));
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
                .max_concurrent_streams(MAX_CONCURRENT_PER_CONNECTION as u32);
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = slot
                        .handshake(async {
                            cert.wait_ready().await;
                            acceptor.accept(tcp).await
                        })
                        .await;
                    match tls {
                        Ok(tls) => slot.serve_http(&builder, tls, routes, &shutdown).await,
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
                    slot.serve_http(&builder, tcp, routes, &shutdown).await
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
