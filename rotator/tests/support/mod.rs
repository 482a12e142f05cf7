//! Generated fixtures: CAs, Certificates and Secrets at an injected time.
#![allow(dead_code)]

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use lanyard_crds::api::{Certificate, CertificateSpec, IssuerConfig, IssuerKind, IssuerRef};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::usage::KeyUsage;
use lanyard_issuer::{Certificate as X509, CertificateTemplate, KeyAlgorithm, SigningKey};
use lanyard_rotator::issuing::{IssuerMaterial, issue, load_issuer};
use lanyard_rotator::secret::{CA_CRT, SecretData, TLS_CRT, TLS_KEY};

/// Options of a local controller over `dir` for Linkerd's default identity
/// domain, writing without fsync (test scratch directories).
pub fn local_options(dir: &std::path::Path) -> lanyard_rotator::local::LocalOptions {
    lanyard_rotator::local::LocalOptions {
        state_dir: dir.to_path_buf(),
        domain: lanyard_crds::identity::IdentityDomain::linkerd_default(),
        cluster_resource_namespace: "lanyard".into(),
        durability: lanyard_rotator::local::Durability::Deferred,
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub fn hours(h: i64) -> TimeDelta {
    TimeDelta::hours(h)
}

/// A self-signed root CA as a CA Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub fn anchor_secret(common_name: &str, now: DateTime<Utc>) -> SecretData {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let template = CertificateTemplate {
        common_name: Some(common_name.into()),
        dns_names: vec![],
        uris: vec![],
        is_ca: true,
        usages: vec![KeyUsage::CertSign, KeyUsage::CrlSign],
        lifetime: hours(87_600),
    };
    let signed = lanyard_issuer::self_signed(&template, &key, now).unwrap();
    let pem = X509::from_der(&signed.der, "anchor").unwrap().to_pem();
    let mut secret = SecretData::default();
    secret.data.insert(TLS_CRT.into(), pem.clone().into_bytes());
    secret
        .data
        .insert(TLS_KEY.into(), key.to_pkcs8_pem().as_bytes().to_vec());
    secret.data.insert(CA_CRT.into(), pem.into_bytes());
    secret
}

pub fn ca_config(secret_name: &str) -> IssuerConfig {
    IssuerConfig {
        ca: Some(lanyard_crds::api::CaIssuer {
            secret_name: secret_name.into(),
        }),
        self_signed: None,
    }
}

pub fn ca_issuer(secret: &SecretData, now: DateTime<Utc>) -> IssuerMaterial {
    load_issuer(
        IssuerKind::ClusterIssuer,
        "linkerd-trust-anchor",
        &ca_config("linkerd-trust-anchor"),
        Some(secret),
        "lanyard/linkerd-trust-anchor",
        now,
    )
    .unwrap()
}

/// The Linkerd guide's identity issuer Certificate.
pub fn identity_issuer_spec() -> CertificateSpec {
    lanyard_rotator::local::identity_issuer_certificate(
        &lanyard_crds::identity::IdentityDomain::linkerd_default(),
    )
    .spec
}

/// A 24h workload-style leaf issued by the `Issuer` `identity`.
pub fn leaf_spec(name: &str) -> CertificateSpec {
    let mut spec = CertificateSpec::new(
        name,
        IssuerRef {
            name: "identity".into(),
            kind: Some("Issuer".into()),
            group: None,
        },
    );
    spec.dns_names = vec![format!("{name}.default.svc.cluster.local")];
    spec.duration = Some(GoDuration::from_hours(24));
    spec.usages = vec![KeyUsage::ServerAuth, KeyUsage::ClientAuth];
    spec
}

pub fn certificate(namespace: &str, name: &str, spec: CertificateSpec) -> Certificate {
    let mut cert = Certificate::new(name, spec);
    cert.metadata.namespace = Some(namespace.into());
    cert.metadata.generation = Some(1);
    cert
}

/// Issues `spec` with `material` at `now`, as the controller would.
pub fn issued_secret(
    spec: &CertificateSpec,
    material: &IssuerMaterial,
    now: DateTime<Utc>,
) -> SecretData {
    let kind = spec.issuer_ref.issuer_kind().unwrap();
    issue(
        "test",
        spec,
        &spec.issuer_ref.name,
        kind,
        material,
        None,
        now,
    )
    .unwrap()
    .secret
}
