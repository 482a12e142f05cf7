//! The objects Linkerd's cert-manager guide sets up by hand, which Lanyard
//! makes itself: the trust anchor's CA ClusterIssuer, the identity issuer
//! Certificate, and the trust bundle Linkerd reads. `lanyard up` writes
//! them on first start; `lanyard install` and the Helm chart render them.

use crate::api::{
    CaIssuer, Certificate, CertificateSpec, ClusterIssuer, ClusterIssuerSpec, IssuerConfig,
    IssuerKind, IssuerRef, PrivateKeySpec,
};
use crate::duration::GoDuration;
use crate::identity::IdentityDomain;
use crate::trust_bundle::{LINKERD_TRUST_ROOTS, TrustBundle, TrustBundleSpec};
use crate::usage::{KeyUsage, PrivateKeyAlgorithm};

/// The name of the trust anchor's ClusterIssuer and Secret, as in
/// Linkerd's cert-manager guide.
pub const TRUST_ANCHOR_NAME: &str = "linkerd-trust-anchor";
/// The name of the identity issuer's Certificate and Secret, which
/// Linkerd's identity service reads.
pub const IDENTITY_ISSUER_NAME: &str = "linkerd-identity-issuer";
/// The annotation that asks the controller to make a CA issuer's anchor
/// when its Secret is missing, as `lanyard up` makes it on first start;
/// its value is the anchor's common name, e.g. `root.linkerd.cluster.local`.
pub const GENERATE_ANCHOR_ANNOTATION: &str = "lanyard.dev/generate-anchor";
/// The identity issuer Certificate's lifetime in the guide: 8760h.
pub const ISSUER_DURATION_HOURS: u64 = 8760;
/// How long before its end the guide renews the issuer: 720h.
pub const ISSUER_RENEW_BEFORE_HOURS: u64 = 720;

/// Checks a workload certificate lifetime (Linkerd's
/// `issuanceLifetime`): at least a minute (agents renew at about two
/// thirds of it), at most a year.
pub fn check_issuance_lifetime(lifetime: GoDuration) -> Result<(), String> {
    let seconds = lifetime.to_chrono().num_seconds();
    if !(60..=8_760 * 3_600).contains(&seconds) {
        return Err(format!(
            "{lifetime} is outside 1m..8760h; a workload certificate lives at least a minute"
        ));
    }
    Ok(())
}

/// The anchor's CA ClusterIssuer `linkerd-trust-anchor`, over the Secret of
/// the same name (in the cluster resource namespace).
pub fn anchor_cluster_issuer() -> ClusterIssuer {
    let mut issuer = ClusterIssuer::new(
        TRUST_ANCHOR_NAME,
        ClusterIssuerSpec {
            config: IssuerConfig {
                ca: Some(CaIssuer {
                    secret_name: TRUST_ANCHOR_NAME.into(),
                }),
                self_signed: None,
            },
        },
    );
    issuer.status = None;
    issuer
}

fn anchor_issuer_ref() -> IssuerRef {
    IssuerRef {
        name: TRUST_ANCHOR_NAME.into(),
        kind: Some(IssuerKind::ClusterIssuer.as_str().into()),
        group: None,
    }
}

/// The trust bundle Linkerd reads, `linkerd-identity-trust-roots` with
/// the key `ca-bundle.crt` in the control-plane namespace, holding the live
/// anchors of the ClusterIssuer `linkerd-trust-anchor` (both anchors while
/// it rotates).
pub fn trust_roots_bundle(domain: &IdentityDomain) -> TrustBundle {
    let mut bundle = TrustBundle::new(
        LINKERD_TRUST_ROOTS,
        TrustBundleSpec::linkerd_trust_roots(anchor_issuer_ref(), domain.control_plane_namespace()),
    );
    bundle.status = None;
    bundle
}

/// The identity issuer Certificate of Linkerd's cert-manager guide:
/// `<namespace>/linkerd-identity-issuer`, `identity.<namespace>.<trust
/// domain>`, ECDSA, 8760h renewed 720h before its end, a CA, signed by the
/// ClusterIssuer `linkerd-trust-anchor`.
pub fn identity_issuer_certificate(domain: &IdentityDomain) -> Certificate {
    let mut spec = CertificateSpec::new(IDENTITY_ISSUER_NAME, anchor_issuer_ref());
    spec.common_name = Some(domain.to_string());
    spec.duration = Some(GoDuration::from_hours(ISSUER_DURATION_HOURS));
    spec.renew_before = Some(GoDuration::from_hours(ISSUER_RENEW_BEFORE_HOURS));
    spec.is_ca = true;
    spec.usages = vec![
        KeyUsage::CertSign,
        KeyUsage::CrlSign,
        KeyUsage::ServerAuth,
        KeyUsage::ClientAuth,
    ];
    spec.private_key = Some(PrivateKeySpec {
        algorithm: Some(PrivateKeyAlgorithm::Ecdsa),
        ..Default::default()
    });
    let mut certificate = Certificate::new(IDENTITY_ISSUER_NAME, spec);
    certificate.metadata.namespace = Some(domain.control_plane_namespace().to_string());
    certificate
}
