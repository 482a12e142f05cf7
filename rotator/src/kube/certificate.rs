//! The Certificate reconcile: gather a Certificate's inputs from the watch
//! caches, run the pure core, apply the Secret and write the status (only
//! when it changed).

use std::sync::Arc;
use std::time::Duration;

use ::kube::ResourceExt;
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::Action;
use ::kube::runtime::reflector::ObjectRef;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use lanyard_crds::api::{Certificate, IssuerKind};
use lanyard_crds::time::Clock;
use tracing::{debug, info, warn};

use super::cache::{Caches, LoadedIssuer, MANAGED_LABEL, MANAGED_LABEL_VALUE, strip_secret};
use super::context::{CERTIFICATE, Context, Error, error_backoff};
use super::issuer::{issuer_material, observe_issuer};
use super::{FIELD_MANAGER, applied_secret, secret, secret_data};
use crate::issuer_ref::resolve_issuer;
use crate::issuing::IssuerError;
use crate::reconcile::{Event, ResolvedIssuer, reconcile};

/// The longest a Certificate waits between reconciles even when nothing
/// is due: a missed watch event costs at most this long, and a renewal
/// months away never waits on one timer through clock jumps and sleeps.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3_600);
/// The shortest requeue, so a renewal due now does not spin.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// Reconciles one Certificate: take its issuer's signing material (loaded
/// once per version of the issuer and its CA Secret) and its own Secret
/// from the caches; run the core; apply the Secret if the core issued one;
/// record the status if it changed; requeue at the renewal time (at most
/// [`MAX_REQUEUE`] away).
pub async fn reconcile_certificate<C: Clock>(
    certificate: Arc<Certificate>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let name = certificate.name_any();
    let namespace = certificate
        .namespace()
        .ok_or_else(|| Error::NoNamespace { name: name.clone() })?;
    // The cache has not delivered this reconcile's own last status write
    // yet: deciding from the older copy would only write again (and be
    // refused). The watch event of that write triggers the next look. The
    // copy decided from is the cache's newest (the one this reconcile was
    // handed may predate an event that arrived while it waited for a
    // worker), read after the pending write: the watch forgets a write only
    // once the cache holds it, so a newest copy read after finding none
    // pending is at least as new as every status written.
    let written = ctx.statuses.pending(&namespace, &name, ctx.clock.now());
    let caches = ctx.caches();
    let certificate = caches
        .certificates
        .get(&ObjectRef::from_obj(certificate.as_ref()))
        .unwrap_or(certificate);
    if certificate.metadata.deletion_timestamp.is_some() {
        // Going away (someone else's finalizer holds it): issuing now would
        // only write a Secret the garbage collector is about to delete.
        return Ok(Action::await_change());
    }
    if let Some(written) = written {
        if certificate.metadata.resource_version.as_ref() == Some(&written) {
            ctx.statuses.seen(&namespace, &name, &written);
        } else {
            debug!(certificate = %format!("{namespace}/{name}"), "the cache lags the status written last; looking again");
            return Ok(Action::requeue(STALE_REQUEUE));
        }
    }
    let spec = &certificate.spec;
    let issuer_name = spec.issuer_ref.name.clone();

    // An invalid spec is reported by the core before it looks at anything
    // else; reading objects it names (a kind we do not serve, a Secret name
    // the API would reject) would be wasted and noisy. A valid spec names
    // an issuer we serve.
    let valid = spec.validate().is_ok();
    let resolved = resolve_issuer(
        &namespace,
        &spec.issuer_ref,
        &ctx.cluster_resource_namespace,
    );
    let kind = resolved
        .as_ref()
        .map_or(IssuerKind::Issuer, |target| target.kind);
    let target = resolved.ok().filter(|_| valid);
    let now = ctx.clock.now();
    let (loaded, current) = match &target {
        Some(target) => {
            let loaded = issuer_material(&ctx, &caches, target, now).await?;
            let current = current_secret(&ctx, &caches, &namespace, &spec.secret_name).await?;
            (loaded, current)
        }
        None => (None, None),
    };
    let current_data = current.as_deref().map(secret_data);

    let loaded: LoadedIssuer = match (&target, loaded) {
        (None, _) => Arc::new(Err(IssuerError::InvalidSpec {
            kind,
            name: issuer_name.clone(),
            reason: "the Certificate's spec is invalid; the issuer was not read".to_string(),
        })),
        (Some(target), None) => Arc::new(Err(IssuerError::NotFound {
            kind,
            name: target.qualified_name(),
        })),
        (Some(_), Some(loaded)) => loaded,
    };
    let material = loaded.as_ref();
    // A loaded issuer's series were recorded when it was loaded; one that
    // does not exist has none.
    if let Some(target) = &target
        && matches!(material, Err(IssuerError::NotFound { .. }))
    {
        observe_issuer(&ctx.metrics, target, material);
    }

    // A Secret another object controls (cert-manager's Certificate, in a
    // migration) cannot be applied: the API server allows one controller.
    // Say so, count it and back off, rather than fail the apply for ever.
    let foreign = current.as_deref().and_then(|current| {
        secret::foreign_controller(current, &certificate)
            .map(|owner| secret::owner_conflict_message(current, owner))
    });
    let outcome = match foreign {
        Some(message) => {
            crate::reconcile::blocked(&certificate, now, secret::SECRET_OWNER_CONFLICT, message)
        }
        None => reconcile(
            &certificate,
            current_data.as_ref(),
            ResolvedIssuer {
                kind,
                name: &issuer_name,
                material: material.as_ref(),
            },
            now,
        ),
    };

    if let Some(issued) = &outcome.secret {
        let applied = applied_secret(
            &certificate,
            issued,
            current.as_deref().and_then(|s| s.type_.as_deref()),
        )
        .map_err(|source| Error::BuildSecret {
            namespace: namespace.clone(),
            name: spec.secret_name.clone(),
            source,
        })?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let written = secrets
            .patch(
                &spec.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&applied),
            )
            .await
            .map_err(|source| Error::ApplySecret {
                namespace: namespace.clone(),
                name: spec.secret_name.clone(),
                source,
            })?;
        ctx.applied.record(
            &namespace,
            &spec.secret_name,
            written.resource_version().unwrap_or_default(),
            ctx.clock.now(),
        );
    } else if let Some(current) = &current
        && secret::needs_label(current, &certificate)
    {
        label_secret(&ctx, &namespace, &spec.secret_name).await?;
    }

    if certificate.status.as_ref() != Some(&outcome.status)
        && let Some(requeue) = write_status(&ctx, &certificate, &namespace, &outcome).await?
    {
        return Ok(requeue);
    }

    match &outcome.event {
        Event::Issued(reason) => {
            info!(certificate = %format!("{namespace}/{name}"), secret = %spec.secret_name, reason = reason.as_str(), "issued a certificate");
            if let Some(clamped) = &outcome.clamped {
                warn!(certificate = %format!("{namespace}/{name}"), "{clamped}");
            }
            ctx.metrics.issued(&namespace, &name, spec);
        }
        Event::Recorded { revision } => {
            info!(certificate = %format!("{namespace}/{name}"), secret = %spec.secret_name, revision, "issued a certificate (recorded late: its status write had failed)");
            ctx.metrics.issued(&namespace, &name, spec);
        }
        Event::Failed { reason, message } => {
            warn!(certificate = %format!("{namespace}/{name}"), reason = *reason, "issuance failed: {message}");
            ctx.metrics.failed(&namespace, &name, spec, reason);
        }
        Event::BackingOff => {
            debug!(certificate = %format!("{namespace}/{name}"), until = %outcome.requeue_at, "backing off");
        }
        Event::TrustUpdated => {
            info!(certificate = %format!("{namespace}/{name}"), secret = %spec.secret_name, "ca.crt now holds the issuer's live trust anchors");
        }
        Event::UpToDate => {
            debug!(certificate = %format!("{namespace}/{name}"), renewal = %outcome.requeue_at, "up to date");
        }
    }
    ctx.metrics
        .observe_certificate(&namespace, &name, spec, &outcome.status);
    ctx.clear_api_failures(CERTIFICATE, &namespace, &name);
    Ok(Action::requeue(requeue_after(outcome.requeue_at, now)))
}

/// How soon a Certificate whose status could not be written (it changed
/// since the cached copy the reconcile started from) is looked at again.
pub const STALE_REQUEUE: Duration = Duration::from_secs(1);

/// Writes `outcome.status` over the Certificate's, guarded by the
/// `resourceVersion` the reconcile read: a reconcile that ran on a stale
/// cached copy (the controller's own Secret write triggers one before the
/// watch has delivered its previous status write) must not overwrite a
/// newer status, or `revision`, conditions and failure counts go back.
///
/// On a conflict nothing is written and the Certificate is requeued after
/// [`STALE_REQUEUE`] (`Some`), to be decided again from fresh state. An
/// issuance whose Secret is already written is not lost: the Secret
/// records its revision, and the next reconcile records it in the status.
async fn write_status<C: Clock>(
    ctx: &Context<C>,
    certificate: &Certificate,
    namespace: &str,
    outcome: &crate::reconcile::Outcome,
) -> Result<Option<Action>, Error> {
    let name = certificate.name_any();
    let certificates: Api<Certificate> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let patch = status_patch(
        certificate.metadata.resource_version.as_deref(),
        certificate.status.as_ref(),
        &outcome.status,
    )
    .map_err(|source| Error::SerializeStatus {
        namespace: namespace.to_string(),
        name: name.clone(),
        source,
    })?;
    match certificates
        .patch_status(&name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(written) => {
            ctx.statuses.record(
                namespace,
                &name,
                written.resource_version().unwrap_or_default(),
                ctx.clock.now(),
            );
            Ok(None)
        }
        Err(::kube::Error::Api(response)) if response.code == 409 => {
            debug!(certificate = %format!("{namespace}/{name}"), "status changed since this reconcile read it; looking again");
            Ok(Some(Action::requeue(STALE_REQUEUE)))
        }
        Err(source) => Err(Error::PatchStatus {
            namespace: namespace.to_string(),
            name,
            source,
        }),
    }
}

/// The Certificate's Secret as the reconcile must see it: from the cache,
/// unless the cache may be behind (the controller applied a version the
/// watch has not delivered yet) or holds only its metadata (a Secret the
/// controller has not labelled: made by someone else, or before the
/// label), when it is read from the API server.
async fn current_secret<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    let cached = caches.secrets.get(&ObjectRef::new(name).within(namespace));
    let now = ctx.clock.now();
    let pending = ctx.applied.pending(namespace, name, now);
    let cached_version = cached.as_ref().and_then(|s| s.resource_version());
    let read_needed = match &pending {
        Some(version) if cached_version.as_ref() == Some(version) => {
            ctx.applied.seen(namespace, name, version);
            false
        }
        Some(_) => true,
        None => cached.is_none() && caches.has_other_secret(namespace, name),
    };
    if !read_needed {
        return Ok(cached);
    }
    let mut read = super::secret::get_secret(&ctx.client, namespace, name).await?;
    // The cache must now catch up with what was read: a version newer than
    // the one written (someone wrote after the controller) becomes the one
    // waited for; a Secret gone since has no version to wait for.
    if pending.is_some() {
        match read.as_ref().and_then(|s| s.resource_version()) {
            Some(version) if Some(&version) != pending.as_ref() => {
                ctx.applied.record(namespace, name, version, now);
            }
            Some(_) => {}
            None => ctx.applied.forget(namespace, name),
        }
    }
    if let Some(secret) = &mut read {
        strip_secret(secret);
    }
    Ok(read.map(Arc::new))
}

/// Puts [`MANAGED_LABEL`] on a Secret this Certificate controls that lacks
/// it (written before the label existed), so its watch caches it. A merge
/// patch: a server-side apply of the label alone would drop the keys the
/// controller's earlier applies own.
async fn label_secret<C: Clock>(
    ctx: &Context<C>,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": { "labels": { MANAGED_LABEL: MANAGED_LABEL_VALUE } }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .patch(name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::ApplySecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    debug!(secret = %format!("{namespace}/{name}"), "labelled a Secret written before the managed label");
    Ok(())
}

/// How long to wait until `at`, clamped to [`MIN_REQUEUE`]..[`MAX_REQUEUE`].
pub fn requeue_after(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .clamp(MIN_REQUEUE, MAX_REQUEUE)
}

/// The merge patch that makes the status `new` (a Certificate's, a
/// TrustBundle's): a merge patch leaves keys it does not mention alone, so
/// every key of `old` that `new` no longer has (a cleared
/// `failedIssuanceAttempts`, say) is sent as `null`. With
/// `resource_version` (that of the object `old` was read from), the API
/// server refuses the patch with 409 Conflict if the object has changed
/// since.
pub fn status_patch<S: serde::Serialize>(
    resource_version: Option<&str>,
    old: Option<&S>,
    new: &S,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut status = serde_json::to_value(new)?;
    let old = old.map(serde_json::to_value).transpose()?;
    if let (Some(serde_json::Value::Object(old)), serde_json::Value::Object(status)) =
        (old, &mut status)
    {
        for key in old.keys() {
            status.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    Ok(match resource_version {
        Some(version) => serde_json::json!({
            "metadata": { "resourceVersion": version },
            "status": status,
        }),
        None => serde_json::json!({ "status": status }),
    })
}

/// Backs off a Certificate whose reconcile failed against the API server:
/// 5s after the first failure, doubling to at most 5 minutes.
pub fn error_policy<C: Clock>(
    certificate: Arc<Certificate>,
    error: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let namespace = certificate.namespace().unwrap_or_default();
    let name = certificate.name_any();
    let attempts = ctx.record_api_failure(CERTIFICATE, namespace.clone(), name.clone());
    let delay = error_backoff(attempts);
    warn!(
        certificate = %format!("{namespace}/{name}"),
        attempts,
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_after_is_clamped_between_a_second_and_an_hour() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        for (minutes, expected) in [(-5, 1), (0, 1), (10, 600), (24 * 60, 3_600)] {
            assert_eq!(
                requeue_after(now + chrono::TimeDelta::minutes(minutes), now),
                Duration::from_secs(expected),
                "{minutes} minutes"
            );
        }
    }

    #[test]
    fn a_status_patch_nulls_fields_that_were_cleared() {
        let old = lanyard_crds::api::CertificateStatus {
            failed_issuance_attempts: Some(2),
            revision: Some(1),
            ..lanyard_crds::api::CertificateStatus::default()
        };
        let new = lanyard_crds::api::CertificateStatus {
            revision: Some(2),
            ..lanyard_crds::api::CertificateStatus::default()
        };
        let patch = status_patch(None, Some(&old), &new).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"status": {"revision": 2, "failedIssuanceAttempts": null}})
        );
    }
}
