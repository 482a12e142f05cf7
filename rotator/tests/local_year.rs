//! The local shell end to end with an injected clock: a year passes in
//! seconds, the identity issuer renews, and every leaf stays valid at every
//! instant and chains (checked with `openssl verify`) to the current issuer.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::time::{Clock, ManualClock};
use lanyard_issuer::{Certificate as X509, verify_chain};
use lanyard_rotator::local::LocalController;
use lanyard_rotator::local::manifests::apply;
use lanyard_rotator::metrics::Metrics;
use lanyard_rotator::planner::IssueReason;
use support::t0;

const WORKLOADS: &str = r#"
apiVersion: lanyard.dev/v1
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
  usages: [server auth, client auth]
  issuerRef: {name: identity}
---
apiVersion: lanyard.dev/v1
kind: Certificate
metadata:
  name: api
  namespace: linkerd
spec:
  secretName: api-tls
  commonName: api
  uris: [spiffe://cluster.local/ns/linkerd/sa/api]
  duration: 48h
  renewBeforePercentage: 25
  issuerRef: {name: identity, kind: Issuer}
---
apiVersion: lanyard.dev/v1
kind: Certificate
metadata:
  name: db
  namespace: linkerd
spec:
  secretName: db-tls
  dnsNames: [db.linkerd.svc.cluster.local]
  duration: 24h
  privateKey: {algorithm: Ed25519}
  issuerRef: {name: identity}
"#;

fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

fn openssl_verify(args: &[&str], at: DateTime<Utc>) {
    let out = Command::new("openssl")
        .arg("verify")
        .args(["-attime", &at.timestamp().to_string()])
        .args(args)
        .output()
        .expect("run openssl verify");
    assert!(
        out.status.success(),
        "openssl verify {args:?} at {at} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_chain(path: &Path) -> Vec<X509> {
    X509::parse_pem_bundle(&std::fs::read(path).unwrap(), &path.display().to_string()).unwrap()
}

#[test]
fn a_year_passes_the_issuer_renews_and_every_leaf_stays_valid_and_chains() {
    assert!(
        openssl_available(),
        "this test calls the real openssl: apt-get install -y openssl"
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let options = support::local_options(dir.path());
    let mut controller =
        LocalController::open(options.clone(), clock.clone(), Arc::new(Metrics::new())).unwrap();
    assert!(
        controller.bootstrap().unwrap(),
        "first start sets up the anchor"
    );
    assert!(
        !controller.bootstrap().unwrap(),
        "second start changes nothing"
    );
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("workloads.yaml".into(), WORKLOADS.into())],
        "default",
    )
    .unwrap();

    let secrets = dir.path().join("secrets");
    let anchor = secrets.join("lanyard/linkerd-trust-anchor/tls.crt");
    let issuer = secrets.join("linkerd/linkerd-identity-issuer/tls.crt");
    let leaves = ["web-tls", "api-tls", "db-tls"].map(|s| secrets.join("linkerd").join(s));

    let end = t0() + TimeDelta::days(366);
    let mut issuer_renewals = Vec::new();
    let mut leaf_issuances = 0;
    let mut rotated_leaves = 0;
    let mut passes = 0;
    let mut last_openssl = t0() - TimeDelta::days(60);
    while clock.now() < end {
        passes += 1;
        let now = clock.now();
        // As `lanyard up` does: wakes for renewals look only at what is
        // due; now and then a full pass looks at everything.
        let report = if passes % 10 == 1 {
            controller.reconcile_all().unwrap()
        } else {
            controller.reconcile_due().unwrap()
        };
        assert!(report.failed.is_empty(), "at {now}: {:?}", report.failed);
        assert!(
            report.manifest_errors.is_empty(),
            "{:?}",
            report.manifest_errors
        );
        let mut issuer_rotated = false;
        for (key, reason) in &report.issued {
            if key.name == "linkerd-identity-issuer" {
                if passes > 1 {
                    assert_eq!(
                        *reason,
                        IssueReason::Renewing,
                        "the issuer renews on schedule"
                    );
                    issuer_renewals.push(now);
                }
                issuer_rotated = passes > 1;
            } else {
                leaf_issuances += 1;
                if *reason == IssueReason::IssuerRotated {
                    rotated_leaves += 1;
                }
            }
        }
        let next = report
            .next_wake
            .unwrap_or_else(|| panic!("pass {passes} at {now}: no next renewal; {report:?}"));
        assert!(
            next > now,
            "at {now} the controller left work undone (next wake {next})"
        );

        // Every leaf is valid now and until the next pass, and chains to the
        // issuer that is current now, which chains to the anchor.
        let issuer_chain = read_chain(&issuer);
        let anchors = read_chain(&anchor);
        for leaf in &leaves {
            let chain = read_chain(&leaf.join("tls.crt"));
            let cert = &chain[0];
            assert!(
                cert.is_valid_at(now),
                "{} not valid at {now}",
                leaf.display()
            );
            assert!(
                cert.not_after() >= next,
                "{} expires at {} before the next pass at {next}",
                leaf.display(),
                cert.not_after()
            );
            assert!(
                cert.is_signed_by(&issuer_chain[0]),
                "{} is not signed by the current issuer at {now}",
                leaf.display()
            );
            verify_chain(&chain, &anchors, now).unwrap();
        }
        if issuer_rotated || now - last_openssl >= TimeDelta::days(30) {
            last_openssl = now;
            for leaf in &leaves {
                let leaf_crt = leaf.join("tls.crt");
                let leaf_crt = leaf_crt.to_str().unwrap();
                // The leaf chains to the current issuer itself...
                openssl_verify(
                    &[
                        "-partial_chain",
                        "-CAfile",
                        issuer.to_str().unwrap(),
                        leaf_crt,
                    ],
                    now,
                );
                // ...and through it to the anchor in ca.crt.
                openssl_verify(
                    &[
                        "-CAfile",
                        leaf.join("ca.crt").to_str().unwrap(),
                        "-untrusted",
                        leaf_crt,
                        leaf_crt,
                    ],
                    now,
                );
            }
            openssl_verify(
                &[
                    "-CAfile",
                    anchor.to_str().unwrap(),
                    issuer.to_str().unwrap(),
                ],
                now,
            );
        }
        clock.set(next);
    }

    assert_eq!(
        issuer_renewals,
        vec![t0() + TimeDelta::hours(8040)],
        "the issuer renews once, 720h before its 8760h end"
    );
    assert_eq!(
        rotated_leaves, 3,
        "each leaf is re-issued once when the issuer rotates"
    );
    // web and db renew every 16h, api every 36h, for a year: about 1,340.
    assert!(leaf_issuances > 1_200, "{leaf_issuances} leaf issuances");
    assert!(
        passes < 2_000,
        "{passes} passes: the controller wakes only when needed"
    );
}
