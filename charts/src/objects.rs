//! Every object of the install, with placeholders for its values.

use lanyard_crds::linkerd::{GENERATE_ANCHOR_ANNOTATION, IDENTITY_ISSUER_NAME, TRUST_ANCHOR_NAME};
use lanyard_crds::trust_bundle::LINKERD_TRUST_ROOTS;
use serde_json::{Value, json};

use crate::rbac::{self, Rule};
use crate::template::{Cond, Document, RELEASE_NAMESPACE, interpolate, v};

/// The controller's name: its Deployment, ServiceAccount and RBAC (its Lease
/// is the controller's own default, `lanyard_rotator::kube::lease`).
pub const CONTROLLER: &str = "lanyard-controller";
/// The identity service's name, as Linkerd names it: its Deployment,
/// ServiceAccount and the Service `linkerd-identity:8080` a stock
/// linkerd2-proxy dials.
pub const IDENTITY: &str = "linkerd-identity";
/// The identity service's cluster-scoped RBAC objects (apart from
/// Linkerd's own `linkerd-linkerd-identity`).
pub const IDENTITY_CLUSTER_ROLE: &str = "lanyard-identity";
/// Where the identity service serves Linkerd's Certify API.
pub const IDENTITY_PORT: u16 = 8080;
/// The identity service's metrics and probes.
pub const IDENTITY_ADMIN_PORT: u16 = 9990;
/// The controller's metrics and probes.
pub const CONTROLLER_ADMIN_PORT: u16 = 9402;
/// The user ID the containers run as (the image's non-root user).
pub const RUN_AS_USER: u32 = 65532;

/// The rules file both the chart's PrometheusRule and Prometheus users
/// load.
pub const ALERT_RULES: &str = include_str!("../alerts/lanyard-rules.yaml");

fn namespace() -> Value {
    v(RELEASE_NAMESPACE)
}

fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "lanyard",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "lanyard",
        "app.kubernetes.io/version": env!("CARGO_PKG_VERSION"),
    })
}

fn selector(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "lanyard",
        "app.kubernetes.io/component": component,
    })
}

fn meta(name: &str, component: &str) -> Value {
    json!({"name": name, "namespace": namespace(), "labels": labels(component)})
}

fn cluster_meta(name: &str, component: &str) -> Value {
    json!({"name": name, "labels": labels(component)})
}

fn rules(rules: &[Rule]) -> Value {
    Value::Array(rules.iter().map(Rule::to_json).collect())
}

/// A ServiceAccount, a (Cluster)Role with `rules` and its binding.
fn rbac(
    file: &'static str,
    role_kind: &str,
    name: &str,
    account: &str,
    component: &str,
    rule_set: &[Rule],
) -> [Document; 2] {
    let (role_meta, binding_kind) = if role_kind == "ClusterRole" {
        (cluster_meta(name, component), "ClusterRoleBinding")
    } else {
        (meta(name, component), "RoleBinding")
    };
    [
        Document::new(
            file,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": role_kind,
                "metadata": role_meta,
                "rules": rules(rule_set),
            }),
        ),
        Document::new(
            file,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": binding_kind,
                "metadata": role_meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace()}],
            }),
        ),
    ]
}

fn service_account(name: &str, component: &str) -> Document {
    Document::new(
        "serviceaccounts.yaml",
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(name, component),
        }),
    )
}

/// The `restricted` Pod Security Standard, for the pod.
fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The `restricted` Pod Security Standard, for a container, with a
/// read-only root filesystem.
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
    })
}

fn probe(path: &str, port: &str) -> Value {
    json!({"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "failureThreshold": 3})
}

/// A Deployment of `replicas` pods running `lanyard <args>`.
fn deployment(
    name: &str,
    component: &str,
    replicas: &str,
    args: Vec<Value>,
    ports: Value,
    admin_port: &str,
    resources: &str,
) -> Document {
    Document::new(
        "deployments.yaml",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(name, component),
            "spec": {
                "replicas": v(replicas),
                "selector": {"matchLabels": selector(component)},
                "template": {
                    "metadata": {"labels": labels(component)},
                    "spec": {
                        "serviceAccountName": name,
                        "securityContext": pod_security(),
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": selector(component)},
                            },
                        }]}},
                        "containers": [{
                            "name": component,
                            "image": interpolate(&["", "image.repository", ":", "image.tag"]),
                            "imagePullPolicy": v("image.pullPolicy"),
                            "args": args,
                            "env": [
                                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "LANYARD_LOG", "value": v("logLevel")},
                            ],
                            "ports": ports,
                            "livenessProbe": probe("/live", admin_port),
                            "readinessProbe": probe("/ready", admin_port),
                            "resources": v(resources),
                            "securityContext": container_security(),
                        }],
                    },
                },
            },
        }),
    )
}

fn pdb(name: &str, component: &str) -> Document {
    Document::new(
        "poddisruptionbudgets.yaml",
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(name, component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(component)}},
        }),
    )
}

fn service(name: &str, component: &str, port_name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, component),
        "spec": {
            "selector": selector(component),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        },
    })
}

fn flag(name: &str, path: &str) -> Value {
    interpolate(&[&format!("--{name}="), path])
}

/// The identity issuer and the trust bundle: made by Lanyard (the
/// default), or brought by the user (`identity.trustAnchorsPEM` and
/// `identity.issuer.tls`).
fn issuer_documents() -> Vec<Document> {
    let generate = Cond::Unset("identity.issuer.tls.crtPEM");
    let bring = Cond::Set("identity.issuer.tls.crtPEM");
    let trust_domain = "identityTrustDomain";
    let domain = lanyard_crds::identity::IdentityDomain::linkerd_default();

    let mut anchor = serde_json::to_value(lanyard_crds::linkerd::anchor_cluster_issuer())
        .expect("API objects serialise");
    anchor["metadata"] = json!({
        "name": TRUST_ANCHOR_NAME,
        "labels": labels("identity"),
        "annotations": {
            GENERATE_ANCHOR_ANNOTATION: interpolate(&["root.", RELEASE_NAMESPACE, ".", trust_domain]),
        },
    });

    let mut certificate =
        serde_json::to_value(lanyard_crds::linkerd::identity_issuer_certificate(&domain))
            .expect("API objects serialise");
    certificate["metadata"] = meta(IDENTITY_ISSUER_NAME, "identity");
    certificate["spec"]["commonName"] =
        interpolate(&["identity.", RELEASE_NAMESPACE, ".", trust_domain]);
    certificate["spec"]["duration"] = v("identity.issuer.certificate.duration");
    certificate["spec"]["renewBefore"] = v("identity.issuer.certificate.renewBefore");

    let mut generated_bundle =
        serde_json::to_value(lanyard_crds::linkerd::trust_roots_bundle(&domain))
            .expect("API objects serialise");
    generated_bundle["metadata"] = cluster_meta(LINKERD_TRUST_ROOTS, "identity");
    generated_bundle["spec"]["target"]["namespaceSelector"]["matchLabels"] =
        json!({"kubernetes.io/metadata.name": namespace()});
    let mut brought_bundle = generated_bundle.clone();
    brought_bundle["spec"]["sources"] = json!([{"inLine": v("identity.trustAnchorsPEM")}]);

    vec![
        Document::new("identity-issuer.yaml", anchor).when(generate.clone()),
        Document::new("identity-issuer.yaml", certificate).when(generate.clone()),
        Document::new("identity-issuer.yaml", generated_bundle).when(generate),
        Document::new(
            "identity-issuer.yaml",
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(IDENTITY_ISSUER_NAME, "identity"),
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": v("identity.issuer.tls.crtPEM"),
                    "tls.key": v("identity.issuer.tls.keyPEM"),
                    "ca.crt": v("identity.trustAnchorsPEM"),
                },
            }),
        )
        .when(bring.clone()),
        Document::new("identity-issuer.yaml", brought_bundle).when(bring),
    ]
}

/// Lanyard's alert rules as a PrometheusRule.
fn prometheus_rule() -> Document {
    let rules: Value =
        serde_saphyr::from_str(ALERT_RULES).expect("charts/alerts/lanyard-rules.yaml parses");
    Document::new(
        "prometheusrule.yaml",
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": meta("lanyard", "controller"),
            "spec": {"groups": rules["groups"]},
        }),
    )
    .when(Cond::Set("metrics.prometheusRule.enabled"))
}

fn service_monitor() -> Document {
    let endpoint = json!({
        "port": "admin",
        "path": "/metrics",
        "interval": v("metrics.serviceMonitor.interval"),
    });
    Document::new(
        "servicemonitor.yaml",
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": meta("lanyard", "controller"),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "lanyard", "lanyard.dev/metrics": "true"}},
                "namespaceSelector": {"matchNames": [namespace()]},
                "endpoints": [endpoint],
            },
        }),
    )
    .when(Cond::Set("metrics.serviceMonitor.enabled"))
}

fn metrics_service(name: &str, component: &str, port: u16) -> Document {
    let mut svc = service(name, component, "admin", port);
    svc["metadata"]["labels"]["lanyard.dev/metrics"] = json!("true");
    Document::new("services.yaml", svc).when(Cond::Set("metrics.service.enabled"))
}

/// Every document of the install, in the order `lanyard install` prints
/// them (and Helm's files hold them).
pub fn documents() -> Vec<Document> {
    let mut docs = vec![
        service_account(CONTROLLER, "controller"),
        service_account(IDENTITY, "identity"),
    ];
    docs.extend(rbac(
        "rbac-controller.yaml",
        "ClusterRole",
        CONTROLLER,
        CONTROLLER,
        "controller",
        rbac::CONTROLLER_CLUSTER,
    ));
    docs.extend(rbac(
        "rbac-controller.yaml",
        "Role",
        CONTROLLER,
        CONTROLLER,
        "controller",
        rbac::CONTROLLER_NAMESPACED,
    ));
    docs.extend(rbac(
        "rbac-identity.yaml",
        "ClusterRole",
        IDENTITY_CLUSTER_ROLE,
        IDENTITY,
        "identity",
        rbac::IDENTITY_CLUSTER,
    ));
    docs.extend(rbac(
        "rbac-identity.yaml",
        "Role",
        IDENTITY,
        IDENTITY,
        "identity",
        rbac::IDENTITY_NAMESPACED,
    ));
    docs.extend(issuer_documents());
    docs.push(deployment(
        CONTROLLER,
        "controller",
        "controller.replicas",
        vec![
            json!("controller"),
            json!(format!("--metrics-addr=0.0.0.0:{CONTROLLER_ADMIN_PORT}")),
            flag("issuance-lifetime", "identity.issuer.issuanceLifetime"),
            flag("concurrent-workers", "controller.concurrentWorkers"),
            flag("log-format", "logFormat"),
        ],
        json!([{"name": "admin", "containerPort": CONTROLLER_ADMIN_PORT, "protocol": "TCP"}]),
        "admin",
        "controller.resources",
    ));
    docs.push(deployment(
        IDENTITY,
        "identity",
        "identity.replicas",
        vec![
            json!("identity"),
            json!(format!("--addr=0.0.0.0:{IDENTITY_PORT}")),
            json!(format!("--metrics-addr=0.0.0.0:{IDENTITY_ADMIN_PORT}")),
            flag("trust-domain", "identityTrustDomain"),
            flag("issuance-lifetime", "identity.issuer.issuanceLifetime"),
            flag("log-format", "logFormat"),
        ],
        json!([
            {"name": "grpc", "containerPort": IDENTITY_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": IDENTITY_ADMIN_PORT, "protocol": "TCP"},
        ]),
        "admin",
        "identity.resources",
    ));
    docs.push(Document::new(
        "services.yaml",
        service(IDENTITY, "identity", "grpc", IDENTITY_PORT),
    ));
    docs.push(metrics_service(
        &format!("{CONTROLLER}-metrics"),
        "controller",
        CONTROLLER_ADMIN_PORT,
    ));
    docs.push(metrics_service(
        &format!("{IDENTITY}-metrics"),
        "identity",
        IDENTITY_ADMIN_PORT,
    ));
    docs.push(pdb(CONTROLLER, "controller"));
    docs.push(pdb(IDENTITY, "identity"));
    docs.push(service_monitor());
    docs.push(prometheus_rule());
    docs
}
