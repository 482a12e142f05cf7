//! The identity service's `Certify` beside a peer CA server, Debian's
//! `golang-cfssl` (`cfssl serve`), in the same run, interleaved round by
//! round, so a noisy machine moves both figures together.
//!
//! Both sign with the same ECDSA P-256 identity issuer key, both get fresh
//! P-256 CSRs prepared before timing, both are driven over loopback by the
//! same one-thread client runtime in this process: Lanyard over plaintext
//! HTTP/2 gRPC (a tonic `Channel` per client, as the agent uses) to
//! `lanyard_identity::serve::serve`, the service `lanyard identity` and
//! `lanyard up` run, with its metrics and rate limit, on tokio's default
//! runtime; cfssl over HTTP/1.1 keep-alive (one connection per client) to
//! `POST /api/v1/cfssl/sign`. Then the same over TLS, where Lanyard presents
//! the certificate it signs for its own identity and the clients verify it
//! against the anchor.
//!
//! The service sets `TCP_NODELAY` on its accepted sockets, as Go does for
//! cfssl.
//!
//! Each Lanyard request carries its own identity (`sa-N.bench`), so the
//! service's per-identity rate limit (a burst of 10, then one a second)
//! never triggers: the figures are signing throughput, not the limiter.
//!
//! Every response is checked (Lanyard: OK and a non-empty leaf; cfssl:
//! `success: true` and a certificate) and failures are counted apart.
//!
//! Clients and servers share the machine's CPUs, so a row's rate depends on
//! both sides' CPU per request; each row gives both (`srv us`, `cli us`,
//! from the kernel's per-thread run times), and the server's is the figure
//! least moved by other load on the machine.
//!
//! Before the servers, the bench times the service's own work on one thread
//! (token check, `validate_csr`, `IdentityIssuer::issue`), so the rows can be
//! read against what the CPUs could sign with nothing else running.
//!
//! `issuer/benches/certify.sh` installs cfssl when it is missing and runs
//! `cargo bench -p lanyard-issuer --bench certify`. Without cfssl, Lanyard's
//! figures are still reported and the peer is said to be skipped.
//!
//! `CERTIFY_PROFILE=plaintext:10` (or `tls:10`) runs Lanyard alone at 16
//! clients for that many seconds, its requests prepared first; it prints
//! the process id two seconds before timing starts, for `perf record -p`.
//! No cfssl, no figures beyond that run's row.

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
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::serve::{ServeOptions, serve};
use lanyard_identity::service::RateLimit;
use lanyard_identity::service::proto::identity_client::IdentityClient;
use lanyard_identity::service::proto::{CertifyRequest, CertifyResponse};
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{
    Certificate, IdentityIssuer, KeyAlgorithm, SigningKey, TrustAnchor, validate_csr, verify_chain,
};
use rustls::pki_types::{CertificateDer, ServerName};
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
const CFSSL: &str = "cfssl";
/// Time for a profiler to attach before a profiling run starts.
const PROFILE_PAUSE: Duration = Duration::from_secs(2);
/// Worker threads of the clients' runtime. One thread drives all clients
/// at a lower CPU cost per request than two (fewer cross-thread wake-ups),
/// and that CPU is taken from the servers, which share the machine.
const CLIENT_WORKER_THREADS: usize = 1;
/// The service's runtime's thread name.
const SERVER_THREADS: &str = "lanyard-identity";
/// The clients' runtime's thread name.
const CLIENT_THREADS: &str = "bench-clients";

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn stopwatch() -> Instant {
    Instant::now()
}

/// The service's runtime: tokio's default of one worker per CPU, as
/// `lanyard identity` and `lanyard up` build theirs.
fn server_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn clients_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_WORKER_THREADS)
        .thread_name(CLIENT_THREADS)
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
    /// CPU time the server's threads used during the round, if known.
    server_cpu: Option<Duration>,
    /// CPU time the client runtime's threads used during the round.
    client_cpu: Option<Duration>,
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
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.client_cpu = add(self.client_cpu, other.client_cpu);
    }

    /// CPU time per signed certificate.
    fn per_signed(&self, cpu: Option<Duration>) -> Option<Duration> {
        let signed = u32::try_from(self.signed()).ok().filter(|n| *n > 0)?;
        cpu.map(|cpu| cpu / signed)
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

/// Whose CPU time to count.
#[derive(Debug, Clone, Copy)]
enum Threads {
    /// This process's threads with this name (as `thread_name` set it).
    Named(&'static str),
    /// Every thread of another process.
    Process(u32),
}

/// CPU time `threads` have used so far: the sum of their
/// `/proc/<pid>/task/<tid>/schedstat` run times. `None` where there is no
/// such file (not Linux).
fn cpu_time(threads: Threads) -> Option<Duration> {
    let (pid, name) = match threads {
        Threads::Named(name) => (std::process::id(), Some(name)),
        Threads::Process(pid) => (pid, None),
    };
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?.path();
        if let Some(name) = name {
            // The kernel keeps the first 15 bytes of a thread's name.
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != &name[..name.len().min(15)] {
                continue;
            }
        }
        // A thread that ended in between has no file: its time is lost.
        let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue;
        };
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())?;
    }
    Some(Duration::from_nanos(total))
}

/// Counts a round's CPU time: the server's and the client runtime's.
struct CpuMeter {
    server: Threads,
    at_start: Option<(Duration, Duration)>,
}

impl CpuMeter {
    fn start(server: Threads) -> Self {
        let at_start = cpu_time(server).zip(cpu_time(Threads::Named(CLIENT_THREADS)));
        CpuMeter { server, at_start }
    }

    fn stop(self, mut tally: Tally) -> Tally {
        let now = cpu_time(self.server).zip(cpu_time(Threads::Named(CLIENT_THREADS)));
        if let (Some((server0, client0)), Some((server1, client1))) = (self.at_start, now) {
            tally.server_cpu = Some(server1.saturating_sub(server0));
            tally.client_cpu = Some(client1.saturating_sub(client0));
        }
        tally
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

    /// The identity service's own identity, as Linkerd names it; the name
    /// clients check over TLS.
    fn service_identity(&self) -> Identity {
        Identity::new("linkerd-identity", "linkerd", self.domain.clone())
            .expect("the service identity")
    }

    /// cfssl's serving certificate (with its chain) and key, for the
    /// service's name, signed by the issuer. (Lanyard signs its own.)
    fn serving_identity(&self) -> ServingIdentity {
        let identity = self.service_identity();
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a P-256 key");
        let csr = key.certificate_signing_request(&identity).expect("a CSR");
        let leaf = self
            .issuer
            .issue(&csr, &identity, TimeDelta::hours(24), self.now)
            .expect("a serving certificate");
        let chain_der: Vec<Vec<u8>> = std::iter::once(leaf.leaf_der)
            .chain(leaf.chain_der)
            .collect();
        ServingIdentity {
            name: identity.to_string(),
            chain_der,
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

/// The TLS certificate cfssl presents.
struct ServingIdentity {
    name: String,
    chain_der: Vec<Vec<u8>>,
    key_pem: String,
}

impl std::fmt::Debug for ServingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A running identity service, stopped when dropped.
struct LanyardServer {
    addr: SocketAddr,
    stop: lanyard_runtime::Shutdown,
}

impl Drop for LanyardServer {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// Starts `lanyard_identity::serve::serve` on `runtime` on a free loopback
/// port, plaintext or TLS, as `lanyard up` configures it: the fixture's
/// issuer in the slot, token authentication, fresh metrics, the default
/// rate limit. With TLS, waits until the service has signed its own
/// certificate and a client verifies it against the anchor.
fn start_lanyard(
    runtime: &Runtime,
    clients_rt: &Runtime,
    fixture: &Fixture,
    tls: bool,
) -> LanyardServer {
    let options = ServeOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        issuer: Arc::new(ArcSwapOption::from(Some(fixture.issuer.clone()))),
        service_identity: fixture.service_identity(),
        metrics: IdentityMetrics::new(),
        rate_limit: RateLimit::default(),
        insecure_plaintext: !tls,
        limits: Default::default(),
    };
    let authenticator = fixture.token_key.clone();
    let (ready, bound) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let failed = ready.clone();
    let stop = lanyard_runtime::Shutdown::new();
    let stopped = stop.clone();
    runtime.spawn(async move {
        let result = serve(
            options,
            authenticator,
            SystemClock,
            move |addr| {
                let _ = ready.send(Ok(addr));
            },
            stopped,
        )
        .await;
        if let Err(error) = result {
            let _ = failed.send(Err(error.to_string()));
        }
    });
    let addr = match bound.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(error)) => panic!("the identity service did not start: {error}"),
        Err(_) => panic!("the identity service did not bind within 10 s"),
    };
    let server = LanyardServer { addr, stop };
    if tls {
        let waited = stopwatch();
        let name = fixture.service_identity().to_string();
        let mut last = String::new();
        while waited.elapsed() < Duration::from_secs(10) {
            match clients_rt.block_on(lanyard_channel(addr, Some((&fixture.anchor, &name)))) {
                Ok(_) => return server,
                Err(error) => last = error,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the identity service presented no certificate for {name} within 10 s: {last}");
    }
    server
}

/// One channel (one HTTP/2 connection) to the service; with `tls`, the
/// anchor is the only root and the service's identity the name checked.
async fn lanyard_channel(
    addr: SocketAddr,
    tls: Option<(&Certificate, &str)>,
) -> Result<Channel, String> {
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
    endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            reason = format!("{reason}: {inner}");
            source = inner.source();
        }
        reason
    })
}

async fn lanyard_clients(
    addr: SocketAddr,
    n: usize,
    tls: Option<(&Certificate, &str)>,
) -> Vec<IdentityClient<Channel>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = lanyard_channel(addr, tls)
            .await
            .unwrap_or_else(|e| panic!("a channel to the identity service: {e}"));
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
    Lanyard(Vec<IdentityClient<Channel>>),
    /// The clients and the server's process id.
    Cfssl(Vec<CfsslClient>, u32),
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Lanyard(_) => LANYARD,
            Peer::Cfssl(..) => CFSSL,
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
            Peer::Lanyard(clients) => {
                let pool = fixture.lanyard_requests(n);
                let cpu = CpuMeter::start(Threads::Named(SERVER_THREADS));
                let (back, tally) = clients_rt.block_on(round(
                    std::mem::take(clients),
                    pool,
                    duration,
                    lanyard_call,
                ));
                *clients = back;
                cpu.stop(tally)
            }
            Peer::Cfssl(clients, pid) => {
                let pool = fixture.cfssl_requests(n);
                let cpu = CpuMeter::start(Threads::Process(*pid));
                let (back, tally) =
                    clients_rt.block_on(round(std::mem::take(clients), pool, duration, cfssl_call));
                *clients = back;
                cpu.stop(tally)
            }
        }
    }
}

/// Where one transport's servers listen.
struct Targets<'a> {
    lanyard: SocketAddr,
    /// cfssl's address and process id.
    cfssl: Option<(SocketAddr, u32)>,
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
        .block_on(lanyard_clients(targets.lanyard, 1, tls))
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

    let Some((addr, _)) = targets.cfssl else {
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

/// Microseconds of CPU per signed certificate, or `-`.
fn cpu_cell(tally: &Tally, cpu: Option<Duration>) -> String {
    tally
        .per_signed(cpu)
        .map_or_else(|| "-".to_string(), |d| format!("{:.0}", us(d)))
}

fn print_header() {
    println!(
        "  {:<9} {:>7}  {:<7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "transport",
        "clients",
        "peer",
        "signs/s",
        "p50 ms",
        "p99 ms",
        "srv us",
        "cli us",
        "signed",
        "failed"
    );
}

fn print_row(transport: &str, clients: usize, peer: &str, tally: &Tally) {
    println!(
        "  {transport:<9} {clients:>7}  {peer:<7} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>8} {:>8} {:>8}{}",
        tally.rate(),
        ms(tally.percentile(0.50)),
        ms(tally.percentile(0.99)),
        cpu_cell(tally, tally.server_cpu),
        cpu_cell(tally, tally.client_cpu),
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
    let mut peers = vec![Peer::Lanyard(clients_rt.block_on(lanyard_clients(
        targets.lanyard,
        concurrency,
        tls,
    )))];
    if let Some((addr, pid)) = targets.cfssl {
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
        peers.push(Peer::Cfssl(clients, pid));
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
    if let (Some(ours), Some(theirs)) = (find(LANYARD), find(CFSSL)) {
        let cpu = match (
            ours.per_signed(ours.server_cpu),
            theirs.per_signed(theirs.server_cpu),
        ) {
            (Some(a), Some(b)) => format!(
                ", server CPU per signature({CFSSL})/({LANYARD}) {:.2}x",
                b.as_secs_f64() / a.as_secs_f64().max(1e-12)
            ),
            _ => String::new(),
        };
        println!(
            "      rate({LANYARD})/rate({CFSSL}) {:.2}x, p99({CFSSL})/p99({LANYARD}) {:.2}x{cpu}",
            ours.rate() / theirs.rate().max(1e-9),
            ms(theirs.percentile(0.99)) / ms(ours.percentile(0.99)).max(1e-9)
        );
    }
}

/// What the service does per call, on one thread, without the network.
struct CallCosts {
    token: Duration,
    validate: Duration,
    issue: Duration,
}

/// One request's parts, for timing the service's work without the network.
struct Prepared {
    identity: Identity,
    token: Vec<u8>,
    csr: Vec<u8>,
}

/// Times `TokenKey::verify`, `validate_csr` and `IdentityIssuer::issue` on
/// prepared requests (cycled), median of interleaved rounds.
fn call_costs(fixture: &mut Fixture, quick: bool) -> CallCosts {
    const PREPARED: usize = 64;
    let first = fixture.take_identities(PREPARED);
    let requests = prepare(first, PREPARED, |i| {
        let (identity, service_account, csr) = fixture.csr_for(i);
        let token = fixture
            .token_key
            .create(
                NAMESPACE,
                &service_account,
                TimeDelta::hours(1),
                fixture.now,
            )
            .expect("a join token");
        Prepared {
            identity,
            token: token.into_bytes(),
            csr,
        }
    });
    let (rounds, round_time) = if quick {
        (1, Duration::from_millis(5))
    } else {
        (5, Duration::from_millis(150))
    };
    // Mean time per call of `op` over about `round_time`.
    let per_call = |op: &dyn Fn(&Prepared)| {
        let start = stopwatch();
        let mut calls = 0u32;
        while start.elapsed() < round_time {
            for request in &requests {
                op(request);
            }
            calls += PREPARED as u32;
        }
        start.elapsed() / calls
    };
    let token = |Prepared { token, .. }: &Prepared| {
        std::hint::black_box(
            fixture
                .token_key
                .verify(token, fixture.now)
                .expect("the token verifies"),
        );
    };
    let validate = |Prepared { identity, csr, .. }: &Prepared| {
        std::hint::black_box(validate_csr(csr, identity).expect("the CSR is valid"));
    };
    let issue = |Prepared { identity, csr, .. }: &Prepared| {
        std::hint::black_box(
            fixture
                .issuer
                .issue(csr, identity, TimeDelta::hours(24), fixture.now)
                .expect("the issuer signs"),
        );
    };
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        samples[0].push(per_call(&token));
        samples[1].push(per_call(&validate));
        samples[2].push(per_call(&issue));
    }
    let [token, validate, issue] = samples.map(|mut v| {
        v.sort_unstable();
        v[v.len() / 2]
    });
    CallCosts {
        token,
        validate,
        issue,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `CERTIFY_PROFILE=<plaintext|tls>:<seconds>`: Lanyard alone at the
/// highest concurrency for that long, for a profiler.
fn profile_request() -> Option<(bool, Duration)> {
    let value = std::env::var("CERTIFY_PROFILE").ok()?;
    let (transport, seconds) = value
        .split_once(':')
        .expect("CERTIFY_PROFILE is <plaintext|tls>:<seconds>");
    let tls = match transport {
        "plaintext" => false,
        "tls" => true,
        other => panic!("CERTIFY_PROFILE: unknown transport `{other}`"),
    };
    let seconds: u64 = seconds.parse().expect("CERTIFY_PROFILE: whole seconds");
    Some((tls, Duration::from_secs(seconds)))
}

fn profile(
    fixture: &mut Fixture,
    server_rt: &Runtime,
    clients_rt: &Runtime,
    tls: bool,
    duration: Duration,
) {
    let concurrency = CONCURRENCY[CONCURRENCY.len() - 1];
    let transport = if tls { "tls" } else { "plaintext" };
    let server = start_lanyard(server_rt, clients_rt, fixture, tls);
    let name = fixture.service_identity().to_string();
    let anchor = fixture.anchor.clone();
    let tls_name = tls.then_some((&anchor, name.as_str()));
    let clients = clients_rt.block_on(lanyard_clients(server.addr, concurrency, tls_name));
    let warmup = fixture.lanyard_requests(WARMUP_PER_CLIENT * concurrency);
    let (clients, warmed) =
        clients_rt.block_on(round(clients, warmup, Duration::MAX, lanyard_call));
    let n = (warmed.rate() * duration.as_secs_f64() * 2.0).ceil() as usize;
    let pool = fixture.lanyard_requests(n);
    println!(
        "profiling: pid {}; lanyard alone, {transport}, {concurrency} clients, {} s, \
         starting in {} s",
        std::process::id(),
        duration.as_secs(),
        PROFILE_PAUSE.as_secs()
    );
    std::thread::sleep(PROFILE_PAUSE);
    let cpu = CpuMeter::start(Threads::Named(SERVER_THREADS));
    let (_, tally) = clients_rt.block_on(round(clients, pool, duration, lanyard_call));
    print_header();
    print_row(transport, concurrency, LANYARD, &cpu.stop(tally));
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and wants a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let started = stopwatch();
    let mut fixture = Fixture::new();
    let server_rt = server_runtime();
    let clients_rt = clients_runtime();
    if let Some((tls, duration)) = profile_request() {
        profile(&mut fixture, &server_rt, &clients_rt, tls, duration);
        server_rt.shutdown_background();
        clients_rt.shutdown_background();
        return;
    }
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  lanyard: lanyard_identity::serve::serve (metrics, default rate limit, TCP_NODELAY) on \
         tokio's default runtime ({cpus} workers, as `lanyard identity`); gRPC over HTTP/2 with \
         tonic's Channel, as the agent, one per client"
    );
    match &peer {
        Ok(version) => println!(
            "  cfssl:   {version}; HTTP/1.1 keep-alive, one connection per client, -loglevel 2"
        ),
        Err(reason) => println!("  cfssl:   SKIPPED, only Lanyard is measured: {reason}"),
    }
    println!(
        "  srv us, cli us: CPU time per signed certificate of the server (Lanyard's runtime \
         threads; every cfssl thread) and of the clients' runtime, from /proc schedstat"
    );
    println!(
        "  clients: {CLIENT_WORKER_THREADS} runtime thread in this process, sharing the {cpus} \
         CPUs with the servers; {ROUNDS} interleaved \
         rounds of {} ms per peer after {WARMUP_PER_CLIENT} warm-up requests per client",
        ROUND_TIME.as_millis()
    );
    let costs = call_costs(&mut fixture, quick);
    println!(
        "  per call on one thread: token check {:.1} us, validate_csr {:.1} us, \
         IdentityIssuer::issue (validates, then signs) {:.1} us; {cpus} CPUs doing only \
         token check + issue: {:.0} signs/s",
        us(costs.token),
        us(costs.validate),
        us(costs.issue),
        cpus as f64 / (costs.token + costs.issue).as_secs_f64()
    );

    let connector = cfssl_tls_connector(&fixture.anchor);
    let anchor = fixture.anchor.clone();
    let mut peer_ok = peer.is_ok();
    for tls in [false, true] {
        let transport = if tls { "tls" } else { "plaintext" };
        println!("{transport}:");
        let lanyard = start_lanyard(&server_rt, &clients_rt, &fixture, tls);
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
            lanyard: lanyard.addr,
            cfssl: cfssl.as_ref().map(|s| (s.addr, s.child.id())),
            tls: tls.then(|| (&anchor, serving.name.as_str(), connector.clone())),
        };
        if let Err(reason) = check_samples(&mut fixture, &clients_rt, &targets) {
            println!("  cfssl SKIPPED: {reason}");
            peer_ok = false;
            targets.cfssl = None;
        }
        print_header();
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
        drop(lanyard);
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
