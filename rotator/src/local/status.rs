//! The status files of the state directory (`DIR/status/`): each
//! Certificate's record, each issuer's status, and the rows of
//! `lanyard get certificates` read back from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use lanyard_crds::api::{CertificateStatus, IssuerKind, IssuerStatus};
use lanyard_crds::time::Clock;
use serde::{Deserialize, Serialize};

use super::manifests::{self, ManifestError, Object};
use super::secrets::{self, SecretStoreError};
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

/// The records under `status_root` (`DIR/status/certificates`), by
/// namespace and name.
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
    pub(super) fn record_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.options
            .status_dir()
            .join("certificates")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    pub(super) fn write_issuer_status(
        &self,
        kind: IssuerKind,
        namespace: &str,
        name: &str,
        material: Result<&IssuerMaterial, &IssuerError>,
        now: DateTime<Utc>,
    ) -> Result<(), LocalError> {
        let path = match kind {
            IssuerKind::Issuer => self
                .options
                .status_dir()
                .join("issuers")
                .join(namespace)
                .join(format!("{name}.json")),
            IssuerKind::ClusterIssuer => self
                .options
                .status_dir()
                .join("clusterissuers")
                .join(format!("{name}.json")),
        };
        let current = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IssuerStatus>(&b).ok());
        let status = issuer_status(current.as_ref(), material, None, now);
        if current.as_ref() != Some(&status) {
            let bytes = serde_json::to_vec_pretty(&status).expect("status serialises");
            secrets::write_file_atomic(&path, &bytes, 0o644, self.options.durability)?;
        }
        Ok(())
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
    let mut rows = Vec::new();
    for object in objects.into_values().flatten() {
        let Object::Certificate(cert) = object else {
            continue;
        };
        let namespace = cert.metadata.namespace.clone().unwrap_or_default();
        let name = cert.metadata.name.clone().unwrap_or_default();
        let path = state_dir
            .join("status/certificates")
            .join(&namespace)
            .join(format!("{name}.json"));
        let record: Option<Record> = match std::fs::read(&path) {
            Ok(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| LocalError::CorruptState {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            Err(_) => None,
        };
        let status = record.map(|r| r.status).unwrap_or_default();
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
