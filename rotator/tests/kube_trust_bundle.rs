//! The TrustBundle reconcile against the API's wire shape: kube-rs'
//! tower-test mock service plays the API server through a scenario of
//! expected requests (controller-rs' `ApiServerVerifier`), as
//! `kube_shell.rs` does for Certificates.
//!
//! A reconcile reads the watch caches (the bundle's ClusterIssuer, which
//! Secrets and ConfigMaps exist, the Namespaces, the targets it wrote), so
//! each scenario declares what they hold, and expects only the requests
//! beyond them: the sources' contents, the targets' applies, the status.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::client::Body;
use kube::core::{PartialObjectMeta, TypeMeta};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use lanyard_crds::api::{CaIssuer, ClusterIssuer, ClusterIssuerSpec, IssuerConfig, IssuerRef};
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::ManualClock;
use lanyard_crds::trust_bundle::{
    BundleSource, BundleTarget, KeySelector, NamespaceSelector, TargetKey, TrustBundle,
    TrustBundleSpec, TrustBundleStatus,
};
use lanyard_issuer::{Certificate as X509, KeyAlgorithm, TrustAnchor};
use lanyard_rotator::kube::cache::{
    CacheWriters, strip_bundle_target, strip_issuer, strip_namespace_metadata,
    strip_secret_metadata,
};
use lanyard_rotator::kube::{
    BUNDLE_LABEL, BUNDLE_REQUEUE, Caches, Context, Error, reconcile_trust_bundle,
};
use lanyard_rotator::metrics::Metrics;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const BUNDLE: &str = "linkerd-identity-trust-roots";
const BUNDLE_UID: &str = "7b0c3d1e-0000-4000-8000-00000000b0d1";
const KEY: &str = "ca-bundle.crt";
const TRUST_NAMESPACE: &str = "lanyard";
const ANCHOR_ISSUER: &str = "linkerd-trust-anchor";
const STATUS_PATH: &str = "/apis/lanyard.dev/v1/trustbundles/linkerd-identity-trust-roots/status";
const MESH_LABEL: (&str, &str) = ("mesh.lanyard.dev/trust", "linkerd");
/// How long a scenario's step may take before it counts as stuck.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn secret_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/secrets/{name}")
}

fn config_map_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/configmaps/{BUNDLE}")
}

// ---------------------------------------------------------------------
// The mock API server (as in kube_shell.rs).

type MockHandle = Handle<Request<Body>, Response<Body>>;

struct ApiServer(MockHandle);

/// A request as the API server received it.
struct Received {
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
            .unwrap_or_else(|| panic!("expected {method} {path}, but the reconcile stopped"));
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

    /// Expects a DELETE and answers it as the API server does a deletion
    /// done at once.
    async fn delete(&mut self, path: &str) {
        let (_, send) = self.next(Method::DELETE, path).await;
        respond(
            send,
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        );
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
        if let Some(Some((request, _))) = server.0.next_request().now_or_never() {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
        (result, out)
    })
    .await
    .expect("the reconcile and the requests it was expected to make finished")
}

// ---------------------------------------------------------------------
// What the caches hold, and where reconciles run.

/// A namespace as the Namespace watch (metadata only) delivers it.
fn namespace(name: &str, labels: &[(&str, &str)], deleting: bool) -> PartialObjectMeta<Namespace> {
    let mut labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    PartialObjectMeta {
        types: Some(TypeMeta {
            api_version: "v1".into(),
            kind: "Namespace".into(),
        }),
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            resource_version: Some("1".into()),
            deletion_timestamp: deleting.then(|| Time("2026-01-01T00:00:00Z".parse().unwrap())),
            ..ObjectMeta::default()
        },
        _phantom: std::marker::PhantomData,
    }
}

/// A namespace carrying the mesh label the bundles select.
fn meshed(name: &str) -> PartialObjectMeta<Namespace> {
    namespace(name, &[MESH_LABEL], false)
}

struct Scenario {
    ctx: Arc<Context<ManualClock>>,
    server: ApiServer,
    caches: CacheWriters,
}

fn scenario(now: DateTime<Utc>) -> Scenario {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(client, ManualClock::new(now), Arc::new(Metrics::new()))
        .with_cluster_resource_namespace(TRUST_NAMESPACE)
        .with_trust_bundles(true);
    let (caches, writers) = Caches::new();
    ctx.use_caches(caches);
    Scenario {
        ctx: Arc::new(ctx),
        server: ApiServer(handle),
        caches: writers,
    }
}

impl Scenario {
    fn namespace(&mut self, mut namespace: PartialObjectMeta<Namespace>) -> &mut Self {
        strip_namespace_metadata(&mut namespace);
        self.caches
            .namespaces
            .apply_watcher_event(&watcher::Event::Apply(namespace));
        self
    }

    /// A Secret of the trust namespace, as the Secret watches deliver it:
    /// metadata only (it is not one Lanyard manages).
    fn secret(&mut self, secret: &Value) -> &mut Self {
        let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
        let mut metadata = PartialObjectMeta::<Secret> {
            types: Some(TypeMeta {
                api_version: "v1".into(),
                kind: "Secret".into(),
            }),
            metadata: secret.metadata,
            _phantom: std::marker::PhantomData,
        };
        strip_secret_metadata(&mut metadata);
        self.caches
            .other_secrets
            .apply_watcher_event(&watcher::Event::Apply(metadata));
        self
    }

    fn cluster_issuer(&mut self, mut issuer: ClusterIssuer) -> &mut Self {
        strip_issuer(&mut issuer);
        self.caches
            .cluster_issuers
            .apply_watcher_event(&watcher::Event::Apply(issuer));
        self
    }

    /// A ConfigMap a bundle wrote, as the labelled ConfigMap watch
    /// delivers it.
    fn target(&mut self, config_map: &Value) -> &mut Self {
        let mut config_map: ConfigMap = serde_json::from_value(config_map.clone()).unwrap();
        strip_bundle_target(&mut config_map);
        self.caches
            .bundle_config_maps
            .apply_watcher_event(&watcher::Event::Apply(config_map));
        self
    }

    /// Reconciles `bundle` (cached first, as the controller hands it over)
    /// while `expected` plays the API server.
    async fn reconcile<T>(
        &mut self,
        bundle: &TrustBundle,
        expected: impl AsyncFnOnce(&mut ApiServer) -> T,
    ) -> (Result<Action, Error>, T) {
        let mut cached = bundle.clone();
        strip_bundle_target(&mut cached);
        self.caches
            .trust_bundles
            .apply_watcher_event(&watcher::Event::Apply(cached.clone()));
        let reconcile = reconcile_trust_bundle(Arc::new(cached), self.ctx.clone());
        exchange(&mut self.server, reconcile, expected).await
    }

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

// ---------------------------------------------------------------------
// Fixtures: anchors, Secrets, bundles.

/// A fresh trust anchor, valid from `not_before` for `lifetime`.
fn anchor(not_before: DateTime<Utc>, lifetime: TimeDelta) -> X509 {
    TrustAnchor::generate(
        &IdentityDomain::linkerd_default(),
        lifetime,
        KeyAlgorithm::EcdsaP256,
        not_before,
    )
    .expect("an anchor")
    .certificate()
    .clone()
}

/// A Secret of the trust namespace as the API server returns it.
fn secret_json(name: &str, data: &[(&str, Vec<u8>)]) -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(TRUST_NAMESPACE.into()),
            resource_version: Some("5".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
    .unwrap()
}

fn pem_of(anchors: &[&X509]) -> String {
    anchors.iter().map(|a| a.to_pem()).collect()
}

fn cluster_issuer() -> ClusterIssuer {
    let mut issuer = ClusterIssuer::new(
        ANCHOR_ISSUER,
        ClusterIssuerSpec {
            config: IssuerConfig {
                ca: Some(CaIssuer {
                    secret_name: ANCHOR_ISSUER.into(),
                }),
                self_signed: None,
            },
        },
    );
    issuer.metadata.resource_version = Some("3".into());
    issuer
}

fn bundle(sources: Vec<BundleSource>, selector: Option<NamespaceSelector>) -> TrustBundle {
    let mut bundle = TrustBundle::new(
        BUNDLE,
        TrustBundleSpec {
            sources,
            target: BundleTarget {
                config_map: TargetKey { key: KEY.into() },
                secret: None,
                namespace_selector: selector,
            },
            propagation_delay: None,
        },
    );
    bundle.metadata.uid = Some(BUNDLE_UID.into());
    bundle.metadata.generation = Some(1);
    bundle.metadata.resource_version = Some("10".into());
    bundle
}

fn mesh_selector() -> Option<NamespaceSelector> {
    Some(NamespaceSelector {
        match_labels: BTreeMap::from([(MESH_LABEL.0.to_string(), MESH_LABEL.1.to_string())]),
    })
}

fn issuer_source() -> BundleSource {
    BundleSource {
        issuer_ref: Some(IssuerRef {
            name: ANCHOR_ISSUER.into(),
            kind: Some("ClusterIssuer".into()),
            group: None,
        }),
        ..BundleSource::default()
    }
}

fn secret_source(name: &str) -> BundleSource {
    BundleSource {
        secret: Some(KeySelector {
            name: name.into(),
            key: "ca.crt".into(),
        }),
        ..BundleSource::default()
    }
}

/// The applied object echoed back, as the API server answers an apply.
fn echo(body: &Value) -> Value {
    let mut object = body.clone();
    object["metadata"]["resourceVersion"] = json!("21");
    object
}

/// The bundle after the status patch `body`, at its next
/// resourceVersion, as the API server answers it and the watch delivers it.
fn status_written(bundle: &TrustBundle, body: &Value) -> TrustBundle {
    let mut written = bundle.clone();
    written.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
    let version: u64 = bundle
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    written.metadata.resource_version = Some((version + 1).to_string());
    written
}

fn with_status(bundle: &TrustBundle) -> impl FnOnce(&Value) -> Value + use<> {
    let bundle = bundle.clone();
    move |body| serde_json::to_value(status_written(&bundle, body)).unwrap()
}

fn ready(status: &Value) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_else(|| panic!("no Ready condition in {status}"))
}

/// The certificates in the PEM `body` applied under [`KEY`].
fn applied_anchors(body: &Value) -> Vec<X509> {
    let pem = body["data"][KEY].as_str().expect("the bundle's key");
    X509::parse_pem_bundle(pem.as_bytes(), KEY).expect("PEM certificates")
}

fn ders(certificates: &[X509]) -> Vec<Vec<u8>> {
    certificates.iter().map(|c| c.der().to_vec()).collect()
}

/// The value of the series `name{bundle="<BUNDLE>"}`, if it exists.
fn bundle_metric(metrics: &Metrics, name: &str) -> Option<f64> {
    metrics.encode().lines().find_map(|line| {
        let rest = line.strip_prefix(&format!("{name}{{"))?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .contains(&format!("bundle=\"{BUNDLE}\""))
            .then(|| value.trim().parse().unwrap())
    })
}

/// Checks that `received` is a server-side apply of the bundle's ConfigMap
/// in `namespace`, forced, as `lanyard`.
fn assert_applied_config_map(received: &Received, namespace: &str) {
    assert_eq!(received.content_type, "application/apply-patch+yaml");
    assert_eq!(
        received.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    assert_eq!(
        received.query.get("force").map(String::as_str),
        Some("true")
    );
    let body = &received.body;
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "ConfigMap");
    assert_eq!(body["metadata"]["name"], BUNDLE);
    assert_eq!(body["metadata"]["namespace"], namespace);
    assert_eq!(body["metadata"]["labels"][BUNDLE_LABEL], BUNDLE, "{body}");
    let owners = body["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(owners.len(), 1, "{body}");
    assert_eq!(owners[0]["apiVersion"], "lanyard.dev/v1");
    assert_eq!(owners[0]["kind"], "TrustBundle");
    assert_eq!(owners[0]["name"], BUNDLE);
    assert_eq!(owners[0]["uid"], BUNDLE_UID);
    assert_eq!(owners[0]["controller"], true);
    let keys: Vec<&String> = body["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, [KEY], "only the bundle's key");
}

// ---------------------------------------------------------------------
// Scenarios.

#[tokio::test]
async fn a_bundle_of_an_issuers_two_live_anchors_is_applied_in_each_selected_namespace_and_its_status_lists_both()
 {
    let now = t0() + TimeDelta::hours(1);
    let old = anchor(t0() - TimeDelta::days(30), TimeDelta::days(365));
    let new = anchor(t0(), TimeDelta::days(365));
    // The CA Secret's ca.crt holds old and new, as during an anchor
    // rotation; tls.crt is the new one.
    let ca = secret_json(
        ANCHOR_ISSUER,
        &[
            ("ca.crt", pem_of(&[&new, &old]).into_bytes()),
            ("tls.crt", new.to_pem().into_bytes()),
        ],
    );
    let bundle = bundle(vec![issuer_source()], mesh_selector());
    let mut scenario = scenario(now);
    scenario
        .namespace(meshed("apps"))
        .namespace(meshed("linkerd"))
        .namespace(namespace("kube-system", &[], false))
        .namespace(namespace("leaving", &[MESH_LABEL], true))
        .cluster_issuer(cluster_issuer())
        .secret(&ca);

    let ca_json = ca.clone();
    let (result, (applies, status_patch)) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(
                    &secret_path(TRUST_NAMESPACE, ANCHOR_ISSUER),
                    ca_json.clone(),
                )
                .await;
            let apps = server.patch(&config_map_path("apps"), echo).await;
            let linkerd = server.patch(&config_map_path("linkerd"), echo).await;
            let status = server.patch(STATUS_PATH, with_status(&bundle)).await;
            // The anchor's rotation reads its CA Secret afresh; one without
            // its key is not Lanyard's to rotate, so nothing follows.
            server
                .get(&secret_path(TRUST_NAMESPACE, ANCHOR_ISSUER), ca_json)
                .await;
            ([apps, linkerd], status)
        })
        .await;
    let action = result.expect("the reconcile succeeds");

    // Both anchors, oldest first, in each selected namespace; none in the
    // unselected one or the one being deleted.
    for (received, namespace) in applies.iter().zip(["apps", "linkerd"]) {
        assert_applied_config_map(received, namespace);
        assert_eq!(
            ders(&applied_anchors(&received.body)),
            ders(&[old.clone(), new.clone()]),
            "{namespace}"
        );
    }

    // The status, by a merge patch guarded by the version read.
    assert_eq!(status_patch.content_type, "application/merge-patch+json");
    assert_eq!(
        status_patch.query.get("fieldManager").map(String::as_str),
        Some("lanyard")
    );
    assert_eq!(status_patch.body["metadata"]["resourceVersion"], "10");
    let status = &status_patch.body["status"];
    let condition = ready(status);
    assert_eq!(condition["status"], "True", "{condition}");
    assert_eq!(condition["reason"], "Synced");
    assert_eq!(
        condition["message"],
        "2 anchor(s) written to 2 namespace(s)"
    );
    assert_eq!(condition["observedGeneration"], 1);
    assert_eq!(status["anchorCount"], 2);
    assert_eq!(status["targetNamespaces"], json!(["apps", "linkerd"]));
    let anchors = status["anchors"].as_array().unwrap();
    assert_eq!(anchors.len(), 2);
    for (listed, anchor) in anchors.iter().zip([&old, &new]) {
        assert_eq!(listed["sha256"], anchor.sha256_fingerprint());
        assert_eq!(listed["subject"], anchor.subject());
        let not_after: DateTime<Utc> = serde_json::from_value(listed["notAfter"].clone()).unwrap();
        assert_eq!(not_after, anchor.not_after());
        assert!(listed["serialNumber"].as_str().unwrap().contains(':'));
    }
    let updated: DateTime<Utc> = serde_json::from_value(status["lastUpdateTime"].clone()).unwrap();
    assert_eq!(updated, now);
    assert_eq!(action, Action::requeue(BUNDLE_REQUEUE));
    let metrics = scenario.ctx.metrics.clone();
    assert_eq!(
        bundle_metric(&metrics, "lanyard_trust_bundle_anchors"),
        Some(2.0)
    );
    assert_eq!(
        bundle_metric(
            &metrics,
            "lanyard_trust_bundle_last_update_timestamp_seconds"
        ),
        Some(now.timestamp() as f64)
    );

    // Once the watches deliver what was written, a later look reads the
    // CA Secret and writes nothing: every target holds the bundle and the
    // status is current.
    let written = status_written(&bundle, &status_patch.body);
    for received in &applies {
        scenario.target(&echo(&received.body));
    }
    scenario.ctx.clock.set(now + TimeDelta::minutes(5));
    let (result, ()) = scenario
        .reconcile(&written, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, ANCHOR_ISSUER), ca.clone())
                .await;
            server
                .get(&secret_path(TRUST_NAMESPACE, ANCHOR_ISSUER), ca)
                .await;
        })
        .await;
    assert_eq!(result.unwrap(), Action::requeue(BUNDLE_REQUEUE));
    scenario.finish().await;
}

#[tokio::test]
async fn a_source_secret_turned_to_garbage_keeps_its_last_good_anchors_and_the_bundle_is_not_ready()
{
    let now = t0() + TimeDelta::hours(1);
    let root = anchor(t0(), TimeDelta::days(365));
    let good = secret_json("roots", &[("ca.crt", root.to_pem().into_bytes())]);
    let bundle = bundle(vec![secret_source("roots")], None);
    let mut scenario = scenario(now);
    scenario
        .namespace(namespace("apps", &[], false))
        .secret(&good);

    let (result, (apply, status_patch)) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), good)
                .await;
            let apply = server.patch(&config_map_path("apps"), echo).await;
            let status = server.patch(STATUS_PATH, with_status(&bundle)).await;
            (apply, status)
        })
        .await;
    result.expect("the first reconcile succeeds");
    assert_eq!(ready(&status_patch.body["status"])["reason"], "Synced");
    let first_update = status_patch.body["status"]["lastUpdateTime"].clone();

    // The Secret now holds garbage, and a namespace appeared meanwhile:
    // the bundle keeps the anchor it had, writes it to the new namespace,
    // leaves the current target alone, and says which source failed.
    let later = now + TimeDelta::minutes(10);
    scenario.ctx.clock.set(later);
    let written = status_written(&bundle, &status_patch.body);
    let garbage = secret_json(
        "roots",
        &[(
            "ca.crt",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n".to_vec(),
        )],
    );
    scenario
        .target(&echo(&apply.body))
        .namespace(namespace("web", &[], false))
        .secret(&garbage);
    let (result, (web, status_patch)) = scenario
        .reconcile(&written, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), garbage)
                .await;
            let web = server.patch(&config_map_path("web"), echo).await;
            let status = server.patch(STATUS_PATH, with_status(&written)).await;
            (web, status)
        })
        .await;
    assert_eq!(result.unwrap(), Action::requeue(BUNDLE_REQUEUE));
    assert_applied_config_map(&web, "web");
    assert_eq!(
        ders(&applied_anchors(&web.body)),
        ders(std::slice::from_ref(&root))
    );

    let status = &status_patch.body["status"];
    assert_eq!(status_patch.body["metadata"]["resourceVersion"], "11");
    let condition = ready(status);
    assert_eq!(condition["status"], "False", "{condition}");
    assert_eq!(condition["reason"], "SourceFailed");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with("1 anchor(s) written to 2 namespace(s), but a source failed: Secret lanyard/roots key ca.crt: not a PEM certificate bundle"),
        "{message}"
    );
    assert!(
        message.ends_with("keeping its last good 1 anchor(s)"),
        "{message}"
    );
    assert_eq!(status["anchorCount"], 1);
    assert_eq!(status["anchors"][0]["sha256"], root.sha256_fingerprint());
    assert_eq!(status["targetNamespaces"], json!(["apps", "web"]));
    // The content did not change: neither does lastUpdateTime.
    assert_eq!(status["lastUpdateTime"], first_update);
    assert_eq!(
        serde_json::from_value::<DateTime<Utc>>(first_update).unwrap(),
        now
    );
    scenario.finish().await;
}

#[tokio::test]
async fn a_bundle_whose_only_source_is_garbage_writes_no_configmap_and_is_not_ready() {
    let now = t0() + TimeDelta::hours(1);
    let garbage = secret_json("roots", &[("ca.crt", b"hello".to_vec())]);
    let bundle = bundle(vec![secret_source("roots")], None);
    let mut scenario = scenario(now);
    scenario
        .namespace(namespace("apps", &[], false))
        .namespace(namespace("web", &[], false))
        .secret(&garbage);
    let (result, status_patch) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), garbage)
                .await;
            server.patch(STATUS_PATH, with_status(&bundle)).await
        })
        .await;
    assert_eq!(result.unwrap(), Action::requeue(BUNDLE_REQUEUE));
    let status = &status_patch.body["status"];
    let condition = ready(status);
    assert_eq!(condition["status"], "False", "{condition}");
    assert_eq!(condition["reason"], "NoAnchors");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with("the bundle would hold no anchor, so the targets keep what they hold: Secret lanyard/roots key ca.crt:"),
        "{message}"
    );
    assert!(status.get("anchors").is_none(), "{status}");
    assert!(status.get("targetNamespaces").is_none(), "{status}");
    let metrics = scenario.ctx.metrics.clone();
    assert_eq!(
        bundle_metric(&metrics, "lanyard_trust_bundle_errors_total"),
        Some(1.0)
    );
    assert_eq!(
        bundle_metric(&metrics, "lanyard_trust_bundle_anchors"),
        None
    );
    scenario.finish().await;
}

#[tokio::test]
async fn a_namespace_deleted_while_the_bundle_is_written_is_skipped_and_the_others_are_written() {
    let now = t0() + TimeDelta::hours(1);
    let root = anchor(t0(), TimeDelta::days(365));
    let roots = secret_json("roots", &[("ca.crt", root.to_pem().into_bytes())]);
    let bundle = bundle(vec![secret_source("roots")], mesh_selector());
    let mut scenario = scenario(now);
    scenario
        .namespace(meshed("apps"))
        .namespace(meshed("gone"))
        .namespace(meshed("leaving"))
        .namespace(meshed("web"))
        .secret(&roots);
    let (result, (applies, status_patch)) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), roots)
                .await;
            let apps = server.patch(&config_map_path("apps"), echo).await;
            // Deleted after the cache saw it: the API server no longer
            // knows the namespace.
            server
                .fail(
                    Method::PATCH,
                    &config_map_path("gone"),
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "namespaces \"gone\" not found",
                )
                .await;
            // Being deleted: nothing new may be created in it.
            server
                .fail(
                    Method::PATCH,
                    &config_map_path("leaving"),
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "configmaps \"linkerd-identity-trust-roots\" is forbidden: unable to create new content in namespace leaving because it is being terminated",
                )
                .await;
            let web = server.patch(&config_map_path("web"), echo).await;
            let status = server.patch(STATUS_PATH, with_status(&bundle)).await;
            ([apps, web], status)
        })
        .await;
    assert_eq!(
        result.expect("the bundle is not failed by a namespace that went"),
        Action::requeue(BUNDLE_REQUEUE)
    );
    for (received, namespace) in applies.iter().zip(["apps", "web"]) {
        assert_applied_config_map(received, namespace);
    }
    let status = &status_patch.body["status"];
    assert_eq!(ready(status)["status"], "True");
    assert_eq!(ready(status)["reason"], "Synced");
    assert_eq!(status["targetNamespaces"], json!(["apps", "web"]));
    scenario.finish().await;
}

#[tokio::test]
async fn an_expired_anchor_among_the_sources_is_dropped_from_the_bundle_and_its_status() {
    let now = t0() + TimeDelta::hours(1);
    let expired = anchor(t0() - TimeDelta::days(400), TimeDelta::days(365));
    let live = anchor(t0(), TimeDelta::days(365));
    let roots = secret_json(
        "roots",
        &[("ca.crt", pem_of(&[&expired, &live]).into_bytes())],
    );
    let bundle = bundle(vec![secret_source("roots")], None);
    let mut scenario = scenario(now);
    scenario
        .namespace(namespace("apps", &[], false))
        .secret(&roots);
    let (result, (apply, status_patch)) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), roots)
                .await;
            let apply = server.patch(&config_map_path("apps"), echo).await;
            let status = server.patch(STATUS_PATH, with_status(&bundle)).await;
            (apply, status)
        })
        .await;
    result.expect("the reconcile succeeds");
    assert_eq!(
        ders(&applied_anchors(&apply.body)),
        ders(std::slice::from_ref(&live))
    );
    let status = &status_patch.body["status"];
    assert_eq!(status["anchorCount"], 1);
    let listed: Vec<&str> = status["anchors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [live.sha256_fingerprint()]);
    assert!(!listed.contains(&expired.sha256_fingerprint().as_str()));
    let condition = ready(status);
    assert_eq!(condition["status"], "True");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "Secret lanyard/roots key ca.crt: dropped the anchor `{}`, expired at {}",
            expired.subject(),
            expired.not_after().to_rfc3339()
        )),
        "{message}"
    );
    scenario.finish().await;
}

#[tokio::test]
async fn a_namespace_no_longer_selected_loses_the_bundle_and_one_being_deleted_is_left_alone() {
    let now = t0() + TimeDelta::hours(1);
    let root = anchor(t0(), TimeDelta::days(365));
    let roots = secret_json("roots", &[("ca.crt", root.to_pem().into_bytes())]);
    let bundle = bundle(vec![secret_source("roots")], mesh_selector());
    let target = |namespace: &str| {
        let mut written = serde_json::to_value(lanyard_rotator::kube::applied_config_map(
            &bundle,
            namespace,
            KEY,
            &root.to_pem(),
        ))
        .unwrap();
        written["metadata"]["resourceVersion"] = json!("21");
        written
    };
    let mut scenario = scenario(now);
    scenario
        // Still selected, and current: not written again.
        .namespace(meshed("apps"))
        .target(&target("apps"))
        // Its label was removed: the bundle goes.
        .namespace(namespace("unmeshed", &[], false))
        .target(&target("unmeshed"))
        // Being deleted: its ConfigMap goes with it.
        .namespace(namespace("leaving", &[MESH_LABEL], true))
        .target(&target("leaving"))
        .secret(&roots);
    let (result, status_patch) = scenario
        .reconcile(&bundle, async |server| {
            server
                .get(&secret_path(TRUST_NAMESPACE, "roots"), roots)
                .await;
            server.delete(&config_map_path("unmeshed")).await;
            server.patch(STATUS_PATH, with_status(&bundle)).await
        })
        .await;
    assert_eq!(result.unwrap(), Action::requeue(BUNDLE_REQUEUE));
    let status = &status_patch.body["status"];
    assert_eq!(ready(status)["reason"], "Synced");
    assert_eq!(status["targetNamespaces"], json!(["apps"]));
    scenario.finish().await;
}

#[tokio::test]
async fn a_bundle_naming_a_namespaced_issuer_is_refused_without_reading_or_writing_anything() {
    let mut refused = issuer_source();
    refused.issuer_ref.as_mut().unwrap().kind = None;
    let bundle = bundle(vec![refused], None);
    let mut scenario = scenario(t0());
    scenario
        .namespace(namespace("apps", &[], false))
        .cluster_issuer(cluster_issuer());
    let (result, status_patch) = scenario
        .reconcile(&bundle, async |server| {
            server.patch(STATUS_PATH, with_status(&bundle)).await
        })
        .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let condition = ready(&status_patch.body["status"]);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InvalidSpec");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("names the Issuer `linkerd-trust-anchor` (kind Issuer, the default)")
            && message.contains("name a ClusterIssuer"),
        "{message}"
    );
    scenario.finish().await;
}

#[test]
fn a_trust_bundle_manifest_with_an_unknown_field_is_refused_naming_the_field() {
    let manifest = |spec: &str| {
        format!(
            "apiVersion: lanyard.dev/v1\nkind: TrustBundle\nmetadata:\n  name: {BUNDLE}\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            "a misspelt spec field",
            "  sources:\n  - inLine: x\n  target:\n    configMap:\n      key: ca-bundle.crt\n  propagationDelai: 2m\n",
            "propagationDelai",
        ),
        (
            "a misspelt source kind",
            "  sources:\n  - secrett:\n      name: roots\n      key: ca.crt\n  target:\n    configMap:\n      key: ca-bundle.crt\n",
            "secrett",
        ),
        (
            "a misspelt target field",
            "  sources:\n  - inLine: x\n  target:\n    configMap:\n      key: ca-bundle.crt\n    namespaceSelecter:\n      matchLabels: {a: b}\n",
            "namespaceSelecter",
        ),
    ];
    for (sentence, spec, field) in cases {
        let error = serde_saphyr::from_str::<TrustBundle>(&manifest(spec))
            .expect_err(sentence)
            .to_string();
        assert!(
            error.contains(&format!("unknown field `{field}`")),
            "{sentence}: {error}"
        );
    }
    // The same manifest spelt right is read.
    let bundle: TrustBundle = serde_saphyr::from_str(&manifest(
        "  sources:\n  - inLine: x\n  target:\n    configMap:\n      key: ca-bundle.crt\n",
    ))
    .expect("a valid manifest");
    assert_eq!(bundle.spec.target.config_map.key, KEY);
    assert_eq!(bundle.status, None::<TrustBundleStatus>);
}

/// A root with its key, as the CA Secret of an anchor Lanyard rotates.
fn anchor_with_key(not_before: DateTime<Utc>) -> (X509, Vec<u8>) {
    let anchor = TrustAnchor::generate(
        &IdentityDomain::linkerd_default(),
        TimeDelta::days(365),
        KeyAlgorithm::EcdsaP256,
        not_before,
    )
    .expect("an anchor");
    (
        anchor.certificate().clone(),
        anchor.key().to_pkcs8_pem().as_bytes().to_vec(),
    )
}

#[tokio::test]
async fn a_requested_rotation_makes_one_new_anchor_and_trusts_it_beside_the_old_in_one_guarded_update()
 {
    let now = t0() + TimeDelta::hours(1);
    let (old, key) = anchor_with_key(t0());
    let mut ca = secret_json(
        ANCHOR_ISSUER,
        &[
            ("ca.crt", old.to_pem().into_bytes()),
            ("tls.crt", old.to_pem().into_bytes()),
            ("tls.key", key),
        ],
    );
    ca["metadata"]["annotations"] = json!({ lanyard_rotator::kube::anchor_rotation::ROTATE_ANNOTATION: "2026-01-01T00:30:00Z" });
    let bundle = bundle(vec![issuer_source()], mesh_selector());
    let mut scenario = scenario(now);
    scenario
        .namespace(meshed("linkerd"))
        .cluster_issuer(cluster_issuer())
        .secret(&ca);
    let next_path = secret_path(TRUST_NAMESPACE, &format!("{ANCHOR_ISSUER}-next"));
    let ca_path = secret_path(TRUST_NAMESPACE, ANCHOR_ISSUER);
    let not_found = |name: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("secrets \"{name}\" not found"), "reason": "NotFound", "code": 404})
    };
    let (result, (created, updated)) = scenario
        .reconcile(&bundle, async |server| {
            server.get(&ca_path, ca.clone()).await;
            server.patch(&config_map_path("linkerd"), echo).await;
            server.patch(STATUS_PATH, with_status(&bundle)).await;
            // Stable, asked to rotate, no prepared anchor: make one.
            server.get(&ca_path, ca.clone()).await;
            let (_, send) = server.next(Method::GET, &next_path).await;
            respond(
                send,
                StatusCode::NOT_FOUND,
                &not_found("linkerd-trust-anchor-next"),
            );
            let (created, send) = server
                .next(
                    Method::POST,
                    &format!("/api/v1/namespaces/{TRUST_NAMESPACE}/secrets"),
                )
                .await;
            respond(send, StatusCode::CREATED, &created.body);
            // Then adopt it: both anchors trusted, the state Prepared, the
            // request used up, in one update guarded by the version read.
            server.get(&ca_path, ca.clone()).await;
            server.get(&next_path, created.body.clone()).await;
            let (updated, send) = server.next(Method::PUT, &ca_path).await;
            respond(send, StatusCode::OK, &updated.body);
            (created, updated)
        })
        .await;
    // The Certificates and bundles must see the new ca.crt first.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(1)));

    let prepared = &created.body;
    assert_eq!(prepared["metadata"]["name"], "linkerd-trust-anchor-next");
    assert_eq!(
        prepared["metadata"]["annotations"]["lanyard.dev/prepared-anchor-for"],
        ANCHOR_ISSUER
    );
    let data = |secret: &Value, key: &str| {
        let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
        secret.data.unwrap()[key].0.clone()
    };
    let new = X509::parse_pem_bundle(&data(prepared, "tls.crt"), "tls.crt").unwrap();
    assert_eq!(
        new[0].subject(),
        old.subject(),
        "the new anchor keeps the name"
    );
    assert_ne!(new[0].der(), old.der());

    let body = &updated.body;
    assert_eq!(
        body["metadata"]["resourceVersion"], "5",
        "guarded by the version read"
    );
    let trusted = X509::parse_pem_bundle(&data(body, "ca.crt"), "ca.crt").unwrap();
    assert_eq!(ders(&trusted), ders(&[old.clone(), new[0].clone()]));
    assert_eq!(
        data(body, "tls.crt"),
        old.to_pem().into_bytes(),
        "the old anchor still signs"
    );
    let annotations = &body["metadata"]["annotations"];
    assert!(
        annotations.get("lanyard.dev/rotate-anchor").is_none(),
        "{annotations}"
    );
    let record: Value =
        serde_json::from_str(annotations["lanyard.dev/anchor-rotation"].as_str().unwrap()).unwrap();
    assert_eq!(record["rotation"]["phase"], "Prepared");
    assert_eq!(record["rotation"]["trigger"], "Manual");
    assert_eq!(record["rotation"]["next"], new[0].sha256_fingerprint());
    assert_eq!(record["rotation"]["current"], old.sha256_fingerprint());
    scenario.finish().await;
}
