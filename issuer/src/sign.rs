//! General-purpose signing for `Certificate` resources: any subject, SANs,
//! usages and CA flag, signed by a CA from a Secret or by the subject's own
//! key. The identity issuer's workload leaves keep their own, narrower path
//! in [`crate::IdentityIssuer`].

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::usage::KeyUsage;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};

use crate::ca::{
    Validity, check_ca, check_key_matches, check_lifetime, random_serial, validity_within,
};
use crate::key::SigningKey;
use crate::{Error, Role};
use lanyard_x509::Certificate;

/// What a certificate should say, as a `Certificate` resource asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateTemplate {
    /// Subject common name.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// Whether the certificate is a CA.
    pub is_ca: bool,
    /// Key usages and extended key usages.
    pub usages: Vec<KeyUsage>,
    /// Requested lifetime; cut short to the signing CA's end.
    pub lifetime: TimeDelta,
}

/// A freshly signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its validity, and whether it was clamped to the signer's.
    pub validity: Validity,
}

/// A CA loaded from a Secret: its certificate, any chain above it, and its
/// key, checked at load to be a CA whose key matches.
#[derive(Debug)]
pub struct SigningCa {
    /// The CA first, then the certificates above it.
    chain: Vec<Certificate>,
    signer: rcgen::Issuer<'static, SigningKey>,
}

impl SigningCa {
    /// Checks `chain[0]` is a CA valid at `now` and that `key` is its key.
    pub fn new(
        chain: Vec<Certificate>,
        key: SigningKey,
        now: DateTime<Utc>,
    ) -> Result<Self, Error> {
        let ca = chain.first().ok_or(Error::EmptyChain {
            role: Role::SigningCa,
        })?;
        check_ca(Role::SigningCa, ca, now)?;
        check_key_matches(Role::SigningCa, ca, &key)?;
        let signer =
            rcgen::Issuer::from_ca_cert_der(&rustls_pki_types::CertificateDer::from(ca.der()), key)
                .map_err(Error::signing)?;
        Ok(SigningCa { chain, signer })
    }

    /// The CA's certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.chain[0]
    }

    /// The CA and the certificates above it.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// Signs `subject_key`'s public key with `template`, valid from `now`
    /// and never beyond the CA's own end. A CA certificate signed by a CA
    /// with a path length gets one less.
    pub fn sign(
        &self,
        template: &CertificateTemplate,
        subject_key: &SigningKey,
        now: DateTime<Utc>,
    ) -> Result<SignedCertificate, Error> {
        check_lifetime("certificate", template.lifetime)?;
        let ca = self.certificate();
        check_ca(Role::SigningCa, ca, now)?;
        let path_len = match ca.ca().and_then(|c| c.path_len) {
            Some(0) if template.is_ca => {
                return Err(Error::PathLenTooShort {
                    role: Role::SigningCa,
                    subject: ca.subject().to_string(),
                });
            }
            Some(n) if template.is_ca => Some(n - 1),
            _ => None,
        };
        let validity = validity_within(now, TimeDelta::zero(), template.lifetime, ca.not_after());
        let mut params = params_for(template, path_len)?;
        params.not_before = chrono_to_offset(validity.not_before)?;
        params.not_after = chrono_to_offset(validity.not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(subject_key, &self.signer)
            .map_err(Error::signing)?;
        Ok(SignedCertificate {
            der: cert.der().to_vec(),
            validity,
        })
    }
}

/// Signs `template` with `key` itself: a self-signed certificate, as
/// cert-manager's `selfSigned` issuer makes.
pub fn self_signed(
    template: &CertificateTemplate,
    key: &SigningKey,
    now: DateTime<Utc>,
) -> Result<SignedCertificate, Error> {
    check_lifetime("certificate", template.lifetime)?;
    let validity = validity_within(
        now,
        TimeDelta::zero(),
        template.lifetime,
        DateTime::<Utc>::MAX_UTC,
    );
    let mut params = params_for(template, None)?;
    params.not_before = chrono_to_offset(validity.not_before)?;
    params.not_after = chrono_to_offset(validity.not_after)?;
    let cert = params.self_signed(key).map_err(Error::signing)?;
    Ok(SignedCertificate {
        der: cert.der().to_vec(),
        validity,
    })
}

fn params_for(
    template: &CertificateTemplate,
    path_len: Option<u32>,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = template.common_name.as_deref().filter(|cn| !cn.is_empty()) {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    for name in &template.dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into().map_err(
                |_| Error::BadTemplate {
                    reason: format!("DNS name `{name}` cannot be encoded"),
                },
            )?));
    }
    for uri in &template.uris {
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into().map_err(|_| {
                Error::BadTemplate {
                    reason: format!("URI `{uri}` cannot be encoded"),
                }
            })?));
    }
    params.is_ca = if template.is_ca {
        IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(u8::try_from(n).unwrap_or(u8::MAX)),
            None => BasicConstraints::Unconstrained,
        })
    } else {
        IsCa::ExplicitNoCa
    };
    let mut custom_ekus = Vec::new();
    for usage in &template.usages {
        match usage.canonical() {
            KeyUsage::DigitalSignature => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
            KeyUsage::ContentCommitment => {
                params.key_usages.push(KeyUsagePurpose::ContentCommitment)
            }
            KeyUsage::KeyEncipherment => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            KeyUsage::KeyAgreement => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
            KeyUsage::DataEncipherment => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
            KeyUsage::CertSign => params.key_usages.push(KeyUsagePurpose::KeyCertSign),
            KeyUsage::CrlSign => params.key_usages.push(KeyUsagePurpose::CrlSign),
            KeyUsage::EncipherOnly => params.key_usages.push(KeyUsagePurpose::EncipherOnly),
            KeyUsage::DecipherOnly => params.key_usages.push(KeyUsagePurpose::DecipherOnly),
            KeyUsage::Any => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::Any),
            KeyUsage::ServerAuth => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth),
            KeyUsage::ClientAuth => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth),
            KeyUsage::CodeSigning => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::CodeSigning),
            KeyUsage::EmailProtection => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::EmailProtection),
            KeyUsage::Timestamping => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::TimeStamping),
            KeyUsage::OcspSigning => params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::OcspSigning),
            KeyUsage::IpsecEndSystem => custom_ekus.push(&[1u64, 3, 6, 1, 5, 5, 7, 3, 5][..]),
            KeyUsage::IpsecTunnel => custom_ekus.push(&[1, 3, 6, 1, 5, 5, 7, 3, 6][..]),
            KeyUsage::IpsecUser => custom_ekus.push(&[1, 3, 6, 1, 5, 5, 7, 3, 7][..]),
            KeyUsage::MicrosoftSgc => custom_ekus.push(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3][..]),
            KeyUsage::NetscapeSgc => custom_ekus.push(&[2, 16, 840, 1, 113730, 4, 1][..]),
            other => {
                return Err(Error::BadTemplate {
                    reason: format!("usage `{other}` cannot be encoded"),
                });
            }
        }
    }
    for oid in custom_ekus {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::Other(oid.to_vec()));
    }
    Ok(params)
}

/// A time as rcgen writes it into a certificate.
pub(crate) fn chrono_to_offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|_| Error::TimeOutOfRange {
        time: t.to_rfc3339(),
    })
}
