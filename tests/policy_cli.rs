//! `lanyard policy validate` and `lanyard policy test` on the guides'
//! manifests, as a user would run them in CI.

mod support;

use support::Scratch;

fn guide(name: &str) -> String {
    format!(
        "{}/proxy-agent/policy/tests/guide/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn validate_accepts_good_manifests_and_names_the_field_of_a_bad_one() {
    let scratch = Scratch::new();
    let ran = scratch
        .lanyard(&[
            "policy",
            "validate",
            "-f",
            &guide("three-tier.yaml"),
            "-f",
            &guide("monitoring.yaml"),
        ])
        .success();
    assert!(ran.stdout.contains("valid"), "{}", ran.stdout);
    // A directory is read whole: the guide's multi-tenant file in it
    // references a Server that does not exist.
    scratch
        .lanyard(&["policy", "validate", "-f", &guide("")])
        .failure_saying("Server `tenant-a/tenant-a-api` does not exist");
    scratch
        .lanyard(&["policy", "validate", "-f", &guide("basic-group-core.yaml")])
        .failure_saying("document 2 (AuthorizationPolicy backend/api-server-policy): spec.targetRef.group: `core` is not the group of Server; use `policy.linkerd.io`");
    scratch
        .lanyard(&["policy", "validate", "-f", &guide("multi-tenant.yaml")])
        .failure_saying("Server `tenant-a/tenant-a-api` does not exist");
}

#[test]
fn test_prints_the_decision_and_what_made_it_and_expect_sets_the_exit_code() {
    let scratch = Scratch::new();
    let file = guide("three-tier.yaml");
    let ask = |identity: Option<&str>, expect: &str| {
        let mut args = vec![
            "policy",
            "test",
            "-f",
            &file,
            "-n",
            "data",
            "--server",
            "postgres-server",
            "--expect",
            expect,
        ];
        if let Some(identity) = identity {
            args.extend(["--identity", identity]);
        }
        scratch.lanyard(&args)
    };
    let api = "api-server.backend.serviceaccount.identity.linkerd.cluster.local";
    let ran = ask(Some(api), "allow").success();
    assert!(
        ran.stdout.contains("allow: api-server.backend.serviceaccount.identity.linkerd.cluster.local on Server data/postgres-server: allowed by AuthorizationPolicy `postgres-auth`"),
        "{}",
        ran.stdout
    );
    let web = "web.frontend.serviceaccount.identity.linkerd.cluster.local";
    let ran = ask(Some(web), "deny").success();
    assert!(ran.stdout.starts_with("deny:"), "{}", ran.stdout);
    let ran = ask(Some(web), "allow").failure_saying("expected allow, got deny");
    assert!(ran.stdout.starts_with("deny:"), "{}", ran.stdout);
    ask(Some(api), "deny").failure_saying("expected deny, got allow");
    let ran = ask(None, "deny").success();
    assert!(
        ran.stdout.contains("an unauthenticated client"),
        "{}",
        ran.stdout
    );
    ask(Some("not-an-identity"), "deny").failure_saying("--identity `not-an-identity`");
    scratch
        .lanyard(&[
            "policy", "test", "-f", &file, "-n", "data", "--server", "nope",
        ])
        .failure_saying("no Server `data/nope` in the given files");
}

#[test]
fn validate_refuses_the_guides_v1beta1_authorization_policy_naming_v1alpha1() {
    let scratch = Scratch::new();
    scratch.write(
        "authz.yaml",
        "apiVersion: policy.linkerd.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: web}\n  requiredAuthenticationRefs: []\n",
    );
    scratch
        .lanyard(&["policy", "validate", "-f", "authz.yaml"])
        .failure_saying("apiVersion: `policy.linkerd.io/v1beta1` is not a version of AuthorizationPolicy that Lanyard reads; use `policy.linkerd.io/v1alpha1`");
}
