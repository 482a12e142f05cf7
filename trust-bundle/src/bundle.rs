//! Assembling a bundle: from what each source holds now (or why it cannot
//! be read) and what it last held when it was good, the anchors to
//! distribute.
//!
//! The rules, each one row of the tests:
//! - anchors are sorted (oldest `notBefore` first, then by DER) and
//!   deduplicated by DER, so the same content always gives the same bytes
//!   and a target is not rewritten for nothing;
//! - an expired anchor is dropped with a [`Warning`], not an error: an old
//!   anchor left in a `ca.crt` must not take the whole bundle down;
//! - a source that turns unreadable or invalid keeps its last good
//!   anchors, and the bundle says which source failed and why;
//! - a bundle with no anchor left is refused ([`BundleError::Empty`]):
//!   writing it would make every peer untrusted.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use lanyard_x509::Certificate;

/// One trust anchor in a bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct Anchor {
    certificate: Certificate,
    sha256: String,
    serial: String,
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anchor")
            .field("subject", &self.subject())
            .field("not_after", &self.not_after())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Anchor {
    /// Wraps a certificate.
    pub fn new(certificate: Certificate) -> Self {
        let sha256 = certificate.sha256_fingerprint();
        let serial = certificate.x509().tbs_certificate.raw_serial_as_string();
        Anchor {
            certificate,
            sha256,
            serial,
        }
    }

    /// The certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// Its subject, e.g. `CN=root.linkerd.cluster.local`.
    pub fn subject(&self) -> &str {
        self.certificate.subject()
    }

    /// Its serial number, colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The end of its validity.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.certificate.not_after()
    }

    /// The SHA-256 fingerprint of its DER, colon-separated hex: the name
    /// rotation state and status use for it.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// What the shell read from one source.
#[derive(Debug, Clone)]
pub struct SourceRead {
    /// The source, as messages name it (`Secret cert-manager/roots key
    /// ca.crt`, `inLine`, `ClusterIssuer linkerd-trust-anchor`).
    pub name: String,
    /// The PEM it holds, or why it could not be read (missing object or
    /// key, an API error).
    pub pem: Result<Vec<u8>, String>,
}

impl SourceRead {
    /// A source that holds `pem`.
    pub fn pem(name: impl Into<String>, pem: impl Into<Vec<u8>>) -> Self {
        SourceRead {
            name: name.into(),
            pem: Ok(pem.into()),
        }
    }

    /// A source that could not be read.
    pub fn unreadable(name: impl Into<String>, reason: impl Into<String>) -> Self {
        SourceRead {
            name: name.into(),
            pem: Err(reason.into()),
        }
    }
}

/// Something the bundle left out, or kept from before, that the operator
/// should hear about; none of these stops the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// An expired anchor was dropped.
    Expired {
        /// The source it came from.
        source: String,
        /// Its subject.
        subject: String,
        /// When it expired.
        not_after: DateTime<Utc>,
    },
    /// A source could not be used; its last good anchors were kept (if it
    /// had any).
    SourceFailed {
        /// The source.
        source: String,
        /// Why.
        reason: String,
        /// How many anchors were kept from its last good content.
        kept: usize,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Expired {
                source,
                subject,
                not_after,
            } => write!(
                f,
                "{source}: dropped the anchor `{subject}`, expired at {}",
                not_after.to_rfc3339()
            ),
            Warning::SourceFailed {
                source,
                reason,
                kept: 0,
            } => write!(f, "{source}: {reason}; it has no last good anchors to keep"),
            Warning::SourceFailed {
                source,
                reason,
                kept,
            } => write!(
                f,
                "{source}: {reason}; keeping its last good {kept} anchor(s)"
            ),
        }
    }
}

/// Why no bundle can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// No source gave a valid, unexpired anchor: writing an empty bundle
    /// would make every peer untrusted, so the targets keep what they
    /// hold.
    #[error("the bundle would hold no anchor, so the targets keep what they hold: {}", reasons.join("; "))]
    Empty {
        /// What each source said.
        reasons: Vec<String>,
    },
}

/// The result of [`assemble`].
#[derive(Debug, Clone)]
pub struct Assembled {
    /// The anchors, sorted and deduplicated.
    pub anchors: Vec<Anchor>,
    /// What was dropped or kept from before.
    pub warnings: Vec<Warning>,
    /// Each source's good anchors (its last good ones when it failed now),
    /// for the next call's `last_good`.
    pub last_good: BTreeMap<String, Vec<Anchor>>,
}

impl Assembled {
    /// The bundle as PEM, one certificate after another.
    pub fn pem(&self) -> String {
        self.anchors
            .iter()
            .map(|a| a.certificate.to_pem())
            .collect()
    }

    /// Whether any source failed (the bundle holds last good anchors, or
    /// lacks that source's).
    pub fn degraded(&self) -> bool {
        self.warnings
            .iter()
            .any(|w| matches!(w, Warning::SourceFailed { .. }))
    }
}

/// Parses a source's PEM into its anchors; an invalid source is an error
/// as a whole (a half-read file is not trusted in part).
fn parse(source: &SourceRead) -> Result<Vec<Certificate>, String> {
    let pem = source.pem.as_ref().map_err(Clone::clone)?;
    let certificates = Certificate::parse_pem_bundle(pem, &source.name)
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no certificate".into());
    }
    if let Some(leaf) = certificates.iter().find(|c| c.ca().is_none()) {
        return Err(format!(
            "`{}` is not a CA certificate, so it cannot be a trust anchor",
            leaf.subject()
        ));
    }
    Ok(certificates)
}

/// Assembles a bundle from `sources` at `now`. `last_good` is what the
/// previous call returned in [`Assembled::last_good`] (empty on the first).
pub fn assemble(
    sources: &[SourceRead],
    last_good: &BTreeMap<String, Vec<Anchor>>,
    now: DateTime<Utc>,
) -> Result<Assembled, BundleError> {
    let mut warnings = Vec::new();
    let mut good = BTreeMap::new();
    let mut all: Vec<Anchor> = Vec::new();
    let mut reasons = Vec::new();
    for source in sources {
        let anchors = match parse(source) {
            Ok(certificates) => {
                let mut anchors = Vec::new();
                for certificate in certificates {
                    if certificate.not_after() < now {
                        warnings.push(Warning::Expired {
                            source: source.name.clone(),
                            subject: certificate.subject().to_string(),
                            not_after: certificate.not_after(),
                        });
                    } else {
                        anchors.push(Anchor::new(certificate));
                    }
                }
                if anchors.is_empty() {
                    reasons.push(format!("{}: every anchor has expired", source.name));
                }
                anchors
            }
            Err(reason) => {
                let kept: Vec<Anchor> = last_good
                    .get(&source.name)
                    .into_iter()
                    .flatten()
                    .filter(|a| a.not_after() >= now)
                    .cloned()
                    .collect();
                reasons.push(format!("{}: {reason}", source.name));
                warnings.push(Warning::SourceFailed {
                    source: source.name.clone(),
                    reason,
                    kept: kept.len(),
                });
                kept
            }
        };
        all.extend(anchors.iter().cloned());
        good.insert(source.name.clone(), anchors);
    }
    all.sort_by(|a, b| {
        (a.certificate.not_before(), a.certificate.der())
            .cmp(&(b.certificate.not_before(), b.certificate.der()))
    });
    all.dedup_by(|a, b| a.certificate.der() == b.certificate.der());
    if all.is_empty() {
        if sources.is_empty() {
            reasons.push("the bundle has no source".into());
        }
        return Err(BundleError::Empty { reasons });
    }
    Ok(Assembled {
        anchors: all,
        warnings,
        last_good: good,
    })
}
