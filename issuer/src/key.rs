//! Private keys: generation, import from the PEM forms `openssl` and `step`
//! write, and export as PKCS#8.
//!
//! A [`SigningKey`] never prints its key bytes: its `Debug` names only the
//! algorithm, so a key can sit inside any struct that is logged.

use std::fmt;
use std::str::FromStr;

use pkcs8::der::asn1::{AnyRef, ObjectIdentifier};
use pkcs8::der::{Decode, Encode};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use zeroize::Zeroizing;

use lanyard_x509::curve_name;

use crate::Error;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Smallest RSA modulus Lanyard makes or accepts.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus Lanyard makes or accepts (ring's verification limit).
pub const MAX_RSA_BITS: usize = 8192;

/// The key algorithms a CA or a workload key may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: the default, as in Linkerd and `step`.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with PKCS#1 v1.5 SHA-256 signatures; `bits` is between
    /// [`MIN_RSA_BITS`] and [`MAX_RSA_BITS`].
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

impl KeyAlgorithm {
    /// The names the CLI accepts, for help texts.
    pub const NAMES: &'static str = "ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096";

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::EcdsaP256 => f.write_str("ecdsa-p256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ecdsa-p384"),
            KeyAlgorithm::Ed25519 => f.write_str("ed25519"),
            KeyAlgorithm::Rsa { bits } => write!(f, "rsa-{bits}"),
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let unknown = || Error::UnknownKeyAlgorithm {
            name: s.to_string(),
        };
        match s.to_ascii_lowercase().as_str() {
            "ecdsa-p256" | "ecdsa" | "p256" | "ec" => Ok(KeyAlgorithm::EcdsaP256),
            "ecdsa-p384" | "p384" => Ok(KeyAlgorithm::EcdsaP384),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            "rsa" => Ok(KeyAlgorithm::Rsa { bits: 2048 }),
            other => {
                let bits: usize = other
                    .strip_prefix("rsa-")
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(unknown)?;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(Error::WeakKey {
                        what: format!("key algorithm `{s}`"),
                        reason: format!(
                            "RSA keys must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {bits}"
                        ),
                    });
                }
                Ok(KeyAlgorithm::Rsa { bits })
            }
        }
    }
}

/// A private key that can sign certificates.
///
/// Generated in memory, or read from a PEM file. Its `Debug` output holds
/// no key material.
pub struct SigningKey {
    algorithm: KeyAlgorithm,
    pair: rcgen::KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, Error> {
        let pair = match algorithm {
            KeyAlgorithm::Rsa { bits } => {
                // ring signs with RSA but cannot generate RSA keys.
                let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).map_err(|e| {
                    Error::KeyGeneration {
                        algorithm,
                        reason: e.to_string(),
                    }
                })?;
                let der = rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&key).map_err(|e| {
                    Error::KeyGeneration {
                        algorithm,
                        reason: e.to_string(),
                    }
                })?;
                let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
            }
            _ => rcgen::KeyPair::generate_for(algorithm.signature_algorithm()),
        }
        .map_err(|e| Error::KeyGeneration {
            algorithm,
            reason: e.to_string(),
        })?;
        Ok(SigningKey { algorithm, pair })
    }

    /// Reads a private key from PEM: PKCS#8 `PRIVATE KEY` (what `openssl
    /// genpkey` and Lanyard write), SEC1 `EC PRIVATE KEY` (what `step` and
    /// `openssl ecparam -genkey` write, with or without an `EC PARAMETERS`
    /// block) or PKCS#1 `RSA PRIVATE KEY`.
    ///
    /// `what` names the source (a file path) in errors.
    pub fn from_pem(pem_text: &[u8], what: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadKey {
            what: what.to_string(),
            reason,
        };
        let blocks = pem::parse_many(pem_text).map_err(|e| bad(format!("not PEM: {e}")))?;
        let mut keys = blocks.iter().filter(|b| b.tag() != "EC PARAMETERS");
        let block = keys
            .next()
            .ok_or_else(|| bad("no PEM block holding a private key".into()))?;
        if keys.next().is_some() {
            return Err(bad("more than one private key in the file".into()));
        }
        // Legacy OpenSSL encryption (`Proc-Type: 4,ENCRYPTED`), as `step`
        // and `openssl ec -aes256` write it, keeps the SEC1/PKCS#1 label.
        let legacy_encrypted = block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"));
        if legacy_encrypted {
            return Err(Error::EncryptedKey {
                what: what.to_string(),
            });
        }
        let pkcs8: Zeroizing<Vec<u8>> = match block.tag() {
            "PRIVATE KEY" => Zeroizing::new(block.contents().to_vec()),
            "EC PRIVATE KEY" => sec1_to_pkcs8(block.contents()).map_err(bad)?,
            "RSA PRIVATE KEY" => wrap_pkcs8(OID_RSA_ENCRYPTION, None, block.contents())
                .map_err(|e| bad(format!("cannot wrap the PKCS#1 key: {e}")))?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::EncryptedKey {
                    what: what.to_string(),
                });
            }
            other if other.contains("CERTIFICATE") => {
                return Err(bad(format!(
                    "holds a `{other}` block, not a private key (are the certificate and key swapped?)"
                )));
            }
            other => return Err(bad(format!("unsupported PEM block `{other}`"))),
        };
        Self::from_pkcs8_der(&pkcs8, what)
    }

    /// Reads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8], what: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadKey {
            what: what.to_string(),
            reason,
        };
        let info = pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|e| bad(format!("not a PKCS#8 private key: {e}")))?;
        let oid = info.algorithm.oid;
        let algorithm = if oid == OID_EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| bad("EC key names no curve".into()))?;
            match curve {
                OID_P256 => KeyAlgorithm::EcdsaP256,
                OID_P384 => KeyAlgorithm::EcdsaP384,
                other => {
                    return Err(Error::UnsupportedKey {
                        what: what.to_string(),
                        algorithm: format!("EC curve {}", curve_name(&other.to_string())),
                    });
                }
            }
        } else if oid == OID_ED25519 {
            KeyAlgorithm::Ed25519
        } else if oid == OID_RSA_ENCRYPTION {
            let key = <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(der)
                .map_err(|e| bad(format!("bad RSA key: {e}")))?;
            let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(Error::WeakKey {
                    what: what.to_string(),
                    reason: format!(
                        "RSA key of {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
                    ),
                });
            }
            KeyAlgorithm::Rsa { bits }
        } else {
            return Err(Error::UnsupportedKey {
                what: what.to_string(),
                algorithm: format!("key algorithm {oid}"),
            });
        };
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
        let pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, algorithm.signature_algorithm())
                .map_err(|e| bad(format!("the {algorithm} key does not load: {e}")))?;
        Ok(SigningKey { algorithm, pair })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The PKCS#8 `PRIVATE KEY` PEM, in a buffer wiped when dropped. Only for
    /// writing the key where a file is the interface.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// A PKCS#10 request (DER) for `identity`, signed with this key: its DNS
    /// SAN and CN are the identity, its URI SAN the SPIFFE ID. What an agent
    /// sends to be certified; the key itself stays here.
    pub fn certificate_signing_request(
        &self,
        identity: &lanyard_crds::identity::Identity,
    ) -> Result<Vec<u8>, Error> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, identity.as_str());
        let sign_err = |e: rcgen::Error| Error::Signing(e.to_string());
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName(identity.as_str().try_into().map_err(sign_err)?),
            rcgen::SanType::URI(identity.spiffe_id().try_into().map_err(sign_err)?),
        ];
        let csr = params.serialize_request(&self.pair).map_err(sign_err)?;
        Ok(csr.der().to_vec())
    }

    /// A rustls certified key: `chain_der` (the leaf first) with this key,
    /// for a TLS server or client that presents it. The key is copied into
    /// rustls' signer, in this process; the copy used to build it is wiped.
    pub fn certified_key(
        &self,
        chain_der: Vec<Vec<u8>>,
    ) -> Result<rustls::sign::CertifiedKey, Error> {
        let pkcs8 = Zeroizing::new(self.pair.serialize_der());
        Ok(lanyard_x509::certified_key(&pkcs8, chain_der)?)
    }

    /// The raw public key (the subjectPublicKey bits of a SubjectPublicKeyInfo).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    /// Whether this key is the private half of `spki_raw`, the raw
    /// subjectPublicKey of a certificate.
    pub fn matches_public_key(&self, spki_raw: &[u8]) -> bool {
        self.public_key_raw() == spki_raw
    }
}

impl rcgen::PublicKeyData for SigningKey {
    fn der_bytes(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.pair.algorithm()
    }
}

impl rcgen::SigningKey for SigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.pair.sign(msg)
    }
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8, taking the curve from its
/// parameters, since ring reads only PKCS#8.
fn sec1_to_pkcs8(sec1_der: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let key = sec1::EcPrivateKey::from_der(sec1_der)
        .map_err(|e| format!("not a SEC1 EC private key: {e}"))?;
    let curve = key
        .parameters
        .and_then(|p| p.named_curve())
        .ok_or_else(|| "the EC key names no curve".to_string())?;
    if key.public_key.is_none() {
        return Err("the EC key does not carry its public key".into());
    }
    wrap_pkcs8(OID_EC_PUBLIC_KEY, Some(curve), sec1_der)
        .map_err(|e| format!("cannot wrap the SEC1 key: {e}"))
}

fn wrap_pkcs8(
    algorithm: ObjectIdentifier,
    curve: Option<ObjectIdentifier>,
    private_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>, pkcs8::der::Error> {
    let parameters = match &curve {
        Some(curve) => Some(AnyRef::from(curve)),
        None => Some(AnyRef::NULL),
    };
    let info = pkcs8::PrivateKeyInfo::new(
        pkcs8::AlgorithmIdentifierRef {
            oid: algorithm,
            parameters,
        },
        private_key,
    );
    Ok(Zeroizing::new(info.to_der()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_key_material() {
        let key = SigningKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let debug = format!("{key:?}");
        assert_eq!(debug, "SigningKey { algorithm: EcdsaP256, .. }");
        let pem = key.to_pkcs8_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body[..16]));
    }

    #[test]
    fn a_generated_key_round_trips_through_pkcs8_pem() {
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
        ] {
            let key = SigningKey::generate(algorithm).unwrap();
            let back = SigningKey::from_pem(key.to_pkcs8_pem().as_bytes(), "test").unwrap();
            assert_eq!(back.algorithm(), algorithm);
            assert!(back.matches_public_key(key.public_key_raw()));
        }
    }

    #[test]
    fn key_algorithm_names_parse_and_print() {
        let cases = [
            ("ecdsa-p256", KeyAlgorithm::EcdsaP256),
            ("ECDSA-P384", KeyAlgorithm::EcdsaP384),
            ("ed25519", KeyAlgorithm::Ed25519),
            ("rsa", KeyAlgorithm::Rsa { bits: 2048 }),
            ("rsa-4096", KeyAlgorithm::Rsa { bits: 4096 }),
        ];
        for (name, want) in cases {
            assert_eq!(name.parse::<KeyAlgorithm>().unwrap(), want, "{name}");
        }
        assert_eq!(KeyAlgorithm::Rsa { bits: 3072 }.to_string(), "rsa-3072");
    }

    #[test]
    fn refuses_rsa_keys_below_2048_bits_and_unknown_names() {
        assert!(matches!(
            "rsa-1024".parse::<KeyAlgorithm>(),
            Err(Error::WeakKey { .. })
        ));
        assert!(matches!(
            "dsa".parse::<KeyAlgorithm>(),
            Err(Error::UnknownKeyAlgorithm { .. })
        ));
    }

    #[test]
    fn refuses_garbage_an_encrypted_key_and_a_certificate_in_the_key_file() {
        assert!(matches!(
            SigningKey::from_pem(b"garbage", "k"),
            Err(Error::BadKey { .. })
        ));
        let encrypted = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", vec![1, 2, 3]));
        assert!(matches!(
            SigningKey::from_pem(encrypted.as_bytes(), "k"),
            Err(Error::EncryptedKey { .. })
        ));
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAQID\n\
                      -----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKey::from_pem(legacy.as_bytes(), "k"),
            Err(Error::EncryptedKey { .. })
        ));
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3]));
        let err = SigningKey::from_pem(cert.as_bytes(), "k").unwrap_err();
        assert!(err.to_string().contains("swapped"), "{err}");
    }
}
