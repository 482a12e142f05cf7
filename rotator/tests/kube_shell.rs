//! The Kubernetes shell against the API's wire shape: kube-rs' tower-test
//! mock service plays the API server through a scenario of expected
//! requests (controller-rs' `ApiServerVerifier`), answering each with the
//! JSON a real one would send.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use lanyard_crds::api::{
    Certificate, ClusterIssuer, ClusterIssuerSpec, Issuer, IssuerKind, IssuerSpec,
};
use lanyard_crds::time::ManualClock;
use lanyard_issuer::Certificate as X509;
use lanyard_rotator::kube::{
    Context, IssuerResource, LeaseDecision, issuer_status, lease_decision, reconcile_certificate,
    reconcile_issuer,
};
use lanyard_rotator::metrics::Metrics;
use lanyard_rotator::reconcile::{ResolvedIssuer, reconcile};
use lanyard_rotator::secret::SecretData;
use serde_json::{Value, json};
use support::{anchor_secret, ca_config, ca_issuer, certificate, hours, identity_issuer_spec, t0};
use tower_test::mock::{Handle, SendResponse};

const ANCHOR: &str = "linkerd-trust-anchor";
const NAMESPACE: &str = "linkerd";
const NAME: &str = "linkerd-identity-issuer";
const CLUSTER_ISSUER_PATH: &str = "/apis/lanyard.dev/v1/clusterissuers/linkerd-trust-anchor";
const CLUSTER_ISSUER_STATUS_PATH: &str =
    "/apis/lanyard.dev/v1/clusterissuers/linkerd-trust-anchor/status";
const ANCHOR_SECRET_PATH: &str = "/api/v1/namespaces/lanyard/secrets/linkerd-trust-anchor";
const SECRET_PATH: &str = "/api/v1/namespaces/linkerd/secrets/linkerd-identity-issuer";
const STATUS_PATH: &str =
    "/apis/lanyard.dev/v1/namespaces/linkerd/certificates/linkerd-identity-issuer/status";

type MockHandle = Handle<Request<Body>, Response<Body>>;

/// The API server side of the mock: each method expects the next request
/// to be a given one, asserts on it, and answers it.
struct ApiServer(MockHandle);

/// A request as the API server received it.
struct Received {
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

impl ApiServer {
    async fn next(
        &mut self,
        method: Method,
        path: &str,
    ) -> (Received, SendResponse<Response<Body>>) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {method} {path}, but the controller stopped"));
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request {}",
            request.uri()
        );
        let query = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        (
            Received {
                query,
                content_type,
                body,
            },
            send,
        )
    }

    async fn get(&mut self, path: &str, object: Value) {
        let (_, send) = self.next(Method::GET, path).await;
        respond(send, StatusCode::OK, &object);
    }

    async fn get_not_found(&mut self, path: &str) {
        let (_, send) = self.next(Method::GET, path).await;
        let name = path.rsplit('/').next().unwrap_or_default();
        respond(
            send,
            StatusCode::NOT_FOUND,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": format!("\"{name}\" not found"),
                "reason": "NotFound",
                "details": {"name": name},
                "code": 404
            }),
        );
    }

    /// Expects a PATCH and answers with `answer(body)`.
    async fn patch(&mut self, path: &str, answer: impl FnOnce(&Value) -> Value) -> Received {
        let (received, send) = self.next(Method::PATCH, path).await;
        respond(send, StatusCode::OK, &answer(&received.body));
        received
    }

    /// Expects a PATCH and answers 409 Conflict, as the API server does when
    /// the patch's resourceVersion is not the object's.
    async fn patch_conflict(&mut self, path: &str) -> Received {
        let (received, send) = self.next(Method::PATCH, path).await;
        respond(
            send,
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the object has been modified; please apply your changes to the latest version and try again",
                    "reason": "Conflict", "code": 409}),
        );
        received
    }

    /// Expects the controller to make no further request (it returns once
    /// the client is dropped).
    async fn done(mut self) {
        if let Some((request, _)) = self.0.next_request().await {
            panic!(
                "unexpected request after the scenario: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

fn respond(send: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn context(now: DateTime<Utc>) -> (Arc<Context<ManualClock>>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, ManualClock::new(now), Arc::new(Metrics::new()));
    (Arc::new(ctx), ApiServer(handle))
}

/// Runs one reconcile against `scenario` (which ends with
/// [`ApiServer::done`]); returns the reconcile's result and the scenario's.
async fn run_scenario<T, F>(
    certificate: Certificate,
    now: DateTime<Utc>,
    scenario: impl FnOnce(ApiServer) -> F,
) -> (Result<Action, lanyard_rotator::kube::Error>, T)
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (ctx, server) = context(now);
    let verifier = tokio::spawn(scenario(server));
    let result = reconcile_certificate(Arc::new(certificate), ctx).await;
    // The context (and with it the client) is dropped: the verifier sees
    // the end of requests.
    let out = tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("the scenario finished")
        .expect("the scenario's assertions held");
    (result, out)
}

/// Runs one issuer reconcile against `scenario`, as [`run_scenario`] does
/// a Certificate's; returns the metrics too.
async fn run_issuer_scenario<K, T, F>(
    issuer: K,
    now: DateTime<Utc>,
    scenario: impl FnOnce(ApiServer) -> F,
) -> (
    Result<Action, lanyard_rotator::kube::Error>,
    T,
    Arc<Metrics>,
)
where
    K: IssuerResource,
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (ctx, server) = context(now);
    let metrics = ctx.metrics.clone();
    let verifier = tokio::spawn(scenario(server));
    let result = reconcile_issuer(Arc::new(issuer), ctx).await;
    let out = tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("the scenario finished")
        .expect("the scenario's assertions held");
    (result, out, metrics)
}

/// The value of `lanyard_issuer_ready_status` for `kind`/`name` and
/// `condition`, if the series exists.
fn issuer_ready_gauge(metrics: &Metrics, kind: &str, name: &str, condition: &str) -> Option<i64> {
    metrics.encode().lines().find_map(|line| {
        let rest = line.strip_prefix("lanyard_issuer_ready_status{")?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("kind=\"{kind}\""))
            && labels.contains(&format!("name=\"{name}\""))
            && labels.contains(&format!("condition=\"{condition}\"")))
        .then(|| value.trim().parse().unwrap())
    })
}

/// A Secret as the API server would return it: data base64-encoded by
/// k8s-openapi, not by the code under test.
fn secret_json(namespace: &str, name: &str, data: &SecretData, type_: &str) -> Value {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: Some("1".into()),
            annotations: Some(data.annotations.clone()),
            labels: Some(data.labels.clone()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some(type_.into()),
        ..Secret::default()
    };
    serde_json::to_value(secret).unwrap()
}

fn cluster_issuer() -> ClusterIssuer {
    let mut issuer = ClusterIssuer::new(
        ANCHOR,
        ClusterIssuerSpec {
            config: ca_config(ANCHOR),
        },
    );
    issuer.metadata.generation = Some(3);
    issuer.metadata.resource_version = Some("11".into());
    issuer
}

fn cluster_issuer_json() -> Value {
    serde_json::to_value(cluster_issuer()).unwrap()
}

/// The ClusterIssuer with the patched status, as the API server answers a
/// status patch.
fn cluster_issuer_with_status(body: &Value) -> Value {
    let mut answer = cluster_issuer_json();
    answer["status"] = body["status"].clone();
    answer
}

fn identity_issuer() -> Certificate {
    let mut cert = certificate(NAMESPACE, NAME, identity_issuer_spec());
    cert.metadata.uid = Some("5d1b1e0c-0000-4000-8000-000000000001".into());
    cert.metadata.resource_version = Some("7".into());
    cert
}

/// The Certificate with the patched status, as the API server answers a
/// status patch.
fn with_status(certificate: Certificate) -> impl FnOnce(&Value) -> Value {
    move |body| {
        let mut answer = serde_json::to_value(certificate).unwrap();
        answer["status"] = body["status"].clone();
        answer
    }
}

/// The applied object echoed back, as the API server answers an apply.
fn echo(body: &Value) -> Value {
    body.clone()
}

fn ready_condition(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_else(|| panic!("no Ready condition in {status}"))
}

fn decode_secret(body: &Value) -> SecretData {
    let secret: Secret = serde_json::from_value(body.clone()).expect("a v1.Secret");
    SecretData {
        data: secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
        ..SecretData::default()
    }
}

/// `openssl verify` of the leaf with the chain in tls.crt against ca.crt,
/// at `at` (the fixtures live at an injected time).
fn openssl_verify(secret: &SecretData, at: DateTime<Utc>) {
    let dir = tempfile::tempdir().unwrap();
    let chain = X509::parse_pem_bundle(secret.get("tls.crt").unwrap(), "tls.crt").unwrap();
    let leaf = dir.path().join("leaf.pem");
    let untrusted = dir.path().join("untrusted.pem");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&leaf, chain[0].to_pem()).unwrap();
    let rest: String = chain[1..].iter().map(X509::to_pem).collect();
    std::fs::write(&untrusted, rest.clone()).unwrap();
    std::fs::write(&ca, secret.get("ca.crt").unwrap()).unwrap();
    let mut command = std::process::Command::new("openssl");
    command
        .arg("verify")
        .arg("-attime")
        .arg(at.timestamp().to_string())
        .arg("-CAfile")
        .arg(&ca);
    if !rest.is_empty() {
        command.arg("-untrusted").arg(&untrusted);
    }
    let output = match command.arg(&leaf).output() {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED openssl verify: openssl could not be run: {e}");
            return;
        }
    };
    assert!(
        output.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_certificate_with_a_ca_cluster_issuer_and_no_secret_gets_one_applied_and_becomes_ready() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (result, (secret_patch, status_patch)) =
        run_scenario(identity_issuer(), now, |mut server| async move {
            server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server.get_not_found(SECRET_PATH).await;
            let secret = server.patch(SECRET_PATH, echo).await;
            let status = server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await;
            server.done().await;
            (secret, status)
        })
        .await;
    let action = result.expect("the reconcile succeeds");

    // The Secret is written by server-side apply, forced, as `lanyard`.
    assert_eq!(secret_patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        secret_patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    assert_eq!(
        secret_patch.query.get("force").map(String::as_str),
        Some("true")
    );
    let body = &secret_patch.body;
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["metadata"]["name"], NAME);
    assert_eq!(body["metadata"]["namespace"], NAMESPACE);
    assert_eq!(body["type"], "kubernetes.io/tls");
    let keys: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    let owners = body["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0]["apiVersion"], "lanyard.dev/v1");
    assert_eq!(owners[0]["kind"], "Certificate");
    assert_eq!(owners[0]["name"], NAME);
    assert_eq!(owners[0]["uid"], "5d1b1e0c-0000-4000-8000-000000000001");
    assert_eq!(owners[0]["controller"], true);
    assert_eq!(
        body["metadata"]["annotations"]["lanyard.dev/issuer-kind"],
        "ClusterIssuer"
    );

    // What was applied chains to the anchor.
    let written = decode_secret(body);
    let chain = X509::parse_pem_bundle(written.get("tls.crt").unwrap(), "tls.crt").unwrap();
    let anchors = X509::parse_pem_bundle(anchor.get("tls.crt").unwrap(), "anchor").unwrap();
    let path =
        lanyard_issuer::verify_chain(&chain, &anchors, now).expect("tls.crt chains to the anchor");
    assert_eq!(path.last().unwrap().der(), anchors[0].der());
    assert!(chain[0].is_signed_by(&anchors[0]));
    assert_eq!(written.get("ca.crt"), anchor.get("ca.crt"));
    openssl_verify(&written, now);

    // Then the status says Ready, with the certificate's times, guarded
    // by the resourceVersion the reconcile read.
    assert_eq!(status_patch.content_type, "application/merge-patch+json");
    assert_eq!(status_patch.body["metadata"]["resourceVersion"], "7");
    assert_eq!(
        status_patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    let status = &status_patch.body["status"];
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["observedGeneration"], 1);
    let not_after: DateTime<Utc> = serde_json::from_value(status["notAfter"].clone()).unwrap();
    assert_eq!(not_after, chain[0].not_after());
    assert_eq!(status["revision"], 1);

    // Requeued for a while, not for the renewal 11 months away.
    assert_eq!(action, Action::requeue(Duration::from_secs(3_600)));
}

#[tokio::test]
async fn a_certificate_whose_issuer_does_not_exist_gets_no_secret_and_is_not_ready() {
    let mut cert = identity_issuer();
    cert.spec.issuer_ref.name = "missing".into();
    let answer = with_status(cert.clone());
    let (result, status_patch) = run_scenario(cert, t0(), |mut server| async move {
        server
            .get_not_found("/apis/lanyard.dev/v1/clusterissuers/missing")
            .await;
        server.get_not_found(SECRET_PATH).await;
        let status = server.patch(STATUS_PATH, answer).await;
        server.done().await;
        status
    })
    .await;
    let action = result.expect("a missing issuer is a status, not a reconcile error");
    let status = &status_patch.body["status"];
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "IssuerNotFound");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("ClusterIssuer `missing` does not exist"),
        "{ready}"
    );
    assert_eq!(status["failedIssuanceAttempts"], 1);
    // Retried after the core's first backoff step (10s), not at once.
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn an_issuance_read_from_a_stale_copy_is_recorded_on_top_of_the_current_status() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    // The cached copy says revision 3; the API server already holds 4.
    let mut stale = identity_issuer();
    stale.status = Some(lanyard_crds::api::CertificateStatus {
        revision: Some(3),
        ..Default::default()
    });
    let mut current = identity_issuer();
    current.metadata.resource_version = Some("9".into());
    current.status = Some(lanyard_crds::api::CertificateStatus {
        revision: Some(4),
        ..Default::default()
    });
    let current_json = serde_json::to_value(&current).unwrap();
    let (result, (refused, written)) = run_scenario(stale, now, |mut server| async move {
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get_not_found(SECRET_PATH).await;
        server.patch(SECRET_PATH, echo).await;
        let refused = server.patch_conflict(STATUS_PATH).await;
        server
            .get(
                "/apis/lanyard.dev/v1/namespaces/linkerd/certificates/linkerd-identity-issuer",
                current_json,
            )
            .await;
        let written = server.patch(STATUS_PATH, with_status(current)).await;
        server.done().await;
        (refused, written)
    })
    .await;
    result.expect("the reconcile succeeds");
    assert_eq!(refused.body["metadata"]["resourceVersion"], "7");
    assert_eq!(refused.body["status"]["revision"], 4);
    // Written over the current copy: its version, and the revision after
    // its own, never back.
    assert_eq!(written.body["metadata"]["resourceVersion"], "9");
    assert_eq!(written.body["status"]["revision"], 5);
    assert_eq!(ready_condition(&written.body["status"])["status"], "True");
}

#[tokio::test]
async fn a_status_read_from_a_stale_copy_is_not_written_and_the_certificate_is_looked_at_again() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let issued = support::issued_secret(&identity_issuer_spec(), &material, t0());
    let now = t0() + hours(24);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let current_json = secret_json(NAMESPACE, NAME, &issued, "kubernetes.io/tls");
    let (result, ()) = run_scenario(identity_issuer(), now, |mut server| async move {
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get(SECRET_PATH, current_json).await;
        server.patch_conflict(STATUS_PATH).await;
        // Nothing more: no retry from the stale copy.
        server.done().await;
    })
    .await;
    assert_eq!(
        result.expect("a conflict is not an API failure"),
        Action::requeue(lanyard_rotator::kube::STALE_REQUEUE)
    );
}

#[tokio::test]
async fn a_certificate_with_an_up_to_date_secret_gets_no_secret_write() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let spec = identity_issuer_spec();
    let issued = support::issued_secret(&spec, &material, t0());
    let now = t0() + hours(24);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let current_json = secret_json(NAMESPACE, NAME, &issued, "kubernetes.io/tls");
    let (result, status_patch) = run_scenario(identity_issuer(), now, |mut server| async move {
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get(SECRET_PATH, current_json).await;
        // No Secret PATCH: the next request is the status.
        let status = server
            .patch(STATUS_PATH, with_status(identity_issuer()))
            .await;
        server.done().await;
        status
    })
    .await;
    result.expect("the reconcile succeeds");
    let ready = ready_condition(&status_patch.body["status"]);
    assert_eq!(ready["status"], "True");
    assert!(status_patch.body["status"].get("revision").is_none());
}

#[tokio::test]
async fn a_certificate_whose_status_is_already_current_gets_no_write_at_all() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let spec = identity_issuer_spec();
    let issued = support::issued_secret(&spec, &material, t0());
    let now = t0() + hours(24);
    let mut cert = identity_issuer();
    // The status the core records for this Secret, as a previous
    // reconcile wrote it.
    cert.status = Some(
        reconcile(
            &cert,
            Some(&issued),
            ResolvedIssuer {
                kind: IssuerKind::ClusterIssuer,
                name: ANCHOR,
                material: Ok(&material),
            },
            now,
        )
        .status,
    );
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let current_json = secret_json(NAMESPACE, NAME, &issued, "kubernetes.io/tls");
    let (result, ()) = run_scenario(cert, now, |mut server| async move {
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get(SECRET_PATH, current_json).await;
        server.done().await;
    })
    .await;
    result.expect("the reconcile succeeds");
}

#[tokio::test]
async fn a_secret_holding_someone_elses_key_is_issued_into_without_removing_it() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let mut theirs = SecretData::default();
    theirs.data.insert("extra".into(), b"not ours".to_vec());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let current_json = secret_json(NAMESPACE, NAME, &theirs, "Opaque");
    let (result, secret_patch) = run_scenario(identity_issuer(), t0(), |mut server| async move {
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get(SECRET_PATH, current_json).await;
        let secret = server.patch(SECRET_PATH, echo).await;
        server
            .patch(STATUS_PATH, with_status(identity_issuer()))
            .await;
        server.done().await;
        secret
    })
    .await;
    result.expect("the reconcile succeeds");
    let body = &secret_patch.body;
    let keys: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // Server-side apply leaves `extra` alone because the apply does not
    // mention it; the immutable type is repeated, not changed.
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(body["type"], "Opaque");
}

/// The cert-manager migration case: the Secret is controlled by
/// cert-manager's Certificate. The API server would refuse the apply (one
/// controller per object), so none is sent: Ready=False names the owner
/// and the way out, the failure is counted, and the next look backs off.
#[tokio::test]
async fn a_secret_controlled_by_another_object_is_not_applied_and_the_status_names_the_owner() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let theirs = controlled_by_cert_manager();
    let (ctx, server) = context(t0());
    let metrics = ctx.metrics.clone();
    let answer = with_status(identity_issuer());
    let verifier = tokio::spawn(async move {
        let mut server = server;
        server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
        server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        server.get(SECRET_PATH, theirs).await;
        // No apply of the Secret: the status patch comes next.
        let status = server.patch(STATUS_PATH, answer).await;
        server.done().await;
        status
    });
    let result = reconcile_certificate(Arc::new(identity_issuer()), ctx).await;
    let status_patch = tokio::time::timeout(Duration::from_secs(10), verifier)
        .await
        .expect("the scenario finished")
        .expect("the scenario's assertions held");
    let action = result.expect("an owner conflict is a status, not a reconcile error");
    let status = &status_patch.body["status"];
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SecretOwnerConflict");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains(
            "Secret `linkerd/linkerd-identity-issuer` is controlled by cert-manager.io/v1 Certificate `linkerd-identity-issuer` (uid c3a7-cert-manager)"
        ),
        "{message}"
    );
    assert!(message.contains("--cascade=orphan"), "{message}");
    assert_eq!(status["failedIssuanceAttempts"], 1);
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    let encoded = metrics.encode();
    assert!(
        encoded.lines().any(|line| line
            .starts_with("lanyard_certificate_issuance_failures_total{")
            && line.contains("reason=\"SecretOwnerConflict\"")
            && line.ends_with(" 1")),
        "{encoded}"
    );

    // Within the backoff, a second look writes nothing at all.
    let mut backing_off = identity_issuer();
    backing_off.status = Some(serde_json::from_value(status.clone()).unwrap());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let theirs = controlled_by_cert_manager();
    let (result, ()) = run_scenario(
        backing_off,
        t0() + chrono::TimeDelta::seconds(5),
        |mut server| async move {
            server.get(CLUSTER_ISSUER_PATH, cluster_issuer_json()).await;
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server.get(SECRET_PATH, theirs).await;
            server.done().await;
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(5)));
}

/// The Certificate's Secret as cert-manager (with
/// `--enable-certificate-owner-ref`) leaves it: controlled by its own
/// Certificate of the same name.
fn controlled_by_cert_manager() -> Value {
    let mut secret = secret_json(NAMESPACE, NAME, &SecretData::default(), "kubernetes.io/tls");
    secret["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "name": NAME,
        "uid": "c3a7-cert-manager",
        "controller": true,
        "blockOwnerDeletion": true
    }]);
    secret
}

#[tokio::test]
async fn an_api_server_error_is_a_reconcile_error_and_writes_nothing() {
    let (result, ()) = run_scenario(identity_issuer(), t0(), |mut server| async move {
        let (_, send) = server.next(Method::GET, CLUSTER_ISSUER_PATH).await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "clusterissuers.lanyard.dev is forbidden", "reason": "Forbidden", "code": 403}),
        );
        server.done().await;
    })
    .await;
    let error = result.expect_err("a 403 fails the reconcile");
    assert!(
        error
            .to_string()
            .contains("reading ClusterIssuer `linkerd-trust-anchor`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_cluster_issuer_whose_ca_secret_holds_a_valid_ca_gets_a_ready_status() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (result, patch, metrics) =
        run_issuer_scenario(cluster_issuer(), now, |mut server| async move {
            // The CA Secret, from the cluster resource namespace; the
            // ClusterIssuer itself is not read again.
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let patch = server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await;
            server.done().await;
            patch
        })
        .await;
    let action = result.expect("the reconcile succeeds");

    // A merge patch of the status subresource, as `lanyard`.
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(
        patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    let status = &patch.body["status"];
    assert_eq!(
        status["conditions"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let ready = ready_condition(status);
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["reason"], "KeyPairVerified");
    assert_eq!(ready["message"], "Signing CA verified");
    assert_eq!(ready["observedGeneration"], 3);
    let since: DateTime<Utc> = serde_json::from_value(ready["lastTransitionTime"].clone()).unwrap();
    assert_eq!(since, now);

    // The metrics say so too, without a namespace.
    assert_eq!(
        issuer_ready_gauge(&metrics, "ClusterIssuer", ANCHOR, "True"),
        Some(1)
    );
    assert!(metrics.tracked_issuers().contains(&(
        IssuerKind::ClusterIssuer,
        String::new(),
        ANCHOR.to_string()
    )));
    // Checked again within minutes: a CA expires with time alone.
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_cluster_issuer_whose_ca_secret_is_garbage_is_not_ready_and_the_message_names_the_secret()
{
    let mut garbage = SecretData::default();
    garbage
        .data
        .insert("tls.crt".into(), b"not a certificate".to_vec());
    garbage.data.insert("tls.key".into(), b"not a key".to_vec());
    let garbage_json = secret_json("lanyard", ANCHOR, &garbage, "kubernetes.io/tls");
    let (result, patch, metrics) =
        run_issuer_scenario(cluster_issuer(), t0(), |mut server| async move {
            server.get(ANCHOR_SECRET_PATH, garbage_json).await;
            let patch = server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await;
            server.done().await;
            patch
        })
        .await;
    let action = result.expect("an unusable CA is a status, not a reconcile error");
    let ready = ready_condition(&patch.body["status"]);
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "CASecretInvalid");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("the CA Secret `lanyard/linkerd-trust-anchor`"),
        "{ready}"
    );
    assert_eq!(ready["observedGeneration"], 3);
    assert_eq!(
        issuer_ready_gauge(&metrics, "ClusterIssuer", ANCHOR, "False"),
        Some(1)
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_cluster_issuer_whose_ca_secret_is_missing_is_not_ready() {
    let (result, patch, _) = run_issuer_scenario(cluster_issuer(), t0(), |mut server| async move {
        server.get_not_found(ANCHOR_SECRET_PATH).await;
        let patch = server
            .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
            .await;
        server.done().await;
        patch
    })
    .await;
    let action = result.expect("a missing CA Secret is a status, not a reconcile error");
    let ready = ready_condition(&patch.body["status"]);
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "CASecretNotFound");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("the CA Secret `lanyard/linkerd-trust-anchor` does not exist"),
        "{ready}"
    );
    // Retried on the issuer's schedule (and at once when the Secret
    // appears, through the Secret watch).
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn an_issuer_whose_status_is_already_current_gets_no_patch() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let now = t0() + hours(24);
    let mut issuer = Issuer::new(
        "mesh-ca",
        IssuerSpec {
            config: ca_config("mesh-ca"),
        },
    );
    issuer.metadata.namespace = Some(NAMESPACE.into());
    issuer.metadata.generation = Some(2);
    // Written by an earlier reconcile: Ready since t0.
    issuer.status = Some(issuer_status(None, Ok(&material), Some(2), t0()));
    let anchor_json = secret_json(NAMESPACE, "mesh-ca", &anchor, "kubernetes.io/tls");
    let (result, (), metrics) = run_issuer_scenario(issuer, now, |mut server| async move {
        // The Issuer's CA Secret is in the Issuer's namespace.
        server
            .get("/api/v1/namespaces/linkerd/secrets/mesh-ca", anchor_json)
            .await;
        server.done().await;
    })
    .await;
    assert_eq!(
        result.expect("the reconcile succeeds"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        issuer_ready_gauge(&metrics, "Issuer", "mesh-ca", "True"),
        Some(1)
    );
}

#[tokio::test]
async fn an_api_server_error_reading_the_ca_secret_is_an_issuer_reconcile_error() {
    let (result, (), _) = run_issuer_scenario(cluster_issuer(), t0(), |mut server| async move {
        let (_, send) = server.next(Method::GET, ANCHOR_SECRET_PATH).await;
        respond(
            send,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "secrets is forbidden", "reason": "Forbidden", "code": 403}),
        );
        server.done().await;
    })
    .await;
    let error = result.expect_err("a 403 fails the reconcile, with no status written");
    assert!(
        error
            .to_string()
            .contains("reading Secret `lanyard/linkerd-trust-anchor`"),
        "{error}"
    );
}

fn micro(at: DateTime<Utc>) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_second(at.timestamp()).unwrap())
}

fn lease(
    holder: Option<&str>,
    renewed: Option<i64>,
    acquired: Option<i64>,
    seconds: Option<i32>,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(Into::into),
        renew_time: renewed.map(|s| micro(t0() + chrono::TimeDelta::seconds(s))),
        acquire_time: acquired.map(|s| micro(t0() + chrono::TimeDelta::seconds(s))),
        lease_duration_seconds: seconds,
        ..LeaseSpec::default()
    }
}

#[test]
fn lease_decisions() {
    let now = t0() + chrono::TimeDelta::seconds(100);
    let wait = |holder: &str, until: i64| LeaseDecision::Wait {
        holder: holder.into(),
        until: t0() + chrono::TimeDelta::seconds(until),
    };
    // (sentence, the Lease, whether this replica leads, the decision)
    let cases: Vec<(&str, Option<LeaseSpec>, bool, LeaseDecision)> = vec![
        (
            "takes a Lease nobody has written",
            None,
            false,
            LeaseDecision::Acquire,
        ),
        (
            "takes a Lease nobody holds",
            Some(lease(None, Some(95), None, Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "takes a Lease whose holder is empty",
            Some(lease(Some(""), Some(95), None, Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "renews its own Lease",
            Some(lease(Some("me"), Some(95), Some(0), Some(15))),
            true,
            LeaseDecision::Renew,
        ),
        (
            "renews its own Lease even after it lapsed",
            Some(lease(Some("me"), Some(10), Some(0), Some(15))),
            true,
            LeaseDecision::Renew,
        ),
        (
            "waits for another replica's unexpired Lease",
            Some(lease(Some("other"), Some(95), Some(0), Some(15))),
            false,
            wait("other", 110),
        ),
        (
            "takes over another replica's Lease once it expired",
            Some(lease(Some("other"), Some(80), Some(0), Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "takes over exactly at expiry",
            Some(lease(Some("other"), Some(85), Some(0), Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "honours a longer leaseDurationSeconds",
            Some(lease(Some("other"), Some(80), Some(0), Some(60))),
            false,
            wait("other", 140),
        ),
        (
            "counts a missing leaseDurationSeconds as 15s",
            Some(lease(Some("other"), Some(90), None, None)),
            false,
            wait("other", 105),
        ),
        (
            "falls back to the acquire time when there is no renew time",
            Some(lease(Some("other"), None, Some(95), Some(15))),
            false,
            wait("other", 110),
        ),
        (
            "takes a Lease held by another with no times at all",
            Some(lease(Some("other"), None, None, Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "takes its own Lease afresh when it is not leading (it lost the Lease, or restarted)",
            Some(lease(Some("me"), Some(95), Some(0), Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "takes its own lapsed Lease afresh when it is not leading",
            Some(lease(Some("me"), Some(10), Some(0), Some(15))),
            false,
            LeaseDecision::Acquire,
        ),
        (
            "a leader waits for another replica's unexpired Lease",
            Some(lease(Some("other"), Some(95), Some(0), Some(15))),
            true,
            wait("other", 110),
        ),
    ];
    for (name, current, leading, expected) in cases {
        assert_eq!(
            lease_decision(current.as_ref(), "me", leading, now),
            expected,
            "{name}"
        );
    }
}

/// A tolerant fake API server for [`run`]: it answers requests in whatever
/// order the controller's watches and reconciles make them, keeps watch
/// requests open without events, and records the writes.
#[derive(Default)]
struct FakeCluster {
    lease: Option<Value>,
    lease_writes: Vec<(Method, Value)>,
    secret: Option<Value>,
    secret_patches: Vec<Received>,
    status_patches: Vec<Received>,
    cluster_issuer_status_patches: Vec<Received>,
    unexpected: Vec<String>,
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/lanyard/leases";

async fn serve_fake_cluster(
    handle: MockHandle,
    anchor: Value,
    cluster: Arc<std::sync::Mutex<FakeCluster>>,
) {
    let mut server = ApiServer(handle);
    let mut open_watches = Vec::new();
    let list = |kind: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items});
    loop {
        let Some((request, send)) = server.0.next_request().await else {
            return;
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let watch = request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true");
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if watch {
            open_watches.push(send);
            continue;
        }
        let mut cluster = cluster.lock().unwrap();
        let lease_name = format!("{LEASE_PATH}/lanyard-controller");
        match (method.clone(), path.as_str()) {
            (Method::GET, "/apis/lanyard.dev/v1/certificates") => respond(
                send,
                StatusCode::OK,
                &list(
                    "CertificateList",
                    vec![serde_json::to_value(identity_issuer()).unwrap()],
                ),
            ),
            (Method::GET, "/apis/lanyard.dev/v1/clusterissuers") => respond(
                send,
                StatusCode::OK,
                &list("ClusterIssuerList", vec![cluster_issuer_json()]),
            ),
            (Method::GET, "/apis/lanyard.dev/v1/issuers" | "/api/v1/secrets") => {
                respond(send, StatusCode::OK, &list("List", vec![]))
            }
            (Method::GET, CLUSTER_ISSUER_PATH) => {
                respond(send, StatusCode::OK, &cluster_issuer_json())
            }
            (Method::GET, ANCHOR_SECRET_PATH) => respond(send, StatusCode::OK, &anchor),
            (Method::GET, _) if path == lease_name || path == SECRET_PATH => {
                let current = if path == SECRET_PATH {
                    cluster.secret.clone()
                } else {
                    cluster.lease.clone()
                };
                match current {
                    Some(object) => respond(send, StatusCode::OK, &object),
                    None => respond(
                        send,
                        StatusCode::NOT_FOUND,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                }
            }
            (Method::POST, LEASE_PATH) | (Method::PUT, _) if path.starts_with(LEASE_PATH) => {
                cluster.lease = Some(body.clone());
                cluster.lease_writes.push((method, body.clone()));
                respond(send, StatusCode::OK, &body);
            }
            (Method::PATCH, SECRET_PATH) => {
                cluster.secret = Some(body.clone());
                respond(send, StatusCode::OK, &body);
                cluster.secret_patches.push(Received {
                    query,
                    content_type: String::new(),
                    body,
                });
            }
            (Method::PATCH, STATUS_PATH) => {
                respond(send, StatusCode::OK, &with_status(identity_issuer())(&body));
                cluster.status_patches.push(Received {
                    query,
                    content_type: String::new(),
                    body,
                });
            }
            (Method::PATCH, CLUSTER_ISSUER_STATUS_PATH) => {
                respond(send, StatusCode::OK, &cluster_issuer_with_status(&body));
                cluster.cluster_issuer_status_patches.push(Received {
                    query,
                    content_type: String::new(),
                    body,
                });
            }
            _ => {
                cluster.unexpected.push(format!("{method} {path}"));
                respond(
                    send,
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "unexpected"}),
                );
            }
        }
    }
}

#[tokio::test]
async fn run_takes_the_lease_reconciles_what_it_lists_and_gives_the_lease_up_on_shutdown() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cluster = Arc::new(std::sync::Mutex::new(FakeCluster::default()));
    let server = tokio::spawn(serve_fake_cluster(handle, anchor_json, cluster.clone()));
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        ManualClock::new(t0() + hours(1)),
        Arc::new(Metrics::new()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(lanyard_rotator::kube::run(
        ctx,
        Some(lanyard_rotator::kube::LeaderElection::new(
            "lanyard",
            "replica-a",
        )),
        async {
            let _ = stopped.await;
        },
    ));

    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let cluster = cluster.lock().unwrap();
                if !cluster.status_patches.is_empty()
                    && !cluster.cluster_issuer_status_patches.is_empty()
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listed Certificate and ClusterIssuer were reconciled");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), controller)
        .await
        .expect("run returns after shutdown")
        .expect("run did not panic")
        .expect("run succeeded");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client is gone once run returned")
        .unwrap();

    let cluster = cluster.lock().unwrap();
    assert!(
        cluster.unexpected.is_empty(),
        "unexpected requests: {:?}",
        cluster.unexpected
    );
    assert_eq!(cluster.secret_patches.len(), 1, "one Secret apply");
    let applied = &cluster.secret_patches[0];
    assert_eq!(
        applied.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    let ready = ready_condition(&cluster.status_patches[0].body["status"]);
    assert_eq!(ready["status"], "True");
    // The listed ClusterIssuer got its status once (the fake's watches
    // send no events, so nothing triggers it again before shutdown).
    assert_eq!(
        cluster.cluster_issuer_status_patches.len(),
        1,
        "one ClusterIssuer status patch"
    );
    let issuer_patch = &cluster.cluster_issuer_status_patches[0];
    assert_eq!(
        issuer_patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    let ready = ready_condition(&issuer_patch.body["status"]);
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(ready["reason"], "KeyPairVerified");
    // The Lease was created for this replica, then given up.
    let writes: Vec<(&Method, Option<&str>)> = cluster
        .lease_writes
        .iter()
        .map(|(method, lease)| (method, lease["spec"]["holderIdentity"].as_str()))
        .collect();
    assert_eq!(
        writes,
        [(&Method::POST, Some("replica-a")), (&Method::PUT, None)],
        "{:?}",
        cluster.lease_writes
    );
}
