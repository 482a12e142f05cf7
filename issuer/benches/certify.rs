//! The identity service's `Certify` beside a peer CA server, Debian's
//! `golang-cfssl` (`cfssl serve`), in the same run, interleaved round by
//! round, so a noisy machine moves both figures together.
//!
//! Both sign with the same ECDSA P-256 identity issuer key, both get fresh
//! P-256 CSRs prepared before timing, both are driven over loopback by the
//! same client runtime in this process: Lanyard over plaintext HTTP/2 gRPC
//! (one channel per client) to a tonic server on its own multi-threaded
//! runtime, cfssl over HTTP/1.1 keep-alive (one connection per client) to
//! `POST /api/v1/cfssl/sign`. Then the same over TLS.
//!
//! Lanyard is measured twice: with `TCP_NODELAY` on its accepted sockets
//! (as Go sets it for cfssl), and with them left as accepted, as
//! `lanyard_issuer::serve` leaves them, where Nagle's algorithm meets the
//! client's delayed ACK.
//!
//! Each Lanyard request carries its own identity (`sa-N.bench`), so the
//! service's per-identity rate limit (a burst of 10, then one a second)
//! never triggers: the figures are signing throughput, not the limiter.
//!
//! Every response is checked (Lanyard: OK and a non-empty leaf; cfssl:
//! `success: true` and a certificate) and failures are counted apart.
//!
//! `issuer/benches/certify.sh` installs cfssl when it is missing and runs
//! `cargo bench -p lanyard-issuer --bench certify`. Without cfssl, Lanyard's
//! figures are still reported and the peer is said to be skipped.

#![forbid(unsafe_code)]

use std::future::Future;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_issuer::service::IdentityService;
use lanyard_issuer::service::proto::identity_client::IdentityClient;
use lanyard_issuer::service::proto::{CertifyRequest, CertifyResponse};
use lanyard_issuer::token::TokenKey;
use lanyard_issuer::{
    Certificate, IdentityIssuer, KeyAlgorithm, SigningKey, TrustAnchor, verify_chain,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::runtime::Runtime;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Measured rounds per peer and concurrency, alternating the peers.
const ROUNDS: usize = 3;
/// How long one measured round lasts.
const ROUND_TIME: Duration = Duration::from_secs(1);
/// Requests each client sends to warm up (connections, caches, the CPU's
/// clock) before the rounds; their rate sizes the rounds' request pools.
const WARMUP_PER_CLIENT: usize = 30;
/// Concurrent clients, each with its own connection.
const CONCURRENCY: [usize; 2] = [1, 16];
/// The namespace of every benchmark identity.
const NAMESPACE: &str = "bench";
/// The peers' names in the report.
const LANYARD: &str = "lanyard";
const LANYARD_AS_ACCEPTED: &str = "lanyard-nagle";
const CFSSL: &str = "cfssl";
/// Threads for the service's runtime and for the clients' runtime.
const WORKER_THREADS: usize = 2;

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn stopwatch() -> Instant {
    Instant::now()
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What one round (or several, merged) of one peer measured.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: u64,
    first_failure: Option<String>,
    elapsed: Duration,
    ran_out: bool,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.elapsed += other.elapsed;
        self.ran_out |= other.ran_out;
    }

    fn signed(&self) -> usize {
        self.latencies.len()
    }

    fn rate(&self) -> f64 {
        self.signed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile of the successful requests' latencies.
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Runs `clients` concurrently, each sending one request at a time from
/// `pool` until `duration` has passed (or the pool is empty), and hands the
/// clients back. The round lasts until its last response.
async fn round<C, W, F, Fut>(
    clients: Vec<C>,
    pool: Vec<W>,
    duration: Duration,
    call: F,
) -> (Vec<C>, Tally)
where
    C: Send + 'static,
    W: Send + 'static,
    F: Fn(C, W) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (C, Result<(), String>)> + Send + 'static,
{
    let pool = Arc::new(Mutex::new(pool));
    let call = Arc::new(call);
    let start = stopwatch();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let pool = pool.clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while start.elapsed() < duration {
                    let Some(work) = pool.lock().expect("pool lock").pop() else {
                        tally.ran_out = true;
                        break;
                    };
                    let sent = stopwatch();
                    let (back, result) = call(client, work).await;
                    client = back;
                    match result {
                        Ok(()) => tally.latencies.push(sent.elapsed()),
                        Err(reason) => {
                            tally.failures += 1;
                            tally.first_failure.get_or_insert(reason);
                        }
                    }
                }
                tally.elapsed = start.elapsed();
                (client, tally)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut total = Tally::default();
    for task in tasks {
        let (client, tally) = task.await.expect("a client task");
        clients.push(client);
        let elapsed = total.elapsed.max(tally.elapsed);
        total.merge(tally);
        total.elapsed = elapsed;
    }
    (clients, total)
}

/// Builds `n` values with `make(index)` on every core: fresh keys and CSRs
/// are made before timing starts, not during it.
fn prepare<T: Send>(first: usize, n: usize, make: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let make = &make;
                scope.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| make(first + i))
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a preparing thread"))
            .collect()
    })
}

/// The benchmark's CA, identities and tokens.
struct Fixture {
    domain: IdentityDomain,
    anchor: Certificate,
    issuer: Arc<IdentityIssuer>,
    token_key: Arc<TokenKey>,
    now: DateTime<Utc>,
    /// The next unused service account number: no identity is used twice.
    next_identity: usize,
}

impl Fixture {
    fn new() -> Self {
        let now = SystemClock.now();
        let domain = IdentityDomain::linkerd_default();
        let at = now - TimeDelta::hours(1);
        let anchor = TrustAnchor::generate(
            &domain,
            TimeDelta::hours(87_600),
            KeyAlgorithm::EcdsaP256,
            at,
        )
        .expect("a trust anchor");
        let (issuer, _) = anchor
            .issue_identity_issuer(
                &domain,
                TimeDelta::hours(8_760),
                KeyAlgorithm::EcdsaP256,
                at,
            )
            .expect("an identity issuer");
        Fixture {
            domain,
            anchor: anchor.certificate().clone(),
            issuer: Arc::new(issuer),
            token_key: Arc::new(TokenKey::generate().expect("a token key")),
            now,
            next_identity: 0,
        }
    }

    fn take_identities(&mut self, n: usize) -> usize {
        let first = self.next_identity;
        self.next_identity += n;
        first
    }

    fn csr_for(&self, index: usize) -> (Identity, String, Vec<u8>) {
        let service_account = format!("sa-{index}");
        let identity = Identity::new(&service_account, NAMESPACE, self.domain.clone())
            .expect("a benchmark identity");
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a P-256 key");
        let csr = key.certificate_signing_request(&identity).expect("a CSR");
        (identity, service_account, csr)
    }

    /// `n` Certify requests, each for a new identity with its own token
    /// and a CSR for a fresh P-256 key.
    fn lanyard_requests(&mut self, n: usize) -> Vec<CertifyRequest> {
        let first = self.take_identities(n);
        prepare(first, n, |i| {
            let (identity, service_account, csr) = self.csr_for(i);
            let token = self
                .token_key
                .create(NAMESPACE, &service_account, TimeDelta::hours(1), self.now)
                .expect("a join token");
            CertifyRequest {
                identity: identity.to_string(),
                token: token.into_bytes(),
                certificate_signing_request: csr,
            }
        })
    }

    /// `n` cfssl sign request bodies, each with a PEM CSR for a fresh P-256
    /// key, of the same shape as Lanyard's.
    fn cfssl_requests(&mut self, n: usize) -> Vec<Bytes> {
        let first = self.take_identities(n);
        prepare(first, n, |i| {
            let (_, _, csr) = self.csr_for(i);
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr));
            let body = serde_json::json!({ "certificate_request": pem });
            Bytes::from(serde_json::to_vec(&body).expect("JSON"))
        })
    }

    /// A serving certificate (with its chain) and key for `name`, signed by
    /// the issuer, for both servers' TLS.
    fn serving_identity(&self) -> ServingIdentity {
        let identity = Identity::new("linkerd-identity", "linkerd", self.domain.clone())
            .expect("the service identity");
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a P-256 key");
        let csr = key.certificate_signing_request(&identity).expect("a CSR");
        let leaf = self
            .issuer
            .issue(&csr, &identity, TimeDelta::hours(24), self.now)
            .expect("a serving certificate");
        let chain_der: Vec<Vec<u8>> = std::iter::once(leaf.leaf_der)
            .chain(leaf.chain_der)
            .collect();
        let pkcs8 = pem::parse(key.to_pkcs8_pem().as_bytes()).expect("PKCS#8 PEM");
        ServingIdentity {
            name: identity.to_string(),
            chain_der,
            key_der: pkcs8.contents().to_vec(),
            key_pem: key.to_pkcs8_pem().to_string(),
        }
    }

    /// Checks a sample leaf (first, then its intermediates) against the
    /// anchor; returns its SANs for the report.
    fn verify_sample(&self, chain: &[Certificate]) -> Result<String, String> {
        verify_chain(chain, std::slice::from_ref(&self.anchor), SystemClock.now())
            .map_err(|e| format!("does not verify against the anchor: {e}"))?;
        let profile = chain[0].profile();
        Ok(format!(
            "DNS {:?}, URI {:?}",
            profile.dns_names, profile.uris
        ))
    }
}

/// The TLS certificate both servers present.
struct ServingIdentity {
    name: String,
    chain_der: Vec<Vec<u8>>,
    key_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for ServingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How the service's accepted sockets are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sockets {
    /// `TCP_NODELAY` on, as Go's net package (so cfssl) and tonic's own
    /// `Server::serve` set it.
    NoDelay,
    /// Left as accepted (Nagle's algorithm on), as `lanyard_issuer::serve`
    /// accepts them: it hands tonic a listener, and tonic then applies no
    /// socket options.
    AsAccepted,
}

/// Starts the identity service on `runtime` (plaintext, or TLS with
/// `tls`); returns its address.
fn start_lanyard(
    runtime: &Runtime,
    fixture: &Fixture,
    tls: Option<&ServingIdentity>,
    sockets: Sockets,
) -> SocketAddr {
    let issuer = Arc::new(ArcSwapOption::from(Some(fixture.issuer.clone())));
    let service =
        IdentityService::new(issuer, fixture.token_key.clone(), SystemClock).into_server();
    let nodelay = sockets == Sockets::NoDelay;
    // The per-connection limit `serve` sets; one request at a time per
    // client never reaches it.
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .add_service(service);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(nodelay.then_some(true));
            runtime.spawn(router.serve_with_incoming(incoming));
        }
        Some(serving) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls_config(serving)));
            // Handshakes one at a time: the clients connect before timing.
            let incoming = futures::stream::unfold(
                (listener, acceptor),
                move |(listener, acceptor)| async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        if nodelay && tcp.set_nodelay(true).is_err() {
                            continue;
                        }
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            return Some((Ok::<_, std::io::Error>(tls), (listener, acceptor)));
                        }
                    }
                },
            );
            runtime.spawn(router.serve_with_incoming(incoming));
        }
    }
    addr
}

/// As the service's own TLS: ring, safe default versions, HTTP/2 only.
fn server_tls_config(serving: &ServingIdentity) -> rustls::ServerConfig {
    let chain = serving
        .chain_der
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving.key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("the serving certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

async fn lanyard_clients(
    addr: SocketAddr,
    n: usize,
    tls: Option<(&Certificate, &str)>,
) -> Vec<IdentityClient<Channel>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let endpoint = match tls {
            None => Endpoint::from_shared(format!("http://{addr}")).expect("a URI"),
            Some((anchor, name)) => Endpoint::from_shared(format!("https://{addr}"))
                .expect("a URI")
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(anchor.to_pem()))
                        .domain_name(name),
                )
                .expect("a TLS configuration"),
        };
        let channel = endpoint.connect().await.expect("a channel to the service");
        clients.push(IdentityClient::new(channel));
    }
    clients
}

fn check_lanyard(
    result: Result<tonic::Response<CertifyResponse>, tonic::Status>,
) -> Result<CertifyResponse, String> {
    match result {
        Ok(response) if !response.get_ref().leaf_certificate.is_empty() => {
            Ok(response.into_inner())
        }
        Ok(_) => Err("OK with an empty leaf certificate".into()),
        Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
    }
}

async fn lanyard_call(
    mut client: IdentityClient<Channel>,
    request: CertifyRequest,
) -> (IdentityClient<Channel>, Result<(), String>) {
    let result = check_lanyard(client.certify(request).await).map(drop);
    (client, result)
}

/// One HTTP/1.1 keep-alive connection to `cfssl serve`.
struct CfsslClient {
    sender: SendRequest<Full<Bytes>>,
    host: Arc<str>,
}

impl CfsslClient {
    async fn connect(addr: SocketAddr, tls: Option<&(tokio_rustls::TlsConnector, String)>) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("a connection to cfssl");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let sender = match tls {
            None => http1(tcp).await,
            Some((connector, name)) => {
                let name = ServerName::try_from(name.clone()).expect("a DNS name");
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .expect("a TLS connection to cfssl");
                http1(stream).await
            }
        };
        CfsslClient {
            sender,
            host: addr.to_string().into(),
        }
    }

    /// Signs one CSR; the certificate's PEM, or why not.
    async fn sign(&mut self, body: Bytes) -> Result<String, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let request = hyper::Request::post("/api/v1/cfssl/sign")
            .header(HOST, &*self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        check_cfssl(status, &body)
    }
}

async fn http1<T>(io: T) -> SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// cfssl's answer is `{"success": true, "result": {"certificate": PEM}}`.
fn check_cfssl(status: hyper::StatusCode, body: &[u8]) -> Result<String, String> {
    let refused = || {
        format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| refused())?;
    let certificate = value["result"]["certificate"].as_str().unwrap_or_default();
    if status.is_success()
        && value["success"] == serde_json::Value::Bool(true)
        && certificate.starts_with("-----BEGIN CERTIFICATE-----")
    {
        Ok(certificate.to_string())
    } else {
        Err(refused())
    }
}

async fn cfssl_call(mut client: CfsslClient, body: Bytes) -> (CfsslClient, Result<(), String>) {
    let result = client.sign(body).await.map(drop);
    (client, result)
}

/// TLS to cfssl as tonic's to Lanyard: ring, the anchor as the only root,
/// the service's name; HTTP/1.1 by ALPN.
fn cfssl_tls_connector(anchor: &Certificate) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(anchor.der().to_vec()))
        .expect("the anchor is a usable root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A running `cfssl serve`, killed (by its process id) when dropped.
#[derive(Debug)]
struct CfsslServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for CfsslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why there is no cfssl to compare with.
#[derive(Debug)]
enum NoPeer {
    NotInstalled,
    Failed(String),
}

impl std::fmt::Display for NoPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPeer::NotInstalled => write!(
                f,
                "`cfssl` is not on PATH; install it with `apt-get update && apt-get install -y golang-cfssl` \
                 (or run issuer/benches/certify.sh)"
            ),
            NoPeer::Failed(reason) => write!(f, "{reason}"),
        }
    }
}

fn cfssl_version() -> Result<String, NoPeer> {
    match Command::new("cfssl").arg("version").output() {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(", ")),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(NoPeer::NotInstalled),
        Err(e) => Err(NoPeer::Failed(format!("cannot run cfssl: {e}"))),
    }
}

/// Writes cfssl's CA (the identity issuer's certificate and key) and a
/// signing profile like Lanyard's leaves: 24 hours, digital signature,
/// server and client auth.
fn write_cfssl_files(dir: &Path, fixture: &Fixture, serving: &ServingIdentity) {
    let write = |name: &str, contents: &[u8]| {
        std::fs::write(dir.join(name), contents).expect("a file in the temporary directory");
    };
    write("ca.pem", fixture.issuer.certificate().to_pem().as_bytes());
    write("ca-key.pem", fixture.issuer.key().to_pkcs8_pem().as_bytes());
    write(
        "config.json",
        br#"{"signing":{"default":{"expiry":"24h","usages":["digital signature","server auth","client auth"]}}}"#,
    );
    let chain: String = serving
        .chain_der
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect();
    write("serving.pem", chain.as_bytes());
    write("serving-key.pem", serving.key_pem.as_bytes());
}

/// Starts `cfssl serve` on a free loopback port and waits until it
/// accepts connections. Its per-request INFO logging is turned off
/// (`-loglevel 2`), as Lanyard's service logs nothing per success here.
fn start_cfssl(dir: &Path, tls: bool) -> Result<CfsslServer, NoPeer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| NoPeer::Failed(format!("no free port: {e}")))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join(if tls { "cfssl-tls.log" } else { "cfssl.log" });
    let log_file = std::fs::File::create(&log).expect("a log file");
    let mut command = Command::new("cfssl");
    command
        .arg("serve")
        .args(["-address", "127.0.0.1", "-port", &port.to_string()])
        .arg("-ca")
        .arg(dir.join("ca.pem"))
        .arg("-ca-key")
        .arg(dir.join("ca-key.pem"))
        .arg("-config")
        .arg(dir.join("config.json"))
        .args(["-loglevel", "2"]);
    if tls {
        command
            .arg("-tls-cert")
            .arg(dir.join("serving.pem"))
            .arg("-tls-key")
            .arg(dir.join("serving-key.pem"));
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("a log file"))
        .stderr(log_file)
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => NoPeer::NotInstalled,
            _ => NoPeer::Failed(format!("cannot start cfssl: {e}")),
        })?;
    let mut server = CfsslServer { child, addr, log };
    for _ in 0..100 {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(NoPeer::Failed(format!(
                "cfssl serve exited ({status}): {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            )));
        }
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(NoPeer::Failed(format!(
        "cfssl serve did not answer on {addr} within 10 s: {}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    )))
}

/// The clients of one peer at one concurrency.
enum Peer {
    Lanyard(&'static str, Vec<IdentityClient<Channel>>),
    Cfssl(Vec<CfsslClient>),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Lanyard(name, _) => name,
            Peer::Cfssl(_) => CFSSL,
        }
    }

    /// One round of `n` prepared requests (or `duration`, if sooner).
    fn run(
        &mut self,
        fixture: &mut Fixture,
        clients_rt: &Runtime,
        n: usize,
        duration: Duration,
    ) -> Tally {
        match self {
            Peer::Lanyard(_, clients) => {
                let pool = fixture.lanyard_requests(n);
                let (back, tally) = clients_rt.block_on(round(
                    std::mem::take(clients),
                    pool,
                    duration,
                    lanyard_call,
                ));
                *clients = back;
                tally
            }
            Peer::Cfssl(clients) => {
                let pool = fixture.cfssl_requests(n);
                let (back, tally) =
                    clients_rt.block_on(round(std::mem::take(clients), pool, duration, cfssl_call));
                *clients = back;
                tally
            }
        }
    }
}

/// Where one transport's servers listen.
struct Targets<'a> {
    /// The service with `TCP_NODELAY` on, and as `serve` accepts sockets.
    lanyard: [(&'static str, SocketAddr); 2],
    cfssl: Option<SocketAddr>,
    tls: Option<(&'a Certificate, &'a str, tokio_rustls::TlsConnector)>,
}

/// One request to each server, its leaf verified against the anchor, so
/// the figures below are of real signatures. A cfssl that fails here is
/// skipped.
fn check_samples(
    fixture: &mut Fixture,
    clients_rt: &Runtime,
    targets: &Targets<'_>,
) -> Result<(), String> {
    let request = fixture.lanyard_requests(1).remove(0);
    let tls = targets.tls.as_ref().map(|(a, n, _)| (*a, *n));
    let mut client = clients_rt
        .block_on(lanyard_clients(targets.lanyard[0].1, 1, tls))
        .remove(0);
    let response = check_lanyard(clients_rt.block_on(client.certify(request)))
        .expect("the identity service signs a CSR");
    let mut chain =
        vec![Certificate::from_der(&response.leaf_certificate, "leaf").expect("a leaf")];
    for der in &response.intermediate_certificates {
        chain.push(Certificate::from_der(der, "intermediate").expect("an intermediate"));
    }
    let sans = fixture
        .verify_sample(&chain)
        .expect("Lanyard's leaf verifies");
    println!("  sample lanyard leaf verifies against the anchor ({sans})");

    let Some(addr) = targets.cfssl else {
        return Ok(());
    };
    let body = fixture.cfssl_requests(1).remove(0);
    let connector = targets
        .tls
        .as_ref()
        .map(|(_, name, connector)| (connector.clone(), name.to_string()));
    let pem = clients_rt.block_on(async {
        let mut client = CfsslClient::connect(addr, connector.as_ref()).await;
        client.sign(body).await
    })?;
    let mut chain = Certificate::parse_pem_bundle(pem.as_bytes(), "cfssl leaf")
        .map_err(|e| format!("cfssl's certificate does not parse: {e}"))?;
    chain.push(fixture.issuer.certificate().clone());
    let sans = fixture
        .verify_sample(&chain)
        .map_err(|e| format!("cfssl's leaf {e}"))?;
    println!("  sample cfssl leaf verifies against the anchor ({sans})");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_row(transport: &str, clients: usize, peer: &str, tally: &Tally) {
    println!(
        "  {transport:<9} {clients:>7}  {peer:<13} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>8}{}",
        tally.rate(),
        ms(tally.percentile(0.50)),
        ms(tally.percentile(0.99)),
        tally.signed(),
        tally.failures,
        if tally.ran_out {
            "  (request pool ran out early; rate is over the time actually run)"
        } else {
            ""
        }
    );
    if let Some(reason) = &tally.first_failure {
        println!("      first {peer} failure: {reason}");
    }
}

/// Warms up, then alternates measured rounds of each peer; prints a row
/// per peer and the ratios.
fn measure(
    fixture: &mut Fixture,
    clients_rt: &Runtime,
    targets: &Targets<'_>,
    transport: &str,
    concurrency: usize,
    quick: bool,
) {
    let tls = targets.tls.as_ref().map(|(a, n, _)| (*a, *n));
    let mut peers: Vec<Peer> = targets
        .lanyard
        .iter()
        .map(|(name, addr)| {
            Peer::Lanyard(
                name,
                clients_rt.block_on(lanyard_clients(*addr, concurrency, tls)),
            )
        })
        .collect();
    if let Some(addr) = targets.cfssl {
        let connector = targets
            .tls
            .as_ref()
            .map(|(_, name, connector)| (connector.clone(), name.to_string()));
        let clients = clients_rt.block_on(async {
            let mut clients = Vec::with_capacity(concurrency);
            for _ in 0..concurrency {
                clients.push(CfsslClient::connect(addr, connector.as_ref()).await);
            }
            clients
        });
        peers.push(Peer::Cfssl(clients));
    }
    let (rounds, round_time, warmup) = if quick {
        (1, Duration::from_millis(100), 2)
    } else {
        (ROUNDS, ROUND_TIME, WARMUP_PER_CLIENT)
    };
    // Warm up; the rate sizes each round's pool with room to spare.
    let pool_sizes: Vec<usize> = peers
        .iter_mut()
        .map(|peer| {
            let tally = peer.run(fixture, clients_rt, warmup * concurrency, Duration::MAX);
            let expected = tally.rate() * round_time.as_secs_f64();
            (expected * 2.0).ceil() as usize + 32 * concurrency
        })
        .collect();
    let mut totals: Vec<Tally> = peers.iter().map(|_| Tally::default()).collect();
    for _ in 0..rounds {
        for ((peer, total), n) in peers.iter_mut().zip(&mut totals).zip(&pool_sizes) {
            total.merge(peer.run(fixture, clients_rt, *n, round_time));
        }
    }
    for (peer, total) in peers.iter().zip(&totals) {
        print_row(transport, concurrency, peer.name(), total);
    }
    let find = |name: &str| {
        peers
            .iter()
            .zip(&totals)
            .find(|(peer, _)| peer.name() == name)
            .map(|(_, total)| total)
    };
    let ratios = |ours: &str, theirs: &str| {
        if let (Some(a), Some(b)) = (find(ours), find(theirs)) {
            println!(
                "      rate({ours})/rate({theirs}) {:.2}x, p99({theirs})/p99({ours}) {:.2}x",
                a.rate() / b.rate().max(1e-9),
                ms(b.percentile(0.99)) / ms(a.percentile(0.99)).max(1e-9)
            );
        }
    };
    ratios(LANYARD, CFSSL);
    ratios(LANYARD_AS_ACCEPTED, CFSSL);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and wants a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let started = stopwatch();
    let mut fixture = Fixture::new();
    let server_rt = runtime("lanyard-identity");
    let clients_rt = runtime("bench-clients");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let serving = fixture.serving_identity();

    let peer = cfssl_version();
    if peer.is_ok() {
        write_cfssl_files(dir.path(), &fixture, &serving);
    }
    println!("Certify: Lanyard's identity service beside cfssl serve, in one run");
    println!(
        "  CA: one ECDSA P-256 identity issuer key for both; CSRs: a fresh P-256 key each, \
         prepared before timing"
    );
    println!(
        "  each Lanyard request has its own identity (sa-N.{NAMESPACE}) and token, so the \
         per-identity rate limit (burst 10, then 1/s) never triggers"
    );
    println!(
        "  lanyard: gRPC over HTTP/2 to an in-process tonic server ({WORKER_THREADS} worker \
         threads), one channel per client, TCP_NODELAY on accepted sockets (as cfssl's)"
    );
    println!(
        "  {LANYARD_AS_ACCEPTED}: the same service with sockets left as accepted (Nagle on), \
         as lanyard_issuer::serve accepts them"
    );
    match &peer {
        Ok(version) => println!(
            "  cfssl:   {version}; HTTP/1.1 keep-alive, one connection per client, -loglevel 2"
        ),
        Err(reason) => println!("  cfssl:   SKIPPED, only Lanyard is measured: {reason}"),
    }
    println!(
        "  clients: {WORKER_THREADS} threads in this process; {} CPUs; {ROUNDS} interleaved \
         rounds of {} ms per peer after {WARMUP_PER_CLIENT} warm-up requests per client",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        ROUND_TIME.as_millis()
    );

    let connector = cfssl_tls_connector(&fixture.anchor);
    let anchor = fixture.anchor.clone();
    let mut peer_ok = peer.is_ok();
    for tls in [false, true] {
        let transport = if tls { "tls" } else { "plaintext" };
        println!("{transport}:");
        let lanyard_tls = tls.then_some(&serving);
        let lanyard = [
            (
                LANYARD,
                start_lanyard(&server_rt, &fixture, lanyard_tls, Sockets::NoDelay),
            ),
            (
                LANYARD_AS_ACCEPTED,
                start_lanyard(&server_rt, &fixture, lanyard_tls, Sockets::AsAccepted),
            ),
        ];
        let cfssl = if peer_ok {
            match start_cfssl(dir.path(), tls) {
                Ok(server) => Some(server),
                Err(reason) => {
                    println!("  cfssl SKIPPED: {reason}");
                    peer_ok = false;
                    None
                }
            }
        } else {
            None
        };
        let mut targets = Targets {
            lanyard,
            cfssl: cfssl.as_ref().map(|s| s.addr),
            tls: tls.then(|| (&anchor, serving.name.as_str(), connector.clone())),
        };
        if let Err(reason) = check_samples(&mut fixture, &clients_rt, &targets) {
            println!("  cfssl SKIPPED: {reason}");
            peer_ok = false;
            targets.cfssl = None;
        }
        println!(
            "  {:<9} {:>7}  {:<13} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "transport", "clients", "peer", "signs/s", "p50 ms", "p99 ms", "signed", "failed"
        );
        for concurrency in CONCURRENCY {
            measure(
                &mut fixture,
                &clients_rt,
                &targets,
                transport,
                concurrency,
                quick,
            );
        }
        drop(cfssl);
    }
    println!(
        "  identities prepared: {} (each used at most once); whole run {:.1} s",
        fixture.next_identity,
        started.elapsed().as_secs_f64()
    );
    if quick {
        println!(
            "certify bench: smoke run passed (run `cargo bench -p lanyard-issuer --bench certify` to measure)"
        );
    }
    server_rt.shutdown_background();
    clients_rt.shutdown_background();
}
