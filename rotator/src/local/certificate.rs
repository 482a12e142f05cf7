//! One Certificate's reconcile in the local shell, in two halves: prepare
//! (read the Secret, decide, stage the new Secret) and finish (commit the
//! Secret, count and log it, hand back the new record for the pass to
//! store). Passes run the halves of independent Certificates on every
//! core.

use chrono::{DateTime, Utc};
use lanyard_crds::api::{Certificate, IssuerKind};
use lanyard_crds::time::Clock;

use super::manifests::ObjectKey;
use super::pass::Materials;
use super::schedule;
use super::secrets::{self, Durability, SecretStoreError};
use super::status::Record;
use super::{LocalController, PassReport};
use crate::issuer_ref::resolve_issuer;
use crate::issuing::IssuerError;
use crate::planner::IssueReason;
use crate::reconcile::{Event, ResolvedIssuer, reconcile};

/// A reconciled Certificate whose writes are staged, not yet visible.
pub(super) struct Prepared {
    pub(super) key: ObjectKey,
    /// The Certificate as the reconcile saw it (generation, prior status),
    /// for a storage failure's outcome.
    pub(super) certificate: Certificate,
    /// Whether the Secret's current certificate is unexpired; looked at
    /// only when a new Secret is staged (only then can a write fail).
    pub(super) current_usable: bool,
    /// What the reconcile decided. Its Secret is dropped once staged: a
    /// pass holds thousands of these between stage and commit.
    pub(super) outcome: crate::reconcile::Outcome,
    pub(super) staged_secret: Option<secrets::StagedSecret>,
    /// The status record: the spec seen, and the outcome's status once the
    /// record changed (`record_changed`).
    pub(super) record: Record,
    pub(super) record_changed: bool,
}

impl Prepared {
    fn new(
        key: ObjectKey,
        certificate: Certificate,
        spec_value: serde_json::Value,
        outcome: crate::reconcile::Outcome,
    ) -> Prepared {
        Prepared {
            record: Record {
                generation: certificate.metadata.generation.unwrap_or(1),
                spec: spec_value,
                status: Default::default(),
            },
            key,
            certificate,
            current_usable: false,
            outcome,
            staged_secret: None,
            record_changed: false,
        }
    }

    /// Records the outcome's status (to be staged).
    fn with_record(self) -> Prepared {
        self.with_record_unless(None)
    }

    /// Records the outcome's status, to be staged when it differs from
    /// what was recorded before.
    fn with_record_unless(mut self, recorded: Option<&Record>) -> Prepared {
        self.record.status = self.outcome.status.clone();
        self.record_changed = recorded != Some(&self.record);
        self
    }

    /// Turns a read or write error into this Certificate's failure:
    /// anything staged is discarded (removed), the status says why and the
    /// next attempt backs off.
    pub(super) fn storage_failed(
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
pub(super) struct One {
    pub(super) key: ObjectKey,
    pub(super) wrote_secret: bool,
    pub(super) event: Event,
    pub(super) requeue_at: DateTime<Utc>,
    pub(super) record: Option<Record>,
}

impl<C: Clock> LocalController<C> {
    /// Reconciles one Certificate, start to finish, flushing as the store's
    /// durability says.
    pub(super) fn reconcile_one(
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
    /// the new Secret if it changed. Touches nothing
    /// shared but files of its own, so passes run it in parallel. A read or
    /// write error fails this Certificate only.
    pub(super) fn prepare_one(
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
        let generation = schedule::generation(record.map(|r| (r.generation, &r.spec)), &spec_value);
        certificate.metadata.generation = Some(generation);
        certificate.status = record.map(|r| r.status.clone());

        let issuer_ref = &certificate.spec.issuer_ref;
        let target = resolve_issuer(&ns, issuer_ref, &self.options.cluster_resource_namespace);
        let kind = target
            .as_ref()
            .map_or(IssuerKind::Issuer, |target| target.kind);
        let missing = match &target {
            Ok(target) => IssuerError::NotFound {
                kind,
                name: target.qualified_name(),
            },
            // A kind or group we do not serve: the core reports the invalid
            // spec without looking at the issuer.
            Err(refused) => IssuerError::InvalidSpec {
                kind,
                name: issuer_ref.name.clone(),
                reason: refused.to_string(),
            },
        };
        let material = match target.as_ref().ok().and_then(|t| materials.get(&t.key())) {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => Err(e),
            None => Err(&missing),
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
                return Prepared::new(key, certificate, spec_value, outcome).with_record();
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
        if let Some(new_secret) = prepared.outcome.secret.take() {
            prepared.current_usable = crate::reconcile::secret_is_unexpired(secret.as_ref(), now);
            match self.secrets.stage(
                &ns,
                &prepared.certificate.spec.secret_name,
                &new_secret,
                flush,
            ) {
                Ok(staged) => prepared.staged_secret = Some(staged),
                Err(error) => return prepared.storage_failed("WriteFailed", &error, now),
            }
        }
        prepared.with_record_unless(record)
    }

    /// The second half: makes the staged Secret visible, then counts and
    /// logs what happened, and hands back the record for the pass to store
    /// (after the Secret). A failed commit fails this Certificate only.
    pub(super) fn finish_one(&self, prepared: Prepared, flush: bool) -> One {
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
            record_changed,
            ..
        } = prepared;
        let record = record_changed.then_some(record);
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
            Event::Recorded { revision } => {
                self.metrics.issued(ns, name, &spec);
                tracing::info!(certificate = %key, revision, not_after = ?outcome.status.not_after, "issued (recorded late: the status was not written at the time)");
            }
            Event::Failed { reason, message } => {
                self.metrics.failed(ns, name, &spec, reason);
                tracing::warn!(certificate = %key, reason, message, "issuance failed");
            }
            Event::TrustUpdated => {
                tracing::info!(certificate = %key, "ca.crt now holds the issuer's live trust anchors");
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
    pub(super) fn absorb(&mut self, one: One, report: &mut PassReport) {
        match one.event {
            Event::Issued(reason) => report.issued.push((one.key.clone(), reason)),
            Event::Failed { reason, message } => {
                report.failed.push((one.key.clone(), reason, message))
            }
            Event::Recorded { .. } | Event::TrustUpdated | Event::UpToDate | Event::BackingOff => {}
        }
        self.requeue.insert(
            (one.key.namespace.clone(), one.key.name.clone()),
            one.requeue_at,
        );
        if let Some(record) = one.record {
            let key = (one.key.namespace, one.key.name);
            self.dirty_records.insert(key.clone());
            self.records.insert(key, record);
        }
    }
}
