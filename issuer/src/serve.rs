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

use crate::Error;
use crate::ca::{DEFAULT_LEAF_LIFETIME, IdentityIssuer};
use crate::key::{KeyAlgorithm, SigningKey};
use crate::metrics::IdentityMetrics;
use crate::reload::IssuerReloader;
use crate::service::{Authenticator, IdentityService, RateLimit};

/// Requests served at once on one connection; more wait their turn.
pub const MAX_CONCURRENT_PER_CONNECTION: usize = 32;

/// How often the issuer's files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The service's own certificate, swapped atomically; handshakes read the
/// current one.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
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
        Ok(leaf.validity.not_after)
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
}

/// Reloads the issuer from its Secret's files every [`RELOAD_INTERVAL`].
/// Runs forever.
pub async fn watch_files<C: Clock>(mut reloader: IssuerReloader, clock: C) {
    loop {
        reloader.poll(clock.now());
        tokio::time::sleep(RELOAD_INTERVAL).await;
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
        tokio::time::sleep(RELOAD_INTERVAL).await;
    }
}

/// Runs the identity service until `shutdown`: signs with whatever
/// `options.issuer` holds, serves over TLS with a certificate for the
/// service's own identity (or plaintext, when told so). Calls `on_ready`
/// with the bound address.
pub async fn serve<A: Authenticator, C: Clock + Clone + 'static>(
    options: ServeOptions,
    authenticator: A,
    clock: C,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cert = Arc::new(ServingCert::default());
    let keeper = tokio::spawn(keep_serving_cert(
        options.issuer.clone(),
        cert.clone(),
        options.service_identity.clone(),
        clock.clone(),
    ));
    let service = IdentityService::new(options.issuer, authenticator, clock)
        .with_metrics(options.metrics)
        .with_rate_limit(options.rate_limit)
        .into_server();
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.addr,
        source,
    })?;
    on_ready(bound);
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION)
        .add_service(service);
    let result = if options.insecure_plaintext {
        router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    } else {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(cert)));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                // Without this, Nagle holds each response's last segment
                // until the client's delayed ACK: ~40 ms a call.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    }
                });
            }
        });
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let result = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        accept.abort();
        result
    };
    keeper.abort();
    result.map_err(ServeError::Serve)
}

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
    /// The server failed.
    #[error("the identity service failed: {0}")]
    Serve(tonic::transport::Error),
}
