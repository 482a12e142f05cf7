//! `lanyard check` as a user runs it: on the state directory `lanyard up`
//! made (sound, then with a piece broken), and against a cluster it cannot
//! reach.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Ran, Scratch, eventually_within, start_up};

/// `lanyard up` until it has set up the anchor, the issuer and the trust
/// bundle, then stopped: the state directory `check` reads.
fn bootstrapped() -> Scratch {
    let scratch = Scratch::new();
    let mut up = start_up(&scratch, &[]);
    let bound = Duration::from_secs(60);
    eventually_within(
        "the identity issuer, Ready, and the trust bundle",
        bound,
        || {
            scratch.exists("state/secrets/linkerd/linkerd-identity-issuer/tls.crt")
                && scratch.exists("state/bundles/linkerd-identity-trust-roots.pem")
                && scratch.exists("state/anchors/linkerd-trust-anchor.json")
                && scratch
                    .lanyard(&["get", "certificates", "--state-dir", "state"])
                    .stdout
                    .contains("True")
        },
    );
    up.signal("INT");
    assert!(
        up.wait_exit(Duration::from_secs(20)).is_some(),
        "lanyard up did not stop:\n{}",
        up.log()
    );
    scratch
}

fn check(scratch: &Scratch) -> Ran {
    scratch.lanyard(&["check", "--state-dir", "state"])
}

#[test]
fn check_passes_a_fresh_state_directory_and_names_what_breaks() {
    let scratch = bootstrapped();

    let sound = check(&scratch).success();
    for line in [
        "✔ state directory state exists and is readable",
        "✔ manifests load without errors",
        "✔ all Certificates are Ready (1 of 1)",
        "✔ issuer Secret holds tls.crt, tls.key and ca.crt",
        "✔ trust anchors are within their validity period",
        "✔ issuer certificate is valid for at least 60 days",
        "✔ issuer certificate is for the identity domain identity.linkerd.cluster.local",
        "✔ issuer certificate is issued by a trust anchor and matches its key",
        "✔ bundles/linkerd-identity-trust-roots.pem holds the issuer's trust anchor",
        "✔ trust anchor linkerd-trust-anchor is Stable (no rotation under way)",
        "Status check results are ✔",
    ] {
        assert!(
            sound.stdout.lines().any(|l| l == line),
            "`{line}` missing from:\n{}",
            sound.stdout
        );
    }
    assert!(!sound.stdout.contains('×'), "{}", sound.stdout);
    assert!(!sound.stdout.contains("PRIVATE KEY"), "{}", sound.stdout);

    // The bundle proxies read, gone.
    let bundle = scratch.path("state/bundles/linkerd-identity-trust-roots.pem");
    let kept = std::fs::read(&bundle).unwrap();
    std::fs::remove_file(&bundle).unwrap();
    let broken = check(&scratch);
    assert_eq!(broken.code, Some(1), "{}", broken.stdout);
    assert!(
        broken
            .stdout
            .contains("× bundles/linkerd-identity-trust-roots.pem exists\n"),
        "{}",
        broken.stdout
    );
    assert!(broken.stdout.ends_with("Status check results are ×\n"));

    // A bundle that holds another anchor: proxies would not trust the
    // issuer.
    scratch.lanyard(&["ca", "init", "--out", "other"]).success();
    std::fs::copy(scratch.path("other/ca.crt"), &bundle).unwrap();
    let foreign = check(&scratch);
    assert_eq!(foreign.code, Some(1), "{}", foreign.stdout);
    assert!(
        foreign.stdout.contains(
            "× bundles/linkerd-identity-trust-roots.pem holds the issuer's trust anchor\n"
        ),
        "{}",
        foreign.stdout
    );
    assert!(
        foreign.stdout.contains("proxies would not trust"),
        "{}",
        foreign.stdout
    );
    std::fs::write(&bundle, kept).unwrap();
    check(&scratch).success();

    // The issuer's certificate overwritten with garbage (through the
    // Secret volume's symlink, as an editor would).
    scratch.write(
        "state/secrets/linkerd/linkerd-identity-issuer/tls.crt",
        "garbage\n",
    );
    let garbage = check(&scratch);
    assert_eq!(garbage.code, Some(1), "{}", garbage.stdout);
    let line = garbage
        .stdout
        .lines()
        .position(|l| l == "× issuer certificate can be read")
        .unwrap_or_else(|| panic!("no failure for tls.crt in:\n{}", garbage.stdout));
    let reason = garbage.stdout.lines().nth(line + 1).unwrap();
    assert!(
        reason.starts_with("    ")
            && reason.contains("linkerd-identity-issuer")
            && reason.contains("tls.crt"),
        "{reason}"
    );
}

#[test]
fn check_output_json_has_linkerds_shape() {
    let scratch = bootstrapped();
    let ran = scratch
        .lanyard(&["check", "--state-dir", "state", "-o", "json"])
        .success();
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["success"], true);
    let categories: Vec<&str> = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["categoryName"].as_str().unwrap())
        .collect();
    assert_eq!(
        categories,
        [
            "state-directory",
            "certificates",
            "lanyard-identity-issuer",
            "trust-bundles",
            "trust-anchor-rotation"
        ]
    );
    assert_eq!(report["categories"][0]["checks"][0]["result"], "success");
}

#[test]
fn check_of_a_directory_that_is_not_a_state_directory_fails_and_skips_the_rest() {
    let scratch = Scratch::new();
    let ran = scratch.lanyard(&["check", "--state-dir", "missing"]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stdout
            .contains("× state directory missing exists and is readable\n"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("Skipped the remaining checks"),
        "{}",
        ran.stdout
    );
}

#[test]
fn check_without_a_reachable_cluster_fails_at_the_api() {
    let scratch = Scratch::new();
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("check")
        .current_dir(scratch.dir())
        .env("KUBECONFIG", scratch.path("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("× can reach the Kubernetes API\n    cannot load a kubeconfig"),
        "{stdout}"
    );
    assert!(stdout.contains("no-such-kubeconfig"), "{stdout}");
    assert!(
        stdout.contains("Skipped the remaining checks (lanyard-crds,"),
        "{stdout}"
    );
    assert!(stdout.ends_with("Status check results are ×\n"), "{stdout}");
}
