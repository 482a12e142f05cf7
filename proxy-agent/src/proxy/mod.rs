//! The mTLS proxy. Inbound, it accepts mTLS (or plaintext, which is
//! treated as unauthenticated), takes the client's identity from its
//! certificate, asks the [`Policy`](lanyard_policy::Policy), and forwards
//! what is allowed to the application: HTTP/1.1 and HTTP/2 per request
//! (a denied request gets 403, or gRPC status 7), translated to the
//! version the application speaks (the Server's `proxyProtocol`, else the
//! client's), anything else as opaque TCP (a denied connection is closed). Outbound, it takes plaintext from
//! the application and originates mTLS to a peer proxy, checking that the
//! peer presents the expected identity.

mod http;
pub mod metrics;
mod outbound;
pub mod tls;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Slot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use http::HttpService;
use lanyard_policy::{Client, Policy, Verdict, Workload};
use metrics::{Peer, ProxyMetrics, TlsLabel};
pub use outbound::{OutboundRoute, serve_outbound};
use tls::TrustBundle;

/// How long the proxy waits for a client's first bytes to tell HTTP from
/// opaque TCP, on ports whose Server does not say.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The header carrying the verified client identity to the application,
/// as Linkerd's proxy sets it. Any copy sent by the client is removed.
pub const CLIENT_ID_HEADER: &str = "l5d-client-id";

/// Connections being served, for a graceful drain.
#[derive(Debug, Default)]
pub struct Drain {
    active: AtomicUsize,
    idle: tokio::sync::Notify,
}

struct Active<'a>(&'a Drain);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    fn enter(&self) -> Active<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self)
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, or `timeout`.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            while self.active() > 0 {
                let idle = self.idle.notified();
                if self.active() == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
    }
}

/// What the inbound side serves.
#[derive(Debug)]
pub struct Inbound {
    /// The application's address (usually loopback).
    pub app: SocketAddr,
    /// The pod the proxy fronts (shared with each connection's requests).
    pub workload: Arc<Workload>,
    /// The current policy, swapped on reload.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The trust bundle and TLS configurations.
    pub bundle: Arc<TrustBundle>,
    /// Decisions and errors.
    pub metrics: ProxyMetrics,
    /// Open connections.
    pub drain: Arc<Drain>,
}

/// Accepts inbound connections until `shutdown`; HTTP connections are
/// then closed gracefully (requests in flight finish).
pub async fn serve_inbound(
    mut listener: BoundedListener,
    inbound: Arc<Inbound>,
    shutdown: Shutdown,
) {
    let pool = upstream::pool();
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return,
        };
        let inbound = inbound.clone();
        let pool = pool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let drain = inbound.drain.clone();
            let _active = drain.enter();
            if let Err(error) =
                inbound_connection(tcp, peer, &slot, &inbound, pool, &shutdown).await
            {
                tracing::debug!(%peer, %error, "inbound connection ended");
            }
        });
    }
}

async fn inbound_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    inbound: &Inbound,
    pool: upstream::Pool,
    shutdown: &Shutdown,
) -> std::io::Result<()> {
    // The first byte and the TLS handshake must come within the handshake
    // timeout: an idle or slow client holds nothing for long.
    let mut first = [0u8; 1];
    let n = slot.handshake(tcp.peek(&mut first)).await?;
    if n == 0 {
        return Ok(());
    }
    let port = inbound.app.port();
    // Linkerd's `target_addr` is the original destination: the pod's
    // address the client connected to, and the application's port.
    let target = SocketAddr::new(tcp.local_addr()?.ip().to_canonical(), port);
    if first[0] == 0x16 {
        let acceptor = tokio_rustls::TlsAcceptor::from(inbound.bundle.current().server.clone());
        let tls = match slot.handshake(acceptor.accept(tcp)).await {
            Ok(tls) => tls,
            Err(error) => {
                let server = inbound.policy.load().server_ref(&inbound.workload, port);
                inbound.metrics.http_error("tls", target, server);
                tracing::info!(%peer, %error, "TLS handshake failed");
                return Ok(());
            }
        };
        let identity = tls::peer_identity(tls.get_ref().1.peer_certificates());
        let labels = Peer {
            target,
            tls: TlsLabel::Established {
                client_id: identity.clone(),
            },
        };
        let client = Client {
            identity,
            ip: peer.ip(),
        };
        serve_stream(tls, client, labels, inbound, pool, slot, shutdown).await
    } else {
        // Plaintext: never trusted, always unauthenticated.
        let client = Client {
            identity: None,
            ip: peer.ip(),
        };
        let labels = Peer {
            target,
            tls: TlsLabel::NoTlsFromRemote,
        };
        serve_stream(tcp, client, labels, inbound, pool, slot, shutdown).await
    }
}

/// What the first bytes say the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Opaque,
}

fn detect(prefix: &[u8]) -> Option<Protocol> {
    const H2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if prefix.starts_with(H2) || METHODS.iter().any(|m| prefix.starts_with(m)) {
        return Some(Protocol::Http);
    }
    let could_be = H2.starts_with(prefix) || METHODS.iter().any(|m| m.starts_with(prefix));
    (!could_be).then_some(Protocol::Opaque)
}

async fn serve_stream<S>(
    mut stream: S,
    client: Client,
    peer: Peer,
    inbound: &Inbound,
    pool: upstream::Pool,
    slot: &Slot,
    shutdown: &Shutdown,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let port = inbound.app.port();
    let declared = inbound
        .policy
        .load()
        .server_protocol(&inbound.workload, port)
        .map(str::to_string);
    let mut prefix = Vec::new();
    let protocol = match declared.as_deref() {
        Some("opaque") => Protocol::Opaque,
        Some("HTTP/1" | "HTTP/2" | "gRPC") => Protocol::Http,
        _ => {
            let mut buf = [0u8; 24];
            let detected = tokio::time::timeout(DETECT_TIMEOUT, async {
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(Protocol::Opaque);
                    }
                    prefix.extend_from_slice(&buf[..n]);
                    if let Some(p) = detect(&prefix) {
                        return Ok(p);
                    }
                    if prefix.len() >= 24 {
                        return Ok(Protocol::Opaque);
                    }
                }
            })
            .await;
            match detected {
                Ok(result) => result?,
                Err(_) => Protocol::Opaque,
            }
        }
    };
    let stream = Prefixed {
        prefix,
        offset: 0,
        inner: stream,
    };
    match protocol {
        Protocol::Opaque => serve_opaque(stream, client, &peer, inbound).await,
        Protocol::Http => {
            let client_id = client.identity.as_deref().and_then(|id| id.parse().ok());
            // One allocation per connection; each request clones a pointer.
            let service = Arc::new(HttpService {
                client,
                client_id,
                port,
                policy: inbound.policy.clone(),
                workload: Arc::clone(&inbound.workload),
                metrics: inbound.metrics.connection(peer),
                upstream: upstream::Upstream::new(inbound.app, pool)?,
            });
            let builder = slot.http_builder();
            slot.serve_http(
                &builder,
                stream,
                hyper::service::service_fn(move |req| {
                    let service = service.clone();
                    async move { Ok::<_, Infallible>(service.handle(req).await) }
                }),
                shutdown,
            )
            .await
            .map_err(std::io::Error::other)
        }
    }
}

async fn serve_opaque<S>(
    mut stream: S,
    client: Client,
    peer: &Peer,
    inbound: &Inbound,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let decision =
        inbound
            .policy
            .load()
            .authorize(&inbound.workload, inbound.app.port(), &client, None);
    inbound.metrics.tcp_decision(peer, &decision);
    if decision.verdict != Verdict::Allow {
        tracing::info!(identity = ?client.identity, ip = %client.ip, server = ?decision.server, "connection denied");
        return Ok(());
    }
    let mut app = TcpStream::connect(inbound.app).await?;
    let _ = app.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut stream, &mut app).await?;
    Ok(())
}

/// A stream whose first bytes (read to detect the protocol) are replayed.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_tells_http_from_opaque_as_soon_as_it_can() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http)
        );
        assert_eq!(detect(b"GE"), None, "could still be GET");
        assert_eq!(detect(b"PRI"), None);
        assert_eq!(detect(b"\x00\x00\x00\x08"), Some(Protocol::Opaque));
        assert_eq!(detect(b"GEX"), Some(Protocol::Opaque));
    }
}
