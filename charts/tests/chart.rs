//! The Helm chart and `lanyard install`: the chart in the tree is the
//! generated one; Helm's own engine (Helm v4's library through PyPI's
//! `helm-python-sdk`, `pip install helm-python-sdk==0.2.2`) renders the
//! same objects `lanyard install` prints, and lints the chart clean; every
//! object is valid for its kind; the RBAC is exactly the table below; the
//! pods meet the `restricted` Pod Security Standard.
//!
//! Without Python's helm-python-sdk the Helm tests fail, naming the pip
//! command, unless `LANYARD_SKIP_HELM=1`, which prints a SKIPPED line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_chart::values::{self, Values};
use serde_json::{Value, json};

fn now() -> DateTime<Utc> {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lanyard")
}

/// Values from `--set` assignments over the defaults.
fn values_with(sets: &[&str]) -> Value {
    let mut values = Values::default_json();
    for assignment in sets {
        values::set(&mut values, assignment).unwrap();
    }
    values
}

/// An anchor, and an issuer it signed, as PEM: what a user brings.
fn brought_issuer() -> (String, String, String) {
    use lanyard_crds::identity::IdentityDomain;
    use lanyard_issuer::{KeyAlgorithm, TrustAnchor};
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::days(3650),
        KeyAlgorithm::EcdsaP256,
        now(),
    )
    .unwrap();
    let (issuer, _) = anchor
        .issue_identity_issuer(
            &domain,
            TimeDelta::days(365),
            KeyAlgorithm::EcdsaP256,
            now(),
        )
        .unwrap();
    (
        anchor.certificate().to_pem(),
        issuer.certificate().to_pem(),
        issuer.key().to_pkcs8_pem().to_string(),
    )
}

fn brought_values(extra: &[&str]) -> Value {
    let (anchors, crt, key) = brought_issuer();
    let mut values = values_with(extra);
    values::set_string(&mut values, "identity.trustAnchorsPEM", anchors).unwrap();
    values::set_string(&mut values, "identity.issuer.tls.crtPEM", crt).unwrap();
    values::set_string(&mut values, "identity.issuer.tls.keyPEM", key).unwrap();
    values
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for object in objects {
        let key = key_of(&object);
        assert!(map.insert(key.clone(), object).is_none(), "{key} twice");
    }
    map
}

#[test]
fn the_chart_in_the_tree_is_the_generated_one() {
    let dir = chart_dir();
    let regenerate =
        "run `cargo run -p lanyard-chart --example generate` and commit charts/lanyard";
    let mut expected: BTreeMap<String, String> = lanyard_chart::chart_files().into_iter().collect();
    for (path, text) in &expected {
        let on_disk = std::fs::read_to_string(dir.join(path))
            .unwrap_or_else(|e| panic!("charts/lanyard/{path}: {e}; {regenerate}"));
        assert!(
            &on_disk == text,
            "charts/lanyard/{path} differs from what lanyard-chart generates; {regenerate}"
        );
    }
    // No template left over from an older generation.
    for entry in std::fs::read_dir(dir.join("templates")).unwrap() {
        let name = format!("templates/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            expected.remove(&name).is_some(),
            "charts/lanyard/{name} is not generated; {regenerate}"
        );
    }
}

#[test]
fn the_chart_crds_are_lanyard_crds() {
    let in_chart = std::fs::read_to_string(chart_dir().join("crds/lanyard.dev.yaml")).unwrap();
    assert_eq!(
        in_chart,
        lanyard_crds::api::custom_resource_definitions_yaml()
    );
    let in_crds = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/lanyard.dev.yaml"),
    )
    .unwrap();
    assert_eq!(
        in_chart, in_crds,
        "crds/lanyard.dev.yaml and the chart's CRDs differ"
    );
}

/// Every object parses into its kind's type, and writing the typed object
/// back gives the same JSON: no field is unknown to the kind.
fn check_typed<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
    let typed: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", key_of(object)));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back,
        object,
        "{}: fields the kind does not have",
        key_of(object)
    );
}

fn check_valid(object: &Value) {
    use k8s_openapi::api::{apps, core, policy, rbac};
    match object["kind"].as_str().unwrap() {
        "ServiceAccount" => check_typed::<core::v1::ServiceAccount>(object),
        "Service" => check_typed::<core::v1::Service>(object),
        "Secret" => check_typed::<core::v1::Secret>(object),
        "Deployment" => check_typed::<apps::v1::Deployment>(object),
        "PodDisruptionBudget" => check_typed::<policy::v1::PodDisruptionBudget>(object),
        "ClusterRole" => check_typed::<rbac::v1::ClusterRole>(object),
        "ClusterRoleBinding" => check_typed::<rbac::v1::ClusterRoleBinding>(object),
        "Role" => check_typed::<rbac::v1::Role>(object),
        "RoleBinding" => check_typed::<rbac::v1::RoleBinding>(object),
        "ClusterIssuer" => {
            let issuer: lanyard_crds::api::ClusterIssuer =
                serde_json::from_value(object.clone()).unwrap();
            issuer.spec.config.validate().unwrap();
        }
        "Certificate" => {
            let certificate: lanyard_crds::api::Certificate =
                serde_json::from_value(object.clone()).unwrap();
            certificate.spec.validate().unwrap();
        }
        "TrustBundle" => {
            let bundle: lanyard_crds::trust_bundle::TrustBundle =
                serde_json::from_value(object.clone()).unwrap();
            bundle.spec.validate().unwrap();
        }
        "PrometheusRule" => {
            let groups = object["spec"]["groups"].as_array().unwrap();
            assert!(!groups.is_empty());
            for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
                assert!(
                    rule["alert"].is_string() && rule["expr"].is_string(),
                    "{rule}"
                );
            }
        }
        "ServiceMonitor" => {
            assert!(object["spec"]["selector"]["matchLabels"].is_object());
            for endpoint in object["spec"]["endpoints"].as_array().unwrap() {
                assert_eq!(endpoint["port"], "admin");
            }
        }
        other => panic!("an object of kind {other} that nothing checks"),
    }
}

#[test]
fn every_object_is_valid_for_its_kind() {
    let cases = [
        values_with(&[]),
        values_with(&[
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
        ]),
        brought_values(&[]),
    ];
    for values in &cases {
        for object in lanyard_chart::render(values, "linkerd", now()).unwrap() {
            check_valid(&object);
        }
    }
}

#[test]
fn lanyard_makes_the_issuer_unless_one_is_brought() {
    let made = by_key(lanyard_chart::render(&values_with(&[]), "linkerd", now()).unwrap());
    let anchor = &made["ClusterIssuer//linkerd-trust-anchor"];
    assert_eq!(
        anchor["metadata"]["annotations"]["lanyard.dev/generate-anchor"],
        "root.linkerd.cluster.local"
    );
    let issuer = &made["Certificate/linkerd/linkerd-identity-issuer"];
    assert_eq!(
        issuer["spec"]["commonName"],
        "identity.linkerd.cluster.local"
    );
    assert_eq!(issuer["spec"]["duration"], "8760h0m0s");
    assert_eq!(issuer["spec"]["renewBefore"], "720h0m0s");
    assert!(!made.contains_key("Secret/linkerd/linkerd-identity-issuer"));
    let bundle = &made["TrustBundle//linkerd-identity-trust-roots"];
    assert_eq!(
        bundle["spec"]["target"]["namespaceSelector"]["matchLabels"],
        json!({"kubernetes.io/metadata.name": "linkerd"})
    );

    let brought = by_key(lanyard_chart::render(&brought_values(&[]), "linkerd", now()).unwrap());
    assert!(!brought.contains_key("ClusterIssuer//linkerd-trust-anchor"));
    assert!(!brought.contains_key("Certificate/linkerd/linkerd-identity-issuer"));
    let secret = &brought["Secret/linkerd/linkerd-identity-issuer"];
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(
        secret["stringData"]["tls.key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let bundle = &brought["TrustBundle//linkerd-identity-trust-roots"];
    assert_eq!(
        bundle["spec"]["sources"][0]["inLine"],
        secret["stringData"]["ca.crt"]
    );
}

#[test]
fn bad_values_change_nothing_and_say_what_was_wrong() {
    let refused = |values: &Value, namespace: &str| {
        lanyard_chart::render(values, namespace, now())
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&values_with(&[]), "Not_A_Namespace").contains("Not_A_Namespace"));
    let mut partial = values_with(&[]);
    values::set_string(&mut partial, "identity.issuer.tls.crtPEM", "x".into()).unwrap();
    assert!(refused(&partial, "linkerd").contains("go together (given: crtPEM)"));
    // An issuer that its anchors did not sign.
    let (_, crt, key) = brought_issuer();
    let (other_anchor, _, _) = brought_issuer();
    let mut unrelated = values_with(&[]);
    values::set_string(&mut unrelated, "identity.trustAnchorsPEM", other_anchor).unwrap();
    values::set_string(&mut unrelated, "identity.issuer.tls.crtPEM", crt).unwrap();
    values::set_string(&mut unrelated, "identity.issuer.tls.keyPEM", key).unwrap();
    let message = refused(&unrelated, "linkerd");
    assert!(message.contains("the identity issuer given"), "{message}");
    // An issuer named for the identity domain of another namespace.
    let message = refused(&brought_values(&[]), "mesh");
    assert!(
        message.contains("is for identity.linkerd.cluster.local"),
        "{message}"
    );
    // A key that is not PEM.
    let mut garbage = brought_values(&[]);
    values::set_string(
        &mut garbage,
        "identity.issuer.tls.keyPEM",
        "not a key".into(),
    )
    .unwrap();
    assert!(refused(&garbage, "linkerd").contains("identity.issuer.tls.keyPEM"));
}

/// The RBAC each component gets, written out here so that a widened rule
/// fails: (kind, name, apiGroup, resources, verbs, resourceNames).
const RBAC: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "ClusterRole",
        "lanyard-controller",
        "lanyard.dev",
        "certificates,issuers,clusterissuers,trustbundles",
        "get,list,watch",
        "",
    ),
    (
        "ClusterRole",
        "lanyard-controller",
        "lanyard.dev",
        "certificates/status,issuers/status,clusterissuers/status,trustbundles/status",
        "patch",
        "",
    ),
    (
        "ClusterRole",
        "lanyard-controller",
        "",
        "secrets",
        "get,list,watch,create,patch,update,delete",
        "",
    ),
    (
        "ClusterRole",
        "lanyard-controller",
        "",
        "configmaps",
        "get,list,watch,create,patch,delete",
        "",
    ),
    (
        "ClusterRole",
        "lanyard-controller",
        "",
        "namespaces",
        "list,watch",
        "",
    ),
    (
        "Role",
        "lanyard-controller",
        "coordination.k8s.io",
        "leases",
        "get,create,update",
        "",
    ),
    (
        "ClusterRole",
        "lanyard-identity",
        "authentication.k8s.io",
        "tokenreviews",
        "create",
        "",
    ),
    (
        "Role",
        "linkerd-identity",
        "",
        "secrets",
        "get,list,watch",
        "linkerd-identity-issuer",
    ),
];

#[test]
fn the_rbac_is_exactly_the_table() {
    let objects = lanyard_chart::render(&values_with(&[]), "linkerd", now()).unwrap();
    let join = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut rendered = Vec::new();
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        for rule in object["rules"].as_array().unwrap() {
            assert_eq!(rule["apiGroups"].as_array().unwrap().len(), 1, "{rule}");
            rendered.push((
                kind.to_string(),
                object["metadata"]["name"].as_str().unwrap().to_string(),
                rule["apiGroups"][0].as_str().unwrap().to_string(),
                join(&rule["resources"]),
                join(&rule["verbs"]),
                join(&rule["resourceNames"]),
            ));
        }
    }
    let expected: Vec<_> = RBAC
        .iter()
        .map(|(a, b, c, d, e, f)| {
            (
                a.to_string(),
                b.to_string(),
                c.to_string(),
                d.to_string(),
                e.to_string(),
                f.to_string(),
            )
        })
        .collect();
    assert_eq!(rendered, expected);
    // Each role is bound to its component's ServiceAccount, and only that.
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        if kind != "ClusterRoleBinding" && kind != "RoleBinding" {
            continue;
        }
        let account = match object["roleRef"]["name"].as_str().unwrap() {
            "lanyard-controller" => "lanyard-controller",
            "lanyard-identity" | "linkerd-identity" => "linkerd-identity",
            other => panic!("a binding of {other}"),
        };
        assert_eq!(
            object["subjects"],
            json!([{"kind": "ServiceAccount", "name": account, "namespace": "linkerd"}])
        );
    }
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    let objects = lanyard_chart::render(&values_with(&[]), "linkerd", now()).unwrap();
    let deployments: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 2);
    for deployment in deployments {
        let name = &deployment["metadata"]["name"];
        assert_eq!(deployment["spec"]["replicas"], 2, "{name}");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert!(
            pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
            "{name}"
        );
        assert!(
            pod["volumes"].is_null(),
            "{name}: no hostPath or other volumes"
        );
        for container in pod["containers"].as_array().unwrap() {
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(security["capabilities"]["add"].is_null(), "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert!(security["privileged"].is_null(), "{name}");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(
                    container[probe]["httpGet"]["path"].is_string(),
                    "{name} {probe}"
                );
            }
            for what in ["requests", "limits"] {
                assert!(
                    container["resources"][what]["memory"].is_string(),
                    "{name}: resources.{what}.memory"
                );
            }
        }
        let disruption_budget = objects
            .iter()
            .find(|o| o["kind"] == "PodDisruptionBudget" && o["metadata"]["name"] == *name);
        assert!(
            disruption_budget.is_some(),
            "{name} has no PodDisruptionBudget"
        );
    }
}

#[test]
fn the_prometheus_rule_holds_the_plain_rules_file() {
    let objects = lanyard_chart::render(
        &values_with(&["metrics.prometheusRule.enabled=true"]),
        "linkerd",
        now(),
    )
    .unwrap();
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    let file: Value = serde_saphyr::from_str(lanyard_chart::objects::ALERT_RULES).unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    let off = lanyard_chart::render(&values_with(&[]), "linkerd", now()).unwrap();
    assert!(
        !off.iter()
            .any(|o| o["kind"] == "PrometheusRule" || o["kind"] == "ServiceMonitor")
    );
}

/// Renders the chart with Helm's engine: one result per case, and a lint
/// report per lint value set; `None` when skipped.
fn helm(cases: &[(Value, &str)], lints: &[Value]) -> Option<Value> {
    let request = json!({
        "chart": chart_dir(),
        "cases": cases.iter().map(|(values, ns)| json!({"values": values, "namespace": ns})).collect::<Vec<_>>(),
        "lint": lints,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm_render.py");
    let child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let skip = std::env::var("LANYARD_SKIP_HELM").is_ok_and(|v| v == "1");
    let mut child = match child {
        Ok(child) => child,
        Err(e) if skip => {
            println!("SKIPPED: Helm rendering: python3: {e}");
            return None;
        }
        Err(e) => panic!("python3: {e}; install Python 3 and `pip install helm-python-sdk==0.2.2`"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.code() == Some(3) {
        if skip {
            println!("SKIPPED: Helm rendering: helm-python-sdk is not installed");
            return None;
        }
        panic!(
            "helm-python-sdk is not installed: `pip install helm-python-sdk==0.2.2` (or LANYARD_SKIP_HELM=1 to skip)"
        );
    }
    assert!(
        output.status.success(),
        "helm_render.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn helm_objects(render: &Value) -> Vec<Value> {
    let manifests = render["manifests"]
        .as_object()
        .unwrap_or_else(|| panic!("Helm did not render: {}", render["error"]));
    let mut objects = Vec::new();
    for (template, text) in manifests {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{template}: {e}\n{text}"));
        objects.extend(docs.into_iter().filter(|d| !d.is_null()));
    }
    objects
}

#[test]
fn helm_renders_what_lanyard_install_prints() {
    let cases = vec![
        (values_with(&[]), "linkerd"),
        (
            values_with(&[
                "controller.replicas=3",
                "identity.replicas=1",
                "identityTrustDomain=example.org",
                "identity.issuer.issuanceLifetime=48h",
                "identity.issuer.certificate.renewBefore=1440h",
                "image.tag=1.0",
                "logLevel=debug",
                "logFormat=json",
                "metrics.service.enabled=false",
                "metrics.serviceMonitor.enabled=true",
                "metrics.prometheusRule.enabled=true",
            ]),
            "mesh",
        ),
        (
            brought_values(&["metrics.prometheusRule.enabled=true"]),
            "linkerd",
        ),
    ];
    let Some(out) = helm(&cases, &[values_with(&[]), brought_values(&[])]) else {
        return;
    };
    for ((values, namespace), render) in cases.iter().zip(out["renders"].as_array().unwrap()) {
        let ours = by_key(lanyard_chart::render(values, namespace, now()).unwrap());
        let helms = by_key(helm_objects(render));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            helms.keys().collect::<Vec<_>>(),
            "the objects differ in {namespace}"
        );
        for (key, object) in &ours {
            assert_eq!(
                object, &helms[key],
                "{key} differs between lanyard install and Helm"
            );
        }
    }
    for report in out["lints"].as_array().unwrap() {
        let worst = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64() >= Some(2))
            .collect::<Vec<_>>();
        assert!(worst.is_empty(), "helm lint: {worst:?}");
        assert!(
            report["errors"].as_array().is_none_or(|e| e.is_empty()),
            "{report}"
        );
    }
}

#[test]
fn helm_refuses_what_lanyard_install_refuses() {
    let mut partial = values_with(&[]);
    values::set_string(&mut partial, "identity.issuer.tls.crtPEM", "x".into()).unwrap();
    let mut unknown = values_with(&[]);
    values::set(&mut unknown, "controler.replicas=2").unwrap();
    let mut wrong_type = values_with(&[]);
    values::set_string(&mut wrong_type, "controller.replicas", "two".into()).unwrap();
    let cases = vec![
        (partial, "linkerd"),
        (unknown, "linkerd"),
        (wrong_type, "linkerd"),
    ];
    let Some(out) = helm(&cases, &[]) else {
        return;
    };
    let errors: Vec<String> = out["renders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap_or("rendered").to_string())
        .collect();
    assert!(
        errors[0].contains("go together (given: crtPEM)"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("controler"), "{}", errors[1]);
    assert!(errors[2].contains("replicas"), "{}", errors[2]);
}
