//! Generated fixtures shared by the identity service tests.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::identity::IdentityDomain;
use lanyard_issuer::{IdentityIssuer, KeyAlgorithm, SigningKey, TrustAnchor};

/// A Linkerd-shaped anchor (ten years) and identity issuer (a year), both
/// starting at `at`.
pub fn linkerd_ca(at: DateTime<Utc>) -> (TrustAnchor, IdentityIssuer) {
    let domain = IdentityDomain::linkerd_default();
    let anchor = TrustAnchor::generate(
        &domain,
        TimeDelta::hours(87_600),
        KeyAlgorithm::EcdsaP256,
        at,
    )
    .unwrap();
    let (issuer, _) = anchor
        .issue_identity_issuer(
            &domain,
            TimeDelta::hours(8_760),
            KeyAlgorithm::EcdsaP256,
            at,
        )
        .unwrap();
    (anchor, issuer)
}

/// Writes an issuer Secret's files (`tls.crt`, `tls.key`, `ca.crt`) into
/// `dir`, with `key` in place of the issuer's own when given.
pub fn write_issuer_files(
    dir: &Path,
    anchor: &TrustAnchor,
    issuer: &IdentityIssuer,
    key: Option<&SigningKey>,
) {
    std::fs::write(dir.join("tls.crt"), issuer.certificate().to_pem()).unwrap();
    let key = key.unwrap_or(issuer.key());
    std::fs::write(dir.join("tls.key"), key.to_pkcs8_pem().as_bytes()).unwrap();
    std::fs::write(dir.join("ca.crt"), anchor.certificate().to_pem()).unwrap();
}
