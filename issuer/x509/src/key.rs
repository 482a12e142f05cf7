//! The workload's own key: ECDSA P-256, made in the process that uses it
//! (as Linkerd's proxy does), with the CSR that asks the identity service
//! to certify it. The key never leaves the process except where a file is
//! the interface (`--agent-only`), and its `Debug` holds no key material.

use std::fmt;

use lanyard_crds::identity::Identity;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use x509_cert::der::asn1::{BitString, Ia5String, SetOfVec, Utf8StringRef};
use x509_cert::der::{Any, Encode};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::Error;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");

const ALGORITHM: &str = "ecdsa-p256";

/// An ECDSA P-256 private key made for one workload.
pub struct WorkloadKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: EcdsaKeyPair,
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &ALGORITHM)
            .finish_non_exhaustive()
    }
}

impl WorkloadKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let failed = |reason: String| Error::KeyGeneration {
            algorithm: ALGORITHM,
            reason,
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| failed(e.to_string()))?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(|e| failed(e.to_string()))?;
        Ok(WorkloadKey { pkcs8, pair })
    }

    /// The PKCS#8 `PRIVATE KEY` PEM, in a buffer wiped when dropped. Only for
    /// writing the key where a file is the interface.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", self.pkcs8.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ))
    }

    /// The raw public key (the subjectPublicKey bits of a
    /// SubjectPublicKeyInfo): an uncompressed P-256 point.
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Whether this key is the private half of `spki_raw`, the raw
    /// subjectPublicKey of a certificate.
    pub fn matches_public_key(&self, spki_raw: &[u8]) -> bool {
        self.public_key_raw() == spki_raw
    }

    /// A PKCS#10 request (DER) for `identity`, signed with this key: its DNS
    /// SAN and CN are the identity, its URI SAN the SPIFFE ID. What an agent
    /// sends to be certified; the key itself stays here.
    pub fn certificate_signing_request(&self, identity: &Identity) -> Result<Vec<u8>, Error> {
        let failed = |e: x509_cert::der::Error| Error::Signing(e.to_string());
        let common_name = x509_cert::attr::AttributeTypeAndValue {
            oid: OID_COMMON_NAME,
            value: Any::from(Utf8StringRef::new(identity.as_str()).map_err(failed)?),
        };
        let subject = RdnSequence(vec![RelativeDistinguishedName(
            SetOfVec::try_from(vec![common_name]).map_err(failed)?,
        )]);
        let names = SubjectAltName(vec![
            GeneralName::DnsName(Ia5String::new(identity.as_str()).map_err(failed)?),
            GeneralName::UniformResourceIdentifier(
                Ia5String::new(&identity.spiffe_id()).map_err(failed)?,
            ),
        ]);
        let extension = x509_cert::ext::Extension {
            extn_id: OID_SUBJECT_ALT_NAME,
            critical: false,
            extn_value: x509_cert::der::asn1::OctetString::new(names.to_der().map_err(failed)?)
                .map_err(failed)?,
        };
        let attributes = SetOfVec::try_from(vec![
            x509_cert::attr::Attribute::try_from(ExtensionReq(vec![extension])).map_err(failed)?,
        ])
        .map_err(failed)?;
        let info = CertReqInfo {
            version: Version::V1,
            subject,
            public_key: SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: OID_EC_PUBLIC_KEY,
                    parameters: Some(Any::from(&OID_P256)),
                },
                subject_public_key: BitString::from_bytes(self.public_key_raw()).map_err(failed)?,
            },
            attributes,
        };
        let to_sign = info.to_der().map_err(failed)?;
        let signature = self
            .pair
            .sign(&SystemRandom::new(), &to_sign)
            .map_err(|e| Error::Signing(e.to_string()))?;
        CertReq {
            info,
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_ECDSA_WITH_SHA256,
                parameters: None,
            },
            signature: BitString::from_bytes(signature.as_ref()).map_err(failed)?,
        }
        .to_der()
        .map_err(failed)
    }

    /// A rustls certified key: `chain_der` (the leaf first) with this key,
    /// for a TLS server or client that presents it. The key is copied into
    /// rustls' signer, in this process.
    pub fn certified_key(
        &self,
        chain_der: Vec<Vec<u8>>,
    ) -> Result<rustls::sign::CertifiedKey, Error> {
        certified_key(&self.pkcs8, chain_der)
    }
}

/// A rustls certified key from a PKCS#8 private key and its chain (the
/// leaf first): what any key of Lanyard's presents in a handshake.
pub fn certified_key(
    pkcs8_der: &[u8],
    chain_der: Vec<Vec<u8>>,
) -> Result<rustls::sign::CertifiedKey, Error> {
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        pkcs8_der,
    ));
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| Error::BadKey {
            what: "TLS key".into(),
            reason: e.to_string(),
        })?;
    let chain = chain_der
        .into_iter()
        .map(rustls::pki_types::CertificateDer::from)
        .collect();
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::identity::IdentityDomain;
    use x509_parser::prelude::{FromDer, X509CertificationRequest};

    #[test]
    fn the_csr_names_the_identity_and_verifies_with_the_key_it_carries() {
        let identity =
            Identity::new("web", "emojivoto", IdentityDomain::linkerd_default()).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let der = key.certificate_signing_request(&identity).unwrap();
        let (rest, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(
            info.subject
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            identity.as_str()
        );
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let sans: Vec<String> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            sans,
            [
                format!("DNSName({identity})"),
                format!("URI({})", identity.spiffe_id())
            ]
        );
    }

    #[test]
    fn debug_holds_no_key_material() {
        let key = WorkloadKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "WorkloadKey { algorithm: \"ecdsa-p256\", .. }");
        assert!(
            key.to_pkcs8_pem()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
    }
}
