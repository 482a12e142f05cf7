//! Chain verification: does this certificate lead, through the given
//! intermediates, to one of the trust anchors at `now`?
//!
//! This is the check `openssl verify -CAfile anchors -untrusted chain` makes,
//! for CA and end-entity certificates alike (rustls' verifier refuses a CA as
//! an end entity, and Lanyard must verify its issuers too). Names must match
//! byte for byte, as webpki requires, so a chain that passes here also passes
//! in the mesh's rustls peers.

use chrono::{DateTime, Utc};

use crate::cert::Certificate;

/// Longest path (end entity to anchor) considered.
const MAX_PATH: usize = 8;

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate on the path expired.
    #[error("`{subject}` expired at {not_after}")]
    Expired {
        /// Subject of the expired certificate.
        subject: String,
        /// When it expired.
        not_after: DateTime<Utc>,
    },
    /// A certificate on the path is not valid yet.
    #[error("`{subject}` is not valid until {not_before}")]
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// When it becomes valid.
        not_before: DateTime<Utc>,
    },
    /// Nothing given signs this certificate.
    #[error("no trust anchor or intermediate signs `{subject}` (its issuer is `{issuer}`{hint})")]
    NoIssuer {
        /// Subject of the orphan.
        subject: String,
        /// The issuer name it claims.
        issuer: String,
        /// Extra detail, e.g. a same-named CA whose key did not sign it.
        hint: String,
    },
    /// The signer is not a CA, or its key usage forbids signing certificates.
    #[error("`{issuer}` signed `{subject}` but is not a CA allowed to sign certificates")]
    IssuerNotCa {
        /// The signed certificate.
        subject: String,
        /// The signer.
        issuer: String,
    },
    /// A CA's path length constraint is exceeded.
    #[error("`{ca}` allows {allowed} CA(s) below it, but the path has {found}")]
    PathLenExceeded {
        /// The constraining CA.
        ca: String,
        /// Its pathLenConstraint.
        allowed: u32,
        /// CAs below it on the path.
        found: usize,
    },
    /// No certificate was given to verify.
    #[error("no certificate was given to verify")]
    Empty,
    /// The path is longer than Lanyard follows.
    #[error("the chain from `{subject}` is longer than {MAX_PATH} certificates")]
    TooLong {
        /// The starting certificate.
        subject: String,
    },
}

/// Verifies `chain` (the certificate to check first, then intermediates in
/// any order) against `anchors` at `now`, returning the path from the
/// certificate to its anchor, both included.
///
/// A certificate that is itself one of the anchors verifies as a path of one.
pub fn verify_chain<'a>(
    chain: &'a [Certificate],
    anchors: &'a [Certificate],
    now: DateTime<Utc>,
) -> Result<Vec<&'a Certificate>, ChainError> {
    let Some(first) = chain.first() else {
        return Err(ChainError::Empty);
    };
    check_time(first, now)?;
    if anchors.iter().any(|a| a.der() == first.der()) {
        return Ok(vec![first]);
    }
    let mut path = vec![first];
    loop {
        if path.len() > MAX_PATH {
            return Err(ChainError::TooLong {
                subject: first.subject().to_string(),
            });
        }
        let current = *path.last().expect("the path starts with one certificate");
        let signer = anchors
            .iter()
            .map(|a| (a, true))
            .chain(
                chain[1..]
                    .iter()
                    .filter(|c| !path.iter().any(|p| p.der() == c.der()))
                    .map(|c| (c, false)),
            )
            .find(|(candidate, _)| current.is_signed_by(candidate));
        let Some((signer, is_anchor)) = signer else {
            let same_name = anchors
                .iter()
                .chain(chain[1..].iter())
                .any(|c| c.subject() == current.issuer());
            return Err(ChainError::NoIssuer {
                subject: current.subject().to_string(),
                issuer: current.issuer().to_string(),
                hint: if same_name {
                    "; a CA of that name is present but its key did not make the signature".into()
                } else {
                    String::new()
                },
            });
        };
        check_time(signer, now)?;
        let Some(constraints) = signer.ca().filter(|c| c.may_sign_certificates) else {
            return Err(ChainError::IssuerNotCa {
                subject: current.subject().to_string(),
                issuer: signer.subject().to_string(),
            });
        };
        // Intermediates between this signer and the target (RFC 5280: the
        // target itself never counts, even when it is a CA).
        let cas_below = path.len() - 1;
        if let Some(allowed) = constraints.path_len
            && cas_below > allowed as usize
        {
            return Err(ChainError::PathLenExceeded {
                ca: signer.subject().to_string(),
                allowed,
                found: cas_below,
            });
        }
        path.push(signer);
        if is_anchor {
            return Ok(path);
        }
    }
}

fn check_time(cert: &Certificate, now: DateTime<Utc>) -> Result<(), ChainError> {
    if now < cert.not_before() {
        return Err(ChainError::NotYetValid {
            subject: cert.subject().to_string(),
            not_before: cert.not_before(),
        });
    }
    if now > cert.not_after() {
        return Err(ChainError::Expired {
            subject: cert.subject().to_string(),
            not_after: cert.not_after(),
        });
    }
    Ok(())
}
