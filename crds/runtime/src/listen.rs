//! Listeners that outsiders cannot exhaust, as HAProxy bounds its own with
//! `maxconn` and `timeout client`:
//!
//! - a **connection cap**: a connection over it is closed at once and
//!   counted (`..._connections_refused_total`);
//! - **accept errors** (EMFILE when descriptors run out, ECONNABORTED) are
//!   logged, counted and backed off (5 ms doubling to 1 s), never retried
//!   in a spin;
//! - a **handshake timeout** bounds everything before the first request
//!   (TLS, protocol detection);
//! - an **idle timeout** closes HTTP connections that moved no bytes for
//!   that long (gracefully: a request in flight finishes), and bounds the
//!   wait for each HTTP/1 request head.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Backoff, Shutdown};

/// What a listener lets one outsider hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// From accept to a usable connection (TLS handshake, protocol
    /// detection).
    pub handshake_timeout: Duration,
    /// An HTTP connection that moves no bytes for this long, or an HTTP/1
    /// connection that has not sent a whole request head for this long, is
    /// closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default idle timeout: above the 90 s for which common HTTP clients
/// (Go's, hyper's) keep an idle pooled connection, so the client, not the
/// server, closes first and no request races a close.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A listener's counters, registered under a prefix of the owner's choice
/// (`lanyard_identity`, `lanyard_proxy_inbound`).
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    open: Gauge,
    refused: Counter,
    accept_errors: Counter,
    handshake_timeouts: Counter,
    idle_closed: Counter,
}

impl ListenerMetrics {
    /// Fresh counters.
    pub fn new() -> Self {
        ListenerMetrics::default()
    }

    /// Adds the counters to `registry` as `<prefix>_connections_open`,
    /// `<prefix>_connections_refused_total`, `<prefix>_accept_errors_total`,
    /// `<prefix>_handshake_timeouts_total` and
    /// `<prefix>_idle_connections_closed_total`.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        registry.register(
            format!("{prefix}_connections_open"),
            "Connections open now",
            self.open.clone(),
        );
        registry.register(
            format!("{prefix}_connections_refused"),
            "Connections closed on arrival because the connection cap was reached",
            self.refused.clone(),
        );
        registry.register(
            format!("{prefix}_accept_errors"),
            "Errors accepting connections (e.g. out of file descriptors); each is backed off",
            self.accept_errors.clone(),
        );
        registry.register(
            format!("{prefix}_handshake_timeouts"),
            "Connections closed because the handshake did not finish in time",
            self.handshake_timeouts.clone(),
        );
        registry.register(
            format!("{prefix}_idle_connections_closed"),
            "Connections closed after moving no bytes for the idle timeout",
            self.idle_closed.clone(),
        );
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    /// Connections refused over the cap so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Accept errors so far.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.get()
    }

    /// Handshake timeouts so far.
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeouts.get()
    }
}

/// A TCP listener with [`Limits`].
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    limits: Limits,
    slots: Arc<Semaphore>,
    metrics: ListenerMetrics,
    backoff: Backoff,
    name: &'static str,
}

impl BoundedListener {
    /// Bounds `listener`; `name` names it in log lines.
    pub fn new(
        listener: TcpListener,
        limits: Limits,
        metrics: ListenerMetrics,
        name: &'static str,
    ) -> Self {
        BoundedListener {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            metrics,
            backoff: Backoff::accept(),
            name,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the cap, with `TCP_NODELAY` set. Never
    /// fails: an accept error is logged, counted and backed off, and a
    /// connection over the cap is closed and counted, before waiting for
    /// the next.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.backoff.reset();
                    let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                        self.metrics.refused.inc();
                        tracing::debug!(listener = self.name, %peer, max = self.limits.max_connections, "connection cap reached; connection closed");
                        drop(tcp);
                        continue;
                    };
                    // Nagle would hold each response's last segment until
                    // the peer's delayed ACK (~40 ms).
                    let _ = tcp.set_nodelay(true);
                    self.metrics.open.inc();
                    let slot = Slot {
                        _permit: permit,
                        limits: self.limits,
                        metrics: self.metrics.clone(),
                    };
                    return (tcp, peer, slot);
                }
                Err(error) => {
                    self.metrics.accept_errors.inc();
                    let delay = self.backoff.next_delay();
                    tracing::warn!(listener = self.name, %error, retry_in = ?delay, "accept failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// One connection's place under the cap, freed when dropped; it carries
/// the listener's limits for the connection's handshake and idle time.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limits: Limits,
    metrics: ListenerMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

impl Slot {
    /// The listener's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs a handshake (TLS, protocol detection) within the handshake
    /// timeout; a timeout is counted and is an `io::ErrorKind::TimedOut`.
    pub async fn handshake<T>(
        &self,
        handshake: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
            Ok(result) => result,
            Err(_) => {
                self.metrics.handshake_timeouts.inc();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no handshake within {:?}", self.limits.handshake_timeout),
                ))
            }
        }
    }

    /// An HTTP/1 and HTTP/2 server builder for this connection. HTTP/1
    /// waits for a request's headers, between requests too, at most the
    /// idle timeout (hyper's header read timeout also runs while a kept-alive
    /// connection waits for its next request).
    pub fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle_timeout);
        builder.http2().timer(TokioTimer::new());
        builder
    }

    /// Serves HTTP on `io` with `builder` until the peer closes, the
    /// connection has moved no bytes for the idle timeout, or `shutdown`;
    /// the last two close it gracefully (requests in flight finish).
    pub async fn serve_http<I, S, B>(
        &self,
        builder: &auto::Builder<TokioExecutor>,
        io: I,
        service: S,
        shutdown: &Shutdown,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = hyper::Response<B>,
            > + Send,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Arc::new(AtomicU64::new(0));
        let io = Tracked {
            inner: io,
            activity: activity.clone(),
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = self.limits.idle_timeout;
        let mut seen = activity.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if result.as_ref().is_err_and(|e| is_timeout(e.as_ref())) {
                        self.metrics.idle_closed.inc();
                    }
                    return result;
                }
                () = shutdown.wait() => break,
                () = tokio::time::sleep(idle) => {
                    let now = activity.load(Ordering::Relaxed);
                    if now == seen {
                        self.metrics.idle_closed.inc();
                        break;
                    }
                    seen = now;
                }
            }
        }
        connection.as_mut().graceful_shutdown();
        connection.await
    }
}

/// Whether a connection ended on hyper's header read timeout: an HTTP/1
/// connection idle between requests, or one sending headers too slowly.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

/// An I/O stream that counts the reads and writes that moved bytes, so an
/// idle connection can be told from a busy one.
struct Tracked<I> {
    inner: I,
    activity: Arc<AtomicU64>,
}

impl<I> Tracked<I> {
    fn moved(&self, bytes: usize) {
        if bytes > 0 {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.moved(buf.filled().len() - before);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
