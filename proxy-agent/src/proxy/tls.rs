//! TLS for the proxy: the agent's current certificate (read from the watch
//! channel at each handshake) and the trust bundle (a PEM file of one or
//! more anchors, re-read when it changes). New handshakes use whatever is
//! current; established connections carry on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use lanyard_crds::time::Clock;
use lanyard_x509::{Certificate, ClockTime};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::sync::watch;

use crate::identity::Credentials;

/// Presents the agent's current certificate, server and client side.
#[derive(Debug)]
pub struct CurrentCert(pub watch::Receiver<Option<Arc<Credentials>>>);

impl CurrentCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|c| c.certified_key().clone())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// Why the trust bundle cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("trust bundle {}: {reason}", path.display())]
pub struct BundleError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The TLS configurations built from one version of the trust bundle.
#[derive(Debug)]
pub struct TlsConfigs {
    /// Inbound: the client's certificate is checked when one is sent;
    /// clients without one are unauthenticated, not refused here (policy
    /// decides).
    pub server: Arc<ServerConfig>,
    /// Outbound: the server must chain to the bundle; the expected
    /// identity is the server name.
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds both configurations from the anchors in `pem`; peers'
/// certificates are checked at `time`'s current time.
pub fn configs(
    pem: &[u8],
    path: &Path,
    cert: Arc<CurrentCert>,
    time: Arc<dyn TimeProvider>,
) -> Result<TlsConfigs, BundleError> {
    let bad = |reason: String| BundleError {
        path: path.to_path_buf(),
        reason,
    };
    let anchors = Certificate::parse_pem_bundle(pem, &path.display().to_string())
        .map_err(|e| bad(e.to_string()))?;
    if anchors.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for anchor in &anchors {
        roots
            .add(CertificateDer::from(anchor.der().to_vec()))
            .map_err(|e| bad(format!("`{}`: {e}", anchor.subject())))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut server = ServerConfig::builder_with_details(provider(), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = ClientConfig::builder_with_details(provider(), time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert);
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The trust bundle file and the configurations made from its current
/// contents. [`TrustBundle::reload`] swaps in a changed, valid file; a bad
/// one is refused and the previous configurations stay.
#[derive(Debug)]
pub struct TrustBundle {
    path: PathBuf,
    cert: Arc<CurrentCert>,
    time: Arc<dyn TimeProvider>,
    seen: ArcSwap<Vec<u8>>,
    current: ArcSwap<TlsConfigs>,
}

impl TrustBundle {
    /// Loads `path`; fails when it is unusable. Handshakes check peers'
    /// certificates at `clock`'s `now`.
    pub fn load(
        path: &Path,
        cert: Arc<CurrentCert>,
        clock: impl Clock + 'static,
    ) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|e| BundleError {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let time: Arc<dyn TimeProvider> = Arc::new(ClockTime(clock));
        let configs = configs(&pem, path, cert.clone(), time.clone())?;
        Ok(TrustBundle {
            path: path.to_path_buf(),
            cert,
            time,
            seen: ArcSwap::from_pointee(pem),
            current: ArcSwap::from_pointee(configs),
        })
    }

    /// The configurations for new connections.
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.current.load_full()
    }

    /// Re-reads the file; `Ok(true)` when a new bundle was swapped in.
    pub fn reload(&self) -> Result<bool, BundleError> {
        let pem = std::fs::read(&self.path).map_err(|e| BundleError {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if **self.seen.load() == pem {
            return Ok(false);
        }
        let result = configs(&pem, &self.path, self.cert.clone(), self.time.clone());
        self.seen.store(Arc::new(pem));
        self.current.store(Arc::new(result?));
        Ok(true)
    }
}

/// The identity a peer's certificate carries: its first DNS SAN.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let cert = Certificate::from_der(leaf, "peer certificate").ok()?;
    cert.profile().dns_names.into_iter().next()
}
