//! The install's values: the chart's `values.yaml`, `lanyard install
//! --set`, with Linkerd's install as the model (`identityTrustDomain`,
//! `identity.trustAnchorsPEM`, `identity.issuer.tls.crtPEM` / `keyPEM`,
//! `identity.issuer.issuanceLifetime`).
//!
//! Values are kept as JSON, as Helm keeps them, so `lanyard install`
//! renders exactly what the user wrote; [`Values`] is their typed form,
//! which checks them: unknown keys, wrong types, bad durations and PEM
//! that does not make a working issuer are refused by name. The same
//! types give the chart's `values.schema.json`, so Helm refuses what it
//! can check too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lanyard_crds::duration::GoDuration;
use lanyard_crds::identity::{IdentityDomain, TrustDomain};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The image `lanyard install` and the chart run by default.
pub const DEFAULT_IMAGE: &str = "ghcr.io/lanyard-dev/lanyard";

/// Every value of the install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// The mesh's trust domain, as Linkerd's `identityTrustDomain`.
    pub identity_trust_domain: String,
    /// The identity service and the identity issuer.
    pub identity: Identity,
    /// The controller.
    pub controller: Controller,
    /// The image both run.
    pub image: Image,
    /// The log filter (`info`, `debug`, `warn,lanyard_rotator=debug`); empty
    /// for Lanyard's default.
    pub log_level: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Prometheus scraping and alerts.
    pub metrics: Metrics,
}

/// `identity.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    /// Bring your own anchors (PEM), with `issuer.tls`: the file `linkerd
    /// install --identity-trust-anchors-file` takes. Empty: Lanyard makes
    /// the anchor and the issuer itself, and rotates both.
    #[serde(rename = "trustAnchorsPEM")]
    pub trust_anchors_pem: String,
    /// The identity issuer.
    pub issuer: Issuer,
    /// Identity service replicas.
    pub replicas: u16,
    /// The identity service's resources.
    pub resources: Resources,
}

/// `identity.issuer.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Issuer {
    /// Bring your own issuer (PEM certificate and key).
    pub tls: IssuerTls,
    /// The lifetime of the workload certificates the identity service
    /// issues.
    pub issuance_lifetime: GoDuration,
    /// The issuer Certificate Lanyard renews, when it makes the issuer.
    pub certificate: IssuerCertificate,
}

/// `identity.issuer.tls.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerTls {
    /// The issuer certificate (PEM), optionally followed by intermediates.
    #[serde(rename = "crtPEM")]
    pub crt_pem: String,
    /// The issuer's private key (PEM).
    #[serde(rename = "keyPEM")]
    pub key_pem: String,
}

/// `identity.issuer.certificate.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerCertificate {
    /// The issuer certificate's lifetime.
    pub duration: GoDuration,
    /// How long before its end it is renewed.
    pub renew_before: GoDuration,
}

/// `controller.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Controller {
    /// Controller replicas: one is active, holding the Lease; the others
    /// wait to take over.
    pub replicas: u16,
    /// How many Certificates are reconciled at once.
    pub concurrent_workers: u16,
    /// The controller's resources.
    pub resources: Resources,
}

/// Container resources: quantities by resource name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// What the scheduler reserves.
    pub requests: BTreeMap<String, String>,
    /// What the container may use at most.
    pub limits: BTreeMap<String, String>,
}

/// `image.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    /// The repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub pull_policy: PullPolicy,
}

/// An image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// A log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// `metrics.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// The metrics Services.
    pub service: Toggle,
    /// A prometheus-operator ServiceMonitor for both components.
    pub service_monitor: ServiceMonitor,
    /// A prometheus-operator PrometheusRule with Lanyard's alerts.
    pub prometheus_rule: Toggle,
}

/// Something that is on or off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    /// On or off.
    pub enabled: bool,
}

/// `metrics.serviceMonitor.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceMonitor {
    /// On or off.
    pub enabled: bool,
    /// How often Prometheus scrapes.
    pub interval: GoDuration,
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> Resources {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Resources {
        requests: map(&[("cpu", cpu), ("memory", memory)]),
        limits: map(&[("memory", memory_limit)]),
    }
}

impl Default for Values {
    fn default() -> Self {
        Values {
            identity_trust_domain: "cluster.local".into(),
            identity: Identity {
                trust_anchors_pem: String::new(),
                issuer: Issuer {
                    tls: IssuerTls::default(),
                    issuance_lifetime: GoDuration::from_hours(24),
                    certificate: IssuerCertificate {
                        duration: GoDuration::from_hours(
                            lanyard_crds::linkerd::ISSUER_DURATION_HOURS,
                        ),
                        renew_before: GoDuration::from_hours(
                            lanyard_crds::linkerd::ISSUER_RENEW_BEFORE_HOURS,
                        ),
                    },
                },
                replicas: 2,
                resources: resources("100m", "64Mi", "256Mi"),
            },
            controller: Controller {
                replicas: 2,
                concurrent_workers: 16,
                resources: resources("100m", "128Mi", "512Mi"),
            },
            image: Image {
                repository: DEFAULT_IMAGE.into(),
                tag: env!("CARGO_PKG_VERSION").into(),
                pull_policy: PullPolicy::IfNotPresent,
            },
            log_level: String::new(),
            log_format: LogFormat::Text,
            metrics: Metrics {
                service: Toggle { enabled: true },
                service_monitor: ServiceMonitor {
                    enabled: false,
                    interval: GoDuration::from_secs(30),
                },
                prometheus_rule: Toggle { enabled: false },
            },
        }
    }
}

/// The comment above each key in `values.yaml`: the field's documentation.
pub fn comment(path: &str) -> Option<&'static str> {
    Some(match path {
        "identityTrustDomain" => "The mesh's trust domain (Linkerd's identityTrustDomain).",
        "identity.trustAnchorsPEM" => {
            "Bring your own trust anchors (PEM), with identity.issuer.tls: what\n\
             `linkerd install --identity-trust-anchors-file` takes. Left empty, Lanyard\n\
             makes the anchor and the issuer itself, renews the issuer and rotates the\n\
             anchor with overlap."
        }
        "identity.issuer.tls" => {
            "Bring your own issuer: certificate (optionally with intermediates) and key,\n\
             PEM. All three of trustAnchorsPEM, crtPEM and keyPEM, or none."
        }
        "identity.issuer.issuanceLifetime" => {
            "Lifetime of the workload certificates the identity service issues."
        }
        "identity.issuer.certificate" => {
            "The identity issuer Certificate Lanyard renews (when it makes the issuer)."
        }
        "identity.replicas" => {
            "Identity service replicas, behind the Service linkerd-identity:8080."
        }
        "controller.replicas" => {
            "Controller replicas: one holds the Lease and works, the others wait."
        }
        "controller.concurrentWorkers" => "How many Certificates are reconciled at once.",
        "logLevel" => {
            "Log filter, e.g. `debug` or `warn,lanyard_rotator=debug`; empty for the default."
        }
        "logFormat" => "`text` or `json`.",
        "metrics.service" => {
            "Services for the controller's (9402) and identity service's (9990) metrics."
        }
        "metrics.serviceMonitor" => "A prometheus-operator ServiceMonitor scraping both.",
        "metrics.prometheusRule" => {
            "A prometheus-operator PrometheusRule with Lanyard's alerts (the same rules\n\
             as charts/alerts/lanyard-rules.yaml)."
        }
        _ => return None,
    })
}

/// What a partial bring-your-own issuer is refused with, `%s` standing
/// for the values given: `lanyard install`'s message, and the format of
/// the chart's `fail`.
pub const PARTIAL_ISSUER: &str = "values: identity.trustAnchorsPEM, identity.issuer.tls.crtPEM and \
     identity.issuer.tls.keyPEM go together (given: %s); give all three to bring your own issuer, \
     or none for Lanyard to make them";

/// Why values were refused.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("--set `{0}`: expected KEY=VALUE, e.g. controller.replicas=3")]
    SetSyntax(String),
    #[error("--set `{key}`: `{at}` is a {found}, not a map of values")]
    SetPath {
        key: String,
        at: String,
        found: &'static str,
    },
    #[error("values: {0}")]
    Invalid(String),
    #[error("{}", PARTIAL_ISSUER.replace("%s", given))]
    PartialIssuer { given: String },
    #[error("values: the identity issuer given: {0}")]
    BadIssuer(String),
}

impl Values {
    /// The defaults as JSON: what `values.yaml` holds.
    pub fn default_json() -> Value {
        serde_json::to_value(Values::default()).expect("values serialise")
    }

    /// Checks raw values (the defaults merged with the user's) and returns
    /// their typed form.
    pub fn from_json(
        values: &Value,
        namespace: &str,
        now: DateTime<Utc>,
    ) -> Result<Values, ValuesError> {
        let typed: Values = serde_path_to_error_free(values)?;
        typed.check(namespace, now)?;
        Ok(typed)
    }

    /// Whether the user brought their own anchors and issuer.
    pub fn brings_issuer(&self) -> bool {
        !self.identity.issuer.tls.crt_pem.is_empty()
    }

    fn check(&self, namespace: &str, now: DateTime<Utc>) -> Result<(), ValuesError> {
        let invalid = |s: String| Err(ValuesError::Invalid(s));
        let trust_domain: TrustDomain = match self.identity_trust_domain.parse() {
            Ok(d) => d,
            Err(e) => return invalid(format!("identityTrustDomain: {e}")),
        };
        for (key, n) in [
            ("identity.replicas", self.identity.replicas),
            ("controller.replicas", self.controller.replicas),
            (
                "controller.concurrentWorkers",
                self.controller.concurrent_workers,
            ),
        ] {
            if n == 0 {
                return invalid(format!("{key}: must be at least 1"));
            }
        }
        if self.image.repository.trim().is_empty() || self.image.tag.trim().is_empty() {
            return invalid("image.repository and image.tag must not be empty".into());
        }
        let cert = &self.identity.issuer.certificate;
        if cert.renew_before >= cert.duration {
            return invalid(format!(
                "identity.issuer.certificate.renewBefore ({}) must be shorter than its duration ({})",
                cert.renew_before, cert.duration
            ));
        }
        if let Err(e) =
            lanyard_crds::linkerd::check_issuance_lifetime(self.identity.issuer.issuance_lifetime)
        {
            return invalid(format!("identity.issuer.issuanceLifetime: {e}"));
        }
        let tls = &self.identity.issuer.tls;
        let given: Vec<&str> = [
            ("trustAnchorsPEM", &self.identity.trust_anchors_pem),
            ("crtPEM", &tls.crt_pem),
            ("keyPEM", &tls.key_pem),
        ]
        .into_iter()
        .filter(|(_, pem)| !pem.trim().is_empty())
        .map(|(name, _)| name)
        .collect();
        match given.len() {
            0 => Ok(()),
            3 => self.check_issuer(namespace, trust_domain, now),
            _ => Err(ValuesError::PartialIssuer {
                given: given.join(", "),
            }),
        }
    }

    /// The anchors, issuer and key the user brought make a working issuer,
    /// as the identity service in `namespace` would load them, named for
    /// its identity domain `identity.<namespace>.<trust domain>`.
    fn check_issuer(
        &self,
        namespace: &str,
        trust_domain: TrustDomain,
        now: DateTime<Utc>,
    ) -> Result<(), ValuesError> {
        use lanyard_issuer::{Certificate, IdentityIssuer, SigningKey};
        let bad = |e: &dyn std::fmt::Display| ValuesError::BadIssuer(e.to_string());
        let tls = &self.identity.issuer.tls;
        let anchors = Certificate::parse_pem_bundle(
            self.identity.trust_anchors_pem.as_bytes(),
            "identity.trustAnchorsPEM",
        )
        .map_err(|e| bad(&e))?;
        let chain =
            Certificate::parse_pem_bundle(tls.crt_pem.as_bytes(), "identity.issuer.tls.crtPEM")
                .map_err(|e| bad(&e))?;
        let key = SigningKey::from_pem(tls.key_pem.as_bytes(), "identity.issuer.tls.keyPEM")
            .map_err(|e| bad(&e))?;
        let domain = IdentityDomain::new(namespace, trust_domain).map_err(|e| bad(&e))?;
        if let Some(issuer) = chain.first() {
            let named = IdentityIssuer::domain_from_common_name(issuer).map_err(|e| bad(&e))?;
            if named != domain {
                return Err(ValuesError::BadIssuer(format!(
                    "the issuer certificate is for {named}, but the identity service in namespace \
                     `{namespace}` issues for {domain}: make it `{domain}`, or install into its namespace"
                )));
            }
        }
        IdentityIssuer::new(anchors, chain, key, domain, now).map_err(|e| bad(&e))?;
        Ok(())
    }
}

/// Typed values from JSON, naming the path of what was wrong.
fn serde_path_to_error_free(values: &Value) -> Result<Values, ValuesError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(values, &mut track);
    Values::deserialize(de).map_err(|e| {
        let path = track.path().to_string();
        ValuesError::Invalid(format!("{path}: {e}"))
    })
}

/// Sets `key` (dotted) to `raw` in `values`, as `--set` does. The text is
/// read as the type the default at that key has: a string stays a string
/// (`image.tag=1.0`), a number or a boolean is parsed; where there is no
/// default, as YAML reads it.
pub fn set(values: &mut Value, assignment: &str) -> Result<(), ValuesError> {
    let (key, raw) = assignment
        .split_once('=')
        .filter(|(key, _)| !key.is_empty() && !key.split('.').any(str::is_empty))
        .ok_or_else(|| ValuesError::SetSyntax(assignment.to_string()))?;
    set_value(values, key, |default| typed(raw, default))
}

/// Sets `key` (dotted) to the string `text`, whatever the default's type:
/// for the contents of a file (`--set-file`).
pub fn set_string(values: &mut Value, key: &str, text: String) -> Result<(), ValuesError> {
    set_value(values, key, |_| Value::String(text))
}

/// Merges `overlay` (a values file) into `base`, as Helm merges `-f`:
/// maps key by key, anything else replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn set_value(
    values: &mut Value,
    key: &str,
    make: impl FnOnce(Option<&Value>) -> Value,
) -> Result<(), ValuesError> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().expect("split gives one part at least");
    let mut at = values;
    for (i, part) in parents.iter().enumerate() {
        let here = at;
        let kind = kind_of(here);
        let Value::Object(map) = here else {
            return Err(ValuesError::SetPath {
                key: key.to_string(),
                at: parts[..i].join("."),
                found: kind,
            });
        };
        at = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    let kind = kind_of(at);
    let Value::Object(map) = at else {
        return Err(ValuesError::SetPath {
            key: key.to_string(),
            at: parents.join("."),
            found: kind,
        });
    };
    let value = make(map.get(*last));
    map.insert(last.to_string(), value);
    Ok(())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "map",
    }
}

fn typed(raw: &str, default: Option<&Value>) -> Value {
    match default {
        Some(Value::String(_)) => Value::String(raw.to_string()),
        _ => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            _ => raw
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(raw.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_defaults_are_valid_and_round_trip() {
        let json = Values::default_json();
        assert_eq!(
            Values::from_json(&json, "linkerd", now()).unwrap(),
            Values::default()
        );
        assert_eq!(
            json["identity"]["issuer"]["issuanceLifetime"],
            json!("24h0m0s")
        );
        assert_eq!(
            json["identity"]["issuer"]["certificate"]["duration"],
            json!("8760h0m0s")
        );
    }

    #[test]
    fn set_reads_text_as_the_type_of_the_default() {
        let mut values = Values::default_json();
        set(&mut values, "controller.replicas=3").unwrap();
        set(&mut values, "image.tag=1.0").unwrap();
        set(&mut values, "metrics.prometheusRule.enabled=true").unwrap();
        set(&mut values, "identity.issuer.certificate.renewBefore=1440h").unwrap();
        let typed = Values::from_json(&values, "linkerd", now()).unwrap();
        assert_eq!(typed.controller.replicas, 3);
        assert_eq!(typed.image.tag, "1.0");
        assert!(typed.metrics.prometheus_rule.enabled);
        assert_eq!(
            values["identity"]["issuer"]["certificate"]["renewBefore"],
            json!("1440h")
        );
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let refused = |assignment: &str| {
            let mut values = Values::default_json();
            match set(&mut values, assignment) {
                Err(e) => e.to_string(),
                Ok(()) => Values::from_json(&values, "linkerd", now())
                    .unwrap_err()
                    .to_string(),
            }
        };
        assert!(refused("controller.replicas").contains("expected KEY=VALUE"));
        assert!(refused("controler.replicas=2").contains("unknown field `controler`"));
        assert!(refused("controller.replicas=two").contains("controller.replicas"));
        assert!(refused("controller.replicas=0").contains("at least 1"));
        assert!(refused("identity.issuer.issuanceLifetime=24").contains("missing a unit"));
        assert!(refused("image.tag.x=1").contains("`image.tag` is a string"));
        assert!(refused("identity.issuer.certificate.renewBefore=9000h").contains("shorter than"));
        assert!(refused("identityTrustDomain=Not A Domain").contains("identityTrustDomain"));
        let partial = refused("identity.trustAnchorsPEM=x");
        assert!(
            partial.contains("go together (given: trustAnchorsPEM)"),
            "{partial}"
        );
    }
}
