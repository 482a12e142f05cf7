//! The Certificate API accepts cert-manager's manifests and refuses bad
//! specs with messages that name the field.

use lanyard_crds::api::{Certificate, CertificateSpec, ClusterIssuer, IssuerKind, SpecError};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::usage::{KeyUsage, PrivateKeyAlgorithm};

/// The Linkerd mTLS guide's cert-manager manifest, with only `apiVersion`
/// changed.
fn guide_issuer_certificate() -> String {
    include_str!("guide/linkerd-identity-issuer.yaml")
        .replace("cert-manager.io/v1", "lanyard.dev/v1")
}

#[test]
fn the_linkerd_guides_issuer_certificate_parses_and_validates() {
    let cert: Certificate = serde_saphyr::from_str(&guide_issuer_certificate()).unwrap();
    let spec = &cert.spec;
    assert_eq!(cert.metadata.namespace.as_deref(), Some("linkerd"));
    assert_eq!(spec.duration(), GoDuration::from_hours(8760));
    assert_eq!(spec.renew_before, Some(GoDuration::from_hours(720)));
    assert!(spec.is_ca);
    assert_eq!(spec.key_algorithm(), PrivateKeyAlgorithm::Ecdsa);
    assert_eq!(
        spec.issuer_ref.issuer_kind(),
        Some(IssuerKind::ClusterIssuer)
    );
    assert_eq!(spec.issuer_ref.group(), "lanyard.dev");
    assert_eq!(
        spec.effective_usages(),
        vec![
            KeyUsage::CertSign,
            KeyUsage::CrlSign,
            KeyUsage::ServerAuth,
            KeyUsage::ClientAuth
        ]
    );
    spec.validate().unwrap();
}

#[test]
fn a_ca_cluster_issuer_parses() {
    let issuer: ClusterIssuer = serde_saphyr::from_str(
        "apiVersion: lanyard.dev/v1\nkind: ClusterIssuer\nmetadata:\n  name: linkerd-trust-anchor\nspec:\n  ca:\n    secretName: linkerd-trust-anchor\n",
    )
    .unwrap();
    assert_eq!(
        issuer.spec.config.ca.unwrap().secret_name,
        "linkerd-trust-anchor"
    );
}

#[test]
fn an_unknown_usage_does_not_parse() {
    let manifest = guide_issuer_certificate().replace("- crl sign", "- crl signing");
    let err = serde_saphyr::from_str::<Certificate>(&manifest).unwrap_err();
    assert!(err.to_string().contains("crl signing"), "{err}");
}

fn spec(edit: impl FnOnce(&mut CertificateSpec)) -> CertificateSpec {
    let mut cert: Certificate = serde_saphyr::from_str(&guide_issuer_certificate()).unwrap();
    edit(&mut cert.spec);
    cert.spec
}

#[test]
fn bad_specs_are_refused_with_the_field_named() {
    let h = GoDuration::from_hours;
    let cases: Vec<(&str, CertificateSpec, SpecError, &str)> = vec![
        (
            "refuses renewBefore longer than duration",
            spec(|s| s.renew_before = Some(h(9000))),
            SpecError::RenewBeforeNotShorter {
                renew_before: h(9000),
                duration: h(8760),
            },
            "spec.renewBefore 9000h0m0s must be shorter than spec.duration 8760h0m0s",
        ),
        (
            "refuses renewBefore equal to the default duration",
            spec(|s| {
                s.duration = None;
                s.renew_before = Some(h(2160));
            }),
            SpecError::RenewBeforeNotShorter {
                renew_before: h(2160),
                duration: h(2160),
            },
            "shorter than spec.duration",
        ),
        (
            "refuses a duration under an hour",
            spec(|s| {
                s.duration = Some(GoDuration::from_secs(1800));
                s.renew_before = None;
            }),
            SpecError::DurationTooShort(GoDuration::from_secs(1800)),
            "spec.duration 30m0s is too short",
        ),
        (
            "refuses both renewBefore and renewBeforePercentage",
            spec(|s| s.renew_before_percentage = Some(10)),
            SpecError::BothRenewals,
            "mutually exclusive",
        ),
        (
            "refuses a percentage of 100",
            spec(|s| {
                s.renew_before = None;
                s.renew_before_percentage = Some(100);
            }),
            SpecError::Percentage(100),
            "between 1 and 99",
        ),
        (
            "refuses a percentage of 0",
            spec(|s| {
                s.renew_before = None;
                s.renew_before_percentage = Some(0);
            }),
            SpecError::Percentage(0),
            "between 1 and 99",
        ),
        (
            "refuses a certificate with no subject at all",
            spec(|s| s.common_name = None),
            SpecError::NoSubject,
            "commonName, spec.dnsNames or spec.uris",
        ),
        (
            "refuses a P-521 key, which ring cannot verify",
            spec(|s| s.private_key.as_mut().unwrap().size = Some(521)),
            SpecError::KeySize {
                algorithm: PrivateKeyAlgorithm::Ecdsa,
                size: 521,
                allowed: "ECDSA keys are 256 or 384 (P-521 is refused: peers using ring cannot verify it)",
            },
            "spec.privateKey.size 521",
        ),
        (
            "refuses cert-manager's issuer group",
            spec(|s| s.issuer_ref.group = Some("cert-manager.io".into())),
            SpecError::IssuerGroup("cert-manager.io".into()),
            "`cert-manager.io` is not served here",
        ),
        (
            "refuses an issuer kind that does not exist",
            spec(|s| s.issuer_ref.kind = Some("Vault".into())),
            SpecError::IssuerKind("Vault".into()),
            "spec.issuerRef.kind `Vault`",
        ),
        (
            "refuses a secret name with capitals",
            spec(|s| s.secret_name = "Linkerd".into()),
            SpecError::SecretName("Linkerd".into()),
            "spec.secretName `Linkerd`",
        ),
        (
            "refuses a DNS name with a space",
            spec(|s| s.dns_names = vec!["web.default".into(), "bad name".into()]),
            SpecError::DnsName {
                index: 1,
                name: "bad name".into(),
            },
            "spec.dnsNames[1] `bad name`",
        ),
        (
            "refuses a URI without a scheme",
            spec(|s| s.uris = vec!["/ns/default/sa/web".into()]),
            SpecError::Uri {
                index: 0,
                uri: "/ns/default/sa/web".into(),
            },
            "spec.uris[0]",
        ),
    ];
    for (name, spec, expected, message) in cases {
        let errors = spec.validate().expect_err(name);
        assert!(errors.0.contains(&expected), "{name}: got {errors}");
        assert!(
            errors.to_string().contains(message),
            "{name}: message was `{errors}`"
        );
    }
}

#[test]
fn renewal_offsets_follow_the_spec() {
    let lifetime = chrono::TimeDelta::hours(100);
    let by_percentage = spec(|s| {
        s.renew_before = None;
        s.renew_before_percentage = Some(25);
    });
    assert_eq!(
        by_percentage.renew_before_for(lifetime),
        Some(chrono::TimeDelta::hours(25))
    );
    let by_duration = spec(|_| {});
    assert_eq!(
        by_duration.renew_before_for(lifetime),
        Some(chrono::TimeDelta::hours(720))
    );
    let neither = spec(|s| s.renew_before = None);
    assert_eq!(neither.renew_before_for(lifetime), None);
}
