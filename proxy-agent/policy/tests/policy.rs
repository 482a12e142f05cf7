//! Linkerd's policy resources as Lanyard's proxy reads them: the guides'
//! manifests, wildcard and identityRef matching, network authentication,
//! default policies, routes, and errors that name the document and field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use lanyard_policy::{
    Client, Decision, DefaultPolicy, HttpRequest, Manifests, Policy, PolicyErrors, PolicyLabels,
    PolicyOptions, PolicyRef, Verdict, Workload,
};

fn build(yaml: &str) -> Result<Policy, PolicyErrors> {
    build_with(yaml, PolicyOptions::default())
}

fn build_with(yaml: &str, options: PolicyOptions) -> Result<Policy, PolicyErrors> {
    let mut manifests = Manifests::new();
    manifests.add_yaml(Path::new("policy.yaml"), yaml);
    manifests.build(&options)
}

fn guide(name: &str) -> Result<Policy, PolicyErrors> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guide")
        .join(name);
    let mut manifests = Manifests::new();
    manifests.add_yaml(&path, &std::fs::read_to_string(&path).unwrap());
    manifests.build(&PolicyOptions::default())
}

fn identity(sa: &str, ns: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.linkerd.cluster.local")
}

fn meshed(id: &str) -> Client {
    Client {
        identity: Some(id.to_string()),
        ip: "10.1.2.3".parse().unwrap(),
    }
}

fn plain(ip: &str) -> Client {
    Client {
        identity: None,
        ip: ip.parse::<IpAddr>().unwrap(),
    }
}

fn pod(namespace: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: namespace.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        named_ports: BTreeMap::new(),
        default_policy: None,
    }
}

fn verdict(policy: &Policy, ns: &str, server: &str, client: &Client) -> Verdict {
    policy
        .authorize_server(ns, server, client, None)
        .unwrap_or_else(|| panic!("no Server {ns}/{server}"))
        .verdict
}

#[test]
fn the_guides_three_tier_example_lets_only_the_api_server_reach_postgres() {
    let policy = guide("three-tier.yaml").unwrap();
    let db = pod("data", &[("app", "postgres")]);
    let allowed = policy.authorize(&db, 5432, &meshed(&identity("api-server", "backend")), None);
    assert_eq!(
        allowed,
        Decision {
            verdict: Verdict::Allow,
            server: Some("postgres-server".into()),
            authz: "postgres-auth".into(),
            route: None,
            audit: false,
            labels: PolicyLabels {
                server: resource("policy.linkerd.io", "server", "postgres-server"),
                route: PolicyRef::default_route(),
                authz: Some(resource(
                    "policy.linkerd.io",
                    "authorizationpolicy",
                    "postgres-auth"
                )),
            },
        }
    );
    let other = policy.authorize(&db, 5432, &meshed(&identity("web", "frontend")), None);
    assert_eq!(other.verdict, Verdict::Deny);
    assert_eq!(
        &*other.authz, "default:deny",
        "a Server with no matching authorization denies"
    );
    assert_eq!(
        policy
            .authorize(&db, 5432, &plain("10.0.0.9"), None)
            .verdict,
        Verdict::Deny
    );
    // Another port of the pod is not covered: the default policy decides.
    assert_eq!(
        &*policy.authorize(&db, 9999, &plain("10.0.0.9"), None).authz,
        "default:all-unauthenticated"
    );
}

#[test]
fn the_guides_monitoring_example_admits_prometheus_on_the_metrics_port_only() {
    let policy = guide("monitoring.yaml").unwrap();
    let prometheus = meshed(&identity("prometheus", "monitoring"));
    assert_eq!(
        verdict(&policy, "backend", "metrics-server", &prometheus),
        Verdict::Allow
    );
    let grafana = meshed(&identity("grafana", "monitoring"));
    assert_eq!(
        verdict(&policy, "backend", "metrics-server", &grafana),
        Verdict::Deny
    );
}

#[test]
fn the_guides_mesh_tls_examples_all_build() {
    guide("meshtls-examples.yaml").unwrap();
}

#[test]
fn a_server_target_in_the_core_group_is_refused_naming_the_document_and_field() {
    let errors = guide("basic-group-core.yaml").unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert_eq!(e.document, 2);
    assert_eq!(e.field.as_deref(), Some("spec.targetRef.group"));
    let text = e.to_string();
    assert!(
        text.contains("AuthorizationPolicy backend/api-server-policy"),
        "{text}"
    );
    assert!(text.contains("use `policy.linkerd.io`"), "{text}");
    // With the group fixed, it works.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guide/basic-group-core.yaml");
    let fixed = std::fs::read_to_string(path)
        .unwrap()
        .replace("group: core", "group: policy.linkerd.io");
    let policy = build(&fixed).unwrap();
    let api = pod("backend", &[("app", "api-server")]);
    let web = meshed(&identity("web-frontend", "frontend"));
    assert_eq!(
        policy.authorize(&api, 8080, &web, None).verdict,
        Verdict::Allow
    );
}

#[test]
fn a_reference_to_an_object_that_does_not_exist_is_an_error() {
    let errors = guide("multi-tenant.yaml").unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("spec.targetRef.name: Server `tenant-a/tenant-a-api` does not exist"),
        "{text}"
    );
    let errors = build(
        r#"
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web, namespace: ns}
spec: {podSelector: {matchLabels: {app: web}}, port: 80}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: ns}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: web}
  requiredAuthenticationRefs:
    - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: nobody}
"#,
    )
    .unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("document 2 (AuthorizationPolicy ns/p): spec.requiredAuthenticationRefs[0].name: MeshTLSAuthentication `ns/nobody` does not exist"),
        "{text}"
    );
}

const SERVER: &str = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  port: http
  proxyProtocol: HTTP/1
"#;

/// Two HTTPRoutes on the Server `api` (`health`, GET /healthz, under
/// `policy.linkerd.io`; `orders`, /orders, under the Gateway API), each
/// with its AuthorizationPolicy: health for all, orders for `front/web`.
const ROUTES: &str = r#"apiVersion: policy.linkerd.io/v1beta3
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
    - {kind: ServiceAccount, name: web, namespace: front}
"#;

fn with_authn(authn: &str) -> Policy {
    build(&format!(
        r#"{SERVER}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: api}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: who}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: who, namespace: shop}}
spec:
{authn}
"#
    ))
    .unwrap()
}

#[test]
fn identity_matching() {
    // (what the MeshTLSAuthentication says, who calls, allowed?)
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "an exact identity admits exactly it",
            "  identities: [web.front.serviceaccount.identity.linkerd.cluster.local]",
            "web.front",
            true,
        ),
        (
            "an exact identity refuses its neighbour",
            "  identities: [web.front.serviceaccount.identity.linkerd.cluster.local]",
            "api.front",
            false,
        ),
        (
            "a namespace wildcard admits every account in it",
            "  identities: ['*.front.serviceaccount.identity.linkerd.cluster.local']",
            "anything.front",
            true,
        ),
        (
            "a namespace wildcard refuses other namespaces",
            "  identities: ['*.front.serviceaccount.identity.linkerd.cluster.local']",
            "web.back",
            false,
        ),
        (
            "a wildcard does not match a namespace that only ends the same",
            "  identities: ['*.front.serviceaccount.identity.linkerd.cluster.local']",
            "web.storefront",
            false,
        ),
        (
            "a bare star admits every meshed client",
            "  identities: ['*']",
            "x.y",
            true,
        ),
        (
            "a ServiceAccount ref names one account",
            "  identityRefs: [{kind: ServiceAccount, name: web, namespace: front}]",
            "web.front",
            true,
        ),
        (
            "a ServiceAccount ref without namespace means the policy's own",
            "  identityRefs: [{kind: ServiceAccount, name: web}]",
            "web.shop",
            true,
        ),
        (
            "a ServiceAccount ref without namespace refuses other namespaces",
            "  identityRefs: [{kind: ServiceAccount, name: web}]",
            "web.front",
            false,
        ),
        (
            "a Namespace ref admits all of that namespace",
            "  identityRefs: [{kind: Namespace, name: front}]",
            "db.front",
            true,
        ),
        (
            "a Namespace ref refuses others",
            "  identityRefs: [{kind: Namespace, name: front}]",
            "db.back",
            false,
        ),
    ];
    let api = Workload {
        named_ports: [("http".to_string(), 8080)].into(),
        ..pod("shop", &[("app", "api")])
    };
    for (sentence, authn, caller, allowed) in cases {
        let policy = with_authn(authn);
        let (sa, ns) = caller.split_once('.').unwrap();
        let decision = policy.authorize(&api, 8080, &meshed(&identity(sa, ns)), None);
        assert_eq!(
            decision.verdict == Verdict::Allow,
            *allowed,
            "{sentence}: {decision:?}"
        );
        // Never an unauthenticated client, whatever the list says.
        let anonymous = policy.authorize(&api, 8080, &plain("10.0.0.1"), None);
        assert_eq!(anonymous.verdict, Verdict::Deny, "{sentence}: plaintext");
    }
}

#[test]
fn malformed_identities_are_refused_naming_the_entry() {
    let cases: &[(&str, &str)] = &[
        (
            "  identities: ['web.*.serviceaccount.identity.linkerd.cluster.local']",
            "spec.identities[0]",
        ),
        ("  identities: ['*.']", "spec.identities[0]"),
        (
            "  identities: [ok.ns.serviceaccount.identity.linkerd.cluster.local, 'not an identity']",
            "spec.identities[1]",
        ),
        ("  identities: []", "spec"),
        (
            "  identityRefs: [{kind: Pod, name: x}]",
            "spec.identityRefs[0].kind",
        ),
        (
            "  identityRefs: [{group: policy.linkerd.io, kind: ServiceAccount, name: x}]",
            "spec.identityRefs[0].group",
        ),
        ("  identitees: ['*']", "spec.identitees"),
    ];
    for (authn, field) in cases {
        let yaml = format!(
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {{name: who, namespace: shop}}\nspec:\n{authn}\n"
        );
        let errors = build(&yaml).unwrap_err();
        assert_eq!(
            errors.0[0].field.as_deref(),
            Some(*field),
            "{authn}: {errors}"
        );
    }
}

#[test]
fn network_authentication_admits_its_networks_minus_exceptions() {
    let policy = build(&format!(
        r#"{SERVER}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: office, namespace: shop}}
spec:
  networks:
    - cidr: 192.168.0.0/16
      except: [192.168.9.0/24]
    - cidr: 2001:db8::/32
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: office-only, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: api}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: NetworkAuthentication, name: office}}
"#
    ))
    .unwrap();
    for (ip, allowed) in [
        ("192.168.1.1", true),
        ("192.168.9.1", false),
        ("10.0.0.1", false),
        ("2001:db8::1", true),
    ] {
        let d = policy
            .authorize_server("shop", "api", &plain(ip), None)
            .unwrap();
        assert_eq!(d.verdict == Verdict::Allow, allowed, "{ip}");
    }
    let bad = build(
        "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: office}\nspec: {networks: [{cidr: 10.0.0.0/33}]}\n",
    )
    .unwrap_err();
    assert_eq!(bad.0[0].field.as_deref(), Some("spec.networks[0].cidr"));
}

#[test]
fn default_policies() {
    let policy = build("").unwrap();
    let inside_meshed = meshed("a.b.serviceaccount.identity.linkerd.cluster.local");
    let outside_meshed = Client {
        ip: "8.8.8.8".parse().unwrap(),
        ..inside_meshed.clone()
    };
    let inside_plain = plain("10.0.0.1");
    let outside_plain = plain("8.8.8.8");
    // (policy, [inside meshed, outside meshed, inside plain, outside plain])
    let table = [
        (DefaultPolicy::AllUnauthenticated, [true, true, true, true]),
        (DefaultPolicy::AllAuthenticated, [true, true, false, false]),
        (
            DefaultPolicy::ClusterAuthenticated,
            [true, false, false, false],
        ),
        (
            DefaultPolicy::ClusterUnauthenticated,
            [true, false, true, false],
        ),
        (DefaultPolicy::Deny, [false, false, false, false]),
        (DefaultPolicy::Audit, [true, true, true, true]),
    ];
    for (default, expected) in table {
        let workload = Workload {
            default_policy: Some(default),
            ..pod("ns", &[])
        };
        for (client, allowed) in [
            &inside_meshed,
            &outside_meshed,
            &inside_plain,
            &outside_plain,
        ]
        .into_iter()
        .zip(expected)
        {
            let d = policy.authorize(&workload, 80, client, None);
            assert_eq!(
                d.verdict == Verdict::Allow,
                allowed,
                "{default} for {client:?}"
            );
            assert_eq!(*d.authz, format!("default:{default}"));
            assert_eq!(d.audit, default == DefaultPolicy::Audit);
        }
    }
    assert!(
        "allow-all"
            .parse::<DefaultPolicy>()
            .unwrap_err()
            .contains("cluster-authenticated")
    );
}

#[test]
fn routes_authorize_per_path_and_method_and_unmatched_requests_get_no_route() {
    let policy = build(&format!("{SERVER}\n---\n{ROUTES}")).unwrap();
    let ask = |client: &Client, path: &str, method: &str| {
        policy
            .authorize_server("shop", "api", client, Some(&HttpRequest { path, method }))
            .unwrap()
    };
    let web = meshed(&identity("web", "front"));
    let anon = plain("10.0.0.1");
    let d = ask(&anon, "/healthz", "GET");
    assert_eq!(
        (d.verdict, d.route.as_deref(), &*d.authz),
        (Verdict::Allow, Some("health"), "health-for-all")
    );
    assert_eq!(ask(&anon, "/healthz", "POST").verdict, Verdict::NoRoute);
    assert_eq!(ask(&web, "/orders/7", "POST").verdict, Verdict::Allow);
    assert_eq!(ask(&web, "/orders", "GET").verdict, Verdict::Allow);
    assert_eq!(ask(&web, "/ordersx", "GET").verdict, Verdict::NoRoute);
    let denied = ask(&anon, "/orders/7", "GET");
    assert_eq!(
        (denied.verdict, denied.route.as_deref()),
        (Verdict::Deny, Some("orders"))
    );
}

#[test]
fn namespace_targets_cover_every_server_and_audit_servers_allow_what_they_would_deny() {
    let policy = build(&format!(
        r#"{SERVER}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: admin, namespace: shop}}
spec:
  podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [backend]}}]}}
  port: 9990
  accessPolicy: audit
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: meshed-only, namespace: shop}}
spec:
  targetRef: {{kind: Namespace, name: shop}}
  requiredAuthenticationRefs:
    - {{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: any}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: any, namespace: shop}}
spec: {{identities: ['*']}}
"#
    ))
    .unwrap();
    let someone = meshed(&identity("x", "y"));
    assert_eq!(verdict(&policy, "shop", "api", &someone), Verdict::Allow);
    assert_eq!(verdict(&policy, "shop", "admin", &someone), Verdict::Allow);
    assert_eq!(
        verdict(&policy, "shop", "api", &plain("10.0.0.1")),
        Verdict::Deny
    );
    let audited = policy
        .authorize_server("shop", "admin", &plain("10.0.0.1"), None)
        .unwrap();
    assert_eq!((audited.verdict, audited.audit), (Verdict::Allow, true));
    // matchExpressions select the pod.
    let backend = pod("shop", &[("tier", "backend")]);
    assert_eq!(
        policy
            .authorize(&backend, 9990, &someone, None)
            .server
            .as_deref(),
        Some("admin")
    );
}

#[test]
fn wrong_kinds_versions_and_fields_are_named() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\nmetadata: {name: x}\nspec: {}\n",
            "kind",
        ),
        (
            "apiVersion: policy.linkerd.io/v9\nkind: Server\nmetadata: {name: x}\nspec: {}\n",
            "apiVersion",
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: x}\nspec: {podSelector: {}, port: 80, proxyProtocol: HTTP/3}\n",
            "spec.proxyProtocol",
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: x}\nspec: {podSelector: {}, port: 80, portt: 1}\n",
            "spec.portt",
        ),
        (
            "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: x}\nspec: {port: 80}\n",
            "spec.podSelector",
        ),
        (
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {targetRef: {kind: Deployment, name: x}}\n",
            "spec.targetRef.kind",
        ),
    ];
    for (yaml, field) in cases {
        let errors = build(yaml).unwrap_err();
        assert_eq!(
            errors.0[0].field.as_deref(),
            Some(*field),
            "{yaml}: {errors}"
        );
    }
    assert!(
        build("key: [unclosed")
            .unwrap_err()
            .to_string()
            .contains("not valid YAML")
    );
    // A route match Lanyard cannot evaluate is refused, not ignored.
    let route = format!(
        "{SERVER}\n---\napiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{group: policy.linkerd.io, kind: Server, name: api}}]\n  rules:\n    - matches: [{{headers: [{{name: x-admin, value: \"1\"}}]}}]\n"
    );
    let errors = build(&route).unwrap_err();
    assert_eq!(
        errors.0[0].field.as_deref(),
        Some("spec.rules[0].matches[0].headers"),
        "{errors}"
    );
}

#[test]
fn a_version_lanyard_does_not_read_is_refused_naming_the_versions_it_does() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "names v1alpha1 for the guide's v1beta1 AuthorizationPolicy",
            "policy.linkerd.io/v1beta1",
            "AuthorizationPolicy",
        ),
        (
            "names v1alpha1 for the guide's v1beta1 MeshTLSAuthentication",
            "policy.linkerd.io/v1beta1",
            "MeshTLSAuthentication",
        ),
        (
            "names v1alpha1 for a v1beta1 NetworkAuthentication",
            "policy.linkerd.io/v1beta1",
            "NetworkAuthentication",
        ),
        (
            "names the three Server versions for a v9 Server",
            "policy.linkerd.io/v9",
            "Server",
        ),
        (
            "names Linkerd's four HTTPRoute versions for a v2 HTTPRoute",
            "policy.linkerd.io/v2",
            "HTTPRoute",
        ),
        (
            "names the Gateway API's two HTTPRoute versions for its v1alpha2",
            "gateway.networking.k8s.io/v1alpha2",
            "HTTPRoute",
        ),
    ];
    let expected = |kind: &str, group: &str| match (group, kind) {
        ("policy.linkerd.io", "Server") => {
            "use one of `policy.linkerd.io/v1beta1`, `policy.linkerd.io/v1beta2`, `policy.linkerd.io/v1beta3`"
        }
        ("policy.linkerd.io", "HTTPRoute") => {
            "use one of `policy.linkerd.io/v1alpha1`, `policy.linkerd.io/v1beta1`, `policy.linkerd.io/v1beta2`, `policy.linkerd.io/v1beta3`"
        }
        ("gateway.networking.k8s.io", "HTTPRoute") => {
            "use one of `gateway.networking.k8s.io/v1`, `gateway.networking.k8s.io/v1beta1`"
        }
        _ => "use `policy.linkerd.io/v1alpha1`",
    };
    for (name, api_version, kind) in cases {
        let yaml =
            format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n");
        let errors = build(&yaml).unwrap_err();
        let error = &errors.0[0];
        assert_eq!(
            error.field.as_deref(),
            Some("apiVersion"),
            "{name}: {errors}"
        );
        let group = api_version.split_once('/').unwrap().0;
        assert_eq!(
            error.message,
            format!(
                "`{api_version}` is not a version of {kind} that Lanyard reads; {}",
                expected(kind, group)
            ),
            "{name}"
        );
    }
}

fn resource(group: &str, kind: &str, name: &str) -> PolicyRef {
    PolicyRef {
        group: group.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

#[test]
fn decisions_are_labelled_as_linkerds_proxy_labels_them() {
    let policy = build(&format!(
        r#"{SERVER}
---
{ROUTES}---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: admin, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: api}}}}
  port: 9990
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: admin-web, namespace: shop}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: admin}}
  requiredAuthenticationRefs:
    - {{kind: ServiceAccount, name: web, namespace: front}}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {{name: debug, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: api}}}}
  port: 9991
  accessPolicy: all-unauthenticated
"#
    ))
    .unwrap();
    let web = meshed(&identity("web", "front"));
    let anon = plain("10.0.0.1");
    let server = |name: &str| resource("policy.linkerd.io", "server", name);
    let route = |group: &str, name: &str| resource(group, "HTTPRoute", name);
    let authz = |name: &str| Some(resource("policy.linkerd.io", "authorizationpolicy", name));
    let default = PolicyRef::default_named;
    let on_server = |name: &str, client: &Client, path: &str| {
        policy
            .authorize_server(
                "shop",
                name,
                client,
                Some(&HttpRequest {
                    path,
                    method: "GET",
                }),
            )
            .unwrap()
            .labels
    };
    let on_port = |default_policy: DefaultPolicy, client: &Client| {
        let workload = Workload {
            default_policy: Some(default_policy),
            ..pod("shop", &[("app", "api")])
        };
        policy.authorize(&workload, 9999, client, None).labels
    };
    let cases: Vec<(&str, PolicyLabels, PolicyLabels)> = vec![
        (
            "an HTTPRoute of policy.linkerd.io, and the AuthorizationPolicy on it",
            on_server("api", &anon, "/healthz"),
            PolicyLabels {
                server: server("api"),
                route: route("policy.linkerd.io", "health"),
                authz: authz("health-for-all"),
            },
        ),
        (
            "an HTTPRoute of the Gateway API keeps its group",
            on_server("api", &web, "/orders/7"),
            PolicyLabels {
                server: server("api"),
                route: route("gateway.networking.k8s.io", "orders"),
                authz: authz("orders-for-web"),
            },
        ),
        (
            "a denial names the Server and route, and no authorization",
            on_server("api", &anon, "/orders/7"),
            PolicyLabels {
                server: server("api"),
                route: route("gateway.networking.k8s.io", "orders"),
                authz: None,
            },
        ),
        (
            "a request no route matches names the Server only",
            on_server("api", &web, "/elsewhere"),
            PolicyLabels {
                server: server("api"),
                route: PolicyRef::default_route(),
                authz: None,
            },
        ),
        (
            "a Server without routes has Linkerd's default route",
            on_server("admin", &web, "/"),
            PolicyLabels {
                server: server("admin"),
                route: default("default"),
                authz: authz("admin-web"),
            },
        ),
        (
            "a Server's accessPolicy that allows is the authorization",
            on_server("debug", &anon, "/"),
            PolicyLabels {
                server: server("debug"),
                route: default("default"),
                authz: Some(default("all-unauthenticated")),
            },
        ),
        (
            "a port no Server covers is labelled with the default policy",
            on_port(DefaultPolicy::AllAuthenticated, &web),
            PolicyLabels {
                server: default("all-authenticated"),
                route: default("default"),
                authz: Some(default("all-authenticated")),
            },
        ),
        (
            "a default policy that denies names no authorization",
            on_port(DefaultPolicy::AllAuthenticated, &anon),
            PolicyLabels {
                server: default("all-authenticated"),
                route: default("default"),
                authz: None,
            },
        ),
    ];
    for (case, got, want) in cases {
        assert_eq!(got, want, "{case}");
    }
    assert_eq!(
        default("audit"),
        resource("", "default", "audit"),
        "defaults have kind `default` and no group"
    );
    let pod = pod("shop", &[("app", "api")]);
    assert_eq!(policy.server_ref(&pod, 9990), server("admin"));
    assert_eq!(
        policy.server_ref(&pod, 9999),
        default("all-unauthenticated")
    );
}
