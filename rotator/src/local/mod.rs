//! The local shell: `lanyard up` on one machine, no cluster. Objects are
//! manifests in `DIR/manifests/`, Secrets are directories in
//! `DIR/secrets/<namespace>/<name>/`, status is JSON in `DIR/status/`. The
//! same reconcile core as in a cluster decides and issues.

pub mod manifests;
pub mod run;
pub mod secrets;
pub mod sweep;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lanyard_crds::api::{
    CaIssuer, Certificate, CertificateSpec, CertificateStatus, ClusterIssuer, ClusterIssuerSpec,
    IssuerConfig, IssuerKind, IssuerRef, IssuerStatus,
};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::Clock;
use lanyard_crds::usage::{KeyUsage, PrivateKeyAlgorithm};
use lanyard_issuer::{DEFAULT_ANCHOR_LIFETIME, KeyAlgorithm, TrustAnchor};
use serde::{Deserialize, Serialize};

use crate::issuing::{IssuerError, IssuerMaterial, load_issuer};
use crate::metrics::Metrics;
use crate::planner::IssueReason;
use crate::reconcile::{Event, ResolvedIssuer, issuer_status, reconcile};
use crate::secret::{CA_CRT, SecretData, TLS_CRT, TLS_KEY};
use manifests::{ManifestError, Object, ObjectKey};
pub use secrets::{Durability, SecretStore, SecretStoreError};

/// The name of the trust anchor's ClusterIssuer and Secret, as in
/// Linkerd's cert-manager guide.
pub const TRUST_ANCHOR_NAME: &str = "linkerd-trust-anchor";
/// The name of the identity issuer's Certificate and Secret.
pub const IDENTITY_ISSUER_NAME: &str = "linkerd-identity-issuer";
/// Where ClusterIssuers' CA Secrets live unless told otherwise.
pub const DEFAULT_CLUSTER_RESOURCE_NAMESPACE: &str = "lanyard";

/// Errors of the local shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A file could not be read or written.
    #[error(transparent)]
    Store(#[from] SecretStoreError),
    /// The first-start setup failed.
    #[error("setting up the trust anchor: {0}")]
    Bootstrap(#[from] lanyard_issuer::Error),
    /// A stop was asked for in the middle of a pass; what it had staged
    /// was discarded.
    #[error("the pass was stopped")]
    Cancelled,
    /// A state file is corrupt.
    #[error("{}: corrupt state file: {reason}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// How `lanyard up` is set up.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The identity domain (trust domain and control-plane namespace).
    pub domain: IdentityDomain,
    /// Where ClusterIssuers' CA Secrets live.
    pub cluster_resource_namespace: String,
    /// Whether writes are flushed to disk.
    pub durability: Durability,
}

impl LocalOptions {
    /// The manifests directory.
    pub fn manifests_dir(&self) -> PathBuf {
        self.state_dir.join("manifests")
    }

    /// The Secret store.
    pub fn secret_store(&self) -> SecretStore {
        SecretStore::new(self.state_dir.join("secrets"), self.durability)
    }

    fn status_dir(&self) -> PathBuf {
        self.state_dir.join("status")
    }
}

/// What the controller keeps per Certificate between passes and restarts:
/// the spec it last saw (a changed spec is a new generation) and status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    generation: i64,
    spec: serde_json::Value,
    status: CertificateStatus,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Certificates issued, and why.
    pub issued: Vec<(ObjectKey, IssueReason)>,
    /// Certificates that failed, with reason and message.
    pub failed: Vec<(ObjectKey, &'static str, String)>,
    /// The earliest time any Certificate needs looking at again.
    pub next_wake: Option<DateTime<Utc>>,
    /// Manifests that could not be used (their last good version, if any,
    /// stays in force).
    pub manifest_errors: Vec<ManifestError>,
}

/// Runs `work` on every item over the machine's cores; results come back
/// in the items' order.
pub(crate) fn parallel_map<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let count = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1));
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("the work queue").next();
                        let Some((i, item)) = next else { break };
                        done.push((i, work(item)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker panicked"))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

type IssuerKey = (IssuerKind, String, String);
type Materials = BTreeMap<IssuerKey, Result<IssuerMaterial, IssuerError>>;

/// What a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Everything,
    Due,
}

/// A fingerprint of each issuer's signing material (or of why it has
/// none), to tell which issuers changed between passes.
fn stamps(materials: &Materials) -> BTreeMap<IssuerKey, String> {
    materials
        .iter()
        .map(|(key, material)| {
            let stamp = match material {
                Ok(IssuerMaterial::SelfSigned) => "self-signed".to_string(),
                Ok(IssuerMaterial::Ca { ca, roots }) => std::iter::once(ca.certificate())
                    .chain(roots)
                    .map(|c| c.sha256_fingerprint())
                    .collect::<Vec<_>>()
                    .join(","),
                Err(error) => format!("error: {error}"),
            };
            (key.clone(), stamp)
        })
        .collect()
}

/// A reconciled Certificate whose writes are staged, not yet visible.
struct Prepared {
    key: ObjectKey,
    /// The Certificate as the reconcile saw it (generation, prior status),
    /// for a storage failure's outcome.
    certificate: Certificate,
    spec_value: serde_json::Value,
    /// Whether the Secret's current certificate is unexpired; looked at
    /// only when a new Secret is staged (only then can a write fail).
    current_usable: bool,
    outcome: crate::reconcile::Outcome,
    staged_secret: Option<secrets::StagedSecret>,
    /// The status record, when it changed, and its staged file (`None`
    /// when staging failed: the record is kept in memory and written
    /// again at commit).
    record: Option<(Record, Option<secrets::StagedFile>)>,
}

impl Prepared {
    fn new(
        key: ObjectKey,
        certificate: Certificate,
        spec_value: serde_json::Value,
        outcome: crate::reconcile::Outcome,
    ) -> Prepared {
        Prepared {
            key,
            certificate,
            spec_value,
            current_usable: false,
            outcome,
            staged_secret: None,
            record: None,
        }
    }

    /// Records the outcome's status (to be staged).
    fn with_record(mut self) -> Prepared {
        let record = Record {
            generation: self.certificate.metadata.generation.unwrap_or(1),
            spec: self.spec_value.clone(),
            status: self.outcome.status.clone(),
        };
        self.record = Some((record, None));
        self
    }

    /// Turns a read or write error into this Certificate's failure:
    /// anything staged is discarded (removed), the status says why and the
    /// next attempt backs off.
    fn storage_failed(
        mut self,
        reason: &'static str,
        error: &SecretStoreError,
        now: DateTime<Utc>,
    ) -> Prepared {
        self.staged_secret = None;
        self.outcome = crate::reconcile::storage_failed(
            &self.certificate,
            self.current_usable,
            now,
            reason,
            error.to_string(),
        );
        self.with_record()
    }
}

/// One Certificate's reconcile, for the pass to fold in.
struct One {
    key: ObjectKey,
    wrote_secret: bool,
    event: Event,
    requeue_at: DateTime<Utc>,
    record: Option<Record>,
}

/// The local controller.
#[derive(Debug)]
pub struct LocalController<C> {
    options: LocalOptions,
    clock: C,
    metrics: Arc<Metrics>,
    secrets: SecretStore,
    last_good: BTreeMap<PathBuf, Vec<Object>>,
    manifests: manifests::ManifestCache,
    requeue: BTreeMap<(String, String), DateTime<Utc>>,
    issuer_stamps: BTreeMap<IssuerKey, String>,
    records: BTreeMap<(String, String), Record>,
    stop: lanyard_runtime::Shutdown,
    /// Whether the first-start setup still has to be done (it failed to
    /// write, e.g. on a full disk, and is tried again each pass).
    bootstrap_pending: bool,
}

impl<C: Clock> LocalController<C> {
    /// Opens (creating) the state directory and loads recorded status.
    pub fn open(
        options: LocalOptions,
        clock: C,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LocalError> {
        let secrets = options.secret_store();
        secrets.create_root()?;
        let mut records = BTreeMap::new();
        let status_root = options.status_dir().join("certificates");
        for ns in std::fs::read_dir(&status_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let path = file.path();
                let (Some(namespace), Some(name)) = (
                    ns.file_name().to_str().map(str::to_string),
                    path.file_stem()
                        .and_then(|s| s.to_str())
                        .map(str::to_string),
                ) else {
                    continue;
                };
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(|source| SecretStoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                let record: Record =
                    serde_json::from_slice(&bytes).map_err(|e| LocalError::CorruptState {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                records.insert((namespace, name), record);
            }
        }
        Ok(LocalController {
            options,
            clock,
            metrics,
            secrets,
            last_good: BTreeMap::new(),
            manifests: manifests::ManifestCache::default(),
            requeue: BTreeMap::new(),
            issuer_stamps: BTreeMap::new(),
            records,
            stop: lanyard_runtime::Shutdown::new(),
            bootstrap_pending: false,
        })
    }

    /// Stops passes between Certificates once `stop` is triggered; the
    /// interrupted pass returns [`LocalError::Cancelled`] and discards what
    /// it had staged.
    pub fn with_shutdown(mut self, stop: lanyard_runtime::Shutdown) -> Self {
        self.stop = stop;
        self
    }

    /// Has every pass try the first-start setup again until it succeeds,
    /// after [`bootstrap`](Self::bootstrap) failed to write (a full disk, a
    /// read-only directory).
    pub fn retry_bootstrap(mut self) -> Self {
        self.bootstrap_pending = true;
        self
    }

    fn check_stop(&self) -> Result<(), LocalError> {
        if self.stop.is_triggered() {
            Err(LocalError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The metrics this controller updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// On first start (no manifests directory yet), sets up what the Linkerd
    /// mTLS guide sets up by hand: a trust anchor Secret, a CA ClusterIssuer
    /// `linkerd-trust-anchor` over it, and the identity issuer Certificate
    /// `<namespace>/linkerd-identity-issuer` (8760h, renewBefore 720h,
    /// isCA). Returns whether it did anything.
    pub fn bootstrap(&self) -> Result<bool, LocalError> {
        let manifests_dir = self.options.manifests_dir();
        if manifests_dir.exists() {
            return Ok(false);
        }
        let now = self.clock.now();
        let domain = &self.options.domain;
        let anchor = TrustAnchor::generate(
            domain,
            DEFAULT_ANCHOR_LIFETIME,
            KeyAlgorithm::EcdsaP256,
            now,
        )?;
        let mut secret = SecretData::default();
        let pem = anchor.certificate().to_pem();
        secret.data.insert(TLS_CRT.into(), pem.clone().into_bytes());
        secret.data.insert(
            TLS_KEY.into(),
            anchor.key().to_pkcs8_pem().as_bytes().to_vec(),
        );
        secret.data.insert(CA_CRT.into(), pem.into_bytes());
        self.secrets.write(
            &self.options.cluster_resource_namespace,
            TRUST_ANCHOR_NAME,
            &secret,
        )?;

        let mut issuer = ClusterIssuer::new(
            TRUST_ANCHOR_NAME,
            ClusterIssuerSpec {
                config: IssuerConfig {
                    ca: Some(CaIssuer {
                        secret_name: TRUST_ANCHOR_NAME.into(),
                    }),
                    self_signed: None,
                },
            },
        );
        issuer.status = None;
        let certificate = identity_issuer_certificate(domain);
        let stream = manifests::to_yaml_stream(&[
            serde_json::to_value(&issuer).expect("API objects serialise"),
            serde_json::to_value(&certificate).expect("API objects serialise"),
        ])
        .map_err(|reason| LocalError::CorruptState {
            path: manifests_dir.clone(),
            reason,
        })?;
        let header = "# Made by `lanyard up` on first start: the trust anchor's CA ClusterIssuer\n\
                      # and the identity issuer Certificate, as Linkerd's cert-manager guide sets them up.\n";
        // The manifests directory appears in one rename, with its file:
        // an interrupted first start is tried again from scratch.
        let staging = tempfile::Builder::new()
            .prefix(".tmp-manifests-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .tempdir_in(&self.options.state_dir)
            .map_err(|source| SecretStoreError::Io {
                path: self.options.state_dir.clone(),
                source,
            })?;
        secrets::write_file_atomic(
            &staging.path().join("linkerd-identity.yaml"),
            format!("{header}{stream}").as_bytes(),
            0o644,
            self.options.durability,
        )?;
        let staged = staging.keep();
        std::fs::rename(&staged, &manifests_dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&staged);
            SecretStoreError::Io {
                path: manifests_dir.clone(),
                source,
            }
        })?;
        if self.options.durability == Durability::Fsync {
            lanyard_files::sync_dir(&self.options.state_dir)?;
        }
        Ok(true)
    }

    fn load_objects(&mut self, report: &mut PassReport) -> Vec<Object> {
        let (loaded, errors) = self
            .manifests
            .load(&self.options.manifests_dir(), "default");
        let mut current = loaded;
        for (path, errs) in errors {
            // A broken edit keeps the last good version of that file.
            if let Some(previous) = self.last_good.get(&path) {
                current.insert(path.clone(), previous.clone());
            }
            report.manifest_errors.extend(errs);
        }
        self.last_good = current.clone();
        let mut seen: BTreeMap<ObjectKey, PathBuf> = BTreeMap::new();
        let mut objects = Vec::new();
        for (path, objs) in current {
            for object in objs {
                let key = object.key();
                if let Some(first) = seen.get(&key) {
                    report.manifest_errors.push(ManifestError {
                        file: path.clone(),
                        document: 0,
                        field: None,
                        message: format!(
                            "{key} is already defined in {}; this definition is ignored",
                            first.display()
                        ),
                    });
                    continue;
                }
                seen.insert(key, path.clone());
                objects.push(object);
            }
        }
        objects
    }

    /// One pass over every object: load issuers, reconcile every
    /// Certificate, write what changed. When a pass rewrites the Secret of a
    /// CA issuer (the identity issuer renewing), issuers are reloaded and
    /// the Certificates they sign are looked at again in the same call.
    pub fn reconcile_all(&mut self) -> Result<PassReport, LocalError> {
        self.pass(Scope::Everything)
    }

    /// A pass over what needs looking at: Certificates whose renewal or
    /// retry time has come, whose manifest changed, or whose issuer's CA
    /// changed. What this cannot see (a Secret edited by hand) the next
    /// [`reconcile_all`](Self::reconcile_all) finds; `lanyard up` runs one
    /// at least every [`run::RESYNC_INTERVAL`].
    pub fn reconcile_due(&mut self) -> Result<PassReport, LocalError> {
        self.pass(Scope::Due)
    }

    fn pass(&mut self, scope: Scope) -> Result<PassReport, LocalError> {
        self.check_stop()?;
        self.metrics.pass(match scope {
            Scope::Everything => "full",
            Scope::Due => "due",
        });
        let mut report = PassReport::default();
        if self.bootstrap_pending {
            match self.bootstrap() {
                Ok(_) => {
                    self.bootstrap_pending = false;
                    tracing::info!("trust anchor and identity issuer set up");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot set up the trust anchor yet; trying again");
                }
            }
        }
        let objects = self.load_objects(&mut report);
        let now = self.clock.now();
        let mut certificates = Vec::new();
        let mut issuers: BTreeMap<(IssuerKind, String, String), IssuerConfig> = BTreeMap::new();
        for object in objects {
            match object {
                Object::Certificate(c) => certificates.push(*c),
                Object::Issuer(i) => {
                    let ns = i.metadata.namespace.clone().unwrap_or_default();
                    let name = i.metadata.name.clone().unwrap_or_default();
                    issuers.insert((IssuerKind::Issuer, ns, name), i.spec.config);
                }
                Object::ClusterIssuer(i) => {
                    let name = i.metadata.name.clone().unwrap_or_default();
                    issuers.insert(
                        (IssuerKind::ClusterIssuer, String::new(), name),
                        i.spec.config,
                    );
                }
                Object::Secret { .. } => {}
            }
        }

        let ca_secrets: BTreeSet<(String, String)> = issuers
            .iter()
            .filter_map(|((kind, ns, _), config)| {
                let secret = config.ca.as_ref()?.secret_name.clone();
                Some((self.ca_namespace(*kind, ns), secret))
            })
            .collect();
        // Certificates whose Secrets back a CA issuer go first, deepest
        // chain first, so what they sign is looked at with the fresh CA.
        let depth = |c: &Certificate| -> usize {
            let mut depth = 0;
            let mut current = (
                c.metadata.namespace.clone().unwrap_or_default(),
                c.spec.secret_name.clone(),
            );
            while ca_secrets.contains(&current) && depth < 8 {
                depth += 1;
                let next = certificates.iter().find(|c| {
                    let kind = c
                        .spec
                        .issuer_ref
                        .issuer_kind()
                        .unwrap_or(IssuerKind::Issuer);
                    let ns = c.metadata.namespace.clone().unwrap_or_default();
                    issuers
                        .get(&(
                            kind,
                            if kind == IssuerKind::Issuer {
                                ns.clone()
                            } else {
                                String::new()
                            },
                            c.spec.issuer_ref.name.clone(),
                        ))
                        .and_then(|config| config.ca.as_ref())
                        .is_some_and(|ca| {
                            (self.ca_namespace(kind, &ns), ca.secret_name.clone()) == current
                        })
                });
                match next {
                    Some(n) => {
                        current = (
                            n.metadata.namespace.clone().unwrap_or_default(),
                            n.spec.secret_name.clone(),
                        )
                    }
                    None => break,
                }
            }
            depth
        };
        let mut order: Vec<(usize, usize)> = certificates
            .iter()
            .enumerate()
            .map(|(i, c)| (usize::MAX - depth(c), i))
            .collect();
        order.sort();
        let mut materials = self.load_issuers(&issuers, now);
        // Certificates that back a CA go one at a time, reloading the CA
        // after each rewrite; the rest are independent and spread over the
        // cores.
        let (chained, independent): (Vec<_>, Vec<_>) =
            order.into_iter().partition(|(d, _)| *d != usize::MAX);
        let changed = self.changed_issuers(&materials);
        let chained: Vec<_> = chained
            .into_iter()
            .filter(|(_, i)| {
                scope == Scope::Everything || self.needs_look(&certificates[*i], &changed, now)
            })
            .collect();
        for (_, index) in chained {
            self.check_stop()?;
            let one = self.reconcile_one(&certificates[index], &materials, now);
            let rewrote_ca = one.wrote_secret
                && ca_secrets.contains(&(
                    one.key.namespace.clone(),
                    certificates[index].spec.secret_name.clone(),
                ));
            self.absorb(one, &mut report);
            if rewrote_ca {
                // What this CA signs is reconciled later in this pass,
                // against the new CA.
                materials = self.load_issuers(&issuers, now);
            }
        }
        // Issuers may have changed under the chained Certificates above.
        let changed = self.changed_issuers(&materials);
        let independent: Vec<_> = independent
            .into_iter()
            .filter(|(_, i)| {
                scope == Scope::Everything || self.needs_look(&certificates[*i], &changed, now)
            })
            .collect();
        self.issuer_stamps = stamps(&materials);
        // Independent Certificates: stage everything on every core, make it
        // durable with one filesystem flush instead of an fsync per file,
        // then commit (renames) and flush the renames once more. A stop
        // asked for meanwhile discards what was staged.
        let fsync = self.secrets.durability() == Durability::Fsync;
        let prepared = {
            let this = &*self;
            let materials = &materials;
            let certificates = &certificates;
            parallel_map(independent, |(_, index)| {
                (!this.stop.is_triggered())
                    .then(|| this.prepare_one(&certificates[index], materials, now, false))
            })
        };
        let mut prepared: Vec<Prepared> = prepared.into_iter().flatten().collect();
        self.check_stop()?;
        let wrote = prepared
            .iter()
            .any(|p| p.staged_secret.is_some() || p.record.is_some());
        if fsync
            && wrote
            && let Err(error) = secrets::flush_filesystem(&self.options.state_dir)
        {
            // Nothing staged is known to be on disk: commit none of it.
            prepared = prepared
                .into_iter()
                .map(|p| {
                    if p.staged_secret.is_some() {
                        p.storage_failed("WriteFailed", &error, now)
                    } else {
                        p
                    }
                })
                .collect();
        }
        let results = {
            let this = &*self;
            parallel_map(prepared, |p| {
                (!this.stop.is_triggered()).then(|| this.finish_one(p, false))
            })
        };
        if fsync
            && wrote
            && let Err(error) = secrets::flush_filesystem(&self.options.state_dir)
        {
            tracing::warn!(%error, "cannot flush the state directory");
        }
        for one in results.into_iter().flatten() {
            self.absorb(one, &mut report);
        }
        self.check_stop()?;
        // Certificates skipped in this pass still have their own times.
        report.next_wake = certificates
            .iter()
            .filter_map(|c| {
                self.requeue.get(&(
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                ))
            })
            .min()
            .copied();
        if self.bootstrap_pending {
            let retry = now + chrono::TimeDelta::seconds(10);
            report.next_wake = Some(report.next_wake.map_or(retry, |at| at.min(retry)));
        }

        // Certificates that are gone lose their status and series; their
        // Secrets stay, as cert-manager leaves them by default.
        let live: BTreeSet<(String, String)> = certificates
            .iter()
            .map(|c| {
                (
                    c.metadata.namespace.clone().unwrap_or_default(),
                    c.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let gone: Vec<(String, String)> = self
            .records
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.requeue.remove(&(ns.clone(), name.clone()));
            self.records.remove(&(ns.clone(), name.clone()));
            let _ = std::fs::remove_file(self.record_path(&ns, &name));
            self.metrics.forget_certificate(&ns, &name);
        }
        for (kind, ns, name) in self.metrics.tracked_issuers() {
            if !issuers.contains_key(&(kind, ns.clone(), name.clone())) {
                self.metrics.forget_issuer(kind, &ns, &name);
            }
        }
        Ok(report)
    }

    /// Reconciles one Certificate, start to finish, flushing as the store's
    /// durability says.
    fn reconcile_one(
        &self,
        certificate: &Certificate,
        materials: &Materials,
        now: DateTime<Utc>,
    ) -> One {
        let flush = self.secrets.durability() == Durability::Fsync;
        let prepared = self.prepare_one(certificate, materials, now, flush);
        self.finish_one(prepared, flush)
    }

    /// The first half of a reconcile: read the Secret, decide, and stage
    /// the new Secret and status file if anything changed. Touches nothing
    /// shared but files of its own, so passes run it in parallel. A read or
    /// write error fails this Certificate only.
    fn prepare_one(
        &self,
        certificate: &Certificate,
        materials: &Materials,
        now: DateTime<Utc>,
        flush: bool,
    ) -> Prepared {
        let mut certificate = certificate.clone();
        let ns = certificate.metadata.namespace.clone().unwrap_or_default();
        let name = certificate.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey {
            kind: "Certificate",
            namespace: ns.clone(),
            name: name.clone(),
        };
        let spec_value = serde_json::to_value(&certificate.spec).expect("specs serialise");
        let record = self.records.get(&(ns.clone(), name.clone()));
        let generation = match record {
            Some(r) if r.spec == spec_value => r.generation,
            Some(r) => r.generation + 1,
            None => 1,
        };
        certificate.metadata.generation = Some(generation);
        certificate.status = record.map(|r| r.status.clone());

        let issuer_ref = &certificate.spec.issuer_ref;
        let kind = issuer_ref.issuer_kind().unwrap_or(IssuerKind::Issuer);
        let issuer_key = (
            kind,
            if kind == IssuerKind::Issuer {
                ns.clone()
            } else {
                String::new()
            },
            issuer_ref.name.clone(),
        );
        let not_found = IssuerError::NotFound {
            kind,
            name: if kind == IssuerKind::Issuer {
                format!("{ns}/{}", issuer_ref.name)
            } else {
                issuer_ref.name.clone()
            },
        };
        let material = match materials.get(&issuer_key) {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => Err(e),
            None => Err(&not_found),
        };
        let secret = match self.secrets.read(&ns, &certificate.spec.secret_name) {
            Ok(secret) => secret,
            Err(error) => {
                let outcome = crate::reconcile::storage_failed(
                    &certificate,
                    false,
                    now,
                    "ReadFailed",
                    error.to_string(),
                );
                let failed = Prepared::new(key, certificate, spec_value, outcome).with_record();
                return self.stage_record(failed, flush);
            }
        };
        let outcome = reconcile(
            &certificate,
            secret.as_ref(),
            ResolvedIssuer {
                kind,
                name: &certificate.spec.issuer_ref.name,
                material,
            },
            now,
        );
        let mut prepared = Prepared::new(key, certificate, spec_value, outcome);
        // Stage first: nothing is visible until `finish_one` commits.
        if let Some(new_secret) = &prepared.outcome.secret {
            prepared.current_usable = crate::reconcile::secret_is_unexpired(secret.as_ref(), now);
            match self.secrets.stage(
                &ns,
                &prepared.certificate.spec.secret_name,
                new_secret,
                flush,
            ) {
                Ok(staged) => prepared.staged_secret = Some(staged),
                Err(error) => prepared = prepared.storage_failed("WriteFailed", &error, now),
            }
        }
        let new_record = Record {
            generation,
            spec: prepared.spec_value.clone(),
            status: prepared.outcome.status.clone(),
        };
        if record != Some(&new_record) {
            prepared.record = Some((new_record, None));
        }
        self.stage_record(prepared, flush)
    }

    /// Stages the status record of `prepared`, if it changed. A record that
    /// cannot be staged stays in memory and is written again at commit.
    fn stage_record(&self, mut prepared: Prepared, flush: bool) -> Prepared {
        if let Some((record, staged)) = &mut prepared.record {
            let bytes = serde_json::to_vec_pretty(record).expect("records serialise");
            let path = self.record_path(&prepared.key.namespace, &prepared.key.name);
            *staged = secrets::stage_file(&path, &bytes, 0o644, flush).ok();
        }
        prepared
    }

    /// The second half: makes the staged Secret and status visible (Secret
    /// first), then counts and logs what happened. A failed commit fails
    /// this Certificate only.
    fn finish_one(&self, prepared: Prepared, flush: bool) -> One {
        let now = self.clock.now();
        let mut prepared = prepared;
        let mut wrote_secret = false;
        if let Some(staged) = prepared.staged_secret.take() {
            match self.secrets.commit(staged, flush) {
                Ok(()) => wrote_secret = true,
                Err(error) => prepared = prepared.storage_failed("WriteFailed", &error, now),
            }
        }
        let Prepared {
            key,
            certificate,
            outcome,
            record,
            ..
        } = prepared;
        let record = record.map(|(record, staged)| {
            let written = match staged {
                Some(staged) => staged.commit(flush),
                None => {
                    let bytes = serde_json::to_vec_pretty(&record).expect("records serialise");
                    secrets::write_file_atomic(
                        &self.record_path(&key.namespace, &key.name),
                        &bytes,
                        0o644,
                        self.secrets.durability(),
                    )
                }
            };
            if let Err(error) = written {
                tracing::warn!(certificate = %key, %error, "cannot record status; it is kept in memory");
            }
            record
        });
        let spec = certificate.spec;
        let (ns, name) = (&key.namespace, &key.name);
        match &outcome.event {
            Event::Issued(reason) => {
                self.metrics.issued(ns, name, &spec);
                // One line per event, worded for the operator reading
                // `lanyard up`'s output.
                let what = match reason {
                    IssueReason::Renewing | IssueReason::Expired => "renewed",
                    IssueReason::IssuerRotated => "reissued: the issuer rotated",
                    _ => "issued",
                };
                tracing::info!(certificate = %key, %reason, not_after = ?outcome.status.not_after, "{what}");
                if let Some(clamped) = &outcome.clamped {
                    tracing::warn!(certificate = %key, "{clamped}");
                }
            }
            Event::Failed { reason, message } => {
                self.metrics.failed(ns, name, &spec, reason);
                tracing::warn!(certificate = %key, reason, message, "issuance failed");
            }
            Event::UpToDate | Event::BackingOff => {}
        }
        self.metrics
            .observe_certificate(ns, name, &spec, &outcome.status);
        One {
            key,
            wrote_secret,
            event: outcome.event,
            requeue_at: outcome.requeue_at,
            record,
        }
    }

    /// Folds one result into the pass report and the in-memory records.
    fn absorb(&mut self, one: One, report: &mut PassReport) {
        match one.event {
            Event::Issued(reason) => report.issued.push((one.key.clone(), reason)),
            Event::Failed { reason, message } => {
                report.failed.push((one.key.clone(), reason, message))
            }
            Event::UpToDate | Event::BackingOff => {}
        }
        self.requeue.insert(
            (one.key.namespace.clone(), one.key.name.clone()),
            one.requeue_at,
        );
        if let Some(record) = one.record {
            self.records
                .insert((one.key.namespace, one.key.name), record);
        }
    }

    /// Issuers whose signing material differs from the last pass's.
    fn changed_issuers(&self, materials: &Materials) -> BTreeSet<IssuerKey> {
        let now = stamps(materials);
        now.iter()
            .filter(|(k, v)| self.issuer_stamps.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(
                self.issuer_stamps
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .cloned(),
            )
            .collect()
    }

    /// Whether a Certificate must be looked at in a [`Scope::Due`] pass.
    fn needs_look(
        &self,
        certificate: &Certificate,
        changed: &BTreeSet<IssuerKey>,
        now: DateTime<Utc>,
    ) -> bool {
        let ns = certificate.metadata.namespace.clone().unwrap_or_default();
        let name = certificate.metadata.name.clone().unwrap_or_default();
        let key = (ns.clone(), name);
        let (Some(record), Some(due)) = (self.records.get(&key), self.requeue.get(&key)) else {
            return true;
        };
        if *due <= now {
            return true;
        }
        let kind = certificate
            .spec
            .issuer_ref
            .issuer_kind()
            .unwrap_or(IssuerKind::Issuer);
        let issuer = (
            kind,
            if kind == IssuerKind::Issuer {
                ns
            } else {
                String::new()
            },
            certificate.spec.issuer_ref.name.clone(),
        );
        changed.contains(&issuer)
            || serde_json::to_value(&certificate.spec).ok().as_ref() != Some(&record.spec)
    }

    fn ca_namespace(&self, kind: IssuerKind, namespace: &str) -> String {
        match kind {
            IssuerKind::Issuer => namespace.to_string(),
            IssuerKind::ClusterIssuer => self.options.cluster_resource_namespace.clone(),
        }
    }

    fn load_issuers(
        &self,
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        now: DateTime<Utc>,
    ) -> Materials {
        let mut materials = BTreeMap::new();
        for ((kind, ns, name), config) in issuers {
            let secret_ns = self.ca_namespace(*kind, ns);
            let material = match &config.ca {
                Some(ca) => {
                    let secret_ref = format!("{secret_ns}/{}", ca.secret_name);
                    match self.secrets.read(&secret_ns, &ca.secret_name) {
                        Ok(secret) => {
                            load_issuer(*kind, name, config, secret.as_ref(), &secret_ref, now)
                        }
                        Err(error) => Err(IssuerError::SecretUnreadable {
                            secret: secret_ref,
                            reason: error.to_string(),
                        }),
                    }
                }
                None => load_issuer(*kind, name, config, None, "", now),
            };
            self.metrics
                .observe_issuer(*kind, ns, name, material.as_ref().ok());
            if let Err(error) = self.write_issuer_status(*kind, ns, name, material.as_ref(), now) {
                tracing::warn!(issuer = %name, %error, "cannot record issuer status");
            }
            materials.insert((*kind, ns.clone(), name.clone()), material);
        }
        materials
    }

    fn record_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.options
            .status_dir()
            .join("certificates")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    fn write_issuer_status(
        &self,
        kind: IssuerKind,
        namespace: &str,
        name: &str,
        material: Result<&IssuerMaterial, &IssuerError>,
        now: DateTime<Utc>,
    ) -> Result<(), LocalError> {
        let path = match kind {
            IssuerKind::Issuer => self
                .options
                .status_dir()
                .join("issuers")
                .join(namespace)
                .join(format!("{name}.json")),
            IssuerKind::ClusterIssuer => self
                .options
                .status_dir()
                .join("clusterissuers")
                .join(format!("{name}.json")),
        };
        let current = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IssuerStatus>(&b).ok());
        let status = issuer_status(current.as_ref(), material, None, now);
        if current.as_ref() != Some(&status) {
            let bytes = serde_json::to_vec_pretty(&status).expect("status serialises");
            secrets::write_file_atomic(&path, &bytes, 0o644, self.options.durability)?;
        }
        Ok(())
    }
}

/// The identity issuer Certificate of Linkerd's cert-manager guide:
/// `<namespace>/linkerd-identity-issuer`, `identity.<namespace>.<trust
/// domain>`, ECDSA, 8760h renewed 720h before its end, a CA, signed by the
/// ClusterIssuer `linkerd-trust-anchor`.
pub fn identity_issuer_certificate(domain: &IdentityDomain) -> Certificate {
    let mut spec = CertificateSpec::new(
        IDENTITY_ISSUER_NAME,
        IssuerRef {
            name: TRUST_ANCHOR_NAME.into(),
            kind: Some(IssuerKind::ClusterIssuer.as_str().into()),
            group: None,
        },
    );
    spec.common_name = Some(domain.to_string());
    spec.duration = Some(GoDuration::from_hours(8760));
    spec.renew_before = Some(GoDuration::from_hours(720));
    spec.is_ca = true;
    spec.usages = vec![
        KeyUsage::CertSign,
        KeyUsage::CrlSign,
        KeyUsage::ServerAuth,
        KeyUsage::ClientAuth,
    ];
    spec.private_key = Some(lanyard_crds::api::PrivateKeySpec {
        algorithm: Some(PrivateKeyAlgorithm::Ecdsa),
        ..Default::default()
    });
    let mut certificate = Certificate::new(IDENTITY_ISSUER_NAME, spec);
    certificate.metadata.namespace = Some(domain.control_plane_namespace().to_string());
    certificate
}

/// One row of `lanyard get certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `True`, `False` or `Unknown`.
    pub ready: String,
    /// The Secret.
    pub secret: String,
    /// Current certificate's end.
    pub not_after: Option<DateTime<Utc>>,
    /// Renewal time.
    pub renewal_time: Option<DateTime<Utc>>,
    /// The Ready condition's message.
    pub message: String,
}

/// The Certificates in a state directory with their recorded status.
pub fn certificate_rows(
    state_dir: &Path,
) -> Result<(Vec<CertificateRow>, Vec<ManifestError>), LocalError> {
    let (objects, errors) = manifests::load_dir(&state_dir.join("manifests"), "default");
    let mut rows = Vec::new();
    for object in objects.into_values().flatten() {
        let Object::Certificate(cert) = object else {
            continue;
        };
        let namespace = cert.metadata.namespace.clone().unwrap_or_default();
        let name = cert.metadata.name.clone().unwrap_or_default();
        let path = state_dir
            .join("status/certificates")
            .join(&namespace)
            .join(format!("{name}.json"));
        let record: Option<Record> = match std::fs::read(&path) {
            Ok(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| LocalError::CorruptState {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            Err(_) => None,
        };
        let status = record.map(|r| r.status).unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        rows.push(CertificateRow {
            namespace,
            name,
            ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
            secret: cert.spec.secret_name.clone(),
            not_after: status.not_after,
            renewal_time: status.renewal_time,
            message: ready.and_then(|c| c.message.clone()).unwrap_or_default(),
        });
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok((rows, errors.into_values().flatten().collect()))
}
