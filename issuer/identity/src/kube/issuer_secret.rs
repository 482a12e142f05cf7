//! The identity issuer from its Secret, through the API server: each
//! version of the Secret (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager
//! and `lanyard controller` write it) is offered to an [`IssuerReloader`],
//! which validates it in full and swaps it into the identity service, or
//! refuses it while the old issuer keeps serving. No restart, no volume.
//!
//! # RBAC
//!
//! `list` and `watch` on `secrets` in the control plane namespace. The
//! watch selects the Secret by `metadata.name`, so a Role may name it in
//! `resourceNames` and grant nothing else:
//!
//! ```yaml
//! - apiGroups: [""]
//!   resources: ["secrets"]
//!   resourceNames: ["linkerd-identity-issuer"]
//!   verbs: ["list", "watch"]
//! ```

use std::fmt;

use crate::reload::{IssuerReloader, Reload};
use ::kube::api::Api;
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Client, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use lanyard_crds::time::Clock;
use tracing::{debug, warn};

use lanyard_crds::secret::{CA_CRT, MANAGED_KEYS, TLS_CRT, TLS_KEY};

/// The namespace of Linkerd's issuer Secret (its control plane's).
pub const DEFAULT_NAMESPACE: &str = "linkerd";
/// The name of Linkerd's issuer Secret.
pub const DEFAULT_NAME: &str = "linkerd-identity-issuer";

/// Which Secret holds the identity issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSecret {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Default for IssuerSecret {
    /// `linkerd/linkerd-identity-issuer`.
    fn default() -> Self {
        IssuerSecret::new(DEFAULT_NAMESPACE, DEFAULT_NAME)
    }
}

impl IssuerSecret {
    /// The Secret `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        IssuerSecret {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// How a reloader fed from it names it: `Secret <namespace>/<name>`,
    /// for [`IssuerReloader::for_source`].
    pub fn source(&self) -> String {
        format!("Secret {self}")
    }
}

impl fmt::Display for IssuerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a version of the issuer Secret was refused before its contents
/// were looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerSecretError {
    /// Keys the issuer needs are absent (or empty).
    #[error(
        "Secret `{secret}` has no {}; the identity issuer needs `tls.crt` (the issuer), `tls.key` (its key) and `ca.crt` (the trust anchors)",
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    )]
    MissingKeys {
        /// `namespace/name`.
        secret: String,
        /// The absent keys, in the order `tls.crt`, `tls.key`, `ca.crt`.
        keys: Vec<&'static str>,
    },
}

/// Offers one version of the issuer Secret to `reloader` at `now`.
///
/// A version missing a key is offered with that key empty, so the
/// reloader counts and remembers the refusal as it does any invalid
/// material (and the old issuer keeps serving); the refusal is then
/// reported as [`IssuerSecretError::MissingKeys`], which names the keys,
/// rather than as the parse error of an empty file. As with any material,
/// a refusal is reported once: the same version offered again is
/// [`Reload::Unchanged`].
pub fn offer_secret(
    reloader: &mut IssuerReloader,
    secret: &Secret,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Reload, IssuerSecretError> {
    let data = secret.data.as_ref();
    let value = |key: &str| -> &[u8] {
        data.and_then(|d| d.get(key))
            .map_or(&[][..], |bytes| bytes.0.as_slice())
    };
    let missing: Vec<&'static str> = MANAGED_KEYS
        .into_iter()
        .filter(|key| value(key).is_empty())
        .collect();
    let reload = reloader.offer(value(TLS_CRT), value(TLS_KEY), value(CA_CRT), now);
    match reload {
        Reload::Refused(_) if !missing.is_empty() => Err(IssuerSecretError::MissingKeys {
            secret: format!(
                "{}/{}",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            ),
            keys: missing,
        }),
        other => Ok(other),
    }
}

/// Keeps `reloader` fed with the issuer Secret `secret` for as long as it
/// runs (forever): every version the watch sees is offered
/// ([`offer_secret`]); a deleted or absent Secret leaves the current issuer
/// serving, with a warning; watch errors are retried with kube-runtime's
/// default backoff.
pub async fn watch_issuer_secret<C: Clock>(
    client: Client,
    secret: IssuerSecret,
    mut reloader: IssuerReloader,
    clock: C,
) {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    // Whether the Secret appeared in the current (re)list.
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitApply(object)) => {
                listed = true;
                offer(&mut reloader, &secret, &object, &clock);
            }
            Ok(watcher::Event::Apply(object)) => offer(&mut reloader, &secret, &object, &clock),
            Ok(watcher::Event::InitDone) if !listed => {
                absent(&reloader, &secret, "does not exist");
            }
            Ok(watcher::Event::InitDone) => debug!(%secret, "issuer Secret listed"),
            Ok(watcher::Event::Delete(_)) => absent(&reloader, &secret, "was deleted"),
            Err(error) => warn!(%secret, %error, "watching the issuer Secret; retrying"),
        }
    }
}

fn offer<C: Clock>(
    reloader: &mut IssuerReloader,
    secret: &IssuerSecret,
    object: &Secret,
    clock: &C,
) {
    match offer_secret(reloader, object, clock.now()) {
        // The reloader has logged and counted the load or refusal, or
        // found nothing new.
        Ok(reload) => debug!(
            %secret,
            resource_version = object.resource_version().unwrap_or_default(),
            ?reload,
            "issuer Secret version offered"
        ),
        Err(error) => warn!(
            %secret,
            %error,
            "issuer Secret refused; {}",
            serving(reloader)
        ),
    }
}

fn absent(reloader: &IssuerReloader, secret: &IssuerSecret, what: &str) {
    warn!(%secret, "the issuer Secret {what}; {}", serving(reloader));
}

fn serving(reloader: &IssuerReloader) -> &'static str {
    if reloader.current().load().is_some() {
        "the current issuer keeps serving"
    } else {
        "no issuer is loaded, so Certify answers UNAVAILABLE"
    }
}
