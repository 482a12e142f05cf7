//! The `lanyard-proxy` binary in `--agent-only` mode against the identity
//! service over loopback TLS: not ready until the first certificate, then
//! files written atomically, metrics, and clear refusals of bad flags.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_issuer::metrics::IdentityMetrics;
use lanyard_issuer::serve::{ServeOptions, serve};
use lanyard_issuer::token::TokenKey;
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey, TrustAnchor, verify_chain};

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-proxy");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_only_is_not_ready_until_its_first_certificate_then_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let domain = IdentityDomain::linkerd_default();
    let now = SystemClock.now() - TimeDelta::minutes(1);
    let anchor =
        TrustAnchor::generate(&domain, TimeDelta::hours(100), KeyAlgorithm::EcdsaP256, now)
            .unwrap();
    let (issuer, _) = anchor
        .issue_identity_issuer(&domain, TimeDelta::hours(50), KeyAlgorithm::EcdsaP256, now)
        .unwrap();
    std::fs::write(dir.path().join("ca.crt"), anchor.certificate().to_pem()).unwrap();
    let tokens = Arc::new(TokenKey::generate().unwrap());
    let token = tokens
        .create("emojivoto", "web", TimeDelta::hours(1), SystemClock.now())
        .unwrap();
    std::fs::write(dir.path().join("token"), token).unwrap();

    // The service starts with no issuer: every call is UNAVAILABLE.
    let slot = Arc::new(ArcSwapOption::empty());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            issuer: slot.clone(),
            service_identity: Identity::new("linkerd-identity", "linkerd", domain.clone()).unwrap(),
            metrics: IdentityMetrics::new(),
            rate_limit: Default::default(),
            insecure_plaintext: false,
        },
        tokens,
        SystemClock,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        std::future::pending(),
    ));
    let service = ready_rx.await.unwrap();

    let out = dir.path().join("out");
    let mut child = Command::new(BIN)
        .args(["--agent-only", "--out-dir"])
        .arg(&out)
        .args([
            "--identity",
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            "--identity-addr",
            &service.to_string(),
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--trust-anchors")
        .arg(dir.path().join("ca.crt"))
        .env("LANYARD_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let _child = Killed(child);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("lanyard-proxy: {line}");
            let _ = lines_tx.send(line);
        }
    });
    let admin = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the admin address on stderr");
        if let Some(rest) = line.split("admin on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };

    // No certificate yet: not ready, no files, failures counted.
    let (status, body) = http_get(&admin, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(!out.join("tls.crt").exists());
    eventually("a counted failure", || {
        http_get(&admin, "/metrics")
            .1
            .contains("lanyard_proxy_identity_refresh_failures_total{code=")
    });
    assert_eq!(http_get(&admin, "/live").0, 200);

    // The issuer arrives: the agent's next retry succeeds.
    slot.store(Some(Arc::new(issuer)));
    eventually("readiness", || http_get(&admin, "/ready").0 == 200);
    assert!(
        out.join("ca.crt").exists(),
        "ready means the files are there"
    );

    let key =
        SigningKey::from_pem(&std::fs::read(out.join("tls.key")).unwrap(), "tls.key").unwrap();
    let chain =
        Certificate::parse_pem_bundle(&std::fs::read(out.join("tls.crt")).unwrap(), "tls.crt")
            .unwrap();
    let anchors =
        Certificate::parse_pem_bundle(&std::fs::read(out.join("ca.crt")).unwrap(), "ca.crt")
            .unwrap();
    assert!(key.matches_public_key(chain[0].public_key_raw()));
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
    verify_chain(&chain, &anchors, SystemClock.now()).unwrap();
    assert_eq!(
        chain[0].profile().dns_names,
        ["web.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
    );
    assert_eq!(mode(&out.join("tls.key")), 0o600);
    assert_eq!(mode(&out.join("tls.crt")), 0o644);
    assert_eq!(mode(&out), 0o700);
    assert!(
        std::fs::symlink_metadata(out.join("tls.key"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "keys link through ..data, as in a Secret volume"
    );

    let metrics = http_get(&admin, "/metrics").1;
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("identity_cert_expiration_timestamp_seconds "))
        .expect("the certificate's expiry");
    assert_eq!(
        expiry.trim().parse::<i64>().unwrap(),
        chain[0].not_after().timestamp(),
        "{metrics}"
    );
    assert!(
        metrics.contains("lanyard_proxy_identity_refreshes_total 1"),
        "{metrics}"
    );
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = [
        "--token-file",
        "/nonexistent/token",
        "--trust-anchors",
        "/nonexistent/ca.crt",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut all: Vec<&'static str> = base.to_vec();
        all.extend_from_slice(extra);
        all
    };
    let err = run(&with(&["--identity", "web.emojivoto"]));
    assert!(
        err.contains("<serviceaccount>.<namespace>.serviceaccount"),
        "{err}"
    );
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--outbound",
        "127.0.0.1:0=nowhere",
    ]));
    assert!(err.contains("expected LISTEN=TARGET,IDENTITY"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--default-policy",
        "allow-all",
    ]));
    assert!(err.contains("cluster-authenticated"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--agent-only",
    ]));
    assert!(err.contains("--out-dir"), "{err}");
    let err = run(&with(&[
        "--identity",
        "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "--agent-only",
        "--out-dir",
        "/tmp/x",
        "--identity-timeout",
        "0s",
    ]));
    assert!(err.contains("not a positive duration"), "{err}");
}
