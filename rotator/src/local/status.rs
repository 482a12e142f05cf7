//! Status of the local shell: each Certificate's record, each issuer's
//! status (both kept in [`super::store`]), and the rows of `lanyard get
//! certificates` read back from them.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use lanyard_crds::api::{CertificateStatus, IssuerKind};
use lanyard_crds::time::Clock;
use serde::{Deserialize, Serialize};

use super::manifests::{self, ManifestError, Object};
use super::secrets::SecretStoreError;
use super::store::{self, Changes};
use super::{LocalController, LocalError};
use crate::issuing::{IssuerError, IssuerMaterial};
use crate::reconcile::issuer_status;

/// What the controller keeps per Certificate between passes and restarts:
/// the spec it last saw (a changed spec is a new generation) and status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Record {
    pub(super) generation: i64,
    pub(super) spec: serde_json::Value,
    pub(super) status: CertificateStatus,
}

/// The records of an older Lanyard, as files under `status_root`
/// (`DIR/status/certificates`), by namespace and name.
pub(super) fn load_records(
    status_root: &Path,
) -> Result<BTreeMap<(String, String), Record>, LocalError> {
    let mut records = BTreeMap::new();
    for ns in std::fs::read_dir(status_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let path = file.path();
            let (Some(namespace), Some(name)) = (
                ns.file_name().to_str().map(str::to_string),
                path.file_stem()
                    .and_then(|s| s.to_str())
                    .map(str::to_string),
            ) else {
                continue;
            };
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| SecretStoreError::Io {
                path: path.clone(),
                source,
            })?;
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|e| LocalError::CorruptState {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            records.insert((namespace, name), record);
        }
    }
    Ok(records)
}

impl<C: Clock> LocalController<C> {
    /// Updates an issuer's status in memory; the pass's end writes it to
    /// the store when it changed.
    pub(super) fn write_issuer_status(
        &mut self,
        kind: IssuerKind,
        namespace: &str,
        name: &str,
        material: Result<&IssuerMaterial, &IssuerError>,
        now: DateTime<Utc>,
    ) {
        let key = (kind, namespace.to_string(), name.to_string());
        let current = self.issuer_statuses.get(&key);
        let status = issuer_status(current, material, None, now);
        if current != Some(&status) {
            self.issuer_statuses.insert(key.clone(), status);
            self.dirty_issuers.insert(key);
        }
    }

    /// Writes what changed in memory to the store, in one transaction. A
    /// failed write is logged and tried again at the next pass's end; the
    /// records stay in memory meanwhile.
    pub(super) fn persist(&mut self) {
        if self.dirty_records.is_empty() && self.dirty_issuers.is_empty() {
            return;
        }
        let changes = Changes {
            records: self
                .dirty_records
                .iter()
                .map(|key| (key, self.records.get(key)))
                .collect(),
            issuers: self
                .dirty_issuers
                .iter()
                .filter_map(|key| self.issuer_statuses.get_key_value(key))
                .collect(),
        };
        let mut store = self
            .store
            .lock()
            .expect("no pass panics while writing the store");
        if store.is_none() {
            // Only what this run changed is written: what the unopened
            // store held is not known here, and is kept there.
            match store::Store::open(&self.options.state_dir, self.options.durability) {
                Ok((opened, _)) => *store = Some(opened),
                Err(error) => {
                    tracing::warn!(%error, "cannot record status; it is kept in memory and written again after the next pass");
                    return;
                }
            }
        }
        let written = store
            .as_mut()
            .expect("the store was opened above")
            .write(&changes);
        drop(store);
        drop(changes);
        match written {
            Ok(()) => {
                self.dirty_records.clear();
                self.dirty_issuers.clear();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot record status; it is kept in memory and written again after the next pass");
            }
        }
    }
}

/// One row of `lanyard get certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `True`, `False` or `Unknown`.
    pub ready: String,
    /// The Secret.
    pub secret: String,
    /// Current certificate's end.
    pub not_after: Option<DateTime<Utc>>,
    /// Renewal time.
    pub renewal_time: Option<DateTime<Utc>>,
    /// The Ready condition's message.
    pub message: String,
}

/// The Certificates in a state directory with their recorded status.
pub fn certificate_rows(
    state_dir: &Path,
) -> Result<(Vec<CertificateRow>, Vec<ManifestError>), LocalError> {
    let (objects, errors) = manifests::load_dir(&state_dir.join("manifests"), "default");
    let mut records = store::read(state_dir)?.records;
    let mut rows = Vec::new();
    for object in objects.into_values().flatten() {
        let Object::Certificate(cert) = object else {
            continue;
        };
        let namespace = cert.metadata.namespace.clone().unwrap_or_default();
        let name = cert.metadata.name.clone().unwrap_or_default();
        let status = records
            .remove(&(namespace.clone(), name.clone()))
            .map(|r| r.status)
            .unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        rows.push(CertificateRow {
            namespace,
            name,
            ready: ready.map_or("Unknown".into(), |c| c.status.clone()),
            secret: cert.spec.secret_name.clone(),
            not_after: status.not_after,
            renewal_time: status.renewal_time,
            message: ready.and_then(|c| c.message.clone()).unwrap_or_default(),
        });
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok((rows, errors.into_values().flatten().collect()))
}
