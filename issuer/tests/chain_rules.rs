//! The chain verifier's rules, one sentence each, over generated PKIs.

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::{Identity, IdentityDomain};
use lanyard_issuer::{
    Certificate, ChainError, IdentityIssuer, KeyAlgorithm, SigningKey, verify_chain,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, DnValue, IsCa, KeyPair, KeyUsagePurpose};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

const NOW: &str = "2026-06-01T12:00:00Z";

struct Ca {
    cert: Certificate,
    pair: KeyPair,
}

/// What a CA in a test PKI looks like.
struct Spec<'a> {
    name: DnValue,
    path_len: Option<u8>,
    may_sign: bool,
    hours: (i64, i64),
    signer: Option<&'a Ca>,
}

impl Spec<'_> {
    fn named(name: &str) -> Self {
        Spec {
            name: DnValue::Utf8String(name.into()),
            path_len: None,
            may_sign: true,
            hours: (0, 100),
            signer: None,
        }
    }
}

fn offset(hours: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp((t(NOW) + TimeDelta::hours(hours)).timestamp())
        .unwrap()
}

fn make(spec: Spec<'_>) -> Ca {
    let pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.name);
    params.is_ca = IsCa::Ca(match spec.path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = if spec.may_sign {
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    params.not_before = offset(spec.hours.0);
    params.not_after = offset(spec.hours.1);
    let cert = match spec.signer {
        None => params.self_signed(&pair).unwrap(),
        Some(signer) => {
            let issuer =
                rcgen::Issuer::from_ca_cert_der(&signer.cert.der().to_vec().into(), &signer.pair)
                    .unwrap();
            params.signed_by(&pair, &issuer).unwrap()
        }
    };
    Ca {
        cert: Certificate::from_der(cert.der(), "test").unwrap(),
        pair,
    }
}

fn leaf(signer: &Ca) -> Certificate {
    let pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
    params.not_before = offset(0);
    params.not_after = offset(10);
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&signer.cert.der().to_vec().into(), &signer.pair).unwrap();
    let cert = params.signed_by(&pair, &issuer).unwrap();
    Certificate::from_der(cert.der(), "leaf").unwrap()
}

/// A root with path length 1 over an intermediate with path length 0, the
/// shape of a Linkerd anchor and issuer.
fn linkerd_shaped() -> (Ca, Ca) {
    let root = make(Spec {
        path_len: Some(1),
        ..Spec::named("root")
    });
    let mid = make(Spec {
        path_len: Some(0),
        signer: Some(&root),
        ..Spec::named("mid")
    });
    (root, mid)
}

#[test]
fn a_leaf_chains_through_its_issuer_to_the_anchor() {
    let (root, mid) = linkerd_shaped();
    let anchors = [root.cert.clone()];
    let chain = [leaf(&mid), mid.cert.clone()];
    let path = verify_chain(&chain, &anchors, t(NOW)).unwrap();
    let names: Vec<_> = path.iter().map(|c| c.subject()).collect();
    assert_eq!(names[1..], ["CN=mid", "CN=root"]);
    assert!(path[0].ca().is_none(), "the path starts at the leaf");
}

#[test]
fn an_issuer_verifies_on_its_own_and_an_anchor_verifies_as_itself() {
    let (root, mid) = linkerd_shaped();
    let anchors = [root.cert.clone()];
    assert_eq!(
        verify_chain(std::slice::from_ref(&mid.cert), &anchors, t(NOW))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        verify_chain(std::slice::from_ref(&root.cert), &anchors, t(NOW))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn intermediates_may_come_in_any_order() {
    let root = make(Spec::named("root"));
    let upper = make(Spec {
        signer: Some(&root),
        ..Spec::named("upper")
    });
    let lower = make(Spec {
        signer: Some(&upper),
        ..Spec::named("lower")
    });
    let chain = [leaf(&lower), upper.cert.clone(), lower.cert.clone()];
    assert_eq!(
        verify_chain(&chain, std::slice::from_ref(&root.cert), t(NOW))
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn failures_name_what_broke() {
    let now = t(NOW);
    let root = make(Spec {
        path_len: Some(0),
        ..Spec::named("root")
    });
    let mid = make(Spec {
        signer: Some(&root),
        ..Spec::named("mid")
    });
    let not_signer = make(Spec {
        may_sign: false,
        signer: Some(&root),
        ..Spec::named("nosign")
    });
    let expired = make(Spec {
        hours: (-10, -1),
        signer: Some(&root),
        ..Spec::named("old")
    });
    let future = make(Spec {
        hours: (5, 50),
        signer: Some(&root),
        ..Spec::named("new")
    });
    let impostor = make(Spec::named("root"));
    let anchors = [root.cert.clone()];

    type Check = fn(&ChainError) -> bool;
    let cases: Vec<(&str, Vec<Certificate>, Check)> = vec![
        (
            "an anchor with path length 0 cannot have an intermediate below it",
            vec![leaf(&mid), mid.cert.clone()],
            |e| {
                matches!(
                    e,
                    ChainError::PathLenExceeded {
                        allowed: 0,
                        found: 1,
                        ..
                    }
                )
            },
        ),
        (
            "a chain missing its intermediate names the missing issuer",
            vec![leaf(&mid)],
            |e| matches!(e, ChainError::NoIssuer { issuer, .. } if issuer == "CN=mid"),
        ),
        (
            "a CA whose key usage lacks keyCertSign cannot sign",
            vec![leaf(&not_signer), not_signer.cert.clone()],
            |e| matches!(e, ChainError::IssuerNotCa { issuer, .. } if issuer == "CN=nosign"),
        ),
        (
            "an expired intermediate breaks the chain",
            vec![expired.cert.clone()],
            |e| matches!(e, ChainError::Expired { subject, .. } if subject == "CN=old"),
        ),
        (
            "a not yet valid intermediate breaks the chain",
            vec![future.cert.clone()],
            |e| matches!(e, ChainError::NotYetValid { subject, .. } if subject == "CN=new"),
        ),
        (
            "a CA with the anchor's name but another key is not the anchor",
            vec![impostor.cert.clone()],
            |e| matches!(e, ChainError::NoIssuer { hint, .. } if hint.contains("did not make the signature")),
        ),
    ];
    assert_eq!(verify_chain(&[], &anchors, now), Err(ChainError::Empty));
    for (name, chain, check) in cases {
        let err = verify_chain(&chain, &anchors, now).expect_err(name);
        assert!(check(&err), "{name}: {err:?}");
    }
}

#[test]
fn names_written_as_printable_strings_like_go_and_step_write_them_chain_byte_for_byte() {
    // Go's crypto/x509 (and so `step`) encodes ASCII names as
    // PrintableString; the leaf's issuer name must keep that encoding, or
    // webpki-based peers will not link the leaf to its issuer.
    let printable =
        |s: &str| DnValue::PrintableString(rcgen::string::PrintableString::try_from(s).unwrap());
    let root = make(Spec {
        name: printable("root.linkerd.cluster.local"),
        path_len: Some(1),
        hours: (-1, 1000),
        ..Spec::named("")
    });
    let issuer = make(Spec {
        name: printable("identity.linkerd.cluster.local"),
        path_len: Some(0),
        hours: (-1, 900),
        signer: Some(&root),
        ..Spec::named("")
    });
    let key = SigningKey::from_pem(issuer.pair.serialize_pem().as_bytes(), "issuer.key").unwrap();
    let domain = IdentityIssuer::domain_from_common_name(&issuer.cert).unwrap();
    assert_eq!(domain, IdentityDomain::linkerd_default());
    let loaded = IdentityIssuer::new(
        vec![root.cert.clone()],
        vec![issuer.cert.clone()],
        key,
        domain.clone(),
        t(NOW),
    )
    .expect("a Go-style issuer loads and passes its self-test");
    let id = Identity::new("web", "emojivoto", domain).unwrap();
    let csr = SigningKey::generate(KeyAlgorithm::EcdsaP256)
        .unwrap()
        .certificate_signing_request(&id)
        .unwrap();
    let leaf = loaded
        .issue(&csr, &id, TimeDelta::hours(24), t(NOW))
        .unwrap();
    let chain = [
        Certificate::from_der(&leaf.leaf_der, "leaf").unwrap(),
        issuer.cert.clone(),
    ];
    assert!(chain[0].is_signed_by(&issuer.cert));
    verify_chain(&chain, std::slice::from_ref(&root.cert), t(NOW)).unwrap();
}
