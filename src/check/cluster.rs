//! The cluster shell of `lanyard check`: reads what `lanyard install`
//! made through the current kubeconfig, asks the authorizer about each
//! component's rules, and hands what it read to the decisions in
//! [`super`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Client, Config};
use lanyard_chart::objects::{CONTROLLER, IDENTITY, IDENTITY_PORT};
use lanyard_chart::rbac;
use lanyard_crds::api::{Certificate, CertificateStatus};
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::linkerd::IDENTITY_ISSUER_NAME;
use lanyard_crds::trust_bundle::{
    LINKERD_TRUST_ROOTS, LINKERD_TRUST_ROOTS_KEY, TrustBundle, TrustBundleStatus,
};

use super::{
    Access, Check, Decision, Outcome, Readiness, Report, api_error, bundle_target_outcome,
    bundle_trusts_issuer, certificates_check, crd_outcome, deployment_outcome, issuer_checks,
    kubernetes_version_outcome, lease_outcome, rbac_outcome, service_port_outcome, worst,
};

/// The sections after `kubernetes-api`, named when they are skipped.
const LATER: &str = "lanyard-crds, lanyard-controller, lanyard-identity, lanyard-identity-issuer, \
                     certificates, trust-bundles, rbac";

/// Every check against the cluster of the current kubeconfig.
pub(super) async fn report(domain: &IdentityDomain, now: DateTime<Utc>) -> Report {
    let mut report = Report::default();
    let namespace = domain.control_plane_namespace();
    let (client, version) = match connect().await {
        Ok(connected) => connected,
        Err(reason) => {
            report.section(
                "kubernetes-api",
                vec![Check::new(
                    "can reach the Kubernetes API",
                    Outcome::Fail(reason),
                )],
            );
            report.skipped = Some(format!(
                "Skipped the remaining checks ({LATER}): they need the Kubernetes API."
            ));
            return report;
        }
    };
    report.section(
        "kubernetes-api",
        vec![
            Check::new(
                format!("can reach the Kubernetes API ({})", version.git_version),
                Outcome::Pass,
            ),
            Check::new(
                format!(
                    "is running Kubernetes {}.{} or later",
                    super::MIN_KUBERNETES.0,
                    super::MIN_KUBERNETES.1
                ),
                kubernetes_version_outcome(&version.major, &version.minor),
            ),
        ],
    );
    report.section("lanyard-crds", crds(&client).await);
    report.section(
        "lanyard-controller",
        controller(&client, namespace, now).await,
    );
    let (identity_checks, issuer_secret) = identity(&client, namespace).await;
    report.section("lanyard-identity", identity_checks);
    report.section(
        "lanyard-identity-issuer",
        issuer(&client, domain, issuer_secret.as_ref(), now).await,
    );
    report.section("certificates", certificates(&client).await);
    report.section("trust-bundles", trust_bundles(&client).await);
    report.section("rbac", rbac_checks(&client, namespace).await);
    report
}

/// A client for the current kubeconfig (or the in-cluster config) and
/// the API server's version (`GET /version`).
async fn connect() -> Result<(Client, k8s_openapi::apimachinery::pkg::version::Info), String> {
    // Only the first line of the error: a kubeconfig that does not
    // parse is quoted around the fault, and it may hold credentials.
    let mut config = Config::infer().await.map_err(|e| {
        let text = e.to_string();
        format!(
            "cannot load a kubeconfig or the in-cluster config: {}",
            text.lines().next().unwrap_or_default()
        )
    })?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| format!("cannot make a client for {url}: {}", api_error(&e)))?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| format!("GET {url}version: {}", api_error(&e)))?;
    Ok((client, version))
}

async fn crds(client: &Client) -> Vec<Check> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut checks = Vec::new();
    for expected in lanyard_crds::api::custom_resource_definitions() {
        let name = expected.metadata.name.clone().unwrap_or_default();
        let versions: Vec<&str> = expected
            .spec
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let outcome = match api.get_opt(&name).await {
            Ok(found) => crd_outcome(&expected, found.as_ref()),
            Err(e) => Outcome::Fail(api_error(&e)),
        };
        checks.push(Check::new(
            format!("{name} is installed at {}", versions.join(", ")),
            outcome,
        ));
    }
    checks
}

fn install_hint(namespace: &str) -> String {
    format!("see: `lanyard install -n {namespace} | kubectl apply --server-side -f -`")
}

async fn deployment_check(client: &Client, namespace: &str, name: &str) -> Check {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let outcome = match api.get_opt(name).await {
        Ok(Some(deployment)) => match deployment_outcome(&deployment) {
            Outcome::Fail(reason) => Outcome::Fail(format!(
                "{reason}\nsee: `kubectl -n {namespace} describe deployment {name}` and its Pods"
            )),
            other => other,
        },
        Ok(None) => Outcome::Fail(format!(
            "the Deployment {namespace}/{name} does not exist\n{}",
            install_hint(namespace)
        )),
        Err(e) => Outcome::Fail(api_error(&e)),
    };
    Check::new(format!("{name} Deployment is ready"), outcome)
}

async fn controller(client: &Client, namespace: &str, now: DateTime<Utc>) -> Vec<Check> {
    // The Lease the controller really takes (its default name).
    let lease_name = lanyard_rotator::kube::lease::DEFAULT_LEASE_NAME;
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease = match leases.get_opt(lease_name).await {
        Ok(Some(lease)) => lease_outcome(lease.spec.as_ref(), now),
        Ok(None) => Outcome::Fail(format!(
            "the Lease {namespace}/{lease_name} does not exist: no controller has led yet"
        )),
        Err(e) => Outcome::Fail(api_error(&e)),
    };
    vec![
        deployment_check(client, namespace, CONTROLLER).await,
        Check::new(
            format!("{lease_name} Lease is held by a leading replica"),
            lease,
        ),
    ]
}

/// The identity service's objects, and the issuer Secret when it could
/// be read (`None` inside when it does not exist).
async fn identity(client: &Client, namespace: &str) -> (Vec<Check>, Option<Option<Secret>>) {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = match services.get_opt(IDENTITY).await {
        Ok(Some(service)) => service_port_outcome(&service, IDENTITY_PORT),
        Ok(None) => Outcome::Fail(format!(
            "the Service {namespace}/{IDENTITY} does not exist: proxies could not reach the identity service\n{}",
            install_hint(namespace)
        )),
        Err(e) => Outcome::Fail(api_error(&e)),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let (secret, read) = match secrets.get_opt(IDENTITY_ISSUER_NAME).await {
        Ok(Some(secret)) => (Outcome::Pass, Some(Some(secret))),
        Ok(None) => (
            Outcome::Fail(format!(
                "the Secret {namespace}/{IDENTITY_ISSUER_NAME} does not exist: the controller writes it \
                 for the Certificate {namespace}/{IDENTITY_ISSUER_NAME}, or `lanyard install \
                 --identity-issuer-certificate-file ...` brings it"
            )),
            Some(None),
        ),
        Err(e) => (Outcome::Fail(api_error(&e)), None),
    };
    (
        vec![
            deployment_check(client, namespace, IDENTITY).await,
            Check::new(
                format!("{IDENTITY} Service serves port {IDENTITY_PORT}"),
                service,
            ),
            Check::new(
                format!("issuer Secret {IDENTITY_ISSUER_NAME} exists"),
                secret,
            ),
        ],
        read,
    )
}

async fn issuer(
    client: &Client,
    domain: &IdentityDomain,
    secret: Option<&Option<Secret>>,
    now: DateTime<Utc>,
) -> Vec<Check> {
    let namespace = domain.control_plane_namespace();
    let what = format!("Secret {namespace}/{IDENTITY_ISSUER_NAME}");
    let Some(secret) = secret else {
        return vec![Check::new(
            format!("can read the {what}"),
            Outcome::Fail("see the lanyard-identity checks above".into()),
        )];
    };
    let data = secret.as_ref().map(lanyard_rotator::kube::secret_data);
    let (mut checks, issuer) = issuer_checks(data.as_ref(), &what, domain, now);
    let Some(issuer) = issuer else {
        return checks;
    };
    let bundle_name = format!("trust bundle {LINKERD_TRUST_ROOTS} holds the issuer's trust anchor");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let where_ = format!("ConfigMap {namespace}/{LINKERD_TRUST_ROOTS}");
    let outcome = match config_maps.get_opt(LINKERD_TRUST_ROOTS).await {
        Ok(Some(map)) => match map
            .data
            .as_ref()
            .and_then(|d| d.get(LINKERD_TRUST_ROOTS_KEY))
        {
            Some(pem) => bundle_trusts_issuer(
                &issuer,
                pem.as_bytes(),
                &format!("{where_} key {LINKERD_TRUST_ROOTS_KEY}"),
                now,
            ),
            None => Outcome::Fail(format!(
                "{where_} has no key {LINKERD_TRUST_ROOTS_KEY}, where proxies read their trust anchors"
            )),
        },
        Ok(None) => Outcome::Warn(format!(
            "{where_} does not exist yet; proxies read their trust anchors from it \
             (the controller writes it for the TrustBundle {LINKERD_TRUST_ROOTS})"
        )),
        Err(e) => Outcome::Fail(api_error(&e)),
    };
    checks.push(Check::new(bundle_name, outcome));
    checks
}

async fn list<K: kube::Resource<DynamicType = ()>>(
    client: &Client,
) -> Result<Vec<DynamicObject>, String> {
    // Read as plain objects: one written by another Lanyard version
    // should be reported, not fail the whole list.
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| api_error(&e))
}

fn status_of<T: k8s_openapi::serde::de::DeserializeOwned + Default>(object: &DynamicObject) -> T {
    object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

async fn certificates(client: &Client) -> Vec<Check> {
    match list::<Certificate>(client).await {
        Ok(objects) => {
            let readiness: Vec<Readiness> = objects
                .iter()
                .map(|o| {
                    let status: CertificateStatus = status_of(o);
                    Readiness::from_conditions(
                        o.metadata.namespace.clone().unwrap_or_default(),
                        o.metadata.name.clone().unwrap_or_default(),
                        &status.conditions,
                    )
                })
                .collect();
            vec![certificates_check(&readiness)]
        }
        Err(e) => vec![Check::new(
            "all Certificates are Ready",
            Outcome::Fail(format!("listing Certificates: {e}")),
        )],
    }
}

async fn trust_bundles(client: &Client) -> Vec<Check> {
    let bundles = match list::<TrustBundle>(client).await {
        Ok(bundles) => bundles,
        Err(e) => {
            return vec![Check::new(
                "TrustBundles are Ready",
                Outcome::Fail(format!("listing TrustBundles: {e}")),
            )];
        }
    };
    if bundles.is_empty() {
        return vec![Check::new(
            "TrustBundles exist",
            Outcome::Warn(format!(
                "there is no TrustBundle; Linkerd reads its trust anchors from the one named {LINKERD_TRUST_ROOTS}"
            )),
        )];
    }
    let mut checks = Vec::new();
    for bundle in &bundles {
        let name = bundle.metadata.name.clone().unwrap_or_default();
        let status: TrustBundleStatus = status_of(bundle);
        let ready = Readiness::from_conditions(String::new(), name.clone(), &status.conditions);
        checks.push(Check::new(
            format!("TrustBundle {name} is Ready"),
            if ready.is_ready() {
                Outcome::Pass
            } else {
                match &ready.ready {
                    None => {
                        Outcome::Fail("no Ready condition yet (is the controller running?)".into())
                    }
                    Some((status, reason, message)) => Outcome::Fail(format!(
                        "Ready={status} {}: {}",
                        reason.as_deref().unwrap_or_default(),
                        message.as_deref().unwrap_or_default()
                    )),
                }
            },
        ));
        let key = bundle
            .data
            .pointer("/spec/target/configMap/key")
            .and_then(|k| k.as_str())
            .unwrap_or(LINKERD_TRUST_ROOTS_KEY)
            .to_string();
        let expected: Vec<String> = status.anchors.iter().map(|a| a.sha256.clone()).collect();
        let targets = if status.target_namespaces.is_empty() {
            Outcome::Warn(
                "the bundle was written to no namespace yet (status.targetNamespaces is empty)"
                    .into(),
            )
        } else if expected.is_empty() {
            Outcome::Fail("the bundle's status lists no anchors".into())
        } else {
            let mut outcomes = Vec::new();
            for namespace in &status.target_namespaces {
                let what = format!("ConfigMap {namespace}/{name}");
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                outcomes.push(match api.get_opt(&name).await {
                    Ok(Some(map)) => match map.data.as_ref().and_then(|d| d.get(&key)) {
                        Some(pem) => {
                            bundle_target_outcome(&expected, pem, &format!("{what} key {key}"))
                        }
                        None => Outcome::Fail(format!("{what} has no key {key}")),
                    },
                    Ok(None) => Outcome::Fail(format!("{what} does not exist")),
                    Err(e) => Outcome::Fail(format!("{what}: {}", api_error(&e))),
                });
            }
            worst(outcomes)
        };
        checks.push(Check::new(
            format!("TrustBundle {name} targets hold exactly its anchors"),
            targets,
        ));
    }
    checks
}

async fn review(
    api: &Api<SubjectAccessReview>,
    user: &str,
    groups: &[String],
    access: &Access,
) -> Result<Decision, String> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(access.group.to_string()),
                resource: Some(access.resource.to_string()),
                subresource: access.subresource.map(str::to_string),
                verb: Some(access.verb.to_string()),
                name: access.name.map(str::to_string),
                namespace: access.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| api_error(&e))?;
    let status = answer.status.unwrap_or_default();
    Ok(if status.allowed {
        Decision::Allowed
    } else {
        Decision::Denied(status.reason.filter(|r| !r.is_empty()))
    })
}

async fn rbac_checks(client: &Client, namespace: &str) -> Vec<Check> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let components = [
        (
            "controller",
            CONTROLLER,
            rbac::CONTROLLER_CLUSTER,
            rbac::CONTROLLER_NAMESPACED,
        ),
        (
            "identity",
            IDENTITY,
            rbac::IDENTITY_CLUSTER,
            rbac::IDENTITY_NAMESPACED,
        ),
    ];
    let mut checks = Vec::new();
    for (component, account, cluster_rules, namespaced_rules) in components {
        let user = format!("system:serviceaccount:{namespace}:{account}");
        let groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
        ];
        let mut accesses = super::access_requests(cluster_rules, None);
        accesses.extend(super::access_requests(namespaced_rules, Some(namespace)));
        let mut answers = Vec::new();
        for access in accesses {
            let answer = review(&api, &user, &groups, &access).await;
            let failed = answer.is_err();
            answers.push((access, answer));
            // When one question cannot be asked, none can.
            if failed {
                break;
            }
        }
        checks.push(Check::new(
            format!("{component} has the RBAC it needs"),
            rbac_outcome(account, &answers),
        ));
    }
    checks
}
