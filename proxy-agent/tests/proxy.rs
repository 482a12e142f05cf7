//! Two proxies over loopback in front of a small HTTP backend: the client
//! side originates mTLS, the server side verifies it, enforces policy and
//! tells the backend who called. Denials are 403 (HTTP), gRPC status 7, or
//! a closed connection (opaque TCP); certificate refreshes, trust bundle
//! changes and policy reloads happen with no restart and no failed request.

mod common;

use common::until;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, ManualClock, SystemClock};
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{KeyAlgorithm, TrustAnchor};
use lanyard_policy::{Manifests, Policy, PolicyOptions, Workload};
use lanyard_proxy::identity::{Agent, AgentConfig, Credentials};
use lanyard_proxy::metrics::AgentMetrics;
use lanyard_proxy::proxy::metrics::ProxyMetrics;
use lanyard_proxy::proxy::tls::{CurrentCert, TrustBundle, peer_identity};
use lanyard_proxy::proxy::{Drain, Inbound, OutboundRoute, serve_inbound, serve_outbound};
use lanyard_runtime::Shutdown;
use lanyard_runtime::listen::{BoundedListener, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const API: &str = "api.shop.serviceaccount.identity.linkerd.cluster.local";
const WEB: &str = "web.front.serviceaccount.identity.linkerd.cluster.local";
const EVIL: &str = "evil.front.serviceaccount.identity.linkerd.cluster.local";

fn policy_yaml(allowed: &str) -> String {
    common::policy_yaml(allowed, "http", "HTTP/1")
}

fn build(yaml: &str) -> Policy {
    let mut m = Manifests::new();
    m.add_yaml(Path::new("policy.yaml"), yaml);
    m.build(&PolicyOptions::default()).unwrap()
}

struct Mesh {
    dir: tempfile::TempDir,
    anchor: TrustAnchor,
    tokens: Arc<TokenKey>,
    identity_addr: SocketAddr,
}

impl Mesh {
    async fn start() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let service = common::Service::start(dir.path(), true).await;
        Mesh {
            identity_addr: service.addr,
            dir,
            anchor: service.anchor,
            tokens: service.tokens,
        }
    }

    fn bundle(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// An agent for `identity`, running; returns its certificate channel
    /// once it holds one.
    async fn agent(&self, identity: &str) -> watch::Receiver<Option<Arc<Credentials>>> {
        let id: Identity = identity.parse().unwrap();
        let token_file = self.dir.path().join(format!("{identity}.token"));
        let token = self
            .tokens
            .create(
                id.namespace(),
                id.service_account(),
                TimeDelta::hours(1),
                SystemClock.now(),
            )
            .unwrap();
        std::fs::write(&token_file, token).unwrap();
        let agent = Agent::new(
            AgentConfig {
                identity: id,
                service_addr: self.identity_addr.to_string(),
                service_identity:
                    "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local".into(),
                trust_anchors: self.bundle(),
                token_file,
                insecure_plaintext: false,
                timeout: Duration::from_secs(5),
            },
            SystemClock,
            AgentMetrics::new(),
        )
        .unwrap();
        let (tx, mut rx) = watch::channel(None);
        tokio::spawn(agent.run(tx));
        rx.wait_for(Option::is_some).await.unwrap();
        rx
    }
}

/// A backend answering with the client identity the proxy told it.
async fn backend() -> SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/whoami",
        axum::routing::get(|headers: HeaderMap| async move {
            headers
                .get("l5d-client-id")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| "anonymous".into())
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct ServerSide {
    addr: SocketAddr,
    policy: Arc<ArcSwap<Policy>>,
    bundle: Arc<TrustBundle>,
    metrics: ProxyMetrics,
}

async fn server_side(
    mesh: &Mesh,
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    app: SocketAddr,
    policy: Policy,
) -> ServerSide {
    server_side_with(mesh, creds, app, policy, Limits::default()).await
}

async fn server_side_with(
    mesh: &Mesh,
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    app: SocketAddr,
    policy: Policy,
    limits: Limits,
) -> ServerSide {
    let bundle = Arc::new(
        TrustBundle::load(&mesh.bundle(), Arc::new(CurrentCert(creds)), SystemClock).unwrap(),
    );
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let metrics = ProxyMetrics::default();
    let inbound = Arc::new(Inbound {
        app,
        workload: Arc::new(Workload {
            namespace: "shop".into(),
            labels: [("app".to_string(), "api".to_string())].into(),
            named_ports: [("http".to_string(), app.port())].into(),
            default_policy: None,
        }),
        policy: policy.clone(),
        bundle: bundle.clone(),
        metrics: metrics.clone(),
        drain: Arc::new(Drain::default()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = BoundedListener::new(
        listener,
        limits,
        metrics.inbound_listener().clone(),
        "inbound",
    );
    tokio::spawn(serve_inbound(listener, inbound, Shutdown::new()));
    ServerSide {
        addr,
        policy,
        bundle,
        metrics,
    }
}

/// A client-side proxy for `creds`, sending to `target` which must be `identity`.
async fn client_side(
    mesh: &Mesh,
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    target: SocketAddr,
    identity: &str,
) -> (SocketAddr, Arc<TrustBundle>) {
    let bundle = Arc::new(
        TrustBundle::load(&mesh.bundle(), Arc::new(CurrentCert(creds)), SystemClock).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = BoundedListener::new(
        listener,
        Limits::default(),
        ProxyMetrics::default().outbound_listener().clone(),
        "outbound",
    );
    tokio::spawn(serve_outbound(
        listener,
        OutboundRoute {
            target,
            identity: identity.into(),
        },
        bundle.clone(),
        ProxyMetrics::default(),
        Arc::new(Drain::default()),
        Shutdown::new(),
    ));
    (addr, bundle)
}

/// One HTTP/1.1 GET over a fresh connection; (status, body).
async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: api\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn metrics_text(metrics: &ProxyMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_flows_over_mtls_with_the_callers_identity_and_policy_decides() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    let api = mesh.agent(API).await;
    let server = server_side(&mesh, api, app, build(&policy_yaml(WEB))).await;
    let (web_out, _) = client_side(&mesh, mesh.agent(WEB).await, server.addr, API).await;
    let (evil_out, _) = client_side(&mesh, mesh.agent(EVIL).await, server.addr, API).await;

    // The backend sees the verified caller; a forged header is replaced.
    assert_eq!(get(web_out, "/whoami", "").await, (200, WEB.to_string()));
    assert_eq!(
        get(web_out, "/whoami", &format!("l5d-client-id: {API}\r\n")).await,
        (200, WEB.to_string())
    );
    // Another identity, and plaintext straight to the inbound port: 403.
    assert_eq!(get(evil_out, "/whoami", "").await.0, 403);
    assert_eq!(get(server.addr, "/whoami", "").await.0, 403);

    // A gRPC caller that is denied gets status 7.
    let mut s = TcpStream::connect(evil_out).await.unwrap();
    s.write_all(b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: api\r\ncontent-type: application/grpc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.to_ascii_lowercase().contains("grpc-status: 7"), "{out}");

    // Policy reload: WEB denied, then allowed again, no restart.
    server.policy.store(Arc::new(build(&policy_yaml(EVIL))));
    assert_eq!(get(web_out, "/whoami", "").await.0, 403);
    assert_eq!(get(evil_out, "/whoami", "").await.0, 200);
    server.policy.store(Arc::new(build(&policy_yaml(WEB))));
    assert_eq!(get(web_out, "/whoami", "").await.0, 200);

    // Counted under the Server and the authorization, labelled as
    // Linkerd labels them; a denial names no authorization.
    let text = metrics_text(&server.metrics);
    let allowed = series(&text, "inbound_http_authz_allow_total");
    assert!(
        allowed.iter().any(|(s, _)| label(s, "srv_kind") == "server"
            && label(s, "srv_name") == "api-http"
            && label(s, "route_name") == "default"
            && label(s, "authz_kind") == "authorizationpolicy"
            && label(s, "authz_name") == "api-clients"
            && label(s, "client_id") == WEB),
        "{text}"
    );
    let denied = series(&text, "inbound_http_authz_deny_total");
    assert!(
        denied
            .iter()
            .any(|(s, _)| label(s, "srv_name") == "api-http"
                && label(s, "client_id") == EVIL
                && !s.contains_key("authz_name")),
        "{text}"
    );
    assert!(
        denied
            .iter()
            .any(|(s, _)| label(s, "srv_name") == "api-http" && label(s, "tls") == "no_identity"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbound_proxy_refuses_a_peer_with_the_wrong_identity() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&policy_yaml(WEB))).await;
    // The client expects someone else at that address.
    let (out, _) = client_side(&mesh, mesh.agent(WEB).await, server.addr, EVIL).await;
    assert_eq!(
        get(out, "/whoami", "").await.0,
        0,
        "no response: the peer is not who we expected"
    );
}

/// A TCP server that echoes what it reads (a binary protocol, for opaque
/// Servers); returns its address.
async fn echo_server() -> SocketAddr {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_connections_are_closed_when_denied_and_piped_when_allowed() {
    let mesh = Mesh::start().await;
    // An echo server speaking a binary protocol.
    let echo_addr = echo_server().await;
    let yaml = policy_yaml(WEB).replace("proxyProtocol: HTTP/1", "proxyProtocol: opaque");
    let server = server_side(&mesh, mesh.agent(API).await, echo_addr, build(&yaml)).await;
    let (web_out, _) = client_side(&mesh, mesh.agent(WEB).await, server.addr, API).await;
    let (evil_out, _) = client_side(&mesh, mesh.agent(EVIL).await, server.addr, API).await;

    let mut s = TcpStream::connect(web_out).await.unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"\x00\x01binary");

    let mut s = TcpStream::connect(evil_out).await.unwrap();
    let _ = s.write_all(b"\x00\x01binary").await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "closed without data: {n:?} {buf:?}"
    );
    assert!(metrics_text(&server.metrics).contains("inbound_tcp_authz_deny_total"));
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_refreshes_and_bundle_changes_fail_no_request() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    // Channels the test publishes on, as the agents' refreshes would.
    let (api_tx, api_rx) = watch::channel(mesh.agent(API).await.borrow().clone());
    let (web_tx, web_rx) = watch::channel(mesh.agent(WEB).await.borrow().clone());
    let server = server_side(&mesh, api_rx, app, build(&policy_yaml(WEB))).await;
    let (web_out, client_bundle) = client_side(&mesh, web_rx, server.addr, API).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(web_out, "/whoami", "").await {
                    (200, body) if body == WEB => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    // Each step is taken under load: a few more requests must have
    // succeeded since the last one.
    let answered = |what: &'static str| {
        let ok = ok.clone();
        let from = ok.load(Ordering::Relaxed);
        async move { until(what, || ok.load(Ordering::Relaxed) >= from + 5).await }
    };
    answered("requests before any change").await;

    // Fresh certificates (new keys) for both sides, mid-load.
    let before = api_tx.borrow().as_ref().unwrap().not_after();
    api_tx.send_replace(mesh.agent(API).await.borrow().clone());
    web_tx.send_replace(mesh.agent(WEB).await.borrow().clone());
    assert!(api_tx.borrow().as_ref().unwrap().not_after() >= before);
    answered("requests on the fresh certificates").await;

    // A new anchor joins the bundle (rotation's first step): both sides
    // reload it; old-anchor certificates still verify.
    let domain = IdentityDomain::linkerd_default();
    let next = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(100),
        KeyAlgorithm::EcdsaP256,
        SystemClock.now(),
    )
    .unwrap();
    let bundle = format!(
        "{}{}",
        mesh.anchor.certificate().to_pem(),
        next.certificate().to_pem()
    );
    lanyard_files::write_atomic(
        &mesh.bundle(),
        bundle.as_bytes(),
        lanyard_files::FileMode::Public,
    )
    .unwrap();
    assert!(server.bundle.reload().unwrap());
    assert!(client_bundle.reload().unwrap());
    answered("requests after the bundle reload").await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 10, "{ok} requests");
    assert_eq!(failed, 0, "of {}", ok + failed);

    // A broken bundle is refused and the last good one stays.
    std::fs::write(mesh.bundle(), "garbage").unwrap();
    assert!(server.bundle.reload().is_err());
    assert_eq!(get(web_out, "/whoami", "").await.0, 200);
}

/// One handshake between `server`'s and `client`'s current configurations
/// over an in-memory pipe, the client expecting [`API`]: the identity the
/// server saw, and how the client fared.
async fn handshake(
    server: &TrustBundle,
    client: &TrustBundle,
) -> (std::io::Result<Option<String>>, std::io::Result<()>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.current().server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.current().client.clone());
    let name = rustls::pki_types::ServerName::try_from(API).unwrap();
    let (accepted, connected) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        )
    })
    .await
    .expect("the handshake ended one way or the other");
    (
        accepted.map(|tls| peer_identity(tls.get_ref().1.peer_certificates())),
        connected.map(drop),
    )
}

/// Whether `result` failed because a certificate had expired.
fn expired<T: std::fmt::Debug>(result: &std::io::Result<T>) -> bool {
    use rustls::CertificateError::{Expired, ExpiredContext};
    let Err(error) = result else {
        return false;
    };
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            Expired | ExpiredContext { .. }
        ))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_check_the_peers_validity_at_the_injected_clock() {
    let mesh = Mesh::start().await;
    let api = mesh.agent(API).await;
    let web = mesh.agent(WEB).await;
    let api_expiry = api.borrow().as_ref().unwrap().not_after();
    let web_expiry = web.borrow().as_ref().unwrap().not_after();
    let now = SystemClock.now();
    // One clock per side, so each side's check can be moved alone.
    let server_clock = Arc::new(ManualClock::new(now));
    let client_clock = Arc::new(ManualClock::new(now));
    let server = TrustBundle::load(
        &mesh.bundle(),
        Arc::new(CurrentCert(api)),
        server_clock.clone(),
    )
    .unwrap();
    let client = TrustBundle::load(
        &mesh.bundle(),
        Arc::new(CurrentCert(web)),
        client_clock.clone(),
    )
    .unwrap();

    let (accepted, connected) = handshake(&server, &client).await;
    assert_eq!(accepted.unwrap().as_deref(), Some(WEB));
    connected.unwrap();

    // The server's clock passes the client's notAfter: the server refuses
    // the client's certificate as expired.
    server_clock.set(web_expiry + TimeDelta::seconds(1));
    let (accepted, _) = handshake(&server, &client).await;
    assert!(expired(&accepted), "{accepted:?}");

    // The client's clock passes the server's notAfter: the client refuses
    // the server's certificate as expired.
    server_clock.set(now);
    client_clock.set(api_expiry + TimeDelta::seconds(1));
    let (_, connected) = handshake(&server, &client).await;
    assert!(expired(&connected), "{connected:?}");

    // Back before both: the same configurations shake hands again.
    client_clock.set(now);
    let (accepted, connected) = handshake(&server, &client).await;
    assert_eq!(accepted.unwrap().as_deref(), Some(WEB));
    connected.unwrap();
}

/// Writes the agent's current certificate as files for curl and openssl.
fn files_for(creds: &watch::Receiver<Option<Arc<Credentials>>>, dir: &Path) {
    creds.borrow().as_ref().unwrap().write_files(dir).unwrap();
}

fn run(program: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program} must be installed (apt-get install -y curl openssl): {e}")
        });
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_and_openssl_get_what_policy_says() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&policy_yaml(WEB))).await;
    let web = mesh.dir.path().join("web");
    let evil = mesh.dir.path().join("evil");
    files_for(&mesh.agent(WEB).await, &web);
    files_for(&mesh.agent(EVIL).await, &evil);
    let port = server.addr.port();
    let bundle = mesh.bundle();
    let curl = |who: &Path| curl_mtls(who, &bundle, port, "/whoami", &["-w", " %{http_code}"]);
    let (out, err) = tokio::task::block_in_place(|| curl(&web));
    assert_eq!(out, format!("{WEB} 200"), "{err}");
    let (out, err) = tokio::task::block_in_place(|| curl(&evil));
    assert!(out.ends_with(" 403"), "{out} {err}");

    // An opaque port that needs authentication, in front of a server that
    // speaks first and hangs up: openssl s_client without a client
    // certificate gets nothing through; with WEB's it gets the banner.
    let banner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = banner.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = banner.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.write_all(b"hello-through-the-mesh\n").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let yaml = policy_yaml(WEB).replace("proxyProtocol: HTTP/1", "proxyProtocol: opaque");
    let opaque = server_side(&mesh, mesh.agent(API).await, echo_addr, build(&yaml)).await;
    let connect = opaque.addr.to_string();
    let s_client = |cert: Option<&Path>| {
        let mut args = vec![
            "s_client".to_string(),
            "-connect".into(),
            connect.clone(),
            "-CAfile".into(),
            bundle.display().to_string(),
            "-quiet".into(),
        ];
        if let Some(dir) = cert {
            args.extend([
                "-cert".into(),
                dir.join("tls.crt").display().to_string(),
                // s_client sends only the leaf of -cert; the issuer too:
                "-cert_chain".into(),
                dir.join("tls.crt").display().to_string(),
                "-key".into(),
                dir.join("tls.key").display().to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("openssl", &args, b"")
    };
    let (_, out, _) = tokio::task::block_in_place(|| s_client(None));
    assert!(!out.contains("hello-through-the-mesh"), "{out}");
    let (_, out, err) = tokio::task::block_in_place(|| s_client(Some(&web)));
    assert!(out.contains("hello-through-the-mesh"), "{out} {err}");

    // A client certificate from another CA fails the handshake, counted as
    // Linkerd counts it.
    let stranger = TrustAnchor::generate(
        &IdentityDomain::linkerd_default(),
        TimeDelta::hours(1),
        KeyAlgorithm::EcdsaP256,
        SystemClock.now() - TimeDelta::minutes(1),
    )
    .unwrap();
    let stranger_dir = mesh.dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    std::fs::write(
        stranger_dir.join("tls.crt"),
        stranger.certificate().to_pem(),
    )
    .unwrap();
    std::fs::write(
        stranger_dir.join("tls.key"),
        stranger.key().to_pkcs8_pem().as_bytes(),
    )
    .unwrap();
    let (out, err) = tokio::task::block_in_place(|| curl(&stranger_dir));
    assert!(
        !out.ends_with(" 200") && !out.ends_with(" 403"),
        "{out} {err}"
    );
    // curl may see the connection close before the proxy counts it.
    let text = when_counted(&server.metrics, "inbound_http_errors_total").await;
    let errors = series(&text, "inbound_http_errors_total");
    assert!(
        matches!(errors.as_slice(), [(s, count)] if label(s, "error") == "tls"
            && label(s, "srv_name") == "api-http"
            && label(s, "target_port") == app.port().to_string()
            && count == "1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_grpc_client_gets_permission_denied() {
    use lanyard_identity::service::proto::CertifyRequest;
    use lanyard_identity::service::proto::identity_client::IdentityClient;

    let mesh = Mesh::start().await;
    let app = backend().await;
    let yaml = policy_yaml(WEB).replace("proxyProtocol: HTTP/1", "proxyProtocol: gRPC");
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&yaml)).await;
    let (evil_out, _) = client_side(&mesh, mesh.agent(EVIL).await, server.addr, API).await;
    let mut client = IdentityClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{evil_out}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = client.certify(CertifyRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_idle_connections_are_bounded_and_a_real_client_is_still_served() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    let api = mesh.agent(API).await;
    let limits = Limits {
        max_connections: 8,
        handshake_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
    };
    let server = server_side_with(&mesh, api, app, build(&policy_yaml(WEB)), limits).await;
    let (web_out, _) = client_side(&mesh, mesh.agent(WEB).await, server.addr, API).await;
    let listener = server.metrics.inbound_listener().clone();

    // 30 connections that never say anything: 8 are held until the
    // handshake timeout, the rest are closed on arrival.
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    until("connections over the cap refused", || {
        listener.refused() >= 20
    })
    .await;
    assert!(listener.open() <= 8);
    until("the silent ones timed out", || {
        listener.handshake_timeouts() >= 8
    })
    .await;
    // A real client is served while the flood is still open.
    assert_eq!(get(web_out, "/whoami", "").await, (200, WEB.to_string()));

    // A kept-alive HTTP connection that goes quiet is closed after the
    // idle timeout.
    let mut kept = TcpStream::connect(web_out).await.unwrap();
    kept.write_all(b"GET /whoami HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match kept.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was never closed");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        metrics_text(&server.metrics)
            .contains("lanyard_proxy_inbound_idle_connections_closed_total 1"),
        "{}",
        metrics_text(&server.metrics)
    );
    drop(silent);
}

/// A series' labels, by name.
type Labels = std::collections::BTreeMap<String, String>;

/// One exposition line, `name{a="x",b="y"} value`.
struct Line {
    name: String,
    /// In order.
    labels: Vec<(String, String)>,
    value: String,
}

/// Splits one exposition line into its name, labels and value.
fn parse_line(line: &str) -> Option<Line> {
    let (name, rest) = line.split_once('{')?;
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            match c {
                '=' => break,
                ',' if key.is_empty() => {}
                '}' if key.is_empty() => {
                    return Some(Line {
                        name: name.to_string(),
                        labels,
                        value: chars.as_str().trim().to_string(),
                    });
                }
                c => key.push(c),
            }
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => value.push(chars.next()?),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key, value));
    }
}

/// The series of `name` in `text`: labels and value.
fn series(text: &str, name: &str) -> Vec<(Labels, String)> {
    text.lines()
        .filter_map(parse_line)
        .filter(|l| l.name == name)
        .map(|l| (l.labels.into_iter().collect(), l.value))
        .collect()
}

fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("<absent>", String::as_str)
}

/// Linkerd's series for each situation, from `tests/fixtures/`.
fn linkerd_fixture() -> Vec<(String, Vec<Line>)> {
    let text = include_str!("fixtures/linkerd-inbound-metrics.txt");
    let mut situations: Vec<(String, Vec<_>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# situation: ") {
            situations.push((name.to_string(), Vec::new()));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = parse_line(line).unwrap_or_else(|| panic!("not a series: {line}"));
            situations
                .last_mut()
                .expect("a series after a `# situation:` line")
                .1
                .push(series);
        }
    }
    situations
}

/// Checks Linkerd's conventions for the address labels, then replaces
/// their values (which differ from run to run) with what they stand for.
fn normalized(name: &str, labels: &[(String, String)]) -> (String, Labels) {
    let mut map: Labels = labels.iter().cloned().collect();
    assert_eq!(map.len(), labels.len(), "{name}: a label twice: {labels:?}");
    if let Some(addr) = map.get("target_addr") {
        let ip = label(&map, "target_ip");
        let port = label(&map, "target_port");
        let parsed: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("{name}: target_addr `{addr}` is not ip:port"));
        assert_eq!(parsed.ip().to_string(), ip, "{name}: target_ip");
        assert_eq!(parsed.port().to_string(), port, "{name}: target_port");
        if let Some(srv_port) = map.get("srv_port") {
            assert_eq!(srv_port, port, "{name}: srv_port is the target's port");
        }
        for (key, stands_for) in [
            ("target_addr", "<ip:port>"),
            ("target_ip", "<ip>"),
            ("target_port", "<port>"),
            ("srv_port", "<port>"),
        ] {
            if let Some(value) = map.get_mut(key) {
                *value = stands_for.to_string();
            }
        }
    }
    (name.to_string(), map)
}

/// Requires `text` (one situation's metrics) to hold exactly Linkerd's
/// series for `situation`, for every metric name Linkerd exports.
fn same_series_as_linkerd(situation: &str, text: &str) {
    let fixture = linkerd_fixture();
    let linkerd_names: std::collections::BTreeSet<&str> = fixture
        .iter()
        .flat_map(|(_, series)| series.iter().map(|l| l.name.as_str()))
        .collect();
    let want: std::collections::BTreeSet<(String, Labels)> = fixture
        .iter()
        .find(|(s, _)| s == situation)
        .unwrap_or_else(|| panic!("no situation `{situation}` in the fixture"))
        .1
        .iter()
        .map(|l| normalized(&l.name, &l.labels))
        .collect();
    let got: std::collections::BTreeSet<(String, Labels)> = text
        .lines()
        .filter_map(parse_line)
        .filter(|l| linkerd_names.contains(l.name.as_str()))
        .map(|l| normalized(&l.name, &l.labels))
        .collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{situation}:\nLinkerd has, Lanyard does not: {missing:#?}\nLanyard has, Linkerd does not: {extra:#?}\n{text}"
    );
}

const BENCH_WEB: &str = "web.bench.serviceaccount.identity.linkerd.cluster.local";
const BENCH_EVIL: &str = "evil.bench.serviceaccount.identity.linkerd.cluster.local";

/// Waits until `metrics` has a series of `name`; returns the text.
async fn when_counted(metrics: &ProxyMetrics, name: &str) -> String {
    let prefix = format!("{name}{{");
    until(name, || {
        metrics_text(metrics)
            .lines()
            .any(|l| l.starts_with(&prefix))
    })
    .await;
    metrics_text(metrics)
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_labels_are_linkerds_in_the_same_situations() {
    let mesh = Mesh::start().await;
    let app = backend().await;
    let web = mesh.agent(BENCH_WEB).await;
    let evil = mesh.agent(BENCH_EVIL).await;

    // The default policy all-authenticated: a meshed client, then a
    // plaintext one.
    let options = PolicyOptions {
        default_policy: lanyard_policy::DefaultPolicy::AllAuthenticated,
        ..PolicyOptions::default()
    };
    let server = server_side(&mesh, mesh.agent(API).await, app, Policy::empty(&options)).await;
    let (out, _) = client_side(&mesh, web.clone(), server.addr, API).await;
    assert_eq!(get(out, "/whoami", "").await, (200, BENCH_WEB.to_string()));
    let text = when_counted(&server.metrics, "response_total").await;
    same_series_as_linkerd("default all-authenticated policy, meshed client", &text);
    let server = server_side(&mesh, mesh.agent(API).await, app, Policy::empty(&options)).await;
    assert_eq!(get(server.addr, "/whoami", "").await.0, 403);
    same_series_as_linkerd(
        "default all-authenticated policy, plaintext client",
        &metrics_text(&server.metrics),
    );

    // A Server and an AuthorizationPolicy: the identity it admits, then
    // another.
    let yaml = common::policy_yaml(BENCH_WEB, "http", "HTTP/1");
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&yaml)).await;
    let (out, _) = client_side(&mesh, web.clone(), server.addr, API).await;
    assert_eq!(get(out, "/whoami", "").await.0, 200);
    let text = when_counted(&server.metrics, "response_total").await;
    same_series_as_linkerd(
        "Server with an AuthorizationPolicy, allowed identity",
        &text,
    );
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&yaml)).await;
    let (out, _) = client_side(&mesh, evil.clone(), server.addr, API).await;
    assert_eq!(get(out, "/whoami", "").await.0, 403);
    same_series_as_linkerd(
        "Server with an AuthorizationPolicy, another identity",
        &metrics_text(&server.metrics),
    );

    // An HTTPRoute with its own AuthorizationPolicy.
    let routed = format!(
        r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: api-http, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: api}}}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: whoami-route, namespace: shop}}
spec:
  parentRefs: [{{group: policy.linkerd.io, kind: Server, name: api-http}}]
  rules:
    - matches: [{{path: {{type: Exact, value: /whoami}}}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: clients, namespace: shop}}
spec:
  identities: ["{BENCH_WEB}"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: whoami-clients, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: HTTPRoute, name: whoami-route}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients}}
"#
    );
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&routed)).await;
    let (out, _) = client_side(&mesh, web.clone(), server.addr, API).await;
    assert_eq!(get(out, "/whoami", "").await.0, 200);
    assert_eq!(get(out, "/elsewhere", "").await.0, 404);
    let text = when_counted(&server.metrics, "response_total").await;
    same_series_as_linkerd(
        "HTTPRoute with its own AuthorizationPolicy, a matching and an unmatched path",
        &text,
    );

    // An opaque Server: one identity piped, another closed.
    let echo_addr = echo_server().await;
    let opaque = common::policy_yaml(BENCH_WEB, "http", "opaque");
    let server = server_side(&mesh, mesh.agent(API).await, echo_addr, build(&opaque)).await;
    let (web_out, _) = client_side(&mesh, web.clone(), server.addr, API).await;
    let (evil_out, _) = client_side(&mesh, evil.clone(), server.addr, API).await;
    let mut s = TcpStream::connect(web_out).await.unwrap();
    s.write_all(b"\x00\x01binary").await.unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await.unwrap();
    let mut s = TcpStream::connect(evil_out).await.unwrap();
    let _ = s.write_all(b"\x00\x01binary").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    let text = when_counted(&server.metrics, "inbound_tcp_authz_deny_total").await;
    same_series_as_linkerd("opaque Server, an allowed and a denied identity", &text);

    // A TLS handshake that fails: a ClientHello that is not one.
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&yaml)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    let text = when_counted(&server.metrics, "inbound_http_errors_total").await;
    same_series_as_linkerd("a TLS handshake that fails", &text);
}

/// `python3 -m http.server` serving `dir` on a loopback port; killed when
/// dropped.
struct PythonHttpServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl PythonHttpServer {
    fn start(dir: &Path) -> PythonHttpServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 must be installed: {e}"));
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("python3 -m http.server did not start within 20 s"));
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in python's first line: {line:?}"));
        PythonHttpServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for PythonHttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1 application that answers with the Host it was sent, and
/// HTTP/1 connection fields that must not reach an HTTP/2 client.
async fn host_echo_backend() -> SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new()
        .route(
            "/host",
            axum::routing::get(|headers: HeaderMap| async move {
                let host = headers
                    .get("host")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_else(|| "no host".into());
                ([("keep-alive", "timeout=5"), ("x-app", "h1")], host)
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                "slow\n"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// curl over mTLS as `who` (a directory with tls.crt and tls.key), with
/// `extra` arguments; returns stdout and stderr.
fn curl_mtls(who: &Path, ca: &Path, port: u16, path: &str, extra: &[&str]) -> (String, String) {
    curl_mtls_times(who, ca, port, path, 1, extra)
}

/// [`curl_mtls`] asking for `path` `times` times in one curl run.
fn curl_mtls_times(
    who: &Path,
    ca: &Path,
    port: u16,
    path: &str,
    times: usize,
    extra: &[&str],
) -> (String, String) {
    let cert = who.join("tls.crt").display().to_string();
    let key = who.join("tls.key").display().to_string();
    let ca = ca.display().to_string();
    let resolve = format!("{API}:{port}:127.0.0.1");
    let url = format!("https://{API}:{port}{path}");
    let mut args = vec![
        "-sS",
        "--cert",
        &cert,
        "--key",
        &key,
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
    ];
    args.extend_from_slice(extra);
    args.extend(std::iter::repeat_n(url.as_str(), times));
    let (_, out, err) = run("curl", &args, b"");
    (out, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_reaches_an_http1_app_behind_an_http1_server() {
    let mesh = Mesh::start().await;
    let site = mesh.dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.txt"), "hello from an HTTP/1 app\n").unwrap();
    let python = tokio::task::block_in_place(|| PythonHttpServer::start(&site));
    let yaml = common::policy_yaml(WEB, "http", "HTTP/1");
    let server = server_side(&mesh, mesh.agent(API).await, python.addr, build(&yaml)).await;
    let web = mesh.dir.path().join("web");
    files_for(&mesh.agent(WEB).await, &web);
    let port = server.addr.port();

    // curl negotiates h2 by ALPN, with WEB's client certificate.
    let (out, err) = tokio::task::block_in_place(|| {
        curl_mtls(
            &web,
            &mesh.bundle(),
            port,
            "/hello.txt",
            &["--http2", "-w", "%{http_code} HTTP/%{http_version}"],
        )
    });
    assert_eq!(
        out, "hello from an HTTP/1 app\n200 HTTP/2",
        "the app speaks HTTP/1 only: {err}"
    );

    // The app gets :authority as its Host; its HTTP/1 connection fields
    // stay behind.
    let app = host_echo_backend().await;
    let server = server_side(&mesh, mesh.agent(API).await, app, build(&yaml)).await;
    let port = server.addr.port();
    let (out, err) = tokio::task::block_in_place(|| {
        curl_mtls(&web, &mesh.bundle(), port, "/host", &["--http2", "-i"])
    });
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{out} {err}"));
    assert!(head.starts_with("HTTP/2 200"), "{head} {err}");
    assert_eq!(body, format!("{API}:{port}"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-app: h1"), "{head}");
    assert!(!head.contains("keep-alive"), "{head}");
    assert!(!head.contains("connection:"), "{head}");

    // Streams of one HTTP/2 connection in flight at once each reach the
    // HTTP/1 app: one on the connection's own application connection, the
    // others beside it.
    let (out, err) = tokio::task::block_in_place(|| {
        curl_mtls_times(
            &web,
            &mesh.bundle(),
            port,
            "/slow",
            6,
            &["--http2", "-Z", "-w", "%{http_code} HTTP/%{http_version}\n"],
        )
    });
    // curl writes the bodies and the -w lines as the transfers end,
    // interleaved.
    assert_eq!(
        (
            out.matches("slow\n").count(),
            out.matches("200 HTTP/2\n").count()
        ),
        (6, 6),
        "every concurrent stream is answered: {out} {err}"
    );
    drop(python);
}

/// An application that speaks HTTP/2 only (prior knowledge), answering
/// with the version and Host it got.
async fn h2_only_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = format!("{:?} host={host}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_reaches_an_http2_app_behind_an_http2_server_and_detection_keeps_http2() {
    let mesh = Mesh::start().await;
    let app = h2_only_backend().await;
    let api = mesh.agent(API).await;
    let web = mesh.agent(WEB).await;
    for protocol in ["HTTP/2", "gRPC"] {
        let yaml = common::policy_yaml(WEB, "http", protocol);
        let server = server_side(&mesh, api.clone(), app, build(&yaml)).await;
        let (out, _) = client_side(&mesh, web.clone(), server.addr, API).await;
        // `get` sends HTTP/1.1 with `Connection: close`, which HTTP/2 forbids.
        assert_eq!(
            get(out, "/", "").await,
            (200, "HTTP/2.0 host=api".to_string()),
            "{protocol}"
        );
    }

    // proxyProtocol unknown: a detected HTTP/2 client stays HTTP/2 (curl
    // negotiating h2 by ALPN, over mTLS).
    let yaml = common::policy_yaml(WEB, "http", "unknown");
    let server = server_side(&mesh, api.clone(), app, build(&yaml)).await;
    let dir = mesh.dir.path().join("web-detect");
    files_for(&web, &dir);
    let port = server.addr.port();
    let (out, err) = tokio::task::block_in_place(|| {
        curl_mtls(
            &dir,
            &mesh.bundle(),
            port,
            "/",
            &["--http2", "-w", " %{http_code}"],
        )
    });
    assert_eq!(out, "HTTP/2.0 host= 200", "{err}");
}
