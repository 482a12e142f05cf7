//! Turning a plan into a new Secret: load the issuer's CA from its Secret,
//! make (or keep) the key, sign, and assemble `tls.crt`, `tls.key` and
//! `ca.crt`. Both shells call this; neither signs any other way.

use chrono::{DateTime, Utc};
use lanyard_crds::api::{CertificateSpec, GROUP, IssuerConfig, IssuerKind};
use lanyard_crds::quote::quoted;
use lanyard_crds::usage::RotationPolicy;
use lanyard_issuer::{Certificate, CertificateTemplate, SigningCa, SigningKey, self_signed};

use crate::planner::{CurrentCertificate, key_algorithm, renewal_time};
use crate::secret::{CA_CRT, MANAGED_KEYS, SecretData, TLS_CRT, TLS_KEY, annotations};

/// Why an issuer cannot sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The issuer resource does not exist.
    #[error("{kind} {} does not exist", quoted(.name))]
    NotFound {
        /// Issuer or ClusterIssuer.
        kind: IssuerKind,
        /// Its name (with namespace for an Issuer).
        name: String,
    },
    /// The issuer's spec is wrong.
    #[error("{kind} {}: {reason}", quoted(.name))]
    InvalidSpec {
        /// Issuer or ClusterIssuer.
        kind: IssuerKind,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The CA Secret does not exist.
    #[error("the CA Secret `{secret}` does not exist")]
    SecretNotFound {
        /// `namespace/name`.
        secret: String,
    },
    /// The CA Secret lacks a key.
    #[error("the CA Secret `{secret}` has no `{key}`")]
    SecretMissingKey {
        /// `namespace/name`.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// The CA Secret could not be read (an I/O error, not its contents).
    #[error("the CA Secret `{secret}` cannot be read: {reason}")]
    SecretUnreadable {
        /// `namespace/name`.
        secret: String,
        /// Why.
        reason: String,
    },
    /// The CA in the Secret is unusable.
    #[error("the CA Secret `{secret}` is not usable: {source}")]
    BadCa {
        /// `namespace/name`.
        secret: String,
        /// Why.
        source: Box<lanyard_issuer::Error>,
    },
}

impl IssuerError {
    /// A CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            IssuerError::NotFound { .. } => "IssuerNotFound",
            IssuerError::InvalidSpec { .. } => "IssuerInvalid",
            IssuerError::SecretNotFound { .. } => "CASecretNotFound",
            IssuerError::SecretUnreadable { .. } => "CASecretUnreadable",
            IssuerError::SecretMissingKey { .. } | IssuerError::BadCa { .. } => "CASecretInvalid",
        }
    }
}

/// An issuer ready to sign.
#[derive(Debug)]
pub enum IssuerMaterial {
    /// Each certificate signs itself.
    SelfSigned,
    /// A CA from a Secret.
    Ca {
        /// The CA, checked.
        ca: Box<SigningCa>,
        /// The roots for `ca.crt` of what it signs: the CA Secret's
        /// `ca.crt`, or else the last certificate of its `tls.crt`.
        roots: Vec<Certificate>,
        /// `roots` as PEM, made once: every Secret's `ca.crt` is compared
        /// with it at every look.
        roots_pem: String,
        /// The CA's chain up to, not including, self-signed roots, as PEM,
        /// made once: what follows each leaf in its `tls.crt`.
        chain_pem: String,
    },
}

impl IssuerMaterial {
    /// The CA that signs now, `None` when self-signed.
    pub fn ca(&self) -> Option<&Certificate> {
        match self {
            IssuerMaterial::SelfSigned => None,
            IssuerMaterial::Ca { ca, .. } => Some(ca.certificate()),
        }
    }
}

/// Loads an issuer's signing material. `ca_secret` is the Secret named by
/// `spec.ca.secretName` (looked up by the shell), `secret_ref` its
/// `namespace/name` for messages.
pub fn load_issuer(
    kind: IssuerKind,
    name: &str,
    config: &IssuerConfig,
    ca_secret: Option<&SecretData>,
    secret_ref: &str,
    now: DateTime<Utc>,
) -> Result<IssuerMaterial, IssuerError> {
    config
        .validate()
        .map_err(|reason| IssuerError::InvalidSpec {
            kind,
            name: name.to_string(),
            reason,
        })?;
    if config.self_signed.is_some() {
        return Ok(IssuerMaterial::SelfSigned);
    }
    let secret = ca_secret.ok_or_else(|| IssuerError::SecretNotFound {
        secret: secret_ref.to_string(),
    })?;
    let missing = |key| IssuerError::SecretMissingKey {
        secret: secret_ref.to_string(),
        key,
    };
    let bad = |source| IssuerError::BadCa {
        secret: secret_ref.to_string(),
        source: Box::new(source),
    };
    let crt = secret.get(TLS_CRT).ok_or_else(|| missing(TLS_CRT))?;
    let key = secret.get(TLS_KEY).ok_or_else(|| missing(TLS_KEY))?;
    let chain = Certificate::parse_pem_bundle(crt, &format!("{secret_ref} tls.crt"))
        .map_err(|e| bad(e.into()))?;
    let key = SigningKey::from_pem(key, &format!("{secret_ref} tls.key")).map_err(bad)?;
    let roots = match secret.get(CA_CRT) {
        Some(pem) => Certificate::parse_pem_bundle(pem, &format!("{secret_ref} ca.crt"))
            .map_err(|e| bad(e.into()))?,
        None => chain.last().cloned().into_iter().collect(),
    };
    let ca = SigningCa::new(chain, key, now).map_err(bad)?;
    let roots_pem = roots.iter().map(Certificate::to_pem).collect();
    // Self-signed roots are the relying party's to hold, in ca.crt.
    let chain_pem = ca
        .chain()
        .iter()
        .filter(|c| !c.is_self_issued())
        .map(Certificate::to_pem)
        .collect();
    Ok(IssuerMaterial::Ca {
        ca: Box::new(ca),
        roots,
        roots_pem,
        chain_pem,
    })
}

/// A freshly issued Secret and what status needs to know of it.
#[derive(Debug)]
pub struct Issued {
    /// The new Secret contents.
    pub secret: SecretData,
    /// The new certificate's times.
    pub certificate: CurrentCertificate,
    /// `Some(requested end)` when the certificate was cut short to end
    /// with its issuer ([`lanyard_issuer::Validity::clamped_from`]).
    pub clamped_from: Option<DateTime<Utc>>,
}

/// Why issuance failed although the issuer was loaded.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct IssueError(#[from] lanyard_issuer::Error);

/// Issues the certificate `spec` asks for with `issuer`, into a Secret that
/// keeps every key of `existing` the controller does not manage.
pub fn issue(
    certificate_name: &str,
    spec: &CertificateSpec,
    issuer_name: &str,
    issuer_kind: IssuerKind,
    issuer: &IssuerMaterial,
    existing: Option<&SecretData>,
    now: DateTime<Utc>,
) -> Result<Issued, IssueError> {
    let algorithm = key_algorithm(spec);
    let reused = match spec.rotation_policy() {
        RotationPolicy::Never => existing
            .and_then(|s| s.get(TLS_KEY))
            .and_then(|pem| SigningKey::from_pem(pem, TLS_KEY).ok())
            .filter(|key| key.algorithm() == algorithm),
        _ => None,
    };
    let key = match reused {
        Some(key) => key,
        None => SigningKey::generate(algorithm)?,
    };
    let template = CertificateTemplate {
        common_name: spec.common_name.clone().filter(|cn| !cn.is_empty()),
        dns_names: spec.dns_names.clone(),
        uris: spec.uris.clone(),
        is_ca: spec.is_ca,
        usages: spec.effective_usages(),
        lifetime: spec.duration().to_chrono(),
    };
    let (tls_crt, ca_crt, validity) = match issuer {
        IssuerMaterial::SelfSigned => {
            let signed = self_signed(&template, &key, now)?;
            let pem = Certificate::pem_from_der(&signed.der);
            (pem.clone(), pem, signed.validity)
        }
        IssuerMaterial::Ca {
            ca,
            roots_pem,
            chain_pem,
            ..
        } => {
            let signed = ca.sign(&template, &key, now)?;
            let mut pem = Certificate::pem_from_der(&signed.der);
            pem.push_str(chain_pem);
            (pem, roots_pem.clone(), signed.validity)
        }
    };
    let mut secret = SecretData::default();
    if let Some(existing) = existing {
        secret.data = existing
            .data
            .iter()
            .filter(|(k, _)| !MANAGED_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    secret.data.insert(TLS_CRT.into(), tls_crt.into_bytes());
    secret
        .data
        .insert(TLS_KEY.into(), key.to_pkcs8_pem().as_bytes().to_vec());
    secret.data.insert(CA_CRT.into(), ca_crt.into_bytes());
    if let Some(template) = &spec.secret_template {
        secret.labels = template.labels.clone();
        secret.annotations = template.annotations.clone();
    }
    for (name, value) in [
        (annotations::CERTIFICATE_NAME, certificate_name.to_string()),
        (annotations::ISSUER_NAME, issuer_name.to_string()),
        (annotations::ISSUER_KIND, issuer_kind.as_str().to_string()),
        (annotations::ISSUER_GROUP, GROUP.to_string()),
        (annotations::DURATION, spec.duration().to_string()),
        (
            annotations::COMMON_NAME,
            spec.common_name.clone().unwrap_or_default(),
        ),
    ] {
        secret.annotations.insert(name.to_string(), value);
    }
    let not_before = validity.not_before;
    let not_after = validity.not_after;
    Ok(Issued {
        secret,
        certificate: CurrentCertificate {
            not_before,
            not_after,
            renewal_time: renewal_time(
                not_before,
                not_after,
                spec.renew_before_for(not_after - not_before),
            ),
        },
        clamped_from: validity.clamped_from,
    })
}
