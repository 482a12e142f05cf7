//! The admin server every long-running Lanyard process serves, on its
//! metrics address: `/metrics` (the Prometheus text exposition, rendered at
//! each scrape), `/ready`, `/live` and `/healthz`. One shape for `lanyard
//! up`, `lanyard controller`, `lanyard identity` and `lanyard-proxy`, on a
//! bounded listener like every other port.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode, header};
use prometheus_client::registry::Registry;

use crate::Shutdown;
use crate::listen::{BoundedListener, Limits, ListenerMetrics};

/// The content type of the exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scraper or a probe may hold: a few connections, briefly.
const LIMITS: Limits = Limits {
    max_connections: 64,
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
};

type Render = dyn Fn() -> String + Send + Sync;
type Readiness = dyn Fn() -> Result<&'static str, &'static str> + Send + Sync;

/// What the admin server answers with.
#[derive(Clone)]
pub struct Endpoints {
    metrics: Arc<Render>,
    ready: Arc<Readiness>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

impl Endpoints {
    /// `/metrics` renders `metrics()` at each scrape; `/ready` always
    /// answers 200 `ready`.
    pub fn new(metrics: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Endpoints {
            metrics: Arc::new(metrics),
            ready: Arc::new(|| Ok("ready")),
        }
    }

    /// `/metrics` renders `registry`.
    pub fn registry(registry: Arc<Registry>) -> Self {
        Self::new(move || encode(&registry))
    }

    /// `/ready` answers 200 with the body `ready()` returns in `Ok`, and
    /// 503 with the one in `Err`.
    pub fn with_readiness(
        mut self,
        ready: impl Fn() -> Result<&'static str, &'static str> + Send + Sync + 'static,
    ) -> Self {
        self.ready = Arc::new(ready);
        self
    }

    fn answer(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = reply(StatusCode::OK, (self.metrics)());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(OPENMETRICS),
                );
                response
            }
            "/ready" => match (self.ready)() {
                Ok(body) => reply(StatusCode::OK, body.to_string()),
                Err(body) => reply(StatusCode::SERVICE_UNAVAILABLE, body.to_string()),
            },
            "/live" => reply(StatusCode::OK, "live\n".into()),
            "/healthz" => reply(StatusCode::OK, "ok".into()),
            _ => reply(StatusCode::NOT_FOUND, String::new()),
        }
    }
}

/// Binds `addr` and returns the bound address (useful with port 0) and the
/// server, which runs until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: Shutdown,
) -> io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut listener = BoundedListener::new(listener, LIMITS, ListenerMetrics::new(), "admin");
    let bound = listener.local_addr()?;
    let server = async move {
        loop {
            let (tcp, _, slot) = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.wait() => return,
            };
            let endpoints = endpoints.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = endpoints.answer(&request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let builder = slot.http_builder();
                let _ = slot.serve_http(&builder, tcp, service, &shutdown).await;
            });
        }
    };
    Ok((bound, server))
}

/// The Prometheus text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("encoding metrics into a String");
    out
}
