//! The mTLS proxy. Inbound, it accepts mTLS (or plaintext, which is
//! treated as unauthenticated), takes the client's identity from its
//! certificate, asks the [`Policy`](lanyard_policy::Policy), and forwards
//! what is allowed to the application: HTTP/1.1 and HTTP/2 per request
//! (a denied request gets 403, or gRPC status 7), translated to the
//! version the application speaks (the Server's `proxyProtocol`, else the
//! client's), anything else as opaque TCP (a denied connection is closed). Outbound, it takes plaintext from
//! the application and originates mTLS to a peer proxy, checking that the
//! peer presents the expected identity.

pub mod metrics;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Slot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use lanyard_policy::{Client, Decision, HttpRequest, Policy, Verdict, Workload};
use metrics::{ClassifiedBody, ConnectionMetrics, Peer, ProxyMetrics, TlsLabel};
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
    /// The pod the proxy fronts.
    pub workload: Workload,
    /// The current policy, swapped on reload.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The trust bundle and TLS configurations.
    pub bundle: Arc<TrustBundle>,
    /// Decisions and errors.
    pub metrics: ProxyMetrics,
    /// Open connections.
    pub drain: Arc<Drain>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Accepts inbound connections until `shutdown`; HTTP connections are
/// then closed gracefully (requests in flight finish).
pub async fn serve_inbound(
    mut listener: BoundedListener,
    inbound: Arc<Inbound>,
    shutdown: Shutdown,
) {
    // Nagle would hold a request body written in pieces until the app's
    // delayed ACK.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http1 = HttpClient::builder(TokioExecutor::new()).build(connector.clone());
    let http2 = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    loop {
        let (tcp, peer, slot) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.wait() => return,
        };
        let inbound = inbound.clone();
        let clients = (http1.clone(), http2.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let drain = inbound.drain.clone();
            let _active = drain.enter();
            if let Err(error) =
                inbound_connection(tcp, peer, &slot, &inbound, clients, &shutdown).await
            {
                tracing::debug!(%peer, %error, "inbound connection ended");
            }
        });
    }
}

type Clients = (
    HttpClient<HttpConnector, Incoming>,
    HttpClient<HttpConnector, Incoming>,
);

async fn inbound_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    inbound: &Inbound,
    clients: Clients,
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
        serve_stream(tls, client, labels, inbound, clients, slot, shutdown).await
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
        serve_stream(tcp, client, labels, inbound, clients, slot, shutdown).await
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
    clients: Clients,
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
            let service = HttpService {
                client: Arc::new(client),
                port,
                policy: inbound.policy.clone(),
                workload: Arc::new(inbound.workload.clone()),
                authority: inbound
                    .app
                    .to_string()
                    .parse()
                    .map_err(std::io::Error::other)?,
                metrics: Arc::new(inbound.metrics.connection(peer)),
                clients: Arc::new(clients),
            };
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

#[derive(Clone)]
struct HttpService {
    client: Arc<Client>,
    port: u16,
    policy: Arc<ArcSwap<Policy>>,
    workload: Arc<Workload>,
    authority: hyper::http::uri::Authority,
    metrics: Arc<ConnectionMetrics>,
    clients: Arc<Clients>,
}

impl HttpService {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let request = HttpRequest {
            path: req.uri().path().to_string(),
            method: req.method().as_str().to_string(),
        };
        let (decision, declared) = {
            let policy = self.policy.load();
            let decision =
                policy.authorize(&self.workload, self.port, &self.client, Some(&request));
            let declared = app_protocol(
                policy.server_protocol(&self.workload, self.port),
                req.version(),
            );
            (decision, declared)
        };
        let exchange = self.metrics.http_decision(&decision);
        let grpc = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let Some(exchange) = exchange else {
            return refuse(&decision, grpc);
        };
        if decision.audit {
            tracing::info!(identity = ?self.client.identity, path = request.path, "audit: would be denied");
        }
        // The application learns the verified identity, and only that.
        let headers = req.headers_mut();
        headers.remove(CLIENT_ID_HEADER);
        if let Some(id) = &self.client.identity
            && let Ok(value) = id.parse()
        {
            headers.insert(CLIENT_ID_HEADER, value);
        }
        let client_version = req.version();
        match declared {
            AppProtocol::Http1 if client_version == hyper::Version::HTTP_2 => {
                h2_to_h1(&mut req);
            }
            AppProtocol::Http2 if client_version != hyper::Version::HTTP_2 => {
                strip_hop_by_hop(req.headers_mut());
                *req.version_mut() = hyper::Version::HTTP_2;
            }
            _ => {}
        }
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        let Ok(uri) = hyper::Uri::from_parts(parts) else {
            return status(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        *req.uri_mut() = uri;
        let client = match declared {
            AppProtocol::Http2 => &self.clients.1,
            AppProtocol::Http1 => &self.clients.0,
        };
        match client.request(req).await {
            Ok(mut response) => {
                let h2 = |v: hyper::Version| v == hyper::Version::HTTP_2;
                if h2(response.version()) != h2(client_version) {
                    // An HTTP/1 response's connection fields mean nothing
                    // on the client's HTTP/2 connection (and are illegal
                    // there); the reverse needs nothing.
                    if h2(client_version) {
                        strip_hop_by_hop(response.headers_mut());
                    }
                    *response.version_mut() = client_version;
                }
                let pending = exchange.responded(grpc, &response);
                response.map(|b| ClassifiedBody::new(b, pending).boxed())
            }
            Err(error) => {
                exchange.failed();
                tracing::warn!(%error, "the application did not answer");
                status(StatusCode::BAD_GATEWAY, "the application did not answer\n")
            }
        }
    }
}

/// The HTTP version the application is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppProtocol {
    Http1,
    Http2,
}

/// What the application speaks, as Linkerd decides it: the Server's
/// `proxyProtocol` when it names an HTTP version (`HTTP/1`: HTTP/1.1
/// whatever the client spoke; `HTTP/2` and `gRPC`: HTTP/2), else the
/// client's own version.
fn app_protocol(declared: Option<&str>, client: hyper::Version) -> AppProtocol {
    match declared {
        Some("HTTP/1") => AppProtocol::Http1,
        Some("HTTP/2" | "gRPC") => AppProtocol::Http2,
        _ if client == hyper::Version::HTTP_2 => AppProtocol::Http2,
        _ => AppProtocol::Http1,
    }
}

/// Turns an HTTP/2 request into an HTTP/1.1 one: `:authority` becomes the
/// `Host` header (HTTP/1.1 requires one; the request target sent is
/// origin-form), and split `cookie` fields are joined as HTTP/1 wants them.
fn h2_to_h1<B>(req: &mut Request<B>) {
    *req.version_mut() = hyper::Version::HTTP_11;
    if !req.headers().contains_key(hyper::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = authority.as_str().parse()
    {
        req.headers_mut().insert(hyper::header::HOST, host);
    }
    let headers = req.headers_mut();
    if headers.get_all(hyper::header::COOKIE).iter().count() > 1 {
        let joined: Vec<&[u8]> = headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Ok(value) = hyper::header::HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(hyper::header::COOKIE, value);
        }
    }
}

/// Removes the connection-specific fields HTTP/2 forbids: those named by
/// `Connection`, and `Connection`, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Upgrade`, and `TE` other than `trailers`.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<hyper::header::HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    let te_trailers_only = headers
        .get_all(hyper::header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers_only {
        headers.remove(hyper::header::TE);
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = code;
    response
}

/// 403 for HTTP, gRPC status 7 (`PERMISSION_DENIED`) in a trailers-only
/// response for gRPC; 404 / gRPC 12 when no route matches.
fn refuse(decision: &Decision, grpc: bool) -> Response<Body> {
    let no_route = decision.verdict == Verdict::NoRoute;
    if grpc {
        let mut response = Response::new(full(""));
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::CONTENT_TYPE,
            "application/grpc".parse().expect("valid"),
        );
        headers.insert(
            "grpc-status",
            if no_route { "12" } else { "7" }.parse().expect("valid"),
        );
        headers.insert(
            "grpc-message",
            if no_route {
                "no route"
            } else {
                "unauthorized to access this server"
            }
            .parse()
            .expect("valid"),
        );
        response
    } else if no_route {
        status(StatusCode::NOT_FOUND, "no route\n")
    } else {
        status(
            StatusCode::FORBIDDEN,
            "forbidden: unauthorized to access this server\n",
        )
    }
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

    #[test]
    fn the_application_is_spoken_to_in_the_servers_protocol_else_the_clients() {
        use hyper::Version;
        let cases = [
            (
                "HTTP/1 turns HTTP/2 into HTTP/1.1",
                Some("HTTP/1"),
                Version::HTTP_2,
                AppProtocol::Http1,
            ),
            (
                "HTTP/1 keeps HTTP/1.1",
                Some("HTTP/1"),
                Version::HTTP_11,
                AppProtocol::Http1,
            ),
            (
                "HTTP/2 turns HTTP/1.1 into HTTP/2",
                Some("HTTP/2"),
                Version::HTTP_11,
                AppProtocol::Http2,
            ),
            (
                "gRPC is HTTP/2",
                Some("gRPC"),
                Version::HTTP_11,
                AppProtocol::Http2,
            ),
            (
                "detected HTTP/2 stays HTTP/2",
                None,
                Version::HTTP_2,
                AppProtocol::Http2,
            ),
            (
                "detected HTTP/1.1 stays HTTP/1.1",
                None,
                Version::HTTP_11,
                AppProtocol::Http1,
            ),
            (
                "unknown HTTP/2 stays HTTP/2",
                Some("unknown"),
                Version::HTTP_2,
                AppProtocol::Http2,
            ),
            (
                "HTTP/1.0 is HTTP/1",
                None,
                Version::HTTP_10,
                AppProtocol::Http1,
            ),
        ];
        for (case, declared, client, want) in cases {
            assert_eq!(app_protocol(declared, client), want, "{case}");
        }
    }

    #[test]
    fn an_http2_request_sent_as_http1_carries_its_authority_as_host() {
        let mut req = Request::builder()
            .version(hyper::Version::HTTP_2)
            .uri("https://api.shop:8443/index.html")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        h2_to_h1(&mut req);
        assert_eq!(req.version(), hyper::Version::HTTP_11);
        assert_eq!(req.headers()["host"], "api.shop:8443");
        assert_eq!(req.headers()["cookie"], "a=1; b=2");
        assert_eq!(req.headers().get_all("cookie").iter().count(), 1);

        // A Host the client sent is kept.
        let mut req = Request::builder()
            .version(hyper::Version::HTTP_2)
            .uri("https://api.shop/")
            .header("host", "other")
            .body(())
            .unwrap();
        h2_to_h1(&mut req);
        assert_eq!(req.headers()["host"], "other");
    }

    #[test]
    fn connection_specific_fields_are_removed_for_http2() {
        let mut headers = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("content-type", "text/plain"),
            ("host", "api"),
        ] {
            headers.append(k, v.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "host"]);

        let mut headers = hyper::HeaderMap::new();
        headers.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers["te"], "trailers", "gRPC needs `te: trailers`");
    }
}
