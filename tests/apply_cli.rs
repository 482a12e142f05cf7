//! `lanyard apply` on input that is wrong in ways a user does not see at a
//! glance: the real binary, real files, and what it prints.

mod support;

use support::Scratch;

const CERTIFICATE: &str = "apiVersion: lanyard.dev/v1
kind: Certificate
metadata:
  name: web
  namespace: linkerd
spec:
  secretName: web-tls
  dnsNames: [web.linkerd.svc.cluster.local]
  duration: 24h
  issuerRef:
    name: identity
";

#[test]
fn apply_quotes_a_megabyte_value_in_a_few_hundred_bytes() {
    let huge = "a".repeat(1 << 20);
    let cases = [
        (
            "a megabyte-long metadata.name",
            CERTIFICATE.replace("name: web\n", &format!("name: {huge}\n")),
            "metadata.name: `aaaa",
        ),
        (
            "a megabyte-long spec.duration",
            CERTIFICATE.replace("duration: 24h", &format!("duration: {huge}")),
            "spec.duration",
        ),
    ];
    for (name, yaml, field) in cases {
        let scratch = Scratch::new();
        scratch.write("big.yaml", yaml);
        let ran = scratch
            .lanyard(&["apply", "--state-dir", "state", "-f", "big.yaml"])
            .failure_saying(field);
        assert!(
            ran.stderr.len() < 1024,
            "{name}: stderr is {} bytes",
            ran.stderr.len()
        );
        assert!(
            ran.stderr.contains("big.yaml: document 1: ")
                && ran.stderr.contains("nothing was applied"),
            "{name}: {}",
            ran.stderr
        );
        assert!(
            !scratch.exists("state/manifests"),
            "{name}: nothing written"
        );
    }
}

#[test]
fn apply_writes_nothing_when_a_later_document_cannot_be_written() {
    let scratch = Scratch::new();
    // A regular file where the third document's Secret needs its
    // namespace directory.
    std::fs::create_dir_all(scratch.path("state/secrets")).unwrap();
    scratch.write("state/secrets/blocked", "not a directory");
    let secret = |namespace: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\nstringData:\n  token: {name}\n"
        )
    };
    scratch.write(
        "three.yaml",
        [
            secret("default", "first"),
            CERTIFICATE.to_string(),
            secret("blocked", "third"),
        ]
        .join("---\n"),
    );
    let ran = scratch
        .lanyard(&["apply", "--state-dir", "state", "-f", "three.yaml"])
        .failure_saying("Secret blocked/third");
    assert!(
        ran.stderr.contains("state/secrets/blocked") && ran.stderr.contains("nothing was applied"),
        "{}",
        ran.stderr
    );
    assert!(ran.stdout.is_empty(), "nothing is reported as applied");
    assert!(
        !scratch.exists("state/secrets/default"),
        "no Secret written"
    );
    assert!(!scratch.exists("state/manifests"), "no manifest written");
}
