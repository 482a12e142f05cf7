//! Lanyard's side: the fixture CA, the identity service started as
//! `lanyard identity` runs it, its clients, and what one call's parts cost
//! on one thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, Utc};
use hyper::body::Bytes;
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
use tokio::runtime::Runtime;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::*;

/// The benchmark's CA, identities and tokens.
pub(crate) struct Fixture {
    pub(crate) domain: IdentityDomain,
    pub(crate) anchor: Certificate,
    pub(crate) issuer: Arc<IdentityIssuer>,
    pub(crate) token_key: Arc<TokenKey>,
    pub(crate) now: DateTime<Utc>,
    /// The next unused service account number: no identity is used twice.
    pub(crate) next_identity: usize,
}

impl Fixture {
    pub(crate) fn new() -> Self {
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

    pub(crate) fn take_identities(&mut self, n: usize) -> usize {
        let first = self.next_identity;
        self.next_identity += n;
        first
    }

    pub(crate) fn csr_for(&self, index: usize) -> (Identity, String, Vec<u8>) {
        let service_account = format!("sa-{index}");
        let identity = Identity::new(&service_account, NAMESPACE, self.domain.clone())
            .expect("a benchmark identity");
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).expect("a P-256 key");
        let csr = key.certificate_signing_request(&identity).expect("a CSR");
        (identity, service_account, csr)
    }

    /// `n` Certify requests, each for a new identity with its own token
    /// and a CSR for a fresh P-256 key.
    pub(crate) fn lanyard_requests(&mut self, n: usize) -> Vec<CertifyRequest> {
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
    pub(crate) fn cfssl_requests(&mut self, n: usize) -> Vec<Bytes> {
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
    pub(crate) fn service_identity(&self) -> Identity {
        Identity::new("linkerd-identity", "linkerd", self.domain.clone())
            .expect("the service identity")
    }

    /// cfssl's serving certificate (with its chain) and key, for the
    /// service's name, signed by the issuer. (Lanyard signs its own.)
    pub(crate) fn serving_identity(&self) -> ServingIdentity {
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
    pub(crate) fn verify_sample(&self, chain: &[Certificate]) -> Result<String, String> {
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
pub(crate) struct ServingIdentity {
    pub(crate) name: String,
    pub(crate) chain_der: Vec<Vec<u8>>,
    pub(crate) key_pem: String,
}

impl std::fmt::Debug for ServingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A running identity service, stopped when dropped.
pub(crate) struct LanyardServer {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: lanyard_runtime::Shutdown,
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
pub(crate) fn start_lanyard(
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
        leaf_lifetime: lanyard_issuer::DEFAULT_LEAF_LIFETIME,
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
pub(crate) async fn lanyard_channel(
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

pub(crate) async fn lanyard_clients(
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

pub(crate) fn check_lanyard(
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

pub(crate) async fn lanyard_call(
    mut client: IdentityClient<Channel>,
    request: CertifyRequest,
) -> (IdentityClient<Channel>, Result<(), String>) {
    let result = check_lanyard(client.certify(request).await).map(drop);
    (client, result)
}

/// What the service does per call, on one thread, without the network.
pub(crate) struct CallCosts {
    pub(crate) token: Duration,
    pub(crate) validate: Duration,
    pub(crate) issue: Duration,
}

/// One request's parts, for timing the service's work without the network.
pub(crate) struct Prepared {
    pub(crate) identity: Identity,
    pub(crate) token: Vec<u8>,
    pub(crate) csr: Vec<u8>,
}

/// Prepared requests for timing the service's own work on one thread,
/// without the network: the signing limit the rows are read against.
pub(crate) struct SigningLimit {
    requests: Vec<Prepared>,
}

impl SigningLimit {
    pub(crate) fn new(fixture: &mut Fixture) -> Self {
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
        SigningLimit { requests }
    }

    /// Mean CPU time per call of `op` over about `window`, cycling the
    /// prepared requests: this thread's run time, not the wall clock, so
    /// time the thread spent waiting for a CPU on a busy machine is not
    /// counted (the servers' figures are CPU time too). Wall time where
    /// there is no schedstat.
    fn per_call(&self, window: Duration, op: &dyn Fn(&Prepared)) -> Duration {
        let start = stopwatch();
        let cpu_start = thread_cpu_time();
        let mut calls = 0u32;
        while start.elapsed() < window {
            for request in &self.requests {
                op(request);
            }
            calls += self.requests.len() as u32;
        }
        match (cpu_start, thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a) / calls,
            _ => start.elapsed() / calls,
        }
    }

    /// CPU per `IdentityIssuer::issue` (CSR checks, then the signature)
    /// over about `window`. Taken beside each measured round, so the
    /// ratio's two sides see the same machine.
    pub(crate) fn issue(&self, fixture: &Fixture, window: Duration) -> Duration {
        self.per_call(window, &|Prepared { identity, csr, .. }| {
            std::hint::black_box(
                fixture
                    .issuer
                    .issue(csr, identity, TimeDelta::hours(24), fixture.now)
                    .expect("the issuer signs"),
            );
        })
    }

    /// Times `TokenKey::verify`, `validate_csr` and `IdentityIssuer::issue`,
    /// median of interleaved rounds.
    pub(crate) fn call_costs(&self, fixture: &Fixture, quick: bool) -> CallCosts {
        let (rounds, window) = if quick {
            (1, Duration::from_millis(5))
        } else {
            (5, Duration::from_millis(150))
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
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            samples[0].push(self.per_call(window, &token));
            samples[1].push(self.per_call(window, &validate));
            samples[2].push(self.issue(fixture, window));
        }
        let [token, validate, issue] = samples.map(|mut v| median(&mut v));
        CallCosts {
            token,
            validate,
            issue,
        }
    }
}

pub(crate) fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
