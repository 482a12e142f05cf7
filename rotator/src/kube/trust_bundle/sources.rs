//! Reading a bundle's sources: what each holds now, or why it cannot be
//! read, as [`SourceRead`]s for the pure assembly.
//!
//! A source that does not exist, or lacks its key, is unreadable (the
//! bundle keeps its last good anchors and says so); any other API error
//! fails the reconcile, which backs off and writes nothing: a passing
//! API-server hiccup must not take a source's anchors out of every
//! target.

use ::kube::api::Api;
use ::kube::runtime::reflector::ObjectRef;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use lanyard_crds::api::{GROUP, IssuerKind, IssuerRef};
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::{BundleSource, KeySelector, TrustBundleSpec};
use lanyard_trust_bundle::SourceRead;
use lanyard_x509::Certificate;

use super::super::cache::Caches;
use super::super::context::{Context, Error};
use crate::secret::{CA_CRT, TLS_CRT};

/// Checks the spec as [`TrustBundleSpec::validate`] does, and what only
/// a cluster-scoped bundle must: an `issuerRef` names a `ClusterIssuer`
/// of `lanyard.dev` (an `Issuer` lives in a namespace the bundle has no
/// way to say).
pub fn check_spec(spec: &TrustBundleSpec) -> Result<(), String> {
    spec.validate()?;
    for (i, source) in spec.sources.iter().enumerate() {
        let Some(issuer) = &source.issuer_ref else {
            continue;
        };
        if issuer.group() != GROUP {
            return Err(format!(
                "spec.sources[{i}].issuerRef.group `{}` is not `{GROUP}`: only Lanyard's issuers have live anchors to read",
                issuer.group()
            ));
        }
        match issuer.issuer_kind() {
            Some(IssuerKind::ClusterIssuer) => {}
            Some(IssuerKind::Issuer) => {
                return Err(format!(
                    "spec.sources[{i}].issuerRef names the Issuer `{}` (kind {}): an Issuer lives in a namespace, \
                     and a TrustBundle is cluster-scoped with no way to say which; name a ClusterIssuer \
                     (kind: ClusterIssuer)",
                    issuer.name,
                    issuer
                        .kind
                        .as_deref()
                        .filter(|k| !k.is_empty())
                        .unwrap_or("Issuer, the default")
                ));
            }
            None => {
                return Err(format!(
                    "spec.sources[{i}].issuerRef.kind `{}` is not ClusterIssuer",
                    issuer.kind.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    Ok(())
}

/// How messages and the last good anchors name the source `i` of a
/// bundle whose trust namespace is `namespace`: `Secret lanyard/roots key
/// ca.crt`, `ConfigMap lanyard/roots key ca.crt`, `ClusterIssuer
/// linkerd-trust-anchor`, `spec.sources[2].inLine`.
pub fn source_name(source: &BundleSource, i: usize, namespace: &str) -> String {
    if let Some(KeySelector { name, key }) = &source.secret {
        format!("Secret {namespace}/{name} key {key}")
    } else if let Some(KeySelector { name, key }) = &source.config_map {
        format!("ConfigMap {namespace}/{name} key {key}")
    } else if let Some(IssuerRef { name, .. }) = &source.issuer_ref {
        format!("ClusterIssuer {name}")
    } else {
        format!("spec.sources[{i}].inLine")
    }
}

/// Reads every source of `spec` (checked by [`check_spec`]): Secrets and
/// ConfigMaps in the trust namespace ([`Context::cluster_resource_namespace`]),
/// a ClusterIssuer's CA Secret there too. An object the caches do not
/// hold is missing without a read: when it appears, its watch event
/// triggers the bundle.
pub(in super::super) async fn read_sources<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    spec: &TrustBundleSpec,
) -> Result<Vec<SourceRead>, Error> {
    let namespace = ctx.cluster_resource_namespace.as_str();
    let mut reads = Vec::with_capacity(spec.sources.len());
    for (i, source) in spec.sources.iter().enumerate() {
        let name = source_name(source, i, namespace);
        let read = if let Some(selector) = &source.secret {
            match read_secret(ctx, caches, namespace, &selector.name).await? {
                None => Err("the Secret does not exist".to_string()),
                Some(secret) => secret_key(&secret, &selector.key)
                    .ok_or_else(|| format!("the Secret has no key `{}`", selector.key)),
            }
        } else if let Some(selector) = &source.config_map {
            match read_config_map(ctx, caches, namespace, &selector.name).await? {
                None => Err("the ConfigMap does not exist".to_string()),
                Some(config_map) => config_map_key(&config_map, &selector.key)
                    .ok_or_else(|| format!("the ConfigMap has no key `{}`", selector.key)),
            }
        } else if let Some(issuer) = &source.issuer_ref {
            issuer_anchors(ctx, caches, namespace, &issuer.name).await?
        } else {
            Ok(source.in_line.clone().unwrap_or_default().into_bytes())
        };
        reads.push(match read {
            Ok(pem) => SourceRead::pem(name, pem),
            Err(reason) => SourceRead::unreadable(name, reason),
        });
    }
    Ok(reads)
}

/// The live anchors of the ClusterIssuer `name`, whose CA Secret lives in
/// `namespace`: the Secret's `ca.crt`, or else the last certificate of its
/// `tls.crt`, the same roots the Certificates it signs get in their
/// `ca.crt` (see [`crate::issuing::load_issuer`]).
async fn issuer_anchors<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    namespace: &str,
    name: &str,
) -> Result<Result<Vec<u8>, String>, Error> {
    let Some(issuer) = caches.cluster_issuers.get(&ObjectRef::new(name)) else {
        return Ok(Err("the ClusterIssuer does not exist".into()));
    };
    let Some(ca) = &issuer.spec.config.ca else {
        return Ok(Err(
            "the ClusterIssuer is not a CA issuer (selfSigned), so it has no anchors to distribute"
                .into(),
        ));
    };
    let secret_ref = format!("{namespace}/{}", ca.secret_name);
    let Some(secret) = read_secret(ctx, caches, namespace, &ca.secret_name).await? else {
        return Ok(Err(format!("its CA Secret `{secret_ref}` does not exist")));
    };
    if let Some(pem) = secret_key(&secret, CA_CRT) {
        return Ok(Ok(pem));
    }
    let Some(chain) = secret_key(&secret, TLS_CRT) else {
        return Ok(Err(format!(
            "its CA Secret `{secret_ref}` has neither `{CA_CRT}` nor `{TLS_CRT}`"
        )));
    };
    Ok(
        match Certificate::parse_pem_bundle(&chain, &format!("{secret_ref} {TLS_CRT}")) {
            Ok(chain) => match chain.last() {
                Some(root) => Ok(root.to_pem().into_bytes()),
                None => Err(format!(
                    "its CA Secret `{secret_ref}` has no `{CA_CRT}`, and its `{TLS_CRT}` holds no certificate"
                )),
            },
            Err(error) => Err(format!(
                "its CA Secret `{secret_ref}` has no `{CA_CRT}`, and its `{TLS_CRT}` is not PEM: {error}"
            )),
        },
    )
}

/// The Secret `namespace/name`, `None` when the caches have not seen it
/// or it is gone by the time it is read.
async fn read_secret<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, Error> {
    if caches.secret_version(namespace, name).is_none() {
        return Ok(None);
    }
    crate::kube::secret::get_secret(&ctx.client, namespace, name).await
}

/// The ConfigMap `namespace/name`, as [`read_secret`] reads a Secret.
async fn read_config_map<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, Error> {
    if caches
        .trust_config_maps
        .get(&ObjectRef::new(name).within(namespace))
        .is_none()
    {
        return Ok(None);
    }
    Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            what: format!("ConfigMap `{namespace}/{name}`"),
            source,
        })
}

fn secret_key(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|value| value.0.clone())
}

fn config_map_key(config_map: &ConfigMap, key: &str) -> Option<Vec<u8>> {
    config_map
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.clone().into_bytes())
        .or_else(|| {
            config_map
                .binary_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|value| value.0.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::trust_bundle::{BundleTarget, TargetKey};

    fn spec_with(source: BundleSource) -> TrustBundleSpec {
        TrustBundleSpec {
            sources: vec![source],
            target: BundleTarget {
                config_map: TargetKey {
                    key: "ca-bundle.crt".into(),
                },
                secret: None,
                namespace_selector: None,
            },
            propagation_delay: None,
        }
    }

    fn issuer_source(kind: Option<&str>, group: Option<&str>) -> BundleSource {
        BundleSource {
            issuer_ref: Some(IssuerRef {
                name: "linkerd-trust-anchor".into(),
                kind: kind.map(Into::into),
                group: group.map(Into::into),
            }),
            ..BundleSource::default()
        }
    }

    #[test]
    fn a_bundle_names_only_cluster_issuers_of_lanyard() {
        let cases: [(&str, BundleSource, Option<&str>); 5] = [
            (
                "accepts a ClusterIssuer",
                issuer_source(Some("ClusterIssuer"), None),
                None,
            ),
            (
                "refuses an Issuer named by the default kind",
                issuer_source(None, None),
                Some(
                    "spec.sources[0].issuerRef names the Issuer `linkerd-trust-anchor` (kind Issuer, the default): an Issuer lives in a namespace",
                ),
            ),
            (
                "refuses an Issuer named by its kind",
                issuer_source(Some("Issuer"), None),
                Some("(kind Issuer): an Issuer lives in a namespace"),
            ),
            (
                "refuses another group's issuer",
                issuer_source(Some("ClusterIssuer"), Some("cert-manager.io")),
                Some("spec.sources[0].issuerRef.group `cert-manager.io` is not `lanyard.dev`"),
            ),
            (
                "refuses a kind that is no issuer",
                issuer_source(Some("Vault"), None),
                Some("spec.sources[0].issuerRef.kind `Vault` is not ClusterIssuer"),
            ),
        ];
        for (sentence, source, expected) in cases {
            match (check_spec(&spec_with(source)), expected) {
                (Ok(()), None) => {}
                (Err(message), Some(expected)) => {
                    assert!(message.contains(expected), "{sentence}: {message}");
                }
                (got, _) => panic!("{sentence}: {got:?}"),
            }
        }
    }

    #[test]
    fn sources_are_named_by_what_they_read() {
        let secret = BundleSource {
            secret: Some(KeySelector {
                name: "roots".into(),
                key: "ca.crt".into(),
            }),
            ..BundleSource::default()
        };
        let config_map = BundleSource {
            config_map: Some(KeySelector {
                name: "roots".into(),
                key: "ca.crt".into(),
            }),
            ..BundleSource::default()
        };
        let in_line = BundleSource {
            in_line: Some(String::new()),
            ..BundleSource::default()
        };
        let issuer = issuer_source(Some("ClusterIssuer"), None);
        let names: Vec<String> = [secret, config_map, issuer, in_line]
            .iter()
            .enumerate()
            .map(|(i, source)| source_name(source, i, "lanyard"))
            .collect();
        assert_eq!(
            names,
            [
                "Secret lanyard/roots key ca.crt",
                "ConfigMap lanyard/roots key ca.crt",
                "ClusterIssuer linkerd-trust-anchor",
                "spec.sources[3].inLine",
            ]
        );
    }
}
