//! X.509 as a Lanyard workload sees it: reading certificates from DER and
//! PEM, verifying a chain to the trust anchors at a given instant, and the
//! workload's own key with the CSR that asks for its certificate.
//!
//! This is the part of the PKI both sides need. The CA (`lanyard-issuer`)
//! builds on it to sign; the pod's agent (`lanyard-proxy`) uses it alone,
//! so the proxy carries no CA code: no certificate builder, no RSA. Nothing
//! here reads the clock; every check takes `now`.

#![forbid(unsafe_code)]

mod cert;
mod chain;
mod key;
mod time;

pub use cert::{CaConstraints, Certificate, CertificateProfile, describe_public_key, hex_colon};
pub use chain::{ChainError, verify_chain};
pub use key::{WorkloadKey, certified_key};
pub use time::{ClockTime, renewal_time};

/// What can go wrong reading a certificate or making a workload key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate could not be read.
    #[error("{what}: not a usable certificate: {reason}")]
    BadCertificate {
        /// The source (file, role).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The workload key could not be made or used.
    #[error("{what}: not a usable private key: {reason}")]
    BadKey {
        /// What the key was for.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Key generation failed.
    #[error("could not generate a {algorithm} key: {reason}")]
    KeyGeneration {
        /// The algorithm.
        algorithm: &'static str,
        /// Why.
        reason: String,
    },
    /// A CSR could not be built or signed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Friendly names for the curves people meet, so errors say `P-521` rather
/// than an OID.
pub fn curve_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        "1.2.840.10045.3.1.1" => "P-192".into(),
        "1.3.132.0.33" => "P-224".into(),
        other => format!("with OID {other}"),
    }
}
