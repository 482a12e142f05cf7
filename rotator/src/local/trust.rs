//! Trust bundles and the trust anchor's rotation in the local shell.
//!
//! - Every TrustBundle manifest is assembled each pass and written to
//!   `DIR/bundles/<name>.pem` atomically, only when its content changed;
//!   then read back, so a rotation relies on what is on disk.
//! - The anchor `lanyard up` made (the CA Secret of the ClusterIssuer
//!   `linkerd-trust-anchor`) rotates with overlap by the state machine of
//!   [`lanyard_trust_bundle::rotation`]. Its state lives in
//!   `DIR/anchors/<anchor>.json`, the prepared anchor in the Secret
//!   `<anchor>-next` until the old one is gone; `lanyard anchor rotate`
//!   leaves a request in `DIR/anchors/<anchor>.rotate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use lanyard_crds::api::{IssuerConfig, IssuerKind};
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::trust_bundle::TrustBundle;
use lanyard_issuer::Certificate;
use lanyard_trust_bundle::rotation::{self, Action, Phase, Rotation, Timing};
use lanyard_trust_bundle::{Anchor, SourceRead, assemble};
use serde::{Deserialize, Serialize};

use super::secrets::{self, Durability, SecretStore};
use super::{LocalError, TRUST_ANCHOR_NAME};
use crate::anchor::{self, AnchorSecret, Surroundings, Writes};
use crate::metrics::Metrics;
use crate::secret::{CA_CRT, SecretData, TLS_CRT, annotations};

/// The chain the identity service serves now (issuer first), if it has
/// loaded one: how a rotation knows the switch reached the service.
pub type ServedIssuer = Arc<dyn Fn() -> Option<Vec<Certificate>> + Send + Sync>;

/// How the local shell rotates the anchor.
#[derive(Clone)]
pub struct TrustOptions {
    /// The rotation's times: propagation delay, leaf lifetime, skew.
    pub timing: Timing,
    /// How long before its end the anchor rotates; `None`: a third of its
    /// lifetime, cert-manager's default share.
    pub anchor_renew_before: Option<TimeDelta>,
    /// The identity service's loaded chain, when it runs in this process.
    pub served_issuer: Option<ServedIssuer>,
}

impl std::fmt::Debug for TrustOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustOptions")
            .field("timing", &self.timing)
            .field("anchor_renew_before", &self.anchor_renew_before)
            .field("served_issuer", &self.served_issuer.is_some())
            .finish()
    }
}

/// Leaves are backdated by this much and clocks drift; a rotation waits
/// this long past the longest leaf lifetime.
pub const DEFAULT_SKEW: TimeDelta = TimeDelta::seconds(30);
/// The local propagation delay: the proxies re-read their anchors file
/// every second.
pub const DEFAULT_LOCAL_PROPAGATION_DELAY: TimeDelta = TimeDelta::seconds(5);

pub use crate::anchor::RotationRecord;

/// A rotation asked for by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateRequest {
    /// When it was asked for.
    pub requested_at: DateTime<Utc>,
}

/// Why `lanyard anchor rotate` refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateRequestError {
    /// A rotation is under way.
    #[error(transparent)]
    InProgress(#[from] rotation::RotateError),
    /// One was already asked for and has not started.
    #[error(
        "a rotation was already requested at {} and has not started yet; is `lanyard up` running on this state directory?",
        .0.to_rfc3339()
    )]
    AlreadyRequested(DateTime<Utc>),
    /// The state directory cannot be read or written.
    #[error(transparent)]
    Local(#[from] LocalError),
}

/// The directory of rotation records and requests.
pub fn anchors_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("anchors")
}

/// The directory the bundles are written to.
pub fn bundles_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("bundles")
}

fn record_path(state_dir: &Path, anchor: &str) -> PathBuf {
    anchors_dir(state_dir).join(format!("{anchor}.json"))
}

fn request_path(state_dir: &Path, anchor: &str) -> PathBuf {
    anchors_dir(state_dir).join(format!("{anchor}.rotate"))
}

/// Whether a path is a rotation request (what wakes `lanyard up`).
pub fn is_rotate_request(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rotate")
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> LocalError {
    LocalError::CorruptState {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, LocalError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(corrupt(path, e)),
    }
}

/// The rotation record of the anchor `lanyard up` manages, if any.
pub fn read_record(state_dir: &Path) -> Result<Option<RotationRecord>, LocalError> {
    read_json(&record_path(state_dir, TRUST_ANCHOR_NAME))
}

/// A pending request, if any.
pub fn read_request(state_dir: &Path) -> Result<Option<RotateRequest>, LocalError> {
    read_json(&request_path(state_dir, TRUST_ANCHOR_NAME))
}

/// `lanyard anchor rotate`: asks the `lanyard up` on `state_dir` to rotate
/// the anchor, unless a rotation is under way or already asked for (the
/// error names the phase). Writes nothing when it refuses.
pub fn request_rotation(
    state_dir: &Path,
    now: DateTime<Utc>,
) -> Result<RotateRequest, RotateRequestError> {
    if let Some(record) = read_record(state_dir)? {
        rotation::may_rotate(&record.rotation)?;
    }
    if let Some(pending) = read_request(state_dir)? {
        return Err(RotateRequestError::AlreadyRequested(pending.requested_at));
    }
    let request = RotateRequest { requested_at: now };
    let dir = anchors_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|e| corrupt(&dir, e))?;
    secrets::write_file_atomic(
        &request_path(state_dir, TRUST_ANCHOR_NAME),
        &serde_json::to_vec_pretty(&request).expect("requests serialise"),
        0o644,
        Durability::Fsync,
    )
    .map_err(LocalError::from)?;
    Ok(request)
}

/// The local shell's trust work: bundles and the anchor's rotation.
#[derive(Debug)]
pub(super) struct LocalTrust {
    options: TrustOptions,
    state_dir: PathBuf,
    domain: IdentityDomain,
    cluster_resource_namespace: String,
    durability: Durability,
    last_good: BTreeMap<String, BTreeMap<String, Vec<Anchor>>>,
    reported: BTreeSet<String>,
    rotation_error: Option<String>,
}

/// What a trust step did.
#[derive(Debug, Default)]
pub(super) struct TrustReport {
    /// The CA Secret changed: Certificates must be looked at again now.
    pub ca_changed: bool,
    /// When the rotation wants to be looked at again.
    pub next_wake: Option<DateTime<Utc>>,
}

/// How often a rotation waiting on an event (a target written, the
/// identity service reloading) looks again.
const EVENT_POLL: TimeDelta = TimeDelta::seconds(1);

impl LocalTrust {
    pub(super) fn new(
        options: TrustOptions,
        state_dir: PathBuf,
        domain: IdentityDomain,
        cluster_resource_namespace: String,
        durability: Durability,
    ) -> Self {
        LocalTrust {
            options,
            state_dir,
            domain,
            cluster_resource_namespace,
            durability,
            last_good: BTreeMap::new(),
            reported: BTreeSet::new(),
            rotation_error: None,
        }
    }

    /// Logs `message` once while it stays the same.
    fn report_once(&mut self, key: &str, message: String, error: bool) {
        let entry = format!("{key}\u{0}{message}");
        if self.reported.insert(entry) {
            if error {
                tracing::error!(bundle = key, "{message}");
            } else {
                tracing::warn!(bundle = key, "{message}");
            }
        }
    }

    fn ca_secret_of(
        &self,
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        kind: IssuerKind,
        name: &str,
    ) -> Result<(String, String), String> {
        match kind {
            IssuerKind::ClusterIssuer => {
                let config = issuers
                    .get(&(IssuerKind::ClusterIssuer, String::new(), name.to_string()))
                    .ok_or_else(|| format!("ClusterIssuer `{name}` does not exist"))?;
                let ca = config
                    .ca
                    .as_ref()
                    .ok_or_else(|| format!("ClusterIssuer `{name}` is not a CA issuer"))?;
                Ok((
                    self.cluster_resource_namespace.clone(),
                    ca.secret_name.clone(),
                ))
            }
            IssuerKind::Issuer => Err(format!(
                "Issuer `{name}` is namespaced; a TrustBundle is cluster-scoped and takes a ClusterIssuer"
            )),
        }
    }

    fn read_source(
        &self,
        store: &SecretStore,
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        source: &lanyard_crds::trust_bundle::BundleSource,
    ) -> SourceRead {
        let ns = &self.cluster_resource_namespace;
        let secret_key = |namespace: &str, name: &str, key: &str, what: String| match store
            .read(namespace, name)
        {
            Ok(Some(secret)) => match secret.get(key) {
                Some(pem) => SourceRead::pem(what, pem),
                None => SourceRead::unreadable(what, format!("has no key `{key}`")),
            },
            Ok(None) => SourceRead::unreadable(what, "does not exist"),
            Err(e) => SourceRead::unreadable(what, e.to_string()),
        };
        if let Some(selector) = &source.secret {
            let what = format!("Secret {ns}/{} key {}", selector.name, selector.key);
            return secret_key(ns, &selector.name, &selector.key, what);
        }
        if let Some(selector) = &source.config_map {
            return SourceRead::unreadable(
                format!("ConfigMap {ns}/{}", selector.name),
                "the local mode keeps no ConfigMaps; use a secret or inLine source",
            );
        }
        if let Some(pem) = &source.in_line {
            return SourceRead::pem("inLine", pem.as_bytes());
        }
        let issuer = source
            .issuer_ref
            .as_ref()
            .expect("a validated source sets one kind");
        let what = format!(
            "{} {}",
            issuer.kind.as_deref().unwrap_or("Issuer"),
            issuer.name
        );
        let Some(kind) = issuer.issuer_kind() else {
            return SourceRead::unreadable(what, "is not a kind Lanyard serves (ClusterIssuer)");
        };
        match self.ca_secret_of(issuers, kind, &issuer.name) {
            Ok((namespace, name)) => {
                let read = secret_key(&namespace, &name, CA_CRT, what.clone());
                if read.pem.is_ok() {
                    return read;
                }
                // A CA Secret without ca.crt trusts its own certificate.
                secret_key(&namespace, &name, TLS_CRT, what)
            }
            Err(reason) => SourceRead::unreadable(what, reason),
        }
    }

    /// Assembles and writes every bundle; returns, per bundle, the anchors
    /// its target was read back holding.
    pub(super) fn write_bundles(
        &mut self,
        store: &SecretStore,
        bundles: &[TrustBundle],
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        metrics: &Metrics,
        now: DateTime<Utc>,
    ) -> BTreeMap<String, Vec<String>> {
        let dir = bundles_dir(&self.state_dir);
        let mut read_back = BTreeMap::new();
        let live: BTreeSet<String> = bundles
            .iter()
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        self.last_good.retain(|name, _| live.contains(name));
        for bundle in bundles {
            let name = bundle.metadata.name.clone().unwrap_or_default();
            let sources: Vec<SourceRead> = bundle
                .spec
                .sources
                .iter()
                .map(|s| self.read_source(store, issuers, s))
                .collect();
            let last_good = self.last_good.get(&name).cloned().unwrap_or_default();
            let path = dir.join(format!("{name}.pem"));
            match assemble(&sources, &last_good, now) {
                Ok(assembled) => {
                    for warning in &assembled.warnings {
                        self.report_once(&name, warning.to_string(), false);
                    }
                    self.last_good
                        .insert(name.clone(), assembled.last_good.clone());
                    let pem = assembled.pem();
                    let on_disk = std::fs::read(&path).ok();
                    if on_disk.as_deref() != Some(pem.as_bytes()) {
                        let written = std::fs::create_dir_all(&dir)
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                secrets::write_file_atomic(
                                    &path,
                                    pem.as_bytes(),
                                    0o644,
                                    self.durability,
                                )
                                .map_err(|e| e.to_string())
                            });
                        match written {
                            Ok(()) => {
                                tracing::info!(
                                    bundle = %name,
                                    path = %path.display(),
                                    anchors = assembled.anchors.len(),
                                    "trust bundle written"
                                );
                                metrics.observe_bundle(&name, assembled.anchors.len(), now);
                            }
                            Err(error) => {
                                metrics.bundle_failed(&name);
                                self.report_once(
                                    &name,
                                    format!("cannot write {}: {error}", path.display()),
                                    true,
                                );
                            }
                        }
                    } else {
                        let updated = std::fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .map(DateTime::<Utc>::from)
                            .unwrap_or(now);
                        metrics.observe_bundle(&name, assembled.anchors.len(), updated);
                    }
                }
                Err(error) => {
                    metrics.bundle_failed(&name);
                    self.report_once(&name, error.to_string(), true);
                }
            }
            read_back.insert(name, read_anchor_ids(&path));
        }
        read_back
    }

    /// Runs the anchor's rotation as far as it can go now.
    pub(super) fn rotate(
        &mut self,
        store: &SecretStore,
        bundles: &[TrustBundle],
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        targets: &BTreeMap<String, Vec<String>>,
        metrics: &Metrics,
        now: DateTime<Utc>,
    ) -> Result<TrustReport, LocalError> {
        let mut report = TrustReport::default();
        let Ok((ns, name)) =
            self.ca_secret_of(issuers, IssuerKind::ClusterIssuer, TRUST_ANCHOR_NAME)
        else {
            // No anchor of ours to rotate (set up by hand differently).
            return Ok(report);
        };
        let next_name = anchor::prepared_name(&name);
        // The targets that carry this CA's anchors.
        let targets: Vec<Vec<String>> = bundles
            .iter()
            .filter(|b| b.spec.distributes(TRUST_ANCHOR_NAME))
            .filter_map(|b| targets.get(b.metadata.name.as_deref().unwrap_or_default()))
            .cloned()
            .collect();
        let path = record_path(&self.state_dir, TRUST_ANCHOR_NAME);
        let mut record: Option<RotationRecord> = read_json(&path)?;
        for _ in 0..16 {
            let read = |which: &str| -> Result<Option<AnchorSecret>, String> {
                match store.read(&ns, which).map_err(|e| e.to_string())? {
                    Some(secret) => {
                        AnchorSecret::read(secret, &format!("Secret {ns}/{which}")).map(Some)
                    }
                    None => Ok(None),
                }
            };
            let ca = match read(&name) {
                Ok(Some(ca)) => ca,
                Ok(None) => return Ok(report),
                Err(reason) => {
                    self.rotation_failed(format!("the anchor's CA Secret is not usable: {reason}"));
                    return Ok(report);
                }
            };
            let prepared = read(&next_name).ok().flatten();
            let state = record
                .as_ref()
                .map(|r| r.rotation.clone())
                .unwrap_or_else(|| Rotation::stable(anchor::anchor_id(&ca.signer), now));
            let around = self.surroundings(store, &ca, prepared.as_ref(), &state, &targets, now);
            let observed = anchor::observe(&ca, prepared.as_ref(), &state, &around, now);
            let decision = rotation::decide(&state, &observed, &self.options.timing, now);
            let performed = anchor::writes(&decision.action, &ca, prepared.as_ref(), &name, now)
                .and_then(|writes| self.write(store, &ns, &name, &next_name, writes));
            if let Err(reason) = performed {
                self.rotation_failed(reason);
                report.next_wake = Some(now + TimeDelta::seconds(10));
                return Ok(report);
            }
            if matches!(decision.action, Action::GenerateNext) {
                tracing::info!("trust anchor rotation: made the new anchor");
            }
            if !matches!(decision.action, Action::None) {
                report.ca_changed = true;
            }
            let new_record = RotationRecord::after(&name, &ca, &decision, now);
            if new_record.differs_from(record.as_ref()) {
                std::fs::create_dir_all(anchors_dir(&self.state_dir))
                    .map_err(|e| corrupt(&path, e))?;
                secrets::write_file_atomic(
                    &path,
                    &serde_json::to_vec_pretty(&new_record).expect("records serialise"),
                    0o644,
                    self.durability,
                )?;
            }
            anchor::report(metrics, record.as_ref(), &new_record, now);
            // A request is used up once the rotation it asked for started.
            if decision.state.phase != Phase::Stable && observed.requested {
                let _ = std::fs::remove_file(request_path(&self.state_dir, TRUST_ANCHOR_NAME));
            }
            self.rotation_error = None;
            record = Some(new_record);
            if let Some((gate, until)) = decision.waiting {
                let poll = (!gate.is_timed()).then_some(now + EVENT_POLL);
                report.next_wake = until.into_iter().chain(poll).min();
                return Ok(report);
            }
            if matches!(
                decision.action,
                Action::SwitchSigner { .. } | Action::TrustBoth { .. } | Action::DropOld { .. }
            ) {
                // The Certificates must see the new CA before the next
                // gate can pass: end this step, the pass continues.
                report.next_wake = Some(now);
                return Ok(report);
            }
        }
        tracing::warn!("the anchor rotation made no progress in one pass; looking again shortly");
        report.next_wake = Some(now + EVENT_POLL);
        Ok(report)
    }

    fn rotation_failed(&mut self, reason: String) {
        if self.rotation_error.as_deref() != Some(reason.as_str()) {
            tracing::error!("trust anchor rotation: {reason}; trying again");
            self.rotation_error = Some(reason);
        }
    }

    /// What the rotation needs to know besides the two Secrets.
    fn surroundings(
        &self,
        store: &SecretStore,
        ca: &AnchorSecret,
        prepared: Option<&AnchorSecret>,
        state: &Rotation,
        targets: &[Vec<String>],
        now: DateTime<Utc>,
    ) -> Surroundings {
        let requested =
            read_json::<RotateRequest>(&request_path(&self.state_dir, TRUST_ANCHOR_NAME))
                .unwrap_or(None)
                .is_some();
        // The identity issuer as the identity service serves it when it
        // runs here, else as its Secret holds it.
        let issuer_chain = match &self.options.served_issuer {
            Some(served) => served(),
            None => store
                .read(
                    self.domain.control_plane_namespace(),
                    super::IDENTITY_ISSUER_NAME,
                )
                .ok()
                .flatten()
                .and_then(|secret| {
                    Certificate::parse_pem_bundle(secret.get(TLS_CRT)?, "identity issuer").ok()
                }),
        };
        let certificates_on_old = match (
            anchor::counts_certificates(state),
            anchor::old_anchor(ca, state),
            anchor::next_anchor(ca, prepared, state),
        ) {
            (true, Some(old), Some(next)) => certificates_only_on(store, &old, &next, now),
            _ => 0,
        };
        Surroundings {
            targets: targets.to_vec(),
            requested,
            renew_before: self.options.anchor_renew_before,
            issuer_chains: issuer_chain.map(|chain| vec![chain]),
            certificates_on_old,
        }
    }

    /// Carries out an action's writes: the prepared anchor first (a crash
    /// after it is adopted on restart), then the CA Secret.
    fn write(
        &self,
        store: &SecretStore,
        ns: &str,
        name: &str,
        next_name: &str,
        writes: Writes,
    ) -> Result<(), String> {
        let write = |secret: &SecretData, which: &str| {
            store
                .write(ns, which, secret)
                .map_err(|e| format!("cannot write Secret {ns}/{which}: {e}"))
        };
        if let Some(prepared) = &writes.prepared {
            write(prepared, next_name)?;
        }
        if let Some(ca) = &writes.ca {
            write(ca, name)?;
        }
        if writes.delete_prepared {
            remove_secret(store, ns, next_name)?;
        }
        Ok(())
    }
}

fn remove_secret(store: &SecretStore, ns: &str, name: &str) -> Result<(), String> {
    let dir = store.dir(ns, name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// The anchors a bundle file holds, by fingerprint; none when unreadable.
fn read_anchor_ids(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .ok()
        .and_then(|pem| Certificate::parse_pem_bundle(&pem, "bundle").ok())
        .map(|certificates| certificates.iter().map(anchor::anchor_id).collect())
        .unwrap_or_default()
}

/// How many Secrets of Certificates chain to `old` and not to `next`.
fn certificates_only_on(
    store: &SecretStore,
    old: &Certificate,
    next: &Certificate,
    now: DateTime<Utc>,
) -> usize {
    let Ok(namespaces) = std::fs::read_dir(store.dir("", "")) else {
        return 0;
    };
    let mut count = 0;
    for namespace in namespaces.flatten() {
        let Ok(names) = std::fs::read_dir(namespace.path()) else {
            continue;
        };
        for entry in names.flatten() {
            let (Some(ns), Some(name)) = (
                namespace.file_name().to_str().map(str::to_string),
                entry.file_name().to_str().map(str::to_string),
            ) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(Some(secret)) = store.read(&ns, &name) else {
                continue;
            };
            if secret.annotation(annotations::CERTIFICATE_NAME).is_none() {
                continue;
            }
            let Some(chain) = secret
                .get(TLS_CRT)
                .and_then(|pem| Certificate::parse_pem_bundle(pem, "tls.crt").ok())
            else {
                continue;
            };
            if anchor::chains_only_to_old(&chain, old, next, now) {
                count += 1;
            }
        }
    }
    count
}
