//! Controller metrics, named and labelled as cert-manager's with a
//! `lanyard_` prefix, plus the expiry of the signing CAs themselves, which
//! cert-manager does not export. A deleted Certificate's series disappear.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lanyard_crds::api::{CertificateSpec, CertificateStatus, GROUP, IssuerKind};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::issuing::IssuerMaterial;

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

/// One Certificate's series, cert-manager's: the issuer it is labelled
/// with, and the value of each series it has so far.
#[derive(Debug)]
struct CertificateSeries {
    issuer_name: String,
    issuer_kind: String,
    issuer_group: String,
    expiration: Option<i64>,
    renewal: Option<i64>,
    /// The current Ready condition, once observed (three series, one 1;
    /// empty for a status that is none of the three).
    ready: Option<&'static str>,
    issued: Option<u64>,
    /// Failed attempts by reason.
    failures: BTreeMap<String, u64>,
}

impl CertificateSeries {
    fn new(spec: &CertificateSpec) -> Self {
        let (issuer_name, issuer_kind, issuer_group) = issuer_labels(spec);
        CertificateSeries {
            issuer_name: issuer_name.to_string(),
            issuer_kind: issuer_kind.to_string(),
            issuer_group: issuer_group.to_string(),
            expiration: None,
            renewal: None,
            ready: None,
            issued: None,
            failures: BTreeMap::new(),
        }
    }

    fn labelled_for(&self, spec: &CertificateSpec) -> bool {
        let (name, kind, group) = issuer_labels(spec);
        self.issuer_name == name && self.issuer_kind == kind && self.issuer_group == group
    }
}

/// The issuer labels of a Certificate's series: name, kind and group, the
/// defaults filled in.
fn issuer_labels(spec: &CertificateSpec) -> (&str, &str, &str) {
    (
        &spec.issuer_ref.name,
        spec.issuer_ref
            .kind
            .as_deref()
            .unwrap_or(IssuerKind::Issuer.as_str()),
        spec.issuer_ref.group.as_deref().unwrap_or(GROUP),
    )
}

/// A Certificate's labels, in the order cert-manager writes them.
fn labels<'a>(
    namespace: &'a str,
    name: &'a str,
    series: &'a CertificateSeries,
) -> [(&'static str, &'a str); 5] {
    [
        ("name", name),
        ("namespace", namespace),
        ("issuer_name", &series.issuer_name),
        ("issuer_kind", &series.issuer_kind),
        ("issuer_group", &series.issuer_group),
    ]
}

/// Writes one series of every Certificate that has it, labelled with
/// [`labels`].
fn write_each<'a, M: EncodeMetric>(
    mut family: MetricEncoder<'_>,
    every: impl Iterator<Item = (&'a str, &'a str, &'a CertificateSeries)>,
    value: impl Fn(&CertificateSeries) -> Option<M>,
) -> Result<(), std::fmt::Error> {
    for (namespace, name, series) in every {
        if let Some(metric) = value(series) {
            metric.encode(family.encode_family(&labels(namespace, name, series))?)?;
        }
    }
    Ok(())
}

type ByNamespace = BTreeMap<String, BTreeMap<String, CertificateSeries>>;

/// Every Certificate's series, by namespace and name, written out at each
/// scrape. An update is one lookup by borrowed names under one lock, where
/// a family per series would hash and clone a label set for each of the
/// seven series a Certificate has: the cold pass of 10,000 Certificates
/// spent a tenth of its time there.
#[derive(Debug, Default)]
struct Certificates(Mutex<ByNamespace>);

impl Certificates {
    /// The map, recovered from a poisoned lock as [`Metrics::known`] is:
    /// each update changes one entry.
    fn lock(&self) -> MutexGuard<'_, ByNamespace> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a Certificate's series. A Certificate whose
    /// issuer changed loses its old series (they carry the old issuer's
    /// labels) and starts new ones.
    fn update(
        &self,
        namespace: &str,
        name: &str,
        spec: &CertificateSpec,
        change: impl FnOnce(&mut CertificateSeries),
    ) {
        let mut all = self.lock();
        let by_name = match all.get_mut(namespace) {
            Some(by_name) => by_name,
            None => all.entry(namespace.to_string()).or_default(),
        };
        match by_name.get_mut(name) {
            Some(series) if series.labelled_for(spec) => change(series),
            _ => {
                let mut series = CertificateSeries::new(spec);
                change(&mut series);
                by_name.insert(name.to_string(), series);
            }
        }
    }
}

/// Written as a family registered under the same name would be (the
/// registry ends each help text with a full stop; a collector writes its
/// own).
impl Collector for Certificates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.lock();
        let every = || {
            all.iter().flat_map(|(namespace, by_name)| {
                by_name
                    .iter()
                    .map(move |(name, series)| (namespace.as_str(), name.as_str(), series))
            })
        };
        if every().any(|(_, _, s)| s.expiration.is_some()) {
            let family = encoder.encode_descriptor(
                "lanyard_certificate_expiration_timestamp_seconds",
                "The date after which the certificate expires, as a Unix timestamp.",
                None,
                MetricType::Gauge,
            )?;
            write_each(family, every(), |s| s.expiration.map(ConstGauge::new))?;
        }
        if every().any(|(_, _, s)| s.renewal.is_some()) {
            let family = encoder.encode_descriptor(
                "lanyard_certificate_renewal_timestamp_seconds",
                "The time at which the certificate will be renewed, as a Unix timestamp.",
                None,
                MetricType::Gauge,
            )?;
            write_each(family, every(), |s| s.renewal.map(ConstGauge::new))?;
        }
        if every().any(|(_, _, s)| s.ready.is_some()) {
            let mut family = encoder.encode_descriptor(
                "lanyard_certificate_ready_status",
                "The Ready condition of the certificate (1 for the current condition).",
                None,
                MetricType::Gauge,
            )?;
            for (namespace, name, series) in every() {
                let Some(current) = series.ready else {
                    continue;
                };
                for condition in CONDITIONS {
                    let [name, namespace, issuer_name, issuer_kind, issuer_group] =
                        labels(namespace, name, series);
                    let labels = [
                        name,
                        namespace,
                        ("condition", condition),
                        issuer_name,
                        issuer_kind,
                        issuer_group,
                    ];
                    ConstGauge::new(i64::from(condition == current))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        if every().any(|(_, _, s)| s.issued.is_some()) {
            let family = encoder.encode_descriptor(
                "lanyard_certificate_issued",
                "Certificates issued.",
                None,
                MetricType::Counter,
            )?;
            write_each(family, every(), |s| s.issued.map(ConstCounter::new))?;
        }
        if every().any(|(_, _, s)| !s.failures.is_empty()) {
            let mut family = encoder.encode_descriptor(
                "lanyard_certificate_issuance_failures",
                "Failed issuance attempts, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (namespace, name, series) in every() {
                for (reason, count) in &series.failures {
                    let [name, namespace, issuer_name, issuer_kind, issuer_group] =
                        labels(namespace, name, series);
                    let labels = [
                        name,
                        namespace,
                        issuer_name,
                        issuer_kind,
                        issuer_group,
                        ("reason", reason.as_str()),
                    ];
                    ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The series one object has, so they can all be removed with it.
#[derive(Debug, Default)]
struct Known {
    issuers: BTreeMap<(IssuerKind, String, String), Vec<CaLabels>>,
}

/// The controller's metrics and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    certificates: Arc<Certificates>,
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
            certificates: Arc::default(),
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
        registry.register_collector(Box::new(Arc::clone(&m.certificates)));
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

    /// Records a Certificate's status: expiry, renewal time and Ready.
    pub fn observe_certificate(
        &self,
        namespace: &str,
        name: &str,
        spec: &CertificateSpec,
        status: &CertificateStatus,
    ) {
        let current = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or("Unknown", |c| c.status.as_str());
        // A status outside the three (none the controller writes) sets
        // none of them to 1.
        let ready = CONDITIONS.into_iter().find(|c| *c == current).unwrap_or("");
        self.certificates.update(namespace, name, spec, |series| {
            if let Some(not_after) = status.not_after {
                series.expiration = Some(not_after.timestamp());
            }
            if let Some(renewal) = status.renewal_time {
                series.renewal = Some(renewal.timestamp());
            }
            series.ready = Some(ready);
        });
    }

    /// Counts an issuance.
    pub fn issued(&self, namespace: &str, name: &str, spec: &CertificateSpec) {
        self.certificates.update(namespace, name, spec, |series| {
            *series.issued.get_or_insert(0) += 1;
        });
    }

    /// Counts a failed issuance attempt.
    pub fn failed(&self, namespace: &str, name: &str, spec: &CertificateSpec, reason: &str) {
        self.certificates.update(namespace, name, spec, |series| {
            match series.failures.get_mut(reason) {
                Some(count) => *count += 1,
                None => {
                    series.failures.insert(reason.to_string(), 1);
                }
            }
        });
    }

    /// Removes every series of a deleted Certificate.
    pub fn forget_certificate(&self, namespace: &str, name: &str) {
        let mut all = self.certificates.lock();
        if let Some(by_name) = all.get_mut(namespace) {
            by_name.remove(name);
            if by_name.is_empty() {
                all.remove(namespace);
            }
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
        self.certificates
            .lock()
            .iter()
            .flat_map(|(namespace, by_name)| {
                by_name
                    .keys()
                    .map(move |name| (namespace.clone(), name.clone()))
            })
            .collect()
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
                    let _also = metrics.certificates.0.lock();
                    panic!("a bug while the metrics locks are held");
                })
                .join()
        });
        assert!(panicked.is_err());
        assert!(metrics.known.is_poisoned());
        assert!(metrics.certificates.0.is_poisoned());

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

    fn spec(issuer: &str) -> CertificateSpec {
        CertificateSpec::new(
            "web-tls",
            IssuerRef {
                name: issuer.into(),
                kind: None,
                group: None,
            },
        )
    }

    fn ready(status: &str) -> CertificateStatus {
        CertificateStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: None,
                message: None,
                last_transition_time: None,
                observed_generation: None,
            }],
            not_after: Some("2026-01-02T00:00:00Z".parse().unwrap()),
            renewal_time: Some("2026-01-01T16:00:00Z".parse().unwrap()),
            ..CertificateStatus::default()
        }
    }

    /// The scrape's lines about Certificates, sorted (series of one family
    /// have no fixed order in the exposition).
    fn certificate_lines(metrics: &Metrics) -> Vec<String> {
        let mut lines: Vec<String> = metrics
            .encode()
            .lines()
            .filter(|l| l.contains("lanyard_certificate"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_certificates_series_carry_cert_managers_names_labels_and_types() {
        let metrics = Metrics::new();
        assert!(
            certificate_lines(&metrics).is_empty(),
            "no series, no family"
        );
        metrics.observe_certificate("linkerd", "web", &spec("identity"), &ready("True"));
        metrics.issued("linkerd", "web", &spec("identity"));
        metrics.issued("linkerd", "web", &spec("identity"));
        metrics.failed("linkerd", "web", &spec("identity"), "IssuerNotFound");
        let labels = r#"name="web",namespace="linkerd""#;
        let issuer = r#"issuer_name="identity",issuer_kind="Issuer",issuer_group="lanyard.dev""#;
        let mut want = vec![
            "# HELP lanyard_certificate_expiration_timestamp_seconds The date after which the certificate expires, as a Unix timestamp.".to_string(),
            "# TYPE lanyard_certificate_expiration_timestamp_seconds gauge".to_string(),
            format!("lanyard_certificate_expiration_timestamp_seconds{{{labels},{issuer}}} 1767312000"),
            "# HELP lanyard_certificate_renewal_timestamp_seconds The time at which the certificate will be renewed, as a Unix timestamp.".to_string(),
            "# TYPE lanyard_certificate_renewal_timestamp_seconds gauge".to_string(),
            format!("lanyard_certificate_renewal_timestamp_seconds{{{labels},{issuer}}} 1767283200"),
            "# HELP lanyard_certificate_ready_status The Ready condition of the certificate (1 for the current condition).".to_string(),
            "# TYPE lanyard_certificate_ready_status gauge".to_string(),
            format!(r#"lanyard_certificate_ready_status{{{labels},condition="True",{issuer}}} 1"#),
            format!(r#"lanyard_certificate_ready_status{{{labels},condition="False",{issuer}}} 0"#),
            format!(r#"lanyard_certificate_ready_status{{{labels},condition="Unknown",{issuer}}} 0"#),
            "# HELP lanyard_certificate_issued Certificates issued.".to_string(),
            "# TYPE lanyard_certificate_issued counter".to_string(),
            format!("lanyard_certificate_issued_total{{{labels},{issuer}}} 2"),
            "# HELP lanyard_certificate_issuance_failures Failed issuance attempts, by reason.".to_string(),
            "# TYPE lanyard_certificate_issuance_failures counter".to_string(),
            format!(r#"lanyard_certificate_issuance_failures_total{{{labels},{issuer},reason="IssuerNotFound"}} 1"#),
        ];
        want.sort();
        assert_eq!(certificate_lines(&metrics), want);

        // The Certificate moves to another issuer: the series labelled
        // with the old one go, new ones start from nothing.
        metrics.observe_certificate("linkerd", "web", &spec("other"), &ready("False"));
        let lines = certificate_lines(&metrics).join("\n");
        assert!(!lines.contains(r#"issuer_name="identity""#), "{lines}");
        assert!(
            !lines.contains("lanyard_certificate_issued_total"),
            "{lines}"
        );
        assert!(
            lines.contains(r#"condition="False",issuer_name="other",issuer_kind="Issuer",issuer_group="lanyard.dev"} 1"#),
            "{lines}"
        );

        metrics.forget_certificate("linkerd", "web");
        assert!(certificate_lines(&metrics).is_empty());
        assert!(metrics.tracked_certificates().is_empty());

        // A Ready status that is none of the three sets none of them.
        metrics.observe_certificate("linkerd", "web", &spec("identity"), &ready("Maybe"));
        let ready: Vec<String> = certificate_lines(&metrics)
            .into_iter()
            .filter(|l| l.starts_with("lanyard_certificate_ready_status{"))
            .collect();
        assert_eq!(ready.len(), 3, "{ready:?}");
        assert!(ready.iter().all(|l| l.ends_with(" 0")), "{ready:?}");
    }
}
