//! The reconcile core both shells share: given a Certificate, its Secret,
//! its issuer (or why the issuer cannot sign) and `now`, decide, issue if
//! due, and return the new status, the Secret to write (if any) and when to
//! look again. No I/O; the shells gather inputs and write outputs.

use std::fmt;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use lanyard_crds::api::{
    Certificate, CertificateSpec, CertificateStatus, Condition, IssuerKind, IssuerStatus,
    set_condition,
};
use lanyard_crds::duration::GoDuration;

use crate::issuing::{IssuerError, IssuerMaterial, issue};
use crate::planner::{
    CurrentCertificate, Failures, IssueReason, IssuerView, Plan, PlanInput, backoff, plan,
};
use crate::secret::{CA_CRT, SecretData, annotations};

/// The issuer a Certificate names, as the shell found it.
#[derive(Debug)]
pub struct ResolvedIssuer<'a> {
    /// Issuer or ClusterIssuer.
    pub kind: IssuerKind,
    /// Its name.
    pub name: &'a str,
    /// Its signing material, or why there is none.
    pub material: Result<&'a IssuerMaterial, &'a IssuerError>,
}

/// What happened in one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A certificate was issued.
    Issued(IssueReason),
    /// An issuance that reached the Secret but not the status (the status
    /// write failed after the Secret was written, or the shell stopped in
    /// between) was found by the revision the Secret records, and the
    /// status now records it: it counts as an issuance, once.
    Recorded {
        /// The revision the Secret records, now also the status's.
        revision: i64,
    },
    /// The certificate stands, but the Secret's `ca.crt` no longer held
    /// the issuer's live anchors (a trust anchor rotation added or removed
    /// one): `ca.crt` alone is rewritten, the key and certificate kept.
    TrustUpdated,
    /// Nothing was due.
    UpToDate,
    /// The last attempts failed; the next waits until the backoff ends.
    BackingOff,
    /// The attempt failed with this CamelCase reason and message.
    Failed {
        /// CamelCase reason (`InvalidSpec`, `IssuerNotFound`, ...).
        reason: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// The result of one reconcile.
#[derive(Debug)]
pub struct Outcome {
    /// The status to record (unchanged when nothing happened).
    pub status: CertificateStatus,
    /// The Secret to write: a certificate was issued, or `ca.crt` is
    /// brought up to the issuer's live anchors.
    pub secret: Option<SecretData>,
    /// When to look again if nothing else changes: the renewal time, or
    /// the end of the backoff after a failure.
    pub requeue_at: DateTime<Utc>,
    /// What happened.
    pub event: Event,
    /// Set when the certificate in force ends with its issuer, before the
    /// end its duration asks for. The `Ready` message says so on every
    /// pass; the shells also log it when the certificate was just issued.
    pub clamped: Option<Clamped>,
}

/// A certificate cut short to end with its issuer: valid, so `Ready`, but
/// not for as long as `spec.duration` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamped {
    /// The requested duration.
    pub duration: GoDuration,
    /// The end that duration asks for.
    pub requested: DateTime<Utc>,
    /// The end the certificate has: its issuer's notAfter.
    pub not_after: DateTime<Utc>,
}

impl Clamped {
    /// The clamp of a certificate already in force, read from its times:
    /// it ends exactly at the issuer CA's notAfter, before `notBefore +
    /// duration`. `None` for a self-signed issuer, which has no end to
    /// clamp to.
    pub fn of_current(
        spec: &CertificateSpec,
        current: CurrentCertificate,
        issuer_not_after: Option<DateTime<Utc>>,
    ) -> Option<Clamped> {
        let duration = spec.duration();
        let requested = current
            .not_before
            .checked_add_signed(duration.to_chrono())?;
        (Some(current.not_after) == issuer_not_after && current.not_after < requested).then_some(
            Clamped {
                duration,
                requested,
                not_after: current.not_after,
            },
        )
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl fmt::Display for Clamped {
    /// Worded as `lanyard ca init` and `lanyard ca issue` word their own
    /// clamps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate would have lived until {} (duration {}), past its issuer; \
             clamped to the issuer's notAfter {}",
            rfc3339(self.requested),
            self.duration,
            rfc3339(self.not_after)
        )
    }
}

const READY: &str = "Ready";
const ISSUING: &str = "Issuing";

/// Reconciles one Certificate.
pub fn reconcile(
    certificate: &Certificate,
    secret: Option<&SecretData>,
    issuer: ResolvedIssuer<'_>,
    now: DateTime<Utc>,
) -> Outcome {
    let (now, generation, status, failures) = starting_point(certificate, now);
    let name = certificate.metadata.name.as_deref().unwrap_or_default();

    // After a failure, nothing is tried again until the backoff ends, be
    // it an invalid spec, a missing issuer or a failed signature.
    if let Some(waiting) = backing_off(&status, failures, now) {
        return waiting;
    }
    if let Err(invalid) = certificate.spec.validate() {
        return failed(
            status,
            generation,
            failures,
            now,
            "InvalidSpec",
            invalid.to_string(),
            false,
        );
    }
    let plan_with = |ca| {
        plan(PlanInput {
            spec: &certificate.spec,
            secret,
            issuer: IssuerView {
                name: issuer.name,
                kind: issuer.kind,
                ca,
            },
            failures,
            now,
        })
    };
    let material = match issuer.material {
        Ok(material) => material,
        Err(error) => {
            // A broken or missing issuer matters only to a Certificate
            // that needs it now. One that is not due (the planner says
            // so without a CA to check the chain against; the chain is
            // checked again once the issuer is back, its CA Secret's
            // change triggering a reconcile) stays Ready and untouched:
            // the issuer's own status carries the problem.
            if let Plan::Wait { current } = plan_with(None) {
                // Without the issuer's end the Ready message cannot tell
                // a clamped certificate from another, so a status that
                // already says Ready for this generation is kept as it is.
                let settled = failures.count == 0
                    && status.conditions.iter().any(|c| {
                        c.type_ == READY && c.is_true() && c.observed_generation == generation
                    })
                    && !status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == ISSUING && c.reason.as_deref() == Some("Failed"));
                if let Some(revision) = unrecorded_revision(secret, &status) {
                    return Outcome {
                        status: recorded(
                            ready(status, generation, current, None, now),
                            revision,
                            recorded_late(revision),
                            generation,
                            now,
                        ),
                        secret: None,
                        requeue_at: current.renewal_time,
                        event: Event::Recorded { revision },
                        clamped: None,
                    };
                }
                let status = if settled {
                    status
                } else {
                    ready(status, generation, current, None, now)
                };
                return Outcome {
                    status,
                    secret: None,
                    requeue_at: current.renewal_time,
                    event: Event::UpToDate,
                    clamped: None,
                };
            }
            // Due, and nothing to issue with: a failure. A certificate
            // that is present and unexpired stays Ready, saying so.
            let usable = secret_is_unexpired(secret, now);
            return failed(
                status,
                generation,
                failures,
                now,
                error.reason(),
                error.to_string(),
                usable,
            );
        }
    };
    match plan_with(material.ca()) {
        Plan::Wait { current } => {
            let issuer_end = material.ca().map(lanyard_issuer::Certificate::not_after);
            let clamped = Clamped::of_current(&certificate.spec, current, issuer_end);
            let unrecorded = unrecorded_revision(secret, &status);
            let status = ready(status, generation, current, clamped, now);
            let trust = secret.and_then(|s| with_live_anchors(s, material));
            let (status, event) = match (unrecorded, &trust) {
                (Some(revision), _) => (
                    recorded(status, revision, recorded_late(revision), generation, now),
                    Event::Recorded { revision },
                ),
                (None, Some(_)) => (status, Event::TrustUpdated),
                (None, None) => (status, Event::UpToDate),
            };
            Outcome {
                status,
                secret: trust,
                requeue_at: current.renewal_time,
                event,
                clamped,
            }
        }
        Plan::BackOff { until, .. } => Outcome {
            status,
            secret: None,
            requeue_at: until,
            event: Event::BackingOff,
            clamped: None,
        },
        Plan::Issue {
            reason, message, ..
        } => match issue(
            name,
            &certificate.spec,
            issuer.name,
            issuer.kind,
            material,
            secret,
            now,
        ) {
            Ok(mut issued) => {
                // Past both the status's revision and one the Secret
                // records that never reached the status.
                let revision = status
                    .revision
                    .unwrap_or(0)
                    .max(secret_revision(secret).unwrap_or(0))
                    + 1;
                issued
                    .secret
                    .annotations
                    .insert(annotations::REVISION.to_string(), revision.to_string());
                let clamped = issued.clamped_from.map(|requested| Clamped {
                    duration: certificate.spec.duration(),
                    requested,
                    not_after: issued.certificate.not_after,
                });
                let status = recorded(
                    ready(status, generation, issued.certificate, clamped, now),
                    revision,
                    format!("issued because {reason}: {message}"),
                    generation,
                    now,
                );
                Outcome {
                    requeue_at: issued.certificate.renewal_time,
                    status,
                    secret: Some(issued.secret),
                    event: Event::Issued(reason),
                    clamped,
                }
            }
            Err(error) => failed(
                status,
                generation,
                failures,
                now,
                "IssuanceFailed",
                error.to_string(),
                reason.current_still_usable(),
            ),
        },
    }
}

/// The Secret with `ca.crt` holding the issuer's live anchors, when it
/// holds anything else (the anchors rotated since it was written); `None`
/// when it is current or the issuer is self-signed (its `ca.crt` is the
/// certificate itself).
fn with_live_anchors(secret: &SecretData, material: &IssuerMaterial) -> Option<SecretData> {
    let IssuerMaterial::Ca { roots_pem, .. } = material else {
        return None;
    };
    if secret.get(CA_CRT) == Some(roots_pem.as_bytes()) {
        return None;
    }
    let mut updated = secret.clone();
    updated
        .data
        .insert(CA_CRT.into(), roots_pem.clone().into_bytes());
    Some(updated)
}

/// The revision the Secret records (its [`annotations::REVISION`]), if
/// it records a valid one.
fn secret_revision(secret: Option<&SecretData>) -> Option<i64> {
    secret?
        .annotation(annotations::REVISION)?
        .parse::<i64>()
        .ok()
        .filter(|revision| *revision > 0)
}

/// The revision the Secret records when the status has not recorded it:
/// an issuance whose status write never happened.
fn unrecorded_revision(secret: Option<&SecretData>, status: &CertificateStatus) -> Option<i64> {
    secret_revision(secret).filter(|revision| *revision > status.revision.unwrap_or(0))
}

/// `status` (already `Ready` for the certificate in the Secret) with the
/// issuance of `revision` recorded: the revision, and `Issuing=False`
/// with reason `Issued` and `message`.
fn recorded(
    mut status: CertificateStatus,
    revision: i64,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> CertificateStatus {
    status.revision = Some(revision);
    set_condition(
        &mut status.conditions,
        condition(ISSUING, false, "Issued", message, generation, now),
    );
    status
}

/// The `Issuing` message of an issuance recorded from the Secret's
/// revision after its status write was lost.
fn recorded_late(revision: i64) -> String {
    format!(
        "issued revision {revision}; recorded from the Secret, as the status was not \
         written when it was issued"
    )
}

/// What every decision about `certificate` starts from: `now` at whole
/// seconds (as status times are written), its generation, the status it
/// carries, and the failures that count for that generation.
fn starting_point(
    certificate: &Certificate,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<i64>, CertificateStatus, Failures) {
    let generation = certificate.metadata.generation;
    let status = certificate.status.clone().unwrap_or_default();
    let failures = failures_for(&status, generation);
    (now.trunc_subsecs(0), generation, status, failures)
}

/// Failures count only for the generation they happened at: editing the
/// spec resets the backoff, as it does in cert-manager.
fn failures_for(status: &CertificateStatus, generation: Option<i64>) -> Failures {
    let same_generation = status
        .conditions
        .iter()
        .find(|c| c.type_ == ISSUING)
        .is_none_or(|c| c.observed_generation == generation);
    match (status.failed_issuance_attempts, same_generation) {
        (Some(count), true) if count > 0 => Failures {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            last: status.last_failure_time,
        },
        _ => Failures::default(),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(now),
        observed_generation: generation,
    }
}

/// `Ready=True`: a clamped certificate is valid, but the message says
/// that it ends with its issuer rather than when its duration asks.
fn ready(
    mut status: CertificateStatus,
    generation: Option<i64>,
    current: CurrentCertificate,
    clamped: Option<Clamped>,
    now: DateTime<Utc>,
) -> CertificateStatus {
    let message = match clamped {
        None => "Certificate is up to date and has not expired".to_string(),
        Some(c) => format!(
            "Certificate is up to date and has not expired, but ends at its issuer's notAfter {} \
             instead of {} as the requested duration {} asks: the issuer ends first",
            rfc3339(c.not_after),
            rfc3339(c.requested),
            c.duration
        ),
    };
    set_condition(
        &mut status.conditions,
        condition(READY, true, "Ready", message, generation, now),
    );
    // An issuance in progress, or a failed one that nothing has retried
    // since (the issuer was repaired, or the certificate was not due after
    // all), is over: the certificate in force is up to date.
    if status
        .conditions
        .iter()
        .any(|c| c.type_ == ISSUING && (c.is_true() || c.reason.as_deref() == Some("Failed")))
    {
        set_condition(
            &mut status.conditions,
            condition(
                ISSUING,
                false,
                "UpToDate",
                "no issuance is due".to_string(),
                generation,
                now,
            ),
        );
    }
    status.not_before = Some(current.not_before);
    status.not_after = Some(current.not_after);
    status.renewal_time = Some(current.renewal_time);
    status.failed_issuance_attempts = None;
    status.last_failure_time = None;
    status
}

fn failed(
    mut status: CertificateStatus,
    generation: Option<i64>,
    failures: Failures,
    now: DateTime<Utc>,
    reason: &'static str,
    message: String,
    current_usable: bool,
) -> Outcome {
    let count = failures.count.saturating_add(1);
    status.failed_issuance_attempts = Some(i64::from(count));
    status.last_failure_time = Some(now);
    let ready_condition = if current_usable {
        condition(
            READY,
            true,
            "Ready",
            format!("the current certificate is valid, but renewing it failed: {message}"),
            generation,
            now,
        )
    } else {
        condition(READY, false, reason, message.clone(), generation, now)
    };
    set_condition(&mut status.conditions, ready_condition);
    set_condition(
        &mut status.conditions,
        condition(ISSUING, false, "Failed", message.clone(), generation, now),
    );
    Outcome {
        status,
        secret: None,
        requeue_at: now + backoff(count),
        event: Event::Failed { reason, message },
        clamped: None,
    }
}

/// The outcome when the shell could not read or write what a reconcile
/// needed (a full disk, a read-only directory): the failure counts and
/// backs off like any other, and Ready says why, staying `True` only while
/// the certificate already in the Secret is unexpired. `certificate`
/// carries the status the reconcile started from; `reason` is
/// `ReadFailed` or `WriteFailed`.
pub fn storage_failed(
    certificate: &Certificate,
    current_usable: bool,
    now: DateTime<Utc>,
    reason: &'static str,
    message: String,
) -> Outcome {
    let (now, generation, status, failures) = starting_point(certificate, now);
    failed(
        status,
        generation,
        failures,
        now,
        reason,
        message,
        current_usable,
    )
}

/// The outcome when the shell finds, before anything is tried, that the
/// Certificate's Secret is not its to write (another object controls it):
/// `Ready=False` with `reason` and `message`, counted and backed off like
/// any failure. While an earlier failure's backoff runs, nothing changes.
pub fn blocked(
    certificate: &Certificate,
    now: DateTime<Utc>,
    reason: &'static str,
    message: String,
) -> Outcome {
    let (now, generation, status, failures) = starting_point(certificate, now);
    if let Some(waiting) = backing_off(&status, failures, now) {
        return waiting;
    }
    failed(status, generation, failures, now, reason, message, false)
}

/// While the backoff after `failures` runs, the outcome that changes
/// nothing and looks again when it ends.
fn backing_off(
    status: &CertificateStatus,
    failures: Failures,
    now: DateTime<Utc>,
) -> Option<Outcome> {
    let until = failures.next_attempt().filter(|until| now < *until)?;
    Some(Outcome {
        status: status.clone(),
        secret: None,
        requeue_at: until,
        event: Event::BackingOff,
        clamped: None,
    })
}

/// Whether the Secret holds a certificate that has not expired at `now`.
pub fn secret_is_unexpired(secret: Option<&SecretData>, now: DateTime<Utc>) -> bool {
    secret
        .and_then(|s| s.get(crate::secret::TLS_CRT))
        .and_then(|pem| lanyard_issuer::Certificate::parse_pem_bundle(pem, "tls.crt").ok())
        .is_some_and(|chain| chain[0].is_valid_at(now))
}

/// The reason of a `Ready=True` issuer condition.
pub const ISSUER_READY_REASON: &str = "KeyPairVerified";
/// The message of a `Ready=True` issuer condition.
pub const ISSUER_READY_MESSAGE: &str = "Signing CA verified";

/// The status an issuer gets when loading it gave `material`: its `Ready`
/// condition, `True` with [`ISSUER_READY_REASON`] or `False` with the
/// error's reason and message, for `generation`. Other conditions in
/// `current` are kept, and so is the transition time while `Ready` keeps
/// its status ([`set_condition`]), as in the local shell.
pub fn issuer_status(
    current: Option<&IssuerStatus>,
    material: Result<&IssuerMaterial, &IssuerError>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> IssuerStatus {
    let (status, reason, message) = match material {
        Ok(_) => (
            "True",
            ISSUER_READY_REASON,
            ISSUER_READY_MESSAGE.to_string(),
        ),
        Err(error) => ("False", error.reason(), error.to_string()),
    };
    let mut conditions = current.map(|s| s.conditions.clone()).unwrap_or_default();
    set_condition(
        &mut conditions,
        Condition {
            type_: "Ready".to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now),
            observed_generation: generation,
        },
    );
    IssuerStatus { conditions }
}
