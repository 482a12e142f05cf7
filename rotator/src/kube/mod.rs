//! The Kubernetes shell (`lanyard controller`), in kube-rs' controller-rs
//! layout: [`reconcile_certificate`] gathers a Certificate's inputs from
//! the watch caches ([`cache`]: its issuer, the issuer's signing material,
//! its own Secret),
//! hands them to the pure [`crate::reconcile::reconcile`], and writes what
//! it returns; [`error_policy`] backs off when the API server fails; [`run`]
//! wires both into a kube-runtime `Controller` that runs only while this
//! replica holds the Lease ([`lease`]).
//!
//! Next to it run one controller per issuer kind: [`reconcile_issuer`]
//! reads an `Issuer`'s or `ClusterIssuer`'s CA Secret, loads it with
//! [`crate::issuing::load_issuer`] and records the result as the issuer's
//! `Ready` condition, as the local shell does.
//!
//! With [`Context::with_trust_bundles`], a third controller distributes
//! trust bundles: [`reconcile_trust_bundle`] reads a `TrustBundle`'s
//! sources, assembles them with [`lanyard_trust_bundle::assemble`], and
//! applies the bundle as a ConfigMap (and optionally a Secret) in every
//! namespace its selector selects, as trust-manager does.
//!
//! The Secret is written with server-side apply as field manager
//! `lanyard`, holding only the keys the controller manages, so keys,
//! labels and annotations written by others are never removed.
//!
//! The pieces: the watch caches (`cache`), the one HTTP/2 API client
//! (`client`), [`Context`] and [`Error`] (`context`), the Certificate
//! reconcile (`certificate`), the issuer reconcile (`issuer`), the leader
//! loop and the wiring (`run`), the map from a changed object to the
//! Certificates it concerns (`dependents`), and the TrustBundle reconcile
//! with its sources, targets and triggers (`trust_bundle`).

pub mod anchor_rotation;
pub mod cache;
mod certificate;
mod client;
mod context;
mod dependents;
mod issuer;
pub mod lease;
mod run;
pub mod secret;
mod trust_bundle;

pub use cache::{Caches, MANAGED_LABEL};
pub use certificate::{
    MAX_REQUEUE, MIN_REQUEUE, STALE_REQUEUE, error_policy, reconcile_certificate, requeue_after,
    status_patch,
};
pub use client::{client_for, infer_client};
pub use context::{Context, DEFAULT_CONCURRENCY, Error, error_backoff};
pub use issuer::{ISSUER_REQUEUE, IssuerResource, issuer_error_policy, reconcile_issuer};
pub use lease::{LeaderElection, LeaseDecision, LeaseLock, lease_decision};
pub use run::{STOP_GRACE, run};
pub use secret::{applied_secret, secret_data};
pub use trust_bundle::{
    BUNDLE_INVALID_SPEC, BUNDLE_LABEL, BUNDLE_NO_ANCHORS, BUNDLE_REQUEUE, BUNDLE_SECRET_TYPE,
    BUNDLE_SOURCE_FAILED, BUNDLE_SYNCED, BundleOutcome, applied_bundle_secret, applied_config_map,
    bundle_requeue_after, bundle_status, check_spec, namespace_gone, reconcile_trust_bundle,
    selects, source_name, trust_bundle_error_policy,
};

pub use crate::issuer_ref::DEFAULT_CLUSTER_RESOURCE_NAMESPACE;
pub use crate::reconcile::{ISSUER_READY_MESSAGE, ISSUER_READY_REASON, issuer_status};

/// The field manager of every write: server-side apply records which
/// fields the controller owns under this name.
pub const FIELD_MANAGER: &str = "lanyard";
