//! The local shell: `lanyard up` on one machine, no cluster. Objects are
//! manifests in `DIR/manifests/`, Secrets are directories in
//! `DIR/secrets/<namespace>/<name>/`, status and bookkeeping are in one
//! embedded store, `DIR/status.db` ([`store`]). The same reconcile core as
//! in a cluster decides and issues.

mod bootstrap;
mod certificate;
pub mod manifests;
mod pass;
pub mod run;
mod schedule;
pub mod secrets;
mod status;
pub mod store;
pub mod sweep;
pub mod trust;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lanyard_crds::api::IssuerStatus;
use lanyard_crds::identity::IdentityDomain;
use lanyard_crds::time::Clock;

use crate::metrics::Metrics;
use crate::planner::IssueReason;
use manifests::{ManifestError, Object, ObjectKey};
use schedule::IssuerKey;
use status::Record;

pub use crate::issuer_ref::DEFAULT_CLUSTER_RESOURCE_NAMESPACE;
pub use bootstrap::{identity_issuer_certificate, linkerd_trust_roots};
pub use secrets::{Durability, SecretStore, SecretStoreError};
pub use status::{CertificateRow, certificate_rows};

pub use lanyard_crds::linkerd::{IDENTITY_ISSUER_NAME, TRUST_ANCHOR_NAME};

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
    /// The store of status and bookkeeping (`DIR/status.db`) cannot be
    /// opened, read or written.
    #[error("{}: {reason}", path.display())]
    Database {
        /// The store's file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
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

/// The local controller.
#[derive(Debug)]
pub struct LocalController<C> {
    options: LocalOptions,
    clock: C,
    metrics: Arc<Metrics>,
    secrets: SecretStore,
    last_good: BTreeMap<PathBuf, std::sync::Arc<Vec<Object>>>,
    manifests: manifests::ManifestCache,
    requeue: BTreeMap<(String, String), DateTime<Utc>>,
    issuer_stamps: BTreeMap<IssuerKey, String>,
    records: BTreeMap<(String, String), Record>,
    issuer_statuses: BTreeMap<IssuerKey, IssuerStatus>,
    /// Records and issuer statuses changed in memory but not yet in the
    /// store (written at the end of each pass, kept for the next one when
    /// that write fails).
    dirty_records: BTreeSet<(String, String)>,
    dirty_issuers: BTreeSet<IssuerKey>,
    /// One writer's connection; a mutex only so passes can share the
    /// controller across threads (only the pass's end writes).
    /// `None` while the store cannot be opened: status is then kept in
    /// memory, and each pass tries to open it again.
    store: std::sync::Mutex<Option<store::Store>>,
    stop: lanyard_runtime::Shutdown,
    /// Whether the first-start setup still has to be done (it failed to
    /// write, e.g. on a full disk, and is tried again each pass).
    bootstrap_pending: bool,
    /// Trust bundles and the anchor's rotation, when enabled.
    trust: Option<trust::LocalTrust>,
}

impl<C: Clock> LocalController<C> {
    /// Opens (creating) the state directory and its store, and loads
    /// recorded status (moving status files of an older Lanyard into the
    /// store).
    pub fn open(
        options: LocalOptions,
        clock: C,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LocalError> {
        let secrets = options.secret_store();
        secrets.create_root()?;
        // A store that cannot be opened (a full or read-only disk,
        // something in its place) does not stop the controller: status is
        // kept in memory and written once the store opens. Status files of
        // an older Lanyard that cannot be read still stop it, before
        // anything is written.
        let (store, contents) = match store::Store::open(&options.state_dir, options.durability) {
            Ok((store, contents)) => (Some(store), contents),
            Err(error @ LocalError::Database { .. }) => {
                tracing::warn!(%error, "cannot record status; it is kept in memory and written once the store opens");
                (None, store::Contents::default())
            }
            Err(error) => return Err(error),
        };
        Ok(LocalController {
            options,
            clock,
            metrics,
            secrets,
            last_good: BTreeMap::new(),
            manifests: manifests::ManifestCache::default(),
            requeue: BTreeMap::new(),
            issuer_stamps: BTreeMap::new(),
            records: contents.records,
            issuer_statuses: contents.issuers,
            dirty_records: BTreeSet::new(),
            dirty_issuers: BTreeSet::new(),
            store: std::sync::Mutex::new(store),
            stop: lanyard_runtime::Shutdown::new(),
            bootstrap_pending: false,
            trust: None,
        })
    }

    /// Writes every TrustBundle to `DIR/bundles/<name>.pem` on each pass,
    /// and rotates the trust anchor `lanyard up` made, with overlap, when
    /// its time comes or `lanyard anchor rotate` asks.
    pub fn with_trust(mut self, options: trust::TrustOptions) -> Self {
        self.trust = Some(trust::LocalTrust::new(
            options,
            self.options.state_dir.clone(),
            self.options.domain.clone(),
            self.options.cluster_resource_namespace.clone(),
            self.options.durability,
        ));
        self
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
}
