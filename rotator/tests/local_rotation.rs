//! The trust anchor's rotation in the local shell, with an injected clock:
//! every pass the controller is dropped and opened again from the state
//! directory (as after a crash), and at every instant every Certificate
//! chains to an anchor the bundle holds. At the end one new anchor was
//! made, and the old one is gone from the bundle and every `ca.crt`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use chrono::TimeDelta;
use lanyard_crds::time::{Clock, ManualClock};
use lanyard_issuer::{Certificate as X509, verify_chain};
use lanyard_rotator::local::manifests::apply;
use lanyard_rotator::local::trust::{self, TrustOptions};
use lanyard_rotator::local::{LocalController, LocalOptions};
use lanyard_rotator::metrics::Metrics;
use lanyard_trust_bundle::{Phase, Timing};
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
  issuerRef: {name: identity}
"#;

const BUNDLE: &str = "bundles/linkerd-identity-trust-roots.pem";

fn timing() -> Timing {
    Timing {
        propagation_delay: TimeDelta::seconds(5),
        leaf_lifetime: TimeDelta::hours(24),
        skew: TimeDelta::seconds(30),
    }
}

fn open(options: &LocalOptions, clock: &Arc<ManualClock>) -> LocalController<Arc<ManualClock>> {
    LocalController::open(options.clone(), clock.clone(), Arc::new(Metrics::new()))
        .unwrap()
        .with_trust(TrustOptions {
            timing: timing(),
            anchor_renew_before: None,
            served_issuer: None,
        })
}

fn read(path: &Path) -> Vec<X509> {
    X509::parse_pem_bundle(&std::fs::read(path).unwrap(), &path.display().to_string()).unwrap()
}

fn fingerprints(certs: &[X509]) -> Vec<String> {
    certs.iter().map(X509::sha256_fingerprint).collect()
}

fn phase(dir: &Path) -> Phase {
    trust::read_record(dir).unwrap().unwrap().rotation.phase
}

#[test]
fn a_rotation_survives_a_restart_after_every_pass_and_never_strands_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let options = support::local_options(dir.path());
    let controller = open(&options, &clock);
    assert!(controller.bootstrap().unwrap());
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("workloads.yaml".into(), WORKLOADS.into())],
        "default",
    )
    .unwrap();
    drop(controller);
    let secrets = dir.path().join("secrets");
    let ca_crts = [
        secrets.join("lanyard/linkerd-trust-anchor/ca.crt"),
        secrets.join("linkerd/linkerd-identity-issuer/ca.crt"),
        secrets.join("linkerd/web-tls/ca.crt"),
    ];
    let chains = [
        secrets.join("linkerd/linkerd-identity-issuer/tls.crt"),
        secrets.join("linkerd/web-tls/tls.crt"),
    ];

    // Settle: the issuer and the leaf are issued, the bundle written.
    let mut controller = open(&options, &clock);
    for _ in 0..3 {
        controller.reconcile_all().unwrap();
    }
    let old = fingerprints(&read(&dir.path().join(BUNDLE)));
    assert_eq!(old.len(), 1, "one anchor before the rotation");
    assert_eq!(phase(dir.path()), Phase::Stable);

    trust::request_rotation(dir.path(), clock.now()).unwrap();
    let again = trust::request_rotation(dir.path(), clock.now());
    assert!(
        again.is_err_and(|e| e.to_string().contains("already requested")),
        "a second request before the first started is refused"
    );

    let mut phases = vec![Phase::Stable];
    let mut prepared = BTreeSet::new();
    for pass in 0..200 {
        // A restart before every pass: nothing is kept in memory.
        drop(controller);
        controller = open(&options, &clock);
        let report = controller.reconcile_all().unwrap();
        assert!(report.failed.is_empty(), "pass {pass}: {:?}", report.failed);
        let now = clock.now();
        let record = trust::read_record(dir.path()).unwrap().unwrap();
        if phases.last() != Some(&record.rotation.phase) {
            phases.push(record.rotation.phase);
        }
        if let Some(next) = record.rotation.next.clone() {
            prepared.insert(next);
        }
        if record.rotation.phase != Phase::Stable {
            let refused = trust::request_rotation(dir.path(), now).unwrap_err();
            assert!(
                refused.to_string().contains(record.rotation.phase.as_str()),
                "{refused}"
            );
        }
        // Every Certificate chains to an anchor the bundle holds, now.
        let bundle = read(&dir.path().join(BUNDLE));
        for chain in &chains {
            verify_chain(&read(chain), &bundle, now).unwrap_or_else(|e| {
                panic!(
                    "pass {pass} ({:?}): {} does not chain to the bundle: {e}",
                    record.rotation.phase,
                    chain.display()
                )
            });
        }
        if record.rotation.phase == Phase::Stable && record.rotation.completed == 1 {
            break;
        }
        let next = report.next_wake.expect("a next wake");
        clock.set(next.max(now + TimeDelta::milliseconds(100)));
    }
    assert_eq!(
        phases,
        [
            Phase::Stable,
            Phase::Prepared,
            Phase::Propagated,
            Phase::IssuerSwitched,
            Phase::Drained,
            Phase::Stable
        ],
        "every phase in order"
    );
    assert_eq!(prepared.len(), 1, "one new anchor across every restart");
    let new = prepared.into_iter().next().unwrap();
    assert_ne!(vec![new.clone()], old);
    assert_eq!(
        fingerprints(&read(&dir.path().join(BUNDLE))),
        vec![new.clone()]
    );
    for ca in &ca_crts {
        assert_eq!(
            fingerprints(&read(ca)),
            vec![new.clone()],
            "{} holds only the new anchor",
            ca.display()
        );
    }
    let anchor = read(&dir.path().join(BUNDLE));
    for chain in &chains {
        verify_chain(&read(chain), &anchor, clock.now()).unwrap();
    }
    assert!(
        !secrets.join("lanyard/linkerd-trust-anchor-next").exists(),
        "the prepared copy is gone"
    );
    // The drain waited for leaves issued before the switch.
    let record = trust::read_record(dir.path()).unwrap().unwrap();
    assert!(record.rotation.since - t0() >= TimeDelta::hours(24));
}

#[test]
fn a_bundle_source_that_turns_to_garbage_keeps_its_last_good_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let options = support::local_options(dir.path());
    let mut controller = open(&options, &clock);
    controller.bootstrap().unwrap();
    let roots = support::anchor_secret("extra root", t0());
    let extra = r#"
apiVersion: v1
kind: Secret
metadata: {name: extra-roots, namespace: lanyard}
type: Opaque
stringData:
  ca.crt: PEM
---
apiVersion: lanyard.dev/v1
kind: TrustBundle
metadata: {name: shop-roots}
spec:
  sources:
  - secret: {name: extra-roots, key: ca.crt}
  - issuerRef: {name: linkerd-trust-anchor, kind: ClusterIssuer}
  target:
    configMap: {key: ca.crt}
"#
    .replace(
        "PEM",
        &format!(
            "|\n    {}",
            String::from_utf8(roots.data["ca.crt"].clone())
                .unwrap()
                .trim_end()
                .replace('\n', "\n    ")
        ),
    );
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("extra.yaml".into(), extra)],
        "default",
    )
    .unwrap();
    controller.reconcile_all().unwrap();
    let path = dir.path().join("bundles/shop-roots.pem");
    let before = std::fs::read(&path).unwrap();
    assert_eq!(read(&path).len(), 2, "the extra root and the anchor");

    // The source Secret turns to garbage: the bundle keeps both anchors.
    let store = options.secret_store();
    let mut garbage = store.read("lanyard", "extra-roots").unwrap().unwrap();
    garbage.data.insert(
        "ca.crt".into(),
        b"-----BEGIN CERTIFICATE-----\nnot base64!".to_vec(),
    );
    store.write("lanyard", "extra-roots", &garbage).unwrap();
    clock.advance(TimeDelta::seconds(1));
    controller.reconcile_all().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing changed");

    // A bundle with no valid source is refused: its file is never written.
    let broken = r#"
apiVersion: lanyard.dev/v1
kind: TrustBundle
metadata: {name: broken-roots}
spec:
  sources:
  - inLine: "not a certificate"
  target:
    configMap: {key: ca.crt}
"#;
    apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("broken.yaml".into(), broken.into())],
        "default",
    )
    .unwrap();
    controller.reconcile_all().unwrap();
    assert!(!dir.path().join("bundles/broken-roots.pem").exists());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the others stand");
}

#[test]
fn a_trust_bundle_with_an_unknown_field_is_refused_by_name_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let options = support::local_options(dir.path());
    let manifest = r#"
apiVersion: lanyard.dev/v1
kind: TrustBundle
metadata: {name: roots}
spec:
  sources:
  - inLine: "x"
  target:
    configMap: {key: ca.crt}
    namespaceSelecter: {matchLabels: {a: b}}
"#;
    let error = apply(
        &options.manifests_dir(),
        &options.secret_store(),
        &[("roots.yaml".into(), manifest.into())],
        "default",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("namespaceSelecter"), "{error}");
    assert!(error.contains("spec.target"), "{error}");
    assert!(
        !options
            .manifests_dir()
            .join("trustbundle.roots.json")
            .exists()
            && std::fs::read_dir(options.manifests_dir())
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "nothing written"
    );
}

#[test]
fn while_two_anchors_share_a_name_the_expiry_series_shows_the_one_ending_first() {
    let old = support::anchor_secret("root.linkerd.cluster.local", t0());
    let new = support::anchor_secret("root.linkerd.cluster.local", t0() + TimeDelta::days(30));
    let mut both = old.clone();
    let mut ca = old.data["ca.crt"].clone();
    ca.extend_from_slice(&new.data["ca.crt"]);
    both.data.insert("ca.crt".into(), ca);
    let material = support::ca_issuer(&both, t0() + TimeDelta::days(31));
    let metrics = Metrics::new();
    metrics.observe_issuer(
        lanyard_crds::api::IssuerKind::ClusterIssuer,
        "",
        "linkerd-trust-anchor",
        Some(&material),
    );
    let text = metrics.encode();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("lanyard_ca_expiration_timestamp_seconds{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    let old_end = read_pem(&old.data["tls.crt"])[0].not_after().timestamp();
    assert!(
        series[0].ends_with(&format!(" {old_end}")),
        "the old anchor's end: {series:?}"
    );
}

fn read_pem(pem: &[u8]) -> Vec<X509> {
    X509::parse_pem_bundle(pem, "pem").unwrap()
}
