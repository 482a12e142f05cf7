//! A megabyte in one field comes back as a few hundred bytes of message
//! that still say which field and what was wrong.

use lanyard_crds::api::{CaIssuer, CertificateSpec, IssuerConfig, IssuerRef};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::{Identity, IdentityDomain, TrustDomain};

const MEGABYTE: usize = 1 << 20;

fn spec(edit: impl FnOnce(&mut CertificateSpec)) -> String {
    let mut spec = CertificateSpec::new(
        "web-tls",
        IssuerRef {
            name: "identity".into(),
            kind: Some("Issuer".into()),
            group: None,
        },
    );
    spec.dns_names = vec!["web.example".into()];
    edit(&mut spec);
    spec.validate()
        .expect_err("the spec is refused")
        .to_string()
}

#[test]
fn messages_quote_a_megabyte_value_in_a_few_hundred_bytes() {
    let huge = "a".repeat(MEGABYTE);
    let linkerd = IdentityDomain::linkerd_default();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a duration that is not one",
            huge.parse::<GoDuration>().unwrap_err().to_string(),
            "is not a duration",
        ),
        (
            "a duration with a megabyte of unit",
            format!("1{huge}")
                .parse::<GoDuration>()
                .unwrap_err()
                .to_string(),
            "has unknown unit `aaaa",
        ),
        (
            "a negative duration",
            format!("-{huge}")
                .parse::<GoDuration>()
                .unwrap_err()
                .to_string(),
            "is negative",
        ),
        (
            "a duration too long for Go",
            format!("{}h", "9".repeat(MEGABYTE))
                .parse::<GoDuration>()
                .unwrap_err()
                .to_string(),
            "is too long",
        ),
        (
            "a secretName",
            spec(|s| s.secret_name = huge.clone()),
            "spec.secretName `aaaa",
        ),
        (
            "a DNS name",
            spec(|s| s.dns_names = vec![huge.clone()]),
            "spec.dnsNames[0] `aaaa",
        ),
        (
            "a URI",
            spec(|s| s.uris = vec![huge.clone()]),
            "spec.uris[0] `aaaa",
        ),
        (
            "an issuerRef kind",
            spec(|s| s.issuer_ref.kind = Some(huge.clone())),
            "spec.issuerRef.kind `aaaa",
        ),
        (
            "an issuerRef group",
            spec(|s| s.issuer_ref.group = Some(huge.clone())),
            "spec.issuerRef.group `aaaa",
        ),
        (
            "an issuer's CA secretName",
            IssuerConfig {
                ca: Some(CaIssuer {
                    secret_name: huge.clone(),
                }),
                self_signed: None,
            }
            .validate()
            .unwrap_err(),
            "spec.ca.secretName `aaaa",
        ),
        (
            "a trust domain",
            huge.parse::<TrustDomain>().unwrap_err().to_string(),
            "trust domain `aaaa",
        ),
        (
            "an identity domain",
            format!("root.{huge}")
                .parse::<IdentityDomain>()
                .unwrap_err()
                .to_string(),
            "identity domain `root.aaaa",
        ),
        (
            "an identity in another domain",
            Identity::parse(&huge, &linkerd).unwrap_err().to_string(),
            "identity `aaaa",
        ),
        (
            "a namespace label",
            Identity::new("web", &huge, linkerd.clone())
                .unwrap_err()
                .to_string(),
            "namespace `aaaa",
        ),
    ];
    for (name, message, needle) in cases {
        assert!(
            message.len() < 1024,
            "{name}: the message is {} bytes",
            message.len()
        );
        assert!(
            message.contains(needle),
            "{name}: `{needle}` not in `{message}`"
        );
        assert!(
            message.contains(" bytes)"),
            "{name}: the message says how long the value was: {message}"
        );
    }
}
