//! Which bundles a change concerns, and queueing them.
//!
//! Bundles are few (one or two per mesh), so each event looks through the
//! cached bundles for the ones it concerns instead of keeping an index as
//! the Certificates' `Dependents` does; events outside the trust
//! namespace cost one comparison.

use std::collections::BTreeMap;

use ::kube::ResourceExt;
use ::kube::runtime::reflector::{ObjectRef, Store};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_crds::api::ClusterIssuer;
use lanyard_crds::trust_bundle::TrustBundle;

use super::super::cache::Caches;
use super::BUNDLE_LABEL;

/// Finds the bundles a change concerns, from the controller's stores, and
/// queues them for reconcile.
#[derive(Clone)]
pub(in super::super) struct BundleTriggers {
    bundles: Store<TrustBundle>,
    cluster_issuers: Store<ClusterIssuer>,
    targets: Store<ConfigMap>,
    trust_namespace: String,
    trigger: UnboundedSender<ObjectRef<TrustBundle>>,
}

impl BundleTriggers {
    /// Triggers from `caches`' stores, for a controller whose bundles read
    /// their sources in `trust_namespace`, queueing on `trigger`.
    pub(in super::super) fn new(
        caches: &Caches,
        trust_namespace: String,
        trigger: UnboundedSender<ObjectRef<TrustBundle>>,
    ) -> Self {
        BundleTriggers {
            bundles: caches.trust_bundles.clone(),
            cluster_issuers: caches.cluster_issuers.clone(),
            targets: caches.bundle_config_maps.clone(),
            trust_namespace,
            trigger,
        }
    }

    fn queue(&self, bundles: impl IntoIterator<Item = ObjectRef<TrustBundle>>) {
        for bundle in bundles {
            // The controller has stopped: nothing to queue for.
            let _ = self.trigger.unbounded_send(bundle);
        }
    }

    /// The bundles whose sources satisfy `reads`.
    fn reading(
        &self,
        reads: impl Fn(&lanyard_crds::trust_bundle::BundleSource) -> bool,
    ) -> Vec<ObjectRef<TrustBundle>> {
        self.bundles
            .state()
            .iter()
            .filter(|bundle| bundle.spec.sources.iter().any(&reads))
            .map(|bundle| ObjectRef::from_obj(bundle.as_ref()))
            .collect()
    }

    /// A bundle changed: itself.
    pub(in super::super) fn bundle_changed(&self, bundle: &TrustBundle) {
        self.queue([ObjectRef::from_obj(bundle)]);
    }

    /// The bundles reading the Secret `secret`: as a source, or as the CA
    /// Secret of a ClusterIssuer they name. Only Secrets of the trust
    /// namespace are read.
    pub(in super::super) fn for_secret(&self, secret: &ObjectMeta) -> Vec<ObjectRef<TrustBundle>> {
        if secret.namespace.as_deref() != Some(self.trust_namespace.as_str()) {
            return Vec::new();
        }
        let name = secret.name.as_deref().unwrap_or_default();
        self.reading(|source| {
            source.secret.as_ref().is_some_and(|s| s.name == name)
                || source.issuer_ref.as_ref().is_some_and(|issuer| {
                    self.cluster_issuers
                        .get(&ObjectRef::new(&issuer.name))
                        .and_then(|issuer| issuer.spec.config.ca.clone())
                        .is_some_and(|ca| ca.secret_name == name)
                })
        })
    }

    /// Queues [`Self::for_secret`].
    pub(in super::super) fn secret_changed(&self, secret: &ObjectMeta) {
        self.queue(self.for_secret(secret));
    }

    /// Queues the bundles reading the ConfigMap `config_map` of the trust
    /// namespace.
    pub(in super::super) fn config_map_changed(&self, config_map: &ObjectMeta) {
        if config_map.namespace.as_deref() != Some(self.trust_namespace.as_str()) {
            return;
        }
        let name = config_map.name.as_deref().unwrap_or_default();
        self.queue(
            self.reading(|source| source.config_map.as_ref().is_some_and(|c| c.name == name)),
        );
    }

    /// Queues the bundles naming the ClusterIssuer `name` (its CA Secret
    /// may have changed).
    pub(in super::super) fn cluster_issuer_changed(&self, name: &str) {
        self.queue(self.reading(|source| {
            source
                .issuer_ref
                .as_ref()
                .is_some_and(|issuer| issuer.name == name)
        }));
    }

    /// The bundles a change to the namespace `namespace` concerns: those
    /// whose selector matches its labels (it may be new, or newly
    /// labelled), and those with a target in it (it may have lost the
    /// label, or be going).
    pub(in super::super) fn for_namespace(
        &self,
        namespace: &ObjectMeta,
    ) -> Vec<ObjectRef<TrustBundle>> {
        let name = namespace.name.as_deref().unwrap_or_default();
        let no_labels = BTreeMap::new();
        let labels = namespace.labels.as_ref().unwrap_or(&no_labels);
        self.bundles
            .state()
            .iter()
            .filter(|bundle| {
                let selected = bundle
                    .spec
                    .target
                    .namespace_selector
                    .as_ref()
                    .is_none_or(|selector| selector.matches(labels));
                selected
                    || self
                        .targets
                        .get(&ObjectRef::new(&bundle.name_any()).within(name))
                        .is_some()
            })
            .map(|bundle| ObjectRef::from_obj(bundle.as_ref()))
            .collect()
    }

    /// Queues [`Self::for_namespace`].
    pub(in super::super) fn namespace_changed(&self, namespace: &ObjectMeta) {
        self.queue(self.for_namespace(namespace));
    }

    /// Queues the bundle that wrote `target` (its [`BUNDLE_LABEL`]), so a
    /// target edited or deleted by hand is written back.
    pub(in super::super) fn target_changed(&self, target: &ObjectMeta) {
        let Some(bundle) = target
            .labels
            .as_ref()
            .and_then(|labels| labels.get(BUNDLE_LABEL))
        else {
            return;
        };
        let bundle = ObjectRef::new(bundle);
        if self.bundles.get(&bundle).is_some() {
            self.queue([bundle]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::runtime::watcher;
    use futures::channel::mpsc::unbounded;
    use lanyard_crds::api::{ClusterIssuerSpec, IssuerRef};
    use lanyard_crds::trust_bundle::{
        BundleSource, BundleTarget, KeySelector, NamespaceSelector, TargetKey, TrustBundleSpec,
    };

    fn bundle(name: &str, source: BundleSource, selector: Option<(&str, &str)>) -> TrustBundle {
        TrustBundle::new(
            name,
            TrustBundleSpec {
                sources: vec![source],
                target: BundleTarget {
                    config_map: TargetKey {
                        key: "ca-bundle.crt".into(),
                    },
                    secret: None,
                    namespace_selector: selector.map(|(k, v)| NamespaceSelector {
                        match_labels: BTreeMap::from([(k.to_string(), v.to_string())]),
                    }),
                },
                propagation_delay: None,
            },
        )
    }

    fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    fn names(refs: Vec<ObjectRef<TrustBundle>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_change_queues_the_bundles_it_concerns() {
        let (caches, mut writers) = Caches::new();
        let from_secret = bundle(
            "from-secret",
            BundleSource {
                secret: Some(KeySelector {
                    name: "roots".into(),
                    key: "ca.crt".into(),
                }),
                ..BundleSource::default()
            },
            Some(("mesh", "linkerd")),
        );
        let from_issuer = bundle(
            "from-issuer",
            BundleSource {
                issuer_ref: Some(IssuerRef {
                    name: "anchor".into(),
                    kind: Some("ClusterIssuer".into()),
                    group: None,
                }),
                ..BundleSource::default()
            },
            None,
        );
        for b in [from_secret, from_issuer] {
            writers
                .trust_bundles
                .apply_watcher_event(&watcher::Event::Apply(b));
        }
        writers
            .cluster_issuers
            .apply_watcher_event(&watcher::Event::Apply(ClusterIssuer::new(
                "anchor",
                ClusterIssuerSpec {
                    config: lanyard_crds::api::IssuerConfig {
                        ca: Some(lanyard_crds::api::CaIssuer {
                            secret_name: "anchor-ca".into(),
                        }),
                        self_signed: None,
                    },
                },
            )));
        let mut target = ConfigMap {
            metadata: meta(Some("old"), "from-secret", &[(BUNDLE_LABEL, "from-secret")]),
            ..ConfigMap::default()
        };
        target.data = None;
        writers
            .bundle_config_maps
            .apply_watcher_event(&watcher::Event::Apply(target));
        let (trigger, _queued) = unbounded();
        let triggers = BundleTriggers::new(&caches, "lanyard".into(), trigger);

        let cases = [
            (
                "a source Secret concerns the bundle reading it",
                triggers.for_secret(&meta(Some("lanyard"), "roots", &[])),
                vec!["from-secret"],
            ),
            (
                "a ClusterIssuer's CA Secret concerns the bundle naming the issuer",
                triggers.for_secret(&meta(Some("lanyard"), "anchor-ca", &[])),
                vec!["from-issuer"],
            ),
            (
                "a Secret of that name in another namespace concerns none",
                triggers.for_secret(&meta(Some("apps"), "roots", &[])),
                vec![],
            ),
            (
                "a selected namespace concerns the selecting bundle and the one selecting all",
                triggers.for_namespace(&meta(None, "apps", &[("mesh", "linkerd")])),
                vec!["from-issuer", "from-secret"],
            ),
            (
                "an unselected namespace concerns only the bundle selecting all",
                triggers.for_namespace(&meta(None, "apps", &[])),
                vec!["from-issuer"],
            ),
            (
                "a namespace holding a bundle's target concerns that bundle",
                triggers.for_namespace(&meta(None, "old", &[])),
                vec!["from-issuer", "from-secret"],
            ),
        ];
        for (sentence, found, expected) in cases {
            assert_eq!(names(found), expected, "{sentence}");
        }
    }
}
