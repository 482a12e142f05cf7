//! The renewal planner as tables with sentence names and an injected clock.

mod support;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::api::{CertificateSpec, IssuerKind};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::usage::{KeyUsage, PrivateKeyAlgorithm};
use lanyard_rotator::issuing::IssuerMaterial;
use lanyard_rotator::planner::{
    Failures, IssueReason, IssuerView, Plan, PlanInput, backoff, plan, renewal_time,
};
use lanyard_rotator::reconcile::{Event, ResolvedIssuer, reconcile};
use lanyard_rotator::secret::{SecretData, TLS_CRT, TLS_KEY};
use support::*;

fn plan_at(
    spec: &CertificateSpec,
    secret: Option<&SecretData>,
    material: &IssuerMaterial,
    issuer_name: &str,
    now: DateTime<Utc>,
) -> Plan {
    plan(PlanInput {
        spec,
        secret,
        issuer: IssuerView {
            name: issuer_name,
            kind: spec.issuer_ref.issuer_kind().unwrap(),
            ca: material.ca(),
        },
        failures: Failures::default(),
        now,
    })
}

fn reason(plan: &Plan) -> Option<IssueReason> {
    match plan {
        Plan::Issue { reason, .. } => Some(*reason),
        _ => None,
    }
}

struct Fixture {
    anchor: IssuerMaterial,
    identity: IssuerMaterial,
    identity_secret: SecretData,
}

/// An anchor at t0, the Linkerd-shaped identity issuer it signs, and a CA
/// issuer over the identity issuer's Secret.
fn fixture() -> Fixture {
    let anchor = ca_issuer(&anchor_secret("root.linkerd.cluster.local", t0()), t0());
    let identity_secret = issued_secret(&identity_issuer_spec(), &anchor, t0());
    let identity = ca_issuer(&identity_secret, t0());
    Fixture {
        anchor,
        identity,
        identity_secret,
    }
}

#[test]
fn renewal_time_table() {
    let start = t0();
    type Case = (
        &'static str,
        DateTime<Utc>,
        Option<TimeDelta>,
        DateTime<Utc>,
    );
    let cases: Vec<Case> = vec![
        (
            "renews a 24h leaf at two thirds of its life, at 16h",
            start + hours(24),
            None,
            start + hours(16),
        ),
        (
            "renews the Linkerd guide's issuer 720h before its 8760h end",
            start + hours(8760),
            Some(hours(720)),
            start + hours(8040),
        ),
        (
            "falls back to two thirds when renewBefore exceeds a clamped lifetime",
            start + hours(30),
            Some(hours(720)),
            start + hours(20),
        ),
        (
            "ignores a zero renewBefore",
            start + hours(3),
            Some(TimeDelta::zero()),
            start + hours(2),
        ),
    ];
    for (name, not_after, before, expected) in cases {
        let got = renewal_time(start, not_after, before);
        assert_eq!(got, expected, "{name}");
        assert!(got >= start, "{name}: never earlier than notBefore");
    }
}

#[test]
fn backoff_doubles_from_ten_seconds_and_caps_at_an_hour() {
    let cases = [
        ("no failure, no wait", 0, 0),
        ("first failure waits 10s", 1, 10),
        ("second failure waits 20s", 2, 20),
        ("third failure waits 40s", 3, 40),
        ("ninth failure waits 2560s", 9, 2560),
        ("tenth failure is capped at an hour", 10, 3600),
        ("a thousandth failure is still an hour", 1000, 3600),
    ];
    for (name, failures, seconds) in cases {
        assert_eq!(backoff(failures), TimeDelta::seconds(seconds), "{name}");
    }
}

#[test]
fn a_24h_leaf_waits_until_16h_then_renews() {
    let f = fixture();
    let spec = leaf_spec("web");
    let secret = issued_secret(&spec, &f.identity, t0());
    let before = plan_at(
        &spec,
        Some(&secret),
        &f.identity,
        "identity",
        t0() + hours(15),
    );
    let Plan::Wait { current } = before else {
        panic!("expected to wait, got {before:?}")
    };
    assert_eq!(current.renewal_time, t0() + hours(16));
    assert_eq!(current.not_after, t0() + hours(24));
    let at = plan_at(
        &spec,
        Some(&secret),
        &f.identity,
        "identity",
        t0() + hours(16),
    );
    assert_eq!(reason(&at), Some(IssueReason::Renewing));
    let after = plan_at(
        &spec,
        Some(&secret),
        &f.identity,
        "identity",
        t0() + hours(25),
    );
    assert_eq!(reason(&after), Some(IssueReason::Expired));
}

#[test]
fn the_guides_issuer_renews_720h_before_its_end() {
    let f = fixture();
    let spec = identity_issuer_spec();
    let name = "linkerd-trust-anchor";
    let plan_then = |h| {
        plan_at(
            &spec,
            Some(&f.identity_secret),
            &f.anchor,
            name,
            t0() + hours(h),
        )
    };
    let Plan::Wait { current } = plan_then(8039) else {
        panic!("the issuer should wait until 8040h")
    };
    assert_eq!(current.renewal_time, t0() + hours(8040));
    assert_eq!(reason(&plan_then(8040)), Some(IssueReason::Renewing));
}

#[test]
fn issue_reasons_table() {
    let f = fixture();
    let spec = leaf_spec("web");
    let good = issued_secret(&spec, &f.identity, t0());
    let with = |edit: &dyn Fn(&mut SecretData)| {
        let mut s = good.clone();
        edit(&mut s);
        s
    };
    let respec = |edit: &dyn Fn(&mut CertificateSpec)| {
        let mut s = spec.clone();
        edit(&mut s);
        s
    };
    // A new identity issuer from the same anchor: the leaf no longer chains
    // to the issuer's current CA.
    let rotated = ca_issuer(
        &issued_secret(&identity_issuer_spec(), &f.anchor, t0()),
        t0(),
    );
    let other = issued_secret(&spec, &f.identity, t0());
    let now = t0() + hours(1);

    let cases: Vec<(
        &str,
        CertificateSpec,
        Option<SecretData>,
        &IssuerMaterial,
        IssueReason,
    )> = vec![
        (
            "issues when the Secret does not exist",
            spec.clone(),
            None,
            &f.identity,
            IssueReason::DoesNotExist,
        ),
        (
            "issues when tls.key is missing",
            spec.clone(),
            Some(with(&|s| {
                s.data.remove(TLS_KEY);
            })),
            &f.identity,
            IssueReason::MissingData,
        ),
        (
            "issues when tls.crt is empty",
            spec.clone(),
            Some(with(&|s| {
                s.data.insert(TLS_CRT.into(), vec![]);
            })),
            &f.identity,
            IssueReason::MissingData,
        ),
        (
            "re-issues a Secret whose tls.crt is corrupt",
            spec.clone(),
            Some(with(&|s| {
                s.data.insert(
                    TLS_CRT.into(),
                    b"-----BEGIN CERTIFICATE-----\ngarbage\n".to_vec(),
                );
            })),
            &f.identity,
            IssueReason::InvalidKeyPair,
        ),
        (
            "re-issues when tls.key belongs to another certificate",
            spec.clone(),
            Some(with(&|s| {
                s.data.insert(TLS_KEY.into(), other.data[TLS_KEY].clone());
            })),
            &f.identity,
            IssueReason::InvalidKeyPair,
        ),
        (
            "re-issues when dnsNames change",
            respec(&|s| s.dns_names.push("web.example".into())),
            Some(good.clone()),
            &f.identity,
            IssueReason::SpecChanged,
        ),
        (
            "re-issues when usages change",
            respec(&|s| s.usages = vec![KeyUsage::ServerAuth]),
            Some(good.clone()),
            &f.identity,
            IssueReason::SpecChanged,
        ),
        (
            "re-issues when the duration changes",
            respec(&|s| s.duration = Some(GoDuration::from_hours(48))),
            Some(good.clone()),
            &f.identity,
            IssueReason::SpecChanged,
        ),
        (
            "re-issues when the key algorithm changes",
            respec(&|s| {
                s.private_key = Some(lanyard_crds::api::PrivateKeySpec {
                    algorithm: Some(PrivateKeyAlgorithm::Ed25519),
                    ..Default::default()
                })
            }),
            Some(good.clone()),
            &f.identity,
            IssueReason::SpecChanged,
        ),
        (
            "re-issues when isCA changes",
            respec(&|s| s.is_ca = true),
            Some(good.clone()),
            &f.identity,
            IssueReason::SpecChanged,
        ),
        (
            "re-issues a leaf signed by the old issuer after the issuer rotates",
            spec.clone(),
            Some(good.clone()),
            &rotated,
            IssueReason::IssuerRotated,
        ),
    ];
    for (name, spec, secret, material, expected) in cases {
        let got = plan_at(&spec, secret.as_ref(), material, "identity", now);
        assert_eq!(reason(&got), Some(expected), "{name}: {got:?}");
    }

    let moved = plan_at(&spec, Some(&good), &f.identity, "identity-2", now);
    assert_eq!(
        reason(&moved),
        Some(IssueReason::SpecChanged),
        "re-issues when the issuerRef names another issuer"
    );
    let Plan::Issue { message, .. } = moved else {
        unreachable!()
    };
    assert!(message.contains("issuerRef changed"), "{message}");
}

#[test]
fn failures_back_off_and_success_resets_them() {
    let f = fixture();
    let mut cert = certificate("default", "web", leaf_spec("web"));
    let missing = lanyard_rotator::issuing::IssuerError::NotFound {
        kind: IssuerKind::Issuer,
        name: "default/identity".into(),
    };
    let mut now = t0();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let outcome = reconcile(
            &cert,
            None,
            ResolvedIssuer {
                kind: IssuerKind::Issuer,
                name: "identity",
                material: Err(&missing),
            },
            now,
        );
        assert!(matches!(
            outcome.event,
            Event::Failed {
                reason: "IssuerNotFound",
                ..
            }
        ));
        assert!(outcome.secret.is_none(), "a failure writes no Secret");
        let ready = &outcome.status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "False")
        );
        assert_eq!(ready.reason.as_deref(), Some("IssuerNotFound"));
        waits.push((outcome.requeue_at - now).num_seconds());
        now = outcome.requeue_at;
        cert.status = Some(outcome.status);
    }
    assert_eq!(waits, vec![10, 20, 40, 80], "backoff doubles from 10s");

    // The issuer appears: before the backoff ends nothing happens...
    let ok = |at| {
        reconcile(
            &cert,
            None,
            ResolvedIssuer {
                kind: IssuerKind::Issuer,
                name: "identity",
                material: Ok(&f.identity),
            },
            at,
        )
    };
    let early = ok(now - TimeDelta::seconds(1));
    assert_eq!(early.event, Event::BackingOff);
    // ...and once it ends, issuance succeeds and the failures reset.
    let issued = ok(now);
    assert_eq!(issued.event, Event::Issued(IssueReason::DoesNotExist));
    assert!(issued.secret.is_some());
    assert_eq!(issued.status.failed_issuance_attempts, None);
    assert_eq!(issued.status.last_failure_time, None);
    assert_eq!(issued.status.revision, Some(1));
    assert_eq!(issued.requeue_at, now + hours(16));
}

#[test]
fn an_invalid_spec_fails_without_writing_and_says_why() {
    let f = fixture();
    let mut spec = leaf_spec("web");
    spec.renew_before = Some(GoDuration::from_hours(48));
    let cert = certificate("default", "web", spec);
    let outcome = reconcile(
        &cert,
        None,
        ResolvedIssuer {
            kind: IssuerKind::Issuer,
            name: "identity",
            material: Ok(&f.identity),
        },
        t0(),
    );
    assert!(outcome.secret.is_none());
    let Event::Failed { reason, message } = outcome.event else {
        panic!("expected a failure")
    };
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("spec.renewBefore 48h0m0s must be shorter than spec.duration 24h0m0s"),
        "{message}"
    );
}

#[test]
fn a_certificate_cut_short_by_its_issuer_stays_ready_and_says_so() {
    let f = fixture();
    // The anchor lives 87600h from t0.
    let anchor_end = "2035-12-30T00:00:00Z";
    let by_anchor = |duration_hours: u64| {
        let mut spec = leaf_spec("web");
        spec.issuer_ref.name = "linkerd-trust-anchor".into();
        spec.issuer_ref.kind = Some("ClusterIssuer".into());
        spec.duration = Some(GoDuration::from_hours(duration_hours));
        certificate("default", "web", spec)
    };
    let resolved = |material| ResolvedIssuer {
        kind: IssuerKind::ClusterIssuer,
        name: "linkerd-trust-anchor",
        material: Ok(material),
    };
    // Issues at t0, then reconciles again an hour later with what was
    // issued, as the next pass would.
    let two_passes = |cert: &lanyard_crds::api::Certificate, material| {
        let first = reconcile(cert, None, resolved(material), t0());
        let mut cert = cert.clone();
        cert.status = Some(first.status.clone());
        let second = reconcile(
            &cert,
            first.secret.as_ref(),
            resolved(material),
            t0() + hours(1),
        );
        (first, second)
    };
    type Case<'a> = (&'a str, u64, &'a IssuerMaterial, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "a 24h leaf from a ten-year anchor is not cut short",
            24,
            &f.anchor,
            None,
        ),
        (
            "a certificate asking to end exactly with its issuer is not reported as cut short",
            87_600,
            &f.anchor,
            None,
        ),
        (
            "a 100000h certificate ends with its ten-year anchor, and both times are named",
            100_000,
            &f.anchor,
            Some(("2037-05-29T16:00:00Z", "100000h0m0s")),
        ),
    ];
    for (name, duration, material, want) in cases {
        let (first, second) = two_passes(&by_anchor(duration), material);
        assert_eq!(
            first.event,
            Event::Issued(IssueReason::DoesNotExist),
            "{name}"
        );
        assert_eq!(
            second.event,
            Event::UpToDate,
            "{name}: the second pass waits"
        );
        for (pass, outcome) in [("issuing", &first), ("waiting", &second)] {
            let ready = outcome
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .expect("a Ready condition");
            assert_eq!(
                ready.status, "True",
                "{name}, {pass}: the certificate is valid"
            );
            let message = ready.message.as_deref().unwrap_or_default();
            match want {
                None => {
                    assert_eq!(
                        message, "Certificate is up to date and has not expired",
                        "{name}, {pass}"
                    );
                    assert_eq!(outcome.clamped, None, "{name}, {pass}");
                }
                Some((requested, duration)) => {
                    assert_eq!(
                        outcome.status.not_after,
                        Some(t0() + hours(87_600)),
                        "{name}, {pass}"
                    );
                    for needle in [
                        format!("ends at its issuer's notAfter {anchor_end}"),
                        format!("instead of {requested}"),
                        format!("requested duration {duration}"),
                    ] {
                        assert!(
                            message.contains(&needle),
                            "{name}, {pass}: `{needle}` not in `{message}`"
                        );
                    }
                    let clamped = outcome.clamped.expect("the outcome says it was cut short");
                    assert_eq!(clamped.not_after, t0() + hours(87_600), "{name}, {pass}");
                    assert_eq!(clamped.requested, t0() + hours(100_000), "{name}, {pass}");
                }
            }
        }
    }
}

/// A CA Secret that breaks (here: its key is gone) concerns only the
/// Certificates that need it now. One that is not due stays Ready with its
/// status untouched and no failure counted; one that falls due fails and
/// backs off while its current certificate says it is still valid; once
/// the CA is repaired the next issuance clears the failure, and a stale
/// `Issuing=False/Failed` on a certificate that is not due is cleared.
#[test]
fn a_broken_issuer_fails_only_the_certificates_that_are_due() {
    let f = fixture();
    let broken = lanyard_rotator::issuing::IssuerError::SecretMissingKey {
        secret: "default/identity".into(),
        key: "tls.key",
    };
    let resolved = |material| ResolvedIssuer {
        kind: IssuerKind::Issuer,
        name: "identity",
        material,
    };
    let mut cert = certificate("default", "web", leaf_spec("web"));
    let issued = reconcile(&cert, None, resolved(Ok(&f.identity)), t0());
    let secret = issued.secret.clone().unwrap();
    cert.status = Some(issued.status.clone());
    let issuing = |status: &lanyard_crds::api::CertificateStatus| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Issuing")
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
    };

    // Not due (renewal at t0 + 16h): untouched.
    for at in [hours(1), hours(15)] {
        let outcome = reconcile(&cert, Some(&secret), resolved(Err(&broken)), t0() + at);
        assert_eq!(outcome.event, Event::UpToDate, "at t0+{at}");
        assert_eq!(outcome.status, issued.status, "the status is untouched");
        assert!(outcome.secret.is_none());
        assert_eq!(outcome.requeue_at, t0() + hours(16));
    }

    // Due with the CA still broken: a failure, backed off, still Ready.
    let due = t0() + hours(17);
    let failed = reconcile(&cert, Some(&secret), resolved(Err(&broken)), due);
    let Event::Failed { reason, message } = &failed.event else {
        panic!(
            "a due certificate with a broken issuer fails: {:?}",
            failed.event
        )
    };
    assert_eq!(*reason, "CASecretInvalid");
    assert!(message.contains("has no `tls.key`"), "{message}");
    assert_eq!(failed.status.failed_issuance_attempts, Some(1));
    let ready = failed
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.is_true());
    assert!(
        ready
            .message
            .as_deref()
            .unwrap()
            .contains("renewing it failed"),
        "{ready:?}"
    );
    assert_eq!(
        issuing(&failed.status),
        Some(("False".into(), "Failed".into()))
    );

    // Repaired: after the backoff, the renewal is issued and the failure
    // is gone.
    let mut failing = cert.clone();
    failing.status = Some(failed.status.clone());
    let renewed = reconcile(
        &failing,
        Some(&secret),
        resolved(Ok(&f.identity)),
        failed.requeue_at,
    );
    assert!(matches!(
        renewed.event,
        Event::Issued(IssueReason::Renewing)
    ));
    assert_eq!(renewed.status.failed_issuance_attempts, None);
    assert_eq!(
        issuing(&renewed.status),
        Some(("False".into(), "Issued".into()))
    );

    // A Certificate left with a failure that is not due after all (the
    // status an earlier failure wrote): once the backoff is over and the
    // issuer is healthy, the failure and its Issuing condition are cleared.
    let mut stale = cert.clone();
    let mut status = issued.status.clone();
    status.failed_issuance_attempts = Some(1);
    status.last_failure_time = Some(t0() + hours(1));
    lanyard_crds::api::set_condition(
        &mut status.conditions,
        lanyard_crds::api::Condition {
            type_: "Issuing".into(),
            status: "False".into(),
            reason: Some("Failed".into()),
            message: Some("the CA Secret `default/identity` has no `tls.key`".into()),
            last_transition_time: Some(t0() + hours(1)),
            observed_generation: cert.metadata.generation,
        },
    );
    stale.status = Some(status);
    let cleared = reconcile(
        &stale,
        Some(&secret),
        resolved(Ok(&f.identity)),
        t0() + hours(2),
    );
    assert_eq!(cleared.event, Event::UpToDate);
    assert_eq!(cleared.status.failed_issuance_attempts, None);
    assert_eq!(cleared.status.last_failure_time, None);
    assert_eq!(
        issuing(&cleared.status),
        Some(("False".into(), "UpToDate".into()))
    );
}
