//! The first start of `lanyard up`: the trust anchor, its CA
//! ClusterIssuer and the identity issuer Certificate, as Linkerd's
//! cert-manager guide sets them up by hand.

use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::{LINKERD_TRUST_ROOTS, TrustBundle};
use lanyard_issuer::{DEFAULT_ANCHOR_LIFETIME, KeyAlgorithm, TrustAnchor};

use super::secrets::{self, Durability};
use super::{LocalController, LocalError, TRUST_ANCHOR_NAME, manifests};

impl<C: Clock> LocalController<C> {
    /// On first start (no manifests directory yet), sets up what the Linkerd
    /// mTLS guide sets up by hand: a trust anchor Secret, a CA ClusterIssuer
    /// `linkerd-trust-anchor` over it, and the identity issuer Certificate
    /// `<namespace>/linkerd-identity-issuer` (8760h, renewBefore 720h,
    /// isCA). Returns whether it did anything.
    pub fn bootstrap(&self) -> Result<bool, LocalError> {
        let manifests_dir = self.options.manifests_dir();
        if manifests_dir.exists() {
            return Ok(false);
        }
        let now = self.clock.now();
        let domain = &self.options.domain;
        let anchor = TrustAnchor::generate(
            domain,
            DEFAULT_ANCHOR_LIFETIME,
            KeyAlgorithm::EcdsaP256,
            now,
        )?;
        let secret = crate::anchor::anchor_secret(&anchor);
        self.secrets.write(
            &self.options.cluster_resource_namespace,
            TRUST_ANCHOR_NAME,
            &secret,
        )?;

        let issuer = lanyard_crds::linkerd::anchor_cluster_issuer();
        let certificate = identity_issuer_certificate(domain);
        let bundle = linkerd_trust_roots(domain);
        let stream = manifests::to_yaml_stream(&[
            serde_json::to_value(&issuer).expect("API objects serialise"),
            serde_json::to_value(&certificate).expect("API objects serialise"),
            serde_json::to_value(&bundle).expect("API objects serialise"),
        ])
        .map_err(|reason| LocalError::CorruptState {
            path: manifests_dir.clone(),
            reason,
        })?;
        let header = "# Made by `lanyard up` on first start: the trust anchor's CA ClusterIssuer\n\
                      # and the identity issuer Certificate, as Linkerd's cert-manager guide sets them up,\n\
                      # and the trust bundle Linkerd reads (linkerd-identity-trust-roots, key ca-bundle.crt).\n";
        // The manifests directory appears in one rename, with its file:
        // an interrupted first start is tried again from scratch.
        let staging = lanyard_files::StagedDir::new(&self.options.state_dir, 0o755)?;
        secrets::write_file_atomic(
            &staging.path().join("linkerd-identity.yaml"),
            format!("{header}{stream}").as_bytes(),
            0o644,
            self.options.durability,
        )?;
        staging.commit(&manifests_dir, self.options.durability == Durability::Fsync)?;
        Ok(true)
    }
}

impl<C: Clock> LocalController<C> {
    /// For a state directory set up before trust bundles existed: when the
    /// manifests define the anchor's ClusterIssuer `linkerd-trust-anchor`
    /// and no TrustBundle `linkerd-identity-trust-roots`, adds that bundle
    /// as `manifests/linkerd-identity-trust-roots.yaml`. Returns whether it
    /// did.
    pub fn ensure_trust_roots(&self) -> Result<bool, LocalError> {
        let manifests_dir = self.options.manifests_dir();
        let (objects, _) = manifests::load_dir(&manifests_dir, "default");
        let objects: Vec<_> = objects.into_values().flatten().collect();
        let has_anchor = objects.iter().any(|o| {
            matches!(o, manifests::Object::ClusterIssuer(i) if i.metadata.name.as_deref() == Some(TRUST_ANCHOR_NAME))
        });
        let has_bundle = objects.iter().any(|o| {
            matches!(o, manifests::Object::TrustBundle(b) if b.metadata.name.as_deref() == Some(LINKERD_TRUST_ROOTS))
        });
        let path = manifests_dir.join(format!("{LINKERD_TRUST_ROOTS}.yaml"));
        if !has_anchor || has_bundle || path.exists() {
            return Ok(false);
        }
        let bundle = linkerd_trust_roots(&self.options.domain);
        let stream = manifests::to_yaml_stream(&[
            serde_json::to_value(&bundle).expect("API objects serialise")
        ])
        .map_err(|reason| LocalError::CorruptState {
            path: path.clone(),
            reason,
        })?;
        secrets::write_file_atomic(
            &path,
            format!("# Added by `lanyard up`: the trust bundle Linkerd reads.\n{stream}")
                .as_bytes(),
            0o644,
            self.options.durability,
        )?;
        Ok(true)
    }
}

/// The trust bundle Linkerd reads (see [`lanyard_crds::linkerd::trust_roots_bundle`]);
/// locally it is written to `DIR/bundles/<name>.pem`.
pub fn linkerd_trust_roots(domain: &IdentityDomain) -> TrustBundle {
    lanyard_crds::linkerd::trust_roots_bundle(domain)
}

pub use lanyard_crds::linkerd::identity_issuer_certificate;
