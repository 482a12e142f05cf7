//! Bad input in the local shell: a clear reason, a failure metric, a
//! backoff, and nothing written or changed.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::TimeDelta;
use lanyard_crds::time::{Clock, ManualClock};
use lanyard_rotator::local::manifests::{ApplyError, apply};
use lanyard_rotator::local::{LocalController, LocalOptions, PassReport, certificate_rows};
use lanyard_rotator::metrics::Metrics;
use lanyard_rotator::planner::IssueReason;
use lanyard_rotator::secret::{SecretData, TLS_CRT};
use support::t0;

struct Env {
    _dir: tempfile::TempDir,
    options: LocalOptions,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    controller: LocalController<Arc<ManualClock>>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let metrics = Arc::new(Metrics::new());
    let options = support::local_options(dir.path());
    let controller =
        LocalController::open(options.clone(), clock.clone(), metrics.clone()).unwrap();
    controller.bootstrap().unwrap();
    Env {
        _dir: dir,
        options,
        clock,
        metrics,
        controller,
    }
}

impl Env {
    fn apply(&self, yaml: &str) -> Result<(), ApplyError> {
        apply(
            &self.options.manifests_dir(),
            &self.options.secret_store(),
            &[("input.yaml".into(), yaml.into())],
            "default",
        )
        .map(|_| ())
    }

    /// Writes a manifest straight into the store, past `apply`'s checks,
    /// as a user editing files in `manifests/` might.
    fn drop_manifest(&self, name: &str, yaml: &str) {
        std::fs::write(self.options.manifests_dir().join(name), yaml).unwrap();
    }

    fn pass(&mut self) -> PassReport {
        self.controller.reconcile_all().unwrap()
    }

    fn secret(&self, ns: &str, name: &str) -> Option<SecretData> {
        self.options.secret_store().read(ns, name).unwrap()
    }

    fn ready(&self, ns: &str, name: &str) -> (String, String) {
        let (rows, _) = certificate_rows(&self.options.state_dir).unwrap();
        let row = rows
            .into_iter()
            .find(|r| r.namespace == ns && r.name == name)
            .expect("the certificate is listed");
        (row.ready, row.message)
    }

    fn metric_lines(&self, name: &str, needle: &str) -> Vec<String> {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(tree(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.insert(path, bytes);
        }
    }
    out
}

fn leaf(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  secretName: {name}-tls\n  dnsNames: [{name}.default.svc]\n  issuerRef:\n    name: linkerd-trust-anchor\n    kind: ClusterIssuer\n{extra}"
    )
}

#[test]
fn renew_before_longer_than_duration_is_refused_by_apply_and_fails_in_the_store() {
    let mut env = env();
    env.pass();
    let before = tree(&env.options.state_dir);
    let bad = leaf("web", "  duration: 24h\n  renewBefore: 48h\n");
    let Err(ApplyError::Invalid(errors)) = env.apply(&bad) else {
        panic!("apply must refuse renewBefore > duration")
    };
    let message = errors[0].to_string();
    assert!(
        message.contains("input.yaml: document 1")
            && message
                .contains("spec.renewBefore 48h0m0s must be shorter than spec.duration 24h0m0s"),
        "{message}"
    );
    assert_eq!(
        tree(&env.options.state_dir),
        before,
        "a refused apply changes nothing"
    );

    // The same manifest dropped into the store by hand: the controller
    // says why, counts it, backs off, and writes no Secret.
    env.drop_manifest("web.yaml", &bad);
    let report = env.pass();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, "InvalidSpec");
    let (ready, message) = env.ready("default", "web");
    assert_eq!(ready, "False");
    assert!(
        message.contains("must be shorter than spec.duration"),
        "{message}"
    );
    assert!(env.secret("default", "web-tls").is_none());
    assert_eq!(
        env.metric_lines(
            "lanyard_certificate_issuance_failures_total",
            "reason=\"InvalidSpec\""
        )
        .len(),
        1
    );
    // Backoff: a pass 5s later does not try again; 10s later it does.
    env.clock.advance(TimeDelta::seconds(5));
    assert!(env.pass().failed.is_empty(), "still backing off");
    env.clock.advance(TimeDelta::seconds(5));
    assert_eq!(env.pass().failed.len(), 1, "retried after 10s");
}

#[test]
fn a_missing_issuer_fails_with_a_reason_and_writes_nothing() {
    let mut env = env();
    env.apply(&leaf("web", "").replace("name: linkerd-trust-anchor", "name: nowhere"))
        .unwrap();
    let report = env.pass();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].1, "IssuerNotFound");
    let (ready, message) = env.ready("default", "web");
    assert_eq!(ready, "False");
    assert_eq!(message, "ClusterIssuer `nowhere` does not exist");
    assert!(env.secret("default", "web-tls").is_none());
    let ready_false = env.metric_lines("lanyard_certificate_ready_status", "condition=\"False\"");
    assert!(
        ready_false.iter().any(|l| l.ends_with(" 1")),
        "{ready_false:?}"
    );
}

#[test]
fn an_issuer_whose_ca_secret_is_garbage_or_not_a_ca_signs_nothing() {
    let mut env = env();
    let issuers = "apiVersion: lanyard.dev/v1\nkind: Issuer\nmetadata:\n  name: garbage\n  namespace: default\nspec:\n  ca:\n    secretName: garbage-ca\n---\napiVersion: lanyard.dev/v1\nkind: Issuer\nmetadata:\n  name: leafy\n  namespace: default\nspec:\n  ca:\n    secretName: leaf-ca\n";
    env.apply(issuers).unwrap();
    // A Secret whose tls.crt is not a certificate...
    env.apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: garbage-ca\n  namespace: default\nstringData:\n  tls.crt: not a certificate\n  tls.key: not a key\n")
        .unwrap();
    // ...and one holding a leaf, which is not a CA.
    env.apply(&leaf("plain", "")).unwrap();
    env.pass();
    let plain = env.secret("default", "plain-tls").unwrap();
    let leaf_ca = SecretData {
        data: plain.data.clone(),
        ..Default::default()
    };
    env.options
        .secret_store()
        .write("default", "leaf-ca", &leaf_ca)
        .unwrap();

    for issuer in ["garbage", "leafy"] {
        env.apply(
            &leaf(&format!("by-{issuer}"), "")
                .replace("name: linkerd-trust-anchor", &format!("name: {issuer}"))
                .replace("kind: ClusterIssuer", "kind: Issuer"),
        )
        .unwrap();
    }
    let report = env.pass();
    let reasons: Vec<_> = report
        .failed
        .iter()
        .map(|f| (f.0.name.as_str(), f.1))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("by-garbage", "CASecretInvalid"),
            ("by-leafy", "CASecretInvalid")
        ]
    );
    let (_, garbage) = env.ready("default", "by-garbage");
    assert!(garbage.contains("default/garbage-ca"), "{garbage}");
    let (_, leafy) = env.ready("default", "by-leafy");
    assert!(leafy.contains("is not a CA"), "{leafy}");
    assert!(env.secret("default", "by-garbage-tls").is_none());
    assert!(env.secret("default", "by-leafy-tls").is_none());
    let not_ready = env.metric_lines("lanyard_issuer_ready_status", "condition=\"False\"");
    assert_eq!(
        not_ready.iter().filter(|l| l.ends_with(" 1")).count(),
        2,
        "{not_ready:?}"
    );
}

#[test]
fn a_corrupt_tls_crt_is_reissued_as_an_invalid_key_pair() {
    let mut env = env();
    env.apply(&leaf("web", "")).unwrap();
    env.pass();
    let store = env.options.secret_store();
    let mut secret = env.secret("default", "web-tls").unwrap();
    secret.data.insert("user-key".into(), b"kept".to_vec());
    secret.data.insert(
        TLS_CRT.into(),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
    );
    store.write("default", "web-tls", &secret).unwrap();
    env.clock.advance(TimeDelta::seconds(1));
    let report = env.pass();
    assert_eq!(report.issued.len(), 1);
    assert_eq!(report.issued[0].1, IssueReason::InvalidKeyPair);
    let fixed = env.secret("default", "web-tls").unwrap();
    assert_ne!(fixed.data[TLS_CRT], secret.data[TLS_CRT]);
    assert_eq!(
        fixed.data["user-key"], b"kept",
        "keys the controller did not write are kept"
    );
}

#[test]
fn a_manifest_that_does_not_parse_is_refused_naming_file_document_and_field() {
    let env = env();
    let before = tree(&env.options.state_dir);
    let cases = [
        (
            "an unknown usage",
            format!(
                "{}---\n{}",
                leaf("ok", ""),
                leaf("bad", "  usages: [cert signing]\n")
            ),
            vec!["input.yaml: document 2", "spec.usages[0]", "cert signing"],
        ),
        (
            "a duration that is not one",
            leaf("bad", "  duration: 1 year\n"),
            vec!["document 1", "spec.duration", "1 year"],
        ),
        (
            "cert-manager's apiVersion",
            leaf("bad", "").replace("lanyard.dev/v1", "cert-manager.io/v1"),
            vec!["apiVersion", "change it to `lanyard.dev/v1`"],
        ),
        (
            "a missing secretName",
            leaf("bad", "").replace("  secretName: bad-tls\n", ""),
            vec!["document 1", "secretName"],
        ),
        (
            "YAML that is not YAML",
            "kind: [unclosed".to_string(),
            vec!["not valid YAML"],
        ),
    ];
    for (name, yaml, needles) in cases {
        let Err(ApplyError::Invalid(errors)) = env.apply(&yaml) else {
            panic!("{name}: apply must refuse")
        };
        let text = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        for needle in needles {
            assert!(text.contains(needle), "{name}: `{needle}` not in `{text}`");
        }
        assert_eq!(
            tree(&env.options.state_dir),
            before,
            "{name}: the store is unchanged"
        );
    }
}

#[test]
fn applying_the_same_object_again_updates_it_and_a_deleted_certificate_loses_its_series() {
    let mut env = env();
    env.apply(&leaf("web", "  duration: 24h\n")).unwrap();
    env.pass();
    let first = env.secret("default", "web-tls").unwrap();
    assert_eq!(
        env.metric_lines(
            "lanyard_certificate_expiration_timestamp_seconds",
            "name=\"web\""
        )
        .len(),
        1
    );

    env.apply(&leaf("web", "  duration: 48h\n")).unwrap();
    let files = std::fs::read_dir(env.options.manifests_dir())
        .unwrap()
        .count();
    assert_eq!(files, 2, "the object was updated in place, not added again");
    let report = env.pass();
    assert_eq!(report.issued[0].1, IssueReason::SpecChanged);
    let second = env.secret("default", "web-tls").unwrap();
    assert_ne!(first, second);

    let manifest = env
        .options
        .manifests_dir()
        .join("certificate.default.web.json");
    std::fs::remove_file(manifest).unwrap();
    env.pass();
    assert!(
        env.metrics
            .encode()
            .lines()
            .all(|l| !l.contains("name=\"web\"")),
        "series removed"
    );
    assert!(
        env.secret("default", "web-tls").is_some(),
        "the Secret is kept"
    );
    let _ = env.clock.now();
}

#[test]
fn an_oversized_value_is_quoted_short_with_the_field_still_named() {
    let env = env();
    let before = tree(&env.options.state_dir);
    let huge = "a".repeat(1 << 20);
    let web = leaf("web", "");
    let cases = [
        (
            "a megabyte-long name",
            web.replace("  name: web\n", &format!("  name: {huge}\n")),
            vec!["document 1: metadata.name: `aaaa", "(1048576 bytes)"],
        ),
        (
            "a megabyte-long namespace",
            web.replace("namespace: default", &format!("namespace: {huge}")),
            vec![
                "metadata.namespace: `aaaa",
                "(1048576 bytes) is not a valid",
            ],
        ),
        (
            "a megabyte-long duration",
            leaf("web", &format!("  duration: {huge}\n")),
            vec!["spec.duration", "`aaaa", "is not a duration"],
        ),
        (
            "a megabyte-long DNS name",
            web.replace("[web.default.svc]", &format!("[{huge}]")),
            vec![
                "spec.dnsNames[0] `aaaa",
                "(1048576 bytes) is not a DNS name",
            ],
        ),
        (
            "a megabyte-long kind",
            web.replace("kind: Certificate", &format!("kind: {huge}")),
            vec![
                "kind: `aaaa",
                "(1048576 bytes) is not a lanyard.dev/v1 kind",
            ],
        ),
        (
            "a megabyte-long usage, refused by serde",
            leaf("web", &format!("  usages: [{huge}]\n")),
            vec!["spec.usages[0]", "unknown variant"],
        ),
    ];
    for (name, yaml, needles) in cases {
        let Err(ApplyError::Invalid(errors)) = env.apply(&yaml) else {
            panic!("{name}: apply must refuse")
        };
        let text = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.len() < 1024,
            "{name}: the error is {} bytes: {}",
            text.len(),
            text.chars().take(300).collect::<String>()
        );
        for needle in needles {
            assert!(text.contains(needle), "{name}: `{needle}` not in `{text}`");
        }
        assert_eq!(
            tree(&env.options.state_dir),
            before,
            "{name}: the store is unchanged"
        );
    }
}

/// Every file's bytes and every directory under `dir`: a write that leaves
/// only an empty directory behind still shows.
fn entries(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.insert(path.clone(), None);
            out.extend(entries(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).ok());
        }
    }
    out
}

fn secret_doc(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  token: {name}\n"
    )
}

#[test]
fn apply_writes_nothing_when_a_later_document_cannot_be_staged() {
    let mut env = env();
    env.pass();
    // A regular file where the Secret `blocked/third` needs its namespace
    // directory: staging the third document fails (tests run as root, so
    // permission bits would not).
    let secrets_root = env.options.state_dir.join("secrets");
    std::fs::write(secrets_root.join("blocked"), "not a directory").unwrap();
    let before = entries(&env.options.state_dir);
    let yaml = [
        secret_doc("default", "first"),
        leaf("web", ""),
        secret_doc("blocked", "third"),
    ]
    .join("---\n");
    let error = env
        .apply(&yaml)
        .expect_err("the third Secret cannot be written");
    let text = error.to_string();
    for needle in [
        "Secret blocked/third".to_string(),
        secrets_root.join("blocked").display().to_string(),
        "nothing was applied".to_string(),
    ] {
        assert!(text.contains(&needle), "`{needle}` not in `{text}`");
    }
    assert_eq!(
        entries(&env.options.state_dir),
        before,
        "no earlier document's Secret or manifest was written"
    );
}

#[test]
fn apply_names_what_was_and_was_not_written_when_a_commit_fails() {
    let mut env = env();
    env.pass();
    // A directory where the Certificate's manifest file must be renamed
    // to: staging succeeds, the rename fails after the Secret is in.
    let blocked = env
        .options
        .manifests_dir()
        .join("certificate.default.web.json");
    std::fs::create_dir(&blocked).unwrap();
    let yaml = [secret_doc("default", "first"), leaf("web", "")].join("---\n");
    let error = env
        .apply(&yaml)
        .expect_err("the manifest cannot be renamed");
    let text = error.to_string();
    for needle in [
        format!("Certificate default/web to {}", blocked.display()),
        "applied: Secret default/first (created)".to_string(),
        "not applied: Certificate default/web".to_string(),
    ] {
        assert!(text.contains(&needle), "`{needle}` not in `{text}`");
    }
    assert!(
        env.secret("default", "first").is_some(),
        "as the error says"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.options.manifests_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staged files are removed: {leftovers:?}"
    );
}
