//! `lanyard up`, `apply`, `get certificates` and `crds` as a user runs them:
//! the real binary, real files, metrics over HTTP, `openssl verify`.

mod support;

use std::time::Duration;

use support::{Scratch, eventually, http_get, start_up};

const WEB: &str = "apiVersion: lanyard.dev/v1
kind: Issuer
metadata:
  name: identity
  namespace: linkerd
spec:
  ca:
    secretName: linkerd-identity-issuer
---
apiVersion: lanyard.dev/v1
kind: Certificate
metadata:
  name: web
  namespace: linkerd
spec:
  secretName: web-tls
  dnsNames: [web.linkerd.svc.cluster.local]
  duration: 24h
  usages: [server auth]
  issuerRef:
    name: identity
";

#[test]
fn up_sets_up_the_guide_issues_applied_certificates_and_serves_metrics() {
    let scratch = Scratch::new();
    let up = start_up(&scratch, &[]);

    eventually("the identity issuer", || {
        scratch.exists("state/secrets/linkerd/linkerd-identity-issuer/tls.crt")
    });
    scratch
        .openssl(&[
            "verify",
            "-CAfile",
            "state/secrets/lanyard/linkerd-trust-anchor/ca.crt",
            "state/secrets/linkerd/linkerd-identity-issuer/tls.crt",
        ])
        .success();
    let issuer = scratch.x509_text("state/secrets/linkerd/linkerd-identity-issuer/tls.crt");
    assert!(
        issuer.contains("CN = identity.linkerd.cluster.local"),
        "{issuer}"
    );
    assert!(issuer.contains("CA:TRUE"), "{issuer}");

    scratch.write("web.yaml", WEB);
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "web.yaml"])
        .success();
    eventually("the web certificate", || {
        scratch.exists("state/secrets/linkerd/web-tls/tls.crt")
    });
    scratch
        .openssl(&[
            "verify",
            "-CAfile",
            "state/secrets/linkerd/web-tls/ca.crt",
            "-untrusted",
            "state/secrets/linkerd/web-tls/tls.crt",
            "state/secrets/linkerd/web-tls/tls.crt",
        ])
        .success();
    let mode = std::fs::metadata(scratch.path("state/secrets/linkerd/web-tls/tls.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "keys are written 0600"
    );

    let mut table = String::new();
    eventually("both certificates ready in `get`", || {
        table = scratch
            .lanyard(&["get", "certificates", "--state-dir", "state"])
            .success()
            .stdout;
        table.lines().filter(|l| l.contains("True")).count() == 2
    });
    assert!(table.starts_with("NAMESPACE   NAME"), "{table}");
    assert!(table.contains("linkerd-identity-issuer"), "{table}");

    let metrics = http_get(&up.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for needle in [
        "lanyard_certificate_expiration_timestamp_seconds{name=\"web\",namespace=\"linkerd\",issuer_name=\"identity\",issuer_kind=\"Issuer\",issuer_group=\"lanyard.dev\"}",
        "lanyard_certificate_ready_status{name=\"web\",namespace=\"linkerd\",condition=\"True\"",
        "lanyard_certificate_issued_total{name=\"linkerd-identity-issuer\"",
        "lanyard_certificate_renewal_timestamp_seconds{name=\"linkerd-identity-issuer\"",
        "lanyard_issuer_ready_status{name=\"linkerd-trust-anchor\",namespace=\"\",kind=\"ClusterIssuer\",condition=\"True\"} 1",
        "lanyard_ca_expiration_timestamp_seconds{issuer=\"identity\",issuer_kind=\"Issuer\",namespace=\"linkerd\",role=\"issuer\"",
        "lanyard_ca_expiration_timestamp_seconds{issuer=\"linkerd-trust-anchor\",issuer_kind=\"ClusterIssuer\",namespace=\"\",role=\"anchor\"",
    ] {
        assert!(
            metrics.contains(needle),
            "`{needle}` missing from:\n{metrics}"
        );
    }
}

#[test]
fn apply_refuses_a_bad_manifest_naming_file_document_and_field() {
    let scratch = Scratch::new();
    scratch.write(
        "bad.yaml",
        format!(
            "{WEB}---\n{}",
            WEB.split("---\n")
                .nth(1)
                .unwrap()
                .replace("duration: 24h", "duration: 24h\n  renewBefore: 25h")
        ),
    );
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "bad.yaml"])
        .failure_saying("bad.yaml: document 3: spec.renewBefore 25h0m0s must be shorter than spec.duration 24h0m0s");
    assert!(!scratch.exists("state/manifests"), "nothing was written");
}

#[test]
fn the_guides_cert_manager_manifest_applies_with_only_the_api_version_changed() {
    let scratch = Scratch::new();
    let guide = include_str!("../crds/tests/guide/linkerd-identity-issuer.yaml");
    scratch.write("guide.yaml", guide);
    scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "guide.yaml"])
        .failure_saying("change it to `lanyard.dev/v1`");
    scratch.write(
        "guide.yaml",
        guide.replace("cert-manager.io/v1", "lanyard.dev/v1"),
    );
    let ran = scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "guide.yaml"])
        .success();
    assert_eq!(
        ran.stdout,
        "certificate.lanyard.dev/linkerd-identity-issuer created\n"
    );
    let again = scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "guide.yaml"])
        .success();
    assert_eq!(
        again.stdout,
        "certificate.lanyard.dev/linkerd-identity-issuer unchanged\n"
    );
}

#[test]
fn crds_prints_the_committed_crds() {
    let scratch = Scratch::new();
    let printed = scratch.lanyard(&["crds"]).success().stdout;
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/lanyard.dev.yaml"
    ))
    .unwrap();
    assert_eq!(printed, committed);
}

#[test]
fn up_names_follow_the_flags_and_a_restart_keeps_the_anchor() {
    let scratch = Scratch::new();
    let start = |scratch: &Scratch| {
        let flags = [
            "--trust-domain",
            "example.org",
            "--control-plane-namespace",
            "mesh",
        ];
        let up = start_up(scratch, &flags);
        // The first pass has run once the issuer's status is recorded.
        eventually("the identity issuer's status", || {
            scratch
                .lanyard(&["get", "certificates", "--state-dir", "state", "-n", "mesh"])
                .success()
                .stdout
                .lines()
                .any(|l| l.contains("linkerd-identity-issuer") && l.contains("True"))
        });
        drop(up);
    };
    start(&scratch);
    let anchor = scratch.read("state/secrets/lanyard/linkerd-trust-anchor/tls.crt");
    let issuer = scratch.x509_text("state/secrets/mesh/linkerd-identity-issuer/tls.crt");
    assert!(
        issuer.contains("CN = identity.mesh.example.org"),
        "{issuer}"
    );
    assert!(
        scratch
            .x509_text("state/secrets/lanyard/linkerd-trust-anchor/tls.crt")
            .contains("CN = root.mesh.example.org")
    );
    let issuer_pem = scratch.read("state/secrets/mesh/linkerd-identity-issuer/tls.crt");

    start(&scratch);
    assert_eq!(
        scratch.read("state/secrets/lanyard/linkerd-trust-anchor/tls.crt"),
        anchor,
        "a restart keeps the anchor"
    );
    assert_eq!(
        scratch.read("state/secrets/mesh/linkerd-identity-issuer/tls.crt"),
        issuer_pem,
        "and the issuer, which is not due"
    );
}

#[test]
fn token_create_signs_with_a_key_kept_0600_in_the_state_directory() {
    let scratch = Scratch::new();
    let token = scratch
        .lanyard(&[
            "token",
            "create",
            "--state-dir",
            "state",
            "--namespace",
            "ns-a",
            "--service-account",
            "sa-a",
            "--ttl",
            "2h",
        ])
        .success()
        .stdout;
    let key_path = scratch.path("state/identity/token.key");
    let mode = std::fs::metadata(&key_path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let key =
        lanyard_identity::token::TokenKey::from_bytes(&std::fs::read(&key_path).unwrap()).unwrap();
    let now = lanyard_crds::time::Clock::now(&lanyard_crds::time::SystemClock);
    let claims = key.verify(token.trim().as_bytes(), now).unwrap();
    assert_eq!(
        (claims.namespace.as_str(), claims.service_account.as_str()),
        ("ns-a", "sa-a")
    );
    assert!(claims.expires > now + chrono::TimeDelta::minutes(119));

    let second = scratch
        .lanyard(&[
            "token",
            "create",
            "--state-dir",
            "state",
            "--namespace",
            "ns-b",
            "--service-account",
            "sa-b",
        ])
        .success()
        .stdout;
    assert!(
        key.verify(second.trim().as_bytes(), now).is_ok(),
        "the same key signs every token"
    );
    scratch
        .lanyard(&[
            "token",
            "create",
            "--state-dir",
            "state",
            "--namespace",
            "Bad.NS",
            "--service-account",
            "sa",
        ])
        .failure_saying("`Bad.NS` is not a valid namespace or service account name");
    std::fs::write(&key_path, b"short").unwrap();
    scratch
        .lanyard(&[
            "token",
            "create",
            "--state-dir",
            "state",
            "--namespace",
            "ns",
            "--service-account",
            "sa",
        ])
        .failure_saying("a token key is 32 bytes");
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        b"short",
        "a bad key file is never replaced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_get_leaves_for_exactly_their_identity_from_lanyard_up() {
    use lanyard_proxy::identity::{Agent, AgentConfig, AgentError};

    let scratch = Scratch::new();
    let up = start_up(&scratch, &[]);
    eventually("the identity issuer", || {
        scratch.exists("state/secrets/linkerd/linkerd-identity-issuer/tls.crt")
    });
    let token_file = |ns: &str, sa: &str| {
        let token = scratch
            .lanyard(&[
                "token",
                "create",
                "--state-dir",
                "state",
                "--namespace",
                ns,
                "--service-account",
                sa,
            ])
            .success()
            .stdout;
        let file = format!("{ns}-{sa}.token");
        scratch.write(&file, token);
        scratch.path(&file)
    };
    let agent = |identity: &str, token_file: std::path::PathBuf| {
        let config = AgentConfig {
            identity: identity.parse().unwrap(),
            service_addr: up.identity.to_string(),
            service_identity:
                "linkerd-identity.linkerd.serviceaccount.identity.linkerd.cluster.local".into(),
            trust_anchors: scratch.path("state/secrets/lanyard/linkerd-trust-anchor/ca.crt"),
            token_file,
            insecure_plaintext: false,
            timeout: Duration::from_secs(5),
        };
        Agent::new(
            config,
            lanyard_crds::time::SystemClock,
            lanyard_proxy::metrics::AgentMetrics::new(),
        )
        .unwrap()
    };
    let sa_a = "sa-a.ns-a.serviceaccount.identity.linkerd.cluster.local";
    let sa_b = "sa-b.ns-b.serviceaccount.identity.linkerd.cluster.local";

    // The service's certificate appears within a reload interval.
    let mut a = agent(sa_a, token_file("ns-a", "sa-a"));
    let mut credentials = None;
    for _ in 0..50 {
        match a.certify().await {
            Ok(c) => {
                credentials = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let credentials = credentials.expect("a certificate from lanyard up");
    credentials.write_files(&scratch.path("sa-a")).unwrap();
    scratch
        .openssl(&[
            "verify",
            "-CAfile",
            "state/secrets/lanyard/linkerd-trust-anchor/ca.crt",
            "-untrusted",
            "sa-a/tls.crt",
            "sa-a/tls.crt",
        ])
        .success();
    let text = scratch.x509_text("sa-a/tls.crt");
    assert!(text.contains(&format!("DNS:{sa_a}")), "{text}");
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/ns-a/sa/sa-a"),
        "{text}"
    );
    assert!(
        scratch
            .openssl(&["pkey", "-in", "sa-a/tls.key", "-noout", "-text"])
            .success()
            .stdout
            .contains("NIST CURVE: P-256")
    );

    // A token for ns-a/sa-a cannot get ns-b/sa-b.
    let mut b = agent(sa_b, token_file("ns-a", "sa-a"));
    let denied = b.certify().await.unwrap_err();
    assert!(
        matches!(
            denied,
            AgentError::Refused {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{denied}"
    );

    let metrics = http_get(&up.metrics, "/metrics");
    for needle in [
        "lanyard_identity_certify_total{code=\"OK\"} 1",
        "lanyard_identity_certify_total{code=\"PERMISSION_DENIED\"} 1",
        "lanyard_identity_certify_duration_seconds_count 2",
        "lanyard_identity_issuer_reloads_total{result=\"loaded\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "`{needle}` missing from:\n{metrics}"
        );
    }
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lanyard_identity_issuer_expiration_timestamp_seconds "))
        .expect("the loaded issuer's expiry");
    assert!(
        expiry.trim().parse::<i64>().unwrap() > 1_700_000_000,
        "{expiry}"
    );
}

#[test]
fn up_warns_when_its_state_directory_is_inside_a_git_work_tree() {
    let inside = Scratch::new();
    std::fs::create_dir(inside.path(".git")).unwrap();
    let up = start_up(&inside, &[]);
    let log = up.log();
    assert!(
        log.contains("is inside the git work tree")
            && log.contains(&inside.dir().canonicalize().unwrap().display().to_string()),
        "{log}"
    );
    drop(up);

    let outside = Scratch::new();
    let in_a_repo_already = outside.dir().ancestors().any(|d| d.join(".git").exists());
    let up = start_up(&outside, &[]);
    if !in_a_repo_already {
        assert!(!up.log().contains("git work tree"), "{}", up.log());
    }
}

#[test]
fn up_logs_one_plain_line_per_issuance_by_default_and_json_when_asked() {
    let issued_web = |log: &str| {
        log.lines()
            .any(|l| l.contains("issued") && l.contains("linkerd/web"))
    };
    for format in ["text", "json"] {
        let scratch = Scratch::new();
        let up = start_up(&scratch, &["--log-format", format]);
        scratch.write("web.yaml", WEB);
        scratch
            .lanyard(&["apply", "--state-dir", "state", "-f", "web.yaml"])
            .success();
        eventually("a log line for the web certificate", || {
            issued_web(&up.log())
        });
        let log = up.log();
        // stderr is a pipe here, not a terminal: no colour codes.
        assert!(!log.contains("\x1b["), "{format}: {log:?}");
        if format == "json" {
            let events: Vec<serde_json::Value> = log
                .lines()
                .filter(|l| !l.starts_with("lanyard: "))
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}` is not JSON: {e}"))
                })
                .collect();
            assert!(
                events.iter().any(|e| e["fields"]["message"] == "issued"
                    && e["fields"]["certificate"] == "Certificate linkerd/web"
                    && e["level"] == "INFO"),
                "{log}"
            );
        }
    }
}
