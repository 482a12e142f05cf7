//! Controller metrics, named and labelled as cert-manager's with a
//! `lanyard_` prefix, plus the expiry of the signing CAs themselves, which
//! cert-manager does not export. A deleted Certificate's series disappear.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use lanyard_crds::api::{CertificateSpec, CertificateStatus, GROUP, IssuerKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::issuing::IssuerMaterial;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    name: String,
    namespace: String,
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    name: String,
    namespace: String,
    condition: String,
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    name: String,
    namespace: String,
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    name: String,
    namespace: String,
    kind: String,
    condition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    issuer: String,
    issuer_kind: String,
    namespace: String,
    role: String,
    subject: String,
}

const CONDITIONS: [&str; 3] = ["True", "False", "Unknown"];

/// The series one object has, so they can all be removed with it.
#[derive(Debug, Default)]
struct Known {
    certificates: BTreeMap<(String, String), (CertificateLabels, BTreeSet<String>)>,
    issuers: BTreeMap<(IssuerKind, String, String), Vec<CaLabels>>,
}

/// The controller's metrics and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    expiration: Family<CertificateLabels, Gauge>,
    renewal: Family<CertificateLabels, Gauge>,
    ready: Family<ReadyLabels, Gauge>,
    issued: Family<CertificateLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    issuer_ready: Family<IssuerLabels, Gauge>,
    ca_expiration: Family<CaLabels, Gauge>,
    passes: Family<PassLabels, Counter>,
    bundle_anchors: Family<BundleLabels, Gauge>,
    bundle_updated: Family<BundleLabels, Gauge>,
    bundle_errors: Family<BundleLabels, Counter>,
    rotation_phase: Family<PhaseLabels, Gauge>,
    rotation_phase_since: Family<AnchorLabels, Gauge>,
    rotation_step_due: Family<AnchorLabels, Gauge>,
    rotations: Family<AnchorLabels, Counter>,
    known: Mutex<Known>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BundleLabels {
    bundle: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    anchor: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnchorLabels {
    anchor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    scope: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            expiration: Family::default(),
            renewal: Family::default(),
            ready: Family::default(),
            issued: Family::default(),
            failures: Family::default(),
            issuer_ready: Family::default(),
            ca_expiration: Family::default(),
            passes: Family::default(),
            bundle_anchors: Family::default(),
            bundle_updated: Family::default(),
            bundle_errors: Family::default(),
            rotation_phase: Family::default(),
            rotation_phase_since: Family::default(),
            rotation_step_due: Family::default(),
            rotations: Family::default(),
            known: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lanyard_certificate_expiration_timestamp_seconds",
            "The date after which the certificate expires, as a Unix timestamp",
            m.expiration.clone(),
        );
        registry.register(
            "lanyard_certificate_renewal_timestamp_seconds",
            "The time at which the certificate will be renewed, as a Unix timestamp",
            m.renewal.clone(),
        );
        registry.register(
            "lanyard_certificate_ready_status",
            "The Ready condition of the certificate (1 for the current condition)",
            m.ready.clone(),
        );
        registry.register(
            "lanyard_certificate_issued",
            "Certificates issued",
            m.issued.clone(),
        );
        registry.register(
            "lanyard_certificate_issuance_failures",
            "Failed issuance attempts, by reason",
            m.failures.clone(),
        );
        registry.register(
            "lanyard_issuer_ready_status",
            "The Ready condition of the issuer (1 for the current condition)",
            m.issuer_ready.clone(),
        );
        registry.register(
            "lanyard_ca_expiration_timestamp_seconds",
            "The date after which a signing CA (role=issuer) or the trust anchor it chains to (role=anchor) expires",
            m.ca_expiration.clone(),
        );
        registry.register(
            "lanyard_controller_passes",
            "Passes of the local controller: scope=full (every Certificate) or due (only those whose time has come)",
            m.passes.clone(),
        );
        registry.register(
            "lanyard_trust_bundle_anchors",
            "The anchors a trust bundle holds",
            m.bundle_anchors.clone(),
        );
        registry.register(
            "lanyard_trust_bundle_last_update_timestamp_seconds",
            "When a trust bundle's content last changed, as a Unix timestamp",
            m.bundle_updated.clone(),
        );
        registry.register(
            "lanyard_trust_bundle_errors",
            "Failed assemblies or writes of a trust bundle (its targets keep what they hold)",
            m.bundle_errors.clone(),
        );
        registry.register(
            "lanyard_trust_anchor_rotation_phase",
            "The phase of the trust anchor's rotation (a state set: 1 for the current phase)",
            m.rotation_phase.clone(),
        );
        registry.register(
            "lanyard_trust_anchor_rotation_phase_since_timestamp_seconds",
            "When the trust anchor's rotation entered its current phase, as a Unix timestamp",
            m.rotation_phase_since.clone(),
        );
        registry.register(
            "lanyard_trust_anchor_rotation_step_due_timestamp_seconds",
            "When the rotation's next step is due by the clock (a gate that waits on an event counts as due now); a time well past means the rotation is stuck",
            m.rotation_step_due.clone(),
        );
        registry.register(
            "lanyard_trust_anchor_rotations",
            "Trust anchor rotations completed",
            m.rotations.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records a trust bundle's content: how many anchors, and when it
    /// last changed.
    pub fn observe_bundle(
        &self,
        bundle: &str,
        anchors: usize,
        updated: chrono::DateTime<chrono::Utc>,
    ) {
        let labels = BundleLabels {
            bundle: bundle.to_string(),
        };
        self.bundle_anchors
            .get_or_create(&labels)
            .set(i64::try_from(anchors).unwrap_or(i64::MAX));
        self.bundle_updated
            .get_or_create(&labels)
            .set(updated.timestamp());
    }

    /// Counts a failed assembly or write of a trust bundle.
    pub fn bundle_failed(&self, bundle: &str) {
        self.bundle_errors
            .get_or_create(&BundleLabels {
                bundle: bundle.to_string(),
            })
            .inc();
    }

    /// Removes a deleted trust bundle's series.
    pub fn forget_bundle(&self, bundle: &str) {
        let labels = BundleLabels {
            bundle: bundle.to_string(),
        };
        self.bundle_anchors.remove(&labels);
        self.bundle_updated.remove(&labels);
        self.bundle_errors.remove(&labels);
    }

    /// Records an anchor rotation's phase (a state set), when it was
    /// entered, and when its next step is due.
    pub fn observe_rotation(
        &self,
        anchor: &str,
        phase: &'static str,
        phases: &[&'static str],
        since: chrono::DateTime<chrono::Utc>,
        due: chrono::DateTime<chrono::Utc>,
    ) {
        for p in phases {
            self.rotation_phase
                .get_or_create(&PhaseLabels {
                    anchor: anchor.to_string(),
                    phase: p,
                })
                .set(i64::from(*p == phase));
        }
        let labels = AnchorLabels {
            anchor: anchor.to_string(),
        };
        self.rotation_phase_since
            .get_or_create(&labels)
            .set(since.timestamp());
        self.rotation_step_due
            .get_or_create(&labels)
            .set(due.timestamp());
    }

    /// Counts a completed anchor rotation.
    pub fn rotated(&self, anchor: &str) {
        self.rotations
            .get_or_create(&AnchorLabels {
                anchor: anchor.to_string(),
            })
            .inc();
    }

    /// Counts one pass of the local controller (`full` or `due`).
    pub fn pass(&self, scope: &'static str) {
        self.passes.get_or_create(&PassLabels { scope }).inc();
    }

    /// Lets another component (the identity service) add its series to
    /// the same `/metrics`.
    pub fn register_more(&mut self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry);
    }

    fn certificate_labels(
        namespace: &str,
        name: &str,
        spec: &CertificateSpec,
    ) -> CertificateLabels {
        CertificateLabels {
            name: name.to_string(),
            namespace: namespace.to_string(),
            issuer_name: spec.issuer_ref.name.clone(),
            issuer_kind: spec
                .issuer_ref
                .kind
                .clone()
                .unwrap_or_else(|| IssuerKind::Issuer.as_str().to_string()),
            issuer_group: spec
                .issuer_ref
                .group
                .clone()
                .unwrap_or_else(|| GROUP.to_string()),
        }
    }

    /// The series each object has. The map only records which series
    /// exist, and is changed an entry at a time: a panic in a thread that
    /// held the lock leaves it readable, at worst an entry out of date. So
    /// the guard of a poisoned lock is recovered, and no update or scrape
    /// after such a panic panics too.
    fn known(&self) -> MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn track(&self, labels: &CertificateLabels) {
        let mut known = self.known();
        let key = (labels.namespace.clone(), labels.name.clone());
        let stale = match known.certificates.get(&key) {
            Some((old, _)) if old != labels => true,
            Some(_) => false,
            None => {
                known
                    .certificates
                    .insert(key.clone(), (labels.clone(), BTreeSet::new()));
                false
            }
        };
        if stale {
            drop(known);
            self.forget_certificate(&labels.namespace, &labels.name);
            self.known()
                .certificates
                .insert(key, (labels.clone(), BTreeSet::new()));
        }
    }

    /// Records a Certificate's status: expiry, renewal time and Ready.
    pub fn observe_certificate(
        &self,
        namespace: &str,
        name: &str,
        spec: &CertificateSpec,
        status: &CertificateStatus,
    ) {
        let labels = Self::certificate_labels(namespace, name, spec);
        self.track(&labels);
        if let Some(not_after) = status.not_after {
            self.expiration
                .get_or_create(&labels)
                .set(not_after.timestamp());
        }
        if let Some(renewal) = status.renewal_time {
            self.renewal.get_or_create(&labels).set(renewal.timestamp());
        }
        let current = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or("Unknown", |c| c.status.as_str());
        // One label set, its condition changed in place for each series.
        let mut ready = ReadyLabels {
            name: labels.name,
            namespace: labels.namespace,
            condition: String::new(),
            issuer_name: labels.issuer_name,
            issuer_kind: labels.issuer_kind,
            issuer_group: labels.issuer_group,
        };
        for condition in CONDITIONS {
            ready.condition.clear();
            ready.condition.push_str(condition);
            self.ready
                .get_or_create(&ready)
                .set(i64::from(condition == current));
        }
    }

    /// Counts an issuance.
    pub fn issued(&self, namespace: &str, name: &str, spec: &CertificateSpec) {
        let labels = Self::certificate_labels(namespace, name, spec);
        self.track(&labels);
        self.issued.get_or_create(&labels).inc();
    }

    /// Counts a failed issuance attempt.
    pub fn failed(&self, namespace: &str, name: &str, spec: &CertificateSpec, reason: &str) {
        let labels = Self::certificate_labels(namespace, name, spec);
        self.track(&labels);
        if let Some((_, reasons)) = self
            .known()
            .certificates
            .get_mut(&(namespace.to_string(), name.to_string()))
        {
            reasons.insert(reason.to_string());
        }
        self.failures
            .get_or_create(&FailureLabels {
                name: labels.name,
                namespace: labels.namespace,
                issuer_name: labels.issuer_name,
                issuer_kind: labels.issuer_kind,
                issuer_group: labels.issuer_group,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Removes every series of a deleted Certificate.
    pub fn forget_certificate(&self, namespace: &str, name: &str) {
        let removed = self
            .known()
            .certificates
            .remove(&(namespace.to_string(), name.to_string()));
        let Some((labels, reasons)) = removed else {
            return;
        };
        self.expiration.remove(&labels);
        self.renewal.remove(&labels);
        self.issued.remove(&labels);
        for condition in CONDITIONS {
            self.ready.remove(&ReadyLabels {
                name: labels.name.clone(),
                namespace: labels.namespace.clone(),
                condition: condition.to_string(),
                issuer_name: labels.issuer_name.clone(),
                issuer_kind: labels.issuer_kind.clone(),
                issuer_group: labels.issuer_group.clone(),
            });
        }
        for reason in reasons {
            self.failures.remove(&FailureLabels {
                name: labels.name.clone(),
                namespace: labels.namespace.clone(),
                issuer_name: labels.issuer_name.clone(),
                issuer_kind: labels.issuer_kind.clone(),
                issuer_group: labels.issuer_group.clone(),
                reason,
            });
        }
    }

    /// Records an issuer's readiness and the expiry of its CA and anchors.
    /// `namespace` is empty for a ClusterIssuer.
    pub fn observe_issuer(
        &self,
        kind: IssuerKind,
        namespace: &str,
        name: &str,
        material: Option<&IssuerMaterial>,
    ) {
        self.forget_issuer(kind, namespace, name);
        for condition in CONDITIONS {
            let current = if material.is_some() { "True" } else { "False" };
            self.issuer_ready
                .get_or_create(&IssuerLabels {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                    kind: kind.as_str().to_string(),
                    condition: condition.to_string(),
                })
                .set(i64::from(condition == current));
        }
        let mut series = Vec::new();
        if let Some(IssuerMaterial::Ca { ca, roots, .. }) = material {
            let signing = ca.certificate();
            let role = if signing.is_self_issued() {
                "anchor"
            } else {
                "issuer"
            };
            let mut certs = vec![(role, signing)];
            certs.extend(
                roots
                    .iter()
                    .filter(|r| r.der() != signing.der())
                    .map(|r| ("anchor", r)),
            );
            // Old and new anchor of a rotation share a name: their series
            // is the one that ends first, which an expiry alert must see.
            let mut ends: Vec<(CaLabels, i64)> = Vec::new();
            for (role, cert) in certs {
                let labels = CaLabels {
                    issuer: name.to_string(),
                    issuer_kind: kind.as_str().to_string(),
                    namespace: namespace.to_string(),
                    role: role.to_string(),
                    subject: cert.subject().to_string(),
                };
                let end = cert.not_after().timestamp();
                match ends.iter_mut().find(|(l, _)| *l == labels) {
                    Some((_, first)) => *first = (*first).min(end),
                    None => ends.push((labels, end)),
                }
            }
            for (labels, end) in ends {
                self.ca_expiration.get_or_create(&labels).set(end);
                series.push(labels);
            }
        }
        self.known()
            .issuers
            .insert((kind, namespace.to_string(), name.to_string()), series);
    }

    /// Removes every series of a deleted issuer.
    pub fn forget_issuer(&self, kind: IssuerKind, namespace: &str, name: &str) {
        let removed = self
            .known()
            .issuers
            .remove(&(kind, namespace.to_string(), name.to_string()));
        let Some(series) = removed else { return };
        for condition in CONDITIONS {
            self.issuer_ready.remove(&IssuerLabels {
                name: name.to_string(),
                namespace: namespace.to_string(),
                kind: kind.as_str().to_string(),
                condition: condition.to_string(),
            });
        }
        for labels in series {
            self.ca_expiration.remove(&labels);
        }
    }

    /// The certificates with series now, as `(namespace, name)`.
    pub fn tracked_certificates(&self) -> Vec<(String, String)> {
        self.known().certificates.keys().cloned().collect()
    }

    /// The issuers with series now, as `(kind, namespace, name)`.
    pub fn tracked_issuers(&self) -> Vec<(IssuerKind, String, String)> {
        self.known().issuers.keys().cloned().collect()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// The Prometheus text exposition of `registry`.
pub use lanyard_runtime::admin::encode as encode_registry;

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_crds::api::{Condition, IssuerRef};

    #[test]
    fn a_panic_while_the_lock_is_held_does_not_break_later_updates_or_scrapes() {
        let metrics = Metrics::new();
        let spec = CertificateSpec::new(
            "web-tls",
            IssuerRef {
                name: "identity".into(),
                kind: None,
                group: None,
            },
        );
        metrics.issued("linkerd", "web", &spec);

        // A thread panics while it holds the lock, poisoning it.
        let panicked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _held = metrics.known.lock();
                    panic!("a bug while the metrics lock is held");
                })
                .join()
        });
        assert!(panicked.is_err());
        assert!(metrics.known.is_poisoned());

        // Every update that takes the lock still works...
        let status = CertificateStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: None,
                message: None,
                last_transition_time: None,
                observed_generation: None,
            }],
            not_after: Some("2026-01-02T00:00:00Z".parse().unwrap()),
            ..CertificateStatus::default()
        };
        metrics.observe_certificate("linkerd", "web", &spec, &status);
        metrics.failed("linkerd", "api", &spec, "IssuerNotFound");
        metrics.observe_issuer(IssuerKind::Issuer, "linkerd", "identity", None);
        assert_eq!(
            metrics.tracked_certificates(),
            [
                ("linkerd".to_string(), "api".to_string()),
                ("linkerd".to_string(), "web".to_string())
            ]
        );
        metrics.forget_certificate("linkerd", "api");
        assert_eq!(metrics.tracked_issuers().len(), 1);

        // ...and so does the scrape, with the series written after the panic.
        let scrape = metrics.encode();
        assert!(
            scrape.contains("lanyard_certificate_expiration_timestamp_seconds{name=\"web\""),
            "{scrape}"
        );
        assert!(scrape.contains("lanyard_issuer_ready_status{"), "{scrape}");
        assert!(!scrape.contains("name=\"api\""), "{scrape}");
    }
}
