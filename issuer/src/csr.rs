//! The pure decision "may this CSR be signed for this identity?".
//!
//! Input comes from outside the process (a workload, `openssl req`, `step`),
//! so every path ends in a typed [`CsrError`], never a panic. The subject of
//! the CSR is ignored: Lanyard writes the leaf's names itself, from the
//! authenticated identity, and only refuses requests that ask for more.

use lanyard_crds::identity::Identity;
use rcgen::SignatureAlgorithm;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::key::{MAX_RSA_BITS, MIN_RSA_BITS};
use lanyard_x509::curve_name;

/// Why a certificate signing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The bytes are not a PKCS#10 request.
    #[error("the CSR is malformed: {reason}")]
    Malformed {
        /// What the parser found.
        reason: String,
    },
    /// The request's self-signature does not verify with its own key.
    #[error("the CSR's signature does not verify with the key it carries")]
    BadSignature,
    /// The request is signed with an algorithm Lanyard does not accept.
    #[error("the CSR is signed with {algorithm}, which is not accepted")]
    UnsupportedSignatureAlgorithm {
        /// The algorithm, by name or OID.
        algorithm: String,
    },
    /// The request names a subject alternative name other than the identity.
    #[error("the CSR requests SAN `{san}`, which is not the identity `{identity}`")]
    SanNotAllowed {
        /// The offending SAN, as `DNS:…`, `URI:…`, `IP:…`.
        san: String,
        /// The identity being certified.
        identity: String,
    },
    /// The request asks for a CA certificate.
    #[error("the CSR asks to be a CA ({how}); workload certificates are never CAs")]
    AsksToBeCa {
        /// Which extension asked.
        how: String,
    },
    /// The key is too weak.
    #[error("the CSR's key is too weak: {reason}")]
    WeakKey {
        /// Size found and the minimum.
        reason: String,
    },
    /// The key's algorithm or curve is not supported.
    #[error(
        "the CSR's key is not supported: {algorithm} (P-256, P-384, Ed25519 and RSA 2048-8192 are)"
    )]
    UnsupportedKey {
        /// The algorithm or curve found.
        algorithm: String,
    },
}

/// A CSR that passed every check: what is left of it is the public key to
/// certify. Only [`validate_csr`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    algorithm: &'static SignatureAlgorithm,
    public_key: Vec<u8>,
}

impl ValidatedCsr {
    pub(crate) fn from_parts(algorithm: &'static SignatureAlgorithm, public_key: Vec<u8>) -> Self {
        ValidatedCsr {
            algorithm,
            public_key,
        }
    }

    /// The raw subjectPublicKey bits that the leaf will certify.
    pub fn public_key_raw(&self) -> &[u8] {
        &self.public_key
    }
}

impl rcgen::PublicKeyData for ValidatedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Reads the DER out of a PEM `CERTIFICATE REQUEST` (or the older `NEW
/// CERTIFICATE REQUEST`) block.
pub fn csr_der_from_pem(pem_text: &[u8]) -> Result<Vec<u8>, CsrError> {
    let block = pem::parse(pem_text).map_err(|e| CsrError::Malformed {
        reason: format!("not PEM: {e}"),
    })?;
    match block.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(block.into_contents()),
        other => Err(CsrError::Malformed {
            reason: format!("expected a `CERTIFICATE REQUEST` PEM block, found `{other}`"),
        }),
    }
}

/// Decides whether `der` may be signed as a workload certificate for
/// `identity`, which the caller has already authenticated.
///
/// Checks, in order: the DER parses; the key is P-256, P-384, Ed25519, or RSA
/// of 2048 to 8192 bits; the signature algorithm is acceptable and the
/// signature verifies; the requested extensions ask for no CA powers and no
/// SAN other than the identity's DNS name and SPIFFE ID.
pub fn validate_csr(der: &[u8], identity: &Identity) -> Result<ValidatedCsr, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed {
            reason: format!("{} bytes after the request", rest.len()),
        });
    }
    let info = &csr.certification_request_info;
    let algorithm = classify_key(&info.subject_pki)?;

    let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
    if let Some(name) = refused_signature_algorithm(&sig_oid) {
        return Err(CsrError::UnsupportedSignatureAlgorithm {
            algorithm: name.to_string(),
        });
    }
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedSignatureAlgorithm {
            algorithm: signature_algorithm_name(&sig_oid),
        },
        _ => CsrError::BadSignature,
    })?;

    let spiffe_id = identity.spiffe_id();
    for attribute in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            match extension.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::AsksToBeCa {
                        how: "basicConstraints CA:TRUE".into(),
                    });
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(CsrError::AsksToBeCa {
                        how: "keyUsage keyCertSign or cRLSign".into(),
                    });
                }
                ParsedExtension::NameConstraints(_) => {
                    return Err(CsrError::AsksToBeCa {
                        how: "nameConstraints".into(),
                    });
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(dns) if *dns == identity.as_str() => {}
                            GeneralName::URI(uri) if *uri == spiffe_id => {}
                            other => {
                                return Err(CsrError::SanNotAllowed {
                                    san: describe_general_name(other),
                                    identity: identity.to_string(),
                                });
                            }
                        }
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(CsrError::Malformed {
                        reason: format!("requested extension {}: {error}", extension.oid),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(ValidatedCsr {
        algorithm,
        public_key: info.subject_pki.subject_public_key.data.to_vec(),
    })
}

fn classify_key(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<&'static SignatureAlgorithm, CsrError> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|c| c.to_id_string())
                .ok_or_else(|| CsrError::UnsupportedKey {
                    algorithm: "EC key without a named curve".into(),
                })?;
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
                "1.3.132.0.34" => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
                "1.2.840.10045.3.1.1" | "1.3.132.0.33" => Err(CsrError::WeakKey {
                    reason: format!("EC curve {} is below P-256", curve_name(&curve)),
                }),
                other => Err(CsrError::UnsupportedKey {
                    algorithm: format!("EC curve {}", curve_name(other)),
                }),
            }
        }
        "1.2.840.113549.1.1.1" => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                _ => {
                    return Err(CsrError::Malformed {
                        reason: "the RSA public key does not parse".into(),
                    });
                }
            };
            if bits < MIN_RSA_BITS {
                Err(CsrError::WeakKey {
                    reason: format!("RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"),
                })
            } else if bits > MAX_RSA_BITS {
                Err(CsrError::UnsupportedKey {
                    algorithm: format!("RSA key of {bits} bits (at most {MAX_RSA_BITS})"),
                })
            } else {
                Ok(&rcgen::PKCS_RSA_SHA256)
            }
        }
        "1.3.101.112" => Ok(&rcgen::PKCS_ED25519),
        "1.3.101.113" => Err(CsrError::UnsupportedKey {
            algorithm: "Ed448".into(),
        }),
        "1.2.840.10040.4.1" => Err(CsrError::UnsupportedKey {
            algorithm: "DSA".into(),
        }),
        other => Err(CsrError::UnsupportedKey {
            algorithm: format!("key algorithm {other}"),
        }),
    }
}

/// Signature algorithms that verify but are broken: SHA-1 and MD5.
fn refused_signature_algorithm(oid: &str) -> Option<&'static str> {
    match oid {
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => Some("sha1WithRSAEncryption (SHA-1 is broken)"),
        "1.2.840.113549.1.1.4" => Some("md5WithRSAEncryption (MD5 is broken)"),
        "1.2.840.10045.4.1" => Some("ecdsa-with-SHA1 (SHA-1 is broken)"),
        _ => None,
    }
}

fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256".into(),
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384".into(),
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512".into(),
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        other => format!("signature algorithm {other}"),
    }
}

pub(crate) fn describe_general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).expect("length checked"))
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).expect("length checked"))
            ),
            _ => "IP:(malformed)".into(),
        },
        GeneralName::DirectoryName(dn) => format!("DirName:{dn}"),
        other => format!("{other:?}"),
    }
}
