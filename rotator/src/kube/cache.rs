//! What the controller reads, from watch caches: reflector stores of the
//! Certificates, Issuers and ClusterIssuers, of the Secrets the controller
//! manages (found by [`MANAGED_LABEL`]), and of the metadata of every other
//! Secret. A reconcile reads these, never the API server, except for the
//! rare objects whose contents the caches deliberately do not hold (see
//! [`super::certificate`]): cert-manager's listers, in kube-runtime's
//! terms.
//!
//! What is cached per object is cut to what a reconcile reads:
//! `managedFields` and kubectl's last-applied annotation go from every
//! object; a managed Secret keeps only `tls.crt` and `tls.key` (the
//! certificate in force and the key it must match); another Secret keeps
//! only its name, namespace, resourceVersion and controller reference.
//!
//! The TrustBundle controller, when it runs, adds its own: the
//! TrustBundles, every Namespace's name, labels and deletion mark, the
//! ConfigMaps and Secrets bundles wrote (found by
//! [`BUNDLE_LABEL`](super::BUNDLE_LABEL), small: public certificates
//! only), and the metadata of the ConfigMaps in the trust namespace (the
//! bundles' sources). They are ready apart from the Certificate
//! controller's ([`Caches::bundles_ready`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::kube::ResourceExt;
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_crds::api::{Certificate, ClusterIssuer, Issuer, IssuerConfig, IssuerKind};
use lanyard_crds::trust_bundle::TrustBundle;

use crate::issuer_ref::IssuerTarget;
use crate::issuing::{IssuerError, IssuerMaterial};
use crate::secret::{CA_CRT, TLS_CRT, TLS_KEY};

/// The label on every Secret the controller writes: the Secret watch that
/// keeps whole objects selects on it, so Secrets Lanyard does not manage
/// cost only their metadata.
pub const MANAGED_LABEL: &str = "controller.lanyard.dev/managed";
/// The value of [`MANAGED_LABEL`].
pub const MANAGED_LABEL_VALUE: &str = "true";

/// The annotation `kubectl apply` keeps the whole applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The readers of the controller's watch caches. Cloning is cheap: the
/// stores are shared.
#[derive(Clone)]
pub struct Caches {
    /// Certificates, stripped.
    pub certificates: Store<Certificate>,
    /// Issuers, stripped.
    pub issuers: Store<Issuer>,
    /// ClusterIssuers, stripped.
    pub cluster_issuers: Store<ClusterIssuer>,
    /// The Secrets carrying [`MANAGED_LABEL`], stripped by [`strip_secret`].
    pub secrets: Store<Secret>,
    /// The metadata of every other Secret, stripped by
    /// [`strip_secret_metadata`].
    pub other_secrets: Store<PartialObjectMeta<Secret>>,
    /// TrustBundles, stripped.
    pub trust_bundles: Store<TrustBundle>,
    /// Every Namespace's name, labels and deletion mark, stripped by
    /// [`strip_namespace_metadata`].
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The ConfigMaps bundles wrote (carrying `BUNDLE_LABEL`), stripped by
    /// [`strip_bundle_target`].
    pub bundle_config_maps: Store<ConfigMap>,
    /// The Secrets bundles wrote (carrying `BUNDLE_LABEL`), stripped by
    /// [`strip_bundle_target`].
    pub bundle_secrets: Store<Secret>,
    /// The metadata of the ConfigMaps in the trust namespace, stripped by
    /// [`strip_config_map_metadata`].
    pub trust_config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

/// The writing ends of [`Caches`], for the watches that feed them.
#[allow(missing_debug_implementations)] // kube-runtime's writers have no Debug
pub struct CacheWriters {
    /// Feeds [`Caches::certificates`].
    pub certificates: Writer<Certificate>,
    /// Feeds [`Caches::issuers`].
    pub issuers: Writer<Issuer>,
    /// Feeds [`Caches::cluster_issuers`].
    pub cluster_issuers: Writer<ClusterIssuer>,
    /// Feeds [`Caches::secrets`].
    pub secrets: Writer<Secret>,
    /// Feeds [`Caches::other_secrets`].
    pub other_secrets: Writer<PartialObjectMeta<Secret>>,
    /// Feeds [`Caches::trust_bundles`].
    pub trust_bundles: Writer<TrustBundle>,
    /// Feeds [`Caches::namespaces`].
    pub namespaces: Writer<PartialObjectMeta<Namespace>>,
    /// Feeds [`Caches::bundle_config_maps`].
    pub bundle_config_maps: Writer<ConfigMap>,
    /// Feeds [`Caches::bundle_secrets`].
    pub bundle_secrets: Writer<Secret>,
    /// Feeds [`Caches::trust_config_maps`].
    pub trust_config_maps: Writer<PartialObjectMeta<ConfigMap>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("certificates", &self.certificates.len())
            .field("issuers", &self.issuers.len())
            .field("cluster_issuers", &self.cluster_issuers.len())
            .field("secrets", &self.secrets.len())
            .field("other_secrets", &self.other_secrets.len())
            .field("trust_bundles", &self.trust_bundles.len())
            .field("namespaces", &self.namespaces.len())
            .field("bundle_config_maps", &self.bundle_config_maps.len())
            .field("bundle_secrets", &self.bundle_secrets.len())
            .field("trust_config_maps", &self.trust_config_maps.len())
            .finish()
    }
}

impl Caches {
    /// Empty caches and the writers that fill them.
    pub fn new() -> (Caches, CacheWriters) {
        let (certificates, certificates_writer) = reflector::store();
        let (issuers, issuers_writer) = reflector::store();
        let (cluster_issuers, cluster_issuers_writer) = reflector::store();
        let (secrets, secrets_writer) = reflector::store();
        let (other_secrets, other_secrets_writer) = reflector::store();
        let (trust_bundles, trust_bundles_writer) = reflector::store();
        let (namespaces, namespaces_writer) = reflector::store();
        let (bundle_config_maps, bundle_config_maps_writer) = reflector::store();
        let (bundle_secrets, bundle_secrets_writer) = reflector::store();
        let (trust_config_maps, trust_config_maps_writer) = reflector::store();
        (
            Caches {
                certificates,
                issuers,
                cluster_issuers,
                secrets,
                other_secrets,
                trust_bundles,
                namespaces,
                bundle_config_maps,
                bundle_secrets,
                trust_config_maps,
            },
            CacheWriters {
                certificates: certificates_writer,
                issuers: issuers_writer,
                cluster_issuers: cluster_issuers_writer,
                secrets: secrets_writer,
                other_secrets: other_secrets_writer,
                trust_bundles: trust_bundles_writer,
                namespaces: namespaces_writer,
                bundle_config_maps: bundle_config_maps_writer,
                bundle_secrets: bundle_secrets_writer,
                trust_config_maps: trust_config_maps_writer,
            },
        )
    }

    /// Waits until every cache holds its first complete list; `Err` when a
    /// watch ended first.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.certificates.wait_until_ready().await?;
        self.issuers.wait_until_ready().await?;
        self.cluster_issuers.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.other_secrets.wait_until_ready().await
    }

    /// Waits until every cache the TrustBundle controller reads holds its
    /// first complete list (its own, and the Secrets and ClusterIssuers it
    /// shares with the Certificate controller); `Err` when a watch ended
    /// first.
    pub async fn bundles_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.trust_bundles.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.bundle_config_maps.wait_until_ready().await?;
        self.bundle_secrets.wait_until_ready().await?;
        self.trust_config_maps.wait_until_ready().await?;
        self.cluster_issuers.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.other_secrets.wait_until_ready().await
    }

    /// The cached resourceVersion of the Secret `namespace/name`, managed or
    /// not; `None` when the caches have not seen it.
    pub fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        let managed = self
            .secrets
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| s.resource_version());
        managed
            .or_else(|| {
                self.other_secrets
                    .get(&ObjectRef::new(name).within(namespace))
                    .map(|s| s.resource_version())
            })
            .map(Option::unwrap_or_default)
    }

    /// Whether a Secret `namespace/name` exists that the controller does
    /// not manage (its metadata only is cached).
    pub fn has_other_secret(&self, namespace: &str, name: &str) -> bool {
        self.other_secrets
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The issuer `target` names: its config and resourceVersion.
    pub fn issuer(&self, target: &IssuerTarget) -> Option<(IssuerConfig, String)> {
        match target.kind {
            IssuerKind::Issuer => self
                .issuers
                .get(&ObjectRef::new(&target.name).within(&target.namespace))
                .map(|i| {
                    (
                        i.spec.config.clone(),
                        i.resource_version().unwrap_or_default(),
                    )
                }),
            IssuerKind::ClusterIssuer => self
                .cluster_issuers
                .get(&ObjectRef::new(&target.name))
                .map(|i| {
                    (
                        i.spec.config.clone(),
                        i.resource_version().unwrap_or_default(),
                    )
                }),
        }
    }
}

fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// A Certificate as cached: without `managedFields` and kubectl's
/// last-applied copy of itself.
pub fn strip_certificate(certificate: &mut Certificate) {
    strip_metadata(&mut certificate.metadata);
}

/// An Issuer or ClusterIssuer as cached, stripped as Certificates are.
pub fn strip_issuer<K: ::kube::Resource>(issuer: &mut K) {
    strip_metadata(issuer.meta_mut());
}

/// A managed Secret as cached: `tls.crt`, `tls.key` and `ca.crt` only
/// (the certificate in force, the key it must match, and the anchors a
/// reconcile keeps equal to the issuer's live ones through an anchor
/// rotation), no `managedFields`. Keys others added are not read by a
/// reconcile.
pub fn strip_secret(secret: &mut Secret) {
    strip_metadata(&mut secret.metadata);
    if let Some(data) = &mut secret.data {
        data.retain(|key, _| key == TLS_CRT || key == TLS_KEY || key == CA_CRT);
    }
    secret.string_data = None;
}

/// Another Secret's metadata as cached: what maps it to the Certificates
/// and issuers it concerns (namespace, name, resourceVersion, controller
/// reference), nothing else.
pub fn strip_secret_metadata(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    if let Some(owners) = &mut meta.owner_references {
        owners.retain(|owner| owner.controller == Some(true));
    }
}

/// A Namespace as cached: its name, labels (what bundles select on),
/// resourceVersion and deletion mark.
pub fn strip_namespace_metadata(namespace: &mut PartialObjectMeta<Namespace>) {
    let meta = &mut namespace.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

/// A ConfigMap or Secret a bundle wrote, as cached: whole (it holds the
/// bundle's public certificates, nothing secret), without `managedFields`
/// and kubectl's last-applied copy.
pub fn strip_bundle_target<K: ::kube::Resource>(target: &mut K) {
    strip_metadata(target.meta_mut());
}

/// A ConfigMap of the trust namespace as cached: its name and
/// resourceVersion, which say it exists and when it changed.
pub fn strip_config_map_metadata(config_map: &mut PartialObjectMeta<ConfigMap>) {
    let meta = &mut config_map.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
}

/// Objects the controller has written whose new version its cache may not
/// have delivered yet: `namespace/name` to the resourceVersion the write
/// returned. A reconcile that finds an older version cached must not decide
/// from it: a Secret it just wrote would be taken for missing or stale (and
/// issued again), a status it just wrote for one to write again. An entry
/// goes when the watch delivers that version, when a read finds another,
/// or after [`WRITTEN_PATIENCE`] (a watch that relisted may never deliver
/// it).
#[derive(Debug, Default)]
pub struct Written(Mutex<HashMap<ObjectKey, (String, DateTime<Utc>)>>);

/// Namespace and name.
type ObjectKey = (String, String);

/// How long an entry of [`Written`] is trusted.
pub const WRITTEN_PATIENCE: TimeDelta = TimeDelta::seconds(60);

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, (String, DateTime<Utc>)>> {
        // Only versions; a panic elsewhere cannot leave the map invalid.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `namespace/name` was written (or read) at `version`,
    /// at `now`.
    pub fn record(&self, namespace: &str, name: &str, version: String, now: DateTime<Utc>) {
        self.lock()
            .insert((namespace.to_string(), name.to_string()), (version, now));
    }

    /// The version written last, if the cache may still lag behind it at
    /// `now`.
    pub fn pending(&self, namespace: &str, name: &str, now: DateTime<Utc>) -> Option<String> {
        let mut written = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let (version, at) = written.get(&key)?;
        if now - *at > WRITTEN_PATIENCE || now < *at - WRITTEN_PATIENCE {
            written.remove(&key);
            return None;
        }
        Some(version.clone())
    }

    /// The cache has delivered `version` of `namespace/name`: forget the
    /// entry when it is that version.
    pub fn seen(&self, namespace: &str, name: &str, version: &str) {
        let mut written = self.lock();
        let key = (namespace.to_string(), name.to_string());
        if written.get(&key).is_some_and(|(v, _)| v == version) {
            written.remove(&key);
        }
    }

    /// Forgets `namespace/name`: a read found another version than the one
    /// written, so the cache has nothing of ours to catch up with.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// How many entries wait for the cache.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a failure to load an issuer is kept before it is tried again
/// with the same objects (an issuer not yet valid becomes valid with time).
pub const ISSUER_RETRY: TimeDelta = TimeDelta::seconds(30);

/// What loading an issuer gave, shared by every Certificate it signs for.
pub type LoadedIssuer = Arc<Result<IssuerMaterial, IssuerError>>;

/// One issuer's loaded signing material and what it was loaded from.
struct Loaded {
    issuer_version: String,
    secret_version: Option<String>,
    loaded_at: DateTime<Utc>,
    material: LoadedIssuer,
}

impl Loaded {
    /// Whether it still holds for these objects at `now`: a CA only while
    /// it is valid, a failure for [`ISSUER_RETRY`].
    fn holds(
        &self,
        issuer_version: &str,
        secret_version: Option<&str>,
        now: DateTime<Utc>,
    ) -> bool {
        if self.issuer_version != issuer_version || self.secret_version.as_deref() != secret_version
        {
            return false;
        }
        match self.material.as_ref() {
            Ok(material) => material
                .ca()
                .is_none_or(|ca| ca.not_before() <= now && now < ca.not_after()),
            Err(_) => self.loaded_at <= now && now < self.loaded_at + ISSUER_RETRY,
        }
    }
}

/// Issuer key: kind, namespace (empty for a ClusterIssuer), name.
type IssuerKey = (IssuerKind, String, String);

/// The signing material of every issuer in use, loaded once per version of
/// the issuer and its CA Secret (its key parsed and checked once, not once
/// per Certificate), and loaded by one reconcile while the others that need
/// it wait.
#[derive(Default)]
pub struct IssuerMaterials {
    slots: Mutex<HashMap<IssuerKey, Arc<tokio::sync::Mutex<Option<Loaded>>>>>,
}

impl std::fmt::Debug for IssuerMaterials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerMaterials").finish_non_exhaustive()
    }
}

impl IssuerMaterials {
    fn slots(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<IssuerKey, Arc<tokio::sync::Mutex<Option<Loaded>>>>>
    {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The material of `target` loaded from `issuer_version` of the issuer
    /// and `secret_version` of its CA Secret, as still held at `now`, or
    /// what `load` gives (which is then kept).
    pub(super) async fn get_or_load<F, E>(
        &self,
        target: &IssuerTarget,
        issuer_version: &str,
        secret_version: Option<&str>,
        now: DateTime<Utc>,
        load: F,
    ) -> Result<LoadedIssuer, E>
    where
        F: Future<Output = Result<Result<IssuerMaterial, IssuerError>, E>>,
    {
        let slot = self.slots().entry(target.key()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(loaded) = slot.as_ref()
            && loaded.holds(issuer_version, secret_version, now)
        {
            return Ok(loaded.material.clone());
        }
        let material = Arc::new(load.await?);
        *slot = Some(Loaded {
            issuer_version: issuer_version.to_string(),
            secret_version: secret_version.map(str::to_string),
            loaded_at: now,
            material: material.clone(),
        });
        Ok(material)
    }

    /// Forgets a deleted issuer.
    pub fn forget(&self, kind: IssuerKind, namespace: &str, name: &str) {
        self.slots()
            .remove(&(kind, namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("web-tls".into()),
            namespace: Some("apps".into()),
            resource_version: Some("7".into()),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            labels: Some([(MANAGED_LABEL.to_string(), "true".to_string())].into()),
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{...}".to_string()),
                    ("lanyard.dev/revision".to_string(), "3".to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![
                OwnerReference {
                    controller: Some(true),
                    uid: "a".into(),
                    ..OwnerReference::default()
                },
                OwnerReference {
                    controller: None,
                    uid: "b".into(),
                    ..OwnerReference::default()
                },
            ]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_cached_managed_secret_keeps_the_certificate_key_anchors_and_its_annotations() {
        let mut secret = Secret {
            metadata: meta(),
            data: Some(
                ["tls.crt", "tls.key", "ca.crt", "keystore.p12"]
                    .into_iter()
                    .map(|k| (k.to_string(), ByteString(k.as_bytes().to_vec())))
                    .collect(),
            ),
            type_: Some("kubernetes.io/tls".into()),
            ..Secret::default()
        };
        strip_secret(&mut secret);
        let keys: Vec<&String> = secret.data.iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(secret.metadata.managed_fields, None);
        let annotations = secret.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations["lanyard.dev/revision"], "3");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    }

    #[test]
    fn another_secrets_cached_metadata_is_its_name_version_and_controller() {
        let mut secret = PartialObjectMeta::<Secret> {
            types: None,
            metadata: meta(),
            _phantom: std::marker::PhantomData,
        };
        strip_secret_metadata(&mut secret);
        let meta = secret.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-tls"));
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.annotations, None);
        assert_eq!(meta.labels, None);
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "a");
    }

    #[test]
    fn an_applied_version_is_pending_until_the_cache_or_a_read_sees_it() {
        let applied = Written::default();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        applied.record("apps", "web-tls", "9".into(), t0);
        // An older version delivered by the watch does not clear it.
        applied.seen("apps", "web-tls", "8");
        assert_eq!(applied.pending("apps", "web-tls", t0).as_deref(), Some("9"));
        applied.seen("apps", "web-tls", "9");
        assert!(applied.is_empty());
        applied.record("apps", "web-tls", "9".into(), t0);
        applied.forget("apps", "web-tls");
        assert!(applied.is_empty());
        // Trusted for a while only: a watch that relisted may never deliver it.
        applied.record("apps", "web-tls", "9".into(), t0);
        assert!(
            applied
                .pending("apps", "web-tls", t0 + WRITTEN_PATIENCE)
                .is_some()
        );
        assert!(
            applied
                .pending(
                    "apps",
                    "web-tls",
                    t0 + WRITTEN_PATIENCE + TimeDelta::seconds(1)
                )
                .is_none()
        );
        assert!(applied.is_empty());
    }
}
