//! The controller's one API client: kube-rs' layers (base URI, auth,
//! extra headers) over a single pooled connection that speaks HTTP/2 when
//! the API server offers it, as client-go's does. kube-rs' own client speaks
//! HTTP/1.1 only, where every request in flight needs a connection of its
//! own: thousands of reconciles at once held thousands of sockets.

use std::time::Duration;

use ::kube::client::ConfigExt;
use ::kube::{Client, Config};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{BoxError, ServiceBuilder};

use super::context::Error;

/// How often an idle HTTP/2 connection is pinged, and how long an answer
/// may take before the connection is dropped (and the next request opens
/// another): a half-open connection behind a dead load balancer is noticed
/// within this, not after the kernel's TCP timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1 connections kept idle per host when the server does not speak
/// HTTP/2.
const MAX_IDLE_PER_HOST: usize = 8;

/// A client from the environment: the in-cluster service account, else
/// `$KUBECONFIG` or `~/.kube/config`.
pub async fn infer_client() -> Result<Client, Error> {
    let config = Config::infer()
        .await
        .map_err(|e| Error::Client(::kube::Error::InferConfig(e)))?;
    client_for(config).map_err(Error::Client)
}

/// The client for `config`: HTTP/2 over one connection where the server
/// offers it (ALPN), else pooled HTTP/1.1. A configured proxy gets kube-rs'
/// own client, which speaks it.
pub fn client_for(config: Config) -> Result<Client, ::kube::Error> {
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let connection = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(connection);
    Ok(Client::new(service, config.default_namespace))
}
