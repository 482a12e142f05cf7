//! The trust anchor's rotation as both shells carry it out: reading the
//! anchor's CA Secret (and the prepared new anchor's), turning what they
//! hold into the state machine's [`Observed`], and turning its
//! [`Action`]s into the Secret contents to write. No I/O: the local shell
//! writes files, the Kubernetes shell replaces Secrets.

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_issuer::{Certificate, KeyAlgorithm, SigningKey, TrustAnchor};
use lanyard_trust_bundle::rotation::{Action, AnchorId, Decision, Observed, Phase, Rotation};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::secret::{CA_CRT, SecretData, TLS_CRT, TLS_KEY, annotations};

/// The rotation record the shells keep (`DIR/anchors/<anchor>.json`
/// locally, an annotation on the anchor's CA Secret in a cluster) and
/// `lanyard anchor status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationRecord {
    /// The anchor's name (its CA Secret).
    pub anchor: String,
    /// The state machine's state.
    pub rotation: Rotation,
    /// What the rotation waits for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// When the next step is due by the clock; `None` when it waits on an
    /// event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_due: Option<DateTime<Utc>>,
    /// The anchor in force: subject and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_subject: Option<String>,
    /// When the anchor in force expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_not_after: Option<DateTime<Utc>>,
    /// When the record was written.
    pub updated: DateTime<Utc>,
}

impl RotationRecord {
    /// The record after `decision` for the anchor whose CA Secret is
    /// `name`, written at `now`.
    pub fn after(name: &str, ca: &AnchorSecret, decision: &Decision, now: DateTime<Utc>) -> Self {
        let (waiting_for, next_step_due) = match decision.waiting {
            Some((gate, until)) => (Some(gate.describe().to_string()), until),
            None => (None, None),
        };
        let current = ca.find(&decision.state.current);
        RotationRecord {
            anchor: name.to_string(),
            rotation: decision.state.clone(),
            waiting_for,
            next_step_due,
            current_subject: current.map(|c| c.subject().to_string()),
            current_not_after: current.map(Certificate::not_after),
            updated: now,
        }
    }

    /// Whether it says something `previous` did not: another state, or
    /// another wait.
    pub fn differs_from(&self, previous: Option<&RotationRecord>) -> bool {
        previous.map(|r| (&r.rotation, &r.waiting_for, r.next_step_due))
            != Some((&self.rotation, &self.waiting_for, self.next_step_due))
    }
}

/// Tells what a step changed: a new phase is logged, a finished rotation
/// counted, and the rotation's series (phase, since, next step due) set.
pub fn report(
    metrics: &Metrics,
    before: Option<&RotationRecord>,
    after: &RotationRecord,
    now: DateTime<Utc>,
) {
    let anchor = after.anchor.as_str();
    let rotation = &after.rotation;
    let short = |id: &str| id.chars().take(23).collect::<String>();
    match (before.map(|r| r.rotation.phase), rotation.phase) {
        (Some(b), a) if b == a => {}
        (Some(_), Phase::Stable) => tracing::info!(
            anchor,
            current = %short(&rotation.current),
            "trust anchor rotation finished: Stable, the old anchor removed from every bundle and ca.crt"
        ),
        (None, Phase::Stable) => {}
        (_, phase) => tracing::info!(
            anchor,
            new_anchor = %rotation.next.as_deref().map(short).unwrap_or_default(),
            "trust anchor rotation: {phase}"
        ),
    }
    if rotation.completed > before.map_or(0, |r| r.rotation.completed) {
        metrics.rotated(anchor);
    }
    metrics.observe_rotation(
        anchor,
        rotation.phase.as_str(),
        &Phase::ALL.map(Phase::as_str),
        rotation.since,
        after.next_step_due.unwrap_or(now),
    );
}

/// The name of the Secret holding the prepared anchor of the CA Secret
/// `ca_secret`, until the old anchor is gone.
pub fn prepared_name(ca_secret: &str) -> String {
    format!("{ca_secret}-next")
}

/// An anchor's CA Secret, read: what signs and what is trusted.
#[derive(Debug, Clone)]
pub struct AnchorSecret {
    /// The Secret as read.
    pub secret: SecretData,
    /// The anchor that signs (first of `tls.crt`).
    pub signer: Certificate,
    /// The anchors `ca.crt` holds (the signer when there is no `ca.crt`).
    pub trusted: Vec<Certificate>,
}

impl AnchorSecret {
    /// Reads a CA Secret; `what` names it in errors.
    pub fn read(secret: SecretData, what: &str) -> Result<Self, String> {
        let crt = secret
            .get(TLS_CRT)
            .ok_or_else(|| format!("{what} has no tls.crt"))?;
        secret
            .get(TLS_KEY)
            .ok_or_else(|| format!("{what} has no tls.key"))?;
        let signer = Certificate::parse_pem_bundle(crt, &format!("{what} tls.crt"))
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{what} tls.crt holds no certificate"))?;
        let trusted = match secret.get(CA_CRT) {
            Some(pem) => Certificate::parse_pem_bundle(pem, &format!("{what} ca.crt"))
                .map_err(|e| e.to_string())?,
            None => vec![signer.clone()],
        };
        Ok(AnchorSecret {
            secret,
            signer,
            trusted,
        })
    }

    /// Whether the signer is a root this Secret can rotate: self-signed,
    /// a CA, with its key beside it.
    pub fn is_root(&self) -> bool {
        self.signer.is_self_issued() && self.signer.ca().is_some()
    }

    fn find(&self, id: &str) -> Option<&Certificate> {
        self.trusted
            .iter()
            .chain(std::iter::once(&self.signer))
            .find(|c| anchor_id(c) == id)
    }
}

/// The name rotation state gives an anchor: its SHA-256 fingerprint.
pub fn anchor_id(certificate: &Certificate) -> AnchorId {
    certificate.sha256_fingerprint()
}

fn pem_of<'a>(certificates: impl IntoIterator<Item = &'a Certificate>) -> Vec<u8> {
    certificates
        .into_iter()
        .map(Certificate::to_pem)
        .collect::<String>()
        .into_bytes()
}

/// A root as its CA Secret holds it: `tls.crt` and `ca.crt` the
/// certificate, `tls.key` its key.
pub fn anchor_secret(anchor: &TrustAnchor) -> SecretData {
    let pem = anchor.certificate().to_pem();
    let mut secret = SecretData::default();
    secret.data.insert(TLS_CRT.into(), pem.clone().into_bytes());
    secret.data.insert(
        TLS_KEY.into(),
        anchor.key().to_pkcs8_pem().as_bytes().to_vec(),
    );
    secret.data.insert(CA_CRT.into(), pem.into_bytes());
    secret
}

/// What the shell knows besides the two Secrets.
#[derive(Debug, Clone)]
pub struct Surroundings {
    /// For each bundle target, the anchors it was read back holding.
    pub targets: Vec<Vec<AnchorId>>,
    /// A rotation was asked for by hand.
    pub requested: bool,
    /// How long before its end the anchor rotates; `None`: a third of its
    /// lifetime.
    pub renew_before: Option<TimeDelta>,
    /// The chains of the identity issuer(s) as served or stored; `None`
    /// while unknown (the identity service has loaded none yet), empty
    /// when the CA signs no intermediate (the switch is then the signer's).
    pub issuer_chains: Option<Vec<Vec<Certificate>>>,
    /// How many Certificates chain only to the old anchor (the shell
    /// counts them with [`chains_only_to_old`] in `IssuerSwitched`).
    pub certificates_on_old: usize,
}

/// The state machine's view of an anchor's Secrets.
pub fn observe(
    ca: &AnchorSecret,
    prepared: Option<&AnchorSecret>,
    state: &Rotation,
    around: &Surroundings,
    now: DateTime<Utc>,
) -> Observed {
    let signer = &ca.signer;
    let lifetime = signer.not_after() - signer.not_before();
    let renew_before = around.renew_before.unwrap_or(lifetime / 3);
    let next = next_anchor(ca, prepared, state);
    // The anchor the identity issuer chains to: the new one only when
    // every identity issuer does.
    let issuer_anchor = match &around.issuer_chains {
        None => None,
        Some(chains) if chains.is_empty() => Some(anchor_id(signer)),
        Some(chains) => {
            let candidates: Vec<&Certificate> = next.iter().chain(ca.trusted.iter()).collect();
            let anchors: Vec<Option<AnchorId>> = chains
                .iter()
                .map(|chain| {
                    candidates.iter().find_map(|anchor| {
                        lanyard_issuer::verify_chain(chain, std::slice::from_ref(*anchor), now)
                            .ok()
                            .map(|_| anchor_id(anchor))
                    })
                })
                .collect();
            let first = anchors[0].clone();
            if anchors.iter().all(|a| *a == first) {
                first
            } else {
                // Not all there yet: the old one still counts.
                Some(state.current.clone())
            }
        }
    };
    Observed {
        signer: anchor_id(signer),
        trusted: ca.trusted.iter().map(anchor_id).collect(),
        renewal_time: signer.not_after() - renew_before,
        requested: around.requested,
        prepared: prepared.map(|p| anchor_id(&p.signer)),
        targets: around.targets.clone(),
        issuer_anchor,
        certificates_on_old: around.certificates_on_old,
    }
}

/// The new anchor of a rotation under way, as a certificate.
pub fn next_anchor(
    ca: &AnchorSecret,
    prepared: Option<&AnchorSecret>,
    state: &Rotation,
) -> Option<Certificate> {
    let next = state.next.as_deref()?;
    ca.find(next)
        .or_else(|| prepared.map(|p| &p.signer).filter(|s| anchor_id(s) == next))
        .cloned()
}

/// The old anchor of a rotation under way.
pub fn old_anchor(ca: &AnchorSecret, state: &Rotation) -> Option<Certificate> {
    ca.find(&state.current).cloned()
}

/// Whether a Certificate's chain verifies with the old anchor and not the
/// new one: it would be stranded if the old anchor went now.
pub fn chains_only_to_old(
    chain: &[Certificate],
    old: &Certificate,
    next: &Certificate,
    now: DateTime<Utc>,
) -> bool {
    lanyard_issuer::verify_chain(chain, std::slice::from_ref(old), now).is_ok()
        && lanyard_issuer::verify_chain(chain, std::slice::from_ref(next), now).is_err()
}

/// Whether the shell counts Certificates on the old anchor in this phase
/// (only then is it worth reading every Secret).
pub fn counts_certificates(state: &Rotation) -> bool {
    state.phase == Phase::IssuerSwitched
}

/// The Secret writes an action comes to.
#[derive(Debug, Default)]
pub struct Writes {
    /// The anchor's CA Secret, rewritten.
    pub ca: Option<SecretData>,
    /// The prepared anchor's Secret, created.
    pub prepared: Option<SecretData>,
    /// The prepared anchor's Secret is to be deleted.
    pub delete_prepared: bool,
}

/// Turns an action into Secret contents. `GenerateNext` makes a key and
/// a root with the current anchor's common name, lifetime and key
/// algorithm; the rest rearrange what the Secrets hold.
/// Idempotent: an action already carried out writes nothing.
pub fn writes(
    action: &Action,
    ca: &AnchorSecret,
    prepared: Option<&AnchorSecret>,
    ca_name: &str,
    now: DateTime<Utc>,
) -> Result<Writes, String> {
    let prepared_or = || {
        prepared.ok_or_else(|| {
            format!(
                "the prepared anchor Secret `{}` is missing or unusable",
                prepared_name(ca_name)
            )
        })
    };
    let mut out = Writes::default();
    match action {
        Action::GenerateNext => {
            let lifetime = ca.signer.not_after() - ca.signer.not_before();
            let algorithm = ca
                .secret
                .get(TLS_KEY)
                .and_then(|pem| SigningKey::from_pem(pem, "anchor key").ok())
                .map_or(KeyAlgorithm::EcdsaP256, |k| k.algorithm());
            let name = ca.signer.common_name().unwrap_or("trust anchor");
            let anchor = TrustAnchor::generate_named(name, lifetime, algorithm, now)
                .map_err(|e| format!("cannot make a new anchor: {e}"))?;
            let mut secret = anchor_secret(&anchor);
            secret.annotations.insert(
                annotations::PREPARED_ANCHOR_FOR.to_string(),
                ca_name.to_string(),
            );
            out.prepared = Some(secret);
        }
        Action::TrustBoth { current, next } => {
            let prepared = prepared_or()?;
            if anchor_id(&prepared.signer) != *next {
                return Err("the prepared anchor is not the rotation's new anchor".into());
            }
            let current = ca.find(current).unwrap_or(&ca.signer);
            let both = pem_of([current, &prepared.signer]);
            if ca.secret.get(CA_CRT) != Some(both.as_slice()) {
                let mut secret = ca.secret.clone();
                secret.data.insert(CA_CRT.into(), both);
                out.ca = Some(secret);
            }
        }
        // Already signing with the new anchor: nothing to write.
        Action::SwitchSigner { next } if anchor_id(&ca.signer) != *next => {
            let prepared = prepared_or()?;
            let key = prepared
                .secret
                .get(TLS_KEY)
                .ok_or("the prepared anchor has no key")?;
            let mut secret = ca.secret.clone();
            secret
                .data
                .insert(TLS_CRT.into(), prepared.signer.to_pem().into_bytes());
            secret.data.insert(TLS_KEY.into(), key.to_vec());
            secret
                .data
                .insert(CA_CRT.into(), pem_of([&ca.signer, &prepared.signer]));
            out.ca = Some(secret);
        }
        Action::DropOld { next } => {
            let keep = ca
                .find(next)
                .ok_or("the new anchor is neither trusted nor signing")?;
            if ca.trusted.len() != 1 || anchor_id(&ca.trusted[0]) != *next {
                let mut secret = ca.secret.clone();
                secret.data.insert(CA_CRT.into(), pem_of([keep]));
                out.ca = Some(secret);
            }
            out.delete_prepared = prepared.is_some();
        }
        Action::DiscardPrepared => out.delete_prepared = prepared.is_some(),
        _ => {}
    }
    Ok(out)
}
