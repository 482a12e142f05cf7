//! The CA hierarchy: a trust anchor (root), the identity issuer it signs
//! (intermediate), and the 24-hour workload leaves the issuer signs.
//!
//! Names and profiles follow what `step certificate create --profile
//! root-ca / intermediate-ca` makes for a Linkerd install, so anchors and
//! issuers move freely between Lanyard, `step` and `openssl`.

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use lanyard_crds::identity::{Identity, IdentityDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

use crate::csr::{ValidatedCsr, validate_csr};
use crate::key::{KeyAlgorithm, SigningKey};
use crate::sign::chrono_to_offset;
use crate::{Error, Role};
use lanyard_x509::{Certificate, verify_chain};

/// Trust anchors live ten years unless told otherwise (`87600h`).
pub const DEFAULT_ANCHOR_LIFETIME: TimeDelta = TimeDelta::hours(87_600);
/// Identity issuers live a year unless told otherwise (`8760h`).
pub const DEFAULT_ISSUER_LIFETIME: TimeDelta = TimeDelta::hours(8_760);
/// Workload certificates live a day, as in Linkerd.
pub const DEFAULT_LEAF_LIFETIME: TimeDelta = TimeDelta::hours(24);
/// Leaves start this much before they are signed, so peers whose clocks lag
/// a little accept them at once.
pub const LEAF_BACKDATE: TimeDelta = TimeDelta::seconds(20);

/// A validity window and whether it was cut short to fit inside its
/// issuer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// `Some(requested end)` when the end was clamped to the issuer's.
    pub clamped_from: Option<DateTime<Utc>>,
}

/// The validity of a certificate signed at `now` for `lifetime`, never
/// outliving `issuer_not_after`. Pure: the whole clamping rule lives here.
/// Times are cut to whole seconds, as a certificate holds them.
pub fn validity_within(
    now: DateTime<Utc>,
    backdate: TimeDelta,
    lifetime: TimeDelta,
    issuer_not_after: DateTime<Utc>,
) -> Validity {
    let now = now.trunc_subsecs(0);
    let requested = now + lifetime;
    let not_after = requested.min(issuer_not_after);
    Validity {
        not_before: now - backdate,
        not_after,
        clamped_from: (not_after < requested).then_some(requested),
    }
}

/// A trust anchor (root CA) together with its private key.
#[derive(Debug)]
pub struct TrustAnchor {
    cert: Certificate,
    key: SigningKey,
}

impl TrustAnchor {
    /// Makes a self-signed anchor `root.<namespace>.<trust-domain>`:
    /// `CA:TRUE`, path length 1, key usage certSign + cRLSign.
    pub fn generate(
        domain: &IdentityDomain,
        lifetime: TimeDelta,
        algorithm: KeyAlgorithm,
        now: DateTime<Utc>,
    ) -> Result<Self, Error> {
        Self::generate_named(&domain.anchor_common_name(), lifetime, algorithm, now)
    }

    /// Makes a self-signed anchor named `common_name`, as [`generate`]
    /// does: the successor of an anchor in a rotation keeps its name.
    ///
    /// [`generate`]: TrustAnchor::generate
    pub fn generate_named(
        common_name: &str,
        lifetime: TimeDelta,
        algorithm: KeyAlgorithm,
        now: DateTime<Utc>,
    ) -> Result<Self, Error> {
        check_lifetime("trust anchor", lifetime)?;
        let key = SigningKey::generate(algorithm)?;
        let mut params = ca_params(common_name, 1)?;
        params.not_before = chrono_to_offset(now)?;
        params.not_after = chrono_to_offset(now + lifetime)?;
        let cert = params.self_signed(&key).map_err(Error::signing)?;
        let cert = Certificate::from_der(cert.der(), "generated trust anchor")?;
        Ok(TrustAnchor { cert, key })
    }

    /// Checks an imported anchor and its key: a CA, valid at `now`, and the
    /// key is the certificate's.
    pub fn new(cert: Certificate, key: SigningKey, now: DateTime<Utc>) -> Result<Self, Error> {
        check_ca(Role::TrustAnchor, &cert, now)?;
        check_key_matches(Role::TrustAnchor, &cert, &key)?;
        Ok(TrustAnchor { cert, key })
    }

    /// The anchor's certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The anchor's key, for writing it to `ca.key`.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs a new identity issuer `identity.<namespace>.<trust-domain>`:
    /// `CA:TRUE`, path length 0, never outliving this anchor (the result
    /// says when it was clamped).
    pub fn issue_identity_issuer(
        &self,
        domain: &IdentityDomain,
        lifetime: TimeDelta,
        algorithm: KeyAlgorithm,
        now: DateTime<Utc>,
    ) -> Result<(IdentityIssuer, Validity), Error> {
        check_lifetime("identity issuer", lifetime)?;
        check_ca(Role::TrustAnchor, &self.cert, now)?;
        if self.cert.ca().and_then(|c| c.path_len) == Some(0) {
            return Err(Error::PathLenTooShort {
                role: Role::TrustAnchor,
                subject: self.cert.subject().to_string(),
            });
        }
        let validity = validity_within(now, TimeDelta::zero(), lifetime, self.cert.not_after());
        let key = SigningKey::generate(algorithm)?;
        let mut params = ca_params(&domain.to_string(), 0)?;
        params.not_before = chrono_to_offset(validity.not_before)?;
        params.not_after = chrono_to_offset(validity.not_after)?;
        params.use_authority_key_identifier_extension = true;
        let signer = rcgen::Issuer::from_ca_cert_der(
            &rustls_pki_types::CertificateDer::from(self.cert.der()),
            &self.key,
        )
        .map_err(Error::signing)?;
        let cert = params.signed_by(&key, &signer).map_err(Error::signing)?;
        let cert = Certificate::from_der(cert.der(), "generated identity issuer")?;
        let issuer = IdentityIssuer::new(
            vec![self.cert.clone()],
            vec![cert],
            key,
            domain.clone(),
            now,
        )?;
        Ok((issuer, validity))
    }
}

/// The identity issuer: the intermediate CA that signs workload leaves,
/// with the anchors it chains to. Construction validates everything, so a
/// value of this type is always fit to sign at the time it was made.
#[derive(Debug)]
pub struct IdentityIssuer {
    domain: IdentityDomain,
    anchors: Vec<Certificate>,
    expired_anchors: Vec<Certificate>,
    /// The issuer first, then any intermediates above it (not the anchor).
    chain: Vec<Certificate>,
    signer: rcgen::Issuer<'static, SigningKey>,
}

impl IdentityIssuer {
    /// Validates and loads an identity issuer, as `linkerd install` takes
    /// it: the anchors (`ca.crt`, one or more), the issuer certificate
    /// optionally followed by intermediates (`issuer.crt`), and its key.
    ///
    /// Each failure is its own error: a certificate that is not a CA, a key
    /// that is not the certificate's, an expired or not-yet-valid anchor or
    /// issuer, an issuer that does not chain to any anchor, or one whose
    /// validity reaches outside its anchor's.
    pub fn new(
        anchors: Vec<Certificate>,
        chain: Vec<Certificate>,
        key: SigningKey,
        domain: IdentityDomain,
        now: DateTime<Utc>,
    ) -> Result<Self, Error> {
        if anchors.is_empty() {
            return Err(Error::NoTrustAnchor);
        }
        // An expired anchor beside live ones is what an anchor rotation
        // leaves behind in a `ca.crt`: it is skipped (and reported by
        // `expired_anchors`), not a reason to refuse the issuer. Only
        // when every anchor has expired is that an error.
        let (expired, anchors): (Vec<Certificate>, Vec<Certificate>) = anchors
            .into_iter()
            .partition(|a| a.not_after() <= now && a.ca().is_some());
        if anchors.is_empty() {
            let first = expired.first().expect("at least one anchor was given");
            check_ca(Role::TrustAnchor, first, now)?;
        }
        for anchor in &anchors {
            check_ca(Role::TrustAnchor, anchor, now)?;
        }
        let issuer = chain.first().ok_or(Error::NoIssuerCertificate)?;
        check_ca(Role::IdentityIssuer, issuer, now)?;
        check_key_matches(Role::IdentityIssuer, issuer, &key)?;
        let path = verify_chain(&chain, &anchors, now).map_err(|reason| {
            Error::IssuerNotSignedByAnchor {
                issuer: issuer.subject().to_string(),
                reason,
            }
        })?;
        let anchor = path.last().expect("a verified path ends at its anchor");
        if issuer.not_before() < anchor.not_before() || issuer.not_after() > anchor.not_after() {
            return Err(Error::IssuerOutsideAnchorValidity {
                issuer: issuer.subject().to_string(),
                issuer_validity: (issuer.not_before(), issuer.not_after()),
                anchor: anchor.subject().to_string(),
                anchor_validity: (anchor.not_before(), anchor.not_after()),
            });
        }
        // Keep only the certificates on the path, issuer first, anchor out.
        let chain: Vec<Certificate> = path[..path.len() - 1]
            .iter()
            .map(|c| (*c).clone())
            .collect();
        let signer = rcgen::Issuer::from_ca_cert_der(
            &rustls_pki_types::CertificateDer::from(chain[0].der()),
            key,
        )
        .map_err(|e| Error::BadCertificate {
            what: format!("identity issuer `{}`", chain[0].subject()),
            reason: format!("cannot be used to sign: {e}"),
        })?;
        let issuer = IdentityIssuer {
            domain,
            anchors,
            expired_anchors: expired,
            chain,
            signer,
        };
        issuer.self_test(now)?;
        Ok(issuer)
    }

    /// Reads the identity domain from an issuer's common name, the way
    /// Linkerd names issuers (`identity.linkerd.cluster.local`).
    pub fn domain_from_common_name(issuer: &Certificate) -> Result<IdentityDomain, Error> {
        let cn = issuer.common_name().unwrap_or_default();
        cn.parse().map_err(|e| Error::IssuerNameNotIdentityDomain {
            subject: issuer.subject().to_string(),
            reason: format!("{e}"),
        })
    }

    /// Anchors of the `ca.crt` given that had expired and were skipped.
    pub fn expired_anchors(&self) -> &[Certificate] {
        &self.expired_anchors
    }

    /// The identity domain this issuer certifies.
    pub fn domain(&self) -> &IdentityDomain {
        &self.domain
    }

    /// The issuer's own certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.chain[0]
    }

    /// The issuer and any intermediates above it, not the anchor.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// The issuer's key, for writing it to `issuer.key`.
    pub fn key(&self) -> &SigningKey {
        self.signer.key()
    }

    /// The trust anchors.
    pub fn anchors(&self) -> &[Certificate] {
        &self.anchors
    }

    /// Validates `csr_der` for `identity` and signs a leaf valid from
    /// `now - 20s` for `lifetime`, clamped to the issuer's notAfter.
    pub fn issue(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        lifetime: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<IssuedLeaf, Error> {
        if identity.domain() != &self.domain {
            return Err(Error::IdentityNotInDomain {
                identity: identity.to_string(),
                domain: self.domain.to_string(),
            });
        }
        let csr = validate_csr(csr_der, identity)?;
        self.sign_leaf(&csr, identity, lifetime, now)
    }

    /// Signs the key of an already validated CSR.
    fn sign_leaf(
        &self,
        csr: &ValidatedCsr,
        identity: &Identity,
        lifetime: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<IssuedLeaf, Error> {
        check_lifetime("workload certificate", lifetime)?;
        for cert in &self.chain {
            check_time(Role::IdentityIssuer, cert, now)?;
        }
        let issuer = self.certificate();
        let validity = validity_within(now, LEAF_BACKDATE, lifetime, issuer.not_after());
        let mut params = CertificateParams::default();
        params.not_before = chrono_to_offset(validity.not_before)?;
        params.not_after = chrono_to_offset(validity.not_after)?;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.as_str());
        params.subject_alt_names = vec![
            SanType::DnsName(identity.as_str().try_into().map_err(Error::signing)?),
            SanType::URI(identity.spiffe_id().try_into().map_err(Error::signing)?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(csr, &self.signer)
            .map_err(Error::signing)?;
        Ok(IssuedLeaf {
            leaf_der: leaf.der().to_vec(),
            chain_der: self.chain.iter().map(|c| c.der().to_vec()).collect(),
            validity,
        })
    }

    /// Signs and verifies a throwaway leaf, so a key that cannot sign for
    /// this certificate, or an issuer name that does not survive re-encoding
    /// byte for byte, is caught at load and not by a peer's TLS stack later.
    fn self_test(&self, now: DateTime<Utc>) -> Result<(), Error> {
        let probe_key = SigningKey::generate(KeyAlgorithm::EcdsaP256)?;
        let probe = ValidatedCsr::for_key(&probe_key);
        let identity = Identity::new("lanyard-self-test", "default", self.domain.clone())?;
        let leaf = self.sign_leaf(&probe, &identity, TimeDelta::minutes(1), now)?;
        let mut chain = vec![Certificate::from_der(&leaf.leaf_der, "self-test leaf")?];
        chain.extend(self.chain.iter().cloned());
        verify_chain(&chain, &self.anchors, now).map_err(|reason| Error::IssuerSelfTestFailed {
            issuer: self.certificate().subject().to_string(),
            reason: reason.to_string(),
        })?;
        Ok(())
    }
}

/// A signed workload certificate and the chain that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedLeaf {
    /// The leaf, DER.
    pub leaf_der: Vec<u8>,
    /// The issuer and any intermediates above it, DER, not the anchor.
    pub chain_der: Vec<Vec<u8>>,
    /// The leaf's validity, and whether it was clamped to the issuer's.
    pub validity: Validity,
}

impl IssuedLeaf {
    /// The leaf followed by its chain, as PEM: what `tls.crt` holds.
    pub fn to_pem_chain(&self) -> String {
        std::iter::once(&self.leaf_der)
            .chain(&self.chain_der)
            .map(|der| {
                pem::encode_config(
                    &pem::Pem::new("CERTIFICATE", der.clone()),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            })
            .collect()
    }
}

fn ca_params(common_name: &str, path_len: u8) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// 16 random bytes with the top bit clear (a positive INTEGER) and the next
/// bit set (so DER keeps all 16 bytes): 126 bits of entropy, well above the
/// 64 the CA/Browser Forum asks for.
pub(crate) fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn check_lifetime(what: &'static str, lifetime: TimeDelta) -> Result<(), Error> {
    if lifetime <= TimeDelta::zero() {
        return Err(Error::BadLifetime {
            what,
            reason: "must be positive".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_time(role: Role, cert: &Certificate, now: DateTime<Utc>) -> Result<(), Error> {
    if now < cert.not_before() {
        return Err(Error::NotYetValid {
            role,
            subject: cert.subject().to_string(),
            not_before: cert.not_before(),
        });
    }
    if now > cert.not_after() {
        return Err(Error::Expired {
            role,
            subject: cert.subject().to_string(),
            not_after: cert.not_after(),
        });
    }
    Ok(())
}

pub(crate) fn check_ca(role: Role, cert: &Certificate, now: DateTime<Utc>) -> Result<(), Error> {
    match cert.ca() {
        Some(ca) if ca.may_sign_certificates => {}
        Some(_) => {
            return Err(Error::NotCa {
                role,
                subject: cert.subject().to_string(),
                reason: "its keyUsage does not allow certificate signing".into(),
            });
        }
        None => {
            return Err(Error::NotCa {
                role,
                subject: cert.subject().to_string(),
                reason: "basicConstraints CA:TRUE is missing".into(),
            });
        }
    }
    check_time(role, cert, now)
}

pub(crate) fn check_key_matches(
    role: Role,
    cert: &Certificate,
    key: &SigningKey,
) -> Result<(), Error> {
    if !key.matches_public_key(cert.public_key_raw()) {
        return Err(Error::KeyMismatch {
            role,
            subject: cert.subject().to_string(),
        });
    }
    Ok(())
}

impl ValidatedCsr {
    /// A "CSR" for a key held in this process, for the self-test.
    fn for_key(key: &SigningKey) -> Self {
        ValidatedCsr::from_parts(
            rcgen::PublicKeyData::algorithm(key),
            key.public_key_raw().to_vec(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn validity_table() {
        let now = t("2026-01-01T00:00:00Z");
        let cases = [
            (
                "a 24h leaf from a year-long issuer is not clamped",
                TimeDelta::hours(24),
                t("2027-01-01T00:00:00Z"),
                t("2026-01-02T00:00:00Z"),
                None,
            ),
            (
                "a leaf from an issuer that expires in 3 hours is clamped to it",
                TimeDelta::hours(24),
                t("2026-01-01T03:00:00Z"),
                t("2026-01-01T03:00:00Z"),
                Some(t("2026-01-02T00:00:00Z")),
            ),
            (
                "a leaf ending exactly with its issuer is not reported as clamped",
                TimeDelta::hours(3),
                t("2026-01-01T03:00:00Z"),
                t("2026-01-01T03:00:00Z"),
                None,
            ),
        ];
        for (name, lifetime, issuer_end, want_end, want_clamp) in cases {
            let v = validity_within(now, LEAF_BACKDATE, lifetime, issuer_end);
            assert_eq!(v.not_before, t("2025-12-31T23:59:40Z"), "{name}");
            assert_eq!(v.not_after, want_end, "{name}");
            assert_eq!(v.clamped_from, want_clamp, "{name}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_leaf_never_outlives_its_issuer_nor_its_requested_lifetime(
            now_s in 0i64..4_000_000_000,
            lifetime_s in 1i64..100_000_000,
            issuer_left_s in -1_000_000i64..100_000_000,
        ) {
            let now = DateTime::from_timestamp(now_s, 0).unwrap();
            let issuer_end = now + TimeDelta::seconds(issuer_left_s);
            let v = validity_within(now, LEAF_BACKDATE, TimeDelta::seconds(lifetime_s), issuer_end);
            proptest::prop_assert!(v.not_after <= issuer_end);
            proptest::prop_assert!(v.not_after <= now + TimeDelta::seconds(lifetime_s));
            proptest::prop_assert_eq!(v.not_before, now - LEAF_BACKDATE);
            proptest::prop_assert_eq!(v.clamped_from.is_some(), issuer_end < now + TimeDelta::seconds(lifetime_s));
        }
    }
}
