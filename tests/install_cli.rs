//! `lanyard install` as a user runs it: the objects it prints, the files
//! `linkerd install` takes, and what it refuses (printing nothing).

mod support;

use support::Scratch;

/// `linkerd install`'s certificate flags: the anchors, the issuer and the
/// key of the `lanyard ca init` directories named.
fn bring(anchors: &str, issuer: &str, key: &str) -> Vec<String> {
    vec![
        "--identity-trust-anchors-file".into(),
        format!("{anchors}/ca.crt"),
        "--identity-issuer-certificate-file".into(),
        format!("{issuer}/issuer.crt"),
        "--identity-issuer-key-file".into(),
        format!("{key}/issuer.key"),
    ]
}

/// `lanyard install` with `args` fails saying `needle`, and prints nothing.
fn refused(scratch: &Scratch, args: &[impl AsRef<str>], needle: &str) {
    let mut all = vec!["install"];
    all.extend(args.iter().map(AsRef::as_ref));
    let ran = scratch.lanyard(&all).failure_saying(needle);
    assert!(
        ran.stdout.is_empty(),
        "printed a half install:\n{}",
        ran.stdout
    );
}

fn kinds_and_names(yaml: &str) -> Vec<String> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn install_prints_the_crds_then_the_control_plane_where_lanyard_makes_the_issuer() {
    let scratch = Scratch::new();
    let crds = scratch.lanyard(&["install", "--crds"]).success();
    assert_eq!(crds.stdout, scratch.lanyard(&["crds"]).success().stdout);

    let install = scratch.lanyard(&["install"]).success();
    let objects = kinds_and_names(&install.stdout);
    for expected in [
        "Deployment/lanyard-controller",
        "Deployment/linkerd-identity",
        "Service/linkerd-identity",
        "ClusterIssuer/linkerd-trust-anchor",
        "Certificate/linkerd-identity-issuer",
        "TrustBundle/linkerd-identity-trust-roots",
    ] {
        assert!(
            objects.iter().any(|o| o == expected),
            "{expected} missing: {objects:?}"
        );
    }
    assert!(
        !objects.iter().any(|o| o.starts_with("Secret/")),
        "{objects:?}"
    );
    assert!(install.stdout.contains("namespace: \"linkerd\""));
}

#[test]
fn install_takes_the_files_linkerd_install_takes() {
    let scratch = Scratch::new();
    scratch
        .ca_init("certs", &["--control-plane-namespace", "mesh"])
        .success();
    let mut args = vec!["install", "-n", "mesh", "--set", "controller.replicas=3"];
    let certificates = bring("certs", "certs", "certs");
    args.extend(certificates.iter().map(String::as_str));
    let install = scratch.lanyard(&args).success();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&install.stdout).unwrap();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "linkerd-identity-issuer")
        .expect("the issuer Secret");
    assert_eq!(secret["metadata"]["namespace"], "mesh");
    assert_eq!(secret["stringData"]["ca.crt"], scratch.read("certs/ca.crt"));
    assert_eq!(
        secret["stringData"]["tls.crt"],
        scratch.read("certs/issuer.crt")
    );
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterIssuer" || d["kind"] == "Certificate")
    );
    let controller = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "lanyard-controller")
        .unwrap();
    assert_eq!(controller["spec"]["replicas"], 3);
}

#[test]
fn install_refuses_bad_values_and_prints_nothing() {
    let scratch = Scratch::new();
    scratch.ca_init("certs", &[]).success();
    scratch.ca_init("other", &[]).success();
    refused(
        &scratch,
        &["--set", "controler.replicas=2"],
        "unknown field `controler`",
    );
    refused(
        &scratch,
        &["--set", "controller.replicas=none"],
        "controller.replicas",
    );
    refused(
        &scratch,
        &["--set", "identity.issuer.issuanceLifetime=24"],
        "missing a unit",
    );
    refused(&scratch, &["-n", "Linkerd"], "namespace `Linkerd`");
    refused(
        &scratch,
        &["--identity-trust-anchors-file", "certs/ca.crt"],
        "--identity-issuer-certificate-file",
    );
    // An issuer its anchors did not sign.
    refused(
        &scratch,
        &bring("other", "certs", "certs"),
        "the identity issuer given",
    );
    // A key that is not the issuer's.
    refused(
        &scratch,
        &bring("certs", "certs", "other"),
        "the identity issuer given",
    );
    refused(&scratch, &["-f", "missing.yaml"], "missing.yaml");
    // An issuer named for another namespace's identity domain.
    refused(
        &scratch,
        &[
            vec!["-n".to_string(), "mesh".to_string()],
            bring("certs", "certs", "certs"),
        ]
        .concat(),
        "the issuer certificate is for identity.linkerd.cluster.local",
    );
}
