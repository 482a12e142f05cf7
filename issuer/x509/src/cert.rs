//! Certificates as Lanyard reasons about them: the DER, plus the few facts
//! every decision needs (names, validity, CA flags, public key), read once.

use chrono::{DateTime, Utc};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::Error;

/// A parsed X.509 certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    subject: String,
    common_name: Option<String>,
    issuer: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    ca: Option<CaConstraints>,
    public_key_raw: Vec<u8>,
}

/// The basicConstraints of a CA certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaConstraints {
    /// The pathLenConstraint, if any.
    pub path_len: Option<u32>,
    /// Whether keyUsage allows signing certificates (absent keyUsage allows it).
    pub may_sign_certificates: bool,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses one DER certificate; `what` names its source in errors.
    pub fn from_der(der: &[u8], what: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadCertificate {
            what: what.to_string(),
            reason,
        };
        let (rest, x509) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the certificate", rest.len())));
        }
        let ca = match x509.basic_constraints().map_err(|e| bad(e.to_string()))? {
            Some(bc) if bc.value.ca => {
                let may_sign_certificates =
                    match x509.key_usage().map_err(|e| bad(e.to_string()))? {
                        Some(ku) => ku.value.key_cert_sign(),
                        None => true,
                    };
                Some(CaConstraints {
                    path_len: bc.value.path_len_constraint,
                    may_sign_certificates,
                })
            }
            _ => None,
        };
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(Certificate {
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            subject_raw: x509.subject().as_raw().to_vec(),
            issuer_raw: x509.issuer().as_raw().to_vec(),
            not_before: asn1_to_chrono(x509.validity().not_before),
            not_after: asn1_to_chrono(x509.validity().not_after),
            ca,
            common_name,
            public_key_raw: x509.public_key().subject_public_key.data.to_vec(),
            der: der.to_vec(),
        })
    }

    /// Parses every `CERTIFICATE` block of a PEM file, in order. Other
    /// blocks (a key pasted in the same file) are refused, so a private key
    /// is never treated as public material.
    pub fn parse_pem_bundle(pem_text: &[u8], what: &str) -> Result<Vec<Self>, Error> {
        let blocks = pem::parse_many(pem_text).map_err(|e| Error::BadCertificate {
            what: what.to_string(),
            reason: format!("not PEM: {e}"),
        })?;
        if blocks.is_empty() {
            return Err(Error::BadCertificate {
                what: what.to_string(),
                reason: "no PEM `CERTIFICATE` block found".into(),
            });
        }
        // A block begun and never ended (a file cut short mid-write) is
        // skipped by the PEM parser; it must fail the file instead, so a
        // half-read bundle is never trusted in part.
        let begun = pem_text
            .windows(b"-----BEGIN ".len())
            .filter(|w| *w == b"-----BEGIN ")
            .count();
        if begun > blocks.len() {
            return Err(Error::BadCertificate {
                what: what.to_string(),
                reason: format!(
                    "{} PEM block(s) begin but do not end: the file is cut short",
                    begun - blocks.len()
                ),
            });
        }
        blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let what = if blocks.len() > 1 {
                    format!("{what} (certificate {})", i + 1)
                } else {
                    what.to_string()
                };
                if block.tag() != "CERTIFICATE" {
                    return Err(Error::BadCertificate {
                        what,
                        reason: format!(
                            "holds a `{}` block where a certificate was expected",
                            block.tag()
                        ),
                    });
                }
                Certificate::from_der(block.contents(), &what)
            })
            .collect()
    }

    /// PEM text of this certificate.
    pub fn to_pem(&self) -> String {
        Self::pem_from_der(&self.der)
    }

    /// A `CERTIFICATE` PEM block for `der`, as [`Certificate::to_pem`]
    /// writes it, without parsing the certificate: for one just signed.
    pub fn pem_from_der(der: &[u8]) -> String {
        pem::encode_config(
            &pem::Pem::new("CERTIFICATE", der),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The subject, RFC 4514 style (`CN=identity.linkerd.cluster.local`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject's common name, if it has one.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The issuer's name, RFC 4514 style.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Start of validity.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The CA constraints, or `None` for an end-entity certificate.
    pub fn ca(&self) -> Option<CaConstraints> {
        self.ca
    }

    /// Whether the certificate is valid at `now` (both ends inclusive, as
    /// RFC 5280 says).
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// The raw subjectPublicKey bits.
    pub fn public_key_raw(&self) -> &[u8] {
        &self.public_key_raw
    }

    /// Whether the subject and issuer names are the same (a root).
    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// Whether `issuer`'s subject is this certificate's issuer name and its
    /// key made this certificate's signature.
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        self.issuer_raw == issuer.subject_raw && self.signature_verifies_with(issuer)
    }

    /// Whether `issuer`'s key made this certificate's signature, names aside.
    fn signature_verifies_with(&self, issuer: &Certificate) -> bool {
        let (Ok((_, me)), Ok((_, them))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&issuer.der),
        ) else {
            return false;
        };
        me.verify_signature(Some(them.public_key())).is_ok()
    }

    /// The SHA-256 fingerprint of the DER, as colon-separated hex.
    pub fn sha256_fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.der);
        hex_colon(digest.as_ref())
    }

    /// The SANs and usages the certificate carries, in the vocabulary of
    /// a `Certificate` spec, for comparing what was issued with what is
    /// asked for now. Usages are canonical, sorted and deduplicated.
    pub fn profile(&self) -> CertificateProfile {
        use lanyard_crds::usage::KeyUsage as U;
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let mut profile = CertificateProfile::default();
        let x509 = self.x509();
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(dns) => profile.dns_names.push(dns.to_string()),
                            GeneralName::URI(uri) => profile.uris.push(uri.to_string()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::KeyUsage(ku) => {
                    for (set, usage) in [
                        (ku.digital_signature(), U::DigitalSignature),
                        (ku.non_repudiation(), U::ContentCommitment),
                        (ku.key_encipherment(), U::KeyEncipherment),
                        (ku.data_encipherment(), U::DataEncipherment),
                        (ku.key_agreement(), U::KeyAgreement),
                        (ku.key_cert_sign(), U::CertSign),
                        (ku.crl_sign(), U::CrlSign),
                        (ku.encipher_only(), U::EncipherOnly),
                        (ku.decipher_only(), U::DecipherOnly),
                    ] {
                        if set {
                            profile.usages.push(usage);
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    for (set, usage) in [
                        (eku.any, U::Any),
                        (eku.server_auth, U::ServerAuth),
                        (eku.client_auth, U::ClientAuth),
                        (eku.code_signing, U::CodeSigning),
                        (eku.email_protection, U::EmailProtection),
                        (eku.time_stamping, U::Timestamping),
                        (eku.ocsp_signing, U::OcspSigning),
                    ] {
                        if set {
                            profile.usages.push(usage);
                        }
                    }
                    for oid in &eku.other {
                        match oid.to_id_string().as_str() {
                            "1.3.6.1.5.5.7.3.5" => profile.usages.push(U::IpsecEndSystem),
                            "1.3.6.1.5.5.7.3.6" => profile.usages.push(U::IpsecTunnel),
                            "1.3.6.1.5.5.7.3.7" => profile.usages.push(U::IpsecUser),
                            "1.3.6.1.4.1.311.10.3.3" => profile.usages.push(U::MicrosoftSgc),
                            "2.16.840.1.113730.4.1" => profile.usages.push(U::NetscapeSgc),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        profile.usages.sort();
        profile.usages.dedup();
        profile
    }

    /// The parsed certificate, for the details kept out of this struct
    /// (extensions, serial, key parameters), read again from the DER.
    pub fn x509(&self) -> X509Certificate<'_> {
        X509Certificate::from_der(&self.der)
            .map(|(_, c)| c)
            .expect("the DER parsed when this Certificate was made")
    }
}

/// Describes a public key the way people name it: `ECDSA P-256`, `RSA 2048`.
pub fn describe_public_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    let oid = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|c| crate::curve_name(&c.to_id_string()))
                .unwrap_or_else(|| "with unnamed curve".into());
            format!("ECDSA {curve}")
        }
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        _ if oid == "1.3.101.112" => "Ed25519".into(),
        _ if oid == "1.3.101.113" => "Ed448".into(),
        _ if oid == "1.2.840.10040.4.1" => "DSA".into(),
        _ => format!("key algorithm {oid}"),
    }
}

/// Bytes as colon-separated upper-case hex, as `openssl x509 -fingerprint`
/// prints them.
pub fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(crate) fn asn1_to_chrono(t: x509_parser::time::ASN1Time) -> DateTime<Utc> {
    let odt = t.to_datetime();
    DateTime::from_timestamp(odt.unix_timestamp(), odt.nanosecond())
        .expect("an X.509 time is within chrono's range")
}

/// What a certificate was issued for: its SANs and usages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateProfile {
    /// DNS SANs, in certificate order.
    pub dns_names: Vec<String>,
    /// URI SANs, in certificate order.
    pub uris: Vec<String>,
    /// Key usages and extended key usages, canonical and sorted.
    pub usages: Vec<lanyard_crds::usage::KeyUsage>,
}
