//! The renewal planner: one pure function of a Certificate's spec, the
//! current Secret, the issuer's current CA, past failures and `now`, that
//! says whether to issue now (and why) or when to look again.
//!
//! cert-manager's `RenewalTime` and its issuing-trigger policy chain are the
//! model, with one addition users of cert-manager ask for: a certificate that
//! no longer chains to its issuer's current CA is re-issued
//! ([`IssueReason::IssuerRotated`]).

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::api::{CertificateSpec, GROUP, IssuerKind};
use lanyard_crds::usage::PrivateKeyAlgorithm;
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey};
use lanyard_runtime::Backoff;

use crate::secret::{SecretData, TLS_CRT, TLS_KEY, annotations};

/// The first retry after a failure waits this long.
pub const BACKOFF_BASE: TimeDelta = TimeDelta::seconds(10);
/// Retries are never further apart than this.
pub const BACKOFF_CAP: TimeDelta = TimeDelta::hours(1);

/// Why a certificate is issued now. The names are cert-manager's
/// `Issuing` reasons, plus `IssuerRotated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IssueReason {
    /// The Secret does not exist.
    DoesNotExist,
    /// The Secret lacks `tls.crt` or `tls.key`.
    MissingData,
    /// `tls.crt` or `tls.key` do not parse, or do not belong together.
    InvalidKeyPair,
    /// The certificate no longer matches the spec.
    SpecChanged,
    /// The renewal time has come.
    Renewing,
    /// The certificate has expired.
    Expired,
    /// The certificate no longer chains to the issuer's current CA.
    IssuerRotated,
}

impl IssueReason {
    /// The reason as written in conditions and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueReason::DoesNotExist => "DoesNotExist",
            IssueReason::MissingData => "MissingData",
            IssueReason::InvalidKeyPair => "InvalidKeyPair",
            IssueReason::SpecChanged => "SpecChanged",
            IssueReason::Renewing => "Renewing",
            IssueReason::Expired => "Expired",
            IssueReason::IssuerRotated => "IssuerRotated",
        }
    }

    /// Whether the Secret still holds a certificate that is valid and fits
    /// the spec while this issuance is pending (so `Ready` stays true).
    pub fn current_still_usable(self) -> bool {
        matches!(self, IssueReason::Renewing | IssueReason::IssuerRotated)
    }
}

impl fmt::Display for IssueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The issuer as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct IssuerView<'a> {
    /// The issuer's name.
    pub name: &'a str,
    /// Its kind.
    pub kind: IssuerKind,
    /// The CA that signs now; `None` for a self-signed issuer.
    pub ca: Option<&'a Certificate>,
}

/// Failed issuances since the last success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// How many in a row.
    pub count: u32,
    /// When the last one happened.
    pub last: Option<DateTime<Utc>>,
}

/// The certificate in the Secret, as far as status needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentCertificate {
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// When it is due for renewal.
    pub renewal_time: DateTime<Utc>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Issue now.
    Issue {
        /// Why.
        reason: IssueReason,
        /// A sentence for people: what changed, or what is missing.
        message: String,
        /// The certificate being replaced, if it was readable.
        current: Option<CurrentCertificate>,
    },
    /// Issuance is due but the last attempts failed: wait until `until`.
    BackOff {
        /// Why issuance is due.
        reason: IssueReason,
        /// What was wrong.
        message: String,
        /// When to try again.
        until: DateTime<Utc>,
        /// The certificate being replaced, if it was readable.
        current: Option<CurrentCertificate>,
    },
    /// Nothing to do until the renewal time.
    Wait {
        /// The certificate in the Secret.
        current: CurrentCertificate,
    },
}

impl Plan {
    /// When the controller should look at this certificate again if nothing
    /// else changes; `None` for "now".
    pub fn requeue_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Plan::Issue { .. } => None,
            Plan::BackOff { until, .. } => Some(*until),
            Plan::Wait { current } => Some(current.renewal_time),
        }
    }
}

pub use lanyard_x509::renewal_time;

/// How long to wait after `failures` consecutive failures: 10s, doubling,
/// capped at an hour.
pub fn backoff(failures: u32) -> TimeDelta {
    let schedule = Backoff::new(
        BACKOFF_BASE.to_std().expect("the base is positive"),
        BACKOFF_CAP.to_std().expect("the cap is positive"),
    );
    TimeDelta::from_std(schedule.delay_after(failures)).expect("at most the cap, an hour")
}

impl Failures {
    /// When the next attempt may be made, if failures are holding it back.
    pub fn next_attempt(self) -> Option<DateTime<Utc>> {
        match (self.count, self.last) {
            (0, _) | (_, None) => None,
            (count, Some(last)) => Some(last + backoff(count)),
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The Certificate's spec, already validated.
    pub spec: &'a CertificateSpec,
    /// The Secret `spec.secretName`, if it exists.
    pub secret: Option<&'a SecretData>,
    /// The issuer and its current CA.
    pub issuer: IssuerView<'a>,
    /// Failures since the last success.
    pub failures: Failures,
    /// The time of the decision.
    pub now: DateTime<Utc>,
}

/// Decides what to do with one Certificate. Pure.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let (reason, message, current) = match evaluate(&input) {
        Ok(current) => return Plan::Wait { current },
        Err(due) => due,
    };
    if let Some(until) = input.failures.next_attempt()
        && input.now < until
    {
        return Plan::BackOff {
            reason,
            message,
            until,
            current,
        };
    }
    Plan::Issue {
        reason,
        message,
        current,
    }
}

type Due = (IssueReason, String, Option<CurrentCertificate>);

fn evaluate(input: &PlanInput<'_>) -> Result<CurrentCertificate, Due> {
    let spec = input.spec;
    let Some(secret) = input.secret else {
        return Err((
            IssueReason::DoesNotExist,
            format!("Secret `{}` does not exist", spec.secret_name),
            None,
        ));
    };
    let (Some(crt), Some(key)) = (secret.get(TLS_CRT), secret.get(TLS_KEY)) else {
        return Err((
            IssueReason::MissingData,
            format!(
                "Secret `{}` lacks {}",
                spec.secret_name,
                if secret.get(TLS_CRT).is_none() {
                    TLS_CRT
                } else {
                    TLS_KEY
                }
            ),
            None,
        ));
    };
    let leaf = match Certificate::parse_pem_bundle(crt, TLS_CRT) {
        Ok(mut chain) => chain.remove(0),
        Err(e) => return Err((IssueReason::InvalidKeyPair, e.to_string(), None)),
    };
    let key = match SigningKey::from_pem(key, TLS_KEY) {
        Ok(key) => key,
        Err(e) => return Err((IssueReason::InvalidKeyPair, e.to_string(), None)),
    };
    if !key.matches_public_key(leaf.public_key_raw()) {
        return Err((
            IssueReason::InvalidKeyPair,
            "tls.key is not the key of the certificate in tls.crt".to_string(),
            None,
        ));
    }
    let current = CurrentCertificate {
        not_before: leaf.not_before(),
        not_after: leaf.not_after(),
        renewal_time: renewal_time(
            leaf.not_before(),
            leaf.not_after(),
            spec.renew_before_for(leaf.not_after() - leaf.not_before()),
        ),
    };
    if let Some(change) = spec_change(input, secret, &leaf, &key) {
        return Err((IssueReason::SpecChanged, change, Some(current)));
    }
    if let Some(ca) = input.issuer.ca
        && !leaf.is_signed_by(ca)
    {
        return Err((
            IssueReason::IssuerRotated,
            format!(
                "the certificate is not signed by the issuer's current CA `{}`",
                ca.subject()
            ),
            Some(current),
        ));
    }
    if input.now >= leaf.not_after() {
        return Err((
            IssueReason::Expired,
            format!(
                "the certificate expired at {}",
                leaf.not_after().to_rfc3339()
            ),
            Some(current),
        ));
    }
    if input.now >= current.renewal_time {
        return Err((
            IssueReason::Renewing,
            format!(
                "renewal time {} has come",
                current.renewal_time.to_rfc3339()
            ),
            Some(current),
        ));
    }
    Ok(current)
}

/// The first way the issued certificate differs from the spec, if any.
fn spec_change(
    input: &PlanInput<'_>,
    secret: &SecretData,
    leaf: &Certificate,
    key: &SigningKey,
) -> Option<String> {
    let spec = input.spec;
    let profile = leaf.profile();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let want_cn = spec.common_name.as_deref().filter(|cn| !cn.is_empty());
    if leaf.common_name() != want_cn {
        return Some(format!(
            "commonName changed from {:?} to {:?}",
            leaf.common_name().unwrap_or(""),
            want_cn.unwrap_or("")
        ));
    }
    if sorted(&profile.dns_names) != sorted(&spec.dns_names) {
        return Some(format!(
            "dnsNames changed from {:?} to {:?}",
            profile.dns_names, spec.dns_names
        ));
    }
    if sorted(&profile.uris) != sorted(&spec.uris) {
        return Some(format!(
            "uris changed from {:?} to {:?}",
            profile.uris, spec.uris
        ));
    }
    let want_usages = spec.effective_usages();
    if profile.usages != want_usages {
        let names = |v: &[lanyard_crds::usage::KeyUsage]| {
            v.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
        };
        return Some(format!(
            "usages changed from [{}] to [{}]",
            names(&profile.usages),
            names(&want_usages)
        ));
    }
    if leaf.ca().is_some() != spec.is_ca {
        return Some(format!("isCA changed to {}", spec.is_ca));
    }
    let want_key = key_algorithm(spec);
    if key.algorithm() != want_key {
        return Some(format!(
            "private key changed from {} to {want_key}",
            key.algorithm()
        ));
    }
    let recorded = |name: &str| secret.annotation(name);
    let duration = spec.duration().to_string();
    if recorded(annotations::DURATION).is_some_and(|d| d != duration) {
        return Some(format!(
            "duration changed from {} to {duration}",
            recorded(annotations::DURATION).unwrap_or_default()
        ));
    }
    let issuer = input.issuer;
    let issued_by = (
        recorded(annotations::ISSUER_NAME),
        recorded(annotations::ISSUER_KIND),
        recorded(annotations::ISSUER_GROUP),
    );
    if issued_by != (Some(issuer.name), Some(issuer.kind.as_str()), Some(GROUP)) {
        return Some(format!(
            "issuerRef changed from {}/{} to {}/{}",
            issued_by.1.unwrap_or("?"),
            issued_by.0.unwrap_or("?"),
            issuer.kind,
            issuer.name
        ));
    }
    None
}

/// The key algorithm a spec asks for, in the CA core's terms.
pub fn key_algorithm(spec: &CertificateSpec) -> KeyAlgorithm {
    match (spec.key_algorithm(), spec.key_size()) {
        (PrivateKeyAlgorithm::Rsa, size) => KeyAlgorithm::Rsa {
            bits: size.unwrap_or(2048) as usize,
        },
        (PrivateKeyAlgorithm::Ed25519, _) => KeyAlgorithm::Ed25519,
        (_, Some(384)) => KeyAlgorithm::EcdsaP384,
        _ => KeyAlgorithm::EcdsaP256,
    }
}
