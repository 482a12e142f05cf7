//! The Kubernetes shell against the API's wire shape: kube-rs' tower-test
//! mock service plays the API server through a scenario of expected
//! requests (controller-rs' `ApiServerVerifier`), answering each with the
//! JSON a real one would send.
//!
//! A reconcile reads the watch caches, not the API server: each scenario
//! declares what the caches hold ([`Cached`]), passed through the same
//! strip functions the watches use, and expects only the requests a
//! reconcile makes beyond them (the issuer's CA Secret, once per version;
//! a Secret whose contents the caches do not hold) and its writes.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::client::Body;
use kube::core::{PartialObjectMeta, TypeMeta};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use lanyard_crds::api::{
    Certificate, CertificateStatus, ClusterIssuer, ClusterIssuerSpec, Issuer, IssuerKind,
    IssuerSpec,
};
use lanyard_crds::time::ManualClock;
use lanyard_issuer::Certificate as X509;
use lanyard_rotator::kube::cache::{
    CacheWriters, strip_certificate, strip_issuer, strip_secret, strip_secret_metadata,
};
use lanyard_rotator::kube::{
    Caches, Context, Error, IssuerResource, LeaseDecision, MANAGED_LABEL, STALE_REQUEUE,
    issuer_status, lease_decision, reconcile_certificate, reconcile_issuer,
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
const UID: &str = "5d1b1e0c-0000-4000-8000-000000000001";
const CLUSTER_ISSUER_PATH: &str = "/apis/lanyard.dev/v1/clusterissuers/linkerd-trust-anchor";
const CLUSTER_ISSUER_STATUS_PATH: &str =
    "/apis/lanyard.dev/v1/clusterissuers/linkerd-trust-anchor/status";
const ANCHOR_SECRET_PATH: &str = "/api/v1/namespaces/lanyard/secrets/linkerd-trust-anchor";
const SECRET_PATH: &str = "/api/v1/namespaces/linkerd/secrets/linkerd-identity-issuer";
const STATUS_PATH: &str =
    "/apis/lanyard.dev/v1/namespaces/linkerd/certificates/linkerd-identity-issuer/status";
/// The resourceVersion the mock API server gives every Secret it applies.
const APPLIED_VERSION: &str = "21";
/// How long a scenario's step may take before it counts as stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A query string as a map, percent-decoded (`labelSelector=%21a%2Fb` is
/// `!a/b`).
fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(encoded: &str) -> String {
    let mut out = Vec::with_capacity(encoded.len());
    let mut rest = encoded.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let hex = tail
            .get(..2)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                rest = &tail[2..];
            }
            (b'+', _) => {
                out.push(b' ');
                rest = tail;
            }
            _ => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8(out).expect("a UTF-8 query")
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
            "unexpected request {} {}",
            request.method(),
            request.uri()
        );
        let query = query_map(request.uri().query());
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

    /// Expects a PATCH and answers with `answer(body)`.
    async fn patch(&mut self, path: &str, answer: impl FnOnce(&Value) -> Value) -> Received {
        let (received, send) = self.next(Method::PATCH, path).await;
        respond(send, StatusCode::OK, &answer(&received.body));
        received
    }

    /// Expects `method path` and answers it with the error `code`, as the
    /// API server words one.
    async fn fail(
        &mut self,
        method: Method,
        path: &str,
        code: StatusCode,
        reason: &str,
        message: &str,
    ) -> Received {
        let (received, send) = self.next(method, path).await;
        respond(
            send,
            code,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code.as_u16()}),
        );
        received
    }

    /// Expects a PATCH and answers 409 Conflict, as the API server does when
    /// the patch's resourceVersion is not the object's.
    async fn patch_conflict(&mut self, path: &str) -> Received {
        self.fail(
            Method::PATCH,
            path,
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        )
        .await
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

/// What a scenario's watch caches hold, as the watches deliver it.
#[derive(Default)]
struct Cached {
    certificates: Vec<Certificate>,
    issuers: Vec<Issuer>,
    cluster_issuers: Vec<ClusterIssuer>,
    /// Secrets as the API server sends them: one carrying [`MANAGED_LABEL`]
    /// is cached whole (stripped), any other by its metadata only.
    secrets: Vec<Value>,
}

impl Cached {
    fn certificate(mut self, certificate: Certificate) -> Self {
        self.certificates.push(certificate);
        self
    }

    fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    fn cluster_issuer(mut self, issuer: ClusterIssuer) -> Self {
        self.cluster_issuers.push(issuer);
        self
    }

    fn secret(mut self, secret: Value) -> Self {
        self.secrets.push(secret);
        self
    }
}

/// The ClusterIssuer `linkerd-trust-anchor` and its CA Secret, `anchor`
/// (of which the caches hold the metadata only: it is not labelled).
fn with_anchor(anchor: &Value) -> Cached {
    Cached::default()
        .cluster_issuer(cluster_issuer())
        .secret(anchor.clone())
}

/// Where reconciles run: a [`Context`] whose client talks to the mock API
/// server, and the writing ends of the caches it reads.
struct Scenario {
    ctx: Arc<Context<ManualClock>>,
    server: ApiServer,
    caches: CacheWriters,
}

/// A scenario at `now` whose caches hold `cached`.
fn scenario(now: DateTime<Utc>, cached: Cached) -> Scenario {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, ManualClock::new(now), Arc::new(Metrics::new()));
    let (caches, writers) = Caches::new();
    ctx.use_caches(caches);
    let mut scenario = Scenario {
        ctx: Arc::new(ctx),
        server: ApiServer(handle),
        caches: writers,
    };
    scenario.cache(cached);
    scenario
}

impl Scenario {
    /// Delivers `cached` to the caches, as watch events of the objects
    /// added or changed. A Secret that gains [`MANAGED_LABEL`] leaves the
    /// metadata cache for the managed one (and the reverse), as it leaves
    /// one watch's label selector for the other's.
    fn cache(&mut self, cached: Cached) {
        for mut certificate in cached.certificates {
            strip_certificate(&mut certificate);
            self.caches
                .certificates
                .apply_watcher_event(&watcher::Event::Apply(certificate));
        }
        for mut issuer in cached.issuers {
            strip_issuer(&mut issuer);
            self.caches
                .issuers
                .apply_watcher_event(&watcher::Event::Apply(issuer));
        }
        for mut issuer in cached.cluster_issuers {
            strip_issuer(&mut issuer);
            self.caches
                .cluster_issuers
                .apply_watcher_event(&watcher::Event::Apply(issuer));
        }
        for json in cached.secrets {
            let mut secret: Secret = serde_json::from_value(json).expect("a v1.Secret");
            let mut metadata = PartialObjectMeta::<Secret> {
                types: Some(TypeMeta {
                    api_version: "v1".into(),
                    kind: "Secret".into(),
                }),
                metadata: secret.metadata.clone(),
                _phantom: std::marker::PhantomData,
            };
            let managed = secret
                .metadata
                .labels
                .as_ref()
                .is_some_and(|labels| labels.contains_key(MANAGED_LABEL));
            if managed {
                self.caches
                    .other_secrets
                    .apply_watcher_event(&watcher::Event::Delete(metadata));
                strip_secret(&mut secret);
                self.caches
                    .secrets
                    .apply_watcher_event(&watcher::Event::Apply(secret));
            } else {
                self.caches
                    .secrets
                    .apply_watcher_event(&watcher::Event::Delete(secret));
                strip_secret_metadata(&mut metadata);
                self.caches
                    .other_secrets
                    .apply_watcher_event(&watcher::Event::Apply(metadata));
            }
        }
    }

    /// Reconciles `certificate` as the controller does, from its cached
    /// copy (the Certificate is cached first), while `expected` plays the
    /// API server.
    async fn reconcile<T>(
        &mut self,
        certificate: &Certificate,
        expected: impl AsyncFnOnce(&mut ApiServer) -> T,
    ) -> (Result<Action, Error>, T) {
        self.cache(Cached::default().certificate(certificate.clone()));
        let cached = self
            .ctx
            .caches()
            .certificates
            .get(&ObjectRef::from_obj(certificate))
            .expect("the Certificate is cached");
        let reconcile = reconcile_certificate(cached, self.ctx.clone());
        exchange(&mut self.server, reconcile, expected).await
    }

    /// Reconciles `issuer` (stripped, as cached) while `expected` plays the
    /// API server.
    async fn reconcile_issuer<K: IssuerResource, T>(
        &mut self,
        issuer: &K,
        expected: impl AsyncFnOnce(&mut ApiServer) -> T,
    ) -> (Result<Action, Error>, T) {
        let mut issuer = issuer.clone();
        strip_issuer(&mut issuer);
        let reconcile = reconcile_issuer(Arc::new(issuer), self.ctx.clone());
        exchange(&mut self.server, reconcile, expected).await
    }

    /// Ends the scenario: drops the client and the caches; fails if a
    /// request is still to come.
    async fn finish(self) {
        let Scenario {
            ctx,
            server,
            caches,
        } = self;
        drop(ctx);
        drop(caches);
        tokio::time::timeout(STEP_TIMEOUT, server.done())
            .await
            .expect("the client was dropped");
    }
}

/// Runs `reconcile` while `expected` answers the requests it expects;
/// fails if the reconcile makes one more, or if they do not both finish.
async fn exchange<R, T>(
    server: &mut ApiServer,
    reconcile: impl Future<Output = R>,
    expected: impl AsyncFnOnce(&mut ApiServer) -> T,
) -> (R, T) {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut reconcile = std::pin::pin!(reconcile);
        let mut result = None;
        let out = {
            let mut expected = std::pin::pin!(expected(&mut *server));
            loop {
                tokio::select! {
                    finished = &mut reconcile, if result.is_none() => result = Some(finished),
                    out = &mut expected => break out,
                }
            }
        };
        let result = match result {
            Some(result) => result,
            None => tokio::select! {
                finished = &mut reconcile => finished,
                Some((request, _)) = server.0.next_request() => panic!(
                    "unexpected request {} {}",
                    request.method(),
                    request.uri()
                ),
            },
        };
        // A request sent and then abandoned would still wait here.
        if let Some(Some((request, _))) = server.0.next_request().now_or_never() {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
        (result, out)
    })
    .await
    .expect("the reconcile and the requests it was expected to make finished")
}

/// One reconcile of `certificate` at `now` over caches holding `cached`,
/// making exactly the requests `expected` takes.
async fn reconcile_once<T>(
    certificate: &Certificate,
    now: DateTime<Utc>,
    cached: Cached,
    expected: impl AsyncFnOnce(&mut ApiServer) -> T,
) -> (Result<Action, Error>, T) {
    let mut scenario = scenario(now, cached);
    let out = scenario.reconcile(certificate, expected).await;
    scenario.finish().await;
    out
}

/// One reconcile of `issuer`, as [`reconcile_once`] does a Certificate's;
/// returns the metrics too.
async fn reconcile_issuer_once<K: IssuerResource, T>(
    issuer: &K,
    now: DateTime<Utc>,
    cached: Cached,
    expected: impl AsyncFnOnce(&mut ApiServer) -> T,
) -> (Result<Action, Error>, T, Arc<Metrics>) {
    let mut scenario = scenario(now, cached);
    let metrics = scenario.ctx.metrics.clone();
    let (result, out) = scenario.reconcile_issuer(issuer, expected).await;
    scenario.finish().await;
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

/// The issuances of the identity issuer Certificate that
/// `lanyard_certificate_issued_total` counts (0 without a series).
fn issued_total(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("lanyard_certificate_issued_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            labels
                .contains(&format!("name=\"{NAME}\""))
                .then(|| value.trim().parse::<u64>().unwrap())
        })
        .sum()
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

/// `secret` carrying [`MANAGED_LABEL`], as every Secret the controller
/// writes does.
fn labelled(mut secret: Value) -> Value {
    secret["metadata"]["labels"][MANAGED_LABEL] = json!("true");
    secret
}

/// `object` at resourceVersion `version`.
fn at_version(mut object: Value, version: &str) -> Value {
    object["metadata"]["resourceVersion"] = json!(version);
    object
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
    cert.metadata.uid = Some(UID.into());
    cert.metadata.resource_version = Some("7".into());
    cert
}

/// The resourceVersion after `version` (a write moves it on).
fn next_version(version: Option<&str>) -> String {
    let version: u64 = version
        .unwrap_or("0")
        .parse()
        .expect("a numeric resourceVersion");
    (version + 1).to_string()
}

/// The Certificate with the patched status, at its next resourceVersion,
/// as the API server answers a status patch.
fn with_status(certificate: Certificate) -> impl FnOnce(&Value) -> Value {
    move |body| serde_json::to_value(status_written(&certificate, body)).unwrap()
}

/// `certificate` after the status patch `body` was written: the status
/// patched, at its next resourceVersion (as the API server answers the
/// patch, and the Certificate watch then delivers it).
fn status_written(certificate: &Certificate, body: &Value) -> Certificate {
    let mut written = certificate.clone();
    written.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
    written.metadata.resource_version = Some(next_version(
        certificate.metadata.resource_version.as_deref(),
    ));
    written
}

/// The applied object echoed back at [`APPLIED_VERSION`], as the API
/// server answers an apply.
fn echo(body: &Value) -> Value {
    at_version(body.clone(), APPLIED_VERSION)
}

fn ready_condition(status: &Value) -> Value {
    condition(status, "Ready")
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
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
    // Changed with the watch caches: the ClusterIssuer comes from its cache
    // and the Secret is known missing from the Secret caches, so neither is
    // read; the CA Secret, whose contents the caches do not hold, is.
    let (result, (secret_patch, status_patch)) = reconcile_once(
        &identity_issuer(),
        now,
        with_anchor(&anchor_json),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let secret = server.patch(SECRET_PATH, echo).await;
            let status = server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await;
            (secret, status)
        },
    )
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
    assert_eq!(owners[0]["uid"], UID);
    assert_eq!(owners[0]["controller"], true);
    assert_eq!(
        body["metadata"]["annotations"]["lanyard.dev/issuer-kind"],
        "ClusterIssuer"
    );
    // New: the label that puts the Secret in the managed-Secret watch, and
    // the revision a later reconcile records if this status write is lost.
    assert_eq!(body["metadata"]["labels"][MANAGED_LABEL], "true", "{body}");
    assert_eq!(body["metadata"]["annotations"]["lanyard.dev/revision"], "1");

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
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let mut cert = identity_issuer();
    cert.spec.issuer_ref.name = "missing".into();
    let answer = with_status(cert.clone());
    // Changed with the watch caches: an issuer absent from its cache is
    // missing without a GET, and so is a Secret absent from the Secret
    // caches; the status patch is the only request.
    let (result, status_patch) =
        reconcile_once(&cert, t0(), with_anchor(&anchor_json), async |server| {
            server.patch(STATUS_PATH, answer).await
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

/// Was `an_issuance_read_from_a_stale_copy_is_recorded_on_top_of_the_current_status`,
/// which re-read the Certificate after the 409 and wrote over it in the
/// same reconcile. Changed with the watch caches: the 409 ends the
/// reconcile (requeued after `STALE_REQUEUE`, nothing read), and the next
/// reconcile, on the fresher cached copy, finds the revision in the
/// Secret's annotation and records it.
#[tokio::test]
async fn an_issuance_whose_status_write_conflicts_is_recorded_by_the_next_reconcile_from_the_secret()
 {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    // The cached copy is at resourceVersion 7 and says revision 3 (its
    // Secret was deleted since); the API server has moved on to 9 (someone
    // labelled the Certificate).
    let mut stale = identity_issuer();
    stale.status = Some(CertificateStatus {
        revision: Some(3),
        ..Default::default()
    });
    let mut current = stale.clone();
    current.metadata.resource_version = Some("9".into());
    current.metadata.labels = Some([("team".to_string(), "identity".to_string())].into());

    let mut scenario = scenario(now, with_anchor(&anchor_json));
    let metrics = scenario.ctx.metrics.clone();
    let (result, (applied, refused)) = scenario
        .reconcile(&stale, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let applied = server.patch(SECRET_PATH, echo).await;
            let refused = server.patch_conflict(STATUS_PATH).await;
            (applied, refused)
        })
        .await;
    assert_eq!(
        result.expect("a conflict is not an API failure"),
        Action::requeue(STALE_REQUEUE)
    );
    assert_eq!(refused.body["metadata"]["resourceVersion"], "7");
    assert_eq!(refused.body["status"]["revision"], 4);
    // The Secret holds the revision the status could not.
    assert_eq!(
        applied.body["metadata"]["annotations"]["lanyard.dev/revision"],
        "4"
    );
    assert_eq!(
        issued_total(&metrics),
        0,
        "not counted before it is recorded"
    );

    // The watches deliver the current Certificate and the applied Secret:
    // one request, the status patch recording revision 4 over the current
    // copy (its version, its revision's successor, never back).
    scenario.cache(Cached::default().secret(echo(&applied.body)));
    let (result, written) = scenario
        .reconcile(&current, async |server| {
            server
                .patch(STATUS_PATH, with_status(current.clone()))
                .await
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(written.body["metadata"]["resourceVersion"], "9");
    let status = &written.body["status"];
    assert_eq!(status["revision"], 4);
    assert_eq!(ready_condition(status)["status"], "True");
    let issuing = condition(status, "Issuing");
    assert_eq!(issuing["status"], "False", "{issuing}");
    assert_eq!(issuing["reason"], "Issued", "{issuing}");
    assert_eq!(issued_total(&metrics), 1, "one issuance, counted once");
    scenario.finish().await;
}

/// An issuance whose status patch fails for another reason than a
/// conflict: the reconcile fails, and the next one records the revision
/// the applied Secret carries.
#[tokio::test]
async fn an_issuance_whose_status_write_fails_is_recorded_by_the_next_reconcile_from_the_secret() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let cert = identity_issuer();
    let mut scenario = scenario(now, with_anchor(&anchor_json));
    let metrics = scenario.ctx.metrics.clone();
    let (result, applied) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let applied = server.patch(SECRET_PATH, echo).await;
            server
                .fail(
                    Method::PATCH,
                    STATUS_PATH,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "etcdserver: request timed out",
                )
                .await;
            applied
        })
        .await;
    let error = result.expect_err("a failed status write fails the reconcile");
    assert!(
        error
            .to_string()
            .contains("updating the status of Certificate `linkerd/linkerd-identity-issuer`"),
        "{error}"
    );
    assert_eq!(
        applied.body["metadata"]["annotations"]["lanyard.dev/revision"],
        "1"
    );
    assert_eq!(
        issued_total(&metrics),
        0,
        "not counted before it is recorded"
    );

    // The Secret watch delivers the applied Secret; the Certificate is as
    // it was. One request: the status patch recording revision 1.
    scenario.cache(Cached::default().secret(echo(&applied.body)));
    let (result, written) = scenario
        .reconcile(&cert, async |server| {
            server.patch(STATUS_PATH, with_status(cert.clone())).await
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(written.body["metadata"]["resourceVersion"], "7");
    let status = &written.body["status"];
    assert_eq!(status["revision"], 1);
    assert_eq!(ready_condition(status)["status"], "True");
    assert_eq!(condition(status, "Issuing")["reason"], "Issued");
    let not_after: DateTime<Utc> = serde_json::from_value(status["notAfter"].clone()).unwrap();
    let chain = X509::parse_pem_bundle(
        decode_secret(&applied.body).get("tls.crt").unwrap(),
        "tls.crt",
    )
    .unwrap();
    assert_eq!(not_after, chain[0].not_after(), "the applied certificate's");
    assert_eq!(issued_total(&metrics), 1, "one issuance, counted once");
    scenario.finish().await;
}

/// The Certificate's Secret, as the controller wrote it at `t0`: issued by
/// the anchor, labelled, in the managed-Secret cache.
fn up_to_date_secret(material: &lanyard_rotator::issuing::IssuerMaterial) -> (SecretData, Value) {
    let issued = support::issued_secret(&identity_issuer_spec(), material, t0());
    let json = labelled(secret_json(NAMESPACE, NAME, &issued, "kubernetes.io/tls"));
    (issued, json)
}

#[tokio::test]
async fn a_status_read_from_a_stale_copy_is_not_written_and_the_certificate_is_looked_at_again() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let (_, current_json) = up_to_date_secret(&material);
    let now = t0() + hours(24);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    // Changed with the watch caches: the Secret comes from its cache.
    let (result, refused) = reconcile_once(
        &identity_issuer(),
        now,
        with_anchor(&anchor_json).secret(current_json),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            // Nothing after the conflict: no retry from the stale copy.
            server.patch_conflict(STATUS_PATH).await
        },
    )
    .await;
    assert_eq!(
        result.expect("a conflict is not an API failure"),
        Action::requeue(STALE_REQUEUE)
    );
    assert_eq!(refused.body["metadata"]["resourceVersion"], "7");
}

#[tokio::test]
async fn a_certificate_with_an_up_to_date_secret_gets_no_secret_write() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let (_, current_json) = up_to_date_secret(&material);
    let now = t0() + hours(24);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    // Changed with the watch caches: the Secret comes from its cache.
    let (result, status_patch) = reconcile_once(
        &identity_issuer(),
        now,
        with_anchor(&anchor_json).secret(current_json),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            // No Secret PATCH: the next request is the status.
            server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await
        },
    )
    .await;
    result.expect("the reconcile succeeds");
    let ready = ready_condition(&status_patch.body["status"]);
    assert_eq!(ready["status"], "True");
    assert!(status_patch.body["status"].get("revision").is_none());
}

/// The steady state, and the point of the watch caches: once the CA is
/// loaded, reconciling an up-to-date Certificate makes no request at all.
#[tokio::test]
async fn a_certificate_whose_status_is_already_current_gets_no_write_and_then_no_request_at_all() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let (issued, current_json) = up_to_date_secret(&material);
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
    let mut scenario = scenario(now, with_anchor(&anchor_json).secret(current_json));
    // The first reconcile loads the CA: its Secret's contents are read.
    let (result, ()) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
        })
        .await;
    let first = result.expect("the reconcile succeeds");
    // The next one, an hour on, reads and writes nothing: the CA is kept
    // for the same versions of the ClusterIssuer and its Secret, and the
    // Secret is cached.
    scenario.ctx.clock.advance(hours(1));
    let (result, ()) = scenario.reconcile(&cert, async |_| {}).await;
    let second = result.expect("the reconcile succeeds");
    assert_eq!(first, Action::requeue(Duration::from_secs(3_600)));
    assert_eq!(second, Action::requeue(Duration::from_secs(3_600)));
    scenario.finish().await;
}

/// The Secret caches may lag behind the controller's own apply: until the
/// managed-Secret cache holds the applied version, the Secret is read
/// (once per reconcile) rather than taken for missing and issued again.
#[tokio::test]
async fn a_secret_just_applied_is_read_back_until_the_cache_holds_the_applied_version() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let cert = identity_issuer();
    let mut scenario = scenario(now, with_anchor(&anchor_json));
    let (result, (applied, status)) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            // Answered at APPLIED_VERSION (21).
            let applied = server.patch(SECRET_PATH, echo).await;
            let status = server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await;
            (applied, status)
        })
        .await;
    result.expect("the reconcile succeeds");
    let applied = echo(&applied.body);

    // The status write comes back through the Certificate watch before the
    // Secret watch delivers version 21: the Secret is read, found current,
    // and nothing is written.
    let recorded = status_written(&cert, &status.body);
    let answer = applied.clone();
    let (result, ()) = scenario
        .reconcile(&recorded, async move |server| {
            server.get(SECRET_PATH, answer).await;
        })
        .await;
    let up_to_date = Action::requeue(Duration::from_secs(3_600));
    assert_eq!(result.expect("the reconcile succeeds"), up_to_date);

    // Once the cache holds version 21, nothing is read.
    scenario.cache(Cached::default().secret(applied));
    let (result, ()) = scenario.reconcile(&recorded, async |_| {}).await;
    assert_eq!(result.expect("the reconcile succeeds"), up_to_date);
    scenario.finish().await;
}

/// The Secret watch may deliver the controller's apply before the
/// Certificate watch delivers its status write: the reconcile that event
/// triggers finds the Certificate cached as it was before the write, and
/// decides nothing from it (it would only write the status again, and be
/// refused); the Certificate watch's event triggers the next look.
#[tokio::test]
async fn a_certificate_cached_as_it_was_before_its_own_status_write_is_looked_at_again_without_a_request()
 {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let cert = identity_issuer();
    let mut scenario = scenario(now, with_anchor(&anchor_json));
    let answer = with_status(cert.clone());
    let (result, (applied, status)) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let applied = server.patch(SECRET_PATH, echo).await;
            let status = server.patch(STATUS_PATH, answer).await;
            (applied, status)
        })
        .await;
    result.expect("the reconcile succeeds");

    // The applied Secret is cached; the Certificate still at version 7.
    scenario.cache(Cached::default().secret(echo(&applied.body)));
    let (result, ()) = scenario.reconcile(&cert, async |_| {}).await;
    assert_eq!(
        result.expect("a lagging cache is not an API failure"),
        Action::requeue(STALE_REQUEUE)
    );
    // The status write arrives (version 8): up to date, nothing to do.
    let recorded = status_written(&cert, &status.body);
    assert_eq!(recorded.metadata.resource_version.as_deref(), Some("8"));
    let (result, ()) = scenario.reconcile(&recorded, async |_| {}).await;
    assert_eq!(
        result.expect("the reconcile succeeds"),
        Action::requeue(Duration::from_secs(3_600))
    );
    scenario.finish().await;
}

/// A renewal about to happen: the Certificate, issued revision 1 at `t0`
/// (its status recorded), is due at `now`; the managed-Secret cache holds
/// its Secret at version 20. Returns the CA Secret, the Certificate, the
/// cached Secret and `now`.
fn due_for_renewal() -> (Value, Certificate, Value, DateTime<Utc>) {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let mut first = support::issued_secret(&identity_issuer_spec(), &material, t0());
    first
        .annotations
        .insert("lanyard.dev/revision".into(), "1".into());
    // A year's certificate renewed 30 days before its end: due by now.
    let now = t0() + hours(8_100);
    let mut cert = identity_issuer();
    cert.status = Some(
        reconcile(
            &cert,
            Some(&first),
            ResolvedIssuer {
                kind: IssuerKind::ClusterIssuer,
                name: ANCHOR,
                material: Ok(&material),
            },
            t0(),
        )
        .status,
    );
    assert_eq!(cert.status.as_ref().unwrap().revision, Some(1));
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let replaced = at_version(
        labelled(secret_json(NAMESPACE, NAME, &first, "kubernetes.io/tls")),
        "20",
    );
    (anchor_json, cert, replaced, now)
}

/// As above, for a renewal: the cache holds the version the apply
/// replaced, whose certificate is due. Trusted, it would be renewed again.
#[tokio::test]
async fn a_renewed_secret_is_read_back_while_the_cache_holds_the_version_it_replaced() {
    let (anchor_json, cert, replaced, now) = due_for_renewal();
    let mut scenario = scenario(now, with_anchor(&anchor_json).secret(replaced));
    let metrics = scenario.ctx.metrics.clone();
    let answer = with_status(cert.clone());
    let (result, (applied, status)) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let applied = server.patch(SECRET_PATH, echo).await;
            let status = server.patch(STATUS_PATH, answer).await;
            (applied, status)
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(
        applied.body["metadata"]["annotations"]["lanyard.dev/revision"],
        "2"
    );
    assert_eq!(status.body["status"]["revision"], 2);
    let applied = echo(&applied.body);

    // The Certificate watch delivers the status; the Secret cache still
    // holds version 20. The Secret is read, not renewed again.
    let renewed = status_written(&cert, &status.body);
    let answer = applied.clone();
    let (result, ()) = scenario
        .reconcile(&renewed, async move |server| {
            server.get(SECRET_PATH, answer).await;
        })
        .await;
    result.expect("the reconcile succeeds");

    // Once the cache holds version 21, nothing is read.
    scenario.cache(Cached::default().secret(applied));
    let (result, ()) = scenario.reconcile(&renewed, async |_| {}).await;
    result.expect("the reconcile succeeds");
    assert_eq!(issued_total(&metrics), 1, "one renewal");
    scenario.finish().await;
}

/// As above, when someone else writes the Secret between the apply and the
/// read back (a label, say): the read finds version 22, not the 21
/// applied. The cache, still at 20, has caught up with neither, so the next
/// reconcile must read again rather than renew the certificate of 20.
#[tokio::test]
async fn a_renewed_secret_changed_by_someone_else_is_still_read_back_while_the_cache_holds_the_version_it_replaced()
 {
    let (anchor_json, cert, replaced, now) = due_for_renewal();
    let mut scenario = scenario(now, with_anchor(&anchor_json).secret(replaced));
    let answer = with_status(cert.clone());
    let (result, (applied, status)) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            let applied = server.patch(SECRET_PATH, echo).await;
            let status = server.patch(STATUS_PATH, answer).await;
            (applied, status)
        })
        .await;
    result.expect("the reconcile succeeds");
    let mut changed = echo(&applied.body);
    changed["metadata"]["labels"]["team"] = json!("identity");
    let changed = at_version(changed, "22");

    let renewed = status_written(&cert, &status.body);
    let answer = changed.clone();
    let (result, ()) = scenario
        .reconcile(&renewed, async move |server| {
            server.get(SECRET_PATH, answer).await;
        })
        .await;
    result.expect("the reconcile succeeds");
    // Looked at again (someone edits the Certificate's labels, or a
    // requeue) before the Secret watch delivers 21 or 22.
    let (result, ()) = scenario
        .reconcile(&renewed, async move |server| {
            server.get(SECRET_PATH, changed).await;
        })
        .await;
    result.expect("the reconcile succeeds");
    scenario.finish().await;
}

#[tokio::test]
async fn a_secret_holding_someone_elses_key_is_issued_into_without_removing_it() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let mut theirs = SecretData::default();
    theirs.data.insert("extra".into(), b"not ours".to_vec());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let current_json = secret_json(NAMESPACE, NAME, &theirs, "Opaque");
    // Not labelled, so the caches hold its metadata only: it is read
    // (changed with the watch caches: the ClusterIssuer is not).
    let (result, secret_patch) = reconcile_once(
        &identity_issuer(),
        t0(),
        with_anchor(&anchor_json).secret(current_json.clone()),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server.get(SECRET_PATH, current_json).await;
            let secret = server.patch(SECRET_PATH, echo).await;
            server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await;
            secret
        },
    )
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
    assert_eq!(body["metadata"]["labels"][MANAGED_LABEL], "true", "{body}");
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
    // Not labelled: its metadata only is cached, so it is read.
    let mut scenario = scenario(t0(), with_anchor(&anchor_json).secret(theirs.clone()));
    let metrics = scenario.ctx.metrics.clone();
    let answer = with_status(identity_issuer());
    let read = theirs.clone();
    let (result, status_patch) = scenario
        .reconcile(&identity_issuer(), async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server.get(SECRET_PATH, read).await;
            // No apply of the Secret: the status patch comes next.
            server.patch(STATUS_PATH, answer).await
        })
        .await;
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

    // Within the backoff, a second look writes nothing at all. (Changed
    // with the watch caches: on the same context the CA is not read again;
    // the Secret, still not labelled, is.)
    let backing_off = status_written(&identity_issuer(), &status_patch.body);
    scenario.ctx.clock.set(t0() + chrono::TimeDelta::seconds(5));
    let (result, ()) = scenario
        .reconcile(&backing_off, async move |server| {
            server.get(SECRET_PATH, theirs).await;
        })
        .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(5)));
    scenario.finish().await;
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

/// A Secret this Certificate wrote before the controller labelled its
/// Secrets: the caches hold its metadata only, so it is read; being up to
/// date, it gets the label alone, by merge patch (an apply of the label
/// alone would drop the keys the earlier applies own), and is not issued
/// again. Labelled, it is read from the cache from then on.
#[tokio::test]
async fn a_secret_this_certificate_wrote_before_the_managed_label_gets_the_label_and_no_new_certificate()
 {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let material = ca_issuer(&anchor, t0());
    let issued = support::issued_secret(&identity_issuer_spec(), &material, t0());
    let now = t0() + hours(24);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let mut legacy = secret_json(NAMESPACE, NAME, &issued, "kubernetes.io/tls");
    legacy["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "lanyard.dev/v1",
        "kind": "Certificate",
        "name": NAME,
        "uid": UID,
        "controller": true,
        "blockOwnerDeletion": true
    }]);
    let cert = identity_issuer();
    let mut scenario = scenario(now, with_anchor(&anchor_json).secret(legacy.clone()));
    let read = legacy.clone();
    let (result, (label_patch, status_patch)) = scenario
        .reconcile(&cert, async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server.get(SECRET_PATH, read.clone()).await;
            let label = server
                .patch(SECRET_PATH, |_| at_version(labelled(read), "22"))
                .await;
            let status = server
                .patch(STATUS_PATH, with_status(identity_issuer()))
                .await;
            (label, status)
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(label_patch.content_type, "application/merge-patch+json");
    assert_eq!(
        label_patch.body,
        json!({"metadata": {"labels": {MANAGED_LABEL: "true"}}})
    );
    assert_eq!(
        label_patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    assert_eq!(label_patch.query.get("force"), None);
    let status = &status_patch.body["status"];
    assert_eq!(ready_condition(status)["status"], "True");
    assert!(status.get("revision").is_none(), "no issuance: {status}");

    // The watches deliver the labelled Secret (it moves to the managed
    // cache) and the status: nothing is read or written.
    scenario.cache(Cached::default().secret(at_version(labelled(legacy), "22")));
    let recorded = status_written(&cert, &status_patch.body);
    let (result, ()) = scenario.reconcile(&recorded, async |_| {}).await;
    result.expect("the reconcile succeeds");
    scenario.finish().await;
}

#[tokio::test]
async fn an_api_server_error_is_a_reconcile_error_and_writes_nothing() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    // Changed with the watch caches: the ClusterIssuer is not read, so the
    // first request that can fail is the CA Secret's.
    let (result, _) = reconcile_once(
        &identity_issuer(),
        t0(),
        with_anchor(&anchor_json),
        async |server| {
            server
                .fail(
                    Method::GET,
                    ANCHOR_SECRET_PATH,
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "secrets \"linkerd-trust-anchor\" is forbidden",
                )
                .await
        },
    )
    .await;
    let error = result.expect_err("a 403 fails the reconcile");
    assert!(
        error
            .to_string()
            .contains("reading Secret `lanyard/linkerd-trust-anchor`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_cluster_issuer_whose_ca_secret_holds_a_valid_ca_gets_a_ready_status() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (result, patch, metrics) = reconcile_issuer_once(
        &cluster_issuer(),
        now,
        with_anchor(&anchor_json),
        async move |server| {
            // The CA Secret, from the cluster resource namespace; the
            // ClusterIssuer itself is not read again.
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await
        },
    )
    .await;
    let action = result.expect("the reconcile succeeds");

    // A merge patch of the status subresource, as `lanyard`, guarded by
    // the resourceVersion the reconcile read.
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(
        patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    assert_eq!(patch.body["metadata"]["resourceVersion"], "11");
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

/// The Linkerd guide's trust anchor is itself a Certificate, so its Secret
/// is one the controller manages (cached whole, but cut to `tls.crt` and
/// `tls.key`): its contents are still read, once per version of the
/// ClusterIssuer and of the Secret.
#[tokio::test]
async fn a_ca_secret_the_controller_wrote_is_read_once_per_version_of_it_and_of_the_issuer() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let now = t0() + hours(1);
    let anchor_json = labelled(secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls"));
    let mut scenario = scenario(now, with_anchor(&anchor_json));
    let answer = anchor_json.clone();
    let (result, patch) = scenario
        .reconcile_issuer(&cluster_issuer(), async move |server| {
            server.get(ANCHOR_SECRET_PATH, answer).await;
            server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(ready_condition(&patch.body["status"])["status"], "True");
    let mut ready = cluster_issuer();
    ready.status = Some(serde_json::from_value(patch.body["status"].clone()).unwrap());
    ready.metadata.resource_version = Some("12".into());

    // The status write comes back as version 12 of the ClusterIssuer: the
    // CA is loaded again, from one more read, and nothing is written.
    let answer = anchor_json.clone();
    let (result, ()) = scenario
        .reconcile_issuer(&ready, async move |server| {
            server.get(ANCHOR_SECRET_PATH, answer).await;
        })
        .await;
    result.expect("the reconcile succeeds");
    // The same versions again: nothing is read.
    let (result, ()) = scenario.reconcile_issuer(&ready, async |_| {}).await;
    result.expect("the reconcile succeeds");
    // A new version of the CA Secret: read once more.
    let rotated = at_version(anchor_json, "2");
    scenario.cache(Cached::default().secret(rotated.clone()));
    let (result, ()) = scenario
        .reconcile_issuer(&ready, async move |server| {
            server.get(ANCHOR_SECRET_PATH, rotated).await;
        })
        .await;
    result.expect("the reconcile succeeds");
    scenario.finish().await;
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
    let (result, patch, metrics) = reconcile_issuer_once(
        &cluster_issuer(),
        t0(),
        with_anchor(&garbage_json),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, garbage_json).await;
            server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await
        },
    )
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
    // Changed with the watch caches: a CA Secret the caches have not seen
    // is missing without a GET; the status patch is the only request.
    let (result, patch, _) = reconcile_issuer_once(
        &cluster_issuer(),
        t0(),
        Cached::default().cluster_issuer(cluster_issuer()),
        async |server| {
            server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await
        },
    )
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
async fn an_issuer_whose_status_is_already_current_gets_no_patch_and_then_no_request_at_all() {
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
    issuer.metadata.resource_version = Some("5".into());
    // Written by an earlier reconcile: Ready since t0.
    issuer.status = Some(issuer_status(None, Ok(&material), Some(2), t0()));
    let anchor_json = secret_json(NAMESPACE, "mesh-ca", &anchor, "kubernetes.io/tls");
    let mut scenario = scenario(
        now,
        Cached::default()
            .issuer(issuer.clone())
            .secret(anchor_json.clone()),
    );
    let metrics = scenario.ctx.metrics.clone();
    let (result, ()) = scenario
        .reconcile_issuer(&issuer, async move |server| {
            // The Issuer's CA Secret is in the Issuer's namespace.
            server
                .get("/api/v1/namespaces/linkerd/secrets/mesh-ca", anchor_json)
                .await;
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
    // New with the watch caches: the CA loaded is kept for the same
    // versions of the Issuer and its Secret, so the next check (on the
    // issuer's schedule) makes no request.
    scenario.ctx.clock.advance(chrono::TimeDelta::minutes(5));
    let (result, ()) = scenario.reconcile_issuer(&issuer, async |_| {}).await;
    assert_eq!(
        result.expect("the reconcile succeeds"),
        Action::requeue(Duration::from_secs(300))
    );
    assert_eq!(
        issuer_ready_gauge(&metrics, "Issuer", "mesh-ca", "True"),
        Some(1)
    );
    scenario.finish().await;
}

#[tokio::test]
async fn an_api_server_error_reading_the_ca_secret_is_an_issuer_reconcile_error() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (result, _, _) = reconcile_issuer_once(
        &cluster_issuer(),
        t0(),
        with_anchor(&anchor_json),
        async |server| {
            server
                .fail(
                    Method::GET,
                    ANCHOR_SECRET_PATH,
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "secrets is forbidden",
                )
                .await
        },
    )
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
/// order the controller's watches and reconciles make them, serves the
/// five lists the watches start from, keeps watch requests open without
/// events, and records the reads and writes.
#[derive(Default)]
struct FakeCluster {
    lease: Option<Value>,
    lease_writes: Vec<(Method, Value)>,
    secret: Option<Value>,
    secret_patches: Vec<Received>,
    status_patches: Vec<Received>,
    cluster_issuer_status_patches: Vec<Received>,
    /// The path of every GET of one object (not the lists and watches).
    reads: Vec<String>,
    unexpected: Vec<String>,
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/lanyard/leases";
/// The Accept header of a metadata-only list.
const METADATA_LIST: &str = "as=PartialObjectMetadataList";

async fn serve_fake_cluster(
    handle: MockHandle,
    anchor: Value,
    cluster: Arc<std::sync::Mutex<FakeCluster>>,
) {
    let mut server = ApiServer(handle);
    let mut open_watches = Vec::new();
    let list = |kind: &str, items: Vec<Value>| json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items});
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"});
    let managed_selector = MANAGED_LABEL.to_string();
    let unmanaged_selector = format!("!{MANAGED_LABEL}");
    loop {
        let Some((request, send)) = server.0.next_request().await else {
            return;
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = query_map(request.uri().query());
        let watch = query.get("watch").is_some_and(|w| w == "true");
        let metadata_only = request
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains(METADATA_LIST));
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if watch {
            open_watches.push(send);
            continue;
        }
        let mut cluster = cluster.lock().unwrap();
        let lease_name = format!("{LEASE_PATH}/lanyard-controller");
        let selector = query.get("labelSelector").map(String::as_str);
        let listed = [
            "/apis/lanyard.dev/v1/certificates",
            "/apis/lanyard.dev/v1/issuers",
            "/apis/lanyard.dev/v1/clusterissuers",
            "/api/v1/secrets",
        ];
        if method == Method::GET && !listed.contains(&path.as_str()) {
            cluster.reads.push(path.clone());
        }
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
            (Method::GET, "/apis/lanyard.dev/v1/issuers") => {
                respond(send, StatusCode::OK, &list("IssuerList", vec![]));
            }
            // The managed Secrets, whole: none yet.
            (Method::GET, "/api/v1/secrets")
                if selector == Some(managed_selector.as_str()) && !metadata_only =>
            {
                respond(send, StatusCode::OK, &list("SecretList", vec![]));
            }
            // Every other Secret, metadata only: the anchor.
            (Method::GET, "/api/v1/secrets")
                if selector == Some(unmanaged_selector.as_str()) && metadata_only =>
            {
                let mut answer = list(
                    "PartialObjectMetadataList",
                    vec![json!({"apiVersion": "v1", "kind": "Secret",
                                "metadata": anchor["metadata"].clone()})],
                );
                answer["apiVersion"] = json!("meta.k8s.io/v1");
                respond(send, StatusCode::OK, &answer);
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
                    None => respond(send, StatusCode::NOT_FOUND, &not_found),
                }
            }
            (Method::POST, LEASE_PATH) | (Method::PUT, _) if path.starts_with(LEASE_PATH) => {
                cluster.lease = Some(body.clone());
                cluster.lease_writes.push((method, body.clone()));
                respond(send, StatusCode::OK, &body);
            }
            (Method::PATCH, SECRET_PATH) => {
                let applied = echo(&body);
                cluster.secret = Some(applied.clone());
                respond(send, StatusCode::OK, &applied);
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
                let selector = selector.map(|s| format!(" labelSelector={s}"));
                cluster.unexpected.push(format!(
                    "{method} {path}{}{}",
                    selector.unwrap_or_default(),
                    if metadata_only { " (metadata)" } else { "" }
                ));
                respond(send, StatusCode::NOT_FOUND, &not_found);
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
    assert_eq!(applied.body["metadata"]["labels"][MANAGED_LABEL], "true");
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
    // New with the watch caches: the ClusterIssuer and the Certificate's
    // Secret came from the lists, never read one by one; the CA Secret's
    // contents were read once, for the Certificate and the ClusterIssuer
    // both.
    let reads = &cluster.reads;
    assert!(
        !reads
            .iter()
            .any(|path| path == CLUSTER_ISSUER_PATH || path == SECRET_PATH),
        "{reads:?}"
    );
    assert_eq!(
        reads
            .iter()
            .filter(|path| *path == ANCHOR_SECRET_PATH)
            .count(),
        1,
        "{reads:?}"
    );
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

/// The ClusterIssuer `lanyard install` makes: a CA issuer whose anchor the
/// controller makes when its Secret is missing.
fn generating_cluster_issuer() -> ClusterIssuer {
    let mut issuer = cluster_issuer();
    issuer.metadata.annotations = Some(
        [(
            lanyard_crds::linkerd::GENERATE_ANCHOR_ANNOTATION.to_string(),
            "root.linkerd.cluster.local".to_string(),
        )]
        .into(),
    );
    issuer
}

#[tokio::test]
async fn an_annotated_ca_cluster_issuer_without_its_secret_gets_a_new_anchor_by_create() {
    let (result, (created, patch), _) = reconcile_issuer_once(
        &generating_cluster_issuer(),
        t0(),
        Cached::default().cluster_issuer(generating_cluster_issuer()),
        async |server| {
            // Not in the caches: asked for once, in case they lag.
            server
                .fail(
                    Method::GET,
                    ANCHOR_SECRET_PATH,
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "secrets \"linkerd-trust-anchor\" not found",
                )
                .await;
            let (created, send) = server
                .next(Method::POST, "/api/v1/namespaces/lanyard/secrets")
                .await;
            respond(send, StatusCode::CREATED, &created.body);
            // Until its watch event arrives the caches still lack it: the
            // status says so, and the Secret's event wakes the issuer.
            let patch = server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await;
            (created, patch)
        },
    )
    .await;
    result.expect("the reconcile succeeds");
    assert_eq!(created.body["metadata"]["name"], ANCHOR);
    assert_eq!(created.body["type"], "kubernetes.io/tls");
    let secret = decode_secret(&created.body);
    let anchor = lanyard_issuer::Certificate::parse_pem_bundle(&secret.data["tls.crt"], "tls.crt")
        .unwrap()
        .remove(0);
    assert_eq!(anchor.common_name(), Some("root.linkerd.cluster.local"));
    let key = lanyard_issuer::SigningKey::from_pem(&secret.data["tls.key"], "tls.key").unwrap();
    lanyard_issuer::TrustAnchor::new(anchor, key, t0()).expect("a usable anchor and its key");
    assert_eq!(
        ready_condition(&patch.body["status"])["reason"],
        "CASecretNotFound"
    );
}

#[tokio::test]
async fn an_annotated_issuer_whose_secret_exists_but_is_not_cached_yet_gets_no_new_anchor() {
    let anchor = anchor_secret("Lanyard Test Anchor", t0());
    let anchor_json = secret_json("lanyard", ANCHOR, &anchor, "kubernetes.io/tls");
    let (result, (), _) = reconcile_issuer_once(
        &generating_cluster_issuer(),
        t0(),
        Cached::default().cluster_issuer(generating_cluster_issuer()),
        async move |server| {
            server.get(ANCHOR_SECRET_PATH, anchor_json).await;
            server
                .patch(CLUSTER_ISSUER_STATUS_PATH, cluster_issuer_with_status)
                .await;
        },
    )
    .await;
    result.expect("the reconcile succeeds");
}
