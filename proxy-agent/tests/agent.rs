//! The agent against the identity service over loopback TLS: it gets a
//! leaf for exactly its identity, re-reads its token, refuses what it
//! cannot use, keeps working while the issuer is replaced under load, and
//! follows a trust-anchor rotation to its end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, ManualClock, SystemClock};
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::reload::IssuerReloader;
use lanyard_identity::serve::{ServeOptions, serve, watch_files};
use lanyard_identity::service::RateLimit;
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{IdentityIssuer, KeyAlgorithm, SigningKey, TrustAnchor, verify_chain};
use lanyard_proxy::identity::{Agent, AgentConfig, AgentError};
use lanyard_proxy::metrics::AgentMetrics;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

mod common;

use common::until;

struct Service {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    anchor: TrustAnchor,
    tokens: Arc<TokenKey>,
    registry: Arc<Registry>,
}

fn domain() -> IdentityDomain {
    IdentityDomain::linkerd_default()
}

fn new_issuer(anchor: &TrustAnchor) -> IdentityIssuer {
    anchor
        .issue_identity_issuer(
            &domain(),
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            SystemClock.now() - TimeDelta::minutes(1),
        )
        .unwrap()
        .0
}

/// Writes the issuer Secret's files the way a Secret volume changes: all
/// at once.
fn write_issuer(
    dir: &Path,
    anchor: &TrustAnchor,
    issuer: &IdentityIssuer,
    key: Option<&SigningKey>,
) {
    let key = key.unwrap_or(issuer.key()).to_pkcs8_pem();
    lanyard_files::volume::write(
        &dir.join("issuer"),
        &[
            ("tls.crt", issuer.certificate().to_pem().as_bytes(), 0o644),
            ("tls.key", key.as_bytes(), 0o600),
            ("ca.crt", anchor.certificate().to_pem().as_bytes(), 0o644),
        ],
        false,
    )
    .unwrap();
    // The agents' anchors, replaced atomically as a mounted bundle is.
    lanyard_files::write_atomic(
        &dir.join("ca.crt"),
        anchor.certificate().to_pem().as_bytes(),
        lanyard_files::FileMode::Public,
    )
    .unwrap();
}

/// The identity service over TLS, reloading its issuer from files.
async fn start(rate_limit: RateLimit) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let anchor = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        SystemClock.now() - TimeDelta::hours(1),
    )
    .unwrap();
    write_issuer(dir.path(), &anchor, &new_issuer(&anchor), None);
    let metrics = IdentityMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let slot = Arc::new(ArcSwapOption::empty());
    tokio::spawn(watch_files(
        IssuerReloader::new(dir.path().join("issuer"), slot.clone()).with_metrics(metrics.clone()),
        SystemClock,
    ));
    let tokens = Arc::new(TokenKey::generate().unwrap());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            issuer: slot,
            service_identity: Identity::new("linkerd-identity", "linkerd", domain()).unwrap(),
            metrics,
            rate_limit,
            insecure_plaintext: false,
            limits: Default::default(),
            leaf_lifetime: lanyard_issuer::DEFAULT_LEAF_LIFETIME,
        },
        tokens.clone(),
        SystemClock,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        lanyard_runtime::Shutdown::new(),
    ));
    Service {
        addr: ready_rx.await.unwrap(),
        dir,
        anchor,
        tokens,
        registry: Arc::new(registry),
    }
}

impl Service {
    /// An agent for `sa.ns` whose token file holds a token for
    /// `token_for` (namespace, service account).
    fn agent(&self, sa: &str, ns: &str, token_for: (&str, &str)) -> Agent<SystemClock> {
        self.agent_at(SystemClock, sa, ns, token_for)
    }

    /// [`Service::agent`], with the agent's clock given.
    fn agent_at<C: Clock + Clone + 'static>(
        &self,
        clock: C,
        sa: &str,
        ns: &str,
        token_for: (&str, &str),
    ) -> Agent<C> {
        Agent::new(self.config(sa, ns, token_for), clock, AgentMetrics::new()).unwrap()
    }

    /// The configuration of an agent for `sa.ns`, its token file written
    /// with a token for `token_for` (namespace, service account).
    fn config(&self, sa: &str, ns: &str, token_for: (&str, &str)) -> AgentConfig {
        let token_file = self.dir.path().join(format!("{ns}-{sa}.token"));
        let token = self
            .tokens
            .create(
                token_for.0,
                token_for.1,
                TimeDelta::hours(1),
                SystemClock.now(),
            )
            .unwrap();
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        AgentConfig {
            identity: Identity::new(sa, ns, domain()).unwrap(),
            service_addr: self.addr.to_string(),
            service_identity:
                "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local".into(),
            trust_anchors: self.dir.path().join("ca.crt"),
            token_file,
            insecure_plaintext: false,
            timeout: Duration::from_secs(5),
        }
    }

    fn metric(&self, name_and_labels: &str) -> u64 {
        metric(&self.registry, name_and_labels)
    }
}

/// The value of the series `name_and_labels` in `registry`; 0 when absent.
fn metric(registry: &Registry, name_and_labels: &str) -> u64 {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The first certificate: the service's own certificate appears within a
/// reload interval, so the first calls may find it not ready yet.
async fn first_certify<C: Clock + Clone + 'static>(
    agent: &mut Agent<C>,
) -> lanyard_proxy::identity::Credentials {
    let mut last = None;
    for _ in 0..50 {
        match agent.certify().await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no certificate: {last:?}");
}

/// The agent checks the identity service's certificate at its own clock,
/// not the system's: an agent whose clock has passed the service
/// certificate's notAfter refuses the handshake, with no sleeping.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_verifies_the_identity_service_at_its_injected_clock() {
    let service = start(RateLimit::default()).await;
    let now = SystemClock.now();
    let clock = Arc::new(ManualClock::new(now));
    let mut agent = service.agent_at(clock.clone(), "web", "emojivoto", ("emojivoto", "web"));
    first_certify(&mut agent).await;

    // The service's own certificate lives 24 hours from about now.
    let late = Arc::new(ManualClock::new(now + TimeDelta::hours(25)));
    let mut agent = service.agent_at(late.clone(), "web", "emojivoto", ("emojivoto", "web"));
    let error = agent.certify().await.unwrap_err();
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        matches!(error, AgentError::Refused { .. }) && chain.contains("xpired"),
        "{chain}"
    );

    // Back at the right time, the same agent is certified.
    late.set(now);
    first_certify(&mut agent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_gets_a_leaf_for_exactly_its_identity_and_writes_it_atomically() {
    let service = start(RateLimit::default()).await;
    let mut agent = service.agent("web", "emojivoto", ("emojivoto", "web"));
    let credentials = first_certify(&mut agent).await;
    assert_eq!(
        credentials.identity().as_str(),
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    );
    let profile = credentials.chain()[0].profile();
    assert_eq!(
        profile.dns_names,
        ["web.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
    );
    assert_eq!(profile.uris, ["spiffe://cluster.local/ns/emojivoto/sa/web"]);
    verify_chain(
        credentials.chain(),
        std::slice::from_ref(service.anchor.certificate()),
        SystemClock.now(),
    )
    .unwrap();
    let lifetime = credentials.not_after() - credentials.chain()[0].not_before();
    assert!(
        lifetime <= TimeDelta::hours(24) + TimeDelta::minutes(1),
        "{lifetime}"
    );
    assert_eq!(credentials.certified_key().cert.len(), 2, "leaf and issuer");

    // Files for apps that read them: the key is 0600, all three agree.
    let out = service.dir.path().join("out");
    credentials.write_files(&out).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key =
        SigningKey::from_pem(&std::fs::read(out.join("tls.key")).unwrap(), "tls.key").unwrap();
    let chain = lanyard_issuer::Certificate::parse_pem_bundle(
        &std::fs::read(out.join("tls.crt")).unwrap(),
        "tls.crt",
    )
    .unwrap();
    assert!(key.matches_public_key(chain[0].public_key_raw()));
    assert_eq!(
        std::fs::read(out.join("ca.crt")).unwrap(),
        service.anchor.certificate().to_pem().as_bytes()
    );

    // A second refresh certifies the same in-process key again.
    let again = agent.certify().await.unwrap();
    assert_eq!(again.chain()[0].public_key_raw(), chain[0].public_key_raw());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_typed_and_the_token_file_is_read_again_each_time() {
    let service = start(RateLimit::default()).await;
    // A token for another workload: the service says PERMISSION_DENIED.
    let mut agent = service.agent("sa-b", "ns-b", ("ns-a", "sa-a"));
    let mut refused = None;
    for _ in 0..50 {
        match agent.certify().await {
            Err(AgentError::Refused { code, .. }) if code == tonic::Code::PermissionDenied => {
                refused = Some(code);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(c) => panic!("a token for ns-a/sa-a got {c:?}"),
        }
    }
    assert_eq!(refused, Some(tonic::Code::PermissionDenied));

    // The token file is fixed while the agent runs: the next call uses it.
    let token_file = service.dir.path().join("ns-b-sa-b.token");
    let right = service
        .tokens
        .create("ns-b", "sa-b", TimeDelta::hours(1), SystemClock.now())
        .unwrap();
    std::fs::write(&token_file, right).unwrap();
    agent.certify().await.unwrap();

    // A forged token: UNAUTHENTICATED. An empty or missing file: a local
    // error naming the file, nothing sent.
    std::fs::write(&token_file, "lanyard.v1.ns-b.sa-b.99999999999.00").unwrap();
    assert!(matches!(
        agent.certify().await,
        Err(AgentError::Refused {
            code: tonic::Code::Unauthenticated,
            ..
        })
    ));
    std::fs::write(&token_file, "\n").unwrap();
    let empty = agent.certify().await.unwrap_err();
    assert!(matches!(empty, AgentError::EmptyToken { .. }), "{empty}");
    std::fs::remove_file(&token_file).unwrap();
    let missing = agent.certify().await.unwrap_err();
    assert!(missing.to_string().contains("ns-b-sa-b.token"), "{missing}");

    // Anchors that do not include the service's: TLS refuses the service.
    let stranger = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(10),
        KeyAlgorithm::EcdsaP256,
        SystemClock.now(),
    )
    .unwrap();
    let mut agent = service.agent("web", "emojivoto", ("emojivoto", "web"));
    first_certify(&mut agent).await;
    std::fs::write(
        service.dir.path().join("ca.crt"),
        stranger.certificate().to_pem(),
    )
    .unwrap();
    let untrusted = agent.certify().await.unwrap_err();
    assert!(
        matches!(
            untrusted,
            AgentError::Refused {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{untrusted}"
    );
    std::fs::write(service.dir.path().join("ca.crt"), "not pem").unwrap();
    let garbage = agent.certify().await.unwrap_err();
    assert!(
        matches!(garbage, AgentError::TrustAnchors { .. }),
        "{garbage}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_keep_getting_certificates_while_the_issuer_is_replaced_twice() {
    // No rate limit here: the agents call in a tight loop on purpose.
    let service = Arc::new(
        start(RateLimit {
            burst: 1_000_000,
            interval: TimeDelta::milliseconds(1),
        })
        .await,
    );
    let mut agents = Vec::new();
    for i in 0..4 {
        let mut agent = service.agent(&format!("sa-{i}"), "load", ("load", &format!("sa-{i}")));
        first_certify(&mut agent).await;
        agents.push(agent);
    }
    // Read once the agents are certified, so the first load has happened.
    let first = service.metric("lanyard_identity_issuer_reloads_total{result=\"loaded\"}");
    assert_eq!(first, 1);

    // Which issuer signed each leaf, and when relative to the swap.
    let expected: Arc<ArcSwapOption<Vec<u8>>> = Arc::new(ArcSwapOption::empty());
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut agent in agents {
        let (stop, calls, failures, stale, expected) = (
            stop.clone(),
            calls.clone(),
            failures.clone(),
            stale.clone(),
            expected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // What must sign this call, if a swap was observed before it.
                let must = expected.load_full();
                match agent.certify().await {
                    Ok(credentials) => {
                        let issuer = credentials.chain()[1].der().to_vec();
                        if must.is_some_and(|m| *m != issuer) {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        eprintln!("certify failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_for = |name: &'static str, value: u64| {
        let service = service.clone();
        async move { until(name, || service.metric(name) >= value).await }
    };
    // Each step is taken under load: a few more calls must have been made
    // since the last one.
    let called = |what: &'static str| {
        let calls = calls.clone();
        let from = calls.load(Ordering::Relaxed);
        async move { until(what, || calls.load(Ordering::Relaxed) >= from + 8).await }
    };
    called("calls before the swap").await;

    // A valid new issuer under the same anchor.
    let second = new_issuer(&service.anchor);
    write_issuer(service.dir.path(), &service.anchor, &second, None);
    wait_for(
        "lanyard_identity_issuer_reloads_total{result=\"loaded\"}",
        2,
    )
    .await;
    expected.store(Some(Arc::new(second.certificate().der().to_vec())));
    called("calls continued after the swap").await;

    // A new certificate with a key that does not match: refused, reported,
    // and the second issuer keeps signing.
    let third = new_issuer(&service.anchor);
    let wrong = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    write_issuer(service.dir.path(), &service.anchor, &third, Some(&wrong));
    wait_for(
        "lanyard_identity_issuer_reloads_total{result=\"refused\"}",
        1,
    )
    .await;
    called("calls continued after the refusal").await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let total = calls.load(Ordering::Relaxed);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {total} calls");
    assert_eq!(
        stale.load(Ordering::Relaxed),
        0,
        "leaves signed by the old issuer after the swap"
    );
    assert_eq!(service.metric("lanyard_identity_issuer_refused "), 1);
    assert_eq!(
        service.metric("lanyard_identity_issuer_reloads_total{result=\"loaded\"}"),
        2
    );
    assert_eq!(
        service.metric("lanyard_identity_certify_total{code=\"OK\"}"),
        total + 4
    );
}

/// A trust-anchor rotation as the agent sees it: its anchors file first
/// gains the new anchor beside the old (and, say, is briefly garbage),
/// which changes nothing; then the issuer is re-issued under the new anchor
/// and the old anchor leaves the file, and the running agent, whose next
/// refresh is hours away, certifies again at once under the new anchor.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_agent_recertifies_when_its_anchor_leaves_the_anchors_file() {
    let service = start(RateLimit::default()).await;
    let metrics = AgentMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let agent = Agent::new(
        service.config("web", "emojivoto", ("emojivoto", "web")),
        SystemClock,
        metrics,
    )
    .unwrap();
    let (tx, rx) = watch::channel(None);
    let running = tokio::spawn(agent.run(tx));
    until("the first certificate", || rx.borrow().is_some()).await;
    let first = rx.borrow().clone().unwrap();
    let old = service.anchor.certificate().clone();
    verify_chain(first.chain(), std::slice::from_ref(&old), SystemClock.now()).unwrap();

    // The new anchor beside the old one, then a garbage file: the agent
    // keeps its certificate. It looks every second; a look it missed would
    // only make this part prove less, never fail.
    let next = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        SystemClock.now() - TimeDelta::hours(1),
    )
    .unwrap();
    let anchors_file = service.dir.path().join("ca.crt");
    let both = format!("{}{}", old.to_pem(), next.certificate().to_pem());
    for contents in [both.as_str(), "not pem\n"] {
        lanyard_files::write_atomic(
            &anchors_file,
            contents.as_bytes(),
            lanyard_files::FileMode::Public,
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    let held = rx.borrow().clone().unwrap();
    assert!(Arc::ptr_eq(&held, &first), "the certificate was replaced");
    assert_eq!(
        metric(&registry, "lanyard_proxy_identity_refreshes_total "),
        1
    );
    assert_eq!(
        metric(&registry, "lanyard_proxy_identity_anchor_refreshes_total "),
        0
    );

    // The issuer under the new anchor, and the anchors file holding only
    // the new anchor, each replaced atomically.
    write_issuer(service.dir.path(), &next, &new_issuer(&next), None);
    let new_anchor = std::slice::from_ref(next.certificate());
    until("a certificate under the new anchor", || {
        rx.borrow()
            .as_ref()
            .is_some_and(|c| verify_chain(c.chain(), new_anchor, SystemClock.now()).is_ok())
    })
    .await;
    let second = rx.borrow().clone().unwrap();
    assert!(
        verify_chain(
            second.chain(),
            std::slice::from_ref(&old),
            SystemClock.now()
        )
        .is_err(),
        "the new certificate still chains to the removed anchor"
    );
    assert_eq!(second.anchors(), new_anchor);
    assert_eq!(
        metric(&registry, "lanyard_proxy_identity_anchor_refreshes_total "),
        1
    );
    running.abort();
}
