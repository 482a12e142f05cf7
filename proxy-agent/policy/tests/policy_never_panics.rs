//! The policy loader is fed manifests from outside the process (the
//! proxy's policy directory, `lanyard policy test -f`), so whatever text
//! arrives must load, build and evaluate without a panic: a policy that
//! answers, or errors that name the file and say what is wrong. The `policy`
//! fuzz target runs the same entry points under libFuzzer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use lanyard_policy::{
    Client, HttpRequest, Manifests, Policy, PolicyDir, PolicyErrors, PolicyOptions, PolicyReload,
    Verdict, Workload,
};
use proptest::prelude::*;

const FILE: &str = "p.yaml";

/// Every kind Lanyard reads, with the fields that take the most checking:
/// a named port, expressions, wildcard and ref identities, networks with
/// exceptions, routes under both groups and policies on each target.
const EVERY_KIND: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: api, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: api}
    matchExpressions: [{key: tier, operator: In, values: [web, backend]}]
  port: http
  proxyProtocol: HTTP/1
  accessPolicy: cluster-authenticated
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web, namespace: shop}
spec:
  identities: ["*.front.serviceaccount.identity.linkerd.cluster.local", "web.front.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: refs, namespace: shop}
spec:
  identityRefs: [{kind: ServiceAccount, name: web, namespace: front}, {kind: Namespace, name: ops}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: cluster, namespace: shop}
spec:
  networks: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16, 10.1.2.3]}, {cidr: "fd00::/8"}]
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: health, namespace: shop}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: api}]
  rules:
    - matches: [{path: {type: Exact, value: /healthz}, method: GET}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: api}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /orders}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: health-for-all, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: health}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-for-web, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders}
  requiredAuthenticationRefs:
    - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}
    - {group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ops, namespace: shop}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: api}
  requiredAuthenticationRefs:
    - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: refs}
    - {kind: ServiceAccount, name: admin}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: whole-namespace, namespace: shop}
spec:
  targetRef: {kind: Namespace, name: shop}
  requiredAuthenticationRefs:
    - {group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster}
"#;

/// Valid manifests that mutations start from: the one above and a guide's.
const SEEDS: [&str; 2] = [EVERY_KIND, include_str!("guide/three-tier.yaml")];

/// The `apiVersion` and `kind` lines of every kind Lanyard reads, and of
/// kinds it skips or refuses, to put random specs behind.
const HEADERS: [&str; 8] = [
    "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\n",
    "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\n",
    "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\n",
    "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\n",
    "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\n",
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n",
    "apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\n",
    "apiVersion: apps/v1\nkind: Deployment\n",
];

/// Names the objects take, so random objects refer to one another.
const NAMES: [&str; 4] = ["api", "web", "health", ""];

/// The spec fields of every kind, and values they take.
const FIELDS: [&str; 30] = [
    "podSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "port",
    "proxyProtocol",
    "accessPolicy",
    "externalWorkloadSelector",
    "targetRef",
    "requiredAuthenticationRefs",
    "group",
    "kind",
    "name",
    "namespace",
    "identities",
    "identityRefs",
    "networks",
    "cidr",
    "except",
    "parentRefs",
    "rules",
    "matches",
    "path",
    "type",
    "value",
    "method",
    "headers",
    "queryParams",
];
const WORDS: [&str; 24] = [
    "policy.linkerd.io",
    "gateway.networking.k8s.io",
    "core",
    "Server",
    "HTTPRoute",
    "MeshTLSAuthentication",
    "NetworkAuthentication",
    "ServiceAccount",
    "Namespace",
    "In",
    "Exists",
    "Exact",
    "PathPrefix",
    "HTTP/1",
    "opaque",
    "audit",
    "10.0.0.0/8",
    "::1",
    "*",
    "*.shop.serviceaccount.identity.linkerd.cluster.local",
    "/healthz",
    "GET",
    "api",
    "shop",
];

/// A YAML flow value built from the spec fields and their values, so that
/// most specs parse and reach the checks behind the parser.
fn yaml() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("[]".to_string()),
        any::<i32>().prop_map(|n| n.to_string()),
        prop::sample::select(&WORDS[..]).prop_map(|w| format!("'{w}'")),
        "[a-zA-Z0-9./*: -]{0,16}".prop_map(|s| format!("'{s}'")),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(&FIELDS[..]), inner), 0..5).prop_map(
                |fields| {
                    let fields: Vec<String> =
                        fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    format!("{{{}}}", fields.join(", "))
                }
            ),
        ]
    })
}

/// One way to damage a manifest.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Mutation::Flip(at, xor) if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= (*xor).max(1);
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(at, inserted) => {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, inserted.iter().copied());
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, xor)| Mutation::Flip(at, xor)),
        // YAML's own punctuation more often than chance would give it.
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                "[-:{}\\[\\],\"'*&!|>#\n ]{1,4}".prop_map(String::into_bytes),
            ],
        )
            .prop_map(|(at, inserted)| Mutation::Insert(at, inserted)),
    ]
}

/// Who asks, and for what: a policy that builds is asked about them all.
#[derive(Debug, Clone)]
struct Question {
    port: u16,
    identity: Option<String>,
    ip: IpAddr,
    request: Option<(String, String)>,
}

fn question() -> impl Strategy<Value = Question> {
    (
        prop_oneof![Just(8080u16), Just(5432), any::<u16>()],
        prop::option::of(prop_oneof![
            Just("web.front.serviceaccount.identity.linkerd.cluster.local".to_string()),
            Just("api-server.backend.serviceaccount.identity.linkerd.cluster.local".to_string()),
            "[a-z.*]{0,40}",
        ]),
        any::<IpAddr>(),
        prop::option::of((
            prop_oneof![Just("/healthz".to_string()), "/[a-z/]{0,20}", ".{0,20}"],
            prop_oneof![Just("GET".to_string()), "[A-Za-z]{0,8}"],
        )),
    )
        .prop_map(|(port, identity, ip, request)| Question {
            port,
            identity,
            ip,
            request,
        })
}

fn workloads() -> Vec<Workload> {
    let pod = |namespace: &str, labels: &[(&str, &str)]| Workload {
        namespace: namespace.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        named_ports: BTreeMap::from([("http".to_string(), 8080)]),
        default_policy: None,
    };
    vec![
        pod("shop", &[("app", "api"), ("tier", "web")]),
        pod("data", &[("app", "postgres")]),
        pod("default", &[]),
    ]
}

/// Asks a built policy everything the proxy and `lanyard policy test` ask.
fn evaluate(policy: &Policy, q: &Question) {
    let client = Client {
        identity: q.identity.clone(),
        ip: q.ip,
    };
    let request = q
        .request
        .as_ref()
        .map(|(path, method)| HttpRequest { path, method });
    for workload in workloads() {
        let decision = policy.authorize(&workload, q.port, &client, request.as_ref());
        assert!(
            !decision.audit || decision.verdict == Verdict::Allow,
            "audit only allows"
        );
        let _ = policy.server_ref(&workload, q.port);
        let _ = policy.server_protocol(&workload, q.port);
    }
    for (namespace, server) in [("shop", "api"), ("data", "postgres-server")] {
        let _ = policy.authorize_server(namespace, server, &client, request.as_ref());
    }
}

/// Refusals are errors naming the file, each saying what is wrong.
fn assert_named(errors: &PolicyErrors, file: &Path) {
    assert!(!errors.0.is_empty(), "refused with no error");
    for e in &errors.0 {
        assert_eq!(e.file, file, "{e}");
        assert!(
            !e.message.trim().is_empty(),
            "an error without a message: {e:?}"
        );
        assert!(
            e.to_string().starts_with(&file.display().to_string()),
            "{e}"
        );
    }
}

/// Loads `text` as the CLI does, builds it, and evaluates what builds.
fn check(text: &str, q: &Question) {
    let mut manifests = Manifests::new();
    manifests.add_yaml(Path::new(FILE), text);
    match manifests.build(&PolicyOptions::default()) {
        Ok(policy) => evaluate(&policy, q),
        Err(errors) => assert_named(&errors, Path::new(FILE)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), q in question()) {
        check(&String::from_utf8_lossy(&bytes), &q);
    }

    #[test]
    fn random_text_never_panics(text in ".{0,400}", q in question()) {
        check(&text, &q);
    }

    #[test]
    fn random_objects_of_every_kind_never_panic(
        documents in prop::collection::vec(
            (prop::sample::select(&HEADERS[..]), prop::sample::select(&NAMES[..]), yaml()),
            1..5,
        ),
        q in question(),
    ) {
        let text: Vec<String> = documents
            .iter()
            .map(|(header, name, spec)| {
                format!("{header}metadata: {{name: '{name}', namespace: shop}}\nspec: {spec}\n")
            })
            .collect();
        check(&text.join("---\n"), &q);
    }

    #[test]
    fn a_valid_manifest_truncated_flipped_or_stuffed_never_panics(
        seed in prop::sample::select(&SEEDS[..]),
        mutations in prop::collection::vec(mutation(), 1..6),
        q in question(),
    ) {
        let mut bytes = seed.as_bytes().to_vec();
        for m in &mutations {
            m.apply(&mut bytes);
        }
        check(&String::from_utf8_lossy(&bytes), &q);
    }
}

proptest! {
    // Each case writes a file; the loader behind it is the one above.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_policy_directory_of_random_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, &bytes).expect("write the manifest");
        match PolicyDir::new(dir.path(), PolicyOptions::default()).poll() {
            PolicyReload::Loaded(_) | PolicyReload::Unchanged => {}
            PolicyReload::Refused(errors) => assert_named(&errors, &file),
        }
    }
}

#[test]
fn the_seeds_build_so_mutations_start_from_a_valid_policy() {
    for seed in SEEDS {
        let mut manifests = Manifests::new();
        manifests.add_yaml(Path::new(FILE), seed);
        if let Err(errors) = manifests.build(&PolicyOptions::default()) {
            panic!("{errors}");
        }
    }
}
