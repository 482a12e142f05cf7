//! The outbound side: the application's plaintext carried over mTLS to a
//! peer proxy that must present the expected identity.

use std::net::SocketAddr;
use std::sync::Arc;

use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::BoundedListener;
use tokio::net::TcpStream;

use super::Drain;
use super::metrics::ProxyMetrics;
use super::tls::TrustBundle;

/// One outbound route: plaintext from the application on a local port,
/// mTLS to a peer proxy that must present `identity`.
#[derive(Debug, Clone)]
pub struct OutboundRoute {
    /// The peer proxy's inbound address.
    pub target: SocketAddr,
    /// The identity the peer must present.
    pub identity: String,
}

/// Accepts the application's plaintext connections and carries each over
/// mTLS to `route.target`, until `shutdown`. Reaching the peer and the
/// mTLS handshake must finish within the listener's handshake timeout.
pub async fn serve_outbound(
    mut listener: BoundedListener,
    route: OutboundRoute,
    bundle: Arc<TrustBundle>,
    metrics: ProxyMetrics,
    drain: Arc<Drain>,
    shutdown: Shutdown,
) {
    let Ok(name) = rustls::pki_types::ServerName::try_from(route.identity.clone()) else {
        tracing::error!(
            identity = route.identity,
            "not a DNS name; outbound route disabled"
        );
        return;
    };
    loop {
        let (mut app, _, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return,
        };
        let (bundle, metrics, drain, name, target) = (
            bundle.clone(),
            metrics.clone(),
            drain.clone(),
            name.clone(),
            route.target,
        );
        tokio::spawn(async move {
            let _active = drain.enter();
            let connector = tokio_rustls::TlsConnector::from(bundle.current().client.clone());
            let tcp = match slot.handshake(TcpStream::connect(target)).await {
                Ok(tcp) => tcp,
                Err(error) => {
                    tracing::warn!(%target, %error, "cannot reach the peer proxy");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let mut tls = match slot.handshake(connector.connect(name, tcp)).await {
                Ok(tls) => tls,
                Err(error) => {
                    metrics.outbound_tls_error();
                    tracing::warn!(%target, %error, "mTLS to the peer proxy failed");
                    return;
                }
            };
            let _ = tokio::io::copy_bidirectional(&mut app, &mut tls).await;
        });
    }
}
