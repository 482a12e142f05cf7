//! The Kubernetes shell (`lanyard controller`), in kube-rs' controller-rs
//! layout: [`reconcile_certificate`] gathers a Certificate's inputs from
//! the API server (its issuer, the issuer's CA Secret, its own Secret),
//! hands them to the pure [`crate::reconcile::reconcile`], and writes what
//! it returns; [`error_policy`] backs off when the API server fails; [`run`]
//! wires both into a kube-runtime `Controller` that runs only while this
//! replica holds the Lease ([`lease`]).
//!
//! Next to it run one controller per issuer kind: [`reconcile_issuer`]
//! reads an `Issuer`'s or `ClusterIssuer`'s CA Secret, loads it with
//! [`crate::issuing::load_issuer`] and records the result as the issuer's
//! `Ready` condition, as the local shell does.
//!
//! The Secret is written with server-side apply as field manager
//! `lanyard`, holding only the keys the controller manages, so keys,
//! labels and annotations written by others are never removed.

pub mod lease;
pub mod secret;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::{self, Action, Controller, ReconcileRequest};
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Client, Resource, ResourceExt};
use chrono::DateTime;
use chrono::Utc;
use futures::channel::mpsc::unbounded;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use lanyard_crds::api::{
    API_VERSION, Certificate, CertificateStatus, ClusterIssuer, Issuer, IssuerConfig, IssuerKind,
    IssuerStatus,
};
use lanyard_crds::time::Clock;
use tracing::{debug, info, warn};

use crate::issuing::{IssuerError, IssuerMaterial, load_issuer};
use crate::metrics::Metrics;
use crate::reconcile::{Event, ResolvedIssuer, reconcile};
use crate::secret::SecretData;

pub use lease::{LeaderElection, LeaseDecision, LeaseLock, lease_decision};
pub use secret::{applied_secret, secret_data};

pub use crate::reconcile::{ISSUER_READY_MESSAGE, ISSUER_READY_REASON, issuer_status};

/// The field manager of every write: server-side apply records which
/// fields the controller owns under this name.
pub const FIELD_MANAGER: &str = "lanyard";
/// Where a ClusterIssuer's CA Secret lives unless configured otherwise
/// (cert-manager's `--cluster-resource-namespace`).
pub const DEFAULT_CLUSTER_RESOURCE_NAMESPACE: &str = "lanyard";
/// The longest a Certificate waits between reconciles even when nothing
/// is due: a missed watch event costs at most this long, and a renewal
/// months away never waits on one timer through clock jumps and sleeps.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3_600);
/// The shortest requeue, so a renewal due now does not spin.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// How often an issuer is checked again when nothing about it changes: a
/// CA that is valid now expires, or becomes valid, with time alone.
pub const ISSUER_REQUEUE: Duration = Duration::from_secs(300);

/// What every reconcile shares: the client, the clock, the metrics.
pub struct Context<C: Clock> {
    /// The API client.
    pub client: Client,
    /// Where `now` comes from.
    pub clock: C,
    /// The controller's metrics.
    pub metrics: Arc<Metrics>,
    /// The namespace of ClusterIssuers' CA Secrets.
    pub cluster_resource_namespace: String,
    /// API failures per object (kind, namespace, name) since its last
    /// successful reconcile, for [`error_policy`]'s backoff.
    api_failures: Mutex<HashMap<FailureKey, u32>>,
}

/// Kind, namespace (empty for a ClusterIssuer) and name.
type FailureKey = (&'static str, String, String);

impl<C: Clock> fmt::Debug for Context<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("clock", &self.clock)
            .field(
                "cluster_resource_namespace",
                &self.cluster_resource_namespace,
            )
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Context<C> {
    /// A context whose ClusterIssuers keep their CA Secrets in
    /// [`DEFAULT_CLUSTER_RESOURCE_NAMESPACE`].
    pub fn new(client: Client, clock: C, metrics: Arc<Metrics>) -> Self {
        Context {
            client,
            clock,
            metrics,
            cluster_resource_namespace: DEFAULT_CLUSTER_RESOURCE_NAMESPACE.to_string(),
            api_failures: Mutex::default(),
        }
    }

    /// Sets the namespace of ClusterIssuers' CA Secrets.
    pub fn with_cluster_resource_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.cluster_resource_namespace = namespace.into();
        self
    }

    fn api_failures(&self) -> std::sync::MutexGuard<'_, HashMap<FailureKey, u32>> {
        // The map only counts; a panic elsewhere cannot leave it invalid.
        self.api_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_api_failure(&self, kind: &'static str, namespace: String, name: String) -> u32 {
        let mut failures = self.api_failures();
        let count = failures.entry((kind, namespace, name)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn clear_api_failures(&self, kind: &'static str, namespace: &str, name: &str) {
        self.api_failures()
            .remove(&(kind, namespace.to_string(), name.to_string()));
    }
}

/// Why a reconcile (or the controller) failed. Everything here is the API
/// server's or the object's fault, not the certificate's: a Certificate
/// that cannot be issued is a `Ready=False` status, not an `Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Certificate came without a namespace.
    #[error("Certificate `{name}` has no namespace")]
    NoNamespace {
        /// The Certificate's name.
        name: String,
    },
    /// Reading an object failed (other than it not existing).
    #[error("reading {what}: {source}")]
    Read {
        /// Kind and `namespace/name` of the object.
        what: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// The Secret to write could not be built.
    #[error("building Secret `{namespace}/{name}`: {source}")]
    BuildSecret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is missing.
        #[source]
        source: secret::AppliedSecretError,
    },
    /// Applying the Secret failed.
    #[error("applying Secret `{namespace}/{name}`: {source}")]
    ApplySecret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// Writing the Certificate's status failed.
    #[error("updating the status of Certificate `{namespace}/{name}`: {source}")]
    PatchStatus {
        /// The Certificate's namespace.
        namespace: String,
        /// The Certificate's name.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// The status did not serialise.
    #[error("serialising the status of Certificate `{namespace}/{name}`: {source}")]
    SerializeStatus {
        /// The Certificate's namespace.
        namespace: String,
        /// The Certificate's name.
        name: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An Issuer came without a namespace.
    #[error("Issuer `{name}` has no namespace")]
    IssuerNoNamespace {
        /// The Issuer's name.
        name: String,
    },
    /// Writing an Issuer's or ClusterIssuer's status failed.
    #[error("updating the status of {kind} `{name}`: {source}")]
    PatchIssuerStatus {
        /// Issuer or ClusterIssuer.
        kind: IssuerKind,
        /// `namespace/name` of an Issuer, the name of a ClusterIssuer.
        name: String,
        /// The API error.
        #[source]
        source: ::kube::Error,
    },
    /// No API client could be configured.
    #[error("configuring the Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
}

/// The kind in [`Context`]'s failure counts of a Certificate.
const CERTIFICATE: &str = "Certificate";

/// A client from the environment: the in-cluster service account, else
/// `$KUBECONFIG` or `~/.kube/config`.
pub async fn infer_client() -> Result<Client, Error> {
    Client::try_default().await.map_err(Error::Client)
}

/// The issuer a Certificate names, as read from the API server.
struct FoundIssuer {
    config: IssuerConfig,
    /// `namespace/name` of its CA Secret, when it has one.
    ca_secret_ref: String,
    ca_secret: Option<SecretData>,
}

/// Reconciles one Certificate: read its issuer, the issuer's CA Secret and
/// its own Secret; run the core; apply the Secret if the core issued one;
/// record the status; requeue at the renewal time (at most
/// [`MAX_REQUEUE`] away).
pub async fn reconcile_certificate<C: Clock>(
    certificate: Arc<Certificate>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let name = certificate.name_any();
    let namespace = certificate
        .namespace()
        .ok_or_else(|| Error::NoNamespace { name: name.clone() })?;
    if certificate.metadata.deletion_timestamp.is_some() {
        // Going away (someone else's finalizer holds it): issuing now would
        // only write a Secret the garbage collector is about to delete.
        return Ok(Action::await_change());
    }
    let spec = &certificate.spec;
    let issuer_name = spec.issuer_ref.name.clone();
    let issuer_kind = spec.issuer_ref.issuer_kind();

    // An invalid spec is reported by the core before it looks at anything
    // else; reading objects it names (a kind we do not serve, a Secret name
    // the API would reject) would be wasted and noisy.
    let valid = spec.validate().is_ok();
    let (issuer, current) = match issuer_kind {
        Some(kind) if valid => {
            let issuer = fetch_issuer(&ctx, &namespace, kind, &issuer_name).await?;
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            let current =
                secrets
                    .get_opt(&spec.secret_name)
                    .await
                    .map_err(|source| Error::Read {
                        what: format!("Secret `{namespace}/{}`", spec.secret_name),
                        source,
                    })?;
            (issuer, current)
        }
        _ => (None, None),
    };
    let current_data = current.as_ref().map(secret_data);
    let kind = issuer_kind.unwrap_or(IssuerKind::Issuer);

    let now = ctx.clock.now();
    let material: Result<IssuerMaterial, IssuerError> = match issuer {
        _ if !valid => Err(IssuerError::InvalidSpec {
            kind,
            name: issuer_name.clone(),
            reason: "the Certificate's spec is invalid; the issuer was not read".to_string(),
        }),
        None => Err(IssuerError::NotFound {
            kind,
            name: match kind {
                IssuerKind::Issuer => format!("{namespace}/{issuer_name}"),
                IssuerKind::ClusterIssuer => issuer_name.clone(),
            },
        }),
        Some(found) => load_issuer(
            kind,
            &issuer_name,
            &found.config,
            found.ca_secret.as_ref(),
            &found.ca_secret_ref,
            now,
        ),
    };
    if valid {
        observe_issuer(&ctx.metrics, kind, &namespace, &issuer_name, &material);
    }

    // A Secret another object controls (cert-manager's Certificate, in a
    // migration) cannot be applied: the API server allows one controller.
    // Say so, count it and back off, rather than fail the apply for ever.
    let foreign = current.as_ref().and_then(|current| {
        secret::foreign_controller(current, &certificate)
            .map(|owner| secret::owner_conflict_message(current, owner))
    });
    let outcome = match foreign {
        Some(message) => {
            crate::reconcile::blocked(&certificate, now, secret::SECRET_OWNER_CONFLICT, message)
        }
        None => reconcile(
            &certificate,
            current_data.as_ref(),
            ResolvedIssuer {
                kind,
                name: &issuer_name,
                material: material.as_ref(),
            },
            now,
        ),
    };

    if let Some(issued) = &outcome.secret {
        let applied = applied_secret(
            &certificate,
            issued,
            current.as_ref().and_then(|s| s.type_.as_deref()),
        )
        .map_err(|source| Error::BuildSecret {
            namespace: namespace.clone(),
            name: spec.secret_name.clone(),
            source,
        })?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        secrets
            .patch(
                &spec.secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&applied),
            )
            .await
            .map_err(|source| Error::ApplySecret {
                namespace: namespace.clone(),
                name: spec.secret_name.clone(),
                source,
            })?;
    }

    if certificate.status.as_ref() != Some(&outcome.status)
        && let Some(requeue) = write_status(&ctx, &certificate, &namespace, &outcome).await?
    {
        return Ok(requeue);
    }

    match &outcome.event {
        Event::Issued(reason) => {
            info!(certificate = %format!("{namespace}/{name}"), secret = %spec.secret_name, reason = reason.as_str(), "issued a certificate");
            if let Some(clamped) = &outcome.clamped {
                warn!(certificate = %format!("{namespace}/{name}"), "{clamped}");
            }
            ctx.metrics.issued(&namespace, &name, spec);
        }
        Event::Failed { reason, message } => {
            warn!(certificate = %format!("{namespace}/{name}"), reason = *reason, "issuance failed: {message}");
            ctx.metrics.failed(&namespace, &name, spec, reason);
        }
        Event::BackingOff => {
            debug!(certificate = %format!("{namespace}/{name}"), until = %outcome.requeue_at, "backing off");
        }
        Event::UpToDate => {
            debug!(certificate = %format!("{namespace}/{name}"), renewal = %outcome.requeue_at, "up to date");
        }
    }
    ctx.metrics
        .observe_certificate(&namespace, &name, spec, &outcome.status);
    ctx.clear_api_failures(CERTIFICATE, &namespace, &name);
    Ok(Action::requeue(requeue_after(outcome.requeue_at, now)))
}

/// How soon a Certificate whose status could not be written (it changed
/// since the cached copy the reconcile started from) is looked at again.
pub const STALE_REQUEUE: Duration = Duration::from_secs(1);

/// Writes `outcome.status` over the Certificate's, guarded by the
/// `resourceVersion` the reconcile read: a reconcile that ran on a stale
/// cached copy (the controller's own Secret write triggers one before the
/// watch has delivered its previous status write) must not overwrite a
/// newer status, or `revision`, conditions and failure counts go back.
///
/// On a conflict, an issuance (whose Secret is already written) is
/// recorded on top of the current status: its revision follows the
/// current one. Any other outcome is dropped and the Certificate requeued
/// after [`STALE_REQUEUE`] (`Some`), to be decided again from fresh state.
async fn write_status<C: Clock>(
    ctx: &Context<C>,
    certificate: &Certificate,
    namespace: &str,
    outcome: &crate::reconcile::Outcome,
) -> Result<Option<Action>, Error> {
    let name = certificate.name_any();
    let certificates: Api<Certificate> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let patch_error = |source| Error::PatchStatus {
        namespace: namespace.to_string(),
        name: name.clone(),
        source,
    };
    let serialize_error = |source| Error::SerializeStatus {
        namespace: namespace.to_string(),
        name: name.clone(),
        source,
    };
    let patch = status_patch(
        certificate.metadata.resource_version.as_deref(),
        certificate.status.as_ref(),
        &outcome.status,
    )
    .map_err(serialize_error)?;
    match certificates
        .patch_status(&name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => return Ok(None),
        Err(::kube::Error::Api(response)) if response.code == 409 => {}
        Err(source) => return Err(patch_error(source)),
    }
    if !matches!(outcome.event, Event::Issued(_)) {
        debug!(certificate = %format!("{namespace}/{name}"), "status changed since this reconcile read it; looking again");
        return Ok(Some(Action::requeue(STALE_REQUEUE)));
    }
    let current = certificates
        .get(&name)
        .await
        .map_err(|source| Error::Read {
            what: format!("Certificate `{namespace}/{name}`"),
            source,
        })?;
    let mut status = outcome.status.clone();
    status.revision = Some(
        current
            .status
            .as_ref()
            .and_then(|s| s.revision)
            .unwrap_or(0)
            + 1,
    );
    let patch = status_patch(
        current.metadata.resource_version.as_deref(),
        current.status.as_ref(),
        &status,
    )
    .map_err(serialize_error)?;
    certificates
        .patch_status(&name, &params, &Patch::Merge(&patch))
        .await
        .map_err(patch_error)?;
    Ok(None)
}

/// How long to wait until `at`, clamped to [`MIN_REQUEUE`]..[`MAX_REQUEUE`].
pub fn requeue_after(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .clamp(MIN_REQUEUE, MAX_REQUEUE)
}

async fn fetch_issuer<C: Clock>(
    ctx: &Context<C>,
    namespace: &str,
    kind: IssuerKind,
    name: &str,
) -> Result<Option<FoundIssuer>, Error> {
    let read = |what: String| move |source| Error::Read { what, source };
    let found = match kind {
        IssuerKind::Issuer => Api::<Issuer>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(read(format!("Issuer `{namespace}/{name}`")))?
            .map(|issuer| (issuer.spec.config, namespace.to_string())),
        IssuerKind::ClusterIssuer => Api::<ClusterIssuer>::all(ctx.client.clone())
            .get_opt(name)
            .await
            .map_err(read(format!("ClusterIssuer `{name}`")))?
            .map(|issuer| (issuer.spec.config, ctx.cluster_resource_namespace.clone())),
    };
    let Some((config, secret_namespace)) = found else {
        return Ok(None);
    };
    fetch_ca_secret(ctx, config, &secret_namespace)
        .await
        .map(Some)
}

/// An issuer's config with its CA Secret, read from `secret_namespace`.
async fn fetch_ca_secret<C: Clock>(
    ctx: &Context<C>,
    config: IssuerConfig,
    secret_namespace: &str,
) -> Result<FoundIssuer, Error> {
    let read = |what: String| move |source| Error::Read { what, source };
    // load_issuer validates the config first; read the Secret only when it
    // would be used.
    let secret_name = match (&config.ca, config.validate()) {
        (Some(ca), Ok(())) => Some(ca.secret_name.clone()),
        _ => None,
    };
    let mut found = FoundIssuer {
        ca_secret_ref: format!(
            "{secret_namespace}/{}",
            secret_name.as_deref().unwrap_or_default()
        ),
        config,
        ca_secret: None,
    };
    if let Some(secret_name) = secret_name {
        found.ca_secret = Api::<Secret>::namespaced(ctx.client.clone(), secret_namespace)
            .get_opt(&secret_name)
            .await
            .map_err(read(format!("Secret `{secret_namespace}/{secret_name}`")))?
            .as_ref()
            .map(secret_data);
    }
    Ok(found)
}

fn observe_issuer(
    metrics: &Metrics,
    kind: IssuerKind,
    certificate_namespace: &str,
    name: &str,
    material: &Result<IssuerMaterial, IssuerError>,
) {
    let namespace = match kind {
        IssuerKind::Issuer => certificate_namespace,
        IssuerKind::ClusterIssuer => "",
    };
    match material {
        Ok(material) => metrics.observe_issuer(kind, namespace, name, Some(material)),
        Err(IssuerError::NotFound { .. }) => metrics.forget_issuer(kind, namespace, name),
        Err(_) => metrics.observe_issuer(kind, namespace, name, None),
    }
}

/// What [`reconcile_issuer`] needs of an issuer kind: implemented by
/// [`Issuer`] and [`ClusterIssuer`].
pub trait IssuerResource:
    Resource<DynamicType = ()>
    + Clone
    + fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Which kind this is.
    const KIND: IssuerKind;
    /// How the issuer signs.
    fn config(&self) -> &IssuerConfig;
    /// The status as last written.
    fn issuer_status(&self) -> Option<&IssuerStatus>;
    /// The API the issuer is written through: `namespace`'s for an Issuer,
    /// the cluster's for a ClusterIssuer (which ignores `namespace`).
    fn api(client: Client, namespace: &str) -> Api<Self>;
}

impl IssuerResource for Issuer {
    const KIND: IssuerKind = IssuerKind::Issuer;
    fn config(&self) -> &IssuerConfig {
        &self.spec.config
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
}

impl IssuerResource for ClusterIssuer {
    const KIND: IssuerKind = IssuerKind::ClusterIssuer;
    fn config(&self) -> &IssuerConfig {
        &self.spec.config
    }
    fn issuer_status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn api(client: Client, _namespace: &str) -> Api<Self> {
        Api::all(client)
    }
}

/// The body of an issuer's status merge patch, guarded by the
/// `resourceVersion` the reconcile read (see [`status_patch`]).
#[derive(Debug, serde::Serialize)]
struct IssuerStatusPatch<'a> {
    metadata: VersionGuard<'a>,
    status: &'a IssuerStatus,
}

#[derive(Debug, serde::Serialize)]
struct VersionGuard<'a> {
    #[serde(rename = "resourceVersion", skip_serializing_if = "Option::is_none")]
    resource_version: Option<&'a str>,
}

/// Reconciles one Issuer or ClusterIssuer: read its CA Secret (in the
/// Issuer's namespace, or [`Context::cluster_resource_namespace`] for a
/// ClusterIssuer), load it, record the result as the `Ready` condition
/// (patching the status only when it changed) and in the metrics; check
/// again after [`ISSUER_REQUEUE`].
pub async fn reconcile_issuer<K: IssuerResource, C: Clock>(
    issuer: Arc<K>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let kind = K::KIND;
    let name = issuer.name_any();
    // Empty for a ClusterIssuer, as in the metrics' labels.
    let namespace = issuer.namespace().unwrap_or_default();
    let (secret_namespace, qualified) = match kind {
        IssuerKind::Issuer if namespace.is_empty() => {
            return Err(Error::IssuerNoNamespace { name });
        }
        IssuerKind::Issuer => (namespace.clone(), format!("{namespace}/{name}")),
        IssuerKind::ClusterIssuer => (ctx.cluster_resource_namespace.clone(), name.clone()),
    };
    if issuer.meta().deletion_timestamp.is_some() {
        // Going away: a status written now would be thrown away with it.
        return Ok(Action::await_change());
    }
    let found = fetch_ca_secret(&ctx, issuer.config().clone(), &secret_namespace).await?;
    let now = ctx.clock.now();
    let material = load_issuer(
        kind,
        &name,
        &found.config,
        found.ca_secret.as_ref(),
        &found.ca_secret_ref,
        now,
    );
    observe_issuer(&ctx.metrics, kind, &namespace, &name, &material);

    let current = issuer.issuer_status();
    let status = issuer_status(current, material.as_ref(), issuer.meta().generation, now);
    if current != Some(&status) {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = IssuerStatusPatch {
            metadata: VersionGuard {
                resource_version: issuer.meta().resource_version.as_deref(),
            },
            status: &status,
        };
        match K::api(ctx.client.clone(), &namespace)
            .patch_status(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Read from a stale cached copy: decide again from fresh state.
            Err(::kube::Error::Api(response)) if response.code == 409 => {
                debug!(issuer = %qualified, %kind, "status changed since this reconcile read it; looking again");
                return Ok(Action::requeue(STALE_REQUEUE));
            }
            Err(source) => {
                return Err(Error::PatchIssuerStatus {
                    kind,
                    name: qualified.clone(),
                    source,
                });
            }
        }
        match &material {
            Ok(_) => info!(issuer = %qualified, %kind, "issuer is ready: {ISSUER_READY_MESSAGE}"),
            Err(error) => {
                warn!(issuer = %qualified, %kind, reason = error.reason(), "issuer is not ready: {error}");
            }
        }
    } else {
        debug!(issuer = %qualified, %kind, "issuer status is current");
    }
    ctx.clear_api_failures(kind.as_str(), &namespace, &name);
    Ok(Action::requeue(ISSUER_REQUEUE))
}

/// Backs off an issuer whose reconcile failed against the API server, as
/// [`error_policy`] does a Certificate.
pub fn issuer_error_policy<K: IssuerResource, C: Clock>(
    issuer: Arc<K>,
    error: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let namespace = issuer.namespace().unwrap_or_default();
    let name = issuer.name_any();
    let attempts = ctx.record_api_failure(K::KIND.as_str(), namespace.clone(), name.clone());
    let delay = error_backoff(attempts);
    warn!(
        kind = %K::KIND,
        issuer = %if namespace.is_empty() { name } else { format!("{namespace}/{name}") },
        attempts,
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

/// The merge patch that makes the status `new`: a merge patch leaves keys
/// it does not mention alone, so every key of `old` that `new` no longer
/// has (a cleared `failedIssuanceAttempts`, say) is sent as `null`. With
/// `resource_version` (that of the object `old` was read from), the API
/// server refuses the patch with 409 Conflict if the object has changed
/// since.
pub fn status_patch(
    resource_version: Option<&str>,
    old: Option<&CertificateStatus>,
    new: &CertificateStatus,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut status = serde_json::to_value(new)?;
    let old = old.map(serde_json::to_value).transpose()?;
    if let (Some(serde_json::Value::Object(old)), serde_json::Value::Object(status)) =
        (old, &mut status)
    {
        for key in old.keys() {
            status.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    Ok(match resource_version {
        Some(version) => serde_json::json!({
            "metadata": { "resourceVersion": version },
            "status": status,
        }),
        None => serde_json::json!({ "status": status }),
    })
}

/// Backs off a Certificate whose reconcile failed against the API server:
/// 5s after the first failure, doubling to at most 5 minutes.
pub fn error_policy<C: Clock>(
    certificate: Arc<Certificate>,
    error: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    let namespace = certificate.namespace().unwrap_or_default();
    let name = certificate.name_any();
    let attempts = ctx.record_api_failure(CERTIFICATE, namespace.clone(), name.clone());
    let delay = error_backoff(attempts);
    warn!(
        certificate = %format!("{namespace}/{name}"),
        attempts,
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

/// The delay after `attempts` consecutive API failures.
pub fn error_backoff(attempts: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(MAX)
}

/// How long reconciles in flight may take to finish once a stop is asked.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the controller (Certificates, and the issuer controllers beside
/// it) until `shutdown` completes, and at most [`STOP_GRACE`] after.
///
/// With `election`, the controller runs only while this replica holds the
/// Lease: it waits for the Lease, runs while renewing it, stops as soon as
/// it is lost (then waits again), and gives it up on shutdown. Without, it
/// runs at once (one replica, or tests).
pub async fn run<C: Clock + 'static>(
    ctx: Arc<Context<C>>,
    election: Option<LeaderElection>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // Err means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Reconciles in flight get a grace period to finish; the controllers
    // are then abandoned, as a kill would, so a stop is never held up (a
    // watch backing off from API errors kept one running for minutes).
    let bounded = |controllers| {
        let stopped = stopped();
        async move {
            tokio::pin!(controllers);
            tokio::select! {
                () = &mut controllers => {}
                () = async { stopped.await; tokio::time::sleep(STOP_GRACE).await } => {
                    warn!("the controllers did not stop within {STOP_GRACE:?}; leaving them");
                }
            }
        }
    };
    let Some(election) = election else {
        bounded(run_controller(ctx, &stopped)).await;
        shutdown_task.abort();
        return Ok(());
    };
    let lock = LeaseLock::new(ctx.client.clone(), election);
    let interval = lock.election().renew_interval;
    loop {
        // Wait for the Lease.
        loop {
            match lock.try_acquire(ctx.clock.now()).await {
                Ok(LeaseDecision::Acquire | LeaseDecision::Renew) => break,
                Ok(LeaseDecision::Wait { holder, until }) => {
                    debug!(%holder, %until, "another replica leads; waiting for the Lease");
                }
                Err(error) => warn!("leader election: {error}"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stopped() => return Ok(()),
            }
        }
        info!(identity = %lock.election().identity, "acquired the Lease; starting the controller");
        tokio::select! {
            () = bounded(run_controller(ctx.clone(), &stopped)) => {
                if let Err(error) = lock.release().await {
                    warn!("releasing the Lease: {error}");
                }
                shutdown_task.abort();
                return Ok(());
            }
            () = hold_lease(&lock, &ctx.clock) => {
                warn!("lost the Lease; stopping the controller until it is acquired again");
            }
        }
    }
}

/// Renews the Lease every renew interval; returns when it is lost: another
/// replica holds it, or renewals have failed for the renew deadline.
async fn hold_lease<C: Clock>(lock: &LeaseLock, clock: &C) {
    let election = lock.election();
    let deadline = chrono::TimeDelta::from_std(election.renew_deadline)
        .unwrap_or(chrono::TimeDelta::seconds(10));
    let mut renewed = clock.now();
    loop {
        tokio::time::sleep(election.renew_interval).await;
        let now = clock.now();
        match lock.try_renew(now).await {
            Ok(LeaseDecision::Acquire | LeaseDecision::Renew) => renewed = now,
            Ok(LeaseDecision::Wait { holder, .. }) => {
                warn!(%holder, "the Lease is held by another replica");
                return;
            }
            Err(error) => {
                warn!("renewing the Lease: {error}");
                if now - renewed >= deadline {
                    return;
                }
            }
        }
    }
}

/// The controllers, until each has shut down gracefully on a `stopped()`:
/// Certificates, plus the Secrets, Issuers and ClusterIssuers they depend
/// on, each mapped back to its dependents; and one per issuer kind, whose
/// reflectors also keep the issuer stores the mapping reads.
async fn run_controller<C, F>(ctx: Arc<Context<C>>, stopped: impl Fn() -> F)
where
    C: Clock + 'static,
    F: Future<Output = ()> + Send + Sync + 'static,
{
    let client = ctx.client.clone();
    let config = watcher::Config::default();
    let controller = Controller::new(Api::<Certificate>::all(client.clone()), config.clone());

    // The issuers' stores, for mapping a CA Secret to the Certificates
    // whose issuer signs with it and to the issuers themselves.
    let (issuers, issuer_writer) = reflector::store::<Issuer>();
    let (cluster_issuers, cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
    // CA Secret changes, seen by the Certificate controller's Secret watch,
    // for the issuer controllers.
    let (issuer_trigger, issuer_triggered) = unbounded();
    let (cluster_issuer_trigger, cluster_issuer_triggered) = unbounded();
    let issuer_controller = run_issuer_controller(
        ctx.clone(),
        issuers.clone(),
        issuer_writer,
        issuer_triggered,
        stopped(),
    );
    let cluster_issuer_controller = run_issuer_controller(
        ctx.clone(),
        cluster_issuers.clone(),
        cluster_issuer_writer,
        cluster_issuer_triggered,
        stopped(),
    );

    let dependents = Dependents {
        certificates: controller.store(),
        issuers,
        cluster_issuers,
        cluster_resource_namespace: ctx.cluster_resource_namespace.clone(),
    };
    let for_issuer = dependents.clone();
    let for_cluster_issuer = dependents.clone();
    let for_secret = dependents;
    let metrics = ctx.metrics.clone();
    let forget = ctx.clone();
    let controller = controller
        // One watch of Secrets serves `owns` (the Certificate's own
        // Secret), the CA Secrets of the Certificates' issuers, and the
        // issuer controllers; more identical cluster-wide Secret watches
        // would multiply the traffic.
        .watches(
            Api::<Secret>::all(client.clone()),
            config.clone(),
            move |s| {
                let users = for_secret.issuers_using_secret(&s);
                // An issuer controller that has stopped needs no trigger.
                for issuer in &users.issuers {
                    let _ = issuer_trigger.unbounded_send(issuer.clone());
                }
                for issuer in &users.cluster_issuers {
                    let _ = cluster_issuer_trigger.unbounded_send(issuer.clone());
                }
                for_secret.for_secret(&s, &users)
            },
        )
        .watches(
            Api::<Issuer>::all(client.clone()),
            config.clone(),
            move |i| {
                for_issuer.for_issuer(IssuerKind::Issuer, i.namespace().as_deref(), &i.name_any())
            },
        )
        .watches(Api::<ClusterIssuer>::all(client), config, move |i| {
            for_cluster_issuer.for_issuer(IssuerKind::ClusterIssuer, None, &i.name_any())
        })
        .graceful_shutdown_on(stopped())
        .run(reconcile_certificate, error_policy, ctx)
        .for_each(move |result| {
            match result {
                Ok((object, _)) => debug!(certificate = %object, "reconciled"),
                // The object is gone from the store: the Certificate was
                // deleted, and its series go with it.
                Err(controller::Error::ObjectNotFound(object)) => {
                    let namespace = object.namespace.clone().unwrap_or_default();
                    metrics.forget_certificate(&namespace, &object.name);
                    forget.clear_api_failures(CERTIFICATE, &namespace, &object.name);
                    debug!(certificate = %object, "deleted; forgot its metrics");
                }
                // error_policy has logged it.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!("controller: {error}"),
            }
            std::future::ready(())
        });
    // Each stops on its own `stopped()`, after its running reconciles.
    tokio::join!(controller, issuer_controller, cluster_issuer_controller);
}

/// The controller of one issuer kind, until `stop` (then after its running
/// reconciles): [`reconcile_issuer`] runs for each issuer its watch sees
/// change (keeping `store`, through `writer`, for the Certificate
/// controller's mapping) and for each one `triggers` names (its CA Secret
/// changed).
///
/// Built from kube-runtime's `applier`, as `Controller` is, because
/// `Controller` takes an external stream of objects to reconcile only
/// behind an unstable feature, and a Secret watch of its own would repeat
/// the Certificate controller's.
async fn run_issuer_controller<K: IssuerResource, C: Clock + 'static>(
    ctx: Arc<Context<C>>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let kind = K::KIND;
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<K>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    // Deletions too: the reconcile then finds the issuer gone, and its
    // series are forgotten at once.
    .touched_objects();
    let queue = futures::stream::select(
        controller::trigger_self(watch, ()),
        triggers.map(|issuer| Ok(ReconcileRequest::from(issuer))),
    )
    .take_until(stop);
    let metrics = ctx.metrics.clone();
    let forget = ctx.clone();
    controller::applier(
        |issuer, ctx| Box::pin(reconcile_issuer::<K, C>(issuer, ctx)),
        issuer_error_policy::<K, C>,
        ctx,
        store,
        queue,
        controller::Config::default(),
    )
    .for_each(move |result| {
        match result {
            Ok((object, _)) => debug!(%kind, issuer = %object, "reconciled"),
            Err(controller::Error::ObjectNotFound(object)) => {
                let namespace = object.namespace.clone().unwrap_or_default();
                metrics.forget_issuer(kind, &namespace, &object.name);
                forget.clear_api_failures(kind.as_str(), &namespace, &object.name);
                debug!(%kind, issuer = %object, "deleted; forgot its metrics");
            }
            // issuer_error_policy has logged it.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(controller::Error::QueueError(error)) => warn!("watching {kind}s: {error}"),
            Err(error) => warn!("{kind} controller: {error}"),
        }
        std::future::ready(())
    })
    .await;
}

/// Finds the Certificates an Issuer, ClusterIssuer or Secret change
/// concerns, from the controller's stores.
#[derive(Clone)]
struct Dependents {
    certificates: Store<Certificate>,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    cluster_resource_namespace: String,
}

impl Dependents {
    fn for_issuer(
        &self,
        kind: IssuerKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<ObjectRef<Certificate>> {
        certificates_using_issuer(&self.certificates.state(), kind, namespace, name)
    }

    /// The issuers that sign with `secret`: Issuers in its namespace
    /// naming it, and ClusterIssuers naming it when it is in the cluster
    /// resource namespace.
    fn issuers_using_secret(&self, secret: &Secret) -> SecretUsers {
        let mut users = SecretUsers::default();
        let Some(namespace) = secret.namespace() else {
            return users;
        };
        let name = secret.name_any();
        for issuer in self.issuers.state() {
            if issuer.namespace().as_deref() == Some(namespace.as_str())
                && ca_secret_name(&issuer.spec.config) == Some(name.as_str())
            {
                users.issuers.push(ObjectRef::from_obj(issuer.as_ref()));
            }
        }
        if namespace == self.cluster_resource_namespace {
            for issuer in self.cluster_issuers.state() {
                if ca_secret_name(&issuer.spec.config) == Some(name.as_str()) {
                    users
                        .cluster_issuers
                        .push(ObjectRef::from_obj(issuer.as_ref()));
                }
            }
        }
        users
    }

    /// The Certificates `secret` concerns: the one owning it, those naming
    /// it, and those whose issuer is one of `users` (from
    /// [`Dependents::issuers_using_secret`]).
    fn for_secret(&self, secret: &Secret, users: &SecretUsers) -> Vec<ObjectRef<Certificate>> {
        let Some(namespace) = secret.namespace() else {
            return Vec::new();
        };
        let name = secret.name_any();
        let certificates = self.certificates.state();
        let mut found: BTreeSet<(String, String)> = BTreeSet::new();
        // The Certificate that owns it.
        for owner in secret.owner_references() {
            if owner.controller == Some(true)
                && owner.kind == "Certificate"
                && owner.api_version == API_VERSION
            {
                found.insert((namespace.clone(), owner.name.clone()));
            }
        }
        // Certificates naming it (it may predate them, or have lost its
        // ownerReference).
        for certificate in &certificates {
            if certificate.namespace().as_deref() == Some(namespace.as_str())
                && certificate.spec.secret_name == name
            {
                found.insert((namespace.clone(), certificate.name_any()));
            }
        }
        // Certificates whose issuer signs with it.
        let mut refs = Vec::new();
        for issuer in &users.issuers {
            refs.extend(certificates_using_issuer(
                &certificates,
                IssuerKind::Issuer,
                issuer.namespace.as_deref(),
                &issuer.name,
            ));
        }
        for issuer in &users.cluster_issuers {
            refs.extend(certificates_using_issuer(
                &certificates,
                IssuerKind::ClusterIssuer,
                None,
                &issuer.name,
            ));
        }
        for r in refs {
            found.insert((r.namespace.unwrap_or_default(), r.name));
        }
        found
            .into_iter()
            .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace))
            .collect()
    }
}

/// The issuers that sign with a Secret.
#[derive(Debug, Default)]
struct SecretUsers {
    issuers: Vec<ObjectRef<Issuer>>,
    cluster_issuers: Vec<ObjectRef<ClusterIssuer>>,
}

fn ca_secret_name(config: &IssuerConfig) -> Option<&str> {
    config.ca.as_ref().map(|ca| ca.secret_name.as_str())
}

/// The Certificates that name the issuer `kind`/`name` (an Issuer only
/// from its own `namespace`).
fn certificates_using_issuer(
    certificates: &[Arc<Certificate>],
    kind: IssuerKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Certificate>> {
    certificates
        .iter()
        .filter(|c| {
            c.spec.issuer_ref.name == name
                && c.spec.issuer_ref.issuer_kind() == Some(kind)
                && (kind == IssuerKind::ClusterIssuer || c.namespace().as_deref() == namespace)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use lanyard_crds::api::{
        CaIssuer, CertificateSpec, ClusterIssuerSpec, Condition, IssuerRef, IssuerSpec,
    };

    fn certificate(
        namespace: &str,
        name: &str,
        issuer: &str,
        kind: Option<&str>,
    ) -> Arc<Certificate> {
        let mut spec = CertificateSpec::new(
            format!("{name}-tls"),
            IssuerRef {
                name: issuer.into(),
                kind: kind.map(Into::into),
                group: None,
            },
        );
        spec.common_name = Some(name.into());
        let mut cert = Certificate::new(name, spec);
        cert.metadata.namespace = Some(namespace.into());
        Arc::new(cert)
    }

    fn names(refs: Vec<ObjectRef<Certificate>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn an_issuer_concerns_certificates_in_its_namespace_and_a_cluster_issuer_all() {
        let certs = [
            certificate("a", "one", "ca", None),
            certificate("a", "two", "ca", Some("ClusterIssuer")),
            certificate("b", "three", "ca", Some("Issuer")),
            certificate("b", "four", "other", Some("ClusterIssuer")),
        ];
        let issuer = names(certificates_using_issuer(
            &certs,
            IssuerKind::Issuer,
            Some("a"),
            "ca",
        ));
        assert_eq!(issuer.len(), 1);
        assert!(issuer[0].contains("one"), "{issuer:?}");
        let cluster = names(certificates_using_issuer(
            &certs,
            IssuerKind::ClusterIssuer,
            None,
            "ca",
        ));
        assert_eq!(cluster.len(), 1);
        assert!(cluster[0].contains("two"), "{cluster:?}");
    }

    #[test]
    fn error_backoff_doubles_from_five_seconds_to_five_minutes() {
        for (attempts, seconds) in [(1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (100, 300)] {
            assert_eq!(
                error_backoff(attempts),
                Duration::from_secs(seconds),
                "{attempts}"
            );
        }
    }

    #[test]
    fn requeue_after_is_clamped_between_a_second_and_an_hour() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        for (minutes, expected) in [(-5, 1), (0, 1), (10, 600), (24 * 60, 3_600)] {
            assert_eq!(
                requeue_after(now + chrono::TimeDelta::minutes(minutes), now),
                Duration::from_secs(expected),
                "{minutes} minutes"
            );
        }
    }

    #[test]
    fn a_status_patch_nulls_fields_that_were_cleared() {
        let old = CertificateStatus {
            failed_issuance_attempts: Some(2),
            revision: Some(1),
            ..CertificateStatus::default()
        };
        let new = CertificateStatus {
            revision: Some(2),
            ..CertificateStatus::default()
        };
        let patch = status_patch(None, Some(&old), &new).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"status": {"revision": 2, "failedIssuanceAttempts": null}})
        );
    }

    fn ca(secret_name: &str) -> IssuerConfig {
        IssuerConfig {
            ca: Some(CaIssuer {
                secret_name: secret_name.into(),
            }),
            self_signed: None,
        }
    }

    fn secret_in(namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn a_ca_secret_maps_to_the_issuers_that_sign_with_it_and_their_certificates() {
        let (certificates, mut certificate_writer) = reflector::store::<Certificate>();
        let (issuers, mut issuer_writer) = reflector::store::<Issuer>();
        let (cluster_issuers, mut cluster_issuer_writer) = reflector::store::<ClusterIssuer>();
        for cert in [
            certificate("a", "one", "ns-ca", None),
            certificate("b", "two", "ns-ca", None),
            certificate("b", "three", "cluster-ca", Some("ClusterIssuer")),
        ] {
            certificate_writer.apply_watcher_event(&watcher::Event::Apply((*cert).clone()));
        }
        for (namespace, name, secret) in [("a", "ns-ca", "ca"), ("b", "ns-ca", "other")] {
            let mut issuer = Issuer::new(name, IssuerSpec { config: ca(secret) });
            issuer.metadata.namespace = Some(namespace.into());
            issuer_writer.apply_watcher_event(&watcher::Event::Apply(issuer));
        }
        cluster_issuer_writer.apply_watcher_event(&watcher::Event::Apply(ClusterIssuer::new(
            "cluster-ca",
            ClusterIssuerSpec { config: ca("ca") },
        )));
        let dependents = Dependents {
            certificates,
            issuers,
            cluster_issuers,
            cluster_resource_namespace: "lanyard".into(),
        };

        // `a/ca` is the CA of the Issuer `a/ns-ca` only: a ClusterIssuer's
        // CA Secret lives in the cluster resource namespace.
        let secret = secret_in("a", "ca");
        let users = dependents.issuers_using_secret(&secret);
        assert_eq!(
            users.issuers,
            [ObjectRef::new("ns-ca").within("a")],
            "{users:?}"
        );
        assert!(users.cluster_issuers.is_empty(), "{users:?}");
        let certs = names(dependents.for_secret(&secret, &users));
        assert_eq!(certs.len(), 1, "{certs:?}");
        assert!(certs[0].contains("one"), "{certs:?}");

        let secret = secret_in("lanyard", "ca");
        let users = dependents.issuers_using_secret(&secret);
        assert!(users.issuers.is_empty(), "{users:?}");
        assert_eq!(users.cluster_issuers, [ObjectRef::new("cluster-ca")]);
        let certs = names(dependents.for_secret(&secret, &users));
        assert_eq!(certs.len(), 1, "{certs:?}");
        assert!(certs[0].contains("three"), "{certs:?}");

        let secret = secret_in("b", "unrelated");
        let users = dependents.issuers_using_secret(&secret);
        assert!(users.issuers.is_empty() && users.cluster_issuers.is_empty());
    }

    #[test]
    fn an_issuer_status_keeps_its_transition_time_until_ready_changes() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let later = t0 + chrono::TimeDelta::hours(1);
        let missing = IssuerError::SecretNotFound {
            secret: "lanyard/ca".into(),
        };

        let ready = issuer_status(None, Ok(&IssuerMaterial::SelfSigned), Some(1), t0);
        let [condition] = ready.conditions.as_slice() else {
            panic!("{ready:?}")
        };
        assert_eq!(condition.type_, "Ready");
        assert!(condition.is_true());
        assert_eq!(condition.reason.as_deref(), Some("KeyPairVerified"));
        assert_eq!(condition.message.as_deref(), Some("Signing CA verified"));
        assert_eq!(condition.observed_generation, Some(1));
        assert_eq!(condition.last_transition_time, Some(t0));

        // Unchanged: the same status, so no write.
        let again = issuer_status(
            Some(&ready),
            Ok(&IssuerMaterial::SelfSigned),
            Some(1),
            later,
        );
        assert_eq!(again, ready);
        // A new generation is recorded, the transition time kept.
        let next = issuer_status(
            Some(&ready),
            Ok(&IssuerMaterial::SelfSigned),
            Some(2),
            later,
        );
        assert_eq!(next.conditions[0].observed_generation, Some(2));
        assert_eq!(next.conditions[0].last_transition_time, Some(t0));

        // Not ready: the error's reason and message, a new transition time;
        // conditions of other types are kept.
        let mut with_other = ready.clone();
        with_other.conditions.push(Condition {
            type_: "Other".into(),
            status: "True".into(),
            reason: None,
            message: None,
            last_transition_time: None,
            observed_generation: None,
        });
        let failed = issuer_status(Some(&with_other), Err(&missing), Some(1), later);
        assert_eq!(failed.conditions.len(), 2);
        let condition = &failed.conditions[0];
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some("CASecretNotFound"));
        assert_eq!(
            condition.message.as_deref(),
            Some("the CA Secret `lanyard/ca` does not exist")
        );
        assert_eq!(condition.last_transition_time, Some(later));
        assert_eq!(failed.conditions[1].type_, "Other");
    }
}
