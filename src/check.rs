//! `lanyard check`: is the install healthy? In the spirit of `linkerd
//! check`: one line per check under a heading per component, `✔` passed,
//! `‼` a warning, `×` a failure with its reason indented below, then a
//! verdict. The exit code is 1 when anything failed; warnings alone pass.
//!
//! Against a cluster (the current kubeconfig) it checks what `lanyard
//! install` or the Helm chart made, by the names `lanyard-chart` gives
//! them; with `--state-dir` it checks what `lanyard up` keeps in its state
//! directory. Each decision ("is this certificate close to its end?", "may
//! this ServiceAccount do everything its rules say?") is a pure function
//! of what was read and `now`, here and table-tested below; the two shells
//! (`cluster`, `local`) only read and ask.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use clap::{Args, ValueEnum};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use lanyard_chart::rbac::Rule;
use lanyard_crds::api::Condition;
use lanyard_crds::identity::{IdentityDomain, TrustDomain};
use lanyard_crds::time::Clock;
use lanyard_issuer::{Certificate, IdentityIssuer, SigningKey, verify_chain};
use lanyard_rotator::anchor::RotationRecord;
use lanyard_rotator::secret::{CA_CRT, SecretData, TLS_CRT, TLS_KEY};
use lanyard_trust_bundle::rotation::Phase;
use serde_json::{Value, json};

use crate::ca::CliError;

/// How close to its end a CA may come before it is a warning, as `linkerd
/// check` warns ("issuer cert is valid for at least 60 days").
const EXPIRY_WARNING: TimeDelta = TimeDelta::days(60);

/// The oldest Kubernetes the chart supports (its `kubeVersion`).
const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// `lanyard check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The control-plane namespace: where `lanyard install` put the
    /// controller, the identity service and the issuer Secret (with
    /// --state-dir: the issuer Secret's namespace in the state directory).
    #[arg(long, short = 'n', default_value = lanyard_chart::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The mesh's trust domain: the identity issuer must be
    /// `identity.<namespace>.<trust-domain>`.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    identity_trust_domain: String,
    /// Check the state directory of `lanyard up` instead of a cluster.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// `table`: one line per check; `json`: the same as one JSON object
    /// (the shape of `linkerd check -o json`).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

/// How the results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

/// Runs the checks, prints them, and exits 1 when any failed.
pub fn check(args: CheckArgs, clock: &dyn Clock) -> Result<ExitCode, CliError> {
    let trust_domain: TrustDomain = args.identity_trust_domain.parse()?;
    let domain = IdentityDomain::new(&args.namespace, trust_domain)?;
    let now = clock.now();
    let report = match &args.state_dir {
        Some(dir) => local::report(dir, &domain, now),
        None => crate::runtime()?.block_on(cluster::report(&domain, now)),
    };
    match args.output {
        OutputFormat::Table => print!("{}", report.to_text()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).expect("JSON values serialise")
        ),
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------------------
// The report.

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All is well.
    Pass,
    /// Works now, needs attention (e.g. a CA within 60 days of its end).
    Warn(String),
    /// Broken: the reason, and where to look.
    Fail(String),
}

impl Outcome {
    fn symbol(&self) -> &'static str {
        match self {
            Outcome::Pass => "✔",
            Outcome::Warn(_) => "‼",
            Outcome::Fail(_) => "×",
        }
    }

    fn message(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Warn(m) | Outcome::Fail(m) => Some(m),
        }
    }

    fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail(_))
    }
}

/// The worst of `outcomes`, with the messages of every outcome that bad.
fn worst(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
    let (mut warnings, mut failures) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Outcome::Pass => {}
            Outcome::Warn(m) => warnings.push(m),
            Outcome::Fail(m) => failures.push(m),
        }
    }
    if !failures.is_empty() {
        Outcome::Fail(failures.join("\n"))
    } else if !warnings.is_empty() {
        Outcome::Warn(warnings.join("\n"))
    } else {
        Outcome::Pass
    }
}

/// One line of the report: what is claimed, and whether it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The claim, e.g. `issuer certificate is valid for at least 60 days`.
    pub name: String,
    /// Whether it holds.
    pub outcome: Outcome,
}

impl Check {
    fn new(name: impl Into<String>, outcome: Outcome) -> Self {
        Check {
            name: name.into(),
            outcome,
        }
    }
}

/// The checks of one component, under a heading.
#[derive(Debug)]
struct Section {
    heading: &'static str,
    checks: Vec<Check>,
}

/// Every section, and why the rest were not run, if they were not.
#[derive(Debug, Default)]
struct Report {
    sections: Vec<Section>,
    skipped: Option<String>,
}

impl Report {
    fn section(&mut self, heading: &'static str, checks: Vec<Check>) {
        self.sections.push(Section { heading, checks });
    }

    fn failed(&self) -> bool {
        self.skipped.is_some()
            || self
                .sections
                .iter()
                .flat_map(|s| &s.checks)
                .any(|c| c.outcome.is_fail())
    }

    /// The table: heading, underline, one line per check with its reason
    /// indented below, and the verdict.
    fn to_text(&self) -> String {
        let mut out = String::new();
        for section in &self.sections {
            out.push_str(section.heading);
            out.push('\n');
            out.push_str(&"-".repeat(section.heading.chars().count()));
            out.push('\n');
            for check in &section.checks {
                out.push_str(&format!("{} {}\n", check.outcome.symbol(), check.name));
                for line in check.outcome.message().into_iter().flat_map(str::lines) {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            out.push('\n');
        }
        if let Some(skipped) = &self.skipped {
            out.push_str(skipped);
            out.push_str("\n\n");
        }
        let verdict = if self.failed() { "×" } else { "✔" };
        out.push_str(&format!("Status check results are {verdict}\n"));
        out
    }

    /// The report as `linkerd check -o json` shapes it.
    fn to_json(&self) -> Value {
        let categories: Vec<Value> = self
            .sections
            .iter()
            .map(|section| {
                let checks: Vec<Value> = section
                    .checks
                    .iter()
                    .map(|check| {
                        let (result, error) = match &check.outcome {
                            Outcome::Pass => ("success", None),
                            Outcome::Warn(m) => ("warning", Some(m)),
                            Outcome::Fail(m) => ("error", Some(m)),
                        };
                        let mut out = json!({"description": check.name, "result": result});
                        if let Some(error) = error {
                            out["error"] = json!(error);
                        }
                        out
                    })
                    .collect();
                json!({"categoryName": section.heading, "checks": checks})
            })
            .collect();
        let mut out = json!({"success": !self.failed(), "categories": categories});
        if let Some(skipped) = &self.skipped {
            out["skipped"] = json!(skipped);
        }
        out
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A fingerprint cut to its first eight bytes, enough to tell anchors apart
/// in a message.
fn short_fingerprint(sha256: &str) -> String {
    sha256.chars().take(23).collect()
}

// ---------------------------------------------------------------------------
// Decisions: pure functions of what was read and `now`.

/// Whether a certificate is within its validity period at `now`.
fn validity_outcome(
    what: &str,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Outcome {
    if now < not_before {
        Outcome::Fail(format!("{what} is not valid until {}", time(not_before)))
    } else if now > not_after {
        Outcome::Fail(format!("{what} expired at {}", time(not_after)))
    } else {
        Outcome::Pass
    }
}

/// Whether a certificate has at least [`EXPIRY_WARNING`] left: a warning
/// within it, a failure past its end.
fn expiry_outcome(what: &str, not_after: DateTime<Utc>, now: DateTime<Utc>) -> Outcome {
    let left = not_after - now;
    if left <= TimeDelta::zero() {
        Outcome::Fail(format!("{what} expired at {}", time(not_after)))
    } else if left < EXPIRY_WARNING {
        Outcome::Warn(format!(
            "{what} will expire on {} (in {} days); rotate it",
            time(not_after),
            left.num_days()
        ))
    } else {
        Outcome::Pass
    }
}

/// Whether a running Kubernetes is one the chart supports.
fn kubernetes_version_outcome(major: &str, minor: &str) -> Outcome {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_KUBERNETES => Outcome::Pass,
        (Some(major), Some(minor)) => Outcome::Fail(format!(
            "the API server is {major}.{minor}; Lanyard needs {}.{} or later",
            MIN_KUBERNETES.0, MIN_KUBERNETES.1
        )),
        _ => Outcome::Warn(format!(
            "cannot read the API server's version `{major}.{minor}`"
        )),
    }
}

/// What `lanyard install --crds` applies, in words for a hint.
const APPLY_CRDS: &str = "see: `lanyard install --crds | kubectl apply --server-side -f -`";

/// Each version a CRD defines: name, served, storage.
fn crd_versions(crd: &CustomResourceDefinition) -> Vec<(String, bool, bool)> {
    let mut versions: Vec<_> = crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.served, v.storage))
        .collect();
    versions.sort();
    versions
}

fn describe_versions(versions: &[(String, bool, bool)]) -> String {
    let parts: Vec<String> = versions
        .iter()
        .map(|(name, served, storage)| {
            let mut flags = Vec::new();
            if *served {
                flags.push("served");
            }
            if *storage {
                flags.push("storage");
            }
            if flags.is_empty() {
                name.clone()
            } else {
                format!("{name} ({})", flags.join(", "))
            }
        })
        .collect();
    if parts.is_empty() {
        "no version".into()
    } else {
        parts.join(", ")
    }
}

/// A value with nulls, empty lists and empty objects left out: the API
/// server drops what Go's `omitempty` drops, so only what is there counts.
fn without_empty(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Array(items) => {
            let items: Vec<Value> = items.into_iter().filter_map(without_empty).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| without_empty(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        other => Some(other),
    }
}

fn comparable_versions(crd: &CustomResourceDefinition) -> Option<Value> {
    let mut versions = crd.spec.versions.clone();
    versions.sort_by(|a, b| a.name.cmp(&b.name));
    without_empty(serde_json::to_value(versions).expect("CRD versions serialise"))
}

/// Whether the installed CRD is the one this Lanyard generates: missing or
/// serving other versions is a failure (the controller could not read its
/// objects); the same versions with another schema is a warning.
fn crd_outcome(
    expected: &CustomResourceDefinition,
    installed: Option<&CustomResourceDefinition>,
) -> Outcome {
    let Some(installed) = installed else {
        return Outcome::Fail(format!("the CRD is not installed\n{APPLY_CRDS}"));
    };
    let (want, have) = (crd_versions(expected), crd_versions(installed));
    if want != have {
        return Outcome::Fail(format!(
            "the installed CRD defines {}; this Lanyard needs {}\n{APPLY_CRDS}",
            describe_versions(&have),
            describe_versions(&want),
        ));
    }
    if comparable_versions(expected) != comparable_versions(installed) {
        return Outcome::Warn(format!(
            "the installed schema differs from this Lanyard's: CRDs are from another Lanyard version; \
             apply `lanyard install --crds`\n{APPLY_CRDS}"
        ));
    }
    Outcome::Pass
}

/// Whether a Deployment's replicas are ready. No kubelet, no Pods: a
/// Deployment with none ready is a failure even when the API has it.
fn replicas_outcome(desired: i32, ready: i32) -> Outcome {
    if desired <= 0 {
        Outcome::Fail("the Deployment is scaled to 0 replicas: nothing runs".into())
    } else if ready <= 0 {
        Outcome::Fail(format!("0 of {desired} replicas are ready"))
    } else if ready < desired {
        Outcome::Warn(format!("{ready} of {desired} replicas are ready"))
    } else {
        Outcome::Pass
    }
}

fn deployment_outcome(deployment: &Deployment) -> Outcome {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    replicas_outcome(desired, ready)
}

/// Whether a controller holds the leader Lease at `now`: a holder, and a
/// renewal not older than the lease's duration (the same reading the
/// controllers make before they take a Lease).
fn lease_outcome(spec: Option<&LeaseSpec>, now: DateTime<Utc>) -> Outcome {
    use lanyard_rotator::kube::{LeaseDecision, lease_decision};
    // A name no replica has: the decision is then "wait for the holder"
    // exactly while someone holds the Lease.
    const OBSERVER: &str = "lanyard check";
    match lease_decision(spec, OBSERVER, false, now) {
        LeaseDecision::Wait { .. } => Outcome::Pass,
        _ => {
            let holder = spec
                .and_then(|s| s.holder_identity.as_deref())
                .filter(|h| !h.is_empty());
            Outcome::Fail(match holder {
                None => "no replica holds the Lease: no controller is leading".to_string(),
                Some(holder) => format!(
                    "`{holder}` last held the Lease and has not renewed it in time: no controller is leading"
                ),
            })
        }
    }
}

/// Whether a Service serves `port`.
fn service_port_outcome(service: &Service, port: u16) -> Outcome {
    let ports: Vec<i32> = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    if ports.contains(&i32::from(port)) {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "the Service serves {:?}, not port {port} (where proxies ask for certificates)",
            ports
        ))
    }
}

/// Whether every Certificate is Ready, naming each that is not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Readiness {
    namespace: String,
    name: String,
    /// The Ready condition's status, reason and message, if it has one.
    ready: Option<(String, Option<String>, Option<String>)>,
}

impl Readiness {
    fn from_conditions(namespace: String, name: String, conditions: &[Condition]) -> Self {
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
        Readiness {
            namespace,
            name,
            ready,
        }
    }

    fn is_ready(&self) -> bool {
        self.ready
            .as_ref()
            .is_some_and(|(status, _, _)| status == "True")
    }
}

fn certificates_check(certificates: &[Readiness]) -> Check {
    let total = certificates.len();
    let not_ready: Vec<String> = certificates
        .iter()
        .filter(|c| !c.is_ready())
        .map(|c| {
            let what = format!("{}/{}", c.namespace, c.name);
            match &c.ready {
                None => format!("{what}: no Ready condition yet (has a controller seen it?)"),
                Some((status, reason, message)) => {
                    let mut line = format!("{what}: Ready={status}");
                    if let Some(reason) = reason.as_deref().filter(|r| !r.is_empty()) {
                        line.push_str(&format!(" {reason}"));
                    }
                    if let Some(message) = message.as_deref().filter(|m| !m.is_empty()) {
                        line.push_str(&format!(": {message}"));
                    }
                    line
                }
            }
        })
        .collect();
    let name = if total == 0 {
        "all Certificates are Ready (there are none)".to_string()
    } else {
        format!(
            "all Certificates are Ready ({} of {total})",
            total - not_ready.len()
        )
    };
    let outcome = if not_ready.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(not_ready.join("\n"))
    };
    Check::new(name, outcome)
}

/// The issuer Secret's checks, and the issuer when it loads: the three
/// keys, the anchors' and the issuer's validity and remaining life, the
/// identity domain, and the chain from the issuer to an anchor with the
/// issuer's key. `what` names the Secret in messages; no key byte is ever
/// printed.
fn issuer_checks(
    secret: Option<&SecretData>,
    what: &str,
    domain: &IdentityDomain,
    now: DateTime<Utc>,
) -> (Vec<Check>, Option<IdentityIssuer>) {
    let mut checks = Vec::new();
    let holds = format!("issuer Secret holds {TLS_CRT}, {TLS_KEY} and {CA_CRT}");
    let Some(secret) = secret else {
        checks.push(Check::new(
            holds,
            Outcome::Fail(format!("{what} does not exist")),
        ));
        return (checks, None);
    };
    let missing: Vec<&str> = [TLS_CRT, TLS_KEY, CA_CRT]
        .into_iter()
        .filter(|key| {
            secret
                .get(key)
                .is_none_or(|v| v.iter().all(u8::is_ascii_whitespace))
        })
        .collect();
    if !missing.is_empty() {
        checks.push(Check::new(
            holds,
            Outcome::Fail(format!("{what} has no {}", missing.join(", "))),
        ));
        return (checks, None);
    }
    checks.push(Check::new(holds, Outcome::Pass));
    let bytes = |key: &str| secret.get(key).unwrap_or_default();

    // The anchors.
    let anchors_valid = "trust anchors are within their validity period";
    let anchors = match certificates_of(
        bytes(CA_CRT),
        what,
        CA_CRT,
        anchors_valid,
        "trust anchors can be read",
    ) {
        Ok(anchors) => anchors,
        Err(failed) => {
            checks.push(failed);
            return (checks, None);
        }
    };
    let anchor_name = |a: &Certificate| format!("trust anchor `{}`", a.subject());
    let (expired, live): (Vec<&Certificate>, Vec<&Certificate>) =
        anchors.iter().partition(|a| a.not_after() < now);
    let mut validity: Vec<Outcome> = live
        .iter()
        .map(|a| validity_outcome(&anchor_name(a), a.not_before(), a.not_after(), now))
        .collect();
    for anchor in &expired {
        let message = format!(
            "{} expired at {}",
            anchor_name(anchor),
            time(anchor.not_after())
        );
        // An expired anchor beside live ones is what a rotation can leave
        // behind: skipped by the issuer, worth removing. Alone, it is the
        // end of the mesh's trust.
        validity.push(if live.is_empty() {
            Outcome::Fail(message)
        } else {
            Outcome::Warn(format!("{message}; remove it from {CA_CRT}"))
        });
    }
    checks.push(Check::new(anchors_valid, worst(validity)));
    checks.push(Check::new(
        "trust anchors are valid for at least 60 days",
        worst(
            live.iter()
                .map(|a| expiry_outcome(&anchor_name(a), a.not_after(), now)),
        ),
    ));

    // The issuer.
    let issuer_valid = "issuer certificate is within its validity period";
    let chain = match certificates_of(
        bytes(TLS_CRT),
        what,
        TLS_CRT,
        issuer_valid,
        "issuer certificate can be read",
    ) {
        Ok(chain) => chain,
        Err(failed) => {
            checks.push(failed);
            return (checks, None);
        }
    };
    let cert = &chain[0];
    let cert_name = format!("issuer certificate `{}`", cert.subject());
    let within = validity_outcome(&cert_name, cert.not_before(), cert.not_after(), now);
    let within_ok = !within.is_fail();
    checks.push(Check::new(issuer_valid, within));
    if within_ok {
        checks.push(Check::new(
            "issuer certificate is valid for at least 60 days",
            expiry_outcome(&cert_name, cert.not_after(), now),
        ));
    }
    checks.push(Check::new(
        format!("issuer certificate is for the identity domain {domain}"),
        match IdentityIssuer::domain_from_common_name(cert) {
            Ok(found) if &found == domain => Outcome::Pass,
            Ok(found) => Outcome::Fail(format!(
                "{cert_name} is for {found}; proxies of this control plane expect {domain}\n\
                 see: --namespace and --identity-trust-domain"
            )),
            Err(e) => Outcome::Fail(e.to_string()),
        },
    ));

    // The chain and the key.
    let chains = "issuer certificate is issued by a trust anchor and matches its key";
    let key = match SigningKey::from_pem(bytes(TLS_KEY), &format!("{what} {TLS_KEY}")) {
        Ok(key) => key,
        Err(e) => {
            checks.push(Check::new(chains, Outcome::Fail(e.to_string())));
            return (checks, None);
        }
    };
    match IdentityIssuer::new(anchors, chain, key, domain.clone(), now) {
        Ok(issuer) => {
            checks.push(Check::new(chains, Outcome::Pass));
            (checks, Some(issuer))
        }
        Err(e) => {
            checks.push(Check::new(chains, Outcome::Fail(e.to_string())));
            (checks, None)
        }
    }
}

/// Whether the trust bundle in `pem` (named `what`) trusts the issuer:
/// proxies verify every peer's chain against the bundle, not against the
/// issuer Secret's `ca.crt`.
fn bundle_trusts_issuer(
    issuer: &IdentityIssuer,
    pem: &[u8],
    what: &str,
    now: DateTime<Utc>,
) -> Outcome {
    let anchors = match Certificate::parse_pem_bundle(pem, what) {
        Ok(anchors) if !anchors.is_empty() => anchors,
        Ok(_) => return Outcome::Fail(format!("{what} holds no certificate")),
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    match verify_chain(issuer.chain(), &anchors, now) {
        Ok(_) => Outcome::Pass,
        Err(e) => {
            let held: Vec<String> = anchors
                .iter()
                .map(|a| {
                    format!(
                        "`{}` ({})",
                        a.subject(),
                        short_fingerprint(&a.sha256_fingerprint())
                    )
                })
                .collect();
            Outcome::Fail(format!(
                "the issuer `{}` does not chain to any anchor in {what} ({}): {e}\n\
                 proxies would not trust the certificates it signs",
                issuer.certificate().subject(),
                held.join(", ")
            ))
        }
    }
}

/// Whether a bundle target (`what`, its PEM text) holds exactly the anchors
/// the TrustBundle's status lists (by SHA-256 fingerprint).
fn bundle_target_outcome(expected_sha256: &[String], pem: &str, what: &str) -> Outcome {
    let certificates = match Certificate::parse_pem_bundle(pem.as_bytes(), what) {
        Ok(certificates) => certificates,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let normal = |s: &str| s.trim().to_ascii_uppercase();
    let held: BTreeSet<String> = certificates
        .iter()
        .map(|c| normal(&c.sha256_fingerprint()))
        .collect();
    let want: BTreeSet<String> = expected_sha256.iter().map(|s| normal(s)).collect();
    let missing: Vec<String> = want
        .difference(&held)
        .map(|s| short_fingerprint(s))
        .collect();
    let extra: Vec<String> = held
        .difference(&want)
        .map(|s| short_fingerprint(s))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("lacks {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "holds {} that the bundle's status does not list",
            extra.join(", ")
        ));
    }
    if problems.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{what} {}", problems.join(" and ")))
    }
}

/// One question for the API server's authorizer: may the ServiceAccount
/// do `verb` on this resource (by this name), in this namespace or
/// cluster-wide?
#[derive(Debug, Clone, PartialEq, Eq)]
struct Access {
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    verb: &'static str,
    name: Option<&'static str>,
    namespace: Option<String>,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(subresource) = self.subresource {
            write!(f, "/{subresource}")?;
        }
        if let Some(name) = self.name {
            write!(f, "/{name}")?;
        }
        match &self.namespace {
            Some(namespace) => write!(f, " in {namespace}"),
            None => write!(f, " cluster-wide"),
        }
    }
}

/// Every question one rule table asks: each resource, verb and name, in
/// `namespace` (a Role's rules) or cluster-wide (a ClusterRole's).
fn access_requests(rules: &[Rule], namespace: Option<&str>) -> Vec<Access> {
    let mut out = Vec::new();
    for rule in rules {
        for full in rule.resources {
            let (resource, subresource) = match full.split_once('/') {
                Some((resource, sub)) => (resource, Some(sub)),
                None => (*full, None),
            };
            for verb in rule.verbs {
                let names: Vec<Option<&'static str>> = if rule.names.is_empty() {
                    vec![None]
                } else {
                    rule.names.iter().map(|n| Some(*n)).collect()
                };
                for name in names {
                    out.push(Access {
                        group: rule.group,
                        resource,
                        subresource,
                        verb,
                        name,
                        namespace: namespace.map(str::to_string),
                    });
                }
            }
        }
    }
    out
}

/// The authorizer's answer to one [`Access`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Allowed,
    /// Denied, with the authorizer's reason when it gave one.
    Denied(Option<String>),
}

/// One line per component: every access granted passes; any denied fails
/// naming each (`<sa> cannot <verb> <resource>[/<name>] in <ns>`); an
/// answer that could not be had (the checker may not create
/// SubjectAccessReviews) fails with that reason.
fn rbac_outcome(service_account: &str, answers: &[(Access, Result<Decision, String>)]) -> Outcome {
    if let Some((access, Err(error))) = answers.iter().find(|(_, a)| a.is_err()) {
        return Outcome::Fail(format!(
            "cannot ask the API server whether {service_account} may {access}: {error}\n\
             see: `lanyard check` needs `create` on subjectaccessreviews.authorization.k8s.io (a cluster admin has it)"
        ));
    }
    let denied: Vec<String> = answers
        .iter()
        .filter_map(|(access, answer)| match answer {
            // Each denial marked on its own line, so a reader (or a grep
            // for `×`) finds the missing rule, not only the component.
            Ok(Decision::Denied(reason)) => Some(match reason {
                Some(reason) => format!("× {service_account} cannot {access} ({reason})"),
                None => format!("× {service_account} cannot {access}"),
            }),
            _ => None,
        })
        .collect();
    if denied.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!(
            "{}\nsee: the install's ClusterRoles, Roles and their bindings (`lanyard install`)",
            denied.join("\n")
        ))
    }
}

/// The certificates under `key` of the Secret `what`, at least one; else
/// the failed check: `validity` (the check the certificates were read
/// for) when the key holds none, `readable` when it is not PEM.
fn certificates_of(
    bytes: &[u8],
    what: &str,
    key: &str,
    validity: &str,
    readable: &str,
) -> Result<Vec<Certificate>, Check> {
    match Certificate::parse_pem_bundle(bytes, &format!("{what} {key}")) {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(Check::new(
            validity,
            Outcome::Fail(format!("{what} {key} holds no certificate")),
        )),
        Err(e) => Err(Check::new(readable, Outcome::Fail(e.to_string()))),
    }
}

/// Whether the trust anchor is at rest: Stable passes; a rotation under
/// way, or asked for and not started, is a warning naming its phase.
fn rotation_outcome(
    record: Option<&RotationRecord>,
    requested: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    follow: &str,
) -> Outcome {
    let phase = record.map_or(Phase::Stable, |r| r.rotation.phase);
    if phase != Phase::Stable {
        let record = record.expect("a phase other than Stable comes from a record");
        let mut message = format!(
            "a rotation of `{}` is in phase {} since {}",
            record.anchor,
            phase.as_str(),
            time(record.rotation.since)
        );
        if let Some(waiting) = &record.waiting_for {
            message.push_str(&format!("; waiting for {waiting}"));
        }
        if let Some(due) = record.next_step_due {
            if due <= now {
                message.push_str(&format!("; its next step was due at {}", time(due)));
            } else {
                message.push_str(&format!("; next step at {}", time(due)));
            }
        }
        return Outcome::Warn(format!("{message}\nsee: `{follow}`"));
    }
    match requested {
        Some(at) => Outcome::Warn(format!(
            "a rotation was requested at {} and has not started: is `lanyard up` running?\nsee: `{follow}`",
            time(at)
        )),
        None => Outcome::Pass,
    }
}

/// A kube error in one line: the API server's message, or the error and
/// its causes (a connection error says little without them).
fn api_error(error: &kube::Error) -> String {
    if let kube::Error::Api(status) = error {
        return format!("{} ({} {})", status.message, status.code, status.reason);
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

mod cluster;
mod local;

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use lanyard_issuer::{KeyAlgorithm, TrustAnchor};

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    fn kind(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Pass => "pass",
            Outcome::Warn(_) => "warn",
            Outcome::Fail(_) => "fail",
        }
    }

    #[test]
    fn expiry_is_classified_against_sixty_days() {
        let now = t(2026, 1, 1);
        let cases = [
            (
                "passes a CA with a year left",
                now + TimeDelta::days(365),
                "pass",
            ),
            (
                "passes a CA with exactly 60 days left",
                now + TimeDelta::days(60),
                "pass",
            ),
            (
                "warns about a CA with 59 days left",
                now + TimeDelta::days(59),
                "warn",
            ),
            (
                "warns about a CA with a minute left",
                now + TimeDelta::minutes(1),
                "warn",
            ),
            ("fails a CA that ends now", now, "fail"),
            (
                "fails a CA that ended yesterday",
                now - TimeDelta::days(1),
                "fail",
            ),
        ];
        for (sentence, not_after, want) in cases {
            let outcome = expiry_outcome("issuer certificate `x`", not_after, now);
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
        let Outcome::Warn(message) = expiry_outcome("issuer", now + TimeDelta::days(10), now)
        else {
            panic!("ten days left is a warning")
        };
        assert!(message.contains("in 10 days"), "{message}");
        assert!(message.contains("2026-01-11T12:00:00Z"), "{message}");
    }

    #[test]
    fn validity_period_is_checked_at_both_ends() {
        let now = t(2026, 1, 1);
        let cases = [
            (
                "passes a certificate inside its period",
                now - TimeDelta::days(1),
                now + TimeDelta::days(1),
                "pass",
            ),
            (
                "passes on its last second",
                now - TimeDelta::days(1),
                now,
                "pass",
            ),
            (
                "fails one not valid yet",
                now + TimeDelta::hours(1),
                now + TimeDelta::days(1),
                "fail",
            ),
            (
                "fails one that ended",
                now - TimeDelta::days(2),
                now - TimeDelta::days(1),
                "fail",
            ),
        ];
        for (sentence, not_before, not_after, want) in cases {
            let outcome = validity_outcome("x", not_before, not_after, now);
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
    }

    #[test]
    fn deployments_need_every_replica_ready() {
        let cases = [
            ("passes when every replica is ready", 2, 2, "pass"),
            (
                "passes when more are ready than desired (a rollout)",
                1,
                2,
                "pass",
            ),
            ("warns when some replicas are not ready", 3, 1, "warn"),
            (
                "fails when none is ready (no kubelet runs its Pods)",
                1,
                0,
                "fail",
            ),
            ("fails a Deployment scaled to zero", 0, 0, "fail"),
        ];
        for (sentence, desired, ready, want) in cases {
            let outcome = replicas_outcome(desired, ready);
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
    }

    fn micro(t: DateTime<Utc>) -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap())
    }

    #[test]
    fn a_lease_is_held_while_its_renewal_is_fresh() {
        let now = t(2026, 1, 1);
        let lease = |holder: Option<&str>, renewed: Option<DateTime<Utc>>| LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: renewed.map(micro),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let cases = [
            (
                "passes a Lease renewed 5 s ago",
                Some(lease(Some("pod-a"), Some(now - TimeDelta::seconds(5)))),
                "pass",
            ),
            (
                "fails a Lease renewed 16 s ago with a 15 s duration",
                Some(lease(Some("pod-a"), Some(now - TimeDelta::seconds(16)))),
                "fail",
            ),
            (
                "fails a Lease nobody holds",
                Some(lease(None, Some(now))),
                "fail",
            ),
            (
                "fails a Lease with an empty holder",
                Some(lease(Some(""), Some(now))),
                "fail",
            ),
            (
                "fails a Lease never renewed",
                Some(lease(Some("pod-a"), None)),
                "fail",
            ),
            ("fails a Lease with no spec", None, "fail"),
        ];
        for (sentence, spec, want) in cases {
            let outcome = lease_outcome(spec.as_ref(), now);
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
        let Outcome::Fail(message) = lease_outcome(
            Some(&lease(Some("pod-a"), Some(now - TimeDelta::minutes(5)))),
            now,
        ) else {
            panic!("a stale Lease fails")
        };
        assert!(message.contains("`pod-a`"), "{message}");
    }

    #[test]
    fn kubernetes_versions_from_1_29_are_supported() {
        let cases = [
            ("passes 1.36", "1", "36", "pass"),
            ("passes 1.29", "1", "29", "pass"),
            ("passes a provider's 1.30+", "1", "30+", "pass"),
            ("fails 1.28", "1", "28", "fail"),
            ("warns when the version cannot be read", "", "", "warn"),
        ];
        for (sentence, major, minor, want) in cases {
            let outcome = kubernetes_version_outcome(major, minor);
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
    }

    fn certificate_crd() -> CustomResourceDefinition {
        lanyard_crds::api::custom_resource_definitions()
            .into_iter()
            .next()
            .unwrap()
    }

    #[test]
    fn installed_crds_are_compared_with_the_generated_ones() {
        let expected = certificate_crd();
        assert_eq!(
            crd_outcome(&expected, Some(&expected.clone())),
            Outcome::Pass
        );

        let missing = crd_outcome(&expected, None);
        assert!(
            matches!(&missing, Outcome::Fail(m) if m.contains("not installed")),
            "{missing:?}"
        );

        let mut not_stored = expected.clone();
        not_stored.spec.versions[0].storage = false;
        let outcome = crd_outcome(&expected, Some(&not_stored));
        assert!(
            matches!(&outcome, Outcome::Fail(m) if m.contains("v1 (served)") && m.contains("v1 (served, storage)")),
            "fails a CRD that does not store v1: {outcome:?}"
        );

        let mut other_version = expected.clone();
        other_version.spec.versions[0].name = "v1beta1".into();
        assert!(crd_outcome(&expected, Some(&other_version)).is_fail());

        let mut other_schema = expected.clone();
        let schema = other_schema.spec.versions[0]
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .unwrap();
        schema.description = Some("from another version".into());
        let outcome = crd_outcome(&expected, Some(&other_schema));
        assert!(
            matches!(&outcome, Outcome::Warn(m) if m.contains("CRDs are from another Lanyard version")),
            "warns about a CRD with another schema: {outcome:?}"
        );
    }

    #[test]
    fn a_crd_read_back_without_empty_fields_is_the_same() {
        // The API server leaves out what is empty; that is no difference.
        let expected = certificate_crd();
        let mut value = serde_json::to_value(&expected).unwrap();
        value["spec"]["versions"][0]["deprecated"] = Value::Null;
        value["spec"]["versions"][0]["selectableFields"] = json!([]);
        let read_back: CustomResourceDefinition = serde_json::from_value(value).unwrap();
        assert_eq!(crd_outcome(&expected, Some(&read_back)), Outcome::Pass);
    }

    #[test]
    fn rbac_rules_become_one_question_per_resource_verb_and_name() {
        let questions = access_requests(lanyard_chart::rbac::IDENTITY_NAMESPACED, Some("linkerd"));
        let lines: Vec<String> = questions.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "get secrets/linkerd-identity-issuer in linkerd",
                "list secrets/linkerd-identity-issuer in linkerd",
                "watch secrets/linkerd-identity-issuer in linkerd",
            ]
        );
        let cluster = access_requests(lanyard_chart::rbac::CONTROLLER_CLUSTER, None);
        let patch_status = cluster
            .iter()
            .find(|a| a.resource == "certificates" && a.subresource == Some("status"))
            .expect("the controller patches Certificate status");
        assert_eq!(patch_status.verb, "patch");
        assert_eq!(patch_status.group, "lanyard.dev");
        assert_eq!(patch_status.namespace, None);
        assert_eq!(
            patch_status.to_string(),
            "patch certificates.lanyard.dev/status cluster-wide"
        );
        let expected: usize = lanyard_chart::rbac::CONTROLLER_CLUSTER
            .iter()
            .map(|r| r.resources.len() * r.verbs.len() * r.names.len().max(1))
            .sum();
        assert_eq!(cluster.len(), expected);
    }

    #[test]
    fn rbac_answers_are_aggregated_per_component() {
        let questions =
            access_requests(lanyard_chart::rbac::CONTROLLER_NAMESPACED, Some("linkerd"));
        let all = |answer: Result<Decision, String>| -> Vec<(Access, Result<Decision, String>)> {
            questions
                .iter()
                .map(|q| (q.clone(), answer.clone()))
                .collect()
        };
        assert_eq!(
            rbac_outcome("lanyard-controller", &all(Ok(Decision::Allowed))),
            Outcome::Pass,
            "passes when every access is allowed"
        );

        let mut one_denied = all(Ok(Decision::Allowed));
        one_denied[1].1 = Ok(Decision::Denied(None));
        let Outcome::Fail(message) = rbac_outcome("lanyard-controller", &one_denied) else {
            panic!("fails when one access is denied")
        };
        assert!(
            message
                .contains("lanyard-controller cannot create leases.coordination.k8s.io in linkerd"),
            "{message}"
        );
        assert!(
            !message.contains("cannot get"),
            "names only the denied: {message}"
        );

        let mut unanswerable = all(Ok(Decision::Allowed));
        unanswerable.truncate(1);
        unanswerable[0].1 = Err("subjectaccessreviews.authorization.k8s.io is forbidden".into());
        let Outcome::Fail(message) = rbac_outcome("lanyard-controller", &unanswerable) else {
            panic!("fails when the question cannot be asked")
        };
        assert!(message.contains("is forbidden"), "{message}");
        assert!(
            message.contains("create` on subjectaccessreviews"),
            "{message}"
        );
    }

    #[test]
    fn every_not_ready_certificate_is_named() {
        let ready = Readiness {
            namespace: "linkerd".into(),
            name: "linkerd-identity-issuer".into(),
            ready: Some(("True".into(), Some("Issued".into()), None)),
        };
        let failing = Readiness {
            namespace: "emojivoto".into(),
            name: "web".into(),
            ready: Some((
                "False".into(),
                Some("IssuerNotReady".into()),
                Some("issuer `missing` does not exist".into()),
            )),
        };
        let unseen = Readiness {
            namespace: "emojivoto".into(),
            name: "vote".into(),
            ready: None,
        };
        let check = certificates_check(std::slice::from_ref(&ready));
        assert_eq!(check.outcome, Outcome::Pass);
        assert_eq!(check.name, "all Certificates are Ready (1 of 1)");
        assert_eq!(certificates_check(&[]).outcome, Outcome::Pass);

        let check = certificates_check(&[ready, failing, unseen]);
        assert_eq!(check.name, "all Certificates are Ready (1 of 3)");
        let Outcome::Fail(message) = check.outcome else {
            panic!("fails when any is not Ready")
        };
        assert!(
            message.contains(
                "emojivoto/web: Ready=False IssuerNotReady: issuer `missing` does not exist"
            ),
            "{message}"
        );
        assert!(
            message.contains("emojivoto/vote: no Ready condition yet"),
            "{message}"
        );
        assert!(!message.contains("linkerd-identity-issuer"), "{message}");
    }

    /// An anchor and an issuer under it, as the Secret holds them.
    struct Pki {
        anchor: TrustAnchor,
        secret: SecretData,
    }

    fn pki(anchor_days: i64, issuer_days: i64, now: DateTime<Utc>) -> Pki {
        let domain = IdentityDomain::linkerd_default();
        let anchor = TrustAnchor::generate(
            &domain,
            TimeDelta::days(anchor_days),
            KeyAlgorithm::EcdsaP256,
            now - TimeDelta::hours(1),
        )
        .unwrap();
        let (issuer, _) = anchor
            .issue_identity_issuer(
                &domain,
                TimeDelta::days(issuer_days),
                KeyAlgorithm::EcdsaP256,
                now - TimeDelta::hours(1),
            )
            .unwrap();
        let mut secret = SecretData::default();
        secret
            .data
            .insert(TLS_CRT.into(), issuer.certificate().to_pem().into_bytes());
        secret.data.insert(
            TLS_KEY.into(),
            issuer.key().to_pkcs8_pem().as_bytes().to_vec(),
        );
        secret
            .data
            .insert(CA_CRT.into(), anchor.certificate().to_pem().into_bytes());
        Pki { anchor, secret }
    }

    fn outcome_of<'a>(checks: &'a [Check], name: &str) -> &'a Outcome {
        &checks
            .iter()
            .find(|c| c.name.starts_with(name))
            .unwrap_or_else(|| panic!("no check `{name}` in {checks:#?}"))
            .outcome
    }

    #[test]
    fn a_healthy_issuer_passes_every_check() {
        let now = t(2026, 1, 1);
        let pki = pki(3650, 365, now);
        let domain = IdentityDomain::linkerd_default();
        let (checks, issuer) = issuer_checks(Some(&pki.secret), "Secret linkerd/x", &domain, now);
        assert!(issuer.is_some());
        for check in &checks {
            assert_eq!(check.outcome, Outcome::Pass, "{check:?}");
        }
        assert_eq!(checks.len(), 7, "{checks:#?}");
        let issuer = issuer.unwrap();
        assert_eq!(
            bundle_trusts_issuer(
                &issuer,
                pki.anchor.certificate().to_pem().as_bytes(),
                "bundle",
                now
            ),
            Outcome::Pass
        );
    }

    #[test]
    fn an_issuer_within_sixty_days_of_its_end_is_a_warning() {
        let now = t(2026, 1, 1);
        let pki = pki(3650, 30, now);
        let domain = IdentityDomain::linkerd_default();
        let (checks, issuer) = issuer_checks(Some(&pki.secret), "Secret linkerd/x", &domain, now);
        assert!(issuer.is_some(), "a near-expiry issuer still loads");
        let outcome = outcome_of(&checks, "issuer certificate is valid for at least 60 days");
        assert!(
            matches!(outcome, Outcome::Warn(m) if m.contains("identity.linkerd.cluster.local") && m.contains("in 29 days")),
            "{outcome:?}"
        );
        assert_eq!(
            outcome_of(&checks, "trust anchors are valid for at least 60 days"),
            &Outcome::Pass
        );
    }

    #[test]
    fn an_anchor_within_sixty_days_of_its_end_is_a_warning() {
        let now = t(2026, 1, 1);
        let pki = pki(40, 365, now);
        let domain = IdentityDomain::linkerd_default();
        let (checks, _) = issuer_checks(Some(&pki.secret), "Secret linkerd/x", &domain, now);
        assert!(matches!(
            outcome_of(&checks, "trust anchors are valid for at least 60 days"),
            Outcome::Warn(m) if m.contains("root.linkerd.cluster.local")
        ));
    }

    #[test]
    fn an_expired_issuer_fails() {
        let created = t(2025, 1, 1);
        let pki = pki(3650, 30, created);
        let now = t(2026, 1, 1);
        let domain = IdentityDomain::linkerd_default();
        let (checks, issuer) = issuer_checks(Some(&pki.secret), "Secret linkerd/x", &domain, now);
        assert!(issuer.is_none());
        assert!(matches!(
            outcome_of(&checks, "issuer certificate is within its validity period"),
            Outcome::Fail(m) if m.contains("expired at")
        ));
        assert!(
            !checks
                .iter()
                .any(|c| c.name.contains("60 days") && c.name.contains("issuer")),
            "an expired issuer gets one failure, not two: {checks:#?}"
        );
        assert!(outcome_of(&checks, "issuer certificate is issued by a trust anchor").is_fail());
    }

    #[test]
    fn a_secret_missing_a_key_or_holding_garbage_fails_naming_it() {
        let now = t(2026, 1, 1);
        let domain = IdentityDomain::linkerd_default();
        let (checks, _) = issuer_checks(None, "Secret linkerd/x", &domain, now);
        assert!(matches!(&checks[0].outcome, Outcome::Fail(m) if m.contains("does not exist")));

        let mut no_key = pki(3650, 365, now).secret;
        no_key.data.remove(TLS_KEY);
        let (checks, _) = issuer_checks(Some(&no_key), "Secret linkerd/x", &domain, now);
        assert_eq!(checks.len(), 1);
        assert!(matches!(&checks[0].outcome, Outcome::Fail(m) if m.contains("has no tls.key")));

        let mut garbage = pki(3650, 365, now).secret;
        garbage
            .data
            .insert(TLS_CRT.into(), b"not a certificate\n".to_vec());
        let (checks, issuer) = issuer_checks(Some(&garbage), "Secret linkerd/x", &domain, now);
        assert!(issuer.is_none());
        assert!(matches!(
            outcome_of(&checks, "issuer certificate can be read"),
            Outcome::Fail(m) if m.contains("tls.crt")
        ));
    }

    #[test]
    fn a_key_that_is_not_the_issuers_fails_without_printing_it() {
        let now = t(2026, 1, 1);
        let domain = IdentityDomain::linkerd_default();
        let mut secret = pki(3650, 365, now).secret;
        let other = pki(3650, 365, now).secret;
        let other_key = other.data[TLS_KEY].clone();
        secret.data.insert(TLS_KEY.into(), other_key.clone());
        let (checks, issuer) = issuer_checks(Some(&secret), "Secret linkerd/x", &domain, now);
        assert!(issuer.is_none());
        let outcome = outcome_of(&checks, "issuer certificate is issued by a trust anchor");
        assert!(outcome.is_fail(), "{outcome:?}");
        let key_text = String::from_utf8(other_key).unwrap();
        let body: String = key_text.lines().nth(1).unwrap().to_string();
        for check in &checks {
            assert!(
                !format!("{check:?}").contains(&body),
                "key material printed"
            );
        }
    }

    #[test]
    fn an_issuer_for_another_domain_fails() {
        let now = t(2026, 1, 1);
        let pki = pki(3650, 365, now);
        let other = IdentityDomain::new("linkerd", "example.org".parse().unwrap()).unwrap();
        let (checks, _) = issuer_checks(Some(&pki.secret), "Secret linkerd/x", &other, now);
        assert!(matches!(
            outcome_of(&checks, "issuer certificate is for the identity domain identity.linkerd.example.org"),
            Outcome::Fail(m) if m.contains("is for identity.linkerd.cluster.local")
        ));
    }

    #[test]
    fn a_bundle_without_the_issuers_anchor_fails() {
        let now = t(2026, 1, 1);
        let domain = IdentityDomain::linkerd_default();
        let ours = pki(3650, 365, now);
        let theirs = pki(3650, 365, now);
        let (_, issuer) = issuer_checks(Some(&ours.secret), "s", &domain, now);
        let issuer = issuer.unwrap();
        let outcome = bundle_trusts_issuer(
            &issuer,
            theirs.anchor.certificate().to_pem().as_bytes(),
            "ConfigMap linkerd/linkerd-identity-trust-roots",
            now,
        );
        assert!(
            matches!(&outcome, Outcome::Fail(m) if m.contains("proxies would not trust")),
            "{outcome:?}"
        );
        let both = format!(
            "{}{}",
            theirs.anchor.certificate().to_pem(),
            ours.anchor.certificate().to_pem()
        );
        assert_eq!(
            bundle_trusts_issuer(&issuer, both.as_bytes(), "bundle", now),
            Outcome::Pass,
            "passes a bundle holding the issuer's anchor among others (a rotation)"
        );
        assert!(bundle_trusts_issuer(&issuer, b"garbage", "bundle", now).is_fail());
    }

    #[test]
    fn a_bundle_target_must_hold_exactly_the_listed_anchors() {
        let now = t(2026, 1, 1);
        let a = pki(3650, 365, now).anchor;
        let b = pki(3650, 365, now).anchor;
        let (pem_a, pem_b) = (a.certificate().to_pem(), b.certificate().to_pem());
        let (fp_a, fp_b) = (
            a.certificate().sha256_fingerprint(),
            b.certificate().sha256_fingerprint(),
        );
        let cases = [
            (
                "passes the listed anchor",
                vec![fp_a.clone()],
                pem_a.clone(),
                "pass",
            ),
            (
                "passes both anchors of a rotation in any order",
                vec![fp_b.clone(), fp_a.clone()],
                format!("{pem_a}{pem_b}"),
                "pass",
            ),
            (
                "passes a fingerprint in lower case",
                vec![fp_a.to_lowercase()],
                pem_a.clone(),
                "pass",
            ),
            (
                "fails a target missing an anchor",
                vec![fp_a.clone(), fp_b.clone()],
                pem_a.clone(),
                "fail",
            ),
            (
                "fails a target with an anchor not listed",
                vec![fp_a.clone()],
                format!("{pem_a}{pem_b}"),
                "fail",
            ),
            (
                "fails a target that does not parse",
                vec![fp_a.clone()],
                "-----BEGIN CERTIFICATE-----\nAAAA\n".to_string(),
                "fail",
            ),
        ];
        for (sentence, expected, pem, want) in cases {
            let outcome =
                bundle_target_outcome(&expected, &pem, "ConfigMap ns/b key ca-bundle.crt");
            assert_eq!(kind(&outcome), want, "{sentence}: {outcome:?}");
        }
    }

    #[test]
    fn a_rotation_under_way_is_a_warning_naming_its_phase() {
        use lanyard_trust_bundle::rotation::Rotation;
        let now = t(2026, 1, 1);
        assert_eq!(rotation_outcome(None, None, now, "f"), Outcome::Pass);
        let record = |phase: Phase| RotationRecord {
            anchor: "linkerd-trust-anchor".into(),
            rotation: Rotation {
                phase,
                ..Rotation::stable("AA".into(), now - TimeDelta::minutes(5))
            },
            waiting_for: Some("every bundle target to hold the new anchor".into()),
            next_step_due: None,
            current_subject: None,
            current_not_after: None,
            updated: now,
        };
        assert_eq!(
            rotation_outcome(Some(&record(Phase::Stable)), None, now, "f"),
            Outcome::Pass
        );
        let outcome = rotation_outcome(
            Some(&record(Phase::Prepared)),
            None,
            now,
            "lanyard anchor status",
        );
        assert!(
            matches!(&outcome, Outcome::Warn(m) if m.contains("phase Prepared") && m.contains("waiting for every bundle target") && m.contains("`lanyard anchor status`")),
            "{outcome:?}"
        );
        assert!(matches!(
            rotation_outcome(None, Some(now), now, "f"),
            Outcome::Warn(m) if m.contains("has not started")
        ));
    }

    #[test]
    fn the_table_marks_each_check_and_indents_reasons() {
        let mut report = Report::default();
        report.section(
            "lanyard-identity-issuer",
            vec![
                Check::new(
                    "issuer certificate is within its validity period",
                    Outcome::Pass,
                ),
                Check::new(
                    "issuer certificate is valid for at least 60 days",
                    Outcome::Warn("expires soon\nsee: rotate".into()),
                ),
            ],
        );
        assert!(!report.failed(), "warnings alone pass");
        let text = report.to_text();
        assert_eq!(
            text,
            "lanyard-identity-issuer\n\
             -----------------------\n\
             ✔ issuer certificate is within its validity period\n\
             ‼ issuer certificate is valid for at least 60 days\n    expires soon\n    see: rotate\n\
             \n\
             Status check results are ✔\n"
        );
        report.section(
            "rbac",
            vec![Check::new(
                "controller has the RBAC it needs",
                Outcome::Fail("denied".into()),
            )],
        );
        assert!(report.failed());
        assert!(
            report
                .to_text()
                .contains("× controller has the RBAC it needs\n    denied\n")
        );
        assert!(report.to_text().ends_with("Status check results are ×\n"));
        let json = report.to_json();
        assert_eq!(json["success"], false);
        assert_eq!(json["categories"][1]["checks"][0]["result"], "error");
        assert_eq!(
            json["categories"][0]["checks"][1]["error"],
            "expires soon\nsee: rotate"
        );
    }

    #[test]
    fn a_skipped_rest_fails_the_run() {
        let mut report = Report::default();
        report.section(
            "kubernetes-api",
            vec![Check::new(
                "can reach the Kubernetes API",
                Outcome::Fail("no kubeconfig".into()),
            )],
        );
        report.skipped = Some("Skipped the remaining checks".into());
        assert!(report.failed());
        assert!(
            report
                .to_text()
                .contains("Skipped the remaining checks\n\nStatus check results are ×")
        );
    }
}
