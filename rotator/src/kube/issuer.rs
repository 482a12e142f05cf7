//! The issuer reconcile, one controller per kind: read an `Issuer`'s or
//! `ClusterIssuer`'s CA Secret, load it, and record the result as its
//! `Ready` condition and in the metrics. Also how a Certificate's reconcile
//! reads the issuer it names.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::Action;
use ::kube::{Client, Resource, ResourceExt};
use chrono::{DateTime, Utc};
use lanyard_crds::api::{ClusterIssuer, Issuer, IssuerConfig, IssuerKind, IssuerStatus};
use lanyard_crds::linkerd::GENERATE_ANCHOR_ANNOTATION;
use lanyard_crds::time::Clock;
use tracing::{debug, info, warn};

use super::cache::{Caches, LoadedIssuer};
use super::certificate::STALE_REQUEUE;
use super::context::{Context, Error, error_backoff};
use super::secret::{create_tls_secret, get_secret};
use super::{FIELD_MANAGER, ISSUER_READY_MESSAGE, issuer_status, secret_data};
use crate::issuer_ref::{IssuerTarget, issuer_target};
use crate::issuing::{IssuerError, IssuerMaterial, load_issuer};
use crate::metrics::Metrics;

/// How often an issuer is checked again when nothing about it changes: a
/// CA that is valid now expires, or becomes valid, with time alone.
pub const ISSUER_REQUEUE: Duration = Duration::from_secs(300);

/// The signing material of the issuer `target` names, from the caches;
/// `None` when the issuer does not exist.
pub(super) async fn issuer_material<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    target: &IssuerTarget,
    now: DateTime<Utc>,
) -> Result<Option<LoadedIssuer>, Error> {
    let Some((config, version)) = caches.issuer(target) else {
        return Ok(None);
    };
    load_material(ctx, caches, target, &config, &version, now)
        .await
        .map(Some)
}

/// The signing material of the issuer `target` at `issuer_version` (whose
/// config is `config`): kept from an earlier load while the issuer and its
/// CA Secret are unchanged, else loaded, reading the CA Secret (whose
/// contents the caches do not hold) once.
async fn load_material<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    target: &IssuerTarget,
    config: &IssuerConfig,
    issuer_version: &str,
    now: DateTime<Utc>,
) -> Result<LoadedIssuer, Error> {
    // load_issuer validates the config first; read the Secret only when it
    // would be used.
    let secret_name = match (&config.ca, config.validate()) {
        (Some(ca), Ok(())) => Some(ca.secret_name.as_str()),
        _ => None,
    };
    let namespace = target.secret_namespace.as_str();
    let secret_ref = format!("{namespace}/{}", secret_name.unwrap_or_default());
    // A Secret the caches have not seen is missing, without a read: when it
    // appears, its watch event triggers the issuer and its Certificates.
    let secret_version = secret_name.and_then(|name| caches.secret_version(namespace, name));
    let load = async {
        let ca_secret = match (secret_name, &secret_version) {
            (Some(name), Some(_)) => get_secret(&ctx.client, namespace, name)
                .await?
                .as_ref()
                .map(secret_data),
            _ => None,
        };
        let material = load_issuer(
            target.kind,
            &target.name,
            config,
            ca_secret.as_ref(),
            &secret_ref,
            now,
        );
        // Its series change only when it is loaded again.
        observe_issuer(&ctx.metrics, target, &material);
        Ok(material)
    };
    ctx.materials
        .get_or_load(target, issuer_version, secret_version.as_deref(), now, load)
        .await
}

/// Records what loading the issuer `target` gave: its series, or none
/// when it does not exist.
pub(super) fn observe_issuer(
    metrics: &Metrics,
    target: &IssuerTarget,
    material: &Result<IssuerMaterial, IssuerError>,
) {
    let (kind, namespace, name) = (target.kind, target.namespace.as_str(), target.name.as_str());
    match material {
        Ok(material) => metrics.observe_issuer(kind, namespace, name, Some(material)),
        Err(IssuerError::NotFound { .. }) => metrics.forget_issuer(kind, namespace, name),
        Err(_) => metrics.observe_issuer(kind, namespace, name, None),
    }
}

/// What [`reconcile_issuer`] needs of an issuer kind: implemented by
/// [`Issuer`] and [`ClusterIssuer`].
pub trait IssuerResource:
    Resource<DynamicType = ()>
    + Clone
    + fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Which kind this is.
    const KIND: IssuerKind;
    /// How the issuer signs.
    fn config(&self) -> &IssuerConfig;
    /// The status as last written.
    fn issuer_status(&self) -> Option<&IssuerStatus>;
    /// The API the issuer is written through: `namespace`'s for an Issuer,
    /// the cluster's for a ClusterIssuer (which ignores `namespace`).
    fn api(client: Client, namespace: &str) -> Api<Self>;
}

impl IssuerResource for Issuer {
    const KIND: IssuerKind = IssuerKind::Issuer;
    fn config(&self) -> &IssuerConfig {
        &self.spec.config
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
}

impl IssuerResource for ClusterIssuer {
    const KIND: IssuerKind = IssuerKind::ClusterIssuer;
    fn config(&self) -> &IssuerConfig {
        &self.spec.config
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _namespace: &str) -> Api<Self> {
        Api::all(client)
    }
}

/// The body of an issuer's status merge patch, guarded by the
/// `resourceVersion` the reconcile read (see [`status_patch`]).
#[derive(Debug, serde::Serialize)]
struct IssuerStatusPatch<'a> {
    metadata: VersionGuard<'a>,
    status: &'a IssuerStatus,
}

#[derive(Debug, serde::Serialize)]
struct VersionGuard<'a> {
    #[serde(rename = "resourceVersion", skip_serializing_if = "Option::is_none")]
    resource_version: Option<&'a str>,
}

/// Reconciles one Issuer or ClusterIssuer: read its CA Secret (in the
/// Issuer's namespace, or [`Context::cluster_resource_namespace`] for a
/// ClusterIssuer), load it, record the result as the `Ready` condition
/// (patching the status only when it changed) and in the metrics; check
/// again after [`ISSUER_REQUEUE`].
pub async fn reconcile_issuer<K: IssuerResource, C: Clock>(
    issuer: Arc<K>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let kind = K::KIND;
    let name = issuer.name_any();
    // Empty for a ClusterIssuer, as in the metrics' labels.
    let namespace = issuer.namespace().unwrap_or_default();
    if kind == IssuerKind::Issuer && namespace.is_empty() {
        return Err(Error::IssuerNoNamespace { name });
    }
    let target = issuer_target(kind, &namespace, &name, &ctx.cluster_resource_namespace);
    let qualified = target.qualified_name();
    if issuer.meta().deletion_timestamp.is_some() {
        // Going away: a status written now would be thrown away with it.
        return Ok(Action::await_change());
    }
    let now = ctx.clock.now();
    generate_anchor(&ctx, issuer.as_ref(), &target, now).await?;
    let loaded = load_material(
        &ctx,
        &ctx.caches(),
        &target,
        issuer.config(),
        &issuer.resource_version().unwrap_or_default(),
        now,
    )
    .await?;
    let material = loaded.as_ref();
    observe_issuer(&ctx.metrics, &target, material);

    let current = issuer.issuer_status();
    let status = issuer_status(current, material.as_ref(), issuer.meta().generation, now);
    if current != Some(&status) {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = IssuerStatusPatch {
            metadata: VersionGuard {
                resource_version: issuer.meta().resource_version.as_deref(),
            },
            status: &status,
        };
        match K::api(ctx.client.clone(), &namespace)
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Read from a stale cached copy: decide again from fresh state.
            Err(::kube::Error::Api(response)) if response.code == 409 => {
                debug!(issuer = %qualified, %kind, "status changed since this reconcile read it; looking again");
                return Ok(Action::requeue(STALE_REQUEUE));
            }
            Err(source) => {
                return Err(Error::PatchIssuerStatus {
                    kind,
                    name: qualified.clone(),
                    source,
                });
            }
        }
        match material {
            Ok(_) => info!(issuer = %qualified, %kind, "issuer is ready: {ISSUER_READY_MESSAGE}"),
            Err(error) => {
                warn!(issuer = %qualified, %kind, reason = error.reason(), "issuer is not ready: {error}");
            }
        }
    } else {
        debug!(issuer = %qualified, %kind, "issuer status is current");
    }
    ctx.clear_api_failures(kind.as_str(), &namespace, &name);
    Ok(Action::requeue(ISSUER_REQUEUE))
}

/// For a CA issuer annotated [`GENERATE_ANCHOR_ANNOTATION`] (the chart's
/// and `lanyard install`'s default, as `lanyard up` makes its anchor on
/// first start) whose Secret
/// does not exist: makes a new self-signed anchor (ECDSA P-256, 10 years)
/// and creates its Secret. The key is made here and goes only into that
/// Secret. A Secret that appears meanwhile (another replica, the user) is
/// kept: creation never overwrites.
async fn generate_anchor<K: IssuerResource, C: Clock>(
    ctx: &Context<C>,
    issuer: &K,
    target: &IssuerTarget,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let Some(common_name) = issuer
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(GENERATE_ANCHOR_ANNOTATION))
    else {
        return Ok(());
    };
    let Some(ca) = issuer.config().ca.as_ref() else {
        return Ok(());
    };
    let namespace = target.secret_namespace.as_str();
    if ctx
        .caches()
        .secret_version(namespace, &ca.secret_name)
        .is_some()
    {
        return Ok(());
    }
    if get_secret(&ctx.client, namespace, &ca.secret_name)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let anchor = match lanyard_issuer::TrustAnchor::generate_named(
        common_name,
        lanyard_issuer::DEFAULT_ANCHOR_LIFETIME,
        lanyard_issuer::KeyAlgorithm::EcdsaP256,
        now,
    ) {
        Ok(anchor) => anchor,
        Err(error) => {
            // The status says why the issuer is not ready (its Secret is
            // missing); the log says why none was made.
            warn!(issuer = %target.qualified_name(), annotation = GENERATE_ANCHOR_ANNOTATION, "cannot make a trust anchor named `{common_name}`: {error}");
            return Ok(());
        }
    };
    let data = crate::anchor::anchor_secret(&anchor);
    if create_tls_secret(&ctx.client, namespace, &ca.secret_name, &data).await? {
        info!(issuer = %target.qualified_name(), secret = %format!("{namespace}/{}", ca.secret_name), "made a new trust anchor `{common_name}`");
    }
    Ok(())
}

/// Backs off an issuer whose reconcile failed against the API server, as
/// [`error_policy`] does a Certificate.
pub fn issuer_error_policy<K: IssuerResource, C: Clock>(
    issuer: Arc<K>,
    error: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let namespace = issuer.namespace().unwrap_or_default();
    let name = issuer.name_any();
    let attempts = ctx.record_api_failure(K::KIND.as_str(), namespace.clone(), name.clone());
    let delay = error_backoff(attempts);
    warn!(
        kind = %K::KIND,
        issuer = %if namespace.is_empty() { name } else { format!("{namespace}/{name}") },
        attempts,
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use lanyard_crds::api::Condition;

    #[test]
    fn an_issuer_status_keeps_its_transition_time_until_ready_changes() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let later = t0 + chrono::TimeDelta::hours(1);
        let missing = IssuerError::SecretNotFound {
            secret: "lanyard/ca".into(),
        };

        let ready = issuer_status(None, Ok(&IssuerMaterial::SelfSigned), Some(1), t0);
        let [condition] = ready.conditions.as_slice() else {
            panic!("{ready:?}")
        };
        assert_eq!(condition.type_, "Ready");
        assert!(condition.is_true());
        assert_eq!(condition.reason.as_deref(), Some("KeyPairVerified"));
        assert_eq!(condition.message.as_deref(), Some("Signing CA verified"));
        assert_eq!(condition.observed_generation, Some(1));
        assert_eq!(condition.last_transition_time, Some(t0));

        // Unchanged: the same status, so no write.
        let again = issuer_status(
            Some(&ready),
            Ok(&IssuerMaterial::SelfSigned),
            Some(1),
            later,
        );
        assert_eq!(again, ready);
        // A new generation is recorded, the transition time kept.
        let next = issuer_status(
            Some(&ready),
            Ok(&IssuerMaterial::SelfSigned),
            Some(2),
            later,
        );
        assert_eq!(next.conditions[0].observed_generation, Some(2));
        assert_eq!(next.conditions[0].last_transition_time, Some(t0));

        // Not ready: the error's reason and message, a new transition time;
        // conditions of other types are kept.
        let mut with_other = ready.clone();
        with_other.conditions.push(Condition {
            type_: "Other".into(),
            status: "True".into(),
            reason: None,
            message: None,
            last_transition_time: None,
            observed_generation: None,
        });
        let failed = issuer_status(Some(&with_other), Err(&missing), Some(1), later);
        assert_eq!(failed.conditions.len(), 2);
        let condition = &failed.conditions[0];
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some("CASecretNotFound"));
        assert_eq!(
            condition.message.as_deref(),
            Some("the CA Secret `lanyard/ca` does not exist")
        );
        assert_eq!(condition.last_transition_time, Some(later));
        assert_eq!(failed.conditions[1].type_, "Other");
    }
}
