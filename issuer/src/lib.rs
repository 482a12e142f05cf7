//! Lanyard's certificate authority.
//!
//! A [`TrustAnchor`] (root CA) signs an [`IdentityIssuer`] (intermediate
//! CA), which signs 24-hour workload certificates for identities that the
//! caller has already authenticated. Every decision here is a function of its
//! inputs and an explicit `now`: nothing reads the clock, so tests sign at
//! any instant.
//!
//! Private keys ([`SigningKey`]) are generated in this process and never
//! printed; callers write them only through `lanyard-files`, atomically with
//! mode 0600.
//!
//! This is the pure PKI: no tokio, no tonic, no files. Reading certificates
//! and verifying chains is `lanyard-x509`'s, re-exported here; serving
//! `Certify` is `lanyard-identity`'s.

#![forbid(unsafe_code)]

mod ca;
mod csr;
mod inspect;
mod key;
mod sign;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

pub use ca::{
    DEFAULT_ANCHOR_LIFETIME, DEFAULT_ISSUER_LIFETIME, DEFAULT_LEAF_LIFETIME, IdentityIssuer,
    IssuedLeaf, LEAF_BACKDATE, TrustAnchor, Validity, validity_within,
};
pub use csr::{CsrError, ValidatedCsr, csr_der_from_pem, validate_csr};
pub use inspect::{CertificateReport, describe};
pub use key::{KeyAlgorithm, MAX_RSA_BITS, MIN_RSA_BITS, SigningKey};
pub use lanyard_x509::{
    CaConstraints, Certificate, CertificateProfile, ChainError, curve_name, verify_chain,
};
pub use sign::{CertificateTemplate, SignedCertificate, SigningCa, self_signed};

/// Which CA certificate an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The root of trust (`ca.crt`).
    TrustAnchor,
    /// The intermediate that signs workloads (`issuer.crt`).
    IdentityIssuer,
    /// The CA of a CA issuer (`tls.crt` of its Secret).
    SigningCa,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::TrustAnchor => "trust anchor",
            Role::IdentityIssuer => "identity issuer",
            Role::SigningCa => "signing CA",
        })
    }
}

/// Everything that can go wrong in the CA. Each variant names the file,
/// certificate or identity at fault.
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
    /// A private key could not be read.
    #[error("{what}: not a usable private key: {reason}")]
    BadKey {
        /// The source.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The key is encrypted; Lanyard reads only plaintext keys.
    #[error(
        "{what}: the private key is encrypted; Lanyard reads plaintext keys only (decrypt with `openssl pkey -in KEY -out PLAIN`, or make it with `step ... --no-password --insecure`)"
    )]
    EncryptedKey {
        /// The source.
        what: String,
    },
    /// The key's algorithm or curve is not supported.
    #[error("{what}: unsupported key: {algorithm} (P-256, P-384, Ed25519 and RSA are)")]
    UnsupportedKey {
        /// The source.
        what: String,
        /// What was found.
        algorithm: String,
    },
    /// The key is too weak.
    #[error("{what}: weak key: {reason}")]
    WeakKey {
        /// The source.
        what: String,
        /// Size found and the bounds.
        reason: String,
    },
    /// An unknown `--key-algorithm` name.
    #[error("unknown key algorithm `{name}`; use one of {}", KeyAlgorithm::NAMES)]
    UnknownKeyAlgorithm {
        /// The name given.
        name: String,
    },
    /// Key generation failed.
    #[error("could not generate a {algorithm} key: {reason}")]
    KeyGeneration {
        /// The algorithm.
        algorithm: KeyAlgorithm,
        /// Why.
        reason: String,
    },
    /// The private key is not the one the certificate certifies.
    #[error("the {role} key does not match its certificate `{subject}`")]
    KeyMismatch {
        /// Which certificate.
        role: Role,
        /// Its subject.
        subject: String,
    },
    /// A CA certificate is not a CA.
    #[error("the {role} `{subject}` is not a CA: {reason}")]
    NotCa {
        /// Which certificate.
        role: Role,
        /// Its subject.
        subject: String,
        /// What is missing.
        reason: String,
    },
    /// An anchor whose path length leaves no room for an issuer below it.
    #[error(
        "the {role} `{subject}` has pathlen:0, so it cannot sign an identity issuer (is this the issuer rather than the anchor?)"
    )]
    PathLenTooShort {
        /// Which certificate.
        role: Role,
        /// Its subject.
        subject: String,
    },
    /// A CA certificate has expired.
    #[error("the {role} `{subject}` expired at {not_after}")]
    Expired {
        /// Which certificate.
        role: Role,
        /// Its subject.
        subject: String,
        /// When.
        not_after: DateTime<Utc>,
    },
    /// A CA certificate is not valid yet.
    #[error("the {role} `{subject}` is not valid until {not_before}")]
    NotYetValid {
        /// Which certificate.
        role: Role,
        /// Its subject.
        subject: String,
        /// When it starts.
        not_before: DateTime<Utc>,
    },
    /// A CA given with no certificate.
    #[error("the {role} has no certificate")]
    EmptyChain {
        /// Which CA.
        role: Role,
    },
    /// A certificate template that cannot be encoded.
    #[error("cannot make the certificate: {reason}")]
    BadTemplate {
        /// What was wrong.
        reason: String,
    },
    /// A file or Secret key the material needs is absent or empty.
    #[error("{what} is missing or empty")]
    Missing {
        /// The file or Secret key.
        what: String,
    },
    /// The anchor file holds no certificate.
    #[error("no trust anchor was given")]
    NoTrustAnchor,
    /// The issuer file holds no certificate.
    #[error("no identity issuer certificate was given")]
    NoIssuerCertificate,
    /// The issuer does not chain to any anchor.
    #[error("the identity issuer `{issuer}` does not chain to a trust anchor: {reason}")]
    IssuerNotSignedByAnchor {
        /// The issuer's subject.
        issuer: String,
        /// Why the chain fails.
        reason: ChainError,
    },
    /// The issuer's validity reaches outside its anchor's.
    #[error(
        "the identity issuer `{issuer}` (valid {} to {}) is not within the validity of its trust anchor `{anchor}` ({} to {})",
        issuer_validity.0, issuer_validity.1, anchor_validity.0, anchor_validity.1
    )]
    IssuerOutsideAnchorValidity {
        /// The issuer's subject.
        issuer: String,
        /// notBefore, notAfter.
        issuer_validity: (DateTime<Utc>, DateTime<Utc>),
        /// The anchor's subject.
        anchor: String,
        /// notBefore, notAfter.
        anchor_validity: (DateTime<Utc>, DateTime<Utc>),
    },
    /// The issuer's common name is not an identity domain.
    #[error(
        "the identity issuer `{subject}` is not named for an identity domain (identity.<namespace>.<trust-domain>): {reason}"
    )]
    IssuerNameNotIdentityDomain {
        /// The issuer's subject.
        subject: String,
        /// Why the name does not parse.
        reason: String,
    },
    /// A leaf signed by the issuer did not verify.
    #[error("the identity issuer `{issuer}` failed its self-test: {reason}")]
    IssuerSelfTestFailed {
        /// The issuer's subject.
        issuer: String,
        /// What failed.
        reason: String,
    },
    /// The identity belongs to another identity domain.
    #[error("identity `{identity}` is not in the identity domain `{domain}`")]
    IdentityNotInDomain {
        /// The identity.
        identity: String,
        /// The issuer's domain.
        domain: String,
    },
    /// An identity name is malformed.
    #[error(transparent)]
    Identity(#[from] lanyard_crds::identity::IdentityError),
    /// A CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// A lifetime is zero or negative.
    #[error("the {what} lifetime {reason}")]
    BadLifetime {
        /// Which lifetime.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A time cannot be written into a certificate.
    #[error("time {time} cannot be written into a certificate")]
    TimeOutOfRange {
        /// The time.
        time: String,
    },
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// Building or signing a certificate failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A file exists and `--force` was not given.
    #[error("{} already exists; pass --force to replace it", path.display())]
    WouldOverwrite {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<lanyard_x509::Error> for Error {
    fn from(e: lanyard_x509::Error) -> Self {
        use lanyard_x509::Error as X;
        match e {
            X::BadCertificate { what, reason } => Error::BadCertificate { what, reason },
            X::BadKey { what, reason } => Error::BadKey { what, reason },
            X::KeyGeneration { reason, .. } => Error::KeyGeneration {
                algorithm: KeyAlgorithm::EcdsaP256,
                reason,
            },
            X::Signing(reason) => Error::Signing(reason),
            other => Error::Signing(other.to_string()),
        }
    }
}

impl Error {
    fn signing(e: rcgen::Error) -> Self {
        Error::Signing(e.to_string())
    }
}
