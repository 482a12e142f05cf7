//! The identity service's two Kubernetes shells against the API's wire
//! shape: the TokenReview authenticator and the issuer Secret watch, each
//! talking to kube-rs' tower-test mock playing the API server. The last
//! tests run against a real API server when `LANYARD_TEST_KUBECONFIG`
//! names a kubeconfig, and say they were skipped when it does not.

#[path = "../../../rotator/tests/live/mod.rs"]
mod live;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::client::Body;
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::{Clock, ManualClock, SystemClock};
use lanyard_identity::kube::issuer_secret::{
    IssuerSecret, IssuerSecretError, offer_secret, watch_issuer_secret,
};
use lanyard_identity::kube::token_review::{DEFAULT_AUDIENCE, TokenReviewAuthenticator};
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::reload::{IssuerReloader, Reload};
use lanyard_identity::service::{AuthError, Authenticated, Authenticator};
use lanyard_identity::token::TokenError;
use lanyard_issuer::IdentityIssuer;
use lanyard_issuer::{KeyAlgorithm, SigningKey, TrustAnchor};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type MockHandle = Handle<Request<Body>, Response<Body>>;

const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJ3ZWIifQ.c2lnbmF0dXJl";
const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SECRETS_PATH: &str = "/api/v1/namespaces/linkerd/secrets";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn mock_client() -> (Client, MockHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
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

/// A request as the API server received it.
struct Received {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

async fn receive(handle: &mut MockHandle) -> Option<(Received, SendResponse<Response<Body>>)> {
    let (request, send) = handle.next_request().await?;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON request body")
    };
    Some((
        Received {
            method,
            path,
            query,
            body,
        },
        send,
    ))
}

/// Enough of percent-decoding for a field selector.
fn percent_decode(value: &str) -> String {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------
// TokenReview
// ---------------------------------------------------------------------

/// The TokenReview the API server sends back for `spec`, with `status`.
fn review_answer(spec: &Value, status: Value) -> Value {
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}

fn service_account_status(username: &str, audiences: &[&str]) -> Value {
    json!({
        "authenticated": true,
        "user": {
            "username": username,
            "uid": "9f0c7a4e-6f55-4b7e-9d0e-3f1c2b7a8d01",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:emojivoto", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["web-5f7c9b8d4-x2x7q"]}
        },
        "audiences": audiences,
    })
}

/// Reviews `token` against a mock API server that answers the one review
/// request with `answer(request)`; returns the outcome and the request.
async fn review_with(
    token: &[u8],
    answer: impl FnOnce(&Received, SendResponse<Response<Body>>) + Send + 'static,
) -> (Result<Authenticated, AuthError>, Option<Received>) {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let (received, send) = receive(&mut handle).await?;
        answer(&received, send);
        if let Some((extra, _)) = receive(&mut handle).await {
            panic!(
                "one review, one request; then {} {}",
                extra.method, extra.path
            );
        }
        Some(received)
    });
    let authenticator = TokenReviewAuthenticator::new(client);
    let outcome = authenticator.authenticate(token, t0()).await;
    drop(authenticator);
    let received = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the mock API server finished")
        .expect("the mock API server's assertions held");
    (outcome, received)
}

/// Answers the review with `status` (201 Created, as the API server does).
fn answer_status(
    status: Value,
) -> impl FnOnce(&Received, SendResponse<Response<Body>>) + Send + 'static {
    move |received, send| {
        respond(
            send,
            StatusCode::CREATED,
            &review_answer(&received.body["spec"], status),
        )
    }
}

fn api_status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn answer_error(
    code: u16,
    reason: &'static str,
    message: &'static str,
) -> impl FnOnce(&Received, SendResponse<Response<Body>>) + Send + 'static {
    move |_, send| {
        respond(
            send,
            StatusCode::from_u16(code).unwrap(),
            &api_status(code, reason, message),
        )
    }
}

#[tokio::test]
async fn a_review_posts_the_token_for_the_audience_and_an_authenticated_service_account_is_accepted()
 {
    let (outcome, received) = review_with(
        TOKEN.as_bytes(),
        answer_status(service_account_status(
            "system:serviceaccount:emojivoto:web",
            &[DEFAULT_AUDIENCE],
        )),
    )
    .await;
    let received = received.expect("the token was reviewed");
    assert_eq!(received.method, Method::POST);
    assert_eq!(received.path, REVIEW_PATH);
    assert_eq!(
        received.body,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {"token": TOKEN, "audiences": ["identity.l5d.io"]},
        }),
        "exactly the token and the audience, nothing else"
    );
    assert_eq!(
        outcome,
        Ok(Authenticated {
            namespace: "emojivoto".into(),
            service_account: "web".into(),
        })
    );
}

#[tokio::test]
async fn a_token_read_from_a_file_is_sent_without_its_newline() {
    let (outcome, received) = review_with(
        format!("{TOKEN}\n").as_bytes(),
        answer_status(service_account_status(
            "system:serviceaccount:emojivoto:web",
            &[DEFAULT_AUDIENCE],
        )),
    )
    .await;
    assert_eq!(received.unwrap().body["spec"]["token"], TOKEN);
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test]
async fn a_configured_audience_is_the_one_asked_for_and_required() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        let (received, send) = receive(&mut handle).await.unwrap();
        respond(
            send,
            StatusCode::CREATED,
            &review_answer(
                &received.body["spec"],
                // The token was for the default audience only.
                service_account_status("system:serviceaccount:emojivoto:web", &[DEFAULT_AUDIENCE]),
            ),
        );
        received
    });
    let authenticator = TokenReviewAuthenticator::new(client).with_audience("lanyard.dev/identity");
    let outcome = authenticator.authenticate(TOKEN.as_bytes(), t0()).await;
    let received = server.await.unwrap();
    assert_eq!(
        received.body["spec"]["audiences"],
        json!(["lanyard.dev/identity"])
    );
    match outcome {
        Err(AuthError::Rejected(reason)) => {
            assert!(reason.contains("lanyard.dev/identity"), "{reason}")
        }
        other => panic!("a token for another audience must be rejected, got {other:?}"),
    }
}

/// What a review must come to.
enum Expect {
    Rejected(&'static str),
    Unavailable(&'static str),
}

type Answer = Box<dyn FnOnce(&Received, SendResponse<Response<Body>>) + Send>;

#[tokio::test]
async fn review_refusals() {
    let cases: Vec<(&str, Answer, Expect)> = vec![
        (
            "rejects a token the API server did not authenticate, giving its error",
            Box::new(answer_status(json!({
                "authenticated": false,
                "user": {},
                "error": "[invalid bearer token, service account token has expired]"
            }))),
            Expect::Rejected(
                "did not authenticate the token: [invalid bearer token, service account token has expired]",
            ),
        ),
        (
            "rejects a token the API server reports for another audience",
            Box::new(answer_status(service_account_status(
                "system:serviceaccount:emojivoto:web",
                &["https://kubernetes.default.svc.cluster.local"],
            ))),
            Expect::Rejected("not `identity.l5d.io`"),
        ),
        (
            "rejects a token of a user that is not a service account",
            Box::new(answer_status(json!({
                "authenticated": true,
                "user": {"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]},
                "audiences": [DEFAULT_AUDIENCE]
            }))),
            Expect::Rejected("the user `kubernetes-admin`, not to a service account"),
        ),
        (
            "rejects a service account whose namespace is not a DNS label",
            Box::new(answer_status(service_account_status(
                "system:serviceaccount:Emojivoto:web",
                &[DEFAULT_AUDIENCE],
            ))),
            Expect::Rejected("namespace `Emojivoto` is not a DNS label"),
        ),
        (
            "rejects when the API server refuses the review's content",
            Box::new(answer_error(
                422,
                "Invalid",
                "TokenReview.authentication.k8s.io \"\" is invalid",
            )),
            Expect::Rejected("refused the TokenReview: 422 Invalid"),
        ),
        (
            "is unavailable when the API server fails",
            Box::new(answer_error(
                500,
                "InternalError",
                "etcdserver: request timed out",
            )),
            Expect::Unavailable("500 InternalError: etcdserver: request timed out"),
        ),
        (
            "is unavailable when the API server is overloaded",
            Box::new(answer_error(
                429,
                "TooManyRequests",
                "the server has received too many requests",
            )),
            Expect::Unavailable("429 TooManyRequests"),
        ),
        (
            "is unavailable, naming the RBAC rule, when the service may not create TokenReviews",
            Box::new(answer_error(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:linkerd:linkerd-identity\" cannot create resource \"tokenreviews\"",
            )),
            Expect::Unavailable("needs `create` on `tokenreviews.authentication.k8s.io`"),
        ),
        (
            "is unavailable when the API server cannot be reached",
            Box::new(|_: &Received, send: SendResponse<Response<Body>>| {
                send.send_error(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                ))
            }),
            Expect::Unavailable("cannot ask the API server"),
        ),
        (
            "is unavailable when the API server answers with something that is not a TokenReview",
            Box::new(|_: &Received, send: SendResponse<Response<Body>>| {
                send.send_response(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .body(Body::from(b"<html>proxy error</html>".to_vec()))
                        .unwrap(),
                )
            }),
            Expect::Unavailable("cannot ask the API server"),
        ),
    ];
    for (name, answer, expected) in cases {
        let (outcome, received) = review_with(TOKEN.as_bytes(), answer).await;
        assert!(received.is_some(), "{name}: the token was reviewed");
        match (outcome, expected) {
            (Err(AuthError::Rejected(reason)), Expect::Rejected(part))
            | (Err(AuthError::Unavailable(reason)), Expect::Unavailable(part)) => {
                assert!(reason.contains(part), "{name}: {reason}");
                assert!(
                    !reason.contains(TOKEN),
                    "{name}: the token is never repeated"
                );
            }
            (got, Expect::Rejected(part)) => {
                panic!("{name}: expected Rejected({part}), got {got:?}")
            }
            (got, Expect::Unavailable(part)) => {
                panic!("{name}: expected Unavailable({part}), got {got:?}")
            }
        }
    }
}

#[tokio::test]
async fn empty_and_non_text_tokens_are_never_sent_to_the_api_server() {
    for (token, expected) in [
        (&b""[..], TokenError::Missing),
        (&b"\n"[..], TokenError::Missing),
        (&[0xff, 0x00, 0xfe][..], TokenError::Malformed("not text")),
    ] {
        let (outcome, received) = review_with(token, |_, _| {
            panic!("no request may be made for an empty or non-text token")
        })
        .await;
        assert_eq!(outcome, Err(AuthError::Token(expected.clone())));
        assert!(received.is_none(), "{expected:?}: nothing was sent");
    }
}

#[tokio::test]
async fn an_api_server_that_does_not_answer_in_time_is_unavailable() {
    let (client, mut handle) = mock_client();
    let server = tokio::spawn(async move {
        // Take the request and never answer it.
        let (_received, send) = receive(&mut handle).await.unwrap();
        let _ = receive(&mut handle).await;
        drop(send);
    });
    let authenticator =
        TokenReviewAuthenticator::new(client).with_timeout(Duration::from_millis(50));
    let outcome = authenticator.authenticate(TOKEN.as_bytes(), t0()).await;
    drop(authenticator);
    server.await.unwrap();
    match outcome {
        Err(AuthError::Unavailable(reason)) => {
            assert!(reason.contains("did not answer"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

// ---------------------------------------------------------------------
// The issuer Secret
// ---------------------------------------------------------------------

/// A Linkerd-shaped anchor (ten years) and identity issuer (a year), both
/// starting at `at`.
fn linkerd_ca(at: DateTime<Utc>) -> (TrustAnchor, IdentityIssuer) {
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        at,
    )
    .unwrap();
    let issuer = next_issuer(&anchor, at);
    (anchor, issuer)
}

fn next_issuer(anchor: &TrustAnchor, at: DateTime<Utc>) -> IdentityIssuer {
    anchor
        .issue_identity_issuer(
            &IdentityDomain::linkerd_default(),
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            at,
        )
        .unwrap()
        .0
}

/// The issuer Secret as cert-manager writes it, at `resource_version`;
/// `key` replaces the issuer's own key when given, and `omit` leaves a
/// key out.
fn issuer_secret(
    anchor: &TrustAnchor,
    issuer: &IdentityIssuer,
    key: Option<&SigningKey>,
    omit: Option<&str>,
    resource_version: &str,
) -> Secret {
    let key = key.unwrap_or(issuer.key());
    let mut data = BTreeMap::new();
    for (name, value) in [
        ("tls.crt", issuer.certificate().to_pem().into_bytes()),
        ("tls.key", key.to_pkcs8_pem().as_bytes().to_vec()),
        ("ca.crt", anchor.certificate().to_pem().into_bytes()),
    ] {
        if Some(name) != omit {
            data.insert(name.to_string(), ByteString(value));
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some("linkerd-identity-issuer".into()),
            namespace: Some("linkerd".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("kubernetes.io/tls".into()),
        ..Secret::default()
    }
}

fn fingerprint(slot: &IssuerReloader) -> Option<String> {
    slot.current()
        .load_full()
        .map(|issuer| issuer.certificate().sha256_fingerprint())
}

/// A metric's value from the Prometheus text of `metrics`.
fn metric(metrics: &IdentityMetrics, series: &str) -> Option<f64> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[test]
fn a_secret_missing_a_key_is_refused_naming_the_key_and_the_old_issuer_keeps_serving() {
    let now = t0() + TimeDelta::minutes(1);
    let (anchor, issuer) = linkerd_ca(t0());
    let metrics = IdentityMetrics::new();
    let secret = IssuerSecret::default();
    let mut reloader =
        IssuerReloader::for_source(secret.source(), Arc::default()).with_metrics(metrics.clone());

    let good = issuer_secret(&anchor, &issuer, None, None, "1");
    assert!(matches!(
        offer_secret(&mut reloader, &good, now),
        Ok(Reload::Loaded)
    ));
    let serving = fingerprint(&reloader);
    assert_eq!(serving, Some(issuer.certificate().sha256_fingerprint()));

    let keyless = issuer_secret(
        &anchor,
        &next_issuer(&anchor, t0()),
        None,
        Some("tls.key"),
        "2",
    );
    match offer_secret(&mut reloader, &keyless, now) {
        Err(error @ IssuerSecretError::MissingKeys { .. }) => {
            assert_eq!(
                error.to_string(),
                "Secret `linkerd/linkerd-identity-issuer` has no `tls.key`; the identity issuer needs `tls.crt` (the issuer), `tls.key` (its key) and `ca.crt` (the trust anchors)"
            );
        }
        other => panic!("a Secret without tls.key must be refused, got {other:?}"),
    }
    assert_eq!(
        fingerprint(&reloader),
        serving,
        "the old issuer keeps serving"
    );
    assert_eq!(
        metric(&metrics, "lanyard_identity_issuer_refused"),
        Some(1.0),
        "counted as a refusal"
    );
    assert!(
        matches!(
            offer_secret(&mut reloader, &keyless, now),
            Ok(Reload::Unchanged)
        ),
        "refused once, not on every resync"
    );

    let empty = Secret {
        data: None,
        ..keyless.clone()
    };
    match offer_secret(&mut reloader, &empty, now) {
        Err(IssuerSecretError::MissingKeys { keys, .. }) => {
            assert_eq!(keys, ["tls.crt", "tls.key", "ca.crt"])
        }
        other => panic!("a Secret without data must be refused, got {other:?}"),
    }

    // Put right, it is loaded again.
    assert!(matches!(
        offer_secret(&mut reloader, &good, now),
        Ok(Reload::Loaded)
    ));
    assert_eq!(
        metric(&metrics, "lanyard_identity_issuer_refused"),
        Some(0.0)
    );
}

/// The mock API server for the Secret watch: answers the list with
/// `listed`, the first watch with `events`, and keeps every later watch
/// open; reports on `rewatched` the `resourceVersion` the watcher came
/// back for more from (so every event before was handled).
async fn serve_secret_watch(
    mut handle: MockHandle,
    listed: Vec<Secret>,
    events: Vec<(&'static str, Secret)>,
    rewatched: tokio::sync::oneshot::Sender<Option<String>>,
) {
    let mut rewatched = Some(rewatched);
    let mut events = Some(events);
    let mut open = Vec::new();
    while let Some((received, send)) = receive(&mut handle).await {
        assert_eq!(
            (&received.method, received.path.as_str()),
            (&Method::GET, SECRETS_PATH)
        );
        assert_eq!(
            received.query.get("fieldSelector").map(String::as_str),
            Some("metadata.name=linkerd-identity-issuer"),
            "the watch selects the one Secret by name"
        );
        if received.query.get("watch").map(String::as_str) != Some("true") {
            let items: Vec<Value> = listed
                .iter()
                .map(|s| serde_json::to_value(s).unwrap())
                .collect();
            respond(
                send,
                StatusCode::OK,
                &json!({"kind": "SecretList", "apiVersion": "v1",
                        "metadata": {"resourceVersion": "1"}, "items": items}),
            );
        } else if let Some(events) = events.take() {
            let mut body = Vec::new();
            for (kind, object) in events {
                serde_json::to_writer(&mut body, &json!({"type": kind, "object": object})).unwrap();
                body.push(b'\n');
            }
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            );
        } else {
            open.push(send);
            if let Some(tx) = rewatched.take() {
                let _ = tx.send(received.query.get("resourceVersion").cloned());
            }
        }
    }
}

/// Runs the watch against the mock until it has handled every event;
/// returns the fingerprint of the issuer it left serving and the metrics.
async fn run_watch(
    listed: Vec<Secret>,
    events: Vec<(&'static str, Secret)>,
) -> (Option<String>, IdentityMetrics) {
    let (client, handle) = mock_client();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let last_version = events
        .last()
        .and_then(|(_, secret)| secret.metadata.resource_version.clone());
    let server = tokio::spawn(serve_secret_watch(handle, listed, events, tx));
    let metrics = IdentityMetrics::new();
    let slot = Arc::default();
    let reloader = IssuerReloader::for_source(IssuerSecret::default().source(), Arc::clone(&slot))
        .with_metrics(metrics.clone());
    let watch = tokio::spawn(watch_issuer_secret(
        client,
        IssuerSecret::default(),
        reloader,
        ManualClock::new(t0() + TimeDelta::minutes(1)),
    ));
    let rewatched_from = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the watch came back for more")
        .unwrap();
    assert_eq!(
        rewatched_from, last_version,
        "the watch read every event (it resumes from the last one's version)"
    );
    watch.abort();
    let _ = watch.await;
    server.await.expect("the mock API server's assertions held");
    let serving = slot
        .load_full()
        .map(|issuer: Arc<IdentityIssuer>| issuer.certificate().sha256_fingerprint());
    (serving, metrics)
}

#[tokio::test]
async fn the_watched_secret_is_loaded_and_a_version_with_a_mismatched_key_is_refused_while_the_old_issuer_serves()
 {
    let (anchor, issuer) = linkerd_ca(t0());
    let stranger = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mismatched = issuer_secret(
        &anchor,
        &next_issuer(&anchor, t0()),
        Some(&stranger),
        None,
        "2",
    );
    let (serving, metrics) = run_watch(
        vec![issuer_secret(&anchor, &issuer, None, None, "1")],
        vec![("MODIFIED", mismatched)],
    )
    .await;
    assert_eq!(
        serving,
        Some(issuer.certificate().sha256_fingerprint()),
        "the listed issuer is loaded and keeps serving"
    );
    assert_eq!(
        metric(
            &metrics,
            "lanyard_identity_issuer_reloads_total{result=\"loaded\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "lanyard_identity_issuer_reloads_total{result=\"refused\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "lanyard_identity_issuer_refused"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_new_version_of_the_watched_secret_is_swapped_in() {
    let (anchor, issuer) = linkerd_ca(t0());
    let renewed = next_issuer(&anchor, t0());
    let (serving, metrics) = run_watch(
        vec![issuer_secret(&anchor, &issuer, None, None, "1")],
        vec![(
            "MODIFIED",
            issuer_secret(&anchor, &renewed, None, None, "2"),
        )],
    )
    .await;
    assert_eq!(serving, Some(renewed.certificate().sha256_fingerprint()));
    assert_eq!(
        metric(
            &metrics,
            "lanyard_identity_issuer_reloads_total{result=\"loaded\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_deleted_secret_leaves_the_current_issuer_serving() {
    let (anchor, issuer) = linkerd_ca(t0());
    let secret = issuer_secret(&anchor, &issuer, None, None, "1");
    let mut deleted = secret.clone();
    deleted.metadata.resource_version = Some("2".into());
    let (serving, _) = run_watch(vec![secret], vec![("DELETED", deleted)]).await;
    assert_eq!(serving, Some(issuer.certificate().sha256_fingerprint()));
}

#[tokio::test]
async fn a_secret_that_appears_after_the_watch_started_is_loaded() {
    let (anchor, issuer) = linkerd_ca(t0());
    let (serving, _) = run_watch(
        vec![],
        vec![("ADDED", issuer_secret(&anchor, &issuer, None, None, "2"))],
    )
    .await;
    assert_eq!(serving, Some(issuer.certificate().sha256_fingerprint()));
}

// ---------------------------------------------------------------------
// Against a real API server
// ---------------------------------------------------------------------

use live::{live_client, unique};

/// Runs `body` in a fresh namespace, deleted afterwards whether or not
/// `body` panicked.
async fn in_namespace<F, Fut>(client: &Client, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = unique("lanyard-identity-live");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    let outcome = AssertUnwindSafe(body(name.clone())).catch_unwind().await;
    if let Err(e) = namespaces.delete(&name, &DeleteParams::default()).await {
        eprintln!("cleanup: deleting namespace {name}: {e}");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A token for `namespace/service_account` issued for `audience`.
async fn token_for(
    client: &Client,
    namespace: &str,
    service_account: &str,
    audience: &str,
) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.to_string()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("requesting a token for {namespace}/{service_account}: {e}"))
        .status
        .expect("a TokenRequest status")
        .token
}

#[tokio::test]
async fn live_a_service_account_token_for_the_audience_is_accepted_and_others_are_not() {
    let Some(client) =
        live_client("live_a_service_account_token_for_the_audience_is_accepted_and_others_are_not")
            .await
    else {
        return;
    };
    in_namespace(&client, |namespace| async {
        let namespace = namespace;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        accounts
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: ObjectMeta {
                        name: Some("web".into()),
                        ..ObjectMeta::default()
                    },
                    ..ServiceAccount::default()
                },
            )
            .await
            .expect("creating the service account");
        let authenticator = TokenReviewAuthenticator::new(client.clone());

        let token = token_for(&client, &namespace, "web", DEFAULT_AUDIENCE).await;
        assert_eq!(
            authenticator.authenticate(token.as_bytes(), t0()).await,
            Ok(Authenticated {
                namespace: namespace.clone(),
                service_account: "web".into(),
            })
        );

        let elsewhere = token_for(&client, &namespace, "web", "some-other-audience").await;
        match authenticator.authenticate(elsewhere.as_bytes(), t0()).await {
            Err(AuthError::Rejected(reason)) => assert!(!reason.contains(&elsewhere), "{reason}"),
            other => panic!("a token for another audience must be rejected, got {other:?}"),
        }

        // Alter a character in the middle of the signature: the last one
        // carries only a few bits, and the API server decodes base64
        // leniently, so changing it often leaves the token valid.
        let forged = forge(&token);
        assert!(
            matches!(
                authenticator.authenticate(forged.as_bytes(), t0()).await,
                Err(AuthError::Rejected(_))
            ),
            "an altered token is rejected"
        );
    })
    .await;
}

#[tokio::test]
async fn live_the_issuer_secret_is_watched_into_the_identity_service() {
    let Some(client) =
        live_client("live_the_issuer_secret_is_watched_into_the_identity_service").await
    else {
        return;
    };
    in_namespace(&client, |namespace| async {
        let namespace = namespace;
        let now = SystemClock.now();
        let (anchor, issuer) = linkerd_ca(now - TimeDelta::minutes(1));
        let mut secret = issuer_secret(&anchor, &issuer, None, None, "");
        secret.metadata.namespace = Some(namespace.clone());
        secret.metadata.resource_version = None;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating the issuer Secret");

        let source = IssuerSecret::new(&namespace, "linkerd-identity-issuer");
        let slot = Arc::default();
        let reloader = IssuerReloader::for_source(source.source(), Arc::clone(&slot));
        let watch = tokio::spawn(watch_issuer_secret(
            client.clone(),
            source,
            reloader,
            SystemClock,
        ));
        let expected = issuer.certificate().sha256_fingerprint();
        let mut loaded = false;
        for _ in 0..120 {
            let serving = slot
                .load_full()
                .map(|i: Arc<IdentityIssuer>| i.certificate().sha256_fingerprint());
            if serving.as_deref() == Some(expected.as_str()) {
                loaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        watch.abort();
        assert!(loaded, "the issuer from the Secret was loaded within 60s");
    })
    .await;
}

/// `token` (a JWT) with one character in the middle of its signature
/// changed to another base64url character.
fn forge(token: &str) -> String {
    let signature_start = token.rfind('.').expect("a JWT has a signature") + 1;
    let middle = signature_start + (token.len() - signature_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64url is ASCII")
}

#[test]
fn a_forged_token_differs_in_the_middle_of_its_signature() {
    let token = "aGVhZGVy.cGF5bG9hZA.c2lnbmF0dXJlc2lnbmF0dXJl";
    let forged = forge(token);
    assert_ne!(forged, token);
    assert_eq!(forged.len(), token.len());
    assert_eq!(
        forged[..token.rfind('.').unwrap()],
        token[..token.rfind('.').unwrap()]
    );
    assert_eq!(
        forged.as_bytes()[token.len() - 1],
        token.as_bytes()[token.len() - 1]
    );
}
