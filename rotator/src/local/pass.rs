//! A pass of the local controller: load the manifests and issuers, decide
//! which Certificates to look at and in what order ([`super::schedule`]),
//! reconcile them (CA-backing ones one at a time, the rest on every core),
//! and forget what is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lanyard_crds::api::{Certificate, IssuerConfig, IssuerKind};
use lanyard_crds::time::Clock;
use rayon::prelude::*;

use super::certificate::Prepared;
use super::manifests::{ManifestError, Object, ObjectKey};
use super::schedule::{self, IssuerKey, Seen};
use super::secrets::{self, Durability};
use super::{LocalController, LocalError, PassReport};
use crate::issuer_ref::{issuer_target, resolve_issuer};
use crate::issuing::{IssuerError, IssuerMaterial, load_issuer};

pub(super) type Materials = BTreeMap<IssuerKey, Result<IssuerMaterial, IssuerError>>;

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
                Ok(IssuerMaterial::Ca { ca, roots, .. }) => std::iter::once(ca.certificate())
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

/// An object of the pass: its file's parsed objects (shared with the
/// manifest cache) and its place among them. A pass borrows objects from
/// these instead of copying every one.
type Shared = (Arc<Vec<Object>>, usize);

impl<C: Clock> LocalController<C> {
    fn load_objects(&mut self, report: &mut PassReport) -> Vec<Shared> {
        let (loaded, errors) = self
            .manifests
            .load(&self.options.manifests_dir(), "default");
        let mut current = loaded;
        for (path, errs) in errors {
            // A broken edit keeps the last good version of that file.
            if let Some(previous) = self.last_good.get(&path) {
                current.insert(path.clone(), Arc::clone(previous));
            }
            report.manifest_errors.extend(errs);
        }
        // Shared with the cache: the pass borrows the objects, uncopied.
        self.last_good = current;
        let mut seen: BTreeMap<&ObjectKey, &PathBuf> = BTreeMap::new();
        let keys: Vec<Vec<ObjectKey>> = self
            .last_good
            .values()
            .map(|objs| objs.iter().map(Object::key).collect())
            .collect();
        let mut objects = Vec::new();
        for ((path, objs), file_keys) in self.last_good.iter().zip(&keys) {
            for (index, key) in file_keys.iter().enumerate() {
                if let Some(first) = seen.get(key) {
                    report.manifest_errors.push(ManifestError {
                        file: (*path).clone(),
                        document: 0,
                        field: None,
                        message: format!(
                            "{key} is already defined in {}; this definition is ignored",
                            first.display()
                        ),
                    });
                    continue;
                }
                seen.insert(key, path);
                objects.push((Arc::clone(objs), index));
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

    /// A pass, then its changes to status written to the store in one
    /// transaction, also when the pass stops early: every Secret a pass
    /// commits is committed before its record.
    fn pass(&mut self, scope: Scope) -> Result<PassReport, LocalError> {
        let report = self.pass_unrecorded(scope);
        self.persist();
        report
    }

    fn pass_unrecorded(&mut self, scope: Scope) -> Result<PassReport, LocalError> {
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
        let mut certificates: Vec<&Certificate> = Vec::new();
        let mut bundles = Vec::new();
        let mut issuers: BTreeMap<(IssuerKind, String, String), IssuerConfig> = BTreeMap::new();
        for (file, index) in &objects {
            match &file[*index] {
                Object::Certificate(c) => certificates.push(c),
                Object::Issuer(i) => {
                    let ns = i.metadata.namespace.clone().unwrap_or_default();
                    let name = i.metadata.name.clone().unwrap_or_default();
                    issuers.insert((IssuerKind::Issuer, ns, name), i.spec.config.clone());
                }
                Object::ClusterIssuer(i) => {
                    let name = i.metadata.name.clone().unwrap_or_default();
                    issuers.insert(
                        (IssuerKind::ClusterIssuer, String::new(), name),
                        i.spec.config.clone(),
                    );
                }
                Object::TrustBundle(b) => bundles.push((**b).clone()),
                Object::Secret { .. } => {}
            }
        }

        // Bundles first, then the anchor's rotation, which may change the
        // anchor's CA Secret; the Certificates below then see it.
        let mut trust_wake = None;
        if let Some(trust) = self.trust.as_mut() {
            let targets =
                trust.write_bundles(&self.secrets, &bundles, &issuers, &self.metrics, now);
            let rotated = trust.rotate(
                &self.secrets,
                &bundles,
                &issuers,
                &targets,
                &self.metrics,
                now,
            )?;
            if rotated.ca_changed {
                trust.write_bundles(&self.secrets, &bundles, &issuers, &self.metrics, now);
            }
            trust_wake = rotated.next_wake;
        }

        let cluster_resource_namespace = &self.options.cluster_resource_namespace;
        let ca_secrets = schedule::ca_secrets(&issuers, cluster_resource_namespace);
        // Certificates whose Secrets back a CA issuer go first, deepest
        // chain first, so what they sign is looked at with the fresh CA.
        let order = schedule::chain_order(
            &certificates,
            &issuers,
            &ca_secrets,
            cluster_resource_namespace,
        );
        let mut materials = self.load_issuers(&issuers, now);
        // Certificates that back a CA go one at a time, reloading the CA
        // after each rewrite; the rest are independent and spread over the
        // cores.
        let changed = self.changed_issuers(&materials);
        let chained: Vec<usize> = order
            .chained
            .into_iter()
            .filter(|i| {
                scope == Scope::Everything || self.needs_look(certificates[*i], &changed, now)
            })
            .collect();
        for index in chained {
            self.check_stop()?;
            let one = self.reconcile_one(certificates[index], &materials, now);
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
        let independent: Vec<usize> = order
            .independent
            .into_iter()
            .filter(|i| {
                scope == Scope::Everything || self.needs_look(certificates[*i], &changed, now)
            })
            .collect();
        self.issuer_stamps = stamps(&materials);
        // Independent Certificates: stage everything on every core, make it
        // durable with one filesystem flush instead of an fsync per file,
        // then commit (renames) and flush the renames once more. A stop
        // asked for meanwhile discards what was staged.
        let fsync = self.secrets.durability() == Durability::Fsync;
        // Kept in the order and slots they were made in (no second vector
        // of thousands of them: a pass's memory is mostly fresh pages).
        let mut prepared: Vec<Option<Prepared>> = {
            let this = &*self;
            let materials = &materials;
            let certificates = &certificates;
            independent
                .into_par_iter()
                .map(|index| {
                    (!this.stop.is_triggered())
                        .then(|| this.prepare_one(certificates[index], materials, now, false))
                })
                .collect::<Vec<_>>()
        };
        self.check_stop()?;
        let wrote = prepared.iter().flatten().any(|p| p.staged_secret.is_some());
        if fsync
            && wrote
            && let Err(error) = secrets::flush_filesystem(&self.options.state_dir)
        {
            // Nothing staged is known to be on disk: commit none of it.
            for slot in &mut prepared {
                if let Some(p) = slot.take_if(|p| p.staged_secret.is_some()) {
                    *slot = Some(p.storage_failed("WriteFailed", &error, now));
                }
            }
        }
        let results = {
            let this = &*self;
            prepared
                .into_par_iter()
                .map(|p| {
                    p.filter(|_| !this.stop.is_triggered())
                        .map(|p| this.finish_one(p, false))
                })
                .collect::<Vec<_>>()
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
        if let Some(at) = trust_wake {
            report.next_wake = Some(report.next_wake.map_or(at, |wake| wake.min(at)));
        }
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
            self.dirty_records.insert((ns.clone(), name.clone()));
            self.metrics.forget_certificate(&ns, &name);
        }
        for (kind, ns, name) in self.metrics.tracked_issuers() {
            if !issuers.contains_key(&(kind, ns.clone(), name.clone())) {
                self.metrics.forget_issuer(kind, &ns, &name);
            }
        }
        Ok(report)
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

    /// Whether a Certificate must be looked at in a [`Scope::Due`] pass
    /// ([`schedule::needs_look`] over what this controller recorded).
    fn needs_look(
        &self,
        certificate: &Certificate,
        changed: &BTreeSet<IssuerKey>,
        now: DateTime<Utc>,
    ) -> bool {
        let ns = certificate.metadata.namespace.clone().unwrap_or_default();
        let name = certificate.metadata.name.clone().unwrap_or_default();
        let key = (ns.clone(), name);
        let seen = match (self.records.get(&key), self.requeue.get(&key)) {
            (Some(record), Some(due)) => Some(Seen {
                spec: &record.spec,
                due: *due,
            }),
            _ => None,
        };
        let issuer = resolve_issuer(
            &ns,
            &certificate.spec.issuer_ref,
            &self.options.cluster_resource_namespace,
        )
        .ok()
        .map(|target| target.key());
        schedule::needs_look(&certificate.spec, issuer.as_ref(), seen, changed, now)
    }

    fn load_issuers(
        &mut self,
        issuers: &BTreeMap<(IssuerKind, String, String), IssuerConfig>,
        now: DateTime<Utc>,
    ) -> Materials {
        let mut materials = BTreeMap::new();
        for ((kind, ns, name), config) in issuers {
            let secret_ns =
                issuer_target(*kind, ns, name, &self.options.cluster_resource_namespace)
                    .secret_namespace;
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
            self.write_issuer_status(*kind, ns, name, material.as_ref(), now);
            materials.insert((*kind, ns.clone(), name.clone()), material);
        }
        materials
    }
}
