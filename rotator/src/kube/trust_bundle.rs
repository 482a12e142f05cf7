//! The TrustBundle reconcile, in the controller-rs layout: check the
//! spec, read each source ([`sources`]), hand them to the pure
//! [`lanyard_trust_bundle::assemble`], write the bundle to every selected
//! namespace and take it out of the others ([`targets`]), and record the
//! outcome as the bundle's status (only when it changed) and in the
//! metrics. [`dependents`] maps a changed Namespace, Secret, ConfigMap or
//! ClusterIssuer to the bundles it concerns.
//!
//! Bad input changes nothing: an invalid spec, or sources that leave no
//! anchor, set `Ready=False` and leave every target as it is (an empty
//! bundle would make every peer untrusted).

mod dependents;
mod sources;
mod targets;

use std::sync::Arc;
use std::time::Duration;

use ::kube::ResourceExt;
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::Action;
use chrono::{DateTime, Utc};
use lanyard_crds::api::{Condition, set_condition};
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::{AnchorStatus, TrustBundle, TrustBundleStatus};
use lanyard_trust_bundle::{Assembled, BundleError, Warning, assemble};
use tracing::{debug, info, warn};

use super::FIELD_MANAGER;
use super::certificate::{MIN_REQUEUE, STALE_REQUEUE, status_patch};
use super::context::{Context, Error, TRUST_BUNDLE, error_backoff};

pub(super) use dependents::BundleTriggers;
pub use sources::{check_spec, source_name};
pub use targets::{
    BUNDLE_SECRET_TYPE, applied_bundle_secret, applied_config_map, namespace_gone, selects,
};

/// The label on every ConfigMap and Secret a bundle writes, naming the
/// bundle: its watch finds them (to write back one edited or deleted by
/// hand) and removal from namespaces no longer selected goes by it.
pub const BUNDLE_LABEL: &str = "trust.lanyard.dev/bundle";

/// How often a bundle is looked at when nothing about it changes: a watch
/// event missed costs at most this long. An anchor expiring sooner brings
/// the next look forward (it must leave the bundle).
pub const BUNDLE_REQUEUE: Duration = Duration::from_secs(300);

/// `Ready=True`: every source was read and the bundle written everywhere.
pub const BUNDLE_SYNCED: &str = "Synced";
/// `Ready=False`: a source failed; the targets hold the bundle with its
/// last good anchors (if it had any).
pub const BUNDLE_SOURCE_FAILED: &str = "SourceFailed";
/// `Ready=False`: no valid anchor is left; the targets were not touched.
pub const BUNDLE_NO_ANCHORS: &str = "NoAnchors";
/// `Ready=False`: the spec is invalid; nothing was read or written.
pub const BUNDLE_INVALID_SPEC: &str = "InvalidSpec";

/// What one reconcile came to, for [`bundle_status`].
#[derive(Debug)]
pub enum BundleOutcome<'a> {
    /// The spec is invalid: why.
    InvalidSpec(String),
    /// No anchor is left.
    NoAnchors(&'a BundleError),
    /// The bundle was assembled and written to `namespaces`.
    Written {
        /// What was assembled.
        assembled: &'a Assembled,
        /// The namespaces whose ConfigMap holds it, sorted.
        namespaces: Vec<String>,
    },
}

/// The status after `outcome`, from the `current` one at `now`:
///
/// - written: the anchors, their count, the namespaces written, `Ready`
///   True `Synced` (the message names anchors dropped as expired) or False
///   `SourceFailed` (naming the sources and what was kept of them);
///   `lastUpdateTime` moves to `now` only when the anchors (so the PEM)
///   changed;
/// - not written (`InvalidSpec`, `NoAnchors`): `Ready` False and the
///   reason; what the targets still hold is described as before.
///
/// The `Ready` condition keeps its transition time while its status
/// stays, as `meta.SetStatusCondition` does.
pub fn bundle_status(
    current: Option<&TrustBundleStatus>,
    outcome: &BundleOutcome<'_>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> TrustBundleStatus {
    let mut status = current.cloned().unwrap_or_default();
    let (ready, reason, message) = match outcome {
        BundleOutcome::InvalidSpec(message) => (false, BUNDLE_INVALID_SPEC, message.clone()),
        BundleOutcome::NoAnchors(error) => (false, BUNDLE_NO_ANCHORS, error.to_string()),
        BundleOutcome::Written {
            assembled,
            namespaces,
        } => {
            let anchors: Vec<AnchorStatus> = assembled
                .anchors
                .iter()
                .map(|anchor| AnchorStatus {
                    subject: anchor.subject().to_string(),
                    serial_number: anchor.serial().to_string(),
                    not_after: anchor.not_after(),
                    sha256: anchor.sha256().to_string(),
                })
                .collect();
            let same_content = status.last_update_time.is_some()
                && status.anchors.len() == anchors.len()
                && status
                    .anchors
                    .iter()
                    .zip(&anchors)
                    .all(|(old, new)| old.sha256 == new.sha256);
            if !same_content {
                status.last_update_time = Some(now);
            }
            status.anchor_count = Some(i64::try_from(anchors.len()).unwrap_or(i64::MAX));
            status.anchors = anchors;
            status.target_namespaces = namespaces.clone();
            let written = format!(
                "{} anchor(s) written to {} namespace(s)",
                assembled.anchors.len(),
                namespaces.len()
            );
            let warnings = |failed: bool| {
                assembled
                    .warnings
                    .iter()
                    .filter(|w| matches!(w, Warning::SourceFailed { .. }) == failed)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            };
            let expired = warnings(false);
            let expired = if expired.is_empty() {
                String::new()
            } else {
                format!("; {}", expired.join("; "))
            };
            if assembled.degraded() {
                (
                    false,
                    BUNDLE_SOURCE_FAILED,
                    format!(
                        "{written}, but a source failed: {}{expired}",
                        warnings(true).join("; ")
                    ),
                )
            } else {
                (true, BUNDLE_SYNCED, format!("{written}{expired}"))
            }
        }
    };
    set_condition(
        &mut status.conditions,
        Condition {
            type_: "Ready".to_string(),
            status: if ready { "True" } else { "False" }.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now),
            observed_generation: generation,
        },
    );
    status
}

/// How long until the bundle is looked at again: [`BUNDLE_REQUEUE`], or
/// just after its first anchor expires if that is sooner.
pub fn bundle_requeue_after(assembled: &Assembled, now: DateTime<Utc>) -> Duration {
    assembled
        .anchors
        .iter()
        .map(|anchor| anchor.not_after())
        .min()
        .and_then(|expiry| (expiry - now).to_std().ok())
        .map_or(BUNDLE_REQUEUE, |until| {
            (until + MIN_REQUEUE).clamp(MIN_REQUEUE, BUNDLE_REQUEUE)
        })
}

/// Reconciles one TrustBundle: check its spec, read its sources, assemble
/// them (keeping a failed source's last good anchors), apply the bundle
/// in every selected namespace, remove it from the namespaces no longer
/// selected, and record the status (when it changed) and the metrics.
pub async fn reconcile_trust_bundle<C: Clock>(
    bundle: Arc<TrustBundle>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let name = bundle.name_any();
    if bundle.metadata.deletion_timestamp.is_some() {
        // Going away: the garbage collector takes its targets along.
        return Ok(Action::await_change());
    }
    let caches = ctx.caches();
    let generation = bundle.metadata.generation;
    let current = bundle.status.as_ref();

    if let Err(message) = check_spec(&bundle.spec) {
        ctx.metrics.bundle_failed(&name);
        let status = bundle_status(
            current,
            &BundleOutcome::InvalidSpec(message.clone()),
            generation,
            ctx.clock.now(),
        );
        if let Some(requeue) = write_status(&ctx, &bundle, &status).await? {
            return Ok(requeue);
        }
        warn!(bundle = %name, reason = BUNDLE_INVALID_SPEC, "the bundle's spec is invalid; nothing was written: {message}");
        ctx.clear_api_failures(TRUST_BUNDLE, "", &name);
        // Only a new spec can mend it, and that is a watch event.
        return Ok(Action::await_change());
    }

    let reads = sources::read_sources(&ctx, &caches, &bundle.spec).await?;
    let now = ctx.clock.now();
    let assembled = match assemble(&reads, &ctx.bundle_anchors.get(&name), now) {
        Ok(assembled) => assembled,
        Err(error) => {
            ctx.metrics.bundle_failed(&name);
            let status = bundle_status(current, &BundleOutcome::NoAnchors(&error), generation, now);
            if let Some(requeue) = write_status(&ctx, &bundle, &status).await? {
                return Ok(requeue);
            }
            // Said once, when the status says it first; counted each time.
            if current != Some(&status) {
                warn!(bundle = %name, reason = BUNDLE_NO_ANCHORS, "{error}");
            } else {
                debug!(bundle = %name, reason = BUNDLE_NO_ANCHORS, "{error}");
            }
            ctx.clear_api_failures(TRUST_BUNDLE, "", &name);
            return Ok(Action::requeue(BUNDLE_REQUEUE));
        }
    };
    ctx.bundle_anchors.set(&name, assembled.last_good.clone());

    let pem = assembled.pem();
    let selected = targets::selected_namespaces(
        &caches.namespaces,
        bundle.spec.target.namespace_selector.as_ref(),
    );
    let written = targets::write_targets(&ctx, &caches, &bundle, &selected, &pem).await?;
    targets::remove_targets(&ctx, &caches, &bundle, &selected).await?;

    let status = bundle_status(
        current,
        &BundleOutcome::Written {
            assembled: &assembled,
            namespaces: written.namespaces,
        },
        generation,
        now,
    );
    let updated = status.last_update_time.unwrap_or(now);
    let changed = current.and_then(|s| s.last_update_time) != Some(updated);
    if let Some(requeue) = write_status(&ctx, &bundle, &status).await? {
        return Ok(requeue);
    }
    // A failed source or a dropped anchor is said when the status first
    // says it, not at every look.
    for warning in &assembled.warnings {
        if current != Some(&status) {
            warn!(bundle = %name, "{warning}");
        } else {
            debug!(bundle = %name, "{warning}");
        }
    }
    ctx.metrics
        .observe_bundle(&name, assembled.anchors.len(), updated);
    if changed {
        info!(bundle = %name, anchors = assembled.anchors.len(), namespaces = status.target_namespaces.len(), "the bundle's content changed");
    } else {
        debug!(bundle = %name, "bundle is current");
    }
    // The anchors this bundle distributes rotate with its targets' overlap.
    let rotation = super::anchor_rotation::rotate_anchors(&ctx, &caches, &bundle).await?;
    ctx.clear_api_failures(TRUST_BUNDLE, "", &name);
    let requeue = bundle_requeue_after(&assembled, now);
    Ok(Action::requeue(
        rotation.map_or(requeue, |r| r.min(requeue)),
    ))
}

/// Writes `status` over the bundle's when it differs, by a merge patch of
/// the status subresource guarded by the `resourceVersion` the reconcile
/// read (a reconcile of a stale cached copy must not set `lastUpdateTime`
/// or a transition time back). On a conflict nothing is written and the
/// bundle is looked at again after [`STALE_REQUEUE`] (`Some`).
async fn write_status<C: Clock>(
    ctx: &Context<C>,
    bundle: &TrustBundle,
    status: &TrustBundleStatus,
) -> Result<Option<Action>, Error> {
    if bundle.status.as_ref() == Some(status) {
        return Ok(None);
    }
    let name = bundle.name_any();
    let patch = status_patch(
        bundle.metadata.resource_version.as_deref(),
        bundle.status.as_ref(),
        status,
    )
    .map_err(|source| Error::SerializeBundleStatus {
        name: name.clone(),
        source,
    })?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match Api::<TrustBundle>::all(ctx.client.clone())
        .patch_status(&name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(None),
        Err(::kube::Error::Api(response)) if response.code == 409 => {
            debug!(bundle = %name, "status changed since this reconcile read it; looking again");
            Ok(Some(Action::requeue(STALE_REQUEUE)))
        }
        Err(source) => Err(Error::PatchBundleStatus { name, source }),
    }
}

/// Backs off a bundle whose reconcile failed against the API server (5s,
/// doubling to at most 5 minutes), as [`super::error_policy`] does a
/// Certificate; counts the failure.
pub fn trust_bundle_error_policy<C: Clock>(
    bundle: Arc<TrustBundle>,
    error: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let name = bundle.name_any();
    let attempts = ctx.record_api_failure(TRUST_BUNDLE, String::new(), name.clone());
    let delay = error_backoff(attempts);
    ctx.metrics.bundle_failed(&name);
    warn!(bundle = %name, attempts, retry_in = ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

/// Forgets a deleted bundle: its series, its last good anchors, its
/// failure count.
pub(super) fn forget_trust_bundle<C: Clock>(ctx: &Context<C>, name: &str) {
    ctx.metrics.forget_bundle(name);
    ctx.bundle_anchors.forget(name);
    ctx.clear_api_failures(TRUST_BUNDLE, "", name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use lanyard_trust_bundle::SourceRead;

    fn anchor_pem(now: DateTime<Utc>, lifetime: TimeDelta) -> String {
        lanyard_issuer::TrustAnchor::generate(
            &lanyard_crds::identity::IdentityDomain::linkerd_default(),
            lifetime,
            lanyard_issuer::KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap()
        .certificate()
        .to_pem()
    }

    fn t0() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn ready(status: &TrustBundleStatus) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("a Ready condition")
    }

    #[test]
    fn the_status_says_what_the_bundle_holds_and_moves_its_update_time_only_with_the_content() {
        let a = anchor_pem(t0(), TimeDelta::days(365));
        let b = anchor_pem(t0(), TimeDelta::days(365));
        let both = assemble(
            &[SourceRead::pem("inLine", format!("{a}{b}"))],
            &Default::default(),
            t0(),
        )
        .unwrap();
        let written = |assembled| BundleOutcome::Written {
            assembled,
            namespaces: vec!["apps".into(), "linkerd".into()],
        };
        let first = bundle_status(None, &written(&both), Some(1), t0());
        assert_eq!(first.anchor_count, Some(2));
        assert_eq!(first.anchors.len(), 2);
        assert_eq!(first.target_namespaces, ["apps", "linkerd"]);
        assert_eq!(first.last_update_time, Some(t0()));
        let condition = ready(&first);
        assert!(condition.is_true());
        assert_eq!(condition.reason.as_deref(), Some(BUNDLE_SYNCED));
        assert_eq!(
            condition.message.as_deref(),
            Some("2 anchor(s) written to 2 namespace(s)")
        );

        // The same anchors later: the same status, so no write.
        let later = t0() + TimeDelta::hours(1);
        assert_eq!(
            bundle_status(Some(&first), &written(&both), Some(1), later),
            first
        );

        // One anchor fewer: a new update time.
        let one = assemble(
            &[SourceRead::pem("inLine", a.clone())],
            &Default::default(),
            later,
        )
        .unwrap();
        let fewer = bundle_status(Some(&first), &written(&one), Some(1), later);
        assert_eq!(fewer.anchor_count, Some(1));
        assert_eq!(fewer.last_update_time, Some(later));
        assert_eq!(ready(&fewer).last_transition_time, Some(t0()));

        // No anchors: not ready, the rest describes what the targets
        // still hold.
        let error = assemble(
            &[SourceRead::pem("inLine", "garbage")],
            &Default::default(),
            later,
        )
        .unwrap_err();
        let empty = bundle_status(
            Some(&fewer),
            &BundleOutcome::NoAnchors(&error),
            Some(1),
            later,
        );
        let condition = ready(&empty);
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some(BUNDLE_NO_ANCHORS));
        assert!(
            condition
                .message
                .as_deref()
                .unwrap()
                .contains("inLine: not a PEM certificate bundle"),
            "{condition:?}"
        );
        assert_eq!(condition.last_transition_time, Some(later));
        assert_eq!(empty.anchors, fewer.anchors);
        assert_eq!(empty.last_update_time, fewer.last_update_time);

        // An invalid spec: the same, with its reason.
        let invalid = bundle_status(
            Some(&fewer),
            &BundleOutcome::InvalidSpec("spec.sources: at least one source is needed".into()),
            Some(2),
            later,
        );
        let condition = ready(&invalid);
        assert_eq!(condition.reason.as_deref(), Some(BUNDLE_INVALID_SPEC));
        assert_eq!(condition.observed_generation, Some(2));
    }

    #[test]
    fn the_status_names_a_failed_source_and_an_expired_anchor() {
        let good = anchor_pem(t0(), TimeDelta::days(365));
        let expired = anchor_pem(t0() - TimeDelta::days(400), TimeDelta::days(365));
        let first = assemble(
            &[
                SourceRead::pem("Secret lanyard/roots key ca.crt", good.clone()),
                SourceRead::pem("spec.sources[1].inLine", format!("{expired}{good}")),
            ],
            &Default::default(),
            t0(),
        )
        .unwrap();
        let status = bundle_status(
            None,
            &BundleOutcome::Written {
                assembled: &first,
                namespaces: vec!["apps".into()],
            },
            None,
            t0(),
        );
        let condition = ready(&status);
        assert!(condition.is_true());
        let message = condition.message.as_deref().unwrap();
        assert!(
            message.starts_with(
                "1 anchor(s) written to 1 namespace(s); spec.sources[1].inLine: dropped the anchor"
            ),
            "{message}"
        );

        let failed = assemble(
            &[
                SourceRead::unreadable(
                    "Secret lanyard/roots key ca.crt",
                    "the Secret does not exist",
                ),
                SourceRead::pem("spec.sources[1].inLine", good.clone()),
            ],
            &first.last_good,
            t0(),
        )
        .unwrap();
        let status = bundle_status(
            Some(&status),
            &BundleOutcome::Written {
                assembled: &failed,
                namespaces: vec!["apps".into()],
            },
            None,
            t0(),
        );
        let condition = ready(&status);
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some(BUNDLE_SOURCE_FAILED));
        assert_eq!(
            condition.message.as_deref(),
            Some(
                "1 anchor(s) written to 1 namespace(s), but a source failed: Secret lanyard/roots key ca.crt: the Secret does not exist; keeping its last good 1 anchor(s)"
            )
        );
    }

    #[test]
    fn a_bundle_is_looked_at_again_when_its_first_anchor_expires_or_after_five_minutes() {
        let soon = anchor_pem(t0(), TimeDelta::days(1));
        let assembled = assemble(
            &[SourceRead::pem("inLine", soon)],
            &Default::default(),
            t0(),
        )
        .unwrap();
        assert_eq!(bundle_requeue_after(&assembled, t0()), BUNDLE_REQUEUE);
        let near_end = t0() + TimeDelta::days(1) - TimeDelta::seconds(30);
        assert_eq!(
            bundle_requeue_after(&assembled, near_end),
            Duration::from_secs(31)
        );
    }

    #[test]
    fn a_status_patch_nulls_what_was_cleared() {
        let old = TrustBundleStatus {
            target_namespaces: vec!["gone".into()],
            anchor_count: Some(1),
            ..TrustBundleStatus::default()
        };
        let new = TrustBundleStatus {
            anchor_count: Some(1),
            ..TrustBundleStatus::default()
        };
        assert_eq!(
            status_patch(Some("7"), Some(&old), &new).unwrap(),
            serde_json::json!({
                "metadata": {"resourceVersion": "7"},
                "status": {"anchorCount": 1, "targetNamespaces": null}
            })
        );
    }
}
