//! The identity service over TLS, as Linkerd's: its certificate is signed
//! by the current issuer for its own identity, and clients verify it
//! against the trust anchor and that name.

mod common;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::TimeDelta;
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_crds::time::{Clock, SystemClock};
use lanyard_identity::metrics::IdentityMetrics;
use lanyard_identity::reload::IssuerReloader;
use lanyard_identity::serve::{ServeOptions, serve, watch_files};
use lanyard_identity::service::proto::CertifyRequest;
use lanyard_identity::service::proto::identity_client::IdentityClient;
use lanyard_identity::token::TokenKey;
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey, verify_chain};
use tonic::transport::{Channel, ClientTlsConfig};

#[tokio::test]
async fn agents_verify_the_service_and_get_a_leaf_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    let domain = IdentityDomain::linkerd_default();
    let (anchor, issuer) = common::linkerd_ca(now - TimeDelta::minutes(1));
    common::write_issuer_files(dir.path(), &anchor, &issuer, None);

    let service_identity = Identity::new("linkerd-identity", "linkerd", domain.clone()).unwrap();
    let key = Arc::new(TokenKey::generate().unwrap());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let issuer = Arc::new(ArcSwapOption::empty());
    tokio::spawn(watch_files(
        IssuerReloader::new(dir.path(), issuer.clone()),
        SystemClock,
    ));
    tokio::spawn(serve(
        ServeOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            issuer,
            service_identity: service_identity.clone(),
            metrics: IdentityMetrics::new(),
            rate_limit: Default::default(),
            insecure_plaintext: false,
            limits: Default::default(),
            leaf_lifetime: lanyard_issuer::DEFAULT_LEAF_LIFETIME,
        },
        key.clone(),
        SystemClock,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        lanyard_runtime::Shutdown::new(),
    ));
    let addr = ready_rx.await.unwrap();

    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            anchor.certificate().to_pem(),
        ))
        .domain_name(service_identity.as_str());
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    // The serving certificate appears within a reload interval.
    let mut channel = None;
    for _ in 0..50 {
        if let Ok(c) = endpoint.connect().await {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut client = IdentityClient::new(channel.expect("a TLS connection that verifies"));

    let web = Identity::new("web", "emojivoto", domain.clone()).unwrap();
    let agent_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let response = client
        .certify(CertifyRequest {
            identity: web.to_string(),
            token: key
                .create("emojivoto", "web", TimeDelta::hours(1), SystemClock.now())
                .unwrap()
                .into_bytes(),
            certificate_signing_request: agent_key.certificate_signing_request(&web).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut chain = vec![Certificate::from_der(&response.leaf_certificate, "leaf").unwrap()];
    chain.extend(
        response
            .intermediate_certificates
            .iter()
            .map(|d| Certificate::from_der(d, "i").unwrap()),
    );
    verify_chain(
        &chain,
        std::slice::from_ref(anchor.certificate()),
        SystemClock.now(),
    )
    .unwrap();

    // A client expecting another name refuses the service.
    let wrong = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            anchor.certificate().to_pem(),
        ))
        .domain_name("impostor.linkerd.serviceaccount.identity.linkerd.cluster.local");
    let refused = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(wrong)
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "the service's identity is checked");
}
