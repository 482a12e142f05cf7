//! The CA's rules, one sentence each, with an injected clock: anchors and
//! issuers made and imported, CSRs signed and refused.

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_issuer::{
    Certificate, ChainError, CsrError, Error, IdentityIssuer, KeyAlgorithm, Role, SigningKey,
    TrustAnchor, describe, verify_chain,
};
use rcgen::{CertificateParams, CustomExtension, DnType, SanType};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

fn domain() -> IdentityDomain {
    IdentityDomain::linkerd_default()
}

fn web() -> Identity {
    Identity::new("web", "emojivoto", domain()).expect("a valid identity")
}

const NOW: &str = "2026-06-01T12:00:00Z";

/// An anchor and issuer made at `NOW` with the default lifetimes.
fn pki() -> (TrustAnchor, IdentityIssuer) {
    pki_with(TimeDelta::hours(87_600), TimeDelta::hours(8_760))
}

fn pki_with(anchor_life: TimeDelta, issuer_life: TimeDelta) -> (TrustAnchor, IdentityIssuer) {
    let now = t(NOW);
    let anchor =
        TrustAnchor::generate(&domain(), anchor_life, KeyAlgorithm::EcdsaP256, now).unwrap();
    let (issuer, _) = anchor
        .issue_identity_issuer(&domain(), issuer_life, KeyAlgorithm::EcdsaP256, now)
        .unwrap();
    (anchor, issuer)
}

/// Reloads an issuer through the import path, from its parts.
fn reload(
    anchors: &[Certificate],
    issuer: &IdentityIssuer,
    now: DateTime<Utc>,
) -> Result<IdentityIssuer, Error> {
    let key = SigningKey::from_pem(issuer.key().to_pkcs8_pem().as_bytes(), "issuer.key")?;
    IdentityIssuer::new(
        anchors.to_vec(),
        issuer.chain().to_vec(),
        key,
        domain(),
        now,
    )
}

fn csr_with(
    identity: &Identity,
    extra: impl FnOnce(&mut CertificateParams),
) -> (SigningKey, Vec<u8>) {
    let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let pair = rcgen::KeyPair::from_pem(&key.to_pkcs8_pem()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.as_str());
    params.subject_alt_names = vec![SanType::DnsName(identity.as_str().try_into().unwrap())];
    extra(&mut params);
    let csr = params.serialize_request(&pair).unwrap();
    (key, csr.der().to_vec())
}

#[test]
fn makes_an_anchor_as_step_makes_a_root_ca_for_linkerd() {
    let (anchor, _) = pki();
    let report = describe(anchor.certificate(), t(NOW));
    assert_eq!(report.subject, "CN=root.linkerd.cluster.local");
    assert_eq!(report.issuer, "CN=root.linkerd.cluster.local");
    assert_eq!(report.basic_constraints, "CA:TRUE, pathlen:1");
    assert_eq!(report.key_usage, vec!["Key Cert Sign", "CRL Sign"]);
    assert_eq!(report.public_key, "ECDSA P-256");
    assert_eq!(
        anchor.certificate().not_after() - anchor.certificate().not_before(),
        TimeDelta::hours(87_600),
        "ten years by default"
    );
}

#[test]
fn makes_an_issuer_named_for_the_identity_domain_with_path_length_zero() {
    let (anchor, issuer) = pki();
    let report = describe(issuer.certificate(), t(NOW));
    assert_eq!(report.subject, "CN=identity.linkerd.cluster.local");
    assert_eq!(report.issuer, anchor.certificate().subject());
    assert_eq!(report.basic_constraints, "CA:TRUE, pathlen:0");
    assert_eq!(
        issuer.certificate().not_after() - issuer.certificate().not_before(),
        TimeDelta::hours(8_760)
    );
    assert!(verify_chain(issuer.chain(), &[anchor.certificate().clone()], t(NOW)).is_ok());
}

#[test]
fn an_issuer_never_outlives_its_anchor_and_says_it_was_clamped() {
    let now = t(NOW);
    let anchor = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(100),
        KeyAlgorithm::EcdsaP256,
        now,
    )
    .unwrap();
    let (issuer, validity) = anchor
        .issue_identity_issuer(
            &domain(),
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
    assert_eq!(
        issuer.certificate().not_after(),
        anchor.certificate().not_after()
    );
    assert_eq!(validity.clamped_from, Some(now + TimeDelta::hours(8_760)));
}

#[test]
fn ed25519_and_rsa_anchors_are_selectable() {
    let now = t(NOW);
    for (algorithm, described) in [
        (KeyAlgorithm::Ed25519, "Ed25519"),
        (KeyAlgorithm::Rsa { bits: 2048 }, "RSA 2048"),
        (KeyAlgorithm::EcdsaP384, "ECDSA P-384"),
    ] {
        let anchor =
            TrustAnchor::generate(&domain(), TimeDelta::hours(10), algorithm, now).unwrap();
        assert_eq!(describe(anchor.certificate(), now).public_key, described);
        let (issuer, _) = anchor
            .issue_identity_issuer(&domain(), TimeDelta::hours(5), algorithm, now)
            .unwrap();
        let (_, csr) = csr_with(&web(), |_| {});
        issuer
            .issue(&csr, &web(), TimeDelta::hours(1), now)
            .unwrap();
    }
}

#[test]
fn signs_a_leaf_with_the_identity_as_dns_and_spiffe_sans() {
    let (anchor, issuer) = pki();
    let now = t(NOW);
    let (_, csr) = csr_with(&web(), |_| {});
    let leaf = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), now)
        .unwrap();
    let cert = Certificate::from_der(&leaf.leaf_der, "leaf").unwrap();
    let report = describe(&cert, now);
    assert_eq!(
        report.sans,
        vec![
            "DNS:web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            "URI:spiffe://cluster.local/ns/emojivoto/sa/web",
        ]
    );
    assert_eq!(report.extended_key_usage, vec!["serverAuth", "clientAuth"]);
    assert_eq!(report.key_usage, vec!["Digital Signature"]);
    assert_eq!(report.basic_constraints, "CA:FALSE");
    assert_eq!(report.issuer, "CN=identity.linkerd.cluster.local");
    assert!(
        report.serial.split(':').count() >= 8,
        "at least 64 bits of serial"
    );
    assert_eq!(
        cert.not_before(),
        now - TimeDelta::seconds(20),
        "backdated 20s"
    );
    assert_eq!(cert.not_after(), now + TimeDelta::hours(24), "24h lifetime");
    assert_eq!(leaf.chain_der, vec![issuer.certificate().der().to_vec()]);
    let mut chain = vec![cert];
    chain.extend(issuer.chain().iter().cloned());
    let anchors = [anchor.certificate().clone()];
    let path = verify_chain(&chain, &anchors, now).unwrap();
    assert_eq!(path.len(), 3);
}

#[test]
fn serials_differ_between_leaves() {
    let (_, issuer) = pki();
    let (_, csr) = csr_with(&web(), |_| {});
    let serial = |der: &[u8]| describe(&Certificate::from_der(der, "leaf").unwrap(), t(NOW)).serial;
    let a = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), t(NOW))
        .unwrap();
    let b = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), t(NOW))
        .unwrap();
    assert_ne!(serial(&a.leaf_der), serial(&b.leaf_der));
}

#[test]
fn a_leaf_from_an_issuer_that_expires_in_three_hours_is_clamped_to_it() {
    let (_, issuer) = pki_with(TimeDelta::hours(87_600), TimeDelta::hours(3));
    let (_, csr) = csr_with(&web(), |_| {});
    let leaf = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), t(NOW))
        .unwrap();
    assert_eq!(leaf.validity.not_after, issuer.certificate().not_after());
    assert_eq!(
        leaf.validity.clamped_from,
        Some(t(NOW) + TimeDelta::hours(24))
    );
}

#[test]
fn an_expired_issuer_signs_nothing() {
    let (_, issuer) = pki_with(TimeDelta::hours(87_600), TimeDelta::hours(3));
    let (_, csr) = csr_with(&web(), |_| {});
    let later = t(NOW) + TimeDelta::hours(4);
    let err = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), later)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Expired {
                role: Role::IdentityIssuer,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn csr_refusals_each_have_their_own_error() {
    let (_, issuer) = pki();
    let now = t(NOW);
    let id = web();
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "refuses a CSR that names a SAN other than the identity",
            csr_with(&id, |p| {
                p.subject_alt_names
                    .push(SanType::DnsName("evil.example".try_into().unwrap()))
            })
            .1,
            |e| matches!(e, Error::Csr(CsrError::SanNotAllowed { san, .. }) if san == "DNS:evil.example"),
        ),
        (
            "refuses a CSR that names another identity's SPIFFE ID",
            csr_with(&id, |p| {
                p.subject_alt_names.push(SanType::URI(
                    "spiffe://cluster.local/ns/emojivoto/sa/admin"
                        .try_into()
                        .unwrap(),
                ))
            })
            .1,
            |e| matches!(e, Error::Csr(CsrError::SanNotAllowed { .. })),
        ),
        (
            "refuses a CSR that names an IP address",
            csr_with(&id, |p| {
                p.subject_alt_names
                    .push(SanType::IpAddress("10.0.0.1".parse().unwrap()))
            })
            .1,
            |e| matches!(e, Error::Csr(CsrError::SanNotAllowed { san, .. }) if san == "IP:10.0.0.1"),
        ),
        (
            "refuses a CSR that asks to be a CA",
            csr_with(&id, |p| {
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    &[2, 5, 29, 19],
                    vec![0x30, 0x03, 0x01, 0x01, 0xff],
                ))
            })
            .1,
            |e| matches!(e, Error::Csr(CsrError::AsksToBeCa { .. })),
        ),
        (
            "refuses a CSR whose signature does not verify",
            {
                let mut der = csr_with(&id, |_| {}).1;
                let last = der.len() - 3;
                der[last] ^= 0x01;
                der
            },
            |e| matches!(e, Error::Csr(CsrError::BadSignature)),
        ),
        (
            "refuses garbage that is not DER",
            b"hello, I am not a CSR".to_vec(),
            |e| matches!(e, Error::Csr(CsrError::Malformed { .. })),
        ),
        (
            "refuses a CSR with bytes after it",
            {
                let mut der = csr_with(&id, |_| {}).1;
                der.extend_from_slice(b"trailing");
                der
            },
            |e| matches!(e, Error::Csr(CsrError::Malformed { .. })),
        ),
        ("refuses an empty request", Vec::new(), |e| {
            matches!(e, Error::Csr(CsrError::Malformed { .. }))
        }),
    ];
    for (name, csr, check) in cases {
        let err = issuer
            .issue(&csr, &id, TimeDelta::hours(24), now)
            .expect_err(name);
        assert!(check(&err), "{name}: got {err:?}");
    }
}

#[test]
fn accepts_a_csr_that_asks_for_exactly_the_identity_and_its_spiffe_id() {
    let (_, issuer) = pki();
    let id = web();
    let (_, csr) = csr_with(&id, |p| {
        p.subject_alt_names
            .push(SanType::URI(id.spiffe_id().try_into().unwrap()))
    });
    issuer
        .issue(&csr, &id, TimeDelta::hours(24), t(NOW))
        .unwrap();
}

#[test]
fn the_subject_of_a_csr_is_ignored_not_copied() {
    let (_, issuer) = pki();
    let (_, csr) = csr_with(&web(), |p| {
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "evil.example");
    });
    let leaf = issuer
        .issue(&csr, &web(), TimeDelta::hours(24), t(NOW))
        .unwrap();
    let cert = Certificate::from_der(&leaf.leaf_der, "leaf").unwrap();
    assert_eq!(cert.common_name(), Some(web().as_str()));
}

#[test]
fn refuses_an_identity_from_another_identity_domain() {
    let (_, issuer) = pki();
    let other = Identity::new(
        "web",
        "emojivoto",
        "identity.other.example.org".parse().unwrap(),
    )
    .unwrap();
    let (_, csr) = csr_with(&other, |_| {});
    let err = issuer
        .issue(&csr, &other, TimeDelta::hours(24), t(NOW))
        .unwrap_err();
    assert!(matches!(err, Error::IdentityNotInDomain { .. }), "{err}");
}

#[test]
fn signs_csrs_for_every_accepted_key_kind() {
    let (_, issuer) = pki();
    for algorithm in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa { bits: 2048 },
    ] {
        let key = SigningKey::generate(algorithm).unwrap();
        let csr = key.certificate_signing_request(&web()).unwrap();
        let leaf = issuer
            .issue(&csr, &web(), TimeDelta::hours(24), t(NOW))
            .unwrap();
        let cert = Certificate::from_der(&leaf.leaf_der, "leaf").unwrap();
        assert!(key.matches_public_key(cert.public_key_raw()), "{algorithm}");
    }
}

#[test]
fn import_accepts_a_valid_pair_and_each_failure_has_its_own_error() {
    let (anchor, issuer) = pki();
    let now = t(NOW);
    let anchors = vec![anchor.certificate().clone()];
    reload(&anchors, &issuer, now).expect("a valid pair imports");

    // An unrelated anchor: the issuer does not chain to it.
    let (stranger, _) = pki();
    let err = reload(&[stranger.certificate().clone()], &issuer, now).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IssuerNotSignedByAnchor {
                reason: ChainError::NoIssuer { .. },
                ..
            }
        ),
        "the issuer chains to an anchor: {err}"
    );

    // Several anchors (a rotation in progress): the right one is found.
    let both = vec![stranger.certificate().clone(), anchor.certificate().clone()];
    reload(&both, &issuer, now).expect("an issuer chains to one of several anchors");

    // The key of another issuer.
    let (_, other_issuer) = pki();
    let wrong_key =
        SigningKey::from_pem(other_issuer.key().to_pkcs8_pem().as_bytes(), "issuer.key").unwrap();
    let err = IdentityIssuer::new(
        anchors.clone(),
        issuer.chain().to_vec(),
        wrong_key,
        domain(),
        now,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyMismatch {
                role: Role::IdentityIssuer,
                ..
            }
        ),
        "the key matches the certificate: {err}"
    );

    // Expired and not yet valid.
    let err = reload(&anchors, &issuer, now + TimeDelta::hours(8_761)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Expired {
                role: Role::IdentityIssuer,
                ..
            }
        ),
        "an expired issuer is refused: {err}"
    );
    let err = reload(&anchors, &issuer, now - TimeDelta::hours(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotYetValid {
                role: Role::TrustAnchor,
                ..
            }
        ),
        "a not-yet-valid anchor is refused: {err}"
    );

    // A leaf handed over as the issuer is not a CA.
    let (_, csr) = csr_with(&web(), |_| {});
    let leaf_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr_for_leaf_key = leaf_key.certificate_signing_request(&web()).unwrap();
    let leaf = issuer
        .issue(&csr_for_leaf_key, &web(), TimeDelta::hours(24), now)
        .unwrap();
    let leaf_cert = Certificate::from_der(&leaf.leaf_der, "issuer.crt").unwrap();
    let err = IdentityIssuer::new(
        anchors.clone(),
        vec![leaf_cert.clone()],
        leaf_key,
        domain(),
        now,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotCa {
                role: Role::IdentityIssuer,
                ..
            }
        ),
        "the issuer is a CA: {err}"
    );
    drop(csr);

    // A leaf handed over as the anchor is not a CA either.
    let err = reload(&[leaf_cert], &issuer, now).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotCa {
                role: Role::TrustAnchor,
                ..
            }
        ),
        "the anchor is a CA: {err}"
    );
}

#[test]
fn import_refuses_an_issuer_whose_validity_reaches_past_its_anchor() {
    // An issuer signed outside Lanyard (no clamping) that outlives its anchor.
    let now = t(NOW);
    let anchor = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(10),
        KeyAlgorithm::EcdsaP256,
        now,
    )
    .unwrap();
    let anchor_pair = rcgen::KeyPair::from_pem(&anchor.key().to_pkcs8_pem()).unwrap();
    let anchor_issuer =
        rcgen::Issuer::from_ca_cert_der(&anchor.certificate().der().to_vec().into(), anchor_pair)
            .unwrap();
    let issuer_key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issuer_pair = rcgen::KeyPair::from_pem(&issuer_key.to_pkcs8_pem()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "identity.linkerd.cluster.local");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now.timestamp()).unwrap();
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp((now + TimeDelta::hours(20)).timestamp())
            .unwrap();
    let cert = params.signed_by(&issuer_pair, &anchor_issuer).unwrap();
    let cert = Certificate::from_der(cert.der(), "issuer.crt").unwrap();
    let err = IdentityIssuer::new(
        vec![anchor.certificate().clone()],
        vec![cert],
        issuer_key,
        domain(),
        now,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::IssuerOutsideAnchorValidity { .. }),
        "{err}"
    );
}

#[test]
fn the_identity_domain_is_read_from_the_issuer_name() {
    let (anchor, issuer) = pki();
    assert_eq!(
        IdentityIssuer::domain_from_common_name(issuer.certificate()).unwrap(),
        domain()
    );
    let err = IdentityIssuer::domain_from_common_name(anchor.certificate()).unwrap_err();
    assert!(
        matches!(err, Error::IssuerNameNotIdentityDomain { .. }),
        "{err}"
    );
}

#[test]
fn an_issuer_passed_off_as_an_anchor_cannot_sign_another_issuer() {
    let (_, issuer) = pki();
    let key = SigningKey::from_pem(issuer.key().to_pkcs8_pem().as_bytes(), "issuer.key").unwrap();
    let fake_anchor = TrustAnchor::new(issuer.certificate().clone(), key, t(NOW)).unwrap();
    let err = fake_anchor
        .issue_identity_issuer(
            &domain(),
            TimeDelta::hours(1),
            KeyAlgorithm::EcdsaP256,
            t(NOW),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PathLenTooShort {
                role: Role::TrustAnchor,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_expired_anchor_beside_a_live_one_is_skipped_and_reported_not_refused() {
    let now = t(NOW);
    // An old anchor that lived a day, left in ca.crt after a rotation.
    let old = TrustAnchor::generate(
        &domain(),
        TimeDelta::hours(24),
        KeyAlgorithm::EcdsaP256,
        now - TimeDelta::hours(48),
    )
    .unwrap();
    let (anchor, issuer) = pki();
    let both = vec![old.certificate().clone(), anchor.certificate().clone()];
    let loaded = reload(&both, &issuer, now).expect("the live anchor carries the issuer");
    assert_eq!(loaded.anchors(), [anchor.certificate().clone()]);
    assert_eq!(loaded.expired_anchors(), [old.certificate().clone()]);

    // Every anchor expired: still refused, naming the anchor.
    let err = reload(&[old.certificate().clone()], &issuer, now).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Expired {
                role: Role::TrustAnchor,
                ..
            }
        ),
        "only expired anchors: {err}"
    );
}
