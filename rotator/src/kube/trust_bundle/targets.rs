//! A bundle's targets: which namespaces it selects, the ConfigMap (and
//! Secret) it applies in each, and their removal from namespaces it no
//! longer selects, as trust-manager does.
//!
//! Targets are written by server-side apply as
//! [`FIELD_MANAGER`](super::super::FIELD_MANAGER), holding only the bundle's
//! key, [`BUNDLE_LABEL`] and an ownerReference to the bundle (so deleting
//! the bundle lets the garbage collector take them); keys and labels others
//! add stay. A target the cache already holds as it would be written is
//! not written again: a periodic reconcile of a bundle in a thousand
//! namespaces costs no request.

use std::collections::{BTreeMap, BTreeSet};

use ::kube::api::{Api, DeleteParams, Patch, PatchParams};
use ::kube::core::NamespaceResourceScope;
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::reflector::{ObjectRef, Store};
use ::kube::{Resource, ResourceExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::{NamespaceSelector, TrustBundle};
use tracing::{debug, info, warn};

use super::super::FIELD_MANAGER;
use super::super::cache::Caches;
use super::super::context::{Context, Error};
use super::BUNDLE_LABEL;

/// The type of the Secret a bundle writes.
pub const BUNDLE_SECRET_TYPE: &str = "Opaque";

/// Whether `selector` (none selects all) selects the namespace `meta`: a
/// namespace being deleted is selected by none, since nothing new can be
/// written into it.
pub fn selects(selector: Option<&NamespaceSelector>, meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_none()
        && selector.is_none_or(|selector| {
            selector.matches(meta.labels.as_ref().unwrap_or(&BTreeMap::new()))
        })
}

/// The namespaces `selector` selects among those cached, sorted.
pub fn selected_namespaces(
    namespaces: &Store<PartialObjectMeta<Namespace>>,
    selector: Option<&NamespaceSelector>,
) -> Vec<String> {
    let mut selected: Vec<String> = namespaces
        .state()
        .iter()
        .filter(|namespace| selects(selector, &namespace.metadata))
        .map(|namespace| namespace.name_any())
        .collect();
    selected.sort();
    selected
}

/// The metadata every target of `bundle` in `namespace` carries: the
/// bundle's name, [`BUNDLE_LABEL`], and an ownerReference to the bundle
/// when it has a uid (one read from the API server does).
fn target_metadata(bundle: &TrustBundle, namespace: &str) -> ObjectMeta {
    let name = bundle.name_any();
    ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(BUNDLE_LABEL.to_string(), name)])),
        owner_references: bundle.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The server-side apply configuration of `bundle`'s ConfigMap in
/// `namespace`: `data[key]` = `pem`.
pub fn applied_config_map(
    bundle: &TrustBundle,
    namespace: &str,
    key: &str,
    pem: &str,
) -> ConfigMap {
    ConfigMap {
        metadata: target_metadata(bundle, namespace),
        data: Some(BTreeMap::from([(key.to_string(), pem.to_string())])),
        ..ConfigMap::default()
    }
}

/// The server-side apply configuration of `bundle`'s Secret in
/// `namespace`: `Opaque`, `data[key]` = `pem`.
pub fn applied_bundle_secret(
    bundle: &TrustBundle,
    namespace: &str,
    key: &str,
    pem: &str,
) -> Secret {
    Secret {
        metadata: target_metadata(bundle, namespace),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(pem.as_bytes().to_vec()),
        )])),
        type_: Some(BUNDLE_SECRET_TYPE.to_string()),
        ..Secret::default()
    }
}

/// Whether a cached target already holds what would be applied: the
/// bundle's label, `value` under `key`, and the ownerReference (when the
/// bundle has a uid).
fn holds(meta: &ObjectMeta, bundle: &TrustBundle, value: Option<&[u8]>, pem: &str) -> bool {
    let name = bundle.name_any();
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(BUNDLE_LABEL))
        .is_some_and(|label| *label == name);
    let owned = bundle.metadata.uid.as_ref().is_none_or(|uid| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|owner| &owner.uid == uid && owner.controller == Some(true))
    });
    labelled && owned && value == Some(pem.as_bytes())
}

/// Whether an apply failed because its namespace is gone or going: the
/// API server answers 404 for a namespace that no longer exists, and 403
/// (or 409) "because it is being terminated" for one being deleted. Such
/// a namespace is skipped, not a failure of the bundle.
pub fn namespace_gone(error: &::kube::Error) -> bool {
    match error {
        ::kube::Error::Api(status) => {
            status.code == 404
                || (matches!(status.code, 403 | 409)
                    && (status.message.contains("being terminated") || status.reason == "NotFound"))
        }
        _ => false,
    }
}

/// What writing the targets came to.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// The namespaces whose ConfigMap holds the bundle, sorted.
    pub namespaces: Vec<String>,
    /// How many objects were applied (the rest were current).
    pub applied: usize,
}

/// Applies `bundle`'s ConfigMap (and Secret, if it asks for one) holding
/// `pem` in each of `selected`, skipping the namespaces that vanish
/// meanwhile. Every namespace is tried; the first other failure is then
/// returned.
pub(super) async fn write_targets<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    bundle: &TrustBundle,
    selected: &[String],
    pem: &str,
) -> Result<Written, Error> {
    let name = bundle.name_any();
    let target = &bundle.spec.target;
    let mut written = Written::default();
    let mut failure = None;
    for namespace in selected {
        let key = &target.config_map.key;
        let current = caches
            .bundle_config_maps
            .get(&ObjectRef::new(&name).within(namespace))
            .is_some_and(|c| {
                let value = c.data.as_ref().and_then(|data| data.get(key.as_str()));
                holds(&c.metadata, bundle, value.map(String::as_bytes), pem)
            });
        if !current {
            let applied = applied_config_map(bundle, namespace, key, pem);
            match apply(ctx, &name, namespace, "ConfigMap", &applied).await {
                Ok(Applied::Written) => written.applied += 1,
                Ok(Applied::NamespaceGone) => continue,
                Err(error) => {
                    failure.get_or_insert(error);
                    continue;
                }
            }
        }
        if let Some(secret_target) = &target.secret {
            let at = ObjectRef::<Secret>::new(&name).within(namespace);
            let current = caches.bundle_secrets.get(&at).is_some_and(|s| {
                let value = s
                    .data
                    .as_ref()
                    .and_then(|data| data.get(&secret_target.key));
                holds(&s.metadata, bundle, value.map(|v| v.0.as_slice()), pem)
            });
            // A Certificate's Secret of the same name is applied by the
            // same field manager: the bundle's apply would take its keys.
            let certificates = caches.secrets.get(&at).is_some();
            if certificates {
                warn!(bundle = %name, %namespace, "a Certificate's Secret has the bundle's name there; the bundle's Secret is not written");
            }
            if !current && !certificates {
                let applied = applied_bundle_secret(bundle, namespace, &secret_target.key, pem);
                match apply(ctx, &name, namespace, "Secret", &applied).await {
                    Ok(Applied::Written) => written.applied += 1,
                    Ok(Applied::NamespaceGone) => continue,
                    Err(error) => {
                        failure.get_or_insert(error);
                    }
                }
            }
        }
        written.namespaces.push(namespace.clone());
    }
    if written.applied > 0 {
        info!(bundle = %name, applied = written.applied, namespaces = written.namespaces.len(), "wrote the bundle's targets");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(written),
    }
}

/// What applying one target came to.
enum Applied {
    Written,
    /// The namespace is gone or going: skipped.
    NamespaceGone,
}

/// Applies the target `object` (`kind` ConfigMap or Secret) of the bundle
/// `name` in `namespace`, by server-side apply, forced.
async fn apply<K>(
    ctx: &Context<impl Clock>,
    name: &str,
    namespace: &str,
    kind: &'static str,
    object: &K,
) -> Result<Applied, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match Api::<K>::namespaced(ctx.client.clone(), namespace)
        .patch(name, &params, &Patch::Apply(object))
        .await
    {
        Ok(_) => Ok(Applied::Written),
        Err(error) if namespace_gone(&error) => {
            warn!(bundle = %name, %namespace, "the namespace went while the bundle's {kind} was written; skipped: {error}");
            Ok(Applied::NamespaceGone)
        }
        Err(source) => {
            warn!(bundle = %name, %namespace, "writing the bundle's {kind}: {source}");
            Err(Error::WriteBundleTarget {
                bundle: name.to_string(),
                target: format!("{kind} `{namespace}/{name}`"),
                source,
            })
        }
    }
}

/// Deletes `bundle`'s ConfigMaps from the namespaces it no longer selects,
/// and its Secrets from those and, when it no longer asks for a Secret,
/// from every namespace. Only objects named after the bundle and carrying
/// its label are touched; a namespace being deleted takes its own along.
pub(super) async fn remove_targets<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    bundle: &TrustBundle,
    selected: &[String],
) -> Result<usize, Error> {
    let name = bundle.name_any();
    let selected: BTreeSet<&str> = selected.iter().map(String::as_str).collect();
    let stale = |meta: &ObjectMeta, keep: &dyn Fn(&str) -> bool| -> Option<String> {
        let namespace = meta.namespace.clone()?;
        let ours = meta.name.as_deref() == Some(name.as_str())
            && meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(BUNDLE_LABEL))
                .is_some_and(|label| *label == name);
        let going = caches
            .namespaces
            .get(&ObjectRef::new(&namespace))
            .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
        (ours && !going && !keep(&namespace)).then_some(namespace)
    };
    let keep_config_map = |namespace: &str| selected.contains(namespace);
    let keep_secret =
        |namespace: &str| bundle.spec.target.secret.is_some() && selected.contains(namespace);
    let config_maps: BTreeSet<String> = caches
        .bundle_config_maps
        .state()
        .iter()
        .filter_map(|c| stale(&c.metadata, &keep_config_map))
        .collect();
    let secrets: BTreeSet<String> = caches
        .bundle_secrets
        .state()
        .iter()
        .filter_map(|s| stale(&s.metadata, &keep_secret))
        .collect();
    let mut removed = 0;
    for namespace in &config_maps {
        let deleted = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
            .delete(&name, &DeleteParams::default())
            .await;
        removed += removal("ConfigMap", &name, namespace, deleted)?;
    }
    for namespace in &secrets {
        let deleted = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
            .delete(&name, &DeleteParams::default())
            .await;
        removed += removal("Secret", &name, namespace, deleted)?;
    }
    Ok(removed)
}

/// What one deletion came to: 1 if it removed the target, 0 if it was
/// gone already.
fn removal<T>(
    kind: &'static str,
    name: &str,
    namespace: &str,
    deleted: Result<T, ::kube::Error>,
) -> Result<usize, Error> {
    match deleted {
        Ok(_) => {
            info!(bundle = %name, %namespace, "removed the bundle's {kind} from a namespace it no longer selects");
            Ok(1)
        }
        Err(::kube::Error::Api(status)) if status.code == 404 => {
            debug!(bundle = %name, %namespace, "the bundle's {kind} was gone already");
            Ok(0)
        }
        Err(source) => Err(Error::RemoveBundleTarget {
            bundle: name.to_string(),
            target: format!("{kind} `{namespace}/{name}`"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn namespace(labels: &[(&str, &str)], deleting: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some("apps".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            deletion_timestamp: deleting.then(|| Time("2026-01-01T00:00:00Z".parse().unwrap())),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_bundle_selects_namespaces_by_label_and_never_one_being_deleted() {
        let mesh = NamespaceSelector {
            match_labels: BTreeMap::from([("mesh".to_string(), "linkerd".to_string())]),
        };
        let cases = [
            (
                "no selector selects a plain namespace",
                None,
                namespace(&[], false),
                true,
            ),
            (
                "no selector does not select a namespace being deleted",
                None,
                namespace(&[], true),
                false,
            ),
            (
                "a selector selects a namespace with its labels",
                Some(&mesh),
                namespace(&[("mesh", "linkerd"), ("team", "a")], false),
                true,
            ),
            (
                "a selector does not select a namespace with another value",
                Some(&mesh),
                namespace(&[("mesh", "istio")], false),
                false,
            ),
            (
                "a selector does not select a namespace without the label",
                Some(&mesh),
                namespace(&[], false),
                false,
            ),
            (
                "a selector does not select a matching namespace being deleted",
                Some(&mesh),
                namespace(&[("mesh", "linkerd")], true),
                false,
            ),
        ];
        for (sentence, selector, meta, expected) in cases {
            assert_eq!(selects(selector, &meta), expected, "{sentence}");
        }
    }

    fn api_error(code: u16, reason: &str, message: &str) -> ::kube::Error {
        ::kube::Error::Api(
            ::kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn an_apply_into_a_namespace_gone_or_going_is_told_apart_from_a_failure() {
        let cases = [
            (
                "a namespace that no longer exists",
                api_error(404, "NotFound", "namespaces \"apps\" not found"),
                true,
            ),
            (
                "a namespace being terminated (403)",
                api_error(
                    403,
                    "Forbidden",
                    "unable to create new content in namespace apps because it is being terminated",
                ),
                true,
            ),
            (
                "a namespace being terminated (409)",
                api_error(
                    409,
                    "Conflict",
                    "operation cannot be fulfilled: namespace apps is being terminated",
                ),
                true,
            ),
            (
                "a 409 NotFound",
                api_error(409, "NotFound", "not found"),
                true,
            ),
            (
                "a forbidden write",
                api_error(
                    403,
                    "Forbidden",
                    "configmaps is forbidden: User cannot patch resource",
                ),
                false,
            ),
            (
                "a conflict",
                api_error(409, "Conflict", "the object has been modified"),
                false,
            ),
            (
                "a server error",
                api_error(500, "InternalError", "etcd is down"),
                false,
            ),
        ];
        for (sentence, error, expected) in cases {
            assert_eq!(namespace_gone(&error), expected, "{sentence}");
        }
    }
}
