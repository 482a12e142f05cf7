//! The agent's identity client: a P-256 key made in this process at start,
//! a CSR for the pod's identity, `Certify` calls to the identity service
//! with the token file's current contents, and a refresh loop that
//! publishes each new certificate through a [`tokio::sync::watch`] channel.
//!
//! Every answer is checked before it is used: the leaf must certify this
//! process's key for exactly this identity and chain to the trust anchors.
//!
//! Between refreshes the trust-anchors file is looked at every
//! [`ANCHORS_POLL`]: a trust-anchor rotation ends by removing the old
//! anchor, and a certificate that no longer chains to any anchor left
//! ([`anchors_verdict`]) is replaced at once instead of at its refresh time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::Identity;
use lanyard_crds::time::Clock;
use lanyard_files::volume;
use lanyard_identity_api::CertifyRequest;
use lanyard_identity_api::identity_client::IdentityClient;
use lanyard_runtime::Backoff;
use lanyard_x509::{Certificate, ChainError, WorkloadKey, verify_chain};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::AgentMetrics;

/// A refresh is never sooner than this after the last one...
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// ...nor later than this.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The share of the remaining lifetime after which a certificate is
/// refreshed, before jitter.
pub const REFRESH_AT: f64 = 0.7;
/// Jitter takes up to this share off the refresh delay, so agents started
/// together do not refresh together.
pub const REFRESH_JITTER: f64 = 0.1;
/// The first retry after a failure; retries double from here...
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// ...up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// While a certificate is held, the trust-anchors file is read this often;
/// it is parsed only when its bytes changed.
pub const ANCHORS_POLL: Duration = Duration::from_secs(1);

/// Where the agent gets its identity and how it proves it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The identity to ask for.
    pub identity: Identity,
    /// The identity service, `host:port` (or a full `https://` URL).
    pub service_addr: String,
    /// The identity service's own identity, which its TLS certificate must
    /// carry (`linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local`).
    pub service_identity: String,
    /// PEM file of the trust anchors: the service's certificate and the
    /// agent's leaves must chain to one of them. Read again on each call,
    /// so a distributed bundle takes effect without a restart, and every
    /// [`ANCHORS_POLL`] between calls, so a certificate the new bundle no
    /// longer trusts is replaced at once.
    pub trust_anchors: PathBuf,
    /// The token file: a projected ServiceAccount token in a cluster, a
    /// `lanyard token create` token locally. Read again on each call.
    pub token_file: PathBuf,
    /// Talk to the service without TLS: the token crosses the wire in the
    /// clear. Tests on loopback only.
    pub insecure_plaintext: bool,
    /// How long one `Certify` call may take, connection included.
    pub timeout: Duration,
}

/// Why one attempt to get a certificate failed. None of these changes the
/// certificate the agent holds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The token file cannot be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the token file {} is empty", path.display())]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// The trust anchors cannot be read.
    #[error("cannot use the trust anchors in {}: {reason}", path.display())]
    TrustAnchors {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The service address is not usable.
    #[error("bad identity service address `{addr}`: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The service refused the request (or could not be reached).
    #[error("the identity service answered {code:?}: {message}")]
    Refused {
        /// The gRPC code.
        code: tonic::Code,
        /// The service's message.
        message: String,
    },
    /// The service answered with a certificate the agent cannot use.
    #[error("the identity service's answer is unusable: {0}")]
    BadResponse(String),
    /// Making the key or CSR failed.
    #[error(transparent)]
    Key(#[from] lanyard_x509::Error),
}

impl AgentError {
    /// The gRPC code for a refusal, for metrics; `None` for local failures.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            AgentError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A certificate the agent holds: the chain the service signed, the key
/// made here, and the anchors the chain was verified against.
#[derive(Clone)]
pub struct Credentials {
    identity: Identity,
    key: Arc<WorkloadKey>,
    certified_key: Arc<CertifiedKey>,
    chain: Vec<Certificate>,
    anchors: Vec<Certificate>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity.as_str())
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The identity the certificate carries.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The leaf and intermediates with the key, for rustls.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The leaf, then intermediates up to (not including) the anchor.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// The trust anchors the chain was verified against.
    pub fn anchors(&self) -> &[Certificate] {
        &self.anchors
    }

    /// The leaf's notAfter.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.chain[0].not_after()
    }

    /// Writes `tls.crt` (leaf and intermediates), `tls.key` (0600) and
    /// `ca.crt` (the anchors) into `dir` the way a Secret volume is
    /// written: all three change at once, atomically.
    pub fn write_files(&self, dir: &Path) -> Result<(), lanyard_files::Error> {
        let chain: String = self.chain.iter().map(Certificate::to_pem).collect();
        let anchors: String = self.anchors.iter().map(Certificate::to_pem).collect();
        let key = self.key.to_pkcs8_pem();
        volume::write(
            dir,
            &[
                ("tls.crt", chain.as_bytes(), 0o644),
                ("tls.key", key.as_bytes(), 0o600),
                ("ca.crt", anchors.as_bytes(), 0o644),
            ],
            true,
        )
    }
}

/// The identity client. One key for the life of the process; each refresh
/// certifies it again.
#[derive(Debug)]
pub struct Agent<C> {
    config: AgentConfig,
    key: Arc<WorkloadKey>,
    csr: Vec<u8>,
    clock: C,
    metrics: AgentMetrics,
    /// The channel, and the anchors PEM it was built to trust.
    client: Option<(Vec<u8>, IdentityClient<Channel>)>,
}

impl<C: Clock + Clone + 'static> Agent<C> {
    /// Makes the key and the CSR. Nothing is sent yet.
    pub fn new(config: AgentConfig, clock: C, metrics: AgentMetrics) -> Result<Self, AgentError> {
        let key = WorkloadKey::generate()?;
        let csr = key.certificate_signing_request(&config.identity)?;
        Ok(Agent {
            config,
            key: Arc::new(key),
            csr,
            clock,
            metrics,
            client: None,
        })
    }

    /// One `Certify` call: reads the token and anchors, asks the service,
    /// and checks the answer.
    pub async fn certify(&mut self) -> Result<Credentials, AgentError> {
        Ok(self.certify_with_anchors().await?.0)
    }

    /// [`Agent::certify`], also returning the anchors file's bytes the
    /// answer was checked against.
    async fn certify_with_anchors(&mut self) -> Result<(Credentials, Vec<u8>), AgentError> {
        let token = read_token(&self.config.token_file).await?;
        let anchors_pem = tokio::fs::read(&self.config.trust_anchors)
            .await
            .map_err(|e| self.anchors_error(e.to_string()))?;
        let what = self.config.trust_anchors.display().to_string();
        let anchors = Certificate::parse_pem_bundle(&anchors_pem, &what)
            .map_err(|e| self.anchors_error(e.to_string()))?;
        if anchors.is_empty() {
            return Err(self.anchors_error("no certificate in the file".into()));
        }
        let mut client = self.client(anchors_pem.clone(), &anchors)?;
        let response = client
            .certify(CertifyRequest {
                identity: self.config.identity.to_string(),
                token,
                certificate_signing_request: self.csr.clone(),
            })
            .await
            .map_err(|status| AgentError::Refused {
                code: status.code(),
                message: status.message().to_string(),
            })?
            .into_inner();
        Ok((self.check(response, anchors)?, anchors_pem))
    }

    fn anchors_error(&self, reason: String) -> AgentError {
        AgentError::TrustAnchors {
            path: self.config.trust_anchors.clone(),
            reason,
        }
    }

    /// The client, rebuilt when the anchors changed. The channel connects
    /// lazily and reconnects by itself.
    fn client(
        &mut self,
        anchors_pem: Vec<u8>,
        anchors: &[Certificate],
    ) -> Result<IdentityClient<Channel>, AgentError> {
        let stale = self
            .client
            .as_ref()
            .is_none_or(|(pem, _)| *pem != anchors_pem);
        if stale {
            let endpoint = self.endpoint(self.service_url()?)?;
            let channel = if self.config.insecure_plaintext {
                endpoint.connect_lazy()
            } else {
                // The connector does TLS itself, so rustls verifies the
                // service's certificate at this agent's clock: tonic is told
                // to dial `http` (it adds no TLS of its own) while requests
                // keep the `https` origin.
                let origin = endpoint.uri().clone();
                let dial = format!("http://{}", origin.authority().map_or("", |a| a.as_str()));
                self.endpoint(dial)?
                    .origin(origin)
                    .connect_with_connector_lazy(self.tls_connector(anchors)?)
            };
            self.client = Some((anchors_pem, IdentityClient::new(channel)));
        }
        Ok(self.client.as_ref().expect("set above").1.clone())
    }

    fn address_error(&self, reason: String) -> AgentError {
        AgentError::Address {
            addr: self.config.service_addr.clone(),
            reason,
        }
    }

    /// Dials the identity service over TLS: HTTP/2 by ALPN, its certificate
    /// verified against `anchors` for the service's identity, at the agent's
    /// clock.
    fn tls_connector(
        &self,
        anchors: &[Certificate],
    ) -> Result<
        impl tower::Service<
            http::Uri,
            Response = hyper_util::rt::TokioIo<
                tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            >,
            Error = std::io::Error,
            Future = impl Send,
        > + Send
        + 'static,
        AgentError,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(rustls::pki_types::CertificateDer::from(
                    anchor.der().to_vec(),
                ))
                .map_err(|e| self.anchors_error(e.to_string()))?;
        }
        let mut config = rustls::ClientConfig::builder_with_details(
            Arc::new(rustls::crypto::ring::default_provider()),
            Arc::new(lanyard_x509::ClockTime(self.clock.clone())),
        )
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server_name =
            rustls::pki_types::ServerName::try_from(self.config.service_identity.clone())
                .map_err(|e| self.address_error(e.to_string()))?;
        Ok(tower::service_fn(move |uri: http::Uri| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            async move {
                let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                let port = uri.port_u16().unwrap_or(443);
                let tcp = tokio::net::TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok(hyper_util::rt::TokioIo::new(tls))
            }
        }))
    }

    /// The service's URL: `--identity-addr`, with the scheme the mode
    /// implies (`https`, or `http` with `--insecure-plaintext-identity`).
    fn service_url(&self) -> Result<String, AgentError> {
        let addr = &self.config.service_addr;
        let scheme = if self.config.insecure_plaintext {
            "http"
        } else {
            "https"
        };
        match addr.split_once("://") {
            Some((given, _)) if given == scheme => Ok(addr.clone()),
            Some((given, _)) => Err(self.address_error(format!(
                "the scheme `{given}` does not match the mode: expected `{scheme}`{}",
                if scheme == "https" {
                    " (plaintext needs --insecure-plaintext-identity)"
                } else {
                    ""
                }
            ))),
            None => Ok(format!("{scheme}://{addr}")),
        }
    }

    /// A channel endpoint for `url`, with the call and connect timeouts.
    fn endpoint(&self, url: String) -> Result<Endpoint, AgentError> {
        Ok(Endpoint::from_shared(url)
            .map_err(|e| self.address_error(e.to_string()))?
            .timeout(self.config.timeout)
            .connect_timeout(self.config.timeout))
    }

    /// Checks that the answer certifies this key, for this identity, and
    /// chains to the anchors now.
    fn check(
        &self,
        response: lanyard_identity_api::CertifyResponse,
        anchors: Vec<Certificate>,
    ) -> Result<Credentials, AgentError> {
        let bad = AgentError::BadResponse;
        let leaf = Certificate::from_der(&response.leaf_certificate, "leaf certificate")
            .map_err(|e| bad(e.to_string()))?;
        if !self.key.matches_public_key(leaf.public_key_raw()) {
            return Err(bad("the leaf certifies another key".into()));
        }
        let profile = leaf.profile();
        if !profile
            .dns_names
            .iter()
            .any(|n| n == self.config.identity.as_str())
        {
            return Err(bad(format!(
                "the leaf is for {:?}, not `{}`",
                profile.dns_names, self.config.identity
            )));
        }
        let mut chain = vec![leaf];
        for (i, der) in response.intermediate_certificates.iter().enumerate() {
            chain.push(
                Certificate::from_der(der, &format!("intermediate certificate {i}"))
                    .map_err(|e| bad(e.to_string()))?,
            );
        }
        verify_chain(&chain, &anchors, self.clock.now())
            .map_err(|e| bad(format!("the leaf does not chain to a trust anchor: {e}")))?;
        let certified_key = self
            .key
            .certified_key(chain.iter().map(|c| c.der().to_vec()).collect())?;
        Ok(Credentials {
            identity: self.config.identity.clone(),
            key: self.key.clone(),
            certified_key: Arc::new(certified_key),
            chain,
            anchors,
        })
    }

    /// Gets a certificate and keeps it fresh, forever: refreshes at
    /// [`REFRESH_AT`] of the remaining lifetime (with jitter, within
    /// [`MIN_REFRESH`]..[`MAX_REFRESH`]), or at once when the trust anchors
    /// change so that the certificate no longer chains to any of them;
    /// retries failures with backoff, and keeps the current certificate
    /// until it expires. `tx` holds the current certificate, `None` before
    /// the first and after expiry.
    pub async fn run(mut self, tx: watch::Sender<Option<Arc<Credentials>>>) {
        let mut failures: u32 = 0;
        let mut seen = AnchorsSeen::default();
        loop {
            match self.certify_with_anchors().await {
                Ok((credentials, anchors_pem)) => {
                    failures = 0;
                    let now = self.clock.now();
                    tracing::info!(
                        identity = %credentials.identity(),
                        not_after = %credentials.not_after(),
                        "certified"
                    );
                    self.metrics.refreshed(credentials.not_after());
                    let delay = refresh_delay(now, credentials.not_after(), jitter());
                    let credentials = Arc::new(credentials);
                    tx.send_replace(Some(credentials.clone()));
                    // The file as this certificate was checked against it:
                    // only a change from here is looked at.
                    seen.0 = Some(Ok(anchors_pem));
                    if self
                        .wait_for_refresh(delay, credentials.chain(), &mut seen)
                        .await
                    {
                        self.metrics.anchors_changed();
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.metrics.failed(error.code());
                    let now = self.clock.now();
                    let expired = tx.borrow().as_ref().is_some_and(|c| c.not_after() <= now);
                    if expired {
                        tracing::error!(%error, "the certificate expired and cannot be refreshed");
                        tx.send_replace(None);
                        self.metrics.expired();
                    } else {
                        tracing::warn!(%error, failures, "cannot refresh the certificate; will retry");
                    }
                    tokio::time::sleep(retry_delay(failures, jitter())).await;
                }
            }
        }
    }

    /// Sleeps `delay`, reading the trust-anchors file every
    /// [`ANCHORS_POLL`] meanwhile. Returns `true`, early, when a change of
    /// the file leaves `chain` with no anchor; `false` when the refresh is
    /// simply due.
    async fn wait_for_refresh(
        &self,
        delay: Duration,
        chain: &[Certificate],
        seen: &mut AnchorsSeen,
    ) -> bool {
        let refresh = tokio::time::sleep(delay);
        tokio::pin!(refresh);
        loop {
            tokio::select! {
                () = &mut refresh => return false,
                () = tokio::time::sleep(ANCHORS_POLL) => {
                    if self.anchors_dropped(chain, seen).await {
                        return true;
                    }
                }
            }
        }
    }

    /// Reads the trust-anchors file; when its contents (or the error
    /// reading it) differ from what was `seen` last, decides by
    /// [`anchors_verdict`] and logs the outcome, once per distinct content.
    /// `true` when the certificate must be replaced now.
    async fn anchors_dropped(&self, chain: &[Certificate], seen: &mut AnchorsSeen) -> bool {
        let path = &self.config.trust_anchors;
        let read = tokio::fs::read(path).await.map_err(|e| e.to_string());
        if seen.0.as_ref() == Some(&read) {
            return false;
        }
        let verdict = match &read {
            Ok(pem) => anchors_verdict(chain, pem, &path.display().to_string(), self.clock.now()),
            Err(reason) => AnchorsVerdict::Unusable(format!("cannot read the file: {reason}")),
        };
        seen.0 = Some(read);
        match verdict {
            AnchorsVerdict::Keep => {
                tracing::info!(
                    path = %path.display(),
                    "the trust anchors changed; the certificate still chains to them"
                );
                false
            }
            AnchorsVerdict::Unusable(reason) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "the trust anchors changed but cannot be used; keeping the certificate"
                );
                false
            }
            AnchorsVerdict::Recertify(error) => {
                tracing::info!(
                    path = %path.display(),
                    %error,
                    "the trust anchors changed and the certificate no longer chains to them; re-certifying"
                );
                true
            }
        }
    }
}

/// The trust-anchors file as last read between refreshes: its bytes, or
/// why it could not be read. An unchanged file costs a read and a
/// comparison, and each distinct content is judged and logged once.
#[derive(Debug, Default)]
struct AnchorsSeen(Option<Result<Vec<u8>, String>>);

/// What a changed trust-anchors file means for the certificate held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnchorsVerdict {
    /// The chain still verifies against an anchor in the file (an anchor
    /// added beside the old one, say): the certificate stays.
    Keep,
    /// No anchor in the file verifies the chain (the old anchor was
    /// removed): certify again now rather than at the refresh time.
    Recertify(ChainError),
    /// The file holds no usable anchor. The certificate stays: a `Certify`
    /// would fail on the same file, and the proxy's peers still hold the
    /// anchors they had.
    Unusable(String),
}

/// Judges the trust anchors `anchors_pem` (the file named `what`) for the
/// certificate `chain` (leaf first, then intermediates) at `now`, with the
/// check every `Certify` answer passes ([`verify_chain`]).
pub fn anchors_verdict(
    chain: &[Certificate],
    anchors_pem: &[u8],
    what: &str,
    now: DateTime<Utc>,
) -> AnchorsVerdict {
    let anchors = match Certificate::parse_pem_bundle(anchors_pem, what) {
        Ok(anchors) if anchors.is_empty() => {
            return AnchorsVerdict::Unusable("no certificate in the file".into());
        }
        Ok(anchors) => anchors,
        Err(error) => return AnchorsVerdict::Unusable(error.to_string()),
    };
    match verify_chain(chain, &anchors, now) {
        Ok(_) => AnchorsVerdict::Keep,
        Err(error) => AnchorsVerdict::Recertify(error),
    }
}

async fn read_token(path: &Path) -> Result<Vec<u8>, AgentError> {
    let mut token = tokio::fs::read(path)
        .await
        .map_err(|source| AgentError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
    // `lanyard token create > FILE` ends the file with a newline.
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    if token.is_empty() {
        return Err(AgentError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// When to refresh a certificate valid until `not_after`, at `now`:
/// [`REFRESH_AT`] of the remaining lifetime, less up to [`REFRESH_JITTER`]
/// of it (`jitter` in `[0, 1)`), never sooner than [`MIN_REFRESH`] nor
/// later than [`MAX_REFRESH`].
pub fn refresh_delay(now: DateTime<Utc>, not_after: DateTime<Utc>, jitter: f64) -> Duration {
    let remaining = (not_after - now).max(TimeDelta::zero());
    let remaining = remaining.to_std().unwrap_or(Duration::ZERO);
    let share = REFRESH_AT * (1.0 - REFRESH_JITTER * jitter.clamp(0.0, 1.0));
    remaining.mul_f64(share).clamp(MIN_REFRESH, MAX_REFRESH)
}

/// The agent's retry schedule, the one shared [`Backoff`]: from
/// [`RETRY_BASE`], doubling, up to [`RETRY_MAX`].
pub fn retry_backoff() -> Backoff {
    Backoff::new(RETRY_BASE, RETRY_MAX)
}

/// How long to wait after the `failures`-th failure in a row: the
/// [`retry_backoff`] delay for that count (a count of none waits as the
/// first failure does), then between half and all of that (`jitter` in
/// `[0, 1)`).
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let ceiling = retry_backoff().delay_after(failures.max(1));
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A uniform value in `[0, 1)` from the system random source.
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    // Jitter only spreads load; if the random source fails, none is fine.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_fresh_24h_certificate_is_refreshed_after_about_17_hours() {
        let day = t0() + TimeDelta::hours(24);
        assert_eq!(
            refresh_delay(t0(), day, 0.0),
            Duration::from_secs(24 * 3600).mul_f64(0.7)
        );
        let jittered = refresh_delay(t0(), day, 0.999);
        assert!(jittered < Duration::from_secs(16 * 3600), "{jittered:?}");
        assert!(jittered > Duration::from_secs(15 * 3600), "{jittered:?}");
    }

    #[test]
    fn refreshes_are_at_least_10s_and_at_most_24h_apart() {
        assert_eq!(refresh_delay(t0(), t0(), 0.5), MIN_REFRESH);
        assert_eq!(
            refresh_delay(t0(), t0() - TimeDelta::hours(1), 0.5),
            MIN_REFRESH
        );
        assert_eq!(
            refresh_delay(t0(), t0() + TimeDelta::days(365), 0.0),
            MAX_REFRESH
        );
    }

    #[test]
    fn retries_double_up_to_a_minute() {
        assert_eq!(retry_delay(1, 0.999_999), RETRY_BASE.mul_f64(0.999_999_5));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(100, 0.0), RETRY_MAX / 2);
        assert!(retry_delay(u32::MAX, 0.999) <= RETRY_MAX);
    }

    #[test]
    fn retry_delays_follow_the_shared_backoff_schedule() {
        let cases = [
            ("the first failure waits the base", 1, 1),
            ("a count of none waits as the first failure does", 0, 1),
            ("the second failure doubles it", 2, 2),
            ("the sixth is still under the cap", 6, 32),
            ("the seventh is capped at a minute", 7, 60),
            (
                "a count that would overflow a shift is capped too",
                u32::MAX,
                60,
            ),
        ];
        for (case, failures, ceiling_s) in cases {
            let ceiling = Duration::from_secs(ceiling_s);
            assert_eq!(retry_delay(failures, 1.0), ceiling, "{case}");
            assert_eq!(retry_delay(failures, 0.0), ceiling / 2, "{case}");
            if failures > 0 {
                assert_eq!(retry_backoff().delay_after(failures), ceiling, "{case}");
            }
        }
        // The stateful form of the same Backoff walks the same schedule.
        let mut backoff = retry_backoff();
        for failures in 1..=10 {
            assert_eq!(
                backoff.next_delay(),
                retry_delay(failures, 1.0),
                "{failures}"
            );
        }
    }

    /// A trust anchor, and a leaf chain under it (leaf, identity issuer),
    /// made at `t0()`.
    fn anchor_and_chain() -> (lanyard_issuer::TrustAnchor, Vec<Certificate>) {
        use lanyard_crds::identity::IdentityDomain;
        use lanyard_issuer::{KeyAlgorithm, TrustAnchor};
        let domain = IdentityDomain::linkerd_default();
        let anchor =
            TrustAnchor::generate(&domain, TimeDelta::days(10), KeyAlgorithm::EcdsaP256, t0())
                .unwrap();
        let (issuer, _) = anchor
            .issue_identity_issuer(&domain, TimeDelta::days(5), KeyAlgorithm::EcdsaP256, t0())
            .unwrap();
        let identity = Identity::new("web", "emojivoto", domain).unwrap();
        let csr = WorkloadKey::generate()
            .unwrap()
            .certificate_signing_request(&identity)
            .unwrap();
        let leaf = issuer
            .issue(&csr, &identity, TimeDelta::hours(24), t0())
            .unwrap();
        let chain = std::iter::once(&leaf.leaf_der)
            .chain(&leaf.chain_der)
            .map(|der| Certificate::from_der(der, "test certificate").unwrap())
            .collect();
        (anchor, chain)
    }

    #[test]
    fn a_changed_anchors_file_recertifies_only_when_the_chain_lost_its_anchor() {
        let (old, chain) = anchor_and_chain();
        let (new, _) = anchor_and_chain();
        let old_pem = old.certificate().to_pem();
        let new_pem = new.certificate().to_pem();
        let now = t0() + TimeDelta::hours(1);
        // What the agent does with each file: keeps the certificate as it
        // is (`Keep`), keeps it and logs the file (`Unusable`), or
        // certifies again now (`Recertify`).
        let cases: [(&str, String, &str); 7] = [
            (
                "an unchanged anchor keeps the certificate",
                old_pem.clone(),
                "Keep",
            ),
            (
                "an added anchor beside the old one keeps the certificate",
                format!("{old_pem}{new_pem}"),
                "Keep",
            ),
            (
                "an added anchor before the old one keeps the certificate",
                format!("{new_pem}{old_pem}"),
                "Keep",
            ),
            (
                "the old anchor removed re-certifies",
                new_pem.clone(),
                "Recertify",
            ),
            (
                "a garbage file keeps the certificate",
                "not pem\n".into(),
                "Unusable",
            ),
            (
                "an empty file keeps the certificate",
                String::new(),
                "Unusable",
            ),
            (
                "a file holding a key instead keeps the certificate",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                "Unusable",
            ),
        ];
        for (case, pem, expected) in cases {
            let verdict = anchors_verdict(&chain, pem.as_bytes(), "ca.crt", now);
            let kind = match &verdict {
                AnchorsVerdict::Keep => "Keep",
                AnchorsVerdict::Recertify(_) => "Recertify",
                AnchorsVerdict::Unusable(_) => "Unusable",
            };
            assert_eq!(kind, expected, "{case}: {verdict:?}");
        }
    }

    proptest! {
        #[test]
        fn refresh_delays_stay_in_bounds_and_before_expiry_when_they_can(
            remaining_s in -100_000i64..10_000_000,
            jitter in 0.0f64..1.0,
        ) {
            let not_after = t0() + TimeDelta::seconds(remaining_s);
            let delay = refresh_delay(t0(), not_after, jitter);
            prop_assert!(delay >= MIN_REFRESH && delay <= MAX_REFRESH);
            if remaining_s > 15 {
                prop_assert!(delay.as_secs_f64() <= remaining_s as f64 * REFRESH_AT.max(10.0 / remaining_s as f64));
            }
        }

        #[test]
        fn jitter_is_in_the_unit_interval(_ in 0..100u8) {
            let j = jitter();
            prop_assert!((0.0..1.0).contains(&j));
        }
    }
}
