//! The application side of one inbound connection.
//!
//! An HTTP/1 client sends its requests one after another, so one
//! connection to the application, made for the first allowed request and
//! kept while the inbound connection lives, carries them all in order:
//! no pool to look up, lock and give back to on every request, and the
//! application sees one connection per client connection, as it would
//! without a proxy. An HTTP/2 client's streams share one HTTP/2
//! connection to an HTTP/2 application the same way. Only an HTTP/2
//! client's concurrent requests to an HTTP/1 application need more than
//! one connection at a time: those beyond the first go through a pool
//! shared by the listener.

use std::net::SocketAddr;
use std::sync::Mutex;

use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Parts, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// The shared pool for what one connection cannot carry.
pub(super) type Pool = PooledClient<HttpConnector, Incoming>;

/// A pool toward the application. Nagle would hold a request body written
/// in pieces until the application's delayed ACK.
pub(super) fn pool() -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    PooledClient::builder(TokioExecutor::new()).build(connector)
}

/// Why the application did not answer a request.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    /// No connection could be made.
    #[error("cannot connect to the application at {app}: {source}")]
    Connect {
        app: SocketAddr,
        source: std::io::Error,
    },
    /// The connection was made but HTTP failed on it.
    #[error("HTTP to the application failed: {0}")]
    Http(#[from] hyper::Error),
    /// The shared pool failed.
    #[error("HTTP to the application failed: {0}")]
    Pooled(#[from] hyper_util::client::legacy::Error),
}

/// The HTTP/1 connection of one inbound connection.
#[derive(Default)]
enum Http1Slot {
    /// None made yet, or the last one closed.
    #[default]
    Empty,
    /// Made, and not carrying a request.
    Idle(http1::SendRequest<Incoming>),
    /// Carrying a request (only an HTTP/2 client sends another meanwhile).
    Busy,
}

/// The application connections of one inbound connection.
pub(super) struct Upstream {
    app: SocketAddr,
    /// `app` as an authority, and as a `Host` value, made once.
    authority: Authority,
    host: HeaderValue,
    http1: Mutex<Http1Slot>,
    http2: Mutex<Option<http2::SendRequest<Incoming>>>,
    pool: Pool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("app", &self.app).finish()
    }
}

/// Puts the HTTP/1 connection back when the request has its response, or
/// empties the slot when the request was dropped half-way (its connection
/// is then in an unknown state and is not reused).
struct Lease<'a> {
    slot: &'a Mutex<Http1Slot>,
    sender: Option<http1::SendRequest<Incoming>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        *lock(self.slot) = match self.sender.take() {
            Some(sender) if !sender.is_closed() => Http1Slot::Idle(sender),
            _ => Http1Slot::Empty,
        };
    }
}

/// A lock that a panic elsewhere cannot poison for good: the slot holds a
/// connection or nothing, both valid whatever happened.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Upstream {
    /// The application connections for one inbound connection; none is
    /// made until a request needs it.
    pub(super) fn new(app: SocketAddr, pool: Pool) -> std::io::Result<Self> {
        let authority: Authority = app.to_string().parse().map_err(std::io::Error::other)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(std::io::Error::other)?;
        Ok(Upstream {
            app,
            authority,
            host,
            http1: Mutex::default(),
            http2: Mutex::default(),
            pool,
        })
    }

    /// The application's address as a `Host` value: the `Host` of an
    /// HTTP/1 request without one.
    pub(super) fn host(&self) -> &HeaderValue {
        &self.host
    }

    async fn tcp(&self) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let connect = |source| UpstreamError::Connect {
            app: self.app,
            source,
        };
        let tcp = TcpStream::connect(self.app).await.map_err(connect)?;
        tcp.set_nodelay(true).map_err(connect)?;
        Ok(TokioIo::new(tcp))
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Incoming>, UpstreamError> {
        let (sender, connection) = http1::handshake(self.tcp().await?).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "application connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(self.tcp().await?)
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "application connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form, with its `Host`) to an HTTP/1 application.
    pub(super) async fn http1(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let previous = std::mem::replace(&mut *lock(&self.http1), Http1Slot::Busy);
        let held = match previous {
            Http1Slot::Idle(sender) => Some(sender),
            Http1Slot::Empty => None,
            Http1Slot::Busy => return self.pooled(req).await,
        };
        let mut lease = Lease {
            slot: &self.http1,
            sender: None,
        };
        let mut sender = match held {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect_http1().await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect_http1().await?;
            sender.ready().await?;
        }
        let sent = sender.try_send_request(req).await;
        lease.sender = Some(sender);
        match sent {
            Ok(response) => Ok(response),
            // The application closed its idle connection as the request
            // was handed over, before any of it was written: a new
            // connection takes it, as a pool would retry it.
            Err(error) => {
                let req = unsent(error)?;
                let mut sender = self.connect_http1().await?;
                sender.ready().await?;
                let response = sender.send_request(req).await;
                lease.sender = Some(sender);
                Ok(response?)
            }
        }
    }

    /// Sends `req` (absolute-form) to an HTTP/2 application.
    pub(super) async fn http2(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let held = lock(&self.http2)
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned();
        let mut sender = match held {
            Some(sender) => sender,
            None => self.fresh_http2().await?,
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(error) => {
                let req = unsent(error)?;
                let mut sender = self.fresh_http2().await?;
                Ok(sender.send_request(req).await?)
            }
        }
    }

    async fn fresh_http2(&self) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let sender = self.connect_http2().await?;
        *lock(&self.http2) = Some(sender.clone());
        Ok(sender)
    }

    async fn pooled(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = req;
        // The pool needs the application's address in the target; it
        // sends origin-form with the request's own `Host`.
        if let Some(uri) = self.absolute_form(req.uri()) {
            *req.uri_mut() = uri;
        }
        Ok(self.pool.request(req).await?)
    }

    /// `uri`'s path and query with the application as scheme and
    /// authority: the target of a request to an HTTP/2 application or
    /// through the pool. `None` when no URI can be made of them.
    pub(super) fn absolute_form(&self, uri: &Uri) -> Option<Uri> {
        let mut parts = Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).ok()
    }
}

/// The request back from a send that never wrote it, else the error.
fn unsent(mut error: TrySendError<Request<Incoming>>) -> Result<Request<Incoming>, UpstreamError> {
    match error.take_message() {
        Some(req) => Ok(req),
        None => Err(UpstreamError::Http(error.into_error())),
    }
}
