//! The trust anchor's rotation in a cluster. An anchor rotates where a
//! TrustBundle distributes it: the CA Secret of a ClusterIssuer that a
//! bundle names as an `issuerRef` source, when that Secret holds a root
//! with its key and no Certificate owns it. Each reconcile of such a
//! bundle steps the rotation as far as it can go, with the same state
//! machine and Secret writes as the local shell ([`crate::anchor`]).
//!
//! - The state lives on the CA Secret, in the annotation
//!   [`ROTATION_ANNOTATION`], and every change to the Secret's keys is
//!   written together with the state that follows it, in one update
//!   guarded by the Secret's `resourceVersion`: no step is half done, and
//!   two writers cannot both step.
//! - The new anchor waits in the Secret `<name>-next` until the old one is
//!   gone: a controller that dies after making it adopts it on restart.
//! - A rotation is asked for by hand with the annotation
//!   [`ROTATE_ANNOTATION`] on the CA Secret (`lanyard anchor rotate
//!   --cluster-issuer NAME` sets it, refusing while one is under way).
//! - Targets are the bundles' ConfigMaps as the watch delivered them back;
//!   the identity issuers are the CA Certificates the ClusterIssuer signs.

use std::time::Duration;

use ::kube::api::{Api, DeleteParams, PostParams};
use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use lanyard_crds::time::Clock;
use lanyard_crds::trust_bundle::TrustBundle;
use lanyard_issuer::Certificate;
use lanyard_trust_bundle::rotation::{self, Action, Phase, Rotation, Timing};
use tracing::{info, warn};

use super::cache::Caches;
use super::context::{Context, Error};
use super::secret::{create_tls_secret, get_secret, secret_data, to_data};
use super::trust_bundle::BUNDLE_LABEL;
use crate::anchor::{self, AnchorSecret, RotationRecord, Surroundings};
use crate::secret::{TLS_CRT, annotations};

/// The CA Secret's annotation holding the rotation record (JSON).
pub const ROTATION_ANNOTATION: &str = "lanyard.dev/anchor-rotation";
/// The CA Secret's annotation asking for a rotation (its value: when).
pub const ROTATE_ANNOTATION: &str = "lanyard.dev/rotate-anchor";
/// How soon a rotation waiting on an event (a target written back, an
/// issuer re-issued) looks again, besides the watch events that wake it.
const EVENT_POLL: Duration = Duration::from_secs(5);
/// How many steps one reconcile takes at most.
const MAX_STEPS: usize = 8;

/// The rotation record on a CA Secret, if it has a valid one.
pub fn record_of(secret: &Secret) -> Option<RotationRecord> {
    let text = secret
        .metadata
        .annotations
        .as_ref()?
        .get(ROTATION_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// Steps the rotation of every anchor `bundle` distributes; returns how
/// soon the bundle should be looked at again for it.
pub(super) async fn rotate_anchors<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    bundle: &TrustBundle,
) -> Result<Option<Duration>, Error> {
    let mut soonest: Option<Duration> = None;
    for source in &bundle.spec.sources {
        let Some(issuer) = &source.issuer_ref else {
            continue;
        };
        let Some(cluster_issuer) = caches
            .cluster_issuers
            .get(&::kube::runtime::reflector::ObjectRef::new(&issuer.name))
        else {
            continue;
        };
        let Some(ca) = &cluster_issuer.spec.config.ca else {
            continue;
        };
        if let Some(after) = rotate(ctx, caches, &issuer.name, &ca.secret_name).await? {
            soonest = Some(soonest.map_or(after, |s| s.min(after)));
        }
    }
    Ok(soonest)
}

fn annotations_mut(secret: &mut Secret) -> &mut std::collections::BTreeMap<String, String> {
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
}

/// Steps one anchor's rotation.
async fn rotate<C: Clock>(
    ctx: &Context<C>,
    caches: &Caches,
    issuer: &str,
    secret_name: &str,
) -> Result<Option<Duration>, Error> {
    let namespace = ctx.cluster_resource_namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let next_name = anchor::prepared_name(secret_name);
    let read = |name: String| {
        let client = ctx.client.clone();
        async move { get_secret(&client, namespace, &name).await }
    };
    for _ in 0..MAX_STEPS {
        let now = ctx.clock.now();
        let Some(current) = read(secret_name.to_string()).await? else {
            return Ok(None);
        };
        let data = secret_data(&current);
        // A Certificate's Secret is that Certificate's to renew.
        if data.annotation(annotations::CERTIFICATE_NAME).is_some() {
            return Ok(None);
        }
        let what = format!("Secret {namespace}/{secret_name}");
        let Ok(ca) = AnchorSecret::read(data, &what) else {
            return Ok(None);
        };
        if !ca.is_root() {
            return Ok(None);
        }
        let prepared = read(next_name.clone())
            .await?
            .and_then(|s| AnchorSecret::read(secret_data(&s), &next_name).ok());
        let record = record_of(&current);
        let state = record
            .as_ref()
            .map(|r| r.rotation.clone())
            .unwrap_or_else(|| Rotation::stable(anchor::anchor_id(&ca.signer), now));
        let requested = current
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ROTATE_ANNOTATION));
        let timing = timing(ctx, caches, issuer);
        let around = surroundings(
            caches,
            issuer,
            &ca,
            prepared.as_ref(),
            &state,
            requested,
            &timing,
            now,
        );
        let observed = anchor::observe(&ca, prepared.as_ref(), &state, &around, now);
        let decision = rotation::decide(&state, &observed, &timing, now);
        let writes =
            match anchor::writes(&decision.action, &ca, prepared.as_ref(), secret_name, now) {
                Ok(writes) => writes,
                Err(reason) => {
                    warn!(anchor = %secret_name, "trust anchor rotation: {reason}; trying again");
                    return Ok(Some(Duration::from_secs(30)));
                }
            };
        if let Some(prepared) = &writes.prepared {
            // One that exists was made by a step whose state was not
            // written: adopted next.
            if create_tls_secret(&ctx.client, namespace, &next_name, prepared).await? {
                info!(anchor = %secret_name, "trust anchor rotation: made the new anchor");
            }
            continue;
        }
        let mut new_record = RotationRecord::after(secret_name, &ca, &decision, now);
        // `updated` is when the state last changed: an unchanged record is
        // not rewritten for the time alone.
        if let Some(previous) = record.as_ref().filter(|r| r.rotation == decision.state) {
            new_record.updated = previous.updated;
        }
        let changed_record = new_record.differs_from(record.as_ref());
        let drop_request = requested && decision.state.phase != Phase::Stable;
        if writes.ca.is_some() || changed_record || drop_request {
            // The Secret's keys and the state that follows them, at once.
            let mut updated = current.clone();
            if let Some(ca) = &writes.ca {
                updated.data = Some(to_data(ca));
            }
            annotations_mut(&mut updated).insert(
                ROTATION_ANNOTATION.to_string(),
                serde_json::to_string(&new_record).expect("records serialise"),
            );
            if drop_request {
                annotations_mut(&mut updated).remove(ROTATE_ANNOTATION);
            }
            match secrets
                .replace(secret_name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {}
                Err(::kube::Error::Api(e)) if e.code == 409 => {
                    // Changed since read: read again and decide again.
                    continue;
                }
                Err(source) => {
                    return Err(Error::ApplySecret {
                        namespace: namespace.to_string(),
                        name: secret_name.to_string(),
                        source,
                    });
                }
            }
        }
        if writes.delete_prepared {
            match secrets.delete(&next_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(::kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(Error::ApplySecret {
                        namespace: namespace.to_string(),
                        name: next_name,
                        source,
                    });
                }
            }
        }
        anchor::report(&ctx.metrics, record.as_ref(), &new_record, now);
        if let Some((gate, until)) = decision.waiting {
            let by_time = until.and_then(|u| (u - now).to_std().ok());
            let after = if gate.is_timed() {
                by_time
            } else {
                Some(by_time.map_or(EVENT_POLL, |t| t.min(EVENT_POLL)))
            };
            return Ok(after.map(|d| d.max(Duration::from_millis(200))));
        }
        if !matches!(decision.action, Action::None) {
            // The Certificates and bundles must see the new CA Secret
            // (through the watch) before the next gate can pass.
            return Ok(Some(Duration::from_secs(1)));
        }
    }
    Ok(Some(EVENT_POLL))
}

/// The rotation's times: the longest propagation delay of the bundles
/// distributing the anchor, and the identity service's leaf lifetime.
fn timing<C: Clock>(ctx: &Context<C>, caches: &Caches, issuer: &str) -> Timing {
    let propagation_delay = caches
        .trust_bundles
        .state()
        .iter()
        .filter(|b| b.spec.distributes(issuer))
        .map(|b| b.spec.propagation_delay().to_chrono())
        .max()
        .unwrap_or_else(|| lanyard_crds::trust_bundle::DEFAULT_PROPAGATION_DELAY.to_chrono());
    Timing {
        propagation_delay,
        leaf_lifetime: ctx.rotation.leaf_lifetime,
        skew: ctx.rotation.skew,
    }
}

#[allow(clippy::too_many_arguments)]
fn surroundings(
    caches: &Caches,
    issuer: &str,
    ca: &AnchorSecret,
    prepared: Option<&AnchorSecret>,
    state: &Rotation,
    requested: bool,
    timing: &Timing,
    now: DateTime<Utc>,
) -> Surroundings {
    // Every target of every bundle distributing this anchor, as read back.
    let bundles: Vec<_> = caches
        .trust_bundles
        .state()
        .into_iter()
        .filter(|b| b.spec.distributes(issuer))
        .collect();
    let mut targets = Vec::new();
    for config_map in caches.bundle_config_maps.state() {
        let Some(name) = config_map
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(BUNDLE_LABEL))
        else {
            continue;
        };
        let Some(bundle) = bundles
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
        else {
            continue;
        };
        let pem = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(&bundle.spec.target.config_map.key));
        targets.push(
            pem.and_then(|pem| Certificate::parse_pem_bundle(pem.as_bytes(), "bundle").ok())
                .map(|certs| certs.iter().map(anchor::anchor_id).collect())
                .unwrap_or_default(),
        );
    }
    // The identity issuers: the CA Certificates this ClusterIssuer signs.
    let chain_of = |namespace: &str, secret: &str| {
        caches
            .secrets
            .get(&::kube::runtime::reflector::ObjectRef::new(secret).within(namespace))
            .and_then(|s| {
                let data = secret_data(&s);
                Certificate::parse_pem_bundle(data.get(TLS_CRT)?, "tls.crt").ok()
            })
    };
    let signed_here: Vec<_> = caches
        .certificates
        .state()
        .into_iter()
        .filter(|c| {
            c.spec.issuer_ref.name == issuer
                && c.spec.issuer_ref.issuer_kind()
                    == Some(lanyard_crds::api::IssuerKind::ClusterIssuer)
        })
        .collect();
    // A CA Certificate whose Secret is not cached yet leaves it unknown.
    let issuer_chains: Option<Vec<Vec<Certificate>>> = signed_here
        .iter()
        .filter(|c| c.spec.is_ca)
        .map(|c| chain_of(c.metadata.namespace.as_deref()?, &c.spec.secret_name))
        .collect();
    // Certificates stranded if the old anchor went: counted only once the
    // leaves' time is up (reading every Secret before that is wasted).
    let drain_due = state
        .switched_at
        .is_some_and(|at| now >= at + timing.leaf_lifetime + timing.skew);
    let certificates_on_old = match (
        anchor::counts_certificates(state) && drain_due,
        anchor::old_anchor(ca, state),
        anchor::next_anchor(ca, prepared, state),
    ) {
        (true, Some(old), Some(next)) => caches
            .secrets
            .state()
            .iter()
            .filter_map(|s| {
                let data = secret_data(s);
                data.annotation(annotations::CERTIFICATE_NAME)?;
                Certificate::parse_pem_bundle(data.get(TLS_CRT)?, "tls.crt").ok()
            })
            .filter(|chain| anchor::chains_only_to_old(chain, &old, &next, now))
            .count(),
        _ => 0,
    };
    Surroundings {
        targets,
        requested,
        renew_before: None,
        issuer_chains,
        certificates_on_old,
    }
}

/// The rotation's leaf lifetime and skew in a cluster.
#[derive(Debug, Clone, Copy)]
pub struct RotationTiming {
    /// The identity service's leaf lifetime (`lanyard identity`'s, 24h by
    /// default).
    pub leaf_lifetime: TimeDelta,
    /// Allowance for clock skew.
    pub skew: TimeDelta,
}

impl Default for RotationTiming {
    fn default() -> Self {
        RotationTiming {
            leaf_lifetime: lanyard_issuer::DEFAULT_LEAF_LIFETIME,
            skew: TimeDelta::minutes(1),
        }
    }
}
