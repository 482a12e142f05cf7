//! The identity service over loopback gRPC: every refusal gets the code a
//! client can act on, and none of them changes anything.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::ManualClock;
use lanyard_identity::service::proto::CertifyRequest;
use lanyard_identity::service::proto::identity_client::IdentityClient;
use lanyard_identity::service::{IdentityService, MAX_REQUEST_BYTES};
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{Certificate, IdentityIssuer, KeyAlgorithm, SigningKey, verify_chain};
use tonic::Code;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

struct Fixture {
    addr: SocketAddr,
    key: Arc<TokenKey>,
    anchor: Certificate,
    issuer: Arc<ArcSwapOption<IdentityIssuer>>,
    clock: Arc<ManualClock>,
}

fn make_issuer() -> (Certificate, IdentityIssuer) {
    let (anchor, issuer) = common::linkerd_ca(t0());
    (anchor.certificate().clone(), issuer)
}

async fn serve(with_issuer: bool) -> Fixture {
    let (anchor, issuer) = make_issuer();
    let issuer = Arc::new(ArcSwapOption::from(with_issuer.then(|| Arc::new(issuer))));
    let key = Arc::new(TokenKey::generate().unwrap());
    let clock = Arc::new(ManualClock::new(t0() + TimeDelta::minutes(5)));
    let service = IdentityService::new(issuer.clone(), key.clone(), clock.clone());
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming),
    );
    Fixture {
        addr,
        key,
        anchor,
        issuer,
        clock,
    }
}

fn identity(sa: &str, ns: &str) -> Identity {
    Identity::new(sa, ns, IdentityDomain::linkerd_default()).unwrap()
}

fn csr_for(identity: &Identity) -> (SigningKey, Vec<u8>) {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = key.certificate_signing_request(identity).unwrap();
    (key, csr)
}

async fn certify(
    fixture: &Fixture,
    request: CertifyRequest,
) -> Result<lanyard_identity::service::proto::CertifyResponse, tonic::Status> {
    let mut client = IdentityClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", fixture.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .max_encoding_message_size(4 * MAX_REQUEST_BYTES);
    client.certify(request).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn an_agent_gets_a_leaf_for_exactly_its_identity() {
    let f = serve(true).await;
    let web = identity("web", "emojivoto");
    let (_key, csr) = csr_for(&web);
    let token = f
        .key
        .create("emojivoto", "web", TimeDelta::hours(1), t0())
        .unwrap();
    let response = certify(
        &f,
        CertifyRequest {
            identity: web.to_string(),
            token: token.into_bytes(),
            certificate_signing_request: csr,
        },
    )
    .await
    .unwrap();
    let leaf = Certificate::from_der(&response.leaf_certificate, "leaf").unwrap();
    assert_eq!(leaf.profile().dns_names, vec![web.to_string()]);
    assert_eq!(leaf.profile().uris, vec![web.spiffe_id()]);
    assert_eq!(
        response.valid_until.unwrap().seconds,
        leaf.not_after().timestamp()
    );
    let mut chain = vec![leaf];
    for der in &response.intermediate_certificates {
        chain.push(Certificate::from_der(der, "intermediate").unwrap());
    }
    verify_chain(
        &chain,
        std::slice::from_ref(&f.anchor),
        t0() + TimeDelta::minutes(5),
    )
    .unwrap();
}

#[tokio::test]
async fn refusals_get_the_code_a_client_can_act_on() {
    let f = serve(true).await;
    let web = identity("web", "emojivoto");
    let (_key, csr) = csr_for(&web);
    let good = f
        .key
        .create("emojivoto", "web", TimeDelta::hours(1), t0())
        .unwrap();
    let expired = f
        .key
        .create("emojivoto", "web", TimeDelta::seconds(60), t0())
        .unwrap();
    let forged = TokenKey::generate()
        .unwrap()
        .create("emojivoto", "web", TimeDelta::hours(1), t0())
        .unwrap();
    let other = f
        .key
        .create("ns-b", "sa-b", TimeDelta::hours(1), t0())
        .unwrap();
    let (_, admin_csr) = csr_for(&identity("admin", "emojivoto"));
    let request = |token: &str, csr: &[u8]| CertifyRequest {
        identity: web.to_string(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr.to_vec(),
    };
    let cases: Vec<(&str, CertifyRequest, Code, &str)> = vec![
        (
            "a missing token is unauthenticated",
            request("", &csr),
            Code::Unauthenticated,
            "no token",
        ),
        (
            "an expired token is unauthenticated",
            request(&expired, &csr),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "a forged token is unauthenticated",
            request(&forged, &csr),
            Code::Unauthenticated,
            "signature",
        ),
        (
            "a token for ns-b/sa-b cannot get emojivoto/web",
            request(&other, &csr),
            Code::PermissionDenied,
            "sa-b.ns-b.serviceaccount",
        ),
        (
            "a CSR for another identity is an invalid argument",
            request(&good, &admin_csr),
            Code::InvalidArgument,
            "admin.emojivoto",
        ),
        (
            "bytes that are not a CSR are an invalid argument",
            request(&good, b"not a csr"),
            Code::InvalidArgument,
            "",
        ),
        (
            "a request over 64 KiB is refused before it is read",
            request(&good, &vec![0u8; MAX_REQUEST_BYTES + 1]),
            Code::OutOfRange,
            "",
        ),
    ];
    for (name, request, code, needle) in cases {
        let status = certify(&f, request).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {}",
            status.message()
        );
    }
    // None of that changed anything: the issuer still signs.
    assert!(certify(&f, request(&good, &csr)).await.is_ok());
}

#[tokio::test]
async fn with_no_issuer_loaded_the_service_is_unavailable_until_one_is_swapped_in() {
    let f = serve(false).await;
    let web = identity("web", "emojivoto");
    let (_key, csr) = csr_for(&web);
    let token = f
        .key
        .create("emojivoto", "web", TimeDelta::hours(1), t0())
        .unwrap();
    let request = CertifyRequest {
        identity: web.to_string(),
        token: token.into_bytes(),
        certificate_signing_request: csr,
    };
    let status = certify(&f, request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let (anchor, issuer) = make_issuer();
    f.issuer.store(Some(Arc::new(issuer)));
    let response = certify(&f, request).await.unwrap();
    let leaf = Certificate::from_der(&response.leaf_certificate, "leaf").unwrap();
    let mut chain = vec![leaf];
    chain.extend(
        response
            .intermediate_certificates
            .iter()
            .map(|d| Certificate::from_der(d, "i").unwrap()),
    );
    verify_chain(&chain, &[anchor], t0() + TimeDelta::minutes(5)).unwrap();
}

#[tokio::test]
async fn each_identity_may_burst_ten_requests_then_one_a_second() {
    let f = serve(true).await;
    let web = identity("web", "emojivoto");
    let api = identity("api", "emojivoto");
    let request = |who: &Identity, sa: &str| {
        let (_key, csr) = csr_for(who);
        CertifyRequest {
            identity: who.to_string(),
            token: f
                .key
                .create("emojivoto", sa, TimeDelta::hours(1), t0())
                .unwrap()
                .into_bytes(),
            certificate_signing_request: csr,
        }
    };
    for i in 0..10 {
        assert!(
            certify(&f, request(&web, "web")).await.is_ok(),
            "request {i} is within the burst"
        );
    }
    let status = certify(&f, request(&web, "web")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("retry in"),
        "{}",
        status.message()
    );
    assert!(
        certify(&f, request(&api, "api")).await.is_ok(),
        "other identities are not held back"
    );
    f.clock.advance(TimeDelta::seconds(1));
    assert!(
        certify(&f, request(&web, "web")).await.is_ok(),
        "a token comes back each second"
    );
    assert_eq!(
        certify(&f, request(&web, "web")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
}
