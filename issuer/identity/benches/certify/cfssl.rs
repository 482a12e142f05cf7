//! The peer: Debian's `cfssl serve`, started with the same issuer key,
//! and its HTTP/1.1 clients.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use lanyard_identity::service::proto::identity_client::IdentityClient;
use lanyard_issuer::Certificate;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::*;

/// One HTTP/1.1 keep-alive connection to `cfssl serve`.
pub(crate) struct CfsslClient {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    pub(crate) host: Arc<str>,
}

impl CfsslClient {
    pub(crate) async fn connect(
        addr: SocketAddr,
        tls: Option<&(tokio_rustls::TlsConnector, String)>,
    ) -> Self {
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
    pub(crate) async fn sign(&mut self, body: Bytes) -> Result<String, String> {
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

pub(crate) async fn http1<T>(io: T) -> SendRequest<Full<Bytes>>
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
pub(crate) fn check_cfssl(status: hyper::StatusCode, body: &[u8]) -> Result<String, String> {
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

pub(crate) async fn cfssl_call(
    mut client: CfsslClient,
    body: Bytes,
) -> (CfsslClient, Result<(), String>) {
    let result = client.sign(body).await.map(drop);
    (client, result)
}

/// TLS to cfssl as tonic's to Lanyard: ring, the anchor as the only root,
/// the service's name; HTTP/1.1 by ALPN.
pub(crate) fn cfssl_tls_connector(anchor: &Certificate) -> tokio_rustls::TlsConnector {
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
pub(crate) struct CfsslServer {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Drop for CfsslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why there is no cfssl to compare with.
#[derive(Debug)]
pub(crate) enum NoPeer {
    NotInstalled,
    Failed(String),
}

impl std::fmt::Display for NoPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoPeer::NotInstalled => write!(
                f,
                "`cfssl` is not on PATH; install it with `apt-get update && apt-get install -y golang-cfssl` \
                 (or run issuer/identity/benches/certify.sh)"
            ),
            NoPeer::Failed(reason) => write!(f, "{reason}"),
        }
    }
}

pub(crate) fn cfssl_version() -> Result<String, NoPeer> {
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
pub(crate) fn write_cfssl_files(dir: &Path, fixture: &Fixture, serving: &ServingIdentity) {
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
pub(crate) fn start_cfssl(dir: &Path, tls: bool) -> Result<CfsslServer, NoPeer> {
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
pub(crate) enum Peer {
    Lanyard(Vec<IdentityClient<Channel>>),
    /// The clients and the server's process id.
    Cfssl(Vec<CfsslClient>, u32),
}

impl Peer {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Peer::Lanyard(_) => LANYARD,
            Peer::Cfssl(..) => CFSSL,
        }
    }

    /// One round of `n` prepared requests (or `duration`, if sooner).
    pub(crate) fn run(
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
