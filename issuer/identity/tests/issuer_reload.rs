//! The issuer is reloaded from its Secret's files: valid material is
//! swapped in, a key that does not match is refused and the old issuer
//! keeps serving.

mod common;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use lanyard_crds::identity::IdentityDomain;
use lanyard_identity::reload::{IssuerReloader, Reload};
use lanyard_issuer::{KeyAlgorithm, SigningKey, TrustAnchor};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// A new issuer from `anchor` written as the Secret's files; returns its
/// fingerprint.
fn write_issuer(dir: &Path, anchor: &TrustAnchor, key_override: Option<&SigningKey>) -> String {
    let domain = IdentityDomain::linkerd_default();
    let (issuer, _) = anchor
        .issue_identity_issuer(
            &domain,
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            t0(),
        )
        .unwrap();
    common::write_issuer_files(dir, anchor, &issuer, key_override);
    issuer.certificate().sha256_fingerprint()
}

#[test]
fn valid_material_is_swapped_in_and_bad_material_is_refused_while_the_old_issuer_serves() {
    let dir = tempfile::tempdir().unwrap();
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        t0(),
    )
    .unwrap();
    let current = Arc::new(ArcSwapOption::empty());
    let mut reloader = IssuerReloader::new(dir.path(), current.clone());
    let now = t0() + TimeDelta::minutes(1);

    assert!(
        matches!(reloader.poll(now), Reload::Waiting),
        "no files yet is a wait for the first issuer, not a refusal"
    );
    assert!(current.load().is_none());

    let first = write_issuer(dir.path(), &anchor, None);
    assert!(matches!(reloader.poll(now), Reload::Loaded));
    assert!(matches!(reloader.poll(now), Reload::Unchanged));
    let loaded = |c: &ArcSwapOption<lanyard_issuer::IdentityIssuer>| {
        c.load_full().unwrap().certificate().sha256_fingerprint()
    };
    assert_eq!(loaded(&current), first);

    let second = write_issuer(dir.path(), &anchor, None);
    assert!(matches!(reloader.poll(now), Reload::Loaded));
    assert_eq!(loaded(&current), second, "the new issuer is swapped in");

    let stranger = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    write_issuer(dir.path(), &anchor, Some(&stranger));
    match reloader.poll(now) {
        Reload::Refused(error) => {
            assert!(error.to_string().contains("key does not match"), "{error}")
        }
        other => panic!("a mismatched key must be refused, got {other:?}"),
    }
    assert_eq!(loaded(&current), second, "the old issuer keeps serving");
    assert!(
        matches!(reloader.poll(now), Reload::Unchanged),
        "refused once, not on every poll"
    );

    let other_anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        t0(),
    )
    .unwrap();
    let third = write_issuer(dir.path(), &other_anchor, None);
    assert!(
        matches!(reloader.poll(now), Reload::Loaded),
        "a fixed Secret is taken"
    );
    assert_eq!(loaded(&current), third);
}

#[test]
fn an_empty_key_is_refused_as_missing_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        t0(),
    )
    .unwrap();
    let current = Arc::new(ArcSwapOption::empty());
    let mut reloader = IssuerReloader::new(dir.path(), current.clone());
    write_issuer(dir.path(), &anchor, None);
    std::fs::write(dir.path().join("tls.key"), "\n").unwrap();
    match reloader.poll(t0() + TimeDelta::minutes(1)) {
        Reload::Refused(error @ lanyard_issuer::Error::Missing { .. }) => {
            assert!(
                error.to_string().ends_with("tls.key is missing or empty"),
                "{error}"
            )
        }
        other => panic!("an empty key must be refused as missing, got {other:?}"),
    }
    assert!(current.load().is_none());
}
